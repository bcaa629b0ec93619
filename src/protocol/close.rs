//! Why the node closes a connection: the close-code catalogue.

/// A server-initiated close, with the WebSocket code and the reason sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is shutting down (1012, service restart): reconnect to any
    /// node with your last event ID.
    Restart,
    /// A message exceeded the size limit (1009).
    TooBig,
    /// The client stopped reading and writes stalled (1013, try again
    /// later): reconnect and resume with your last event ID.
    Stalled,
    /// A malformed WebSocket stream (1002, protocol error).
    ProtocolError,
    /// The connection's token expired (1008, policy violation): reconnect
    /// with a fresh token and your last event ID.
    TokenExpired,
    /// The client kept sending refused frames (1008, policy violation).
    Misbehaving,
    /// A text frame was not valid UTF-8 (1007, invalid frame payload data).
    InvalidData,
    /// The client sent pings faster than the node answers them (1008).
    PingFlood,
    /// The client sent frames faster, or cut a message into more of them,
    /// than any client needs (1008).
    FrameFlood,
    /// A moderator disconnected the connection's subject (4403): do not
    /// reconnect.
    Disconnected,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Restart => 1012,
            CloseReason::TooBig => 1009,
            CloseReason::Stalled => 1013,
            CloseReason::ProtocolError => 1002,
            CloseReason::TokenExpired | CloseReason::Misbehaving | CloseReason::PingFlood | CloseReason::FrameFlood => {
                1008
            }
            CloseReason::InvalidData => 1007,
            CloseReason::Disconnected => 4403,
        }
    }

    /// The reason text sent with the close frame (at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Restart => "server restart: reconnect with your last event id",
            CloseReason::TooBig => "message too big",
            CloseReason::Stalled => "client too slow: reconnect with your last event id",
            CloseReason::ProtocolError => "websocket protocol error",
            CloseReason::TokenExpired => "token expired: reconnect with a fresh token and your last event id",
            CloseReason::Misbehaving => "too many refused frames",
            CloseReason::InvalidData => "invalid utf-8 in a text frame",
            CloseReason::PingFlood => "too many pings",
            CloseReason::FrameFlood => "too many frames",
            CloseReason::Disconnected => "disconnected by a moderator: do not reconnect",
        }
    }
}
