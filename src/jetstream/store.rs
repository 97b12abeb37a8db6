//! The in-memory view of one stream's messages: which sequences exist, their subjects,
//! sizes and times, per-subject sequence lists, interior deletes, and (for memory
//! streams, or recent messages of file streams) the message bytes themselves.
//!
//! Persistence is not this module's business: the stream records what changed and the
//! storage actor writes it. A file stream rebuilds this view from redb on start; bytes
//! that are not cached here are read back from redb when a consumer needs them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::subject;

/// One stored message as the index knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Nanoseconds since the Unix epoch, when the stream stored it.
    pub ts: i64,
    pub subject: Arc<str>,
    /// Length of the header block at the start of the message bytes (0: none).
    pub hdr_len: u32,
    /// Length of the header block plus payload.
    pub len: u32,
    /// Header block followed by payload, when held in memory.
    pub data: Option<Bytes>,
    /// Expiry (ns since epoch) from a per-message TTL, if any.
    pub expires: Option<i64>,
}

/// How a stream counts a message's bytes: as the reference's memory or file store
/// does, so `max_bytes` limits and STREAM.INFO's `bytes` agree with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accounting {
    /// Subject, headers and payload, plus 16.
    #[default]
    Memory,
    /// The file store's record: subject, headers and payload, a 30-byte frame, and 4
    /// more when there are headers.
    File,
}

impl Accounting {
    /// How a stream kept in `storage` counts.
    pub fn of(storage: crate::jetstream::api::Storage) -> Accounting {
        match storage {
            crate::jetstream::api::Storage::Memory => Accounting::Memory,
            crate::jetstream::api::Storage::File => Accounting::File,
        }
    }

    pub fn size(self, entry: &Entry) -> u64 {
        self.message_size(
            entry.subject.len(),
            entry.len as usize,
            entry.hdr_len as usize,
        )
    }

    /// The bytes a message of `len` bytes (`hdr_len` of them headers) on a subject of
    /// `subject_len` bytes counts for.
    pub fn message_size(self, subject_len: usize, len: usize, hdr_len: usize) -> u64 {
        let body = (subject_len + len) as u64;
        match self {
            Accounting::Memory => body + 16,
            Accounting::File => body + 30 + if hdr_len > 0 { 4 } else { 0 },
        }
    }
}

/// A message with its bytes, as handed to consumers and API replies.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub seq: u64,
    pub ts: i64,
    pub subject: Arc<str>,
    pub hdr_len: usize,
    pub data: Bytes,
}

impl Loaded {
    pub fn headers(&self) -> &[u8] {
        self.data.get(..self.hdr_len).unwrap_or_default()
    }

    pub fn payload(&self) -> &[u8] {
        self.data.get(self.hdr_len..).unwrap_or_default()
    }
}

/// The stream's state numbers, as STREAM.INFO reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub msgs: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub first_ts: i64,
    pub last_seq: u64,
    pub last_ts: i64,
    pub num_deleted: u64,
    pub num_subjects: u64,
}

#[derive(Debug, Default)]
pub struct StreamStore {
    msgs: BTreeMap<u64, Entry>,
    /// Sequences per subject, ascending.
    subjects: HashMap<Arc<str>, VecDeque<u64>, foldhash::fast::RandomState>,
    /// Missing sequences between the first and the last present one.
    deleted: BTreeSet<u64>,
    bytes: u64,
    /// The last sequence ever assigned (survives purges, so sequences never repeat).
    last_seq: u64,
    last_ts: i64,
    /// The last sequence known to be durable; consumers deliver nothing beyond it.
    durable: u64,
    /// The last sequence committed to redb (with `jetstream.ack = "write"` it trails
    /// `durable`): only messages up to it may leave the cache, since a message
    /// missing from the cache is read back from redb.
    committed: u64,
    /// Bytes of cached message data (file streams evict the oldest beyond a budget).
    cached: u64,
    cache_budget: u64,
    /// No message below this sequence holds cached bytes: eviction starts here rather
    /// than walking every evicted message again (a scan from the first message on
    /// each publish made a long stream's publishes quadratic).
    evict_from: u64,
    accounting: Accounting,
}

impl StreamStore {
    /// `cache_budget`: bytes of message data kept in memory (`u64::MAX` for memory
    /// streams, which have nowhere else to keep them).
    pub fn new(cache_budget: u64, accounting: Accounting) -> Self {
        StreamStore {
            cache_budget,
            accounting,
            ..Default::default()
        }
    }

    pub fn cache_budget(&self) -> u64 {
        self.cache_budget
    }

    /// The bytes `entry` counts for in this stream.
    pub fn size_of(&self, entry: &Entry) -> u64 {
        self.accounting.size(entry)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The last sequence committed to storage (memory streams: the last sequence).
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    pub fn set_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    pub fn set_committed(&mut self, seq: u64) {
        self.committed = self.committed.max(seq);
        self.evict();
    }

    /// The sequence of the first message, or `last_seq + 1` when empty (as the
    /// reference reports it).
    pub fn first_seq(&self) -> u64 {
        self.msgs
            .first_key_value()
            .map_or(self.last_seq + 1, |(s, _)| *s)
    }

    pub fn len(&self) -> u64 {
        self.msgs.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn totals(&self) -> Totals {
        let first = self.msgs.first_key_value();
        Totals {
            msgs: self.len(),
            bytes: self.bytes,
            first_seq: self.first_seq(),
            first_ts: first.map_or(0, |(_, e)| e.ts),
            last_seq: self.last_seq,
            last_ts: self.last_ts,
            num_deleted: self.deleted.len() as u64,
            num_subjects: self.subjects.len() as u64,
        }
    }

    pub fn deleted(&self) -> impl Iterator<Item = u64> + '_ {
        self.deleted.iter().copied()
    }

    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.msgs.get(&seq)
    }

    pub fn first_entry(&self) -> Option<(u64, &Entry)> {
        self.msgs.first_key_value().map(|(s, e)| (*s, e))
    }

    /// Sets the sequence the next message continues from (restores, `first_seq`
    /// config, purges that move the floor).
    pub fn set_last(&mut self, last_seq: u64, last_ts: i64) {
        if self.msgs.is_empty() {
            self.last_seq = last_seq;
            self.last_ts = last_ts;
        }
    }

    /// Adds a message with the next sequence, or with `seq` on restore.
    pub fn insert(&mut self, seq: u64, entry: Entry) {
        if seq > self.last_seq + 1 && !self.msgs.is_empty() {
            self.deleted.extend(self.last_seq + 1..seq);
        }
        self.last_seq = self.last_seq.max(seq);
        self.last_ts = self.last_ts.max(entry.ts);
        self.bytes += self.accounting.size(&entry);
        if let Some(d) = &entry.data {
            self.cached += d.len() as u64;
            self.evict_from = self.evict_from.min(seq);
        }
        let list = self.subjects.entry(entry.subject.clone()).or_default();
        match list.back() {
            Some(&last) if last > seq => {
                let at = list.partition_point(|&s| s < seq);
                list.insert(at, seq);
            }
            _ => list.push_back(seq),
        }
        self.msgs.insert(seq, entry);
        self.evict();
    }

    /// Drops cached bytes of the oldest messages beyond the budget (they stay in redb).
    fn evict(&mut self) {
        if self.cached <= self.cache_budget {
            return;
        }
        let mut next = self.evict_from;
        for (&seq, e) in self.msgs.range_mut(self.evict_from..) {
            if self.cached <= self.cache_budget / 2 || seq > self.committed {
                break;
            }
            if let Some(d) = e.data.take() {
                self.cached -= d.len() as u64;
            }
            next = seq + 1;
        }
        self.evict_from = next;
    }

    /// Puts bytes read back from redb into the cache (when they fit).
    pub fn recache(&mut self, seq: u64, data: &Bytes) {
        if self.cached + data.len() as u64 > self.cache_budget {
            return;
        }
        if let Some(e) = self.msgs.get_mut(&seq) {
            if e.data.is_none() {
                self.cached += data.len() as u64;
                e.data = Some(data.clone());
                self.evict_from = self.evict_from.min(seq);
            }
        }
    }

    /// Removes one message. Returns it if it existed.
    pub fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.msgs.remove(&seq)?;
        self.bytes -= self.accounting.size(&entry);
        if let Some(d) = &entry.data {
            self.cached -= d.len() as u64;
        }
        if let Some(list) = self.subjects.get_mut(&entry.subject) {
            if list.front() == Some(&seq) {
                list.pop_front();
            } else if let Ok(at) = list.binary_search(&seq) {
                list.remove(at);
            }
            if list.is_empty() {
                self.subjects.remove(&entry.subject);
            }
        }
        match self.msgs.first_key_value() {
            None => self.deleted.clear(),
            Some((&first, _)) if seq < first => {
                // The head moved: deletes below the new first are not interior.
                self.deleted = self.deleted.split_off(&first);
            }
            // Between the first and the last sequence (the last one removed included,
            // since the last sequence never moves back).
            Some(_) => {
                self.deleted.insert(seq);
            }
        }
        Some(entry)
    }

    /// Number of messages on `subject` (literal).
    pub fn subject_count(&self, subject: &str) -> u64 {
        self.subjects.get(subject).map_or(0, |l| l.len() as u64)
    }

    /// The sequences on a literal subject, oldest first.
    pub fn subject_seqs(&self, subject: &str) -> impl Iterator<Item = u64> + '_ {
        self.subjects
            .get(subject)
            .into_iter()
            .flat_map(|l| l.iter().copied())
    }

    /// The last sequence on a literal subject.
    pub fn last_of_subject(&self, subject: &str) -> Option<u64> {
        self.subjects.get(subject).and_then(|l| l.back().copied())
    }

    /// Subjects with their message counts, restricted to those matching `filter`.
    pub fn subjects_matching<'a>(
        &'a self,
        filter: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<str>, u64)> + 'a {
        self.subjects
            .iter()
            .filter(move |(s, _)| subject::matches(filter.as_bytes(), s.as_bytes()))
            .map(|(s, l)| (s, l.len() as u64))
    }

    /// The last sequence of a subject matching `filter` (wildcards allowed).
    pub fn last_matching(&self, filter: &str) -> Option<u64> {
        if is_literal(filter) {
            return self.last_of_subject(filter);
        }
        self.subjects_matching(filter)
            .filter_map(|(s, _)| self.last_of_subject(s))
            .max()
    }

    /// The first sequence ≥ `from` whose subject matches any of `filters` (all
    /// subjects when `filters` is empty).
    pub fn next_matching(&self, from: u64, filters: &[String]) -> Option<u64> {
        match filters {
            [] => self.msgs.range(from..).next().map(|(s, _)| *s),
            [one] if is_literal(one) => {
                let list = self.subjects.get(one.as_str())?;
                let at = list.partition_point(|&s| s < from);
                list.get(at).copied()
            }
            _ => self
                .msgs
                .range(from..)
                .find(|(_, e)| matches_any(filters, &e.subject))
                .map(|(s, _)| *s),
        }
    }

    /// How many messages with sequence ≥ `from` match `filters` (all when empty).
    pub fn count_from(&self, from: u64, filters: &[String]) -> u64 {
        if filters.is_empty() {
            let first = self.first_seq();
            if from <= first {
                return self.len();
            }
            if from > self.last_seq {
                return 0;
            }
            let gone = self.deleted.range(from..).count() as u64;
            return (self.last_seq - from + 1).saturating_sub(gone);
        }
        self.subjects
            .iter()
            .filter(|(s, _)| matches_any(filters, s))
            .map(|(_, l)| (l.len() - l.partition_point(|&s| s < from)) as u64)
            .sum()
    }

    /// The last message of each subject matching `filters`, in sequence order
    /// (deliver policy `last_per_subject`).
    pub fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .subjects
            .iter()
            .filter(|(s, _)| filters.is_empty() || matches_any(filters, s))
            .filter_map(|(_, l)| l.back().copied())
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// The first sequence whose time is ≥ `ts`.
    pub fn first_at_or_after(&self, ts: i64) -> Option<u64> {
        // Times grow with sequences, so the first match is found by walking forward.
        self.msgs.iter().find(|(_, e)| e.ts >= ts).map(|(s, _)| *s)
    }

    /// Sequences in ascending order from `from` (inclusive).
    pub fn seqs_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        self.msgs.range(from..).map(|(s, _)| *s)
    }

    /// Every sequence whose message has expired by `now` (per-message TTL).
    pub fn ttl_expired(&self, now: i64) -> Vec<u64> {
        self.msgs
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|x| x <= now))
            .map(|(s, _)| *s)
            .collect()
    }

    /// The earliest per-message TTL expiry.
    pub fn next_ttl(&self) -> Option<i64> {
        self.msgs.values().filter_map(|e| e.expires).min()
    }
}

/// Does a filter have no wildcard tokens?
pub fn is_literal(filter: &str) -> bool {
    !filter.split('.').any(|t| t == "*" || t == ">")
}

/// Does `subject` match any of `filters` (all subjects when empty)?
pub fn matches_any(filters: &[String], subject: &str) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|f| subject::matches(f.as_bytes(), subject.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes the reference reported for these messages (probe, docs/reference-jetstream-wire.md).
    #[test]
    fn byte_accounting_matches_the_reference_file_store() {
        let sized = |subject: &str, hdr_len: u32, len: u32| {
            Accounting::File.size(&Entry {
                ts: 0,
                subject: subject.into(),
                hdr_len,
                len,
                data: None,
                expires: None,
            })
        };
        assert_eq!(sized("d.a", 0, 1), 34);
        assert_eq!(sized("db.a", 0, 50), 84);
        assert_eq!(sized("m.a", 0, 10), 43);
        assert_eq!(sized("ru.a", 30, 31), 69);
    }

    fn entry(subject: &str, ts: i64) -> Entry {
        Entry {
            ts,
            subject: subject.into(),
            hdr_len: 0,
            len: 3,
            data: Some(Bytes::from_static(b"abc")),
            expires: None,
        }
    }

    fn store(subjects: &[&str]) -> StreamStore {
        let mut s = StreamStore::new(u64::MAX, Accounting::Memory);
        for (i, subj) in subjects.iter().enumerate() {
            s.insert(i as u64 + 1, entry(subj, i as i64));
        }
        s
    }

    #[test]
    fn interior_deletes_and_head_moves() {
        let mut s = store(&["a", "b", "a", "c", "a"]);
        assert_eq!(s.totals().msgs, 5);
        s.remove(3);
        assert_eq!(s.deleted().collect::<Vec<_>>(), vec![3]);
        s.remove(1);
        s.remove(2);
        // 3 is below the new first (4): no longer interior.
        assert_eq!(s.first_seq(), 4);
        assert_eq!(s.deleted().count(), 0);
        assert_eq!(s.subject_count("a"), 1);
        assert_eq!(s.last_of_subject("a"), Some(5));
        s.remove(5);
        assert_eq!(s.last_seq(), 5, "sequences never go back");
        s.remove(4);
        assert!(s.is_empty());
        assert_eq!(s.first_seq(), 6);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn removing_the_last_message_leaves_a_gap() {
        let mut s = store(&["a", "b", "c"]);
        s.remove(3);
        s.remove(2);
        assert_eq!(s.totals().num_deleted, 2);
        assert_eq!(s.count_from(1, &[]), 1);
        s.insert(4, entry("d", 9));
        assert_eq!(s.count_from(2, &[]), 1);
    }

    #[test]
    fn filtered_queries() {
        let s = store(&["a.1", "b.1", "a.2", "a.1"]);
        let f = vec!["a.*".to_string()];
        assert_eq!(s.next_matching(2, &f), Some(3));
        assert_eq!(s.next_matching(2, &["a.1".to_string()]), Some(4));
        assert_eq!(s.count_from(1, &f), 3);
        assert_eq!(s.count_from(4, &f), 1);
        assert_eq!(s.count_from(2, &[]), 3);
        assert_eq!(s.last_per_subject(&f), vec![3, 4]);
        assert_eq!(s.last_matching("a.*"), Some(4));
        assert_eq!(s.first_at_or_after(2), Some(3));
    }

    #[test]
    fn file_streams_evict_cached_bytes_once_committed() {
        let mut s = StreamStore::new(6, Accounting::Memory);
        for i in 1..=4 {
            s.insert(i, entry("x", 0));
        }
        // Not in redb yet: the cache is the only copy.
        assert!((1..=4).all(|i| s.get(i).is_some_and(|e| e.data.is_some())));
        s.set_committed(2);
        assert!(s.get(1).is_some_and(|e| e.data.is_none()));
        assert!(s.get(3).is_some_and(|e| e.data.is_some()));
        s.set_committed(4);
        assert!(s.get(4).is_some_and(|e| e.data.is_some()));
    }

    #[test]
    fn bytes_read_back_into_the_cache_are_evicted_again() {
        let mut s = StreamStore::new(9, Accounting::Memory);
        for i in 1..=4 {
            s.insert(i, entry("x", 0));
            s.set_committed(i);
        }
        assert!(s.get(1).is_some_and(|e| e.data.is_none()));
        // Read back (a consumer fetched it), below where eviction got to.
        s.recache(1, &Bytes::from_static(b"abc"));
        assert!(s.get(1).is_some_and(|e| e.data.is_some()));
        for i in 5..=8 {
            s.insert(i, entry("x", 0));
            s.set_committed(i);
        }
        assert!(s.get(1).is_some_and(|e| e.data.is_none()));
        assert!(s.get(8).is_some_and(|e| e.data.is_some()));
    }
}
