//! A consumer's state machine: where it is in the stream, what it delivered and what is
//! still unacknowledged, the pull requests waiting on it, and for push consumers the
//! flow-control and heartbeat bookkeeping. It decides; the stream actor sends.
//!
//! Sequences: `delivered` is the last (consumer seq, stream seq) handed out; every
//! delivery (redeliveries too) takes the next consumer sequence, as in the reference.
//! `ack_floor` is the highest point below which everything is acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::advisory::Advisory;

use super::api::{
    self, AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, NextRequest, SequenceInfo,
    SequenceInfoActive,
};
use super::headers::HeaderBuilder;
use super::store::{self, StreamStore};

/// What a client's ack body asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Ack,
    /// Redeliver, after an optional delay (ns).
    Nak(Option<i64>),
    InProgress,
    Term,
    /// Ack and ask for more (pull consumers).
    Next,
}

impl AckKind {
    pub fn parse(body: &[u8]) -> Option<AckKind> {
        let body = body.trim_ascii();
        if body.is_empty() || body == b"+ACK" {
            return Some(AckKind::Ack);
        }
        if let Some(rest) = body.strip_prefix(b"-NAK") {
            let rest = rest.trim_ascii();
            if rest.is_empty() {
                return Some(AckKind::Nak(None));
            }
            #[derive(Deserialize)]
            struct Delay {
                delay: i64,
            }
            return match serde_json::from_slice::<Delay>(rest) {
                Ok(d) => Some(AckKind::Nak(Some(d.delay))),
                // The reference also accepts a Go duration after `-NAK `.
                Err(_) => std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| humantime::parse_duration(s).ok())
                    .map(|d| AckKind::Nak(Some(d.as_nanos().min(i64::MAX as u128) as i64))),
            };
        }
        if body.starts_with(b"+WPI") {
            return Some(AckKind::InProgress);
        }
        if body.starts_with(b"+TERM") {
            return Some(AckKind::Term);
        }
        if body.starts_with(b"+NXT") {
            return Some(AckKind::Next);
        }
        None
    }

    /// The reason a `+TERM` body gives after the keyword, if any.
    pub fn term_reason(body: &[u8]) -> Option<&str> {
        let rest = body.trim_ascii().strip_prefix(b"+TERM")?;
        std::str::from_utf8(rest.trim_ascii())
            .ok()
            .filter(|r| !r.is_empty())
    }
}

/// A delivered message not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub consumer_seq: u64,
    /// When it was (last) delivered, ns.
    pub ts: i64,
}

/// A waiting pull request.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub reply: String,
    /// Messages still wanted.
    pub batch: i64,
    /// Bytes still allowed (0: no limit).
    pub max_bytes: i64,
    pub expires: Option<i64>,
    pub no_wait: bool,
    pub heartbeat: i64,
    pub next_heartbeat: i64,
    pub delivered: u64,
}

/// Something the stream actor must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// The stored message `seq`, to `to`, with ack reply `reply`.
    Message {
        to: String,
        reply: String,
        seq: u64,
        headers_only: bool,
    },
    /// A status message (heartbeat, flow control, pull termination).
    Status {
        to: String,
        reply: Option<String>,
        headers: Vec<u8>,
    },
}

/// What a consumer persists (with its config) so it resumes after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsumerState {
    pub next_seq: u64,
    pub delivered: SequenceInfo,
    pub ack_floor: SequenceInfo,
    pub pending: Vec<(u64, Pending)>,
    pub redelivered: Vec<(u64, u64)>,
}

/// Where a picked message came from (so a pick can be undone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    New,
    Redelivery,
    LastPerSubject,
}

/// Marks first deliveries queued by `last_per_subject` in the redelivery queue (they
/// sort first and are always due).
const LAST_PER_SUBJECT: i64 = i64::MIN;

/// How often an unbound push consumer looks for a subscriber on its deliver subject.
const PUSH_INTEREST_POLL: i64 = 50_000_000;

/// Bytes delivered to a push consumer with flow control before we wait for the client.
const FLOW_CONTROL_WINDOW: u64 = 2 * 1024 * 1024;

#[derive(Debug)]
pub struct Consumer {
    pub stream: String,
    pub name: String,
    pub config: ConsumerConfig,
    pub created: i64,
    filters: Vec<String>,
    /// The next stream sequence to consider for a first delivery.
    next_seq: u64,
    delivered: SequenceInfo,
    ack_floor: SequenceInfo,
    pending: BTreeMap<u64, Pending>,
    /// Delivery counts above one, by stream sequence.
    redelivered: HashMap<u64, u64>,
    /// Stream sequences due for redelivery, by due time.
    redeliver: BTreeSet<(i64, u64)>,
    /// Ack deadlines of pending messages, by time.
    deadlines: BTreeSet<(i64, u64)>,
    /// Messages matching the filter at or after `next_seq`.
    num_pending: u64,
    /// First deliveries still queued by `last_per_subject`.
    lps_queued: u64,
    waiting: VecDeque<PullRequest>,
    /// Last time this consumer saw interest (a pull request, a push subscriber).
    pub last_active: i64,
    last_delivery: i64,
    /// Push: the client is subscribed to the deliver subject.
    pub push_bound: bool,
    fc_outstanding: Option<String>,
    fc_bytes: u64,
    fc_counter: u64,
    /// State changed since it was last persisted.
    pub dirty: bool,
    /// Advisories raised (NAK, TERM, max deliveries), for the actor to publish.
    advisories: Vec<Advisory>,
}

impl Consumer {
    /// A new consumer positioned by its deliver policy.
    pub fn new(
        stream: &str,
        name: &str,
        config: ConsumerConfig,
        created: i64,
        store: &StreamStore,
    ) -> Consumer {
        let filters = config.filters();
        let next_seq = match config.deliver_policy {
            DeliverPolicy::All | DeliverPolicy::LastPerSubject => store.first_seq(),
            DeliverPolicy::Last => match filters.as_slice() {
                [] => store.last_seq().max(store.first_seq()),
                fs => fs
                    .iter()
                    .filter_map(|f| store.last_matching(f))
                    .max()
                    .unwrap_or(store.last_seq() + 1),
            },
            DeliverPolicy::New => store.last_seq() + 1,
            DeliverPolicy::ByStartSequence => config.opt_start_seq.unwrap_or(1).max(1),
            DeliverPolicy::ByStartTime => config
                .opt_start_time
                .as_deref()
                .and_then(api::parse_time)
                .and_then(|t| store.first_at_or_after(t))
                .unwrap_or(store.last_seq() + 1),
        };
        let mut c = Consumer {
            stream: stream.to_string(),
            name: name.to_string(),
            filters,
            next_seq,
            delivered: SequenceInfo {
                consumer_seq: 0,
                stream_seq: next_seq.saturating_sub(1),
            },
            ack_floor: SequenceInfo {
                consumer_seq: 0,
                stream_seq: next_seq.saturating_sub(1),
            },
            config,
            created,
            pending: BTreeMap::new(),
            redelivered: HashMap::new(),
            redeliver: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            num_pending: 0,
            lps_queued: 0,
            waiting: VecDeque::new(),
            last_active: created,
            last_delivery: created,
            push_bound: false,
            fc_outstanding: None,
            fc_bytes: 0,
            fc_counter: 0,
            dirty: true,
            advisories: Vec::new(),
        };
        if c.config.deliver_policy == DeliverPolicy::LastPerSubject {
            // Deliver the last message of each subject first, then everything new: the
            // earlier messages are skipped by queueing only the lasts.
            let lasts = store.last_per_subject(&c.filters);
            c.next_seq = store.last_seq() + 1;
            c.delivered.stream_seq = lasts.first().map_or(store.last_seq(), |s| s - 1);
            c.ack_floor.stream_seq = c.delivered.stream_seq;
            c.lps_queued = lasts.len() as u64;
            for seq in lasts {
                c.redeliver.insert((LAST_PER_SUBJECT, seq));
            }
        }
        c.recount(store);
        c
    }

    /// Restores a persisted consumer.
    pub fn restore(
        stream: &str,
        name: &str,
        config: ConsumerConfig,
        created: i64,
        state: ConsumerState,
        store: &StreamStore,
        now: i64,
    ) -> Consumer {
        let mut c = Consumer::new(stream, name, config, created, store);
        c.redeliver.clear();
        c.lps_queued = 0;
        c.next_seq = state.next_seq;
        c.delivered = state.delivered;
        c.ack_floor = state.ack_floor;
        let ack_wait = c.ack_wait();
        for (seq, p) in state.pending {
            c.pending.insert(seq, p);
            // Everything outstanding is due again after one ack wait from now.
            c.deadlines.insert((now + ack_wait, seq));
        }
        c.redelivered = state.redelivered.into_iter().collect();
        c.last_active = now;
        c.recount(store);
        c.dirty = false;
        c
    }

    pub fn state(&self) -> ConsumerState {
        ConsumerState {
            next_seq: self.next_seq,
            delivered: self.delivered,
            ack_floor: self.ack_floor,
            pending: self.pending.iter().map(|(s, p)| (*s, *p)).collect(),
            redelivered: self.redelivered.iter().map(|(s, n)| (*s, *n)).collect(),
        }
    }

    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    pub fn is_pull(&self) -> bool {
        self.config.is_pull()
    }

    pub fn is_durable(&self) -> bool {
        self.config.durable_name.is_some()
    }

    fn ack_wait(&self) -> i64 {
        if self.config.ack_wait > 0 {
            self.config.ack_wait
        } else {
            api::DEFAULT_ACK_WAIT
        }
    }

    /// Recounts the messages still to deliver (after a purge or on start).
    pub fn recount(&mut self, store: &StreamStore) {
        self.num_pending = store.count_from(self.next_seq, &self.filters);
        // Pending acks for messages that are gone are dropped.
        let gone: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|s| store.get(*s).is_none())
            .collect();
        for seq in gone {
            self.drop_pending(seq);
        }
        self.redeliver.retain(|(_, s)| store.get(*s).is_some());
        if self.next_seq < store.first_seq() {
            self.next_seq = store.first_seq();
        }
        self.update_ack_floor();
    }

    pub fn matches(&self, subject: &str) -> bool {
        store::matches_any(&self.filters, subject)
    }

    /// A message was appended to the stream.
    pub fn on_append(&mut self, seq: u64, subject: &str) {
        if seq >= self.next_seq && self.matches(subject) {
            self.num_pending += 1;
        }
    }

    /// A message was removed from the stream (limits, delete, purge of one).
    pub fn on_remove(&mut self, seq: u64, subject: &str) {
        if seq >= self.next_seq && self.matches(subject) {
            self.num_pending = self.num_pending.saturating_sub(1);
        }
        if self.pending.contains_key(&seq) {
            self.drop_pending(seq);
            self.update_ack_floor();
            self.dirty = true;
        }
        self.redeliver.retain(|(_, s)| *s != seq);
    }

    fn drop_pending(&mut self, seq: u64) {
        if self.pending.remove(&seq).is_some() {
            self.deadlines.retain(|(_, s)| *s != seq);
        }
        self.redelivered.remove(&seq);
        self.redeliver.retain(|(_, s)| *s != seq);
    }

    /// Has this consumer finished with stream message `seq` (acked, or not interested)?
    /// Used by interest and work-queue retention.
    pub fn done_with(&self, seq: u64, subject: &str) -> bool {
        if !self.matches(subject) {
            return true;
        }
        if seq >= self.next_seq {
            return false;
        }
        self.config.ack_policy == AckPolicy::None
            || (!self.pending.contains_key(&seq) && !self.redeliver.iter().any(|(_, s)| *s == seq))
    }

    fn update_ack_floor(&mut self) {
        match self.pending.first_key_value() {
            None => {
                if self.redeliver.is_empty() {
                    self.ack_floor = self.delivered;
                }
            }
            Some((&seq, p)) => {
                self.ack_floor = SequenceInfo {
                    consumer_seq: p.consumer_seq.saturating_sub(1),
                    stream_seq: seq.saturating_sub(1),
                };
            }
        }
    }

    /// Applies an ack for stream sequence `seq`. Returns the stream sequences now
    /// acknowledged (for retention), empty if nothing changed.
    pub fn ack(&mut self, seq: u64, kind: AckKind, reason: Option<&str>, now: i64) -> Vec<u64> {
        self.last_active = now;
        match kind {
            AckKind::Nak(_) | AckKind::Term => {
                if let Some(p) = self.pending.get(&seq) {
                    let (consumer_seq, deliveries) = (
                        p.consumer_seq,
                        self.redelivered.get(&seq).copied().unwrap_or(1),
                    );
                    let (stream, consumer) = (self.stream.clone(), self.name.clone());
                    self.advisories.push(match kind {
                        AckKind::Term => Advisory::Terminated {
                            stream,
                            consumer,
                            consumer_seq,
                            stream_seq: seq,
                            deliveries,
                            reason: reason.filter(|r| !r.is_empty()).map(str::to_string),
                        },
                        _ => Advisory::Nak {
                            stream,
                            consumer,
                            consumer_seq,
                            stream_seq: seq,
                            deliveries,
                        },
                    });
                }
            }
            _ => {}
        }
        match kind {
            AckKind::Ack | AckKind::Next | AckKind::Term => {
                let acked: Vec<u64> = match self.config.ack_policy {
                    AckPolicy::None => return Vec::new(),
                    AckPolicy::All => self.pending.range(..=seq).map(|(s, _)| *s).collect(),
                    AckPolicy::Explicit => {
                        if self.pending.contains_key(&seq) {
                            vec![seq]
                        } else {
                            Vec::new()
                        }
                    }
                };
                for s in &acked {
                    self.drop_pending(*s);
                }
                if !acked.is_empty() {
                    self.update_ack_floor();
                    self.dirty = true;
                }
                acked
            }
            AckKind::Nak(delay) => {
                if self.pending.contains_key(&seq) {
                    self.deadlines.retain(|(_, s)| *s != seq);
                    self.redeliver
                        .insert((now + delay.unwrap_or(0).max(0), seq));
                }
                Vec::new()
            }
            AckKind::InProgress => {
                if self.pending.contains_key(&seq) {
                    self.deadlines.retain(|(_, s)| *s != seq);
                    self.deadlines.insert((now + self.ack_wait(), seq));
                }
                Vec::new()
            }
        }
    }

    /// Moves messages whose ack wait ran out to the redelivery queue.
    fn expire_acks(&mut self, now: i64) {
        while let Some(&(due, seq)) = self.deadlines.first() {
            if due > now {
                break;
            }
            self.deadlines.pop_first();
            if self.pending.contains_key(&seq) {
                self.redeliver.insert((now, seq));
            }
        }
    }

    fn backoff_wait(&self, deliveries: u64) -> i64 {
        match &self.config.backoff {
            Some(b) if !b.is_empty() => {
                let i = (deliveries.saturating_sub(1) as usize).min(b.len() - 1);
                b[i]
            }
            _ => self.ack_wait(),
        }
    }

    /// Handles a CONSUMER.MSG.NEXT request. Returns the status to send at once, if the
    /// request is refused or already answered.
    pub fn request_next(&mut self, reply: &str, req: NextRequest, now: i64) -> Option<Outbound> {
        self.last_active = now;
        let status = |code: u16, text: &str| Outbound::Status {
            to: reply.to_string(),
            reply: None,
            headers: HeaderBuilder::status(code, text).finish(),
        };
        if !self.is_pull() {
            return Some(status(409, "Consumer is push based"));
        }
        if req.batch <= 0 {
            return None;
        }
        if self.config.max_batch > 0 && req.batch > self.config.max_batch {
            return Some(status(
                409,
                &format!("Exceeded MaxRequestBatch of {}", self.config.max_batch),
            ));
        }
        if self.config.max_expires > 0 && req.expires > self.config.max_expires {
            return Some(status(
                409,
                &format!(
                    "Exceeded MaxRequestExpires of {:?}",
                    std::time::Duration::from_nanos(self.config.max_expires as u64)
                ),
            ));
        }
        if req.max_bytes > 0 && self.config.max_bytes > 0 && req.max_bytes > self.config.max_bytes {
            return Some(status(
                409,
                &format!("Exceeded MaxRequestMaxBytes of {}", self.config.max_bytes),
            ));
        }
        if req.no_wait && self.available(now) == 0 && req.expires == 0 {
            return Some(status(404, "No Messages"));
        }
        let max_waiting = if self.config.max_waiting > 0 {
            self.config.max_waiting as usize
        } else {
            api::DEFAULT_MAX_WAITING as usize
        };
        if self.waiting.len() >= max_waiting {
            if req.idle_heartbeat > 0 {
                return None;
            }
            return Some(status(409, "Exceeded MaxWaiting"));
        }
        self.waiting.push_back(PullRequest {
            reply: reply.to_string(),
            batch: req.batch,
            max_bytes: req.max_bytes,
            expires: (req.expires > 0).then(|| now + req.expires),
            no_wait: req.no_wait,
            heartbeat: req.idle_heartbeat,
            next_heartbeat: now + req.idle_heartbeat,
            delivered: 0,
        });
        None
    }

    /// Messages deliverable now (new ones and redeliveries due).
    fn available(&self, now: i64) -> u64 {
        let due = self.redeliver.iter().take_while(|(t, _)| *t <= now).count() as u64;
        self.num_pending + due + self.deadlines.iter().take_while(|(t, _)| *t <= now).count() as u64
    }

    fn at_ack_limit(&self) -> bool {
        self.config.ack_policy != AckPolicy::None
            && self.config.max_ack_pending > 0
            && self.pending.len() as i64 >= self.config.max_ack_pending
    }

    /// Picks the next message to deliver: a redelivery that is due, else the next new
    /// message. Returns (stream seq, delivery count, where it came from).
    fn next_message(&mut self, store: &StreamStore, now: i64) -> Option<(u64, u64, Source)> {
        while let Some(&(due, seq)) = self.redeliver.first() {
            if due > now {
                break;
            }
            if due == LAST_PER_SUBJECT {
                if self.at_ack_limit() {
                    return None;
                }
                self.redeliver.pop_first();
                self.lps_queued = self.lps_queued.saturating_sub(1);
                if store.get(seq).is_none() {
                    continue;
                }
                return Some((seq, 1, Source::LastPerSubject));
            }
            self.redeliver.pop_first();
            if store.get(seq).is_none() {
                self.drop_pending(seq);
                continue;
            }
            if !self.pending.contains_key(&seq) {
                continue;
            }
            let dc = self.redelivered.entry(seq).or_insert(1);
            *dc += 1;
            let dc = *dc;
            if self.config.max_deliver > 0 && dc as i64 > self.config.max_deliver {
                // Delivered as often as allowed: no longer pending, but not acked
                // either. As at the reference, the ack floor stays where it is (a later
                // ack moves it on), the message still counts as redelivered, and the
                // advisory tells whoever handles dead letters.
                if self.pending.remove(&seq).is_some() {
                    self.deadlines.retain(|(_, s)| *s != seq);
                    self.advisories.push(Advisory::MaxDeliveries {
                        stream: self.stream.clone(),
                        consumer: self.name.clone(),
                        stream_seq: seq,
                        deliveries: dc - 1,
                    });
                }
                self.dirty = true;
                continue;
            }
            return Some((seq, dc, Source::Redelivery));
        }
        if self.at_ack_limit() {
            return None;
        }
        let seq = store.next_matching(self.next_seq, &self.filters)?;
        if seq > store.durable_seq() {
            return None;
        }
        self.next_seq = seq + 1;
        self.num_pending = self.num_pending.saturating_sub(1);
        Some((seq, 1, Source::New))
    }

    /// Messages still to deliver for the first time.
    fn still_pending(&self) -> u64 {
        self.num_pending + self.lps_queued
    }

    /// Notes a delivery of `seq` and returns its ack subject, which carries the
    /// message's own time (`ts`, as the reference: clients read it as the message's
    /// timestamp), not the delivery's.
    fn record_delivery(&mut self, seq: u64, ts: i64, dc: u64, now: i64) -> String {
        self.delivered.consumer_seq += 1;
        if seq > self.delivered.stream_seq {
            self.delivered.stream_seq = seq;
        }
        let cseq = self.delivered.consumer_seq;
        self.last_delivery = now;
        if self.config.ack_policy == AckPolicy::None {
            self.ack_floor = self.delivered;
        } else {
            self.pending.insert(
                seq,
                Pending {
                    consumer_seq: cseq,
                    ts: now,
                },
            );
            self.deadlines.retain(|(_, s)| *s != seq);
            self.deadlines.insert((now + self.backoff_wait(dc), seq));
        }
        self.dirty = true;
        format!(
            "$JS.ACK.{}.{}.{}.{}.{}.{}.{}",
            self.stream,
            self.name,
            dc,
            seq,
            cseq,
            ts,
            self.still_pending()
        )
    }

    /// Delivers what can be delivered now. `interest(subject)` tells whether anyone
    /// listens on a subject (push deliver subject, pull reply inboxes).
    pub fn poll(
        &mut self,
        store: &StreamStore,
        now: i64,
        interest: &dyn Fn(&str) -> bool,
        out: &mut Vec<Outbound>,
    ) {
        self.expire_acks(now);
        if self.is_pull() {
            self.poll_pull(store, now, interest, out);
        } else {
            self.poll_push(store, now, interest, out);
        }
    }

    fn poll_pull(
        &mut self,
        store: &StreamStore,
        now: i64,
        interest: &dyn Fn(&str) -> bool,
        out: &mut Vec<Outbound>,
    ) {
        let mut i = 0;
        while i < self.waiting.len() {
            let req = &self.waiting[i];
            let terminate = |code: u16, text: &str, req: &PullRequest| Outbound::Status {
                to: req.reply.clone(),
                reply: None,
                headers: HeaderBuilder::status(code, text)
                    .add(api::PENDING_MSGS_HEADER, &req.batch.to_string())
                    .add(api::PENDING_BYTES_HEADER, &req.max_bytes.to_string())
                    .finish(),
            };
            if req.expires.is_some_and(|x| x <= now) {
                if let Some(req) = self.waiting.remove(i) {
                    out.push(terminate(408, "Request Timeout", &req));
                }
                continue;
            }
            if !interest(&req.reply) {
                self.waiting.remove(i);
                continue;
            }
            i += 1;
        }
        // Serve requests in arrival order, one message at a time.
        while let Some(req_bytes) = self.waiting.front().map(|r| r.max_bytes) {
            let Some((seq, dc, source)) = self.next_message(store, now) else {
                break;
            };
            let size = store.get(seq).map_or(0, |e| store.size_of(e) as i64);
            if req_bytes > 0 && size > req_bytes {
                // Put it back for the next request.
                self.unpick(seq, dc, source);
                if let Some(req) = self.waiting.pop_front() {
                    out.push(Outbound::Status {
                        to: req.reply.clone(),
                        reply: None,
                        headers: HeaderBuilder::status(409, "Message Size Exceeds MaxBytes")
                            .add(api::PENDING_MSGS_HEADER, &req.batch.to_string())
                            .add(api::PENDING_BYTES_HEADER, &req.max_bytes.to_string())
                            .finish(),
                    });
                }
                continue;
            }
            let ts = store.get(seq).map_or(now, |e| e.ts);
            let reply = self.record_delivery(seq, ts, dc, now);
            let Some(req) = self.waiting.front_mut() else {
                break;
            };
            out.push(Outbound::Message {
                to: req.reply.clone(),
                reply,
                seq,
                headers_only: self.config.headers_only,
            });
            req.batch -= 1;
            req.delivered += 1;
            req.next_heartbeat = now + req.heartbeat;
            if req.max_bytes > 0 {
                req.max_bytes -= size;
                if req.max_bytes <= 0 {
                    req.batch = 0;
                }
            }
            if req.batch <= 0 {
                self.waiting.pop_front();
            }
        }
        // What is left: no_wait requests end here; others get heartbeats.
        let mut i = 0;
        while i < self.waiting.len() {
            let req = &mut self.waiting[i];
            if req.no_wait && (req.expires.is_none() || req.delivered > 0) {
                let to = req.reply.clone();
                self.waiting.remove(i);
                out.push(Outbound::Status {
                    to,
                    reply: None,
                    headers: HeaderBuilder::status(404, "No Messages").finish(),
                });
                continue;
            }
            if req.heartbeat > 0 && req.next_heartbeat <= now {
                req.next_heartbeat = now + req.heartbeat;
                out.push(Outbound::Status {
                    to: req.reply.clone(),
                    reply: None,
                    headers: HeaderBuilder::status(100, "Idle Heartbeat").finish(),
                });
            }
            i += 1;
        }
    }

    /// Undoes a pick that could not be delivered (too big for the request).
    fn unpick(&mut self, seq: u64, dc: u64, source: Source) {
        match source {
            Source::New => {
                self.next_seq = seq;
                self.num_pending += 1;
            }
            Source::Redelivery => {
                self.redelivered.insert(seq, dc - 1);
                self.redeliver.insert((LAST_PER_SUBJECT + 1, seq));
            }
            Source::LastPerSubject => {
                self.lps_queued += 1;
                self.redeliver.insert((LAST_PER_SUBJECT, seq));
            }
        }
    }

    fn poll_push(
        &mut self,
        store: &StreamStore,
        now: i64,
        interest: &dyn Fn(&str) -> bool,
        out: &mut Vec<Outbound>,
    ) {
        let Some(to) = self.config.deliver_subject.clone() else {
            return;
        };
        self.push_bound = interest(&to);
        if !self.push_bound {
            return;
        }
        self.last_active = now;
        let flow_control = self.config.flow_control;
        loop {
            if flow_control && self.fc_outstanding.is_some() && self.fc_bytes >= FLOW_CONTROL_WINDOW
            {
                break;
            }
            let Some((seq, dc, _)) = self.next_message(store, now) else {
                break;
            };
            let (size, ts) = store
                .get(seq)
                .map_or((0, now), |e| (store.size_of(e), e.ts));
            let reply = self.record_delivery(seq, ts, dc, now);
            out.push(Outbound::Message {
                to: to.clone(),
                reply,
                seq,
                headers_only: self.config.headers_only,
            });
            if flow_control {
                self.fc_bytes += size;
                if self.fc_outstanding.is_none() && self.fc_bytes >= FLOW_CONTROL_WINDOW / 2 {
                    self.fc_counter += 1;
                    let fc = format!("$JS.FC.{}.{}.{}", self.stream, self.name, self.fc_counter);
                    out.push(Outbound::Status {
                        to: to.clone(),
                        reply: Some(fc.clone()),
                        headers: HeaderBuilder::status(100, "FlowControl Request").finish(),
                    });
                    self.fc_outstanding = Some(fc);
                }
            }
        }
        let hb = self.config.idle_heartbeat;
        if hb > 0 && now - self.last_delivery >= hb {
            self.last_delivery = now;
            let mut h = HeaderBuilder::status(100, "Idle Heartbeat")
                .add(
                    "Nats-Last-Consumer",
                    &self.delivered.consumer_seq.to_string(),
                )
                .add("Nats-Last-Stream", &self.delivered.stream_seq.to_string());
            if let Some(fc) = &self.fc_outstanding {
                h.push("Nats-Consumer-Stalled", fc);
            }
            out.push(Outbound::Status {
                to,
                reply: None,
                headers: h.finish(),
            });
        }
    }

    /// The client answered a flow-control request.
    pub fn flow_control_reply(&mut self, subject: &str) {
        if self.fc_outstanding.as_deref() == Some(subject) {
            self.fc_outstanding = None;
            self.fc_bytes = 0;
        }
    }

    /// When this consumer next needs attention (ack deadline, a delayed redelivery,
    /// request expiry, heartbeat), after `now`. What was due by `now` has been tried
    /// in the last poll; it is retried on the next event (an ack, a request).
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut at = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
        if let Some((t, _)) = self.deadlines.first() {
            at(*t);
        }
        if let Some((t, _)) = self.redeliver.iter().find(|(t, _)| *t > now) {
            at(*t);
        }
        for r in &self.waiting {
            if let Some(x) = r.expires {
                at(x);
            }
            if r.heartbeat > 0 {
                at(r.next_heartbeat);
            }
        }
        if !self.is_pull() {
            if self.config.idle_heartbeat > 0 && self.push_bound {
                at(self.last_delivery + self.config.idle_heartbeat);
            }
            if !self.push_bound {
                // Nothing tells us when a subscriber appears: look again shortly.
                at(now + PUSH_INTEREST_POLL);
            }
        }
        if let Some(t) = self.inactive_deadline() {
            at(t);
        }
        next.map(|t| t.max(now))
    }

    /// When an idle consumer with an inactive threshold is due for removal.
    fn inactive_deadline(&self) -> Option<i64> {
        let threshold = self.config.inactive_threshold;
        if threshold <= 0 || !self.waiting.is_empty() || self.push_bound {
            return None;
        }
        Some(self.last_active + threshold)
    }

    /// Is this consumer past its inactive threshold?
    pub fn is_inactive(&self, now: i64) -> bool {
        self.inactive_deadline().is_some_and(|t| t <= now)
    }

    /// The consumer is going away: pull requests waiting on it are told.
    pub fn deleted(&mut self, out: &mut Vec<Outbound>) {
        for req in self.waiting.drain(..) {
            out.push(Outbound::Status {
                to: req.reply,
                reply: None,
                headers: HeaderBuilder::status(409, "Consumer Deleted").finish(),
            });
        }
    }

    /// The advisories raised since the last call.
    pub fn take_advisories(&mut self) -> Vec<Advisory> {
        std::mem::take(&mut self.advisories)
    }

    pub fn info(&self, now: i64) -> ConsumerInfo {
        let mut config = self.config.clone();
        api::add_server_metadata(&mut config.metadata);
        ConsumerInfo {
            stream_name: self.stream.clone(),
            name: self.name.clone(),
            created: api::format_time(self.created),
            config,
            delivered: SequenceInfoActive {
                consumer_seq: self.delivered.consumer_seq,
                stream_seq: self.delivered.stream_seq,
                last_active: (self.delivered.consumer_seq > 0)
                    .then(|| api::format_time(self.last_delivery)),
            },
            ack_floor: SequenceInfoActive {
                consumer_seq: self.ack_floor.consumer_seq,
                stream_seq: self.ack_floor.stream_seq,
                last_active: None,
            },
            num_ack_pending: self.pending.len() as u64,
            num_redelivered: self.redelivered.len() as u64,
            num_waiting: self.waiting.len() as u64,
            num_pending: self.still_pending(),
            cluster: None,
            push_bound: self.push_bound,
            ts: api::format_time(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::store::Entry;
    use bytes::Bytes;

    fn store(n: u64) -> StreamStore {
        let mut s = StreamStore::new(u64::MAX, store::Accounting::Memory);
        s.set_durable(n);
        for i in 1..=n {
            s.insert(
                i,
                Entry {
                    ts: i as i64,
                    subject: if i % 2 == 0 { "even" } else { "odd" }.into(),
                    hdr_len: 0,
                    len: 1,
                    data: Some(Bytes::from_static(b"x")),
                    expires: None,
                },
            );
        }
        s
    }

    fn pull(ack: AckPolicy) -> ConsumerConfig {
        ConsumerConfig {
            durable_name: Some("C".into()),
            ack_policy: ack,
            ack_wait: 1000,
            ..Default::default()
        }
    }

    fn seqs(out: &[Outbound]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Outbound::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pull_batches_acks_and_redelivery() {
        let st = store(5);
        let mut c = Consumer::new("S", "C", pull(AckPolicy::Explicit), 0, &st);
        assert_eq!(c.info(0).num_pending, 5);
        let req = NextRequest {
            batch: 2,
            ..Default::default()
        };
        assert!(c.request_next("inbox", req, 0).is_none());
        let mut out = Vec::new();
        c.poll(&st, 0, &|_| true, &mut out);
        assert_eq!(seqs(&out), vec![1, 2]);
        assert_eq!(c.info(0).num_ack_pending, 2);
        assert_eq!(c.info(0).num_pending, 3);
        assert_eq!(c.ack(2, AckKind::Ack, None, 1), vec![2]);
        // Floor stays below 1 (still pending).
        assert_eq!(c.info(1).ack_floor.stream_seq, 0);
        // After the ack wait, 1 is redelivered with a new consumer sequence.
        let req = NextRequest {
            batch: 1,
            ..Default::default()
        };
        c.request_next("inbox", req, 2000);
        let mut out = Vec::new();
        c.poll(&st, 2000, &|_| true, &mut out);
        assert_eq!(seqs(&out), vec![1]);
        match &out[0] {
            Outbound::Message { reply, .. } => assert!(reply.starts_with("$JS.ACK.S.C.2.1.3.")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.ack(1, AckKind::Ack, None, 2001), vec![1]);
        let info = c.info(2001);
        assert_eq!(info.ack_floor.stream_seq, 2);
        assert_eq!(info.num_redelivered, 0);
    }

    #[test]
    fn no_wait_and_expiry_statuses() {
        let st = store(0);
        let mut c = Consumer::new("S", "C", pull(AckPolicy::Explicit), 0, &st);
        let req = NextRequest {
            batch: 1,
            no_wait: true,
            ..Default::default()
        };
        match c.request_next("i", req, 0) {
            Some(Outbound::Status { headers, .. }) => {
                assert!(headers.starts_with(b"NATS/1.0 404 No Messages"))
            }
            other => panic!("unexpected {other:?}"),
        }
        let req = NextRequest {
            batch: 3,
            expires: 100,
            ..Default::default()
        };
        assert!(c.request_next("i", req, 0).is_none());
        assert_eq!(c.next_deadline(0), Some(100));
        let mut out = Vec::new();
        c.poll(&st, 100, &|_| true, &mut out);
        match &out[..] {
            [Outbound::Status { headers, .. }] => {
                let text = String::from_utf8_lossy(headers);
                assert!(
                    text.starts_with("NATS/1.0 408 Request Timeout\r\n"),
                    "{text}"
                );
                assert!(text.contains("Nats-Pending-Messages: 3"), "{text}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn filters_and_ack_all() {
        let st = store(6);
        let mut cfg = pull(AckPolicy::All);
        cfg.filter_subject = Some("even".into());
        let mut c = Consumer::new("S", "C", cfg, 0, &st);
        assert_eq!(c.info(0).num_pending, 3);
        c.request_next(
            "i",
            NextRequest {
                batch: 10,
                ..Default::default()
            },
            0,
        );
        let mut out = Vec::new();
        c.poll(&st, 0, &|_| true, &mut out);
        assert_eq!(seqs(&out), vec![2, 4, 6]);
        assert_eq!(c.ack(4, AckKind::Ack, None, 0), vec![2, 4]);
        assert!(c.done_with(3, "odd"));
        assert!(c.done_with(4, "even"));
        assert!(!c.done_with(6, "even"));
    }

    #[test]
    fn max_ack_pending_stops_delivery() {
        let st = store(5);
        let mut cfg = pull(AckPolicy::Explicit);
        cfg.max_ack_pending = 2;
        let mut c = Consumer::new("S", "C", cfg, 0, &st);
        c.request_next(
            "i",
            NextRequest {
                batch: 10,
                ..Default::default()
            },
            0,
        );
        let mut out = Vec::new();
        c.poll(&st, 0, &|_| true, &mut out);
        assert_eq!(seqs(&out), vec![1, 2]);
        c.ack(1, AckKind::Ack, None, 1);
        let mut out = Vec::new();
        c.poll(&st, 1, &|_| true, &mut out);
        assert_eq!(seqs(&out), vec![3]);
    }

    #[test]
    fn ack_bodies() {
        assert_eq!(AckKind::parse(b""), Some(AckKind::Ack));
        assert_eq!(AckKind::parse(b"+ACK"), Some(AckKind::Ack));
        assert_eq!(AckKind::parse(b"-NAK"), Some(AckKind::Nak(None)));
        assert_eq!(
            AckKind::parse(br#"-NAK {"delay":5}"#),
            Some(AckKind::Nak(Some(5)))
        );
        assert_eq!(AckKind::parse(b"+WPI"), Some(AckKind::InProgress));
        assert_eq!(AckKind::parse(b"+TERM reason"), Some(AckKind::Term));
        assert_eq!(
            AckKind::term_reason(b"+TERM  because \r\n"),
            Some("because")
        );
        assert_eq!(AckKind::term_reason(b"+TERM"), None);
        assert_eq!(AckKind::term_reason(b"+ACK"), None);
        assert_eq!(AckKind::parse(b"+NXT"), Some(AckKind::Next));
        assert_eq!(AckKind::parse(b"junk"), None);
    }

    #[test]
    fn last_per_subject_delivers_each_subject_once() {
        let st = store(6);
        let mut cfg = pull(AckPolicy::None);
        cfg.deliver_policy = DeliverPolicy::LastPerSubject;
        let mut c = Consumer::new("S", "C", cfg, 0, &st);
        assert_eq!(c.info(0).num_pending, 2);
        c.request_next(
            "i",
            NextRequest {
                batch: 10,
                ..Default::default()
            },
            0,
        );
        let mut out = Vec::new();
        c.poll(&st, 0, &|_| true, &mut out);
        assert_eq!(seqs(&out), vec![5, 6]);
    }
}
