//! The account-claims requests of the system account, as the reference's resolvers
//! answer them: `$SYS.REQ.CLAIMS.UPDATE` and `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`
//! (what `nsc push` sends), `…CLAIMS.LOOKUP` and `$SYS.REQ.CLAIMS.LIST`. Which
//! subjects a resolver serves, what a request asks, and the replies' JSON; the
//! decision on an update is [`super::operator::Trust::update`].

use serde::Serialize;

use super::operator::{ClaimsError, ResolverKind};

/// A request on one of the claims subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimsRequest<'a> {
    /// Store and apply the account JWT in the payload; the subject may name the
    /// account it must be for.
    Update { account: Option<&'a str> },
    /// The JWT held for the account (an empty reply when none is).
    Lookup { account: &'a str },
    /// The keys of every account held.
    List,
    /// Anti-entropy between full resolvers: the payload is the asker's store hash; a
    /// resolver holding other JWTs answers with them ([`pack_reply`]), then an empty
    /// message.
    Pack,
}

/// Where full resolvers ask each other for the JWTs they lack. The reference answers
/// in a queue group (one peer per ask); here every peer answers (an ask would
/// otherwise go to the asker's own member of the group), which only repeats JWTs an
/// update then finds unchanged.
pub const PACK: &str = "$SYS.REQ.CLAIMS.PACK";

/// A store's hash as the PACK asks carry it: SHA-256 (hex) over its `key|jwt` lines
/// in key order. Equal hashes mean nothing to send. (The reference hashes its files
/// its own way: between the two every ask is answered in full, which is merely more.)
pub fn pack_hash(held: &[(&str, &str)]) -> String {
    let mut lines = Vec::new();
    let mut sorted = held.to_vec();
    sorted.sort_unstable();
    for (key, jwt) in sorted {
        lines.extend_from_slice(key.as_bytes());
        lines.push(b'|');
        lines.extend_from_slice(jwt.as_bytes());
        lines.push(b'\n');
    }
    ring::digest::digest(&ring::digest::SHA256, &lines)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One message of a PACK answer: `key|jwt`.
pub fn pack_reply(key: &str, jwt: &str) -> Vec<u8> {
    format!("{key}|{jwt}").into_bytes()
}

/// The `(key, jwt)` pairs a PACK answer's message holds (one per line; lines that
/// are not `key|jwt` are skipped). An empty message ends the answer.
pub fn parse_pack(payload: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(payload)
        .lines()
        .filter_map(|line| {
            let (key, jwt) = line.trim().split_once('|')?;
            (!key.is_empty() && !jwt.is_empty()).then(|| (key.to_string(), jwt.to_string()))
        })
        .collect()
}

/// The subjects a resolver subscribes to in the system account. The MEMORY resolver
/// takes only updates naming their account, as the reference's.
pub fn subjects(resolver: &ResolverKind) -> &'static [&'static str] {
    match resolver {
        ResolverKind::Memory => &[
            "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
            "$SYS.ACCOUNT.*.CLAIMS.UPDATE",
        ],
        // PACK is subscribed apart, in its queue group.
        ResolverKind::Full { .. } => &[
            "$SYS.REQ.CLAIMS.UPDATE",
            "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
            "$SYS.ACCOUNT.*.CLAIMS.UPDATE",
            "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP",
            "$SYS.REQ.CLAIMS.LIST",
        ],
    }
}

impl<'a> ClaimsRequest<'a> {
    /// The request a subject carries (`None`: not a claims subject).
    pub fn parse(subject: &'a str) -> Option<ClaimsRequest<'a>> {
        match subject {
            "$SYS.REQ.CLAIMS.UPDATE" => return Some(ClaimsRequest::Update { account: None }),
            "$SYS.REQ.CLAIMS.LIST" => return Some(ClaimsRequest::List),
            PACK => return Some(ClaimsRequest::Pack),
            _ => {}
        }
        let rest = subject
            .strip_prefix("$SYS.REQ.ACCOUNT.")
            .or_else(|| subject.strip_prefix("$SYS.ACCOUNT."))?;
        let (account, op) = rest.split_once('.')?;
        if account.is_empty() || account.contains('.') {
            return None;
        }
        match op {
            "CLAIMS.UPDATE" => Some(ClaimsRequest::Update {
                account: Some(account),
            }),
            "CLAIMS.LOOKUP" if subject.starts_with("$SYS.REQ.") => {
                Some(ClaimsRequest::Lookup { account })
            }
            _ => None,
        }
    }
}

pub use crate::events::ServerBlock;

#[derive(Serialize)]
struct Outcome<'a> {
    account: &'a str,
    code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Serialize)]
struct UpdateReply<'a> {
    server: &'a ServerBlock,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Outcome<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Outcome<'a>>,
}

/// `{"server":…,"data":{"account":…,"code":200,"message":"jwt updated"}}`, or the
/// `error` block with code 500 and the reason.
pub fn update_reply(server: &ServerBlock, result: Result<&str, &ClaimsError>) -> Vec<u8> {
    let description;
    let reply = match result {
        Ok(account) => UpdateReply {
            server,
            data: Some(Outcome {
                account,
                code: 200,
                message: Some("jwt updated"),
                description: None,
            }),
            error: None,
        },
        Err(e) => {
            description = e.to_string();
            UpdateReply {
                server,
                data: None,
                error: Some(Outcome {
                    account: &e.account,
                    code: 500,
                    message: None,
                    description: Some(&description),
                }),
            }
        }
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

/// `{"data":[keys…],"server":…}`.
pub fn list_reply(server: &ServerBlock, keys: &[&str]) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        data: &'a [&'a str],
        server: &'a ServerBlock,
    }
    serde_json::to_vec(&List { data: keys, server }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_as_the_reference_names_them() {
        use ClaimsRequest::*;
        assert_eq!(
            ClaimsRequest::parse("$SYS.REQ.CLAIMS.UPDATE"),
            Some(Update { account: None })
        );
        assert_eq!(
            ClaimsRequest::parse("$SYS.REQ.ACCOUNT.AB.CLAIMS.UPDATE"),
            Some(Update {
                account: Some("AB")
            })
        );
        assert_eq!(
            ClaimsRequest::parse("$SYS.ACCOUNT.AB.CLAIMS.UPDATE"),
            Some(Update {
                account: Some("AB")
            })
        );
        assert_eq!(
            ClaimsRequest::parse("$SYS.REQ.ACCOUNT.AB.CLAIMS.LOOKUP"),
            Some(Lookup { account: "AB" })
        );
        assert_eq!(ClaimsRequest::parse("$SYS.REQ.CLAIMS.LIST"), Some(List));
        for not in [
            "$SYS.ACCOUNT.AB.CLAIMS.LOOKUP",
            "$SYS.REQ.ACCOUNT..CLAIMS.UPDATE",
            "$SYS.REQ.ACCOUNT.AB.CONNZ",
            "$SYS.REQ.CLAIMS.DELETE",
            "x",
        ] {
            assert_eq!(ClaimsRequest::parse(not), None, "{not}");
        }
        // What a resolver subscribes to parses (wildcards aside).
        for resolver in [ResolverKind::Memory, ResolverKind::Full { dir: "d".into() }] {
            for s in subjects(&resolver) {
                assert!(ClaimsRequest::parse(&s.replace('*', "AB")).is_some(), "{s}");
            }
        }
    }

    #[test]
    fn packs_round_trip_and_hashes_ignore_order() {
        assert_eq!(ClaimsRequest::parse(PACK), Some(ClaimsRequest::Pack));
        let a = [("AKEY", "eyJa.b.c"), ("BKEY", "eyJd.e.f")];
        let b = [("BKEY", "eyJd.e.f"), ("AKEY", "eyJa.b.c")];
        assert_eq!(pack_hash(&a), pack_hash(&b));
        assert_ne!(pack_hash(&a), pack_hash(&a[..1]));
        assert_eq!(pack_hash(&[]).len(), 64);
        let one = pack_reply("AKEY", "eyJa.b.c");
        assert_eq!(parse_pack(&one), [("AKEY".into(), "eyJa.b.c".into())]);
        // Several per message (as the reference may send them), junk skipped.
        let many = b"AKEY|eyJa.b.c\nnot a line\n|x\nBKEY|eyJd.e.f\n";
        assert_eq!(parse_pack(many).len(), 2);
        assert!(parse_pack(b"").is_empty());
    }

    #[test]
    fn replies_in_the_reference_shape() {
        let server = ServerBlock {
            name: "n".into(),
            host: "0.0.0.0".into(),
            id: "I".into(),
            ver: "2.15.1".into(),
            jetstream: false,
            flags: 0,
            seq: 3,
            time: "2026-12-05T13:05:43Z".into(),
        };
        let ok: serde_json::Value =
            serde_json::from_slice(&update_reply(&server, Ok("AB"))).expect("json");
        assert_eq!(
            ok["data"],
            serde_json::json!({"account":"AB","code":200,"message":"jwt updated"})
        );
        assert_eq!(ok["server"]["seq"], 3);
        let e = ClaimsError {
            account: "n/a".into(),
            description: "expected 3 chunks".into(),
        };
        let err: serde_json::Value =
            serde_json::from_slice(&update_reply(&server, Err(&e))).expect("json");
        assert_eq!(
            err["error"],
            serde_json::json!({"account":"n/a","code":500,"description":"jwt update resulted in error - expected 3 chunks"})
        );
        assert!(err.get("data").is_none());
        let list: serde_json::Value =
            serde_json::from_slice(&list_reply(&server, &["A1", "A2"])).expect("json");
        assert_eq!(list["data"], serde_json::json!(["A1", "A2"]));
    }
}
