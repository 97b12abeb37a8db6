//! A stream's state machine: its configuration (validated and filled with the
//! reference's defaults), its messages ([`StreamStore`]), duplicate detection, the
//! publish preconditions and limits, purges and deletes, and its consumers.
//!
//! Every mutation is also recorded as a [`Change`]; the stream actor drains them and
//! hands them to the storage actor, so the state machine stays free of I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::advisory::{Action, Advisory};
use super::api::{
    self, ConsumerConfig, Discard, MsgGetRequest, PubAck, PurgeRequest, Retention, StreamConfig,
    StreamInfo, StreamInfoRequest, StreamState,
};
use super::consumer::{AckKind, Consumer, Outbound};
use super::errors::ApiError;
use super::headers;
use super::store::{self, Entry, StreamStore};
use crate::subject;

mod records;
mod requests;

pub use requests::{direct_message, msg_get_response, normalize_consumer, Answer, Request};

/// A mutation the storage actor must persist.
#[derive(Debug, Clone)]
pub enum Change {
    Append {
        seq: u64,
        ts: i64,
        subject: Arc<str>,
        hdr_len: u32,
        data: Bytes,
        expires: Option<i64>,
    },
    Remove(u64),
    /// Every message with a sequence below this one is gone.
    RemoveBelow(u64),
    /// A consumer's config or state changed.
    Consumer(String),
    ConsumerDeleted(String),
    /// The stream's config changed.
    Config,
}

/// Longest name a stream or consumer may have.
pub const MAX_NAME_LEN: usize = 255;

/// Is `name` usable as a stream or consumer name?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name
            .bytes()
            .any(|b| matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\') || b.is_ascii_whitespace())
}

/// The most replicas a stream may have (as at the reference).
pub const MAX_REPLICAS: i64 = 5;

/// [`normalize_config`] for a clustered JetStream, where a stream may have up to
/// [`MAX_REPLICAS`] replicas.
pub fn normalize_clustered_config(mut c: StreamConfig) -> Result<StreamConfig, ApiError> {
    let replicas = c.num_replicas;
    if replicas > MAX_REPLICAS {
        return Err(ApiError::invalid_stream_config(
            "replicas > 5 not supported",
        ));
    }
    if replicas > 1 {
        c.num_replicas = 1;
    }
    let mut c = normalize_config(c)?;
    if replicas > 1 {
        c.num_replicas = replicas;
    }
    Ok(c)
}

/// Validates a stream config from a create request and fills in defaults.
pub fn normalize_config(mut c: StreamConfig) -> Result<StreamConfig, ApiError> {
    api::strip_server_metadata(&mut c.metadata);
    if c.name.is_empty() {
        return Err(ApiError::invalid_stream_config("stream name is required"));
    }
    if !valid_name(&c.name) {
        return Err(ApiError::invalid_stream_config(
            "stream name is required and can not contain '.', '*', '>', '\\', '/'",
        ));
    }
    if c.num_replicas == 0 {
        c.num_replicas = 1;
    }
    if c.num_replicas > 1 {
        return Err(ApiError::replicas_not_supported());
    }
    if c.num_replicas < 0 {
        return Err(ApiError::invalid_stream_config(
            "replicas count cannot be negative",
        ));
    }
    super::sourcing::check_config(&c)?;
    for (what, set) in [
        ("republish", c.republish.is_some()),
        ("subject_transform", c.subject_transform.is_some()),
    ] {
        if set {
            return Err(ApiError::invalid_stream_config(&format!(
                "stream {what} is not supported by meshbroker yet"
            )));
        }
    }
    // A stream with neither subjects nor a mirror or sources listens on its name; one
    // that sources others may have no subjects of its own.
    if c.subjects.is_empty() && c.mirror.is_none() && c.sources.as_ref().is_none_or(Vec::is_empty) {
        c.subjects = vec![c.name.clone()];
    }
    for (i, s) in c.subjects.iter().enumerate() {
        if !subject::is_valid_subject(s.as_bytes()) {
            return Err(ApiError::invalid_stream_config(&format!(
                "invalid subject: {s}"
            )));
        }
        if c.subjects[..i].contains(s) {
            return Err(ApiError::invalid_stream_config(
                "duplicate subjects detected",
            ));
        }
        if subject::overlaps(s.as_bytes(), b"$JS.API.>") && !c.no_ack {
            return Err(ApiError::invalid_stream_config(
                "subjects that overlap with jetstream api require no-ack to be true",
            ));
        }
    }
    for v in [
        &mut c.max_msgs,
        &mut c.max_bytes,
        &mut c.max_msgs_per_subject,
        &mut c.max_msg_size,
        &mut c.max_consumers,
    ] {
        if *v == 0 {
            *v = -1;
        }
    }
    if c.max_age < 0 {
        return Err(ApiError::invalid_stream_config("max age needs to be >= 0"));
    }
    if c.max_age > 0 && c.max_age < 100_000_000 {
        return Err(ApiError::invalid_stream_config(
            "max age needs to be >= 100ms",
        ));
    }
    let sourcing = c.mirror.is_some() || c.sources.as_ref().is_some_and(|s| !s.is_empty());
    if c.duplicate_window == 0 && !sourcing {
        c.duplicate_window = api::DEFAULT_DUPLICATE_WINDOW;
        if c.max_age > 0 && c.max_age < c.duplicate_window {
            c.duplicate_window = c.max_age;
        }
    }
    if c.duplicate_window < 0 {
        return Err(ApiError::invalid_stream_config(
            "duplicates window can not be negative",
        ));
    }
    if c.max_age > 0 && c.duplicate_window > c.max_age {
        return Err(ApiError::invalid_stream_config(
            "duplicates window can not be larger then max age",
        ));
    }
    if c.discard_new_per_subject && (c.discard != Discard::New || c.max_msgs_per_subject <= 0) {
        return Err(ApiError::invalid_stream_config(
            "discard new per subject requires discard new policy and max msgs per subject",
        ));
    }
    if c.deny_purge && c.allow_rollup_hdrs {
        return Err(ApiError::invalid_stream_config(
            "roll-ups require the purge permission",
        ));
    }
    if c.subject_delete_marker_ttl > 0 && !c.allow_msg_ttl {
        return Err(ApiError::invalid_stream_config(
            "subject marker delete cannot be set if message TTLs are disabled",
        ));
    }
    Ok(c)
}

/// May an account with `limits` (its JWT's) add stream `config` to `existing`: fewer
/// streams than `max_streams` (0 or -1: no limit), and the bytes the streams of its
/// storage reserve (their `max_bytes`) within the account's storage limit?
pub fn check_account_limits<'a>(
    limits: &api::AccountLimits,
    config: &StreamConfig,
    existing: impl Iterator<Item = &'a StreamConfig>,
) -> Result<(), ApiError> {
    let mut count = 0;
    let mut reserved: u64 = 0;
    for other in existing {
        count += 1;
        if other.storage == config.storage {
            reserved = reserved.saturating_add(other.max_bytes.max(0) as u64);
        }
    }
    if limits.max_streams > 0 && count >= limits.max_streams {
        return Err(ApiError::max_streams());
    }
    let (max, err) = match config.storage {
        api::Storage::Memory => (limits.max_memory, ApiError::insufficient_memory()),
        api::Storage::File => (limits.max_storage, ApiError::insufficient_storage()),
    };
    let wanted = reserved.saturating_add(config.max_bytes.max(0) as u64);
    match u64::try_from(max) {
        Ok(max) if wanted > max => Err(err),
        _ => Ok(()),
    }
}

/// Checks an update against the current config (what may not change).
pub fn check_update(old: &StreamConfig, new: &StreamConfig) -> Result<(), ApiError> {
    super::sourcing::check_update(old, new)?;
    if old.storage != new.storage {
        return Err(ApiError::stream_update(
            "stream configuration update can not change storage type",
        ));
    }
    if old.retention != new.retention {
        return Err(ApiError::stream_update(
            "stream configuration update can not change retention policy",
        ));
    }
    if old.sealed && !new.sealed {
        return Err(ApiError::stream_update(
            "stream configuration update can not unseal a sealed stream",
        ));
    }
    if old.deny_delete && !new.deny_delete {
        return Err(ApiError::stream_update(
            "stream configuration update can not cancel deny message deletes",
        ));
    }
    if old.deny_purge && !new.deny_purge {
        return Err(ApiError::stream_update(
            "stream configuration update can not cancel deny purge",
        ));
    }
    Ok(())
}

/// Parses a `Nats-TTL` value: seconds, a duration (`1m`), or `never`. Returns ns
/// (`None` for never).
fn parse_ttl(v: &str) -> Result<Option<i64>, ApiError> {
    if v.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let ns = match v.parse::<i64>() {
        Ok(secs) => secs.checked_mul(1_000_000_000),
        Err(_) => humantime::parse_duration(v)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok()),
    };
    match ns {
        Some(ns) if ns >= 1_000_000_000 => Ok(Some(ns)),
        _ => Err(ApiError::ttl_invalid()),
    }
}

pub struct Stream {
    config: StreamConfig,
    created: i64,
    store: StreamStore,
    /// Nats-Msg-Id → (sequence, time), and the same ids by time for expiry.
    dedupe: HashMap<String, (u64, i64)>,
    dedupe_order: VecDeque<(i64, String)>,
    last_msg_id: String,
    consumers: BTreeMap<String, Consumer>,
    changes: Vec<Change>,
    advisories: Vec<Advisory>,
}

/// An empty store for a stream kept in `storage`: memory streams cache everything
/// (there is nowhere else), file streams up to `cache_budget` bytes.
fn new_store(storage: api::Storage, cache_budget: u64) -> StreamStore {
    let accounting = store::Accounting::of(storage);
    match storage {
        api::Storage::Memory => StreamStore::new(u64::MAX, accounting),
        api::Storage::File => StreamStore::new(cache_budget, accounting),
    }
}

impl Stream {
    pub fn new(config: StreamConfig, created: i64, cache_budget: u64) -> Stream {
        let mut store = new_store(config.storage, cache_budget);
        if config.first_seq > 1 {
            store.set_last(config.first_seq - 1, 0);
        }
        Stream {
            config,
            created,
            store,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            last_msg_id: String::new(),
            consumers: BTreeMap::new(),
            changes: Vec::new(),
            advisories: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// The stream's messages (read side; every change goes through the stream).
    pub fn store(&self) -> &StreamStore {
        &self.store
    }

    /// Messages up to `seq` are durable: consumers may deliver them.
    pub fn set_durable(&mut self, seq: u64) {
        self.store.set_durable(seq);
    }

    /// Messages up to `seq` are committed to storage: the cache may drop their bytes.
    pub fn set_committed(&mut self, seq: u64) {
        self.store.set_committed(seq);
    }

    /// Puts a message's bytes, read back from storage, into the cache.
    pub fn recache(&mut self, seq: u64, data: &Bytes) {
        self.store.recache(seq, data);
    }

    pub fn consumer(&self, name: &str) -> Option<&Consumer> {
        self.consumers.get(name)
    }

    pub fn consumer_mut(&mut self, name: &str) -> Option<&mut Consumer> {
        self.consumers.get_mut(name)
    }

    /// Every consumer, `direct` ones included.
    pub fn consumers(&self) -> impl Iterator<Item = &Consumer> {
        self.consumers.values()
    }

    /// A flow-control reply came on `subject`: the push consumer waiting for it goes on.
    pub fn flow_control_reply(&mut self, subject: &str) {
        for c in self.consumers.values_mut() {
            c.flow_control_reply(subject);
        }
    }

    /// Consumers past their inactivity threshold.
    pub fn inactive_consumers(&self, now: i64) -> Vec<String> {
        self.consumers
            .values()
            .filter(|c| c.is_inactive(now))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Takes the changes made since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        for (name, c) in self.consumers.iter_mut() {
            if c.dirty {
                c.dirty = false;
                self.changes.push(Change::Consumer(name.clone()));
            }
        }
        std::mem::take(&mut self.changes)
    }

    /// Restores a message read back from storage (no checks, no changes recorded).
    pub fn restore_message(&mut self, seq: u64, entry: Entry) {
        self.store.insert(seq, entry);
    }

    /// Restores the dedupe window and last msg id from the stored messages' headers.
    pub fn restore_dedupe(&mut self, now: i64, ids: Vec<(u64, i64, String)>) {
        for (seq, ts, id) in ids {
            if ts + self.config.duplicate_window > now {
                self.remember_msg_id(id.clone(), seq, ts);
            }
            self.last_msg_id = id;
        }
    }

    fn remember_msg_id(&mut self, id: String, seq: u64, ts: i64) {
        self.dedupe_order.push_back((ts, id.clone()));
        self.dedupe.insert(id, (seq, ts));
    }

    fn expire_dedupe(&mut self, now: i64) {
        let window = self.config.duplicate_window;
        while let Some((ts, _)) = self.dedupe_order.front() {
            if ts + window > now {
                break;
            }
            if let Some((ts, id)) = self.dedupe_order.pop_front() {
                if self.dedupe.get(&id).is_some_and(|(_, t)| *t == ts) {
                    self.dedupe.remove(&id);
                }
            }
        }
    }

    /// Stores a published message after checking the stream's preconditions and
    /// limits. `data` is the header block (`hdr_len` bytes) followed by the payload.
    pub fn publish(
        &mut self,
        now: i64,
        subject: &str,
        data: Bytes,
        hdr_len: usize,
    ) -> Result<PubAck, ApiError> {
        let name = self.config.name.clone();
        if self.config.sealed {
            return Err(ApiError::sealed());
        }
        let hdr = data.get(..hdr_len).unwrap_or_default();
        if self.config.max_msg_size >= 0 && data.len() as i64 > self.config.max_msg_size {
            return Err(ApiError::message_too_big());
        }
        let mut msg_id = None;
        let mut rollup = None;
        let mut expires = None;
        if hdr_len > 0 {
            if let Some(expected) = headers::get(hdr, "Nats-Expected-Stream") {
                if expected != name {
                    return Err(ApiError::expected_stream_mismatch());
                }
            }
            if let Some(v) = headers::get(hdr, "Nats-Expected-Last-Subject-Sequence") {
                let want: u64 = v.parse().map_err(|_| ApiError::bad_request())?;
                let on = headers::get(hdr, "Nats-Expected-Last-Subject-Sequence-Subject")
                    .unwrap_or(subject);
                let last = self.store.last_matching(on).unwrap_or(0);
                if last != want {
                    return Err(ApiError::wrong_last_sequence(last));
                }
            }
            if let Some(v) = headers::get(hdr, "Nats-Expected-Last-Sequence") {
                let want: u64 = v.parse().map_err(|_| ApiError::bad_request())?;
                if want != self.store.last_seq() {
                    return Err(ApiError::wrong_last_sequence(self.store.last_seq()));
                }
            }
            if let Some(id) = headers::get(hdr, "Nats-Msg-Id").filter(|s| !s.is_empty()) {
                self.expire_dedupe(now);
                if let Some((seq, _)) = self.dedupe.get(id) {
                    return Ok(PubAck {
                        stream: name,
                        seq: *seq,
                        duplicate: true,
                    });
                }
                msg_id = Some(id.to_string());
            }
            if let Some(want) = headers::get(hdr, "Nats-Expected-Last-Msg-Id") {
                if want != self.last_msg_id {
                    return Err(ApiError::wrong_last_msg_id(&self.last_msg_id));
                }
            }
            if let Some(r) = headers::get(hdr, "Nats-Rollup") {
                if !self.config.allow_rollup_hdrs || self.config.deny_purge {
                    return Err(ApiError::rollup_failed("rollup not permitted"));
                }
                match r {
                    "sub" | "all" => rollup = Some(r == "all"),
                    other => {
                        return Err(ApiError::rollup_failed(&format!(
                            "rollup value invalid: \"{other}\""
                        )))
                    }
                }
            }
            if let Some(v) = headers::get(hdr, "Nats-TTL") {
                let ttl = parse_ttl(v)?;
                if !self.config.allow_msg_ttl {
                    return Err(ApiError::ttl_disabled());
                }
                expires = ttl.map(|t| now + t);
            }
        }
        let subject_arc: Arc<str> = Arc::from(subject);
        let entry = Entry {
            ts: now,
            subject: subject_arc.clone(),
            hdr_len: hdr_len as u32,
            len: data.len() as u32,
            data: Some(data.clone()),
            expires,
        };
        if self.config.discard == Discard::New {
            let c = &self.config;
            if c.max_msgs > 0 && self.store.len() as i64 >= c.max_msgs {
                return Err(ApiError::stream_store_failed("maximum messages exceeded"));
            }
            if c.max_bytes > 0
                && (self.store.bytes() + self.store.size_of(&entry)) as i64 > c.max_bytes
            {
                return Err(ApiError::stream_store_failed("maximum bytes exceeded"));
            }
            if c.discard_new_per_subject
                && c.max_msgs_per_subject > 0
                && self.store.subject_count(subject) as i64 >= c.max_msgs_per_subject
            {
                return Err(ApiError::stream_store_failed(
                    "maximum messages per subject exceeded",
                ));
            }
        }
        let seq = self.store.last_seq() + 1;
        if let Some(id) = &msg_id {
            self.remember_msg_id(id.clone(), seq, now);
            self.last_msg_id = id.clone();
        } else {
            self.last_msg_id.clear();
        }
        // Interest retention with nobody interested: the sequence is used, nothing kept.
        if self.config.retention == Retention::Interest
            && !self.consumers.values().any(|c| c.matches(subject))
        {
            self.store.set_last(seq, now);
            if self.store.is_empty() {
                self.changes.push(Change::RemoveBelow(seq + 1));
            } else {
                self.skip_sequence(seq, now);
            }
            return Ok(PubAck {
                stream: name,
                seq,
                duplicate: false,
            });
        }
        self.store.insert(seq, entry);
        self.changes.push(Change::Append {
            seq,
            ts: now,
            subject: subject_arc,
            hdr_len: hdr_len as u32,
            data,
            expires,
        });
        for c in self.consumers.values_mut() {
            c.on_append(seq, subject);
        }
        match rollup {
            Some(true) => {
                let below: Vec<u64> = self.store.seqs_from(0).take_while(|s| *s < seq).collect();
                self.remove_many(below);
            }
            Some(false) => {
                let older: Vec<u64> = self
                    .store
                    .subject_seqs(subject)
                    .filter(|s| *s < seq)
                    .collect();
                self.remove_many(older);
            }
            None => {}
        }
        self.enforce_limits(subject);
        Ok(PubAck {
            stream: name,
            seq,
            duplicate: false,
        })
    }

    /// Stores a message a mirror took from its origin, under the origin's sequence and
    /// time (sequences the origin no longer has are left as deleted). Nothing of the
    /// message is checked but this stream's limits: it was checked where it was
    /// published. An older or equal sequence is ignored.
    pub fn store_mirrored(
        &mut self,
        seq: u64,
        ts: i64,
        subject: &str,
        data: Bytes,
        hdr_len: usize,
    ) -> Result<(), ApiError> {
        if seq <= self.store.last_seq() {
            return Ok(());
        }
        let subject_arc: Arc<str> = Arc::from(subject);
        let entry = Entry {
            ts,
            subject: subject_arc.clone(),
            hdr_len: hdr_len as u32,
            len: data.len() as u32,
            data: Some(data.clone()),
            expires: None,
        };
        if self.config.discard == Discard::New {
            let c = &self.config;
            if (c.max_msgs > 0 && self.store.len() as i64 >= c.max_msgs)
                || (c.max_bytes > 0
                    && (self.store.bytes() + self.store.size_of(&entry)) as i64 > c.max_bytes)
            {
                return Err(ApiError::stream_store_failed("maximum messages exceeded"));
            }
        }
        self.store.insert(seq, entry);
        self.changes.push(Change::Append {
            seq,
            ts,
            subject: subject_arc,
            hdr_len: hdr_len as u32,
            data,
            expires: None,
        });
        for c in self.consumers.values_mut() {
            c.on_append(seq, subject);
        }
        self.enforce_limits(subject);
        Ok(())
    }

    /// Records a sequence used by a message that was not kept, so sequences continue.
    fn skip_sequence(&mut self, seq: u64, now: i64) {
        // A placeholder entry removed at once keeps the interior-delete bookkeeping.
        self.store.insert(
            seq,
            Entry {
                ts: now,
                subject: Arc::from(""),
                hdr_len: 0,
                len: 0,
                data: Some(Bytes::new()),
                expires: None,
            },
        );
        self.store.remove(seq);
    }

    fn enforce_limits(&mut self, subject: &str) {
        let c = &self.config;
        let (per, max_msgs, max_bytes) = (c.max_msgs_per_subject, c.max_msgs, c.max_bytes);
        if per > 0 {
            let count = self.store.subject_count(subject) as i64;
            if count > per {
                let excess: Vec<u64> = self
                    .store
                    .subject_seqs(subject)
                    .take((count - per) as usize)
                    .collect();
                self.remove_many(excess);
            }
        }
        while max_msgs > 0 && self.store.len() as i64 > max_msgs {
            if !self.remove_first() {
                break;
            }
        }
        while max_bytes > 0 && self.store.bytes() as i64 > max_bytes {
            if !self.remove_first() {
                break;
            }
        }
    }

    fn remove_first(&mut self) -> bool {
        match self.store.first_entry() {
            Some((seq, _)) => self.remove(seq),
            None => false,
        }
    }

    fn remove_many(&mut self, seqs: Vec<u64>) {
        for s in seqs {
            self.remove(s);
        }
    }

    /// Removes one message and tells the consumers.
    fn remove(&mut self, seq: u64) -> bool {
        let Some(entry) = self.store.remove(seq) else {
            return false;
        };
        self.changes.push(Change::Remove(seq));
        for c in self.consumers.values_mut() {
            c.on_remove(seq, &entry.subject);
        }
        true
    }

    /// Removes messages past their age or TTL.
    pub fn expire(&mut self, now: i64) {
        let max_age = self.config.max_age;
        if max_age > 0 {
            while let Some((seq, e)) = self.store.first_entry() {
                if e.ts + max_age > now {
                    break;
                }
                self.remove(seq);
            }
        }
        if self.config.allow_msg_ttl {
            for seq in self.store.ttl_expired(now) {
                self.remove(seq);
            }
        }
        self.expire_dedupe(now);
    }

    /// When the next message expires by age or TTL.
    pub fn next_expiry(&self) -> Option<i64> {
        let by_age = (self.config.max_age > 0)
            .then(|| {
                self.store
                    .first_entry()
                    .map(|(_, e)| e.ts + self.config.max_age)
            })
            .flatten();
        let by_ttl = self
            .config
            .allow_msg_ttl
            .then(|| self.store.next_ttl())
            .flatten();
        match (by_age, by_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Purges as STREAM.PURGE asks. Returns how many messages went.
    pub fn purge(&mut self, req: &PurgeRequest) -> Result<u64, ApiError> {
        if self.config.sealed {
            return Err(ApiError::sealed());
        }
        if self.config.deny_purge {
            return Err(ApiError::purge_failed("stream purge not permitted"));
        }
        if req.seq.is_some() && req.keep.is_some() {
            return Err(ApiError::bad_request());
        }
        let filter = req.filter.as_deref().filter(|f| !f.is_empty() && *f != ">");
        let filters: Vec<String> = filter.map(|f| vec![f.to_string()]).unwrap_or_default();
        let mut doomed: Vec<u64> = Vec::new();
        match (req.seq, req.keep) {
            // Past the end: everything goes, and the stream continues at `below` (the
            // reference moves its sequences there).
            (Some(below), _) if filters.is_empty() && below > self.store.last_seq() + 1 => {
                let n = self.store.len();
                let last_ts = self.store.totals().last_ts;
                self.purge_all();
                self.store.set_last(below - 1, last_ts);
                self.changes.push(Change::RemoveBelow(below));
                return Ok(n);
            }
            (Some(below), _) => {
                doomed.extend(
                    self.store
                        .seqs_from(0)
                        .take_while(|s| *s < below)
                        .filter(|s| self.matches_seq(*s, &filters)),
                );
            }
            (None, Some(keep)) => {
                if filters.is_empty() {
                    let n = self.store.len().saturating_sub(keep);
                    doomed.extend(self.store.seqs_from(0).take(n as usize));
                } else {
                    // Keep the last `keep` of each matching subject.
                    let subjects: Vec<Arc<str>> = self
                        .store
                        .subjects_matching(&filters[0])
                        .map(|(s, _)| s.clone())
                        .collect();
                    for s in subjects {
                        let all: Vec<u64> = self.store.subject_seqs(&s).collect();
                        let n = all.len().saturating_sub(keep as usize);
                        doomed.extend_from_slice(&all[..n]);
                    }
                }
            }
            (None, None) => {
                if filters.is_empty() {
                    let n = self.store.len();
                    let last = self.store.last_seq();
                    self.purge_all();
                    self.changes.push(Change::RemoveBelow(last + 1));
                    return Ok(n);
                }
                doomed.extend(
                    self.store
                        .seqs_from(0)
                        .filter(|s| self.matches_seq(*s, &filters)),
                );
            }
        }
        doomed.sort_unstable();
        let n = doomed.len() as u64;
        self.remove_many(doomed);
        for c in self.consumers.values_mut() {
            c.recount(&self.store);
        }
        Ok(n)
    }

    fn matches_seq(&self, seq: u64, filters: &[String]) -> bool {
        self.store
            .get(seq)
            .is_some_and(|e| store::matches_any(filters, &e.subject))
    }

    fn purge_all(&mut self) {
        let last = self.store.last_seq();
        let last_ts = self.store.totals().last_ts;
        let mut fresh = new_store(self.config.storage, self.store.cache_budget());
        fresh.set_last(last, last_ts);
        self.store = fresh;
        for c in self.consumers.values_mut() {
            c.recount(&self.store);
        }
    }

    /// Deletes one message (STREAM.MSG.DELETE).
    pub fn delete_message(&mut self, seq: u64) -> Result<(), ApiError> {
        if self.config.sealed {
            return Err(ApiError::sealed());
        }
        if self.config.deny_delete {
            return Err(ApiError::msg_delete_failed("message delete not permitted"));
        }
        if seq > self.store.last_seq() {
            return Err(ApiError::msg_delete_failed("stream store EOF"));
        }
        if !self.remove(seq) {
            return Err(ApiError::sequence_not_found(seq));
        }
        Ok(())
    }

    /// Which message STREAM.MSG.GET (or DIRECT.GET) asks for.
    pub fn find_message(&self, req: &MsgGetRequest) -> Result<u64, ApiError> {
        let found = match (&req.last_by_subj, &req.next_by_subj, req.seq) {
            (Some(subj), None, None) => self.store.last_matching(subj),
            (None, Some(subj), seq) => {
                let filters = vec![subj.clone()];
                self.store.next_matching(seq.unwrap_or(0), &filters)
            }
            (None, None, Some(seq)) if seq > 0 => self.store.get(seq).map(|_| seq),
            _ => return Err(ApiError::bad_request()),
        };
        found.ok_or_else(ApiError::no_message_found)
    }

    pub fn state(&self, req: &StreamInfoRequest) -> StreamState {
        let t = self.store.totals();
        let subjects = req
            .subjects_filter
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(|f| {
                self.store
                    .subjects_matching(f)
                    .map(|(s, n)| (s.to_string(), n))
                    .collect::<BTreeMap<_, _>>()
            });
        StreamState {
            messages: t.msgs,
            bytes: t.bytes,
            // A stream that never held a message reports 0 (the reference does).
            first_seq: if t.last_seq == 0 { 0 } else { t.first_seq },
            first_ts: api::format_time(t.first_ts),
            last_seq: t.last_seq,
            last_ts: api::format_time(t.last_ts),
            num_subjects: t.num_subjects,
            subjects,
            num_deleted: t.num_deleted,
            deleted: req
                .deleted_details
                .then(|| self.store.deleted().collect())
                .filter(|d: &Vec<u64>| !d.is_empty()),
            consumer_count: self.public_consumers().count() as u64,
        }
    }

    /// STREAM.INFO's answer; CREATE, UPDATE and LIST answer with a part of it (see
    /// [`StreamInfo`]).
    pub fn info(&self, now: i64, leader: &str, req: &StreamInfoRequest) -> StreamInfo {
        let mut config = self.config.clone();
        api::add_server_metadata(&mut config.metadata);
        let state = self.state(req);
        // Paging describes the subjects map, when one was asked for.
        let listed = state.subjects.as_ref().map(|s| s.len() as u64);
        StreamInfo {
            total: Some(listed.unwrap_or(0)),
            offset: Some(0),
            limit: Some(listed.map_or(0, |_| api::STREAM_INFO_SUBJECTS_LIMIT)),
            config,
            created: api::format_time(self.created),
            state,
            cluster: Some(api::ClusterInfo {
                leader: leader.to_string(),
                ..Default::default()
            }),
            // Filled in by whoever runs the stream's sourcing (the leader's actor).
            mirror: None,
            sources: None,
            ts: api::format_time(now),
            did_create: None,
        }
    }

    /// Applies an ack to a consumer and, for interest and work-queue streams, removes
    /// messages no consumer needs any more.
    pub fn ack(&mut self, consumer: &str, seq: u64, kind: AckKind, reason: Option<&str>, now: i64) {
        let Some(c) = self.consumers.get_mut(consumer) else {
            return;
        };
        let acked = c.ack(seq, kind, reason, now);
        if self.config.retention != Retention::Limits {
            for s in acked {
                self.remove_if_done(s);
            }
        }
    }

    /// Interest/work-queue retention: drop `seq` once every interested consumer is done.
    fn remove_if_done(&mut self, seq: u64) {
        let Some(entry) = self.store.get(seq) else {
            return;
        };
        let subject = entry.subject.clone();
        let done = match self.config.retention {
            Retention::Limits => false,
            Retention::Workqueue => true,
            Retention::Interest => self.consumers.values().all(|c| c.done_with(seq, &subject)),
        };
        if done {
            self.remove(seq);
        }
    }

    /// After deliveries or consumer changes on interest/work-queue streams: removes
    /// every message that no consumer still needs.
    pub fn apply_retention(&mut self, seqs: &[u64]) {
        if self.config.retention == Retention::Limits {
            return;
        }
        for &seq in seqs {
            let Some(entry) = self.store.get(seq) else {
                continue;
            };
            let subject = entry.subject.clone();
            if self.consumers.values().all(|c| c.done_with(seq, &subject)) {
                self.remove(seq);
            }
        }
    }

    /// Every stored sequence (for a full retention sweep after a consumer goes away).
    pub fn all_seqs(&self) -> Vec<u64> {
        self.store.seqs_from(0).collect()
    }

    /// Runs every consumer's delivery step.
    pub fn poll_consumers(
        &mut self,
        now: i64,
        interest: &dyn Fn(&str) -> bool,
        out: &mut Vec<Outbound>,
    ) {
        let before = out.len();
        for c in self.consumers.values_mut() {
            c.poll(&self.store, now, interest, out);
        }
        // Ack-none consumers on interest streams are done at delivery.
        if self.config.retention != Retention::Limits {
            let delivered: Vec<u64> = out[before..]
                .iter()
                .filter_map(|o| match o {
                    Outbound::Message { seq, .. } => Some(*seq),
                    _ => None,
                })
                .collect();
            self.apply_retention(&delivered);
        }
    }

    /// When any consumer or expiry next needs attention, after `now`.
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        self.consumers
            .values()
            .filter_map(|c| c.next_deadline(now))
            .chain(self.next_expiry())
            .min()
    }

    /// The consumers clients see: all but the `direct` ones mirrors and sources run.
    pub fn public_consumers(&self) -> impl Iterator<Item = &Consumer> {
        self.consumers.values().filter(|c| !c.config.direct)
    }

    /// A new consumer (raises its `CREATED` advisory, unless it is `direct`).
    pub fn add_consumer(&mut self, consumer: Consumer) {
        self.changes.push(Change::Consumer(consumer.name.clone()));
        if !consumer.config.direct {
            self.advisories.push(Advisory::Consumer {
                stream: self.config.name.clone(),
                consumer: consumer.name.clone(),
                action: Action::Create,
            });
        }
        self.consumers.insert(consumer.name.clone(), consumer);
    }

    /// Deletes a consumer (asked to, gone inactive, or with its stream), raising its
    /// `DELETED` advisory.
    pub fn remove_consumer(&mut self, name: &str, out: &mut Vec<Outbound>) -> bool {
        let Some(mut c) = self.consumers.remove(name) else {
            return false;
        };
        self.advisories.extend(c.take_advisories());
        if !c.config.direct {
            self.advisories.push(Advisory::Consumer {
                stream: self.config.name.clone(),
                consumer: name.to_string(),
                action: Action::Delete,
            });
        }
        c.deleted(out);
        self.changes.push(Change::ConsumerDeleted(name.to_string()));
        if self.config.retention == Retention::Interest {
            let all = self.all_seqs();
            self.apply_retention(&all);
        }
        true
    }

    /// The advisories raised since the last call, the consumers' included.
    pub fn take_advisories(&mut self) -> Vec<Advisory> {
        let mut all = std::mem::take(&mut self.advisories);
        for c in self.consumers.values_mut() {
            all.extend(c.take_advisories());
        }
        all
    }

    pub fn set_config(&mut self, config: StreamConfig) {
        self.config = config;
        self.changes.push(Change::Config);
        // Limits may have tightened.
        let c = &self.config;
        let (max_msgs, max_bytes) = (c.max_msgs, c.max_bytes);
        while max_msgs > 0 && self.store.len() as i64 > max_msgs && self.remove_first() {}
        while max_bytes > 0 && self.store.bytes() as i64 > max_bytes && self.remove_first() {}
    }
}

/// A work-queue stream's rules for a new consumer: explicit acks, deliver all, and a
/// filter that overlaps no other consumer's (nor is any of them unfiltered).
fn check_workqueue_consumer<'a>(
    c: &ConsumerConfig,
    others: impl Iterator<Item = &'a Consumer>,
) -> Result<(), ApiError> {
    if c.ack_policy != api::AckPolicy::Explicit {
        return Err(ApiError::consumer_wq_requires_explicit_ack());
    }
    if c.deliver_policy != api::DeliverPolicy::All {
        return Err(ApiError::consumer_wq_deliver_all());
    }
    let mine = c.filters();
    for other in others {
        let theirs = other.filters();
        if mine.is_empty() || theirs.is_empty() {
            return Err(ApiError::consumer_wq_multiple_unfiltered());
        }
        if mine.iter().any(|a| {
            theirs
                .iter()
                .any(|b| subject::overlaps(a.as_bytes(), b.as_bytes()))
        }) {
            return Err(ApiError::consumer_wq_not_unique());
        }
    }
    Ok(())
}

/// Bytes of message data a file stream keeps cached in memory for its consumers.
pub const STREAM_CACHE_BUDGET: u64 = 8 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(json: &str) -> Stream {
        let cfg: StreamConfig = serde_json::from_str(json).unwrap_or_default();
        let cfg = normalize_config(cfg).unwrap_or_else(|e| panic!("{e}"));
        Stream::new(cfg, 1, u64::MAX)
    }

    fn hdrs(lines: &[(&str, &str)], payload: &str) -> (Bytes, usize) {
        let mut b = headers::HeaderBuilder::new();
        for (k, v) in lines {
            b.push(k, v);
        }
        let mut data = b.finish();
        let n = data.len();
        data.extend_from_slice(payload.as_bytes());
        (Bytes::from(data), n)
    }

    fn publish(s: &mut Stream, subject: &str, lines: &[(&str, &str)]) -> Result<PubAck, ApiError> {
        let (data, n) = if lines.is_empty() {
            (Bytes::from_static(b"x"), 0)
        } else {
            hdrs(lines, "x")
        };
        s.publish(10, subject, data, n)
    }

    #[test]
    fn an_accounts_limits_count_streams_and_the_bytes_they_reserve() {
        let config = |json: &str| stream(json).config().clone();
        let limits = api::AccountLimits {
            max_memory: 1000,
            max_storage: 10_000,
            max_streams: 3,
            ..api::AccountLimits::unlimited()
        };
        let held = [
            config(r#"{"name":"M1","subjects":["m1"],"storage":"memory","max_bytes":600}"#),
            config(r#"{"name":"F1","subjects":["f1"],"max_bytes":5000}"#),
        ];
        let code = |json: &str, held: &[StreamConfig]| {
            check_account_limits(&limits, &config(json), held.iter())
                .err()
                .map(|e| e.err_code)
        };
        // 600 reserved of 1,000: 400 more fit, 401 do not; no max_bytes reserves none.
        let memory = r#"{"name":"M2","subjects":["m2"],"storage":"memory","max_bytes":400}"#;
        assert_eq!(code(memory, &held), None);
        let memory = r#"{"name":"M2","subjects":["m2"],"storage":"memory","max_bytes":401}"#;
        assert_eq!(code(memory, &held), Some(10028));
        assert_eq!(
            code(
                r#"{"name":"M2","subjects":["m2"],"storage":"memory"}"#,
                &held
            ),
            None
        );
        // Each storage counts its own streams.
        assert_eq!(
            code(r#"{"name":"F2","subjects":["f2"],"max_bytes":5000}"#, &held),
            None
        );
        assert_eq!(
            code(r#"{"name":"F2","subjects":["f2"],"max_bytes":5001}"#, &held),
            Some(10047)
        );
        // A third stream fits, a fourth does not.
        let three = [
            held[0].clone(),
            held[1].clone(),
            config(r#"{"name":"X","subjects":["x"]}"#),
        ];
        assert_eq!(code(r#"{"name":"Y","subjects":["y"]}"#, &held), None);
        assert_eq!(
            code(r#"{"name":"Y","subjects":["y"]}"#, &three),
            Some(10027)
        );
    }

    /// Found by the fuzzer (jetstream_api, crash-c766137869c1e481): a purge of a stream
    /// that never held a message keeps reporting first_seq 0, as the reference does;
    /// after its first message the usual `last + 1` rule holds for an empty stream.
    #[test]
    fn never_used_stream_reports_first_seq_zero_through_a_purge() {
        let mut s = stream(r#"{"name":"F","subjects":["f.>"]}"#);
        s.purge(&PurgeRequest::default()).unwrap();
        let st = s.state(&StreamInfoRequest::default());
        assert_eq!((st.messages, st.first_seq, st.last_seq), (0, 0, 0));
        publish(&mut s, "f.a", &[]).unwrap();
        s.purge(&PurgeRequest::default()).unwrap();
        let st = s.state(&StreamInfoRequest::default());
        assert_eq!((st.messages, st.first_seq, st.last_seq), (0, 2, 1));
    }

    /// As the reference: a purge up to a sequence past the end empties the stream and
    /// moves it there (and says so in the journal, so a restart keeps it).
    #[test]
    fn purge_past_the_end_moves_the_sequences() {
        let mut s = stream(r#"{"name":"P","subjects":["p.>"]}"#);
        for _ in 0..3 {
            publish(&mut s, "p.a", &[]).unwrap();
        }
        s.take_changes();
        let purged = s
            .purge(&PurgeRequest {
                seq: Some(100),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(purged, 3);
        let state = s.state(&StreamInfoRequest::default());
        assert_eq!(
            (state.messages, state.first_seq, state.last_seq),
            (0, 100, 99)
        );
        assert!(s
            .take_changes()
            .iter()
            .any(|c| matches!(c, Change::RemoveBelow(100))));
        assert_eq!(publish(&mut s, "p.a", &[]).unwrap().seq, 100);
    }

    #[test]
    fn defaults_and_validation() {
        let s = stream(r#"{"name":"S"}"#);
        assert_eq!(s.config.subjects, vec!["S".to_string()]);
        assert_eq!(s.config.duplicate_window, api::DEFAULT_DUPLICATE_WINDOW);
        let bad: StreamConfig = serde_json::from_str(r#"{"name":"a.b"}"#).unwrap_or_default();
        assert_eq!(normalize_config(bad).map_err(|e| e.err_code), Err(10052));
        let r3: StreamConfig =
            serde_json::from_str(r#"{"name":"S","num_replicas":3}"#).unwrap_or_default();
        assert_eq!(normalize_config(r3).map_err(|e| e.err_code), Err(10074));
    }

    #[test]
    fn dedupe_and_expectations() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        let a = publish(&mut s, "s.a", &[("Nats-Msg-Id", "1")]);
        assert_eq!(a.map(|a| (a.seq, a.duplicate)), Ok((1, false)));
        let b = publish(&mut s, "s.a", &[("Nats-Msg-Id", "1")]);
        assert_eq!(b.map(|a| (a.seq, a.duplicate)), Ok((1, true)));
        let e = publish(&mut s, "s.b", &[("Nats-Expected-Last-Sequence", "5")]);
        assert_eq!(
            e.map_err(|e| e.description),
            Err("wrong last sequence: 1".into())
        );
        let e = publish(&mut s, "s.b", &[("Nats-Expected-Stream", "T")]);
        assert_eq!(e.map_err(|e| e.err_code), Err(10060));
        let ok = publish(
            &mut s,
            "s.b",
            &[("Nats-Expected-Last-Subject-Sequence", "0")],
        );
        assert_eq!(ok.map(|a| a.seq), Ok(2));
        let e = publish(
            &mut s,
            "s.b",
            &[("Nats-Expected-Last-Subject-Sequence", "0")],
        );
        assert_eq!(
            e.map_err(|e| e.description),
            Err("wrong last sequence: 2".into())
        );
        let e = publish(&mut s, "s.c", &[("Nats-Expected-Last-Msg-Id", "zzz")]);
        assert_eq!(e.map_err(|e| e.err_code), Err(10070));
        let e = publish(&mut s, "s.c", &[("Nats-Rollup", "sub")]);
        assert_eq!(e.map_err(|e| e.err_code), Err(10111));
    }

    #[test]
    fn limits_discard_old_and_new() {
        let mut s = stream(r#"{"name":"S","max_msgs":2}"#);
        for _ in 0..3 {
            assert!(publish(&mut s, "S", &[]).is_ok());
        }
        assert_eq!(s.store.first_seq(), 2);
        let mut s = stream(r#"{"name":"S","max_msgs":2,"discard":"new"}"#);
        assert!(publish(&mut s, "S", &[]).is_ok());
        assert!(publish(&mut s, "S", &[]).is_ok());
        let e = publish(&mut s, "S", &[]);
        assert_eq!(e.map_err(|e| (e.code, e.err_code)), Err((503, 10077)));
        let mut s = stream(r#"{"name":"S","subjects":["k.>"],"max_msgs_per_subject":1}"#);
        publish(&mut s, "k.a", &[]).ok();
        publish(&mut s, "k.b", &[]).ok();
        publish(&mut s, "k.a", &[]).ok();
        assert_eq!(s.store.len(), 2);
        assert_eq!(s.store.last_of_subject("k.a"), Some(3));
    }

    #[test]
    fn rollup_and_purges() {
        let mut s = stream(r#"{"name":"S","subjects":["k.>"],"allow_rollup_hdrs":true}"#);
        for subj in ["k.a", "k.b", "k.a", "k.b"] {
            publish(&mut s, subj, &[]).ok();
        }
        publish(&mut s, "k.a", &[("Nats-Rollup", "sub")]).ok();
        assert_eq!(s.store.subject_count("k.a"), 1);
        assert_eq!(s.store.subject_count("k.b"), 2);
        let kept = s.purge(&PurgeRequest {
            filter: Some("k.b".into()),
            keep: Some(1),
            seq: None,
        });
        assert_eq!(kept, Ok(1));
        assert_eq!(s.purge(&PurgeRequest::default()), Ok(2));
        assert_eq!(s.store.first_seq(), 6);
        assert_eq!(publish(&mut s, "k.c", &[]).map(|a| a.seq), Ok(6));
    }

    #[test]
    fn ttl_header_needs_permission() {
        let mut s = stream(r#"{"name":"S"}"#);
        let e = publish(&mut s, "S", &[("Nats-TTL", "5s")]);
        assert_eq!(e.map_err(|e| e.err_code), Err(10166));
        let mut s = stream(r#"{"name":"S","allow_msg_ttl":true}"#);
        let e = publish(&mut s, "S", &[("Nats-TTL", "bogus")]);
        assert_eq!(e.map_err(|e| e.err_code), Err(10165));
        assert!(publish(&mut s, "S", &[("Nats-TTL", "2")]).is_ok());
        assert_eq!(s.next_expiry(), Some(10 + 2_000_000_000));
        s.expire(10 + 2_000_000_000);
        assert!(s.store.is_empty());
    }
}
