//! The JSON bodies of `INFO` (server → client) and `CONNECT` (client → server).
//!
//! Field names, order and defaults follow the reference server so that every client
//! library reads them as it reads nats-server's.

use serde::{Deserialize, Serialize};

/// The NATS server version meshbroker speaks for. Clients gate features on the
/// `version` field of INFO (headers, JetStream API levels), so it carries the
/// reference version whose behaviour we match, not our own crate version.
pub const COMPAT_VERSION: &str = "2.15.1";

/// Client protocol level: 1 supports dynamic INFO updates (reference default).
pub const PROTO: u8 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ServerInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub git_commit: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub go: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub headers: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub auth_required: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_required: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_verify: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_available: bool,
    pub max_payload: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub jetstream: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_id: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ws_connect_urls: Vec<String>,
    /// Lame-duck mode: clients should reconnect elsewhere.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ldm: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub connect_info: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_account: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub api_lvl: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The client's CONNECT options. Absent fields keep the reference's defaults, which
/// are not `false` everywhere: a bare `CONNECT {}` is verbose and pedantic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConnectOptions {
    pub verbose: bool,
    pub pedantic: bool,
    pub tls_required: bool,
    pub auth_token: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub name: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
    pub protocol: i64,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    pub sig: Option<String>,
    pub jwt: Option<String>,
    pub nkey: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            verbose: true,
            pedantic: true,
            tls_required: false,
            auth_token: None,
            user: None,
            pass: None,
            name: None,
            lang: None,
            version: None,
            protocol: 0,
            echo: true,
            headers: false,
            no_responders: false,
            sig: None,
            jwt: None,
            nkey: None,
        }
    }
}

impl ConnectOptions {
    /// Parses a CONNECT body; `None` when it is not the JSON object the reference
    /// accepts (it closes such a connection without an error message).
    pub fn parse(json: &[u8]) -> Option<Self> {
        serde_json::from_slice(json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_defaults_follow_the_reference() {
        let c = ConnectOptions::parse(b"{}").unwrap();
        assert!(c.verbose && c.pedantic && c.echo && !c.headers);
        let c = ConnectOptions::parse(br#"{"verbose":false,"foo":1,"headers":true}"#).unwrap();
        assert!(!c.verbose && c.pedantic && c.headers);
        assert!(ConnectOptions::parse(br#"{"verbose":"yes"}"#).is_none());
        assert!(ConnectOptions::parse(b"{bad").is_none());
    }

    #[test]
    fn info_omits_empty_fields() {
        let info = ServerInfo {
            server_id: "N".into(),
            version: COMPAT_VERSION.into(),
            proto: PROTO,
            ..Default::default()
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.starts_with(r#"{"server_id":"N","server_name":"","version":"2.15.1""#));
        assert!(!json.contains("ldm"));
        assert!(!json.contains("client_id"));
    }
}
