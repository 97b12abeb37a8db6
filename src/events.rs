//! What server events and advisories say about a client, and the ids they carry.
//!
//! The shapes are the reference's (`ClientInfo` in nats-server's `events.go`): tools
//! that read JetStream's API audit (and, later, `$SYS` connect events) parse them.

use serde::Serialize;

/// A client as events describe it. Fields the reference leaves out when empty are
/// left out here too.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientInfo {
    /// When the connection opened (RFC 3339).
    pub start: String,
    pub host: String,
    pub id: u64,
    pub acc: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lang: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ver: String,
    /// The server the client is connected to.
    pub server: String,
    /// `Client` for application connections.
    pub kind: &'static str,
    /// `nats` or `websocket`.
    pub client_type: &'static str,
}

const ID_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh event id: 22 base62 characters, as the reference's NUIDs look.
pub fn event_id(rng: &mut fastrand::Rng) -> String {
    (0..22)
        .map(|_| ID_ALPHABET[rng.usize(..ID_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_nuids_and_differ() {
        let mut rng = fastrand::Rng::with_seed(7);
        let a = event_id(&mut rng);
        let b = event_id(&mut rng);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn client_info_is_the_references_shape() {
        let info = ClientInfo {
            start: "2026-12-03T10:00:53.887751893Z".into(),
            host: "127.0.0.1".into(),
            id: 5,
            acc: "$G".into(),
            name: "advtest".into(),
            lang: "python3".into(),
            ver: "2.16.0".into(),
            server: "NSERVER".into(),
            kind: "Client",
            client_type: "nats",
            ..ClientInfo::default()
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"start":"2026-12-03T10:00:53.887751893Z","host":"127.0.0.1","id":5,"acc":"$G","name":"advtest","lang":"python3","ver":"2.16.0","server":"NSERVER","kind":"Client","client_type":"nats"}"#
        );
    }
}
