//! Any bytes, as a JSON text frame or a MessagePack binary frame: the decoder
//! must answer a frame or a typed refusal, never panic; a decoded publish's
//! data must serialise to JSON that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{data_to_json, decode_client, ClientFrame, Format};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::MsgPack] {
        if let Ok(ClientFrame::Publish { data, .. }) = decode_client(format, data) {
            let stored = data_to_json(&data);
            let back: serde_json::Value = serde_json::from_slice(&stored).expect("stored data is JSON");
            assert_eq!(back, data);
        }
    }
});
