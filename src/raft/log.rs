//! A group's Raft log as raft-rs reads it: the entries after the group's compaction
//! point, the term at that point (raft-rs matches a follower's log on the entry before
//! what it sends, which may be the last compacted one), the hard state and the voters.
//!
//! raft-rs' own `MemStorage` forgets the term of what it compacts, and answers a
//! request for a snapshot with an empty one whose index it raises to whatever is asked:
//! a follower installing that would skip entries it never received. This log never
//! pretends to hold a snapshot (a group whose peer needs one waits for it, logged;
//! snapshots of a stream's state are the next step), and grows only by `append`.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Why entries could not join the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("raft log entry {next} does not follow entry {last}")]
    Gap { last: u64, next: u64 },
    #[error("raft log entry {next} would overwrite the compacted log (up to {compacted})")]
    Compacted { compacted: u64, next: u64 },
    #[error("raft log cannot be compacted to {index}: it ends at {last}")]
    Beyond { index: u64, last: u64 },
}

/// Where a log was compacted: the last entry it dropped, and that entry's term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compacted {
    pub index: u64,
    pub term: u64,
}

#[derive(Debug, Default)]
pub struct GroupLog {
    hard: HardState,
    conf: ConfState,
    compacted: Compacted,
    entries: VecDeque<Entry>,
    /// The entries' payload bytes (data and context), for the group's status.
    bytes: usize,
    /// The last peer raft-rs wanted a snapshot for (it lacks entries compacted away),
    /// until the driver takes it to say so.
    snapshot_wanted_by: std::cell::Cell<u64>,
}

impl GroupLog {
    /// A log that was compacted at `compacted` and holds `entries` after it (in order,
    /// the first at `compacted.index + 1`).
    pub fn new(
        hard: HardState,
        conf: ConfState,
        compacted: Compacted,
        entries: Vec<Entry>,
    ) -> Result<GroupLog, LogError> {
        let mut log = GroupLog {
            hard,
            conf,
            compacted,
            ..GroupLog::default()
        };
        log.append(&entries)?;
        Ok(log)
    }

    /// The peer (id) that needed a snapshot since the last call, if one did: it lacks
    /// entries this log no longer holds and cannot catch up from it.
    pub fn take_snapshot_wanted(&self) -> Option<u64> {
        Some(self.snapshot_wanted_by.take()).filter(|&id| id != 0)
    }

    /// Appends `ents`, replacing whatever the log held from `ents[0].index` on (a new
    /// leader's entries win over an old one's uncommitted ones).
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), LogError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.compacted.index {
            return Err(LogError::Compacted {
                compacted: self.compacted.index,
                next: first.index,
            });
        }
        let last = self.last();
        if first.index > last + 1 {
            return Err(LogError::Gap {
                last,
                next: first.index,
            });
        }
        for pair in ents.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(LogError::Gap {
                    last: pair[0].index,
                    next: pair[1].index,
                });
            }
        }
        let keep = (first.index - self.compacted.index - 1) as usize;
        for dropped in self.entries.drain(keep..) {
            self.bytes -= size(&dropped);
        }
        for e in ents {
            self.bytes += size(e);
            self.entries.push_back(e.clone());
        }
        Ok(())
    }

    /// Drops every entry up to `index` (which the log must hold or have dropped);
    /// returns where the log is compacted now.
    pub fn compact_to(&mut self, index: u64) -> Result<Compacted, LogError> {
        if index <= self.compacted.index {
            return Ok(self.compacted);
        }
        let last = self.last();
        if index > last {
            return Err(LogError::Beyond { index, last });
        }
        let n = (index - self.compacted.index) as usize;
        let mut term = self.compacted.term;
        for e in self.entries.drain(..n) {
            self.bytes -= size(&e);
            term = e.term;
        }
        self.compacted = Compacted { index, term };
        Ok(self.compacted)
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard.commit = commit;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    pub fn compacted(&self) -> Compacted {
        self.compacted
    }

    /// Entries held (after the compaction point).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn last(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.compacted.index, |e| e.index)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let at = index.checked_sub(self.compacted.index + 1)?;
        self.entries.get(usize::try_from(at).ok()?)
    }
}

fn size(e: &Entry) -> usize {
    e.data.len() + e.context.len()
}

impl Storage for GroupLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut total = 0u64;
        for index in low..high {
            let Some(e) = self.get(index) else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            // At least one entry, then as many as fit (raft-rs' limit_size does the
            // same with the encoded size; payload bytes are close enough here).
            total += size(e) as u64;
            if !out.is_empty() && total > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if idx < self.compacted.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.get(idx)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.snapshot_wanted_by.set(to);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn appends_overwrite_the_tail_and_refuse_gaps() {
        let mut log = GroupLog::default();
        let first: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"ab")).collect();
        assert_eq!(log.append(&first), Ok(()));
        assert_eq!(log.bytes(), 10);
        // A new leader (term 2) replaces 4 and 5.
        assert_eq!(log.append(&[entry(4, 2, b"xyz")]), Ok(()));
        assert_eq!(log.last_index(), Ok(4));
        assert_eq!(log.term(4), Ok(2));
        assert_eq!(log.term(3), Ok(1));
        assert_eq!(log.bytes(), 9);
        assert_eq!(
            log.append(&[entry(6, 2, b"")]),
            Err(LogError::Gap { last: 4, next: 6 })
        );
        assert_eq!(
            log.append(&[entry(5, 2, b""), entry(7, 2, b"")]),
            Err(LogError::Gap { last: 5, next: 7 })
        );
        assert_eq!(log.last_index(), Ok(4), "a refused append changes nothing");
    }

    #[test]
    fn compaction_keeps_the_term_at_its_point_and_refuses_the_past() {
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5, b"x")).collect();
        let mut log = GroupLog::new(
            HardState::default(),
            ConfState::default(),
            Compacted::default(),
            ents,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.compact_to(6), Ok(Compacted { index: 6, term: 2 }));
        assert_eq!(log.first_index(), Ok(7));
        assert_eq!(log.last_index(), Ok(10));
        assert_eq!(log.len(), 4);
        assert_eq!(log.bytes(), 4);
        // raft-rs matches on the entry before what it sends: the compacted one's term.
        assert_eq!(log.term(6), Ok(2));
        assert!(log.term(5).is_err());
        assert!(log.entries(6, 8, None, ctx()).is_err());
        let got = log
            .entries(7, 11, None, ctx())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        assert_eq!(log.entries(7, 11, 2, ctx()).map(|v| v.len()), Ok(2));
        assert_eq!(log.entries(7, 11, 0, ctx()).map(|v| v.len()), Ok(1));
        assert!(log.entries(7, 12, None, ctx()).is_err(), "past the end");
        assert_eq!(
            log.append(&[entry(6, 3, b"")]),
            Err(LogError::Compacted {
                compacted: 6,
                next: 6
            })
        );
        assert_eq!(log.compact_to(3), Ok(Compacted { index: 6, term: 2 }));
        assert_eq!(
            log.compact_to(11),
            Err(LogError::Beyond {
                index: 11,
                last: 10
            })
        );
        // Compacted to its end, it still knows where it is.
        assert_eq!(log.compact_to(10), Ok(Compacted { index: 10, term: 3 }));
        assert!(log.is_empty());
        assert_eq!(log.last_index(), Ok(10));
        assert_eq!(log.term(10), Ok(3));
        assert_eq!(log.append(&[entry(11, 3, b"y")]), Ok(()));
    }

    #[test]
    fn a_log_reopened_after_compaction_starts_after_it() {
        let c = Compacted {
            index: 100,
            term: 4,
        };
        let ok = GroupLog::new(
            HardState::default(),
            ConfState::default(),
            c,
            vec![entry(101, 4, b""), entry(102, 5, b"")],
        );
        assert!(ok.is_ok());
        let gap = GroupLog::new(
            HardState::default(),
            ConfState::default(),
            c,
            vec![entry(102, 4, b"")],
        );
        assert_eq!(
            gap.map(|_| ()),
            Err(LogError::Gap {
                last: 100,
                next: 102
            })
        );
    }

    #[test]
    fn it_never_offers_a_snapshot() {
        let log = GroupLog::default();
        assert_eq!(log.take_snapshot_wanted(), None);
        assert_eq!(
            log.snapshot(5, 7).map(|_| ()),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        // Who wanted one is told once.
        assert_eq!(log.take_snapshot_wanted(), Some(7));
        assert_eq!(log.take_snapshot_wanted(), None);
    }
}
