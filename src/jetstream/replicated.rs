//! A replicated stream's Raft log entries: what its leader proposes and every replica
//! applies to its [`super::stream::Stream`] in log order. Each entry carries the
//! leader's clock (and a new consumer's name), so applying is deterministic: the same
//! entries give every replica the same messages, sequences, dedupe window and
//! consumer acks.
//!
//! Encoding: `tag | ts (i64 LE)` then the tag's fields, strings and byte strings as
//! `len (u32 LE) | bytes`, an absent reply as length `u32::MAX`. The Raft frame around
//! an entry has its checksum already.

use bytes::Bytes;
use serde::Deserialize;

use super::api;
use super::errors::ApiError;

/// One change to a replicated stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEntry {
    /// A message published on the stream's subjects.
    Publish {
        ts: i64,
        subject: String,
        hdr_len: u32,
        data: Bytes,
        /// Where the publisher waits for its PubAck (the leader answers).
        reply: Option<String>,
    },
    /// A consumer ack, as it came (`$JS.ACK.…` subject and body).
    Ack {
        ts: i64,
        subject: String,
        body: Bytes,
        reply: Option<String>,
    },
    /// A `$JS.API` request that changes the stream (consumer create or delete, purge,
    /// message delete), decided on apply; `name` names a consumer created without one.
    Api {
        ts: i64,
        subject: String,
        body: Bytes,
        reply: Option<String>,
        name: String,
    },
    /// A consumer the leader found inactive.
    RemoveConsumer { ts: i64, name: String },
}

/// Why an entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("replicated stream entry is truncated")]
    Truncated,
    #[error("replicated stream entry has unknown tag {0}")]
    Tag(u8),
    #[error("replicated stream entry has a name or subject that is not UTF-8")]
    Utf8,
    #[error("replicated stream entry has {0} bytes after its end")]
    Trailing(usize),
}

const PUBLISH: u8 = 1;
const ACK: u8 = 2;
const API: u8 = 3;
const REMOVE_CONSUMER: u8 = 4;
const NONE: u32 = u32::MAX;

impl StreamEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        let put_opt = |out: &mut Vec<u8>, s: &Option<String>| match s {
            Some(s) => put(out, s.as_bytes()),
            None => out.extend_from_slice(&NONE.to_le_bytes()),
        };
        match self {
            StreamEntry::Publish {
                ts,
                subject,
                hdr_len,
                data,
                reply,
            } => {
                out.reserve(data.len() + subject.len());
                out.push(PUBLISH);
                out.extend_from_slice(&ts.to_le_bytes());
                put(&mut out, subject.as_bytes());
                out.extend_from_slice(&hdr_len.to_le_bytes());
                put(&mut out, data);
                put_opt(&mut out, reply);
            }
            StreamEntry::Ack {
                ts,
                subject,
                body,
                reply,
            } => {
                out.push(ACK);
                out.extend_from_slice(&ts.to_le_bytes());
                put(&mut out, subject.as_bytes());
                put(&mut out, body);
                put_opt(&mut out, reply);
            }
            StreamEntry::Api {
                ts,
                subject,
                body,
                reply,
                name,
            } => {
                out.push(API);
                out.extend_from_slice(&ts.to_le_bytes());
                put(&mut out, subject.as_bytes());
                put(&mut out, body);
                put_opt(&mut out, reply);
                put(&mut out, name.as_bytes());
            }
            StreamEntry::RemoveConsumer { ts, name } => {
                out.push(REMOVE_CONSUMER);
                out.extend_from_slice(&ts.to_le_bytes());
                put(&mut out, name.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<StreamEntry, EntryError> {
        let mut r = Reader(bytes);
        let tag = r.u8()?;
        let ts = r.u64()? as i64;
        let entry = match tag {
            PUBLISH => StreamEntry::Publish {
                ts,
                subject: r.string()?,
                hdr_len: r.u32()?,
                data: r.bytes()?,
                reply: r.opt_string()?,
            },
            ACK => StreamEntry::Ack {
                ts,
                subject: r.string()?,
                body: r.bytes()?,
                reply: r.opt_string()?,
            },
            API => StreamEntry::Api {
                ts,
                subject: r.string()?,
                body: r.bytes()?,
                reply: r.opt_string()?,
                name: r.string()?,
            },
            REMOVE_CONSUMER => StreamEntry::RemoveConsumer {
                ts,
                name: r.string()?,
            },
            other => return Err(EntryError::Tag(other)),
        };
        match r.0.len() {
            0 => Ok(entry),
            n => Err(EntryError::Trailing(n)),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, EntryError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, EntryError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<Bytes, EntryError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    fn string(&mut self) -> Result<String, EntryError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| EntryError::Utf8)
    }

    fn opt_string(&mut self) -> Result<Option<String>, EntryError> {
        let n = self.u32()?;
        if n == NONE {
            return Ok(None);
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| EntryError::Utf8)
    }
}

/// A leader stepdown's body: empty, or `{"placement": {"preferred": "<server>"}}`.
#[derive(Debug, Default, Deserialize)]
struct StepdownRequest {
    #[serde(default)]
    placement: Option<StepdownPlacement>,
}

#[derive(Debug, Default, Deserialize)]
struct StepdownPlacement {
    #[serde(default)]
    preferred: Option<String>,
}

/// Whom a leader stepping down hands its group to: the peer the request prefers, else
/// one of the followers that hold everything (any reachable one if none does;
/// `followers`: name and whether it is current), picked by `pick(n)`. No such peer is the reference's 503 (10008); a body
/// that is not JSON, its 400 (10025).
pub fn stepdown_target(
    body: &[u8],
    followers: &[(String, bool)],
    pick: impl FnOnce(usize) -> usize,
) -> Result<String, ApiError> {
    let req: StepdownRequest = api::parse_optional(body)?;
    let preferred = req
        .placement
        .and_then(|p| p.preferred)
        .filter(|p| !p.is_empty());
    let named = |keep: &dyn Fn(&(String, bool)) -> bool| -> Vec<&String> {
        followers
            .iter()
            .filter(|f| keep(f))
            .map(|(n, _)| n)
            .collect()
    };
    let candidates = match &preferred {
        Some(name) => named(&|(n, _)| n == name),
        // raft-rs brings a follower that is behind up to date before it hands over.
        None => Some(named(&|(_, current)| *current))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| named(&|_| true)),
    };
    if candidates.is_empty() {
        return Err(ApiError::cluster_unavailable());
    }
    let at = pick(candidates.len()).min(candidates.len() - 1);
    Ok(candidates[at].clone())
}

/// Whom the meta leader (`me`) hands the meta group to on
/// `$JS.API.META.LEADER.STEPDOWN`: as [`stepdown_target`], except that the reference
/// answers a preferred server that is no meta peer, or that already leads, with 400
/// (10005) naming it.
pub fn meta_stepdown_target(
    body: &[u8],
    me: &str,
    followers: &[(String, bool)],
    pick: impl FnOnce(usize) -> usize,
) -> Result<String, ApiError> {
    let req: StepdownRequest = api::parse_optional(body)?;
    if let Some(name) = req
        .placement
        .and_then(|p| p.preferred)
        .filter(|p| !p.is_empty())
    {
        if name == me {
            return Err(ApiError::preferred_already_leader(&name));
        }
        if !followers.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::preferred_not_known(&name));
        }
    }
    stepdown_target(body, followers, pick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_stepdown_names_what_it_refuses_as_the_reference() {
        let followers = [("n2".to_string(), true), ("n3".to_string(), false)];
        let first = |_: usize| 0;
        assert_eq!(
            meta_stepdown_target(b"", "n1", &followers, first),
            Ok("n2".into())
        );
        let body = br#"{"placement":{"preferred":"n3"}}"#;
        assert_eq!(
            meta_stepdown_target(body, "n1", &followers, first),
            Ok("n3".into())
        );
        let body = br#"{"placement":{"preferred":"nope"}}"#;
        let e = meta_stepdown_target(body, "n1", &followers, first).unwrap_err();
        assert_eq!(
            (e.code, e.err_code, e.description.as_str()),
            (400, 10005, r#"preferred server "nope" not known"#)
        );
        let body = br#"{"placement":{"preferred":"n1"}}"#;
        let e = meta_stepdown_target(body, "n1", &followers, first).unwrap_err();
        assert_eq!(e.description, r#"preferred server "n1" is already leader"#);
        let e = meta_stepdown_target(b"{bad", "n1", &followers, first).unwrap_err();
        assert_eq!((e.code, e.err_code), (400, 10025));
        assert_eq!(
            meta_stepdown_target(b"", "n1", &[], first),
            Err(ApiError::cluster_unavailable())
        );
    }

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let all = [
            StreamEntry::Publish {
                ts: 17,
                subject: "orders.1".into(),
                hdr_len: 3,
                data: Bytes::from_static(b"hdrpayload"),
                reply: Some("_INBOX.a".into()),
            },
            StreamEntry::Publish {
                ts: -1,
                subject: "x".into(),
                hdr_len: 0,
                data: Bytes::new(),
                reply: None,
            },
            StreamEntry::Ack {
                ts: 5,
                subject: "$JS.ACK.S.C.1.2.3.4.5".into(),
                body: Bytes::from_static(b"+ACK"),
                reply: None,
            },
            StreamEntry::Api {
                ts: 9,
                subject: "$JS.API.CONSUMER.CREATE.S".into(),
                body: Bytes::from_static(b"{}"),
                reply: Some("r".into()),
                name: "abc".into(),
            },
            StreamEntry::RemoveConsumer {
                ts: 1,
                name: "gone".into(),
            },
        ];
        for e in &all {
            let bytes = e.encode();
            assert_eq!(StreamEntry::decode(&bytes).as_ref(), Ok(e));
            for cut in 0..bytes.len() {
                assert!(
                    StreamEntry::decode(&bytes[..cut]).is_err(),
                    "{e:?} cut at {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(StreamEntry::decode(&long), Err(EntryError::Trailing(1)));
        }
        assert_eq!(StreamEntry::decode(&[9; 9]), Err(EntryError::Tag(9)));
    }

    #[test]
    fn a_stepdown_hands_the_group_to_a_current_or_the_preferred_follower() {
        let followers = vec![("n2".to_string(), false), ("n3".to_string(), true)];
        assert_eq!(stepdown_target(b"", &followers, |_| 0), Ok("n3".into()));
        assert_eq!(
            stepdown_target(b"{}", &followers, |n| n - 1),
            Ok("n3".into())
        );
        let preferred = br#"{"placement":{"preferred":"n2"}}"#;
        assert_eq!(
            stepdown_target(preferred, &followers, |_| 0),
            Ok("n2".into())
        );
        let unknown = br#"{"placement":{"preferred":"n9"}}"#;
        let err = stepdown_target(unknown, &followers, |_| 0).unwrap_err();
        assert_eq!((err.code, err.err_code), (503, 10008));
        let err = stepdown_target(b"{bad json", &followers, |_| 0).unwrap_err();
        assert_eq!((err.code, err.err_code), (400, 10025));
        let behind = vec![("n2".to_string(), false)];
        assert_eq!(stepdown_target(b"", &behind, |_| 0), Ok("n2".into()));
        assert!(stepdown_target(b"", &[], |_| 0).is_err());
    }
}
