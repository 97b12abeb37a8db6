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

/// A CONNECT body's fields in the order they came, repeats included (a repeat of
/// the wrong type fails in Go even when a later one is right); `null` has none.
struct ConnectBody(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for ConnectBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = ConnectBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object or null")
            }
            fn visit_unit<E>(self) -> Result<ConnectBody, E> {
                Ok(ConnectBody(Vec::new()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ConnectBody, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(ConnectBody(fields))
            }
        }
        d.deserialize_any(Fields)
    }
}

/// The client's CONNECT options. Absent fields keep the reference's defaults, which
/// are not `false` everywhere: a bare `CONNECT {}` is verbose and pedantic.
#[derive(Debug, Clone, PartialEq)]
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
    /// Parses a first CONNECT body; `None` when the reference would refuse it (it
    /// closes such a connection without an error message).
    pub fn parse(json: &[u8]) -> Option<Self> {
        Self::default().merged(json)
    }

    /// These options with a CONNECT body applied, as Go's JSON decoder applies one
    /// to the options a connection already has (a second CONNECT changes only what
    /// it names): keys match in any case, the last of repeated keys wins, `null`
    /// leaves a field as it was, unknown keys are ignored. `None` when the body is
    /// not a JSON object (or `null`) or a known field has the wrong type.
    pub fn merged(&self, json: &[u8]) -> Option<Self> {
        use serde_json::Value;
        let mut out = self.clone();
        let ConnectBody(fields) = serde_json::from_slice(json).ok()?;
        fn flag(v: Value) -> Option<bool> {
            v.as_bool()
        }
        fn text(v: Value) -> Option<Option<String>> {
            match v {
                Value::String(s) => Some(Some(s)),
                _ => None,
            }
        }
        for (key, value) in fields {
            if value.is_null() {
                continue;
            }
            match key.to_ascii_lowercase().as_str() {
                "verbose" => out.verbose = flag(value)?,
                "pedantic" => out.pedantic = flag(value)?,
                "tls_required" => out.tls_required = flag(value)?,
                "echo" => out.echo = flag(value)?,
                "headers" => out.headers = flag(value)?,
                "no_responders" => out.no_responders = flag(value)?,
                "protocol" => out.protocol = value.as_i64()?,
                "auth_token" => out.auth_token = text(value)?,
                "user" => out.user = text(value)?,
                "pass" => out.pass = text(value)?,
                "name" => out.name = text(value)?,
                "lang" => out.lang = text(value)?,
                "version" => out.version = text(value)?,
                "sig" => out.sig = text(value)?,
                "jwt" => out.jwt = text(value)?,
                "nkey" => out.nkey = text(value)?,
                _ => {}
            }
        }
        Some(out)
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
        assert!(ConnectOptions::parse(b"[1]").is_none());
        assert!(ConnectOptions::parse(br#"{"protocol":1.5}"#).is_none());
    }

    /// What Go's decoder does with odd bodies, which the reference accepts.
    #[test]
    fn connect_bodies_decode_as_in_go() {
        let c = ConnectOptions::parse(br#"{"verbose":false,"verbose":true}"#).unwrap();
        assert!(c.verbose);
        assert!(ConnectOptions::parse(br#"{"verbose":"x","verbose":true}"#).is_none());
        let c = ConnectOptions::parse(br#"{"headers":true,"headers":null}"#).unwrap();
        assert!(c.headers);
        let c = ConnectOptions::parse(br#"{"VERBOSE":false,"Echo":false}"#).unwrap();
        assert!(!c.verbose && !c.echo);
        let c = ConnectOptions::parse(br#"{"verbose":null,"name":null,"":1}"#).unwrap();
        assert!(c.verbose && c.name.is_none());
        assert_eq!(
            ConnectOptions::parse(b"null"),
            Some(ConnectOptions::default())
        );
        // A second CONNECT changes only what it names.
        let first = ConnectOptions::parse(br#"{"echo":false,"headers":true}"#).unwrap();
        let second = first.merged(br#"{"verbose":false}"#).unwrap();
        assert!(!second.echo && second.headers && !second.verbose);
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
