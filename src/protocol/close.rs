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
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Restart => 1012,
            CloseReason::TooBig => 1009,
            CloseReason::Stalled => 1013,
            CloseReason::ProtocolError => 1002,
        }
    }

    /// The reason text sent with the close frame (at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Restart => "server restart: reconnect with your last event id",
            CloseReason::TooBig => "message too big",
            CloseReason::Stalled => "client too slow: reconnect with your last event id",
            CloseReason::ProtocolError => "websocket protocol error",
        }
    }
}
