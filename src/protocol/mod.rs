//! The wire protocol: validated newtypes, frames and their encodings.
//!
//! Nothing here does I/O. Everything a client can send is parsed into typed
//! values at this edge, so the rest of the node never sees raw strings.

mod close;
mod codec;
mod event;
mod event_id;
mod event_name;
mod frames;
mod idempotency;
mod reaction;
mod room;
mod state_key;

pub use close::CloseReason;
pub use codec::{
    data_to_json, decode_client, encode_events, encode_frame, encode_state, json_history, json_room_state,
    msgpack_to_value, sse_events, sse_gap, sse_state, Format, Wire, MSGPACK_SUBPROTOCOL,
};
pub use event::{frames, Event, Meta, Op, OpKind, Shown, EVENT_OVERHEAD, FRAME_BUDGET};
pub use event_id::{EventId, ParseEventIdError};
pub use event_name::{EventName, InvalidEventName, MAX_EVENT_NAME_LEN};
pub use frames::{
    parse_rewind, query_flag, query_rewind, ClientFrame, ErrorCode, FrameError, PresenceMember, ServerFrame,
    SubscribeOptions, MAX_REWIND,
};
pub use idempotency::{IdempotencyKey, InvalidIdempotencyKey, MAX_IDEMPOTENCY_KEY_LEN};
pub use reaction::{InvalidReactionKey, ReactionKey, MAX_REACTION_KEY_LEN};
pub use room::{InvalidRoomName, RoomName, MAX_ROOM_LEN};
pub use state_key::{InvalidStateKey, StateKey, MAX_STATE_KEY_LEN};
