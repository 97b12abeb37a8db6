//! Every error a client can see on the wire, in one table.
//!
//! The strings and whether the connection is closed after them are the reference
//! server's (nats-server 2.15, checked by `tests/differential.rs`). Some violations are
//! closed by the reference without any `-ERR`; those have no wire text here.

/// A violation found by the parser itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unknown protocol operation")]
    UnknownOp,
    #[error("maximum control line exceeded")]
    MaxControlLine,
    #[error("maximum payload exceeded")]
    MaxPayload,
    /// Known operation, malformed arguments: the reference closes without a word.
    #[error("malformed arguments for {0}")]
    BadArgs(&'static str),
    /// HPUB from a client that did not CONNECT with headers: closed without a word.
    #[error("headers not supported by this connection")]
    HeadersNotSupported,
}

impl ProtoError {
    pub fn wire(&self) -> WireError {
        match self {
            ProtoError::UnknownOp => WireError::UnknownProtocolOperation,
            ProtoError::MaxControlLine => WireError::MaxControlLineExceeded,
            ProtoError::MaxPayload => WireError::MaxPayloadViolation,
            ProtoError::BadArgs(_) | ProtoError::HeadersNotSupported => {
                WireError::ProtocolViolation
            }
        }
    }
}

/// What the server tells a client before (maybe) closing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    UnknownProtocolOperation,
    MaxControlLineExceeded,
    MaxPayloadViolation,
    /// Malformed arguments, bad CONNECT JSON, HPUB without headers: closed silently.
    ProtocolViolation,
    InvalidSubject,
    InvalidPublishSubject,
    StaleConnection,
    /// The outbound queue passed `max_pending`: closed without a word.
    SlowConsumerPendingBytes,
    /// A write took longer than `write_deadline`: closed without a word.
    SlowConsumerWriteDeadline,
    MaxConnectionsExceeded,
    /// The account's JWT allows no more connections on this node.
    MaxAccountConnectionsExceeded,
    AuthenticationTimeout,
    AuthorizationViolation,
    /// The user JWT expired while connected.
    AuthenticationExpired,
    /// The user's account revoked it while connected.
    AuthenticationRevoked,
    NoRespondersRequiresHeaders,
    InvalidClientProtocol,
    MaxSubscriptionsExceeded,
    /// The node is shutting down; the reference closes without a word.
    ServerShutdown,
}

impl WireError {
    /// The text inside `-ERR '…'`, or `None` when the reference sends no `-ERR`.
    pub fn text(self) -> Option<&'static str> {
        use WireError::*;
        Some(match self {
            UnknownProtocolOperation => "Unknown Protocol Operation",
            MaxControlLineExceeded => "maximum control line exceeded",
            MaxPayloadViolation => "Maximum Payload Violation",
            InvalidSubject => "Invalid Subject",
            InvalidPublishSubject => "Invalid Publish Subject",
            StaleConnection => "Stale Connection",
            SlowConsumerPendingBytes | SlowConsumerWriteDeadline => return None,
            MaxConnectionsExceeded => "maximum connections exceeded",
            MaxAccountConnectionsExceeded => "maximum account active connections exceeded",
            AuthenticationTimeout => "Authentication Timeout",
            AuthorizationViolation => "Authorization Violation",
            AuthenticationExpired => "User Authentication Expired",
            AuthenticationRevoked => "User Authentication Revoked",
            NoRespondersRequiresHeaders => "no responders requires headers support",
            InvalidClientProtocol => "invalid client protocol",
            MaxSubscriptionsExceeded => "maximum subscriptions exceeded",
            ProtocolViolation | ServerShutdown => return None,
        })
    }

    /// Does the connection close after this error?
    pub fn closes(self) -> bool {
        use WireError::*;
        !matches!(
            self,
            InvalidSubject | InvalidPublishSubject | MaxSubscriptionsExceeded
        )
    }

    /// Whether this is a slow-consumer cut (counted in `/varz` `slow_consumers`).
    pub fn is_slow_consumer(self) -> bool {
        matches!(
            self,
            WireError::SlowConsumerPendingBytes | WireError::SlowConsumerWriteDeadline
        )
    }

    /// The reason recorded for a closed connection (logs, and later the monitor).
    pub fn reason(self) -> &'static str {
        use WireError::*;
        match self {
            UnknownProtocolOperation
            | ProtocolViolation
            | InvalidSubject
            | InvalidPublishSubject
            | InvalidClientProtocol
            | NoRespondersRequiresHeaders => "Protocol Violation",
            MaxControlLineExceeded => "Maximum Control Line Exceeded",
            MaxPayloadViolation => "Maximum Payload Exceeded",
            StaleConnection => "Stale Connection",
            SlowConsumerPendingBytes => "Slow Consumer (Pending Bytes)",
            SlowConsumerWriteDeadline => "Slow Consumer (Write Deadline)",
            MaxConnectionsExceeded => "Maximum Connections Exceeded",
            MaxAccountConnectionsExceeded => "Maximum Account Connections Exceeded",
            AuthenticationTimeout => "Authentication Timeout",
            AuthorizationViolation => "Authorization Violation",
            AuthenticationExpired => "Authentication Expired",
            AuthenticationRevoked => "Authentication Revoked",
            MaxSubscriptionsExceeded => "Maximum Subscriptions Exceeded",
            ServerShutdown => "Server Shutdown",
        }
    }
}

/// `Permissions Violation for Publish to "<subject>"`.
pub fn publish_violation(subject: &[u8]) -> String {
    format!(
        "Permissions Violation for Publish to \"{}\"",
        String::from_utf8_lossy(subject)
    )
}

/// `Permissions Violation for Subscription to "<subject>"` (with `using queue "<q>"`).
pub fn subscribe_violation(subject: &[u8], queue: Option<&[u8]>) -> String {
    let subject = String::from_utf8_lossy(subject);
    match queue {
        Some(q) => format!(
            "Permissions Violation for Subscription to \"{subject}\" using queue \"{}\"",
            String::from_utf8_lossy(q)
        ),
        None => format!("Permissions Violation for Subscription to \"{subject}\""),
    }
}

/// What a subscription a reload no longer allows is ended with: the violation and
/// `(sid "<sid>")`.
pub fn removed_subscription(subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) -> String {
    format!(
        "{} (sid \"{}\")",
        subscribe_violation(subject, queue),
        String::from_utf8_lossy(sid)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(
            ProtoError::UnknownOp.wire().text(),
            Some("Unknown Protocol Operation")
        );
        assert!(ProtoError::BadArgs("SUB").wire().closes());
        assert!(ProtoError::BadArgs("SUB").wire().text().is_none());
        assert!(!WireError::InvalidSubject.closes());
        assert!(WireError::StaleConnection.closes());
    }

    #[test]
    fn violation_texts() {
        assert_eq!(
            publish_violation(b"a.b"),
            "Permissions Violation for Publish to \"a.b\""
        );
        assert_eq!(
            subscribe_violation(b"x", Some(b"q")),
            "Permissions Violation for Subscription to \"x\" using queue \"q\""
        );
        assert_eq!(
            removed_subscription(b"x", None, b"7"),
            "Permissions Violation for Subscription to \"x\" (sid \"7\")"
        );
    }
}
