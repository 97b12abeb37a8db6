//! The stream actor: one per stream. It owns the stream's state machine and its
//! consumers, captures the messages published on the stream's subjects (internal
//! subscriptions in the account's index), sends them to the storage actor, and sends
//! the PubAcks once the storage actor reports them durable. It serves the stream's
//! `$JS.API` requests (forwarded by the JetStream actor), consumer acks and pull
//! requests, and runs the consumers' timers.
//!
//! Who waits on whom: the JetStream actor awaits this actor (info, update, delete);
//! this actor awaits only the account router (its own subscriptions) and never the
//! JetStream actor. Storage completions come back as mailbox messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::publish::Publisher;
use super::raft::{GroupEvent, GroupHandle, GroupStatus};
use super::router::{Account, SubChange};
use super::runtime;
use super::storage::{Progress, Storage, StorageError, WriteBatch, WriteOp};
use super::subscription::{InternalMsg, InternalSink, Message, Subscription};
use crate::jetstream::advisory::{self, Advisory};
use crate::jetstream::api::{self, NextRequest, StreamConfig, StreamInfo, StreamInfoRequest};
use crate::jetstream::consumer::{AckKind, Outbound};
use crate::jetstream::errors::ApiError;
use crate::jetstream::headers::{self, HeaderBuilder};
use crate::jetstream::replicated::{self, StreamEntry};
use crate::jetstream::request::{self, ApiRequest};
use crate::jetstream::sourcing::{self, Inbound, Sourcing};
use crate::jetstream::store::{Accounting, Loaded};
use crate::jetstream::stream::{self, Answer, Stream};

/// Node-wide JetStream usage, kept by the stream actors (atomics: many writers), and
/// the node's limits on it (`jetstream.max_memory` / `max_file`; 0: none).
#[derive(Default, Debug)]
pub struct Usage {
    pub memory: AtomicU64,
    pub storage: AtomicU64,
    pub consumers: AtomicU64,
    pub max_memory: u64,
    pub max_file: u64,
    /// The JetStream account's own limits.
    pub account: AccountQuota,
    /// API requests answered, and those answered with an error (the JetStream actor).
    pub api_total: AtomicU64,
    pub api_errors: AtomicU64,
    /// Every stream's own numbers, for monitoring; a stream actor adds itself when it
    /// starts and removes itself when deleted.
    pub streams: arc_swap::ArcSwap<Vec<Arc<StreamUsage>>>,
}

/// The JetStream account's own limits (its JWT's; -1: none), atomics because a
/// pushed JWT changes them while streams publish.
#[derive(Debug)]
pub struct AccountQuota {
    max_memory: AtomicI64,
    max_storage: AtomicI64,
    max_streams: AtomicI64,
    max_consumers: AtomicI64,
}

impl Default for AccountQuota {
    fn default() -> Self {
        AccountQuota {
            max_memory: AtomicI64::new(-1),
            max_storage: AtomicI64::new(-1),
            max_streams: AtomicI64::new(-1),
            max_consumers: AtomicI64::new(-1),
        }
    }
}

impl AccountQuota {
    pub fn set(&self, limits: &api::AccountLimits) {
        self.max_memory.store(limits.max_memory, Ordering::Relaxed);
        self.max_storage
            .store(limits.max_storage, Ordering::Relaxed);
        self.max_streams
            .store(limits.max_streams, Ordering::Relaxed);
        self.max_consumers
            .store(limits.max_consumers, Ordering::Relaxed);
    }

    /// The bytes of `storage` the account may hold (`None`: no limit).
    pub fn max_bytes(&self, storage: api::Storage) -> Option<u64> {
        let max = match storage {
            api::Storage::Memory => &self.max_memory,
            api::Storage::File => &self.max_storage,
        };
        u64::try_from(max.load(Ordering::Relaxed)).ok()
    }

    /// Streams the account may have (0 or -1: no limit, as at the reference).
    pub fn max_streams(&self) -> Option<usize> {
        usize::try_from(self.max_streams.load(Ordering::Relaxed))
            .ok()
            .filter(|&m| m > 0)
    }

    /// Consumers each stream of the account may have (0 or -1: no limit).
    pub fn max_consumers(&self) -> Option<usize> {
        usize::try_from(self.max_consumers.load(Ordering::Relaxed))
            .ok()
            .filter(|&m| m > 0)
    }

    /// The limits as `$JS.API.INFO` reports them.
    pub fn report(&self, limits: &mut api::AccountLimits) {
        limits.max_memory = self.max_memory.load(Ordering::Relaxed);
        limits.max_storage = self.max_storage.load(Ordering::Relaxed);
        limits.max_streams = self.max_streams.load(Ordering::Relaxed);
        limits.max_consumers = self.max_consumers.load(Ordering::Relaxed);
    }
}

/// One stream's numbers as monitoring reads them (the stream actor writes them).
#[derive(Debug, Default)]
pub struct StreamUsage {
    pub name: String,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub consumers: AtomicU64,
}

impl Usage {
    fn register(&self, stream: &Arc<StreamUsage>) {
        self.streams.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(stream.clone());
            list
        });
    }

    fn unregister(&self, stream: &Arc<StreamUsage>) {
        self.streams.rcu(|list| {
            let mut list = Vec::clone(list);
            list.retain(|s| !Arc::ptr_eq(s, stream));
            list
        });
    }

    /// Whether the node is already past its limit for `storage`: as at the reference,
    /// the publish that crosses it is stored, the ones after it are refused.
    pub fn exceeded(&self, storage: api::Storage) -> bool {
        let (used, max) = match storage {
            api::Storage::Memory => (&self.memory, self.max_memory),
            api::Storage::File => (&self.storage, self.max_file),
        };
        max > 0 && used.load(Ordering::Relaxed) > max
    }

    /// Whether storing `size` more bytes of `storage` would take the account past
    /// its own limit: as at the reference, the account's limit is never crossed (the
    /// node's is, by one message).
    pub fn would_exceed_account(&self, storage: api::Storage, size: u64) -> bool {
        let used = match storage {
            api::Storage::Memory => &self.memory,
            api::Storage::File => &self.storage,
        };
        self.account
            .max_bytes(storage)
            .is_some_and(|max| used.load(Ordering::Relaxed).saturating_add(size) > max)
    }

    /// Must every publish update the counters (a limit applies to `storage`)?
    pub fn limited(&self, storage: api::Storage) -> bool {
        let node = match storage {
            api::Storage::Memory => self.max_memory > 0,
            api::Storage::File => self.max_file > 0,
        };
        node || self.account.max_bytes(storage).is_some()
    }
}

/// Commands for a stream actor.
pub enum StreamCmd {
    /// A `$JS.API` request about this stream.
    Api(ApiRequest, InternalMsg),
    /// A new configuration, already validated against the other streams.
    Update(
        Box<StreamConfig>,
        async_channel::Sender<Result<StreamInfo, ApiError>>,
    ),
    Info(async_channel::Sender<StreamInfo>),
    /// Delete the stream and its data; answered once that is durable.
    Delete(async_channel::Sender<Result<(), ApiError>>),
    /// Write batch `id` is written or committed (or failed).
    Stored(u64, Result<Progress, Arc<StorageError>>),
    /// The stream is one replica of a replicated stream from now on.
    Replicate(Box<Replica>),
    /// What the stream's Raft group says.
    Raft(GroupEvent),
}

/// A replicated stream's replica: its Raft group, and whether this node leads it.
/// The leader proposes what reaches the stream (publishes, acks, changing API
/// requests) and answers; every replica applies the committed entries; consumers
/// deliver from the leader only (their acks are in the log, so a new leader delivers
/// from the ack floor on).
pub struct Replica {
    pub group: GroupHandle,
    /// The group's name in `cluster.raft_group`.
    pub raft_group: String,
    pub peers: Vec<String>,
    pub cluster: String,
    /// The log index applied so far (stored with the changes it made).
    pub applied: u64,
    pub leading: bool,
    /// The last term this node led: entries of that term are its own proposals, and
    /// it answers their publishers even when leadership has moved on by the time
    /// they commit (a stepdown commits the old leader's last entries under the new
    /// one; a reply from nobody would cost each of those publishers a timeout).
    pub led_term: u64,
    pub leader: Option<String>,
    /// Where the client that created the stream waits: its first leader answers.
    pub create_reply: Option<Bytes>,
    /// The system account, which gets a copy of the group's advisories.
    pub system: Option<Arc<Account>>,
}

/// What the JetStream actor keeps for a running stream.
pub struct StreamHandle {
    pub config: StreamConfig,
    pub commands: async_channel::Sender<StreamCmd>,
}

/// The other replicas of a group as its leader sees them, for `cluster.replicas`.
pub fn replicas(status: &GroupStatus, me: &str) -> Vec<api::PeerInfo> {
    let now = runtime::now();
    status
        .peers
        .iter()
        .filter(|p| p.name != me)
        .map(|p| api::PeerInfo {
            name: p.name.clone(),
            current: p.routed && p.matched >= status.applied,
            offline: !p.routed,
            active: p
                .heard
                .map_or(0, |at| now.saturating_duration_since(at).as_nanos() as u64),
            lag: status.last_index.saturating_sub(p.matched),
            peer: format!("{:08x}", crate::raft::node_id(&p.name) as u32),
        })
        .collect()
}

/// Every peer of a group as its leader (`me`) sees them, itself included, for the
/// leader-elected and quorum-lost advisories; `peer` is the id advisories name it by.
pub fn all_replicas(status: &GroupStatus, me: &str) -> Vec<api::PeerInfo> {
    let mut all = replicas(status, me);
    all.push(api::PeerInfo {
        name: me.to_string(),
        current: true,
        peer: format!("{:08x}", crate::raft::node_id(me) as u32),
        ..api::PeerInfo::default()
    });
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// Subscription tags of a stream actor.
const TAG_CAPTURE: u64 = 1;
const TAG_ACK: u64 = 2;
const TAG_FC: u64 = 3;
/// Answers to the consumer creates of the stream's mirror or sources.
const TAG_SOURCE_REPLY: u64 = 4;
/// Deliveries from origin `i`'s consumer of generation `g` (of the mirror or sources)
/// come tagged `TAG_SOURCE + (g << 16) + i`.
const TAG_SOURCE: u64 = 100;
const TAG_SOURCE_ORIGINS: u64 = 1 << 16;

/// Replies held until the writes before them are durable.
struct Held {
    batch: u64,
    replies: Vec<(Bytes, Vec<u8>)>,
}

pub struct StreamActor {
    stream: Stream,
    account: Arc<Account>,
    storage: Option<Storage>,
    usage: Arc<Usage>,
    /// This stream's numbers for monitoring.
    own_usage: Arc<StreamUsage>,
    leader: String,
    subs: Vec<Arc<Subscription>>,
    inbox_tx: async_channel::Sender<InternalMsg>,
    commands_tx: async_channel::Sender<StreamCmd>,
    publisher: Publisher,
    /// Replies (PubAcks, double acks) waiting for their write batch.
    held: VecDeque<Held>,
    /// Replies produced since the last write batch was cut.
    replies: Vec<(Bytes, Vec<u8>)>,
    next_batch: u64,
    /// The highest sequence submitted in a write batch, by batch id, until the
    /// batch is durable (written or committed, as `jetstream.ack` says).
    submitted: VecDeque<(u64, u64)>,
    /// The same, until the batch is committed to redb (only then may the cache
    /// drop the messages' bytes, and a replica's Raft log the entries the batch
    /// applied: the last element is the log index it records, for a replica).
    uncommitted: VecDeque<(u64, u64, Option<u64>)>,
    /// Bytes this stream counts in the node's usage.
    counted_bytes: u64,
    /// Consumers (not `direct`) this stream counts in the node's usage.
    counted_consumers: u64,
    failed: Option<String>,
    /// The mirror or sources this stream takes from, when it has any.
    sourcing: Option<Sourcing>,
    /// Each origin's deliver subscription (of its current consumer).
    source_subs: Vec<Option<Arc<Subscription>>>,
    rng: fastrand::Rng,
    /// Part of a clustered JetStream: its subscriptions are announced to the cluster.
    cluster_wide: bool,
    replica: Option<Box<Replica>>,
    /// A replicated stream whose group is not attached yet: it stays silent (nothing
    /// may reach its store but through the log).
    awaiting_replica: bool,
}

/// Starts a stream actor for `stream` (new, or restored from storage).
pub fn spawn(
    stream: Stream,
    account: Arc<Account>,
    storage: Option<Storage>,
    usage: Arc<Usage>,
    leader: String,
    cluster_wide: bool,
    spawner: &runtime::Spawner,
) -> StreamHandle {
    let (inbox_tx, inbox_rx) = async_channel::unbounded();
    let (commands_tx, commands_rx) = async_channel::unbounded();
    let config = stream.config().clone();
    let own_usage = Arc::new(StreamUsage {
        name: stream.name().to_string(),
        ..StreamUsage::default()
    });
    usage.register(&own_usage);
    let actor = StreamActor {
        stream,
        account,
        storage,
        usage,
        own_usage,
        leader,
        subs: Vec::new(),
        inbox_tx,
        commands_tx: commands_tx.clone(),
        publisher: Publisher::default(),
        held: VecDeque::new(),
        replies: Vec::new(),
        next_batch: 1,
        submitted: VecDeque::new(),
        uncommitted: VecDeque::new(),
        counted_bytes: 0,
        counted_consumers: 0,
        failed: None,
        sourcing: None,
        source_subs: Vec::new(),
        rng: fastrand::Rng::new(),
        awaiting_replica: cluster_wide && config.num_replicas > 1,
        cluster_wide,
        replica: None,
    };
    spawner.spawn_detached(actor.run(inbox_rx, commands_rx));
    StreamHandle {
        config,
        commands: commands_tx,
    }
}

/// Publishes the audit of API request `msg`, answered with `response` by `server`,
/// when anyone listens on `$JS.EVENT.ADVISORY.API`.
pub fn audit(
    publisher: &mut Publisher,
    account: &Account,
    server: &str,
    msg: &InternalMsg,
    response: Vec<u8>,
    now: i64,
) {
    if !publisher.has_interest(account, advisory::API_AUDIT.as_bytes()) {
        return;
    }
    let audit = Advisory::Api {
        server: server.to_string(),
        client: msg.from.clone(),
        subject: String::from_utf8_lossy(&msg.subject).into_owned(),
        request: String::from_utf8_lossy(msg.payload()).into_owned(),
        response: String::from_utf8(response).unwrap_or_default(),
    };
    publisher.advise(account, &audit, now);
}

/// Nanoseconds since the Unix epoch (the actors' clock; `src/` takes it as input).
pub fn now_ns() -> i64 {
    runtime::now_unix_ns()
}

impl StreamActor {
    fn is_file(&self) -> bool {
        self.stream.config().storage == api::Storage::File && self.storage.is_some()
    }

    async fn subscribe(&mut self) {
        let name = self.stream.name().to_string();
        let sink = |tag| InternalSink {
            tag,
            mailbox: self.inbox_tx.clone(),
        };
        let wide = self.cluster_wide;
        let mut subs = Vec::new();
        for s in &self.stream.config().subjects {
            subs.push(Arc::new(
                Subscription::internal(s, None, sink(TAG_CAPTURE)).cluster_wide(wide),
            ));
        }
        subs.push(Arc::new(
            Subscription::internal(&format!("$JS.ACK.{name}.>"), None, sink(TAG_ACK))
                .cluster_wide(wide),
        ));
        subs.push(Arc::new(
            Subscription::internal(&format!("$JS.FC.{name}.>"), None, sink(TAG_FC))
                .cluster_wide(wide),
        ));
        if let Some(sourcing) = &self.sourcing {
            subs.extend(self.source_subs.iter().flatten().cloned());
            subs.push(Arc::new(
                Subscription::internal(
                    &sourcing.reply_subscription(),
                    None,
                    sink(TAG_SOURCE_REPLY),
                )
                .cluster_wide(wide),
            ));
        }
        let mut changes: Vec<SubChange> = subs.iter().cloned().map(SubChange::Add).collect();
        for old in self.subs.drain(..) {
            old.close();
            changes.push(SubChange::Remove(old));
        }
        self.subs = subs;
        self.account.apply(changes).await;
    }

    async fn unsubscribe(&mut self) {
        let changes = self
            .subs
            .drain(..)
            .map(|s| {
                s.close();
                SubChange::Remove(s)
            })
            .collect();
        self.account.apply(changes).await;
    }

    async fn run(
        mut self,
        inbox: async_channel::Receiver<InternalMsg>,
        commands: async_channel::Receiver<StreamCmd>,
    ) {
        self.start_sourcing();
        self.subscribe().await;
        if !self.is_file() {
            let last = self.stream.store().last_seq();
            self.stream.set_durable(last);
        }
        self.update_usage();
        // One event lives on the stack per wake-up; boxing it would cost an allocation.
        #[allow(clippy::large_enum_variant)]
        enum Event {
            Inbox(Option<InternalMsg>),
            Command(Option<StreamCmd>),
            Tick,
        }
        loop {
            let now = now_ns();
            let deadline = [
                self.stream.next_deadline(now),
                self.sourcing.as_ref().and_then(Sourcing::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let event = {
                let inbox = async { Event::Inbox(inbox.recv().await.ok()) };
                let cmd = async { Event::Command(commands.recv().await.ok()) };
                let tick = async {
                    match deadline {
                        Some(t) => {
                            let wait = t.saturating_sub(now_ns()).max(0) as u64;
                            runtime::sleep(std::time::Duration::from_nanos(wait)).await;
                        }
                        None => futures_lite::future::pending::<()>().await,
                    }
                    Event::Tick
                };
                futures_lite::future::or(cmd, futures_lite::future::or(inbox, tick)).await
            };
            let now = now_ns();
            match event {
                Event::Inbox(None) | Event::Command(None) => break,
                Event::Inbox(Some(first)) => {
                    let mut next = Some(first);
                    let mut n = 0;
                    while let Some(msg) = next.take() {
                        self.inbound(msg, now);
                        n += 1;
                        if n < 4096 {
                            next = inbox.try_recv().ok();
                        }
                    }
                }
                Event::Command(Some(StreamCmd::Delete(done))) => {
                    let result = self.delete().await;
                    let _ = done.send(result).await;
                    return;
                }
                Event::Command(Some(cmd)) => {
                    self.command(cmd, now).await;
                    // A replicated stream's committed entries come one command each:
                    // take what is queued, then one write batch for all of it.
                    let mut n = 0;
                    while n < 4096 {
                        match commands.try_recv() {
                            Ok(StreamCmd::Delete(done)) => {
                                self.end_batch(now);
                                let result = self.delete().await;
                                let _ = done.send(result).await;
                                return;
                            }
                            Ok(cmd) => self.command(cmd, now).await,
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                Event::Tick => {
                    self.stream.expire(now);
                    let mut out = Vec::new();
                    if let Some(r) = self.replica.as_ref().filter(|r| r.leading) {
                        // Every replica removes it when the log says so.
                        for name in self.stream.inactive_consumers(now) {
                            let entry = StreamEntry::RemoveConsumer { ts: now, name };
                            r.group.propose_nowait(entry.encode());
                        }
                    }
                    let inactive = match &self.replica {
                        Some(_) => Vec::new(),
                        None => self.stream.inactive_consumers(now),
                    };
                    for name in inactive {
                        log::debug!(
                            "stream {}: consumer {name} inactive, removed",
                            self.stream.name()
                        );
                        self.stream.remove_consumer(&name, &mut out);
                    }
                    self.send_outbound(out);
                }
            }
            self.end_batch(now);
        }
        self.unsubscribe().await;
    }

    /// After each step: persist what changed, deliver what can be delivered.
    fn end_batch(&mut self, now: i64) {
        self.poll_sourcing(now);
        self.flush_changes();
        let account = self.account.clone();
        let index = account.index();
        let interest = |s: &str| index.has_interest(s.as_bytes());
        let mut out = Vec::new();
        if self.replica.as_ref().is_none_or(|r| r.leading) {
            self.stream.poll_consumers(now, &interest, &mut out);
        }
        drop(index);
        self.send_outbound(out);
        self.advise(now);
        // Deliveries change consumer state and (interest retention) the stream.
        self.flush_changes();
        self.update_usage();
        self.publisher.flush();
    }

    /// Publishes the advisories the stream and its consumers raised.
    fn advise(&mut self, now: i64) {
        for advisory in self.stream.take_advisories() {
            self.publisher.advise(&self.account, &advisory, now);
        }
    }

    fn update_usage(&mut self) {
        let bytes = self.stream.store().bytes();
        let counter = match self.stream.config().storage {
            api::Storage::Memory => &self.usage.memory,
            api::Storage::File => &self.usage.storage,
        };
        if bytes > self.counted_bytes {
            counter.fetch_add(bytes - self.counted_bytes, Ordering::Relaxed);
        } else {
            counter.fetch_sub(self.counted_bytes - bytes, Ordering::Relaxed);
        }
        self.counted_bytes = bytes;
        let own = &self.own_usage;
        own.bytes.store(bytes, Ordering::Relaxed);
        own.messages
            .store(self.stream.store().len(), Ordering::Relaxed);
        let consumers = self.stream.public_consumers().count() as u64;
        own.consumers.store(consumers, Ordering::Relaxed);
        if consumers > self.counted_consumers {
            let more = consumers - self.counted_consumers;
            self.usage.consumers.fetch_add(more, Ordering::Relaxed);
        } else {
            let fewer = self.counted_consumers - consumers;
            self.usage.consumers.fetch_sub(fewer, Ordering::Relaxed);
        }
        self.counted_consumers = consumers;
    }

    /// Cuts a write batch from the stream's changes; replies produced so far wait for it.
    fn flush_changes(&mut self) {
        let changes = self.stream.take_changes();
        if !self.is_file() {
            let last = self.stream.store().last_seq();
            self.stream.set_durable(last);
            let replies = std::mem::take(&mut self.replies);
            self.send_replies(replies);
            return;
        }
        let mut ops = self.stream.write_ops(changes);
        if let Some(r) = &self.replica {
            if !ops.is_empty() {
                ops.push(WriteOp::PutApplied(r.applied));
            }
        }
        if ops.is_empty() {
            if self.held.is_empty() {
                let replies = std::mem::take(&mut self.replies);
                self.send_replies(replies);
            } else if !self.replies.is_empty() {
                // Behind writes still in flight: they go out with the last batch.
                let replies = std::mem::take(&mut self.replies);
                if let Some(last) = self.held.back_mut() {
                    last.replies.extend(replies);
                }
            }
            return;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        self.held.push_back(Held {
            batch: id,
            replies: std::mem::take(&mut self.replies),
        });
        self.submitted
            .push_back((id, self.stream.store().last_seq()));
        self.uncommitted.push_back((
            id,
            self.stream.store().last_seq(),
            self.replica.as_ref().map(|r| r.applied),
        ));
        let tx = self.commands_tx.clone();
        if let Some(storage) = &self.storage {
            storage.submit(WriteBatch {
                stream: self.stream.name().to_string(),
                ops,
                done: Box::new(move |result| {
                    let _ = tx.try_send(StreamCmd::Stored(id, result));
                }),
            });
        }
    }

    fn stored(&mut self, id: u64, result: Result<Progress, Arc<StorageError>>) {
        let progress = match result {
            Ok(p) => p,
            Err(e) => return self.store_failed(&e),
        };
        if progress == Progress::Committed {
            let mut applied = None;
            while let Some((b, seq, a)) = self.uncommitted.front().copied() {
                if b > id {
                    break;
                }
                self.uncommitted.pop_front();
                self.stream.set_committed(seq);
                applied = a.or(applied);
            }
            // Not at `Written`: an OS crash may take the journal's tail with it.
            if let (Some(applied), Some(r)) = (applied, &self.replica) {
                r.group.durable(applied);
            }
        }
        // Durable either way (a batch committed without a word before was never
        // written to a journal).
        while let Some((b, seq)) = self.submitted.front().copied() {
            if b > id {
                break;
            }
            self.submitted.pop_front();
            self.stream.set_durable(seq);
        }
        while self.held.front().is_some_and(|h| h.batch <= id) {
            if let Some(h) = self.held.pop_front() {
                self.send_replies(h.replies);
            }
        }
    }

    fn store_failed(&mut self, e: &StorageError) {
        // A store that cannot write cannot ack anything more.
        self.failed = Some(e.to_string());
        let err = ApiError::stream_store_failed(&e.to_string());
        while let Some(h) = self.held.pop_front() {
            for (reply, _) in h.replies {
                self.reply(&reply, api::pub_ack_error(self.stream.name(), &err));
            }
        }
    }

    fn send_replies(&mut self, replies: Vec<(Bytes, Vec<u8>)>) {
        for (to, body) in replies {
            self.reply(&to, body);
        }
    }

    fn reply(&mut self, to: &[u8], body: Vec<u8>) {
        self.publisher.send(&self.account, to, None, None, &body);
    }

    /// Replies once the writes made so far are durable.
    fn reply_after_writes(&mut self, to: Bytes, body: Vec<u8>) {
        self.replies.push((to, body));
    }

    fn inbound(&mut self, msg: InternalMsg, now: i64) {
        match msg.tag {
            TAG_CAPTURE => self.captured(msg, now),
            TAG_ACK => self.acked(msg, now),
            TAG_FC => {
                if let Ok(subject) = std::str::from_utf8(&msg.subject) {
                    self.stream.flow_control_reply(subject);
                }
            }
            TAG_SOURCE_REPLY => {
                if let (Some(sourcing), Ok(subject)) =
                    (&mut self.sourcing, std::str::from_utf8(&msg.subject))
                {
                    sourcing.handle_response(subject, msg.payload(), now);
                }
            }
            tag if tag >= TAG_SOURCE => {
                let t = tag - TAG_SOURCE;
                self.sourced(t % TAG_SOURCE_ORIGINS, t / TAG_SOURCE_ORIGINS, msg, now);
            }
            _ => {}
        }
    }

    /// Builds the stream's sourcing from its config (at start and after an update that
    /// changed its sources), finding where each source left off in the stored messages.
    fn start_sourcing(&mut self) {
        let prefix = format!("$JS.SRC.{}", random_name());
        self.sourcing = Sourcing::new(self.stream.config(), prefix);
        let Some(sourcing) = &self.sourcing else {
            return;
        };
        if sourcing.is_mirror() {
            return;
        }
        // From the newest message back, the first one each source wrote says where it
        // stands (as the reference finds it).
        let names = sourcing.index_names();
        let mut found: Vec<Option<u64>> = vec![None; names.len()];
        let seqs: Vec<u64> = self.stream.store().seqs_from(0).collect();
        for seq in seqs.into_iter().rev() {
            if found.iter().all(Option::is_some) {
                break;
            }
            let Some(m) = self.load(seq) else {
                continue;
            };
            let Some(value) = headers::get(m.headers(), sourcing::SOURCE_HEADER) else {
                continue;
            };
            if let Some((iname, origin_seq)) = sourcing::parse_source_header(value) {
                if let Some(i) = names.iter().position(|n| *n == iname) {
                    found[i].get_or_insert(origin_seq);
                }
            }
        }
        if let Some(sourcing) = &mut self.sourcing {
            for (i, seq) in found.into_iter().enumerate() {
                sourcing.resume(i, seq.unwrap_or(0));
            }
        }
    }

    /// Asks for the consumers the mirror or sources need now.
    fn poll_sourcing(&mut self, now: i64) {
        let Some(sourcing) = &mut self.sourcing else {
            return;
        };
        sourcing.tick(now);
        let (last, empty) = (
            self.stream.store().last_seq(),
            self.stream.store().last_seq() == 0,
        );
        let rng = &mut self.rng;
        let mut name = || {
            std::iter::repeat_with(|| rng.alphanumeric())
                .take(12)
                .collect::<String>()
        };
        let requests = sourcing.poll_setup(now, last, empty, &mut name);
        for r in requests {
            // The new consumer's subject replaces the old one's: the old consumer loses
            // its subscriber and goes away after its inactivity threshold.
            let tag = TAG_SOURCE + r.generation * TAG_SOURCE_ORIGINS + r.origin as u64;
            let sub = Arc::new(
                Subscription::internal(
                    &r.deliver,
                    None,
                    InternalSink {
                        tag,
                        mailbox: self.inbox_tx.clone(),
                    },
                )
                .cluster_wide(self.cluster_wide),
            );
            if self.source_subs.len() <= r.origin {
                self.source_subs.resize(r.origin + 1, None);
            }
            let mut changes = vec![SubChange::Add(sub.clone())];
            if let Some(old) = self.source_subs[r.origin].replace(sub.clone()) {
                old.close();
                self.subs.retain(|s| !Arc::ptr_eq(s, &old));
                changes.push(SubChange::Remove(old));
            }
            self.subs.push(sub);
            self.account.send(changes);
            self.publisher.send(
                &self.account,
                r.subject.as_bytes(),
                Some(r.reply.as_bytes()),
                None,
                &r.body,
            );
        }
    }

    /// Something from origin `i`'s consumer: a message to store, or a control message.
    fn sourced(&mut self, i: u64, generation: u64, msg: InternalMsg, now: i64) {
        let (Some(sourcing), Ok(subject)) = (&mut self.sourcing, std::str::from_utf8(&msg.subject))
        else {
            return;
        };
        let reply = msg
            .reply
            .as_deref()
            .and_then(|r| std::str::from_utf8(r).ok());
        let hdr_len = msg.headers.unwrap_or(0);
        match sourcing.handle_delivery(
            i as usize, generation, subject, reply, &msg.data, hdr_len, now,
        ) {
            Inbound::Nothing => {}
            Inbound::Answer(to) => {
                self.publisher
                    .send(&self.account, to.as_bytes(), None, None, b"")
            }
            Inbound::Store(m) => {
                let data = Bytes::from(m.data.clone());
                let result = if sourcing.is_mirror() {
                    self.stream.store_mirrored(
                        m.origin_seq,
                        m.origin_ts,
                        &m.subject,
                        data,
                        m.hdr_len,
                    )
                } else {
                    self.stream
                        .publish(now, &m.subject, data, m.hdr_len)
                        .map(|_| ())
                };
                if let Err(e) = result {
                    log::warn!(
                        "stream {}: cannot store {} message {} from {}: {}",
                        self.stream.name(),
                        if sourcing.is_mirror() {
                            "mirrored"
                        } else {
                            "sourced"
                        },
                        m.origin_seq,
                        m.subject,
                        e.description
                    );
                    sourcing.store_failed(&m, now);
                }
            }
        }
    }

    /// A replicated stream's `cluster` block, as this node sees its group.
    fn cluster_info(&self) -> Option<api::ClusterInfo> {
        let r = self.replica.as_ref()?;
        let status = r.group.status();
        let leader = r.leader.clone().unwrap_or_default();
        Some(api::ClusterInfo {
            name: Some(r.cluster.clone()),
            raft_group: Some(r.raft_group.clone()),
            // As the reference: only the group's leader says since when it leads.
            leader_since: (r.leading && status.leader_since > 0 && !leader.is_empty())
                .then(|| api::format_time(status.leader_since)),
            leader,
            replicas: replicas(&status, &self.leader),
            system_account: true,
            traffic_account: Some("$SYS".to_string()),
        })
    }

    /// STREAM.INFO, with the mirror's or sources' state.
    fn info(&self, now: i64, req: &StreamInfoRequest) -> StreamInfo {
        let leader = match &self.replica {
            Some(r) => r.leader.clone().unwrap_or_default(),
            None => self.leader.clone(),
        };
        let mut info = self.stream.info(now, &leader, req);
        if let Some(cluster) = self.cluster_info() {
            info.cluster = Some(cluster);
        }
        if let Some(sourcing) = &self.sourcing {
            (info.mirror, info.sources) = sourcing.info(now);
        }
        info
    }

    /// What the stream's Raft group said.
    fn raft_event(&mut self, event: GroupEvent) {
        let Some(r) = &mut self.replica else {
            return;
        };
        match event {
            GroupEvent::Leader { leader, me, term } => {
                if me && !r.leading {
                    log::info!("stream {}: this node leads it now", self.stream.name());
                }
                // A leader that knows of no leader any more stepped down for want of
                // a quorum (a transfer or a higher term names the new one).
                let elected_me = me && !r.leading;
                let lost_quorum = r.leading && leader.is_none();
                if me {
                    r.led_term = term;
                }
                r.leading = me;
                let elected = leader.is_some();
                r.leader = leader;
                // The first leader answers the create; the others forget it.
                let pending = if elected { r.create_reply.take() } else { None };
                if let Some(to) = pending.filter(|_| me) {
                    let info = self.info(runtime::now_unix_ns(), &StreamInfoRequest::default());
                    let body =
                        api::response("stream_create_response", &info.for_clustered_create(true));
                    self.reply(&to, body);
                }
                if elected_me || lost_quorum {
                    self.advise_leadership(elected_me);
                }
            }
            // The stream writes what it applies and says `durable` as it goes.
            GroupEvent::Compacting { .. } => {}
            GroupEvent::Committed { index, term, data } => {
                if index <= r.applied {
                    return;
                }
                r.applied = index;
                let leading = r.leading;
                let mine = term == r.led_term;
                match StreamEntry::decode(&data) {
                    Ok(entry) => self.apply(entry, leading, mine),
                    // The same bytes everywhere: every replica skips it alike.
                    Err(e) => log::error!("stream {}: log entry {index}: {e}", self.stream.name()),
                }
            }
        }
    }

    /// The advisories of this node's election as the group's leader (`elected`) or of
    /// its stepping down for want of a quorum: for the stream and, since a consumer's
    /// state is replicated through its stream's group and led by its leader, for each
    /// of its consumers, as the reference sends them for its consumers' own groups.
    fn advise_leadership(&mut self, elected: bool) {
        let Some(r) = &self.replica else {
            return;
        };
        log::debug!(
            "stream {}: {}",
            self.stream.name(),
            if elected {
                "leader elected: advised"
            } else {
                "quorum lost: advised"
            }
        );
        let replicas = all_replicas(&r.group.status(), &self.leader);
        let system = r.system.clone();
        let stream = self.stream.name().to_string();
        let consumers = self.stream.public_consumers().map(|c| Some(c.name.clone()));
        let now = runtime::now_unix_ns();
        for consumer in std::iter::once(None).chain(consumers) {
            let advisory = if elected {
                Advisory::LeaderElected {
                    account: None,
                    stream: stream.clone(),
                    consumer,
                    leader: self.leader.clone(),
                    replicas: replicas.clone(),
                }
            } else {
                Advisory::QuorumLost {
                    account: None,
                    stream: stream.clone(),
                    consumer,
                    replicas: replicas.clone(),
                }
            };
            self.publisher
                .advise_with_system(&self.account, system.as_deref(), &advisory, now);
        }
        self.publisher.flush();
    }

    /// Applies a committed entry; whoever proposed it (`mine`) answers whoever waits,
    /// the leader delivers to consumers.
    fn apply(&mut self, entry: StreamEntry, leading: bool, mine: bool) {
        match entry {
            StreamEntry::Publish {
                ts,
                subject,
                hdr_len,
                data,
                reply,
            } => {
                let result = self.stream.publish(ts, &subject, data, hdr_len as usize);
                let Some(reply) = reply.filter(|_| mine) else {
                    return;
                };
                match result {
                    // Committed means durable on a quorum's log (which replays into the
                    // store from the stored applied index after a crash): no need to
                    // wait for this replica's own store write as well.
                    Ok(ack) => self.reply(reply.as_bytes(), ack.to_json()),
                    Err(e) => {
                        let body = api::pub_ack_error(self.stream.name(), &e);
                        self.reply(reply.as_bytes(), body);
                    }
                }
            }
            StreamEntry::Ack {
                ts,
                subject,
                body,
                reply,
            } => self.apply_ack(
                &subject,
                &body,
                reply.map(Bytes::from).filter(|_| mine),
                leading,
                ts,
            ),
            StreamEntry::Api {
                ts,
                subject,
                body,
                reply,
                name,
            } => {
                let Some(req) = request::parse(&subject) else {
                    return;
                };
                let msg = InternalMsg {
                    tag: 0,
                    subject: Bytes::from(subject),
                    reply: reply.map(Bytes::from).filter(|_| mine),
                    headers: None,
                    data: body,
                    from: None,
                };
                self.answer(req, msg, ts, Some(name));
            }
            StreamEntry::RemoveConsumer { name, .. } => {
                let mut out = Vec::new();
                self.stream.remove_consumer(&name, &mut out);
                if leading {
                    self.send_outbound(out);
                }
            }
        }
    }

    /// May `msg` be stored: the node not past its limit, the account not taken past
    /// its own by it?
    fn room_for(&self, msg: &InternalMsg, subject: &str) -> Result<(), ApiError> {
        let storage = self.stream.config().storage;
        if self.usage.exceeded(storage) {
            return Err(ApiError::insufficient_resources());
        }
        let size = Accounting::of(storage).message_size(
            subject.len(),
            msg.data.len(),
            msg.headers.unwrap_or(0),
        );
        if self.usage.would_exceed_account(storage, size) {
            return Err(ApiError::account_resources_exceeded());
        }
        Ok(())
    }

    fn captured(&mut self, msg: InternalMsg, now: i64) {
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        if self.awaiting_replica {
            return;
        }
        if let Some(r) = &self.replica {
            if !r.leading {
                return;
            }
            if let Err(err) = self.room_for(&msg, subject) {
                if let Some(reply) = &msg.reply {
                    let body = api::pub_ack_error(self.stream.name(), &err);
                    self.reply(reply, body);
                }
                return;
            }
            let no_ack = self.stream.config().no_ack;
            let entry = StreamEntry::Publish {
                ts: now,
                subject: subject.to_string(),
                hdr_len: msg.headers.unwrap_or(0) as u32,
                data: msg.data.clone(),
                reply: msg.reply_text().filter(|_| !no_ack),
            };
            r.group.propose_nowait(entry.encode());
            return;
        }
        if self.failed.is_some() {
            if let Some(reply) = &msg.reply {
                let err = ApiError::stream_store_failed("stream store has failed");
                let body = api::pub_ack_error(self.stream.name(), &err);
                self.reply(reply, body);
            }
            return;
        }
        let storage = self.stream.config().storage;
        let result = self.room_for(&msg, subject).and_then(|()| {
            self.stream
                .publish(now, subject, msg.data.clone(), msg.headers.unwrap_or(0))
        });
        if self.usage.limited(storage) {
            // Counted per message, not per batch, so a node overshoots by one message.
            self.update_usage();
        }
        let no_ack = self.stream.config().no_ack;
        let Some(reply) = msg.reply.filter(|_| !no_ack) else {
            return;
        };
        match result {
            Ok(ack) => {
                self.reply_after_writes(reply, ack.to_json());
            }
            Err(e) => {
                let body = api::pub_ack_error(self.stream.name(), &e);
                self.reply(&reply, body);
            }
        }
    }

    fn acked(&mut self, msg: InternalMsg, now: i64) {
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        if self.awaiting_replica {
            return;
        }
        if let Some(r) = &self.replica {
            if r.leading {
                let entry = StreamEntry::Ack {
                    ts: now,
                    subject: subject.to_string(),
                    body: msg.payload_bytes(),
                    reply: msg.reply_text(),
                };
                r.group.propose_nowait(entry.encode());
            }
            return;
        }
        self.apply_ack(subject, msg.payload(), msg.reply.clone(), true, now);
    }

    /// Applies a consumer ack; `reply` (the proposer's or a single node's) is answered;
    /// an ack that asks for the next message waits only at the `leading` replica
    /// (the one that delivers).
    fn apply_ack(
        &mut self,
        subject: &str,
        payload: &[u8],
        reply: Option<Bytes>,
        leading: bool,
        now: i64,
    ) {
        let Some(ack) = request::parse_ack(subject) else {
            return;
        };
        let Some(kind) = AckKind::parse(payload) else {
            return;
        };
        let consumer = ack.consumer.to_string();
        let reason = AckKind::term_reason(payload);
        self.stream
            .ack(&consumer, ack.stream_seq, kind, reason, now);
        if let Some(reply) = reply {
            if kind == AckKind::Next {
                if !leading {
                    return;
                }
                if let Some(c) = self.stream.consumer_mut(&consumer) {
                    let reply = String::from_utf8_lossy(&reply).to_string();
                    let req = NextRequest::parse(payload.get(4..).unwrap_or_default())
                        .unwrap_or_default();
                    if let Some(status) = c.request_next(&reply, req, now) {
                        self.send_outbound(vec![status]);
                    }
                }
            } else {
                // A double ack: answered once the ack is durable.
                self.reply_after_writes(reply, Vec::new());
            }
        }
    }

    async fn command(&mut self, cmd: StreamCmd, now: i64) {
        match cmd {
            StreamCmd::Api(req, msg) => self.api(req, msg, now),
            StreamCmd::Update(config, done) => {
                let result = self.update(*config, now).await;
                let _ = done.send(result).await;
            }
            StreamCmd::Info(done) => {
                let info = self.info(now, &StreamInfoRequest::default());
                let _ = done.send(info).await;
            }
            StreamCmd::Delete(_) => {}
            StreamCmd::Stored(id, result) => self.stored(id, result),
            StreamCmd::Replicate(replica) => {
                log::info!(
                    "stream {}: replicated on {} (applied up to {})",
                    self.stream.name(),
                    replica.peers.join(", "),
                    replica.applied
                );
                self.replica = Some(replica);
                self.awaiting_replica = false;
            }
            StreamCmd::Raft(event) => self.raft_event(event),
        }
    }

    async fn update(&mut self, config: StreamConfig, now: i64) -> Result<StreamInfo, ApiError> {
        stream::check_update(self.stream.config(), &config)?;
        let sources_changed = config.sources != self.stream.config().sources;
        let resubscribe = config.subjects != self.stream.config().subjects || sources_changed;
        self.stream.set_config(config);
        if sources_changed {
            self.start_sourcing();
        }
        if resubscribe {
            self.subscribe().await;
        }
        Ok(self.info(now, &StreamInfoRequest::default()))
    }

    async fn delete(&mut self) -> Result<(), ApiError> {
        self.unsubscribe().await;
        if let Some(r) = &self.replica {
            r.group.remove();
        }
        self.usage.unregister(&self.own_usage);
        let mut out = Vec::new();
        let names: Vec<String> = self.stream.consumers().map(|c| c.name.clone()).collect();
        for name in names {
            self.stream.remove_consumer(&name, &mut out);
        }
        self.send_outbound(out);
        self.advise(runtime::now_unix_ns());
        self.publisher.flush();
        self.stream.take_changes();
        let consumers = std::mem::take(&mut self.counted_consumers);
        self.usage.consumers.fetch_sub(consumers, Ordering::Relaxed);
        let bytes = self.counted_bytes;
        match self.stream.config().storage {
            api::Storage::Memory => self.usage.memory.fetch_sub(bytes, Ordering::Relaxed),
            api::Storage::File => self.usage.storage.fetch_sub(bytes, Ordering::Relaxed),
        };
        let Some(storage) = self.storage.clone().filter(|_| self.is_file()) else {
            return Ok(());
        };
        let (tx, rx) = async_channel::bounded(1);
        storage.submit(WriteBatch {
            stream: self.stream.name().to_string(),
            ops: vec![WriteOp::DeleteStream],
            done: Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        });
        match rx.recv().await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ApiError::stream_general(&e.to_string())),
            Err(_) => Err(ApiError::stream_general("storage stopped")),
        }
    }

    /// Answers an API request, then audits it (`$JS.EVENT.ADVISORY.API`).
    fn respond(
        &mut self,
        req: &ApiRequest,
        msg: &InternalMsg,
        body: Result<Vec<u8>, ApiError>,
        now: i64,
    ) {
        let Some(reply) = &msg.reply else {
            return;
        };
        let body = body.unwrap_or_else(|e| api::error_response(req.response_type(), &e));
        self.publisher.send(&self.account, reply, None, None, &body);
        // What the request did (a consumer created or deleted) comes before its audit,
        // as at the reference.
        self.advise(now);
        audit(
            &mut self.publisher,
            &self.account,
            &self.leader,
            msg,
            body,
            now,
        );
    }

    fn api(&mut self, req: ApiRequest, msg: InternalMsg, now: i64) {
        if self.awaiting_replica {
            return;
        }
        if let Some(r) = &self.replica {
            if !r.leading {
                if r.leader.is_none() && r.group.status().leader_changes > 0 {
                    self.answer_leaderless(req, msg, now);
                }
                return;
            }
        }
        if let ApiRequest::StreamLeaderStepdown(_) | ApiRequest::ConsumerLeaderStepdown(..) = &req {
            return self.step_down(&req, &msg, now);
        }
        if let Some(r) = &self.replica {
            if changes_stream(&req) {
                let entry = StreamEntry::Api {
                    ts: now,
                    subject: String::from_utf8_lossy(&msg.subject).into_owned(),
                    body: msg.payload_bytes(),
                    reply: msg.reply_text(),
                    name: random_name(),
                };
                r.group.propose_nowait(entry.encode());
                return;
            }
        }
        self.answer(req, msg, now, None);
    }

    /// A request while the group has lost its leader, answered by every replica as the
    /// reference's: STREAM.INFO with this replica's view (no `leader`), the rest 503
    /// 10008 "JetStream system temporarily unavailable". Pull requests and direct gets
    /// go unanswered there too (they wait for a leader, or time out). Before the group's
    /// first leader nobody answers: its followers may not have heard the leader yet
    /// when the create's answer reaches the client.
    fn answer_leaderless(&mut self, req: ApiRequest, msg: InternalMsg, now: i64) {
        match &req {
            ApiRequest::StreamInfo(_) => self.answer(req, msg, now, None),
            ApiRequest::MsgNext(..) | ApiRequest::DirectGet(..) => {}
            _ => self.respond(&req, &msg, Err(ApiError::cluster_unavailable()), now),
        }
    }

    /// A stream or consumer leader stepdown: the leader answers, then hands the group
    /// to another replica. A consumer's state is replicated through its stream's log,
    /// so its leader is the stream's and both move together. An R1 stream has no
    /// one to hand over to; the reference answers success there too.
    fn step_down(&mut self, req: &ApiRequest, msg: &InternalMsg, now: i64) {
        if let ApiRequest::ConsumerLeaderStepdown(_, name) = req {
            if self.stream.consumer(name).is_none() {
                return self.respond(req, msg, Err(ApiError::consumer_not_found()), now);
            }
        }
        let target = match &self.replica {
            None => Ok(None),
            Some(r) => {
                let status = r.group.status();
                let followers: Vec<(String, bool)> = replicas(&status, &self.leader)
                    .into_iter()
                    .filter(|p| !p.offline)
                    .map(|p| (p.name, p.current))
                    .collect();
                replicated::stepdown_target(msg.payload(), &followers, |n| fastrand::usize(..n))
                    .map(Some)
            }
        };
        log::debug!(
            "stream {}: leader stepdown to {target:?}",
            self.stream.name()
        );
        let body = target
            .as_ref()
            .map(|_| api::response(req.response_type(), &serde_json::json!({"success": true})));
        self.respond(req, msg, body.map_err(Clone::clone), now);
        if let (Ok(Some(to)), Some(r)) = (target, &self.replica) {
            r.group.transfer_leader(&to);
        }
    }

    /// Acts on a request and answers it (when it has a reply subject); `name` is the
    /// name a new consumer gets when the request gives none (random if `None`).
    fn answer(&mut self, req: ApiRequest, msg: InternalMsg, now: i64, name: Option<String>) {
        let kind = req.response_type();
        if let ApiRequest::StreamInfo(_) = &req {
            let result = api::parse_optional::<StreamInfoRequest>(msg.payload())
                .map(|r| api::response(kind, &self.info(now, &r)));
            return self.respond(&req, &msg, result, now);
        }
        let reply = msg.reply_text();
        let cluster = match &req {
            ApiRequest::ConsumerCreate { .. }
            | ApiRequest::DurableCreate(..)
            | ApiRequest::ConsumerInfo(..)
            | ApiRequest::ConsumerList(..) => self.cluster_info(),
            _ => None,
        };
        let request = stream::Request {
            api: &req,
            body: msg.payload(),
            reply: reply.as_deref(),
            subject: &msg.subject,
            cluster: cluster.as_ref(),
            account_max_consumers: self.usage.account.max_consumers(),
        };
        let mut out = Vec::new();
        let mut name = name;
        let mut new_name = || name.take().unwrap_or_else(random_name);
        let answer = self.stream.api(&request, now, &mut new_name, &mut out);
        // The node's consumer count is current when the answer goes out.
        self.update_usage();
        self.send_outbound(out);
        let result = match answer {
            Answer::Json(result) => result,
            Answer::MsgGet(seq) => self
                .load(seq)
                .ok_or_else(ApiError::no_message_found)
                .map(|m| stream::msg_get_response(kind, &m)),
            Answer::DirectGet(seq) => {
                if let Some(reply) = &msg.reply {
                    match self.load(seq) {
                        Some(m) => {
                            let (data, hdr_len) = stream::direct_message(self.stream.name(), &m);
                            self.publisher
                                .send(&self.account, reply, None, Some(hdr_len), &data);
                        }
                        None => self.status(reply, 404, "Message Not Found"),
                    }
                }
                return;
            }
            Answer::Status(headers) => {
                if let Some(reply) = &msg.reply {
                    self.publisher
                        .send_status(&self.account, reply, None, &headers);
                }
                return;
            }
            Answer::Nothing => return,
        };
        self.respond(&req, &msg, result, now);
    }

    fn status(&mut self, to: &[u8], code: u16, text: &str) {
        let h = HeaderBuilder::status(code, text).finish();
        self.publisher.send_status(&self.account, to, None, &h);
    }

    /// A stored message with its bytes (from the cache, else from storage).
    fn load(&mut self, seq: u64) -> Option<Loaded> {
        let entry = self.stream.store().get(seq)?;
        let (ts, subject, hdr_len) = (entry.ts, entry.subject.clone(), entry.hdr_len as usize);
        let data = match &entry.data {
            Some(d) => d.clone(),
            None => {
                let storage = self.storage.as_ref()?;
                match storage.read_message(self.stream.name(), seq) {
                    Ok(Some(rec)) => {
                        self.stream.recache(seq, &rec.data);
                        rec.data
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        log::error!("{e}");
                        return None;
                    }
                }
            }
        };
        Some(Loaded {
            seq,
            ts,
            subject,
            hdr_len,
            data,
        })
    }

    fn send_outbound(&mut self, out: Vec<Outbound>) {
        for o in out {
            match o {
                Outbound::Message {
                    to,
                    reply,
                    seq,
                    headers_only,
                } => {
                    let Some(m) = self.load(seq) else {
                        continue;
                    };
                    let (data, hdr_len);
                    if headers_only {
                        let h = HeaderBuilder::extend(m.headers())
                            .add("Nats-Msg-Size", &m.payload().len().to_string())
                            .finish();
                        hdr_len = Some(h.len());
                        data = Bytes::from(h);
                    } else {
                        hdr_len = (m.hdr_len > 0).then_some(m.hdr_len);
                        data = m.data.clone();
                    }
                    // Delivered to whoever listens on `to`, under the stored subject.
                    self.publisher.publish_via(
                        &self.account,
                        to.as_bytes(),
                        &Message {
                            subject: m.subject.as_bytes(),
                            reply: Some(reply.as_bytes()),
                            headers: hdr_len,
                            data: &data,
                            from: None,
                        },
                        0,
                        true,
                    );
                }
                Outbound::Status { to, reply, headers } => {
                    let reply = reply.as_deref().map(str::as_bytes);
                    self.publisher
                        .send_status(&self.account, to.as_bytes(), reply, &headers);
                }
            }
        }
    }
}

/// Whether a request changes the stream (a replicated stream puts it in its log).
fn changes_stream(req: &ApiRequest) -> bool {
    matches!(
        req,
        ApiRequest::ConsumerCreate { .. }
            | ApiRequest::DurableCreate(..)
            | ApiRequest::ConsumerDelete(..)
            | ApiRequest::StreamPurge(_)
            | ApiRequest::MsgDelete(_)
    )
}

/// A generated consumer name, like the reference's (8 random alphanumerics).
fn random_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = fastrand::Rng::new();
    (0..8)
        .map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char)
        .collect()
}
