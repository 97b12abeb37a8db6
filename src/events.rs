//! What server events and advisories say about a client, and the ids they carry.
//!
//! The shapes are the reference's (`ClientInfo` in nats-server's `events.go`): tools
//! that read JetStream's API audit and `$SYS` events parse them.

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
    /// The server the client is connected to (left out of `$SYS` connect events,
    /// whose `server` block says it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server: String,
    /// When the connection closed (disconnect events).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stop: String,
    /// The user JWT it logged in with, the key that issued it, and its account's
    /// name (operator mode).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name_tag: String,
    /// `Client` for application connections.
    pub kind: &'static str,
    /// `nats` or `websocket`.
    pub client_type: &'static str,
}

/// The server an event comes from, as `$SYS` events and replies carry it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerBlock {
    pub name: String,
    pub host: String,
    pub id: String,
    pub ver: String,
    pub jetstream: bool,
    /// Capabilities (the reference's: 1 is JetStream).
    pub flags: u64,
    /// This server's event sequence.
    pub seq: u64,
    pub time: String,
}

/// Messages and bytes, as events count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DataStats {
    pub msgs: u64,
    pub bytes: u64,
}

/// `$SYS.ACCOUNT.<account>.CONNECT`: a client logged in.
#[derive(Debug, Serialize)]
pub struct ConnectEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub timestamp: String,
    pub server: ServerBlock,
    pub client: &'a ClientInfo,
}

/// `$SYS.ACCOUNT.<account>.DISCONNECT`: a logged-in client closed. `sent` is what
/// the client sent, `received` what it was sent.
#[derive(Debug, Serialize)]
pub struct DisconnectEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub timestamp: String,
    pub server: ServerBlock,
    pub client: &'a ClientInfo,
    pub sent: DataStats,
    pub received: DataStats,
    pub reason: &'a str,
}

pub const CONNECT_EVENT: &str = "io.nats.server.advisory.v1.client_connect";
pub const DISCONNECT_EVENT: &str = "io.nats.server.advisory.v1.client_disconnect";

/// Where a client's connect (`CONNECT`) or disconnect (`DISCONNECT`) event goes.
pub fn account_event_subject(account: &str, what: &str) -> String {
    format!("$SYS.ACCOUNT.{account}.{what}")
}

/// The subject any client asks who it is on.
pub const USER_INFO: &[u8] = b"$SYS.REQ.USER.INFO";

/// The answer to `$SYS.REQ.USER.INFO`: who the asking connection is.
#[derive(Debug, Serialize)]
pub struct UserInfoReply {
    pub server: ServerBlock,
    pub data: UserInfo,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct UserInfo {
    pub user: String,
    pub account: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub account_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Nanoseconds until the credentials expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

/// What `$SYS.REQ.SERVER.PING` (and `$SYS.REQ.SERVER.<id>.STATSZ`) asks: every
/// server answers with its [`StatszReply`].
pub fn is_statsz_request(subject: &str, server_id: &str) -> bool {
    matches!(
        subject,
        "$SYS.REQ.SERVER.PING" | "$SYS.REQ.SERVER.PING.STATSZ"
    ) || subject
        .strip_prefix("$SYS.REQ.SERVER.")
        .and_then(|rest| rest.strip_suffix(".STATSZ"))
        == Some(server_id)
}

/// The subjects the statsz requests come on, for this server.
pub fn statsz_subjects(server_id: &str) -> [String; 3] {
    [
        "$SYS.REQ.SERVER.PING".into(),
        "$SYS.REQ.SERVER.PING.STATSZ".into(),
        format!("$SYS.REQ.SERVER.{server_id}.STATSZ"),
    ]
}

/// A server's numbers, as `nats server list` reads them.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Statsz {
    pub start: String,
    pub mem: u64,
    pub cores: usize,
    pub cpu: f64,
    pub connections: u64,
    pub total_connections: u64,
    pub active_accounts: usize,
    pub subscriptions: u64,
    pub sent: DataStats,
    pub received: DataStats,
    pub slow_consumers: u64,
    /// The servers of the cluster this one knows to be up (itself included).
    pub active_servers: usize,
}

#[derive(Debug, Serialize)]
pub struct StatszReply {
    pub server: ServerBlock,
    pub statsz: Statsz,
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
    fn statsz_requests_are_the_ping_and_this_servers_own() {
        assert!(is_statsz_request("$SYS.REQ.SERVER.PING", "NID"));
        assert!(is_statsz_request("$SYS.REQ.SERVER.PING.STATSZ", "NID"));
        assert!(is_statsz_request("$SYS.REQ.SERVER.NID.STATSZ", "NID"));
        assert!(!is_statsz_request("$SYS.REQ.SERVER.OTHER.STATSZ", "NID"));
        assert!(!is_statsz_request("$SYS.REQ.SERVER.PING.CONNZ", "NID"));
        assert!(statsz_subjects("NID")
            .iter()
            .all(|s| is_statsz_request(s, "NID")));
    }

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
