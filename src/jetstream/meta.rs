//! The meta group's state machine: which streams the clustered JetStream has, with
//! their configuration and the peers that hold them. Every JetStream peer applies the
//! same committed entries in the same order and so holds the same assignments; the
//! meta leader decides (validates, places) before it proposes, so applying never
//! fails and needs nothing but the entry.
//!
//! Entries are JSON (never protobuf): a peer's bytes are parsed by serde_json, which
//! has no recursion limit problem for these flat records and refuses what does not fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::api::StreamConfig;
use super::errors::ApiError;
use crate::subject;

/// One committed change to the assignments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaEntry {
    /// A new stream, held by `peers` (one for R1).
    AssignStream {
        config: StreamConfig,
        peers: Vec<String>,
        /// The stream's Raft group (when it has more than one peer).
        #[serde(default)]
        group: u64,
        created: i64,
        /// Where the client that asked waits for the answer (the stream's leader
        /// answers when it has created the stream).
        reply: Option<String>,
    },
    /// A stream's new configuration (already checked against the old one).
    UpdateStream {
        config: StreamConfig,
        reply: Option<String>,
    },
    /// A stream is gone.
    RemoveStream { name: String, reply: Option<String> },
}

impl MetaEntry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaEntry, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// A stream as the meta group knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub config: StreamConfig,
    pub peers: Vec<String>,
    pub group: u64,
    pub created: i64,
}

/// What applying an entry changed, for the node to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaChange {
    Assigned(String),
    Updated(String),
    Removed(Box<Assignment>),
    /// The entry changed nothing (a stream assigned twice, removed twice).
    Nothing,
}

/// Every stream of the clustered JetStream, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Meta {
    streams: BTreeMap<String, Assignment>,
}

/// The assignments as of an index of the meta log, stored so the log can drop what
/// came before: JSON, then a CRC-32 of it (u32 LE), checked before anything is read.
#[derive(Serialize, Deserialize)]
struct MetaSnapshot {
    index: u64,
    streams: BTreeMap<String, Assignment>,
}

/// Why a stored meta snapshot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("JetStream meta snapshot is {0} bytes, too short to hold its checksum")]
    Short(usize),
    #[error("JetStream meta snapshot fails its checksum")]
    Checksum,
    #[error("JetStream meta snapshot does not parse: {0}")]
    Parse(String),
}

impl Meta {
    pub fn stream(&self, name: &str) -> Option<&Assignment> {
        self.streams.get(name)
    }

    pub fn streams(&self) -> impl Iterator<Item = (&String, &Assignment)> {
        self.streams.iter()
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The assignments as of meta log index `index`, encoded for the store.
    pub fn snapshot(&self, index: u64) -> Vec<u8> {
        let snapshot = MetaSnapshot {
            index,
            streams: self.streams.clone(),
        };
        let mut out = serde_json::to_vec(&snapshot).unwrap_or_default();
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The assignments a stored snapshot holds, and the index they are as of.
    pub fn restore(bytes: &[u8]) -> Result<(u64, Meta), SnapshotError> {
        let body_len = bytes
            .len()
            .checked_sub(4)
            .ok_or(SnapshotError::Short(bytes.len()))?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(SnapshotError::Checksum);
        }
        let s: MetaSnapshot =
            serde_json::from_slice(body).map_err(|e| SnapshotError::Parse(e.to_string()))?;
        Ok((s.index, Meta { streams: s.streams }))
    }

    /// Applies a committed entry.
    pub fn apply(&mut self, entry: &MetaEntry) -> MetaChange {
        match entry {
            MetaEntry::AssignStream {
                config,
                peers,
                group,
                created,
                ..
            } => {
                if self.streams.contains_key(&config.name) {
                    return MetaChange::Nothing;
                }
                self.streams.insert(
                    config.name.clone(),
                    Assignment {
                        config: config.clone(),
                        peers: peers.clone(),
                        group: *group,
                        created: *created,
                    },
                );
                MetaChange::Assigned(config.name.clone())
            }
            MetaEntry::UpdateStream { config, .. } => match self.streams.get_mut(&config.name) {
                Some(a) => {
                    a.config = config.clone();
                    MetaChange::Updated(config.name.clone())
                }
                None => MetaChange::Nothing,
            },
            MetaEntry::RemoveStream { name, .. } => match self.streams.remove(name) {
                Some(a) => MetaChange::Removed(Box::new(a)),
                None => MetaChange::Nothing,
            },
        }
    }

    /// The leader's check of a new or changed stream against the others: its subjects
    /// must not overlap theirs.
    pub fn check_overlap(&self, config: &StreamConfig) -> Result<(), ApiError> {
        for (name, a) in &self.streams {
            if *name == config.name {
                continue;
            }
            let clash = config.subjects.iter().any(|x| {
                a.config
                    .subjects
                    .iter()
                    .any(|y| subject::overlaps(x.as_bytes(), y.as_bytes()))
            });
            if clash {
                return Err(ApiError::subjects_overlap());
            }
        }
        Ok(())
    }

    /// Where a new stream with `replicas` goes: the available peers holding the fewest
    /// streams, ties broken by `pick` (random at the leader); `None` when too few are
    /// available.
    pub fn place(
        &self,
        replicas: usize,
        available: &[String],
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> Option<Vec<String>> {
        if replicas == 0 || available.len() < replicas {
            return None;
        }
        let load = |peer: &String| {
            self.streams
                .values()
                .filter(|a| a.peers.contains(peer))
                .count()
        };
        let mut candidates: Vec<(usize, &String)> =
            available.iter().map(|p| (load(p), p)).collect();
        candidates.sort();
        let mut chosen = Vec::with_capacity(replicas);
        while chosen.len() < replicas {
            let least = candidates.first().map(|c| c.0)?;
            let ties: Vec<usize> = (0..candidates.len())
                .filter(|i| candidates[*i].0 == least)
                .collect();
            let at = ties[pick(ties.len()).min(ties.len() - 1)];
            let (_, peer) = candidates.remove(at);
            chosen.push(peer.clone());
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, subjects: &[&str]) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..StreamConfig::default()
        }
    }

    fn assign(name: &str, subjects: &[&str], peer: &str) -> MetaEntry {
        MetaEntry::AssignStream {
            config: config(name, subjects),
            peers: vec![peer.into()],
            group: 0,
            created: 1,
            reply: Some("_INBOX.x".into()),
        }
    }

    #[test]
    fn entries_round_trip_and_apply_the_same_everywhere() {
        let log = [
            assign("A", &["a.>"], "n1"),
            assign("B", &["b.>"], "n2"),
            assign("A", &["a.>"], "n3"),
            MetaEntry::UpdateStream {
                config: config("B", &["b.>", "bb"]),
                reply: None,
            },
            MetaEntry::RemoveStream {
                name: "A".into(),
                reply: None,
            },
        ];
        let bytes: Vec<Vec<u8>> = log.iter().map(MetaEntry::encode).collect();
        let mut one = Meta::default();
        let mut two = Meta::default();
        let mut changes = Vec::new();
        for b in &bytes {
            let e = MetaEntry::decode(b).unwrap_or_else(|e| panic!("{e}"));
            changes.push(one.apply(&e));
            two.apply(&e);
        }
        assert_eq!(changes[2], MetaChange::Nothing, "assigned twice");
        assert!(matches!(changes[4], MetaChange::Removed(ref a) if a.peers == ["n1"]));
        assert_eq!(one.len(), 1);
        assert_eq!(one.stream("B"), two.stream("B"));
        assert_eq!(
            one.stream("B").map(|a| a.config.subjects.clone()),
            Some(vec!["b.>".to_string(), "bb".to_string()])
        );
        assert!(MetaEntry::decode(b"{\"op\":\"assign_stream\"}").is_err());
        assert!(MetaEntry::decode(&[0xff; 8]).is_err());
    }

    #[test]
    fn a_snapshot_and_the_entries_after_it_give_what_the_whole_log_gives() {
        let log = [
            assign("A", &["a.>"], "n1"),
            assign("B", &["b.>"], "n2"),
            MetaEntry::UpdateStream {
                config: config("B", &["b.>", "bb"]),
                reply: None,
            },
            assign("C", &["c"], "n3"),
            MetaEntry::RemoveStream {
                name: "A".into(),
                reply: None,
            },
        ];
        let mut whole = Meta::default();
        for e in &log {
            whole.apply(e);
        }
        for cut in 0..=log.len() {
            let mut first = Meta::default();
            for e in &log[..cut] {
                first.apply(e);
            }
            let bytes = first.snapshot(cut as u64);
            let (index, mut restored) = Meta::restore(&bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((index, &restored), (cut as u64, &first));
            for e in &log[index as usize..] {
                restored.apply(e);
            }
            assert_eq!(restored, whole, "cut at {cut}");
        }
        let bytes = whole.snapshot(9);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Meta::restore(&bad).is_err(), "byte {i} flipped");
        }
        assert_eq!(Meta::restore(b"abc"), Err(SnapshotError::Short(3)));
        let mut not_json = b"{nope".to_vec();
        not_json.extend_from_slice(&crc32fast::hash(b"{nope").to_le_bytes());
        assert!(matches!(
            Meta::restore(&not_json),
            Err(SnapshotError::Parse(_))
        ));
    }

    #[test]
    fn overlapping_subjects_are_refused_and_placement_spreads_streams() {
        let mut meta = Meta::default();
        meta.apply(&assign("A", &["a.>"], "n1"));
        meta.apply(&assign("B", &["b.*"], "n1"));
        meta.apply(&assign("C", &["c"], "n2"));
        assert_eq!(
            meta.check_overlap(&config("X", &["a.b"])),
            Err(ApiError::subjects_overlap())
        );
        assert!(meta.check_overlap(&config("A", &["a.>", "z"])).is_ok());
        assert!(meta.check_overlap(&config("X", &["x.>"])).is_ok());
        let peers: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let mut first = |_: usize| 0;
        // n3 holds nothing, n2 one, n1 two.
        assert_eq!(
            meta.place(1, &peers, &mut first),
            Some(vec!["n3".to_string()])
        );
        assert_eq!(
            meta.place(3, &peers, &mut first),
            Some(vec!["n3".to_string(), "n2".to_string(), "n1".to_string()])
        );
        assert_eq!(meta.place(4, &peers, &mut first), None);
        assert_eq!(meta.place(1, &[], &mut first), None);
    }
}
