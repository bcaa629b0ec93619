//! Any string as an event ID: parsing never panics, and what parses prints
//! back in canonical form and parses to the same ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::EventId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = EventId::parse(text) {
            let canonical = id.to_string();
            assert_eq!(EventId::parse(&canonical), Ok(id));
            assert!(canonical.contains('-'));
        }
    }
});
