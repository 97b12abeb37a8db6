//! The Raft host and its group actors: one actor per Raft group, one host per node.
//!
//! A group actor owns a raft-rs `RawNode` and drives it: ticks from the host, steps
//! with peers' messages, proposals from the group's owner (the JetStream actor for the
//! meta group), and after each batch of those one `Ready` cycle: messages for peers go
//! out at once; new entries and the hard state go to the storage actor (one redb group
//! commit across every group and stream), and only once they are durable (fsynced, or
//! written to the journal with `jetstream.ack = "write"`) are the messages that
//! acknowledge them (votes, append responses) sent; committed entries go to the owner.
//!
//! The host runs the node-wide ticker (every [`crate::raft::TICK_MS`]) and hands
//! frames from routes to their groups. Frames travel on the routes to peers by name
//! (`Peers::send_raft`), in our own encoding (`crate::raft::frame`).
//!
//! Compaction: once every voter holds `COMPACT_EVERY` entries past the last marker,
//! the leader proposes a marker (`crate::raft::compaction_marker`); each node drops
//! the entries up to a committed marker from memory and from its store as soon as its
//! owner reports them durable in its own store (`GroupHandle::durable`). An owner that
//! never reports (the meta group, memory streams) keeps its whole log.
//!
//! Who waits on whom: a group actor awaits the storage actor (a durable write); the
//! host awaits nobody (it `try_send`s); owners await a group only for a proposal's
//! admission (is this node the leader), never for its commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::raft::eraftpb::{Entry, Message, MessageType};
use ::raft::{RawNode, StateRole};
use bytes::Bytes;

use super::context::ServerContext;
use super::outbound::FlushSet;
use super::runtime;
use super::storage::{Progress, Storage, WriteBatch, WriteOp};
use crate::jetstream::schema;
use crate::raft::{self as consensus, frame, Compacted, GroupLog, GroupState};

/// What a group tells its owner.
#[derive(Debug, Clone)]
pub enum GroupEvent {
    /// An entry is committed (in log order; after a restart the whole log again);
    /// `term`: the term it was proposed in (by that term's leader).
    Committed { index: u64, term: u64, data: Bytes },
    /// The group's leader changed (`None`: no leader known); `me`: this node leads.
    Leader {
        leader: Option<String>,
        term: u64,
        me: bool,
    },
    /// Every voter holds the log up to `through`, and it could be dropped once the
    /// owner holds what it was given durably: an owner that keeps its state in memory
    /// writes it now and says [`GroupHandle::durable`] (an owner that writes as it
    /// applies says so anyway).
    Compacting { through: u64 },
}

/// Where a group's events go; `false` once the owner is gone (the group then stops).
pub type EventSink = Box<dyn Fn(GroupEvent) -> bool + Send>;

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the group's leader")]
    NotLeader,
    #[error("the group has stopped")]
    Stopped,
    #[error("raft refused the proposal: {0}")]
    Refused(String),
}

/// A group as monitoring sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupStatus {
    /// This node's id in the group.
    pub id: u64,
    pub leader: Option<String>,
    /// The leader's id (0: none known).
    pub leader_id: u64,
    /// Whom this node voted for in `term` (0: nobody).
    pub vote: u64,
    pub role: Role,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub is_leader: bool,
    /// The peers (by name) and, seen from the leader, how far each has replicated.
    pub peers: Vec<PeerStatus>,
    /// Leader changes seen since start.
    pub leader_changes: u64,
    /// When this node last saw the leader change (Unix ns; 0 before).
    pub leader_since: i64,
    /// The last index in this node's log, and its term.
    pub last_index: u64,
    pub last_term: u64,
    /// Where this node's log was compacted (the last index it no longer holds).
    pub compacted: u64,
    /// Entries and payload bytes this node's log holds in memory.
    pub log_entries: u64,
    pub log_bytes: u64,
    /// This node applied everything the leader had committed when it last sent
    /// entries (a node catching up is behind it; the leader always is current).
    pub caught_up: bool,
    /// The group stopped on this node (its store was lost, or raft-rs broke).
    pub broken: bool,
}

impl GroupStatus {
    /// Current as the reference means it for `/healthz`: the leader, or a follower
    /// that heard from its leader within two of the reference's heartbeats (2 s) and
    /// is not catching up.
    pub fn is_current(&self, now: std::time::Instant) -> bool {
        if self.broken {
            return false;
        }
        if self.is_leader {
            return true;
        }
        let heard = self
            .peers
            .iter()
            .find(|p| p.id == self.leader_id && self.leader_id != 0)
            .and_then(|p| p.heard);
        self.caught_up
            && heard.is_some_and(|t| now.saturating_duration_since(t) <= Duration::from_secs(2))
    }
}

/// What a node is in its group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    Leader,
}

/// Which group a Raft group is, for monitoring: its account and its name as
/// `cluster.raft_group` says it (the meta group is `_meta_` in `$SYS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLabel {
    pub account: String,
    pub name: String,
    /// The stream the group replicates (empty for the meta group).
    pub stream: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStatus {
    pub id: u64,
    pub name: String,
    /// The highest index the peer is known to hold (leader only; 0 otherwise).
    pub matched: u64,
    pub routed: bool,
    /// When this node last heard from the peer in this group.
    pub heard: Option<std::time::Instant>,
}

enum GroupCmd {
    Tick,
    Step(Box<Message>),
    Propose(
        Vec<u8>,
        Option<async_channel::Sender<Result<(), ProposeError>>>,
    ),
    /// Hand leadership to this peer (by name), when this node leads.
    TransferLeader(String),
    /// The owner holds everything up to this index durably in its own store.
    Durable(u64),
    /// The owner is deleted: the group stops here and its log goes from the store.
    Remove,
}

/// raft-rs's own log lines, into ours: its warnings and errors as such, the rest
/// (elections, transfers, rejections: many per leader change) at debug.
struct RaftLog;

impl slog::Drain for RaftLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => log::Level::Error,
            slog::Level::Warning => log::Level::Warn,
            _ => log::Level::Debug,
        };
        log::log!(target: "meshbroker::raft_rs", level, "{}", record.msg());
        Ok(())
    }
}

/// How other actors reach a group.
#[derive(Clone)]
pub struct GroupHandle {
    tx: async_channel::Sender<GroupCmd>,
    status: Arc<arc_swap::ArcSwap<GroupStatus>>,
}

impl GroupHandle {
    /// Proposes `data` for the log: `Ok` once the leader (this node) took it in; the
    /// owner hears of it again as `Committed` once a quorum has it durable.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(), ProposeError> {
        let (tx, rx) = async_channel::bounded(1);
        self.tx
            .send(GroupCmd::Propose(data, Some(tx)))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.recv().await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Proposes `data` without waiting to hear whether it was taken (the owner acts
    /// on `Committed`; a proposal a non-leader drops is retried by whoever asked).
    pub fn propose_nowait(&self, data: Vec<u8>) {
        let _ = self.tx.try_send(GroupCmd::Propose(data, None));
    }

    /// Asks the group's leader (this node) to hand leadership to `peer`: raft-rs
    /// brings it up to date, then tells it to campaign at once.
    pub fn transfer_leader(&self, peer: &str) {
        let _ = self.tx.try_send(GroupCmd::TransferLeader(peer.to_string()));
    }

    /// Tells the group that its owner holds every entry up to `index` durably in its
    /// own store (so the log may drop them once every voter holds them too).
    pub fn durable(&self, index: u64) {
        let _ = self.tx.try_send(GroupCmd::Durable(index));
    }

    /// The group's owner (its stream) is deleted on this node: the group stops and
    /// its log and state are removed from the store.
    pub fn remove(&self) {
        let _ = self.tx.try_send(GroupCmd::Remove);
    }

    pub fn status(&self) -> Arc<GroupStatus> {
        self.status.load_full()
    }
}

/// The node's Raft: its groups, their ticker, and the inbox routes hand frames to.
#[derive(Clone)]
pub struct RaftHost {
    /// Each group's mailbox: read per frame and per tick without a lock, changed only
    /// when a group starts or stops.
    groups: Arc<arc_swap::ArcSwap<HashMap<u64, Slot>>>,
}

/// A running group as the host knows it.
#[derive(Clone)]
struct Slot {
    tx: async_channel::Sender<GroupCmd>,
    label: Arc<GroupLabel>,
    status: Arc<arc_swap::ArcSwap<GroupStatus>>,
}

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft group {group}: {reason}")]
    Log { group: u64, reason: String },
}

impl RaftHost {
    /// Starts the ticker and takes the frames routes receive.
    pub fn start(ctx: &Arc<ServerContext>) -> RaftHost {
        let host = RaftHost {
            groups: Arc::default(),
        };
        let (inbox_tx, inbox) = async_channel::bounded::<Bytes>(65_536);
        ctx.peers.set_raft_inbox(inbox_tx);
        let groups = host.groups.clone();
        ctx.spawner.spawn_detached(async move {
            while let Ok(bytes) = inbox.recv().await {
                match frame::decode(&bytes) {
                    Ok(m) => {
                        let tx = groups.load().get(&m.group).map(|s| s.tx.clone());
                        if let Some(tx) = tx {
                            let _ = tx.try_send(GroupCmd::Step(Box::new(m.message)));
                        }
                    }
                    Err(e) => log::warn!("raft frame from a route refused: {e}"),
                }
            }
        });
        let groups = host.groups.clone();
        ctx.spawner.spawn_detached(async move {
            let mut ticks = runtime::interval(Duration::from_millis(consensus::TICK_MS));
            loop {
                futures_lite::StreamExt::next(&mut ticks).await;
                let all: Vec<_> = groups.load().values().map(|s| s.tx.clone()).collect();
                if all.iter().all(async_channel::Sender::is_closed) && !all.is_empty() {
                    break;
                }
                for tx in all {
                    let _ = tx.try_send(GroupCmd::Tick);
                }
            }
        });
        host
    }

    /// Every running group's label and status, for `/raftz`.
    pub fn statuses(&self) -> Vec<(Arc<GroupLabel>, Arc<GroupStatus>)> {
        self.groups
            .load()
            .values()
            .map(|s| (s.label.clone(), s.status.load_full()))
            .collect()
    }

    /// Starts group `group` with `peers` (server names, this node's among them) as its
    /// voters, or as its log in `storage` says when it ran before. Committed entries
    /// after `applied` (what the owner already holds) and leader changes go to
    /// `events`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_group(
        &self,
        ctx: &Arc<ServerContext>,
        group: u64,
        label: GroupLabel,
        peers: &[String],
        storage: Storage,
        ack: crate::config::AckAfter,
        applied: u64,
        campaign: bool,
        events: EventSink,
    ) -> Result<GroupHandle, StartError> {
        let fail = |reason: String| StartError::Log { group, reason };
        let names: HashMap<u64, String> = peers
            .iter()
            .map(|n| (consensus::node_id(n), n.clone()))
            .collect();
        let id = consensus::node_id(&ctx.server_name);
        let log_name = schema::raft_log(group);
        let loaded = storage
            .load_raft_log(&log_name)
            .map_err(|e| fail(e.to_string()))?;
        let state = match &loaded.state {
            Some(bytes) => GroupState::decode(bytes).map_err(|e| fail(e.to_string()))?,
            None => GroupState {
                voters: names.keys().copied().collect(),
                ..GroupState::default()
            },
        };
        let compacted = state.compacted;
        let mut entries = Vec::with_capacity(loaded.entries.len());
        for (index, bytes) in &loaded.entries {
            let entry = frame::decode_entry(bytes).map_err(|e| fail(e.to_string()))?;
            if entry.index != *index {
                return Err(fail(format!(
                    "entry stored at {index} says it is {}",
                    entry.index
                )));
            }
            entries.push(entry);
        }
        let last = entries.last().map_or(compacted.index, |e| e.index);
        if applied < state.owner_floor {
            // Entries the owner lacks are gone from this log (every voter held them):
            // only a snapshot from a peer could repair it, not built yet.
            return Err(fail(format!(
                "the log is compacted to {} but its owner's store holds only up to {applied}",
                compacted.index
            )));
        }
        // What lies between the owner's point and the compaction point was nothing the
        // owner is given (a leader's empty entries, markers): it holds all of it.
        let applied = applied.max(compacted.index);
        let mut hard = state.hard.clone();
        // What the owner applied was committed (the commit index is stored lazily);
        // a commit index past the stored log would be a lie of the store.
        hard.commit = hard.commit.max(applied).max(compacted.index).min(last);
        let log = GroupLog::new(hard, state.conf_state(), compacted, entries)
            .map_err(|e| fail(e.to_string()))?;
        let applied = applied.min(last);
        let logger = slog::Logger::root(RaftLog, slog::o!());
        let mut node = RawNode::new(&consensus::group_config(id, applied), log, &logger)
            .map_err(|e| fail(e.to_string()))?;
        // A new group need not wait out an election timeout: its first peer stands at
        // once (the others vote as soon as they have the group too).
        if campaign && state.hard.term == 0 {
            if let Err(e) = node.campaign() {
                log::debug!("raft group {group}: first campaign: {e}");
            }
        }
        let (tx, rx) = async_channel::unbounded();
        let status = Arc::new(arc_swap::ArcSwap::from_pointee(GroupStatus::default()));
        let actor = Group {
            group,
            log_name,
            node,
            voters: state.voters,
            storage,
            ack,
            ctx: ctx.clone(),
            names,
            events,
            status: status.clone(),
            leader: 0,
            leader_changes: 0,
            leader_since: 0,
            heard: HashMap::new(),
            stranded: Default::default(),
            stopped: false,
            removed: false,
            leader_commit: (0, 0),
            owner_gone: false,
            marker: compacted.index,
            proposed_marker: 0,
            asked_through: compacted.index,
            durable: applied,
            told: applied,
            owner_floor: state.owner_floor,
        };
        let label = Arc::new(label);
        self.groups.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(
                group,
                Slot {
                    tx: tx.clone(),
                    label: label.clone(),
                    status: status.clone(),
                },
            );
            map
        });
        // The first campaign's messages go out with the first Ready.
        let _ = tx.try_send(GroupCmd::Tick);
        let groups = self.groups.clone();
        ctx.spawner.spawn_detached(async move {
            // A group that broke stays listed (its status says so) for `/healthz`.
            if actor.run(rx).await {
                return;
            }
            groups.rcu(|map| {
                let mut map = HashMap::clone(map);
                map.remove(&group);
                map
            });
        });
        Ok(GroupHandle { tx, status })
    }
}

struct Group {
    group: u64,
    log_name: String,
    node: RawNode<GroupLog>,
    voters: Vec<u64>,
    storage: Storage,
    ack: crate::config::AckAfter,
    ctx: Arc<ServerContext>,
    names: HashMap<u64, String>,
    events: EventSink,
    status: Arc<arc_swap::ArcSwap<GroupStatus>>,
    leader: u64,
    leader_changes: u64,
    leader_since: i64,
    /// When each peer was last heard from.
    heard: HashMap<u64, std::time::Instant>,
    /// Peers told to need a snapshot (warned about once).
    stranded: std::collections::HashSet<u64>,
    /// The group cannot go on here (this node lost its log, or raft-rs broke).
    stopped: bool,
    /// Its owner was deleted: the log goes too.
    removed: bool,
    /// The leader's commit index as its last entries said: (leader id, index).
    leader_commit: (u64, u64),
    owner_gone: bool,
    /// The highest compaction marker committed: every voter held the log up to it.
    marker: u64,
    /// The highest marker this node proposed as leader.
    proposed_marker: u64,
    /// The highest marker the owner was asked to hold the log durably for.
    asked_through: u64,
    /// How far the owner holds the log durably in its own store.
    durable: u64,
    /// The last entry given to the owner.
    told: u64,
    /// What the owner must hold to start (see `consensus::owner_floor`).
    owner_floor: u64,
}

impl Group {
    fn tell(&mut self, event: GroupEvent) {
        if !(self.events)(event) {
            self.owner_gone = true;
        }
    }

    /// Runs the group until it stops; `true` when it broke (rather than its owner
    /// going or being deleted).
    async fn run(mut self, rx: async_channel::Receiver<GroupCmd>) -> bool {
        while let Ok(first) = rx.recv().await {
            self.handle(first);
            // Everything queued meanwhile, then one Ready cycle for all of it.
            while let Ok(more) = rx.try_recv() {
                if self.stopped {
                    break;
                }
                self.handle(more);
            }
            if self.stopped || self.on_ready().await.is_err() || self.owner_gone {
                break;
            }
        }
        if self.removed {
            // After every write of this log (persist is awaited; compactions were
            // submitted before and a table's writes apply in order).
            let group = self.group;
            self.storage.submit(WriteBatch {
                stream: self.log_name.clone(),
                ops: vec![WriteOp::DeleteStream],
                done: Box::new(move |r| {
                    if let Err(e) = r {
                        log::error!("raft group {group}: removing its log: {e}");
                    }
                }),
            });
        }
        log::debug!(
            "raft group {} stopped (its owner gone: {}, removed: {})",
            self.group,
            self.owner_gone,
            self.removed
        );
        let broke = self.stopped && !self.removed;
        if broke {
            let mut status = GroupStatus::clone(&self.status.load());
            status.broken = true;
            status.is_leader = false;
            self.status.store(Arc::new(status));
        }
        broke
    }

    fn handle(&mut self, cmd: GroupCmd) {
        match cmd {
            GroupCmd::Tick => {
                self.node.tick();
            }
            GroupCmd::Step(m) => {
                // Only the group's voters speak in it.
                let Some(name) = self.names.get(&m.from) else {
                    return;
                };
                self.heard.insert(m.from, runtime::now());
                // A heartbeat commits no further than the leader knows this node holds:
                // past this log's end, this node lost entries it acknowledged (its
                // store was lost or replaced by an older one). It must not vote or
                // acknowledge again with a memory it does not have (raft-rs would
                // panic here, and a node that forgot its votes can elect two leaders).
                let last = self.node.raft.raft_log.last_index();
                if let Some(compacted) = consensus::lost_store_told(&m, last) {
                    log::error!(
                        "raft group {}: {name} (leading, term {}) compacted its log to {compacted}, \
                         which every voter held, but this node's log ends at {last}: its store was \
                         lost; the group stops on this node (replace the store with a copy of a \
                         replica's, see the README)",
                        self.group,
                        m.term,
                    );
                    self.stopped = true;
                    return;
                }
                if m.msg_type == MessageType::MsgSnapshot {
                    // A notice this node's log already answers (its store was replaced
                    // since): nothing for raft-rs, which would try to restore it.
                    log::debug!(
                        "raft group {}: {name}'s lost-store notice is stale",
                        self.group
                    );
                    return;
                }
                if m.msg_type == MessageType::MsgHeartbeat && m.commit > last {
                    log::error!(
                        "raft group {}: {name} (leading, term {}) says this node holds entries up to {} \
                         but its log ends at {last}: its store was lost; the group stops on this node \
                         (replace the store with a copy of a replica's, see the README)",
                        self.group,
                        m.term,
                        m.commit
                    );
                    self.stopped = true;
                    return;
                }
                // raft-rs panics on some messages no correct peer sends; one group
                // stops rather than the node.
                let (from, kind, commit) = (m.from, m.msg_type, m.commit);
                let step =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.node.step(*m)));
                match step {
                    Ok(Ok(())) => {
                        // Entries from the leader carry its whole commit index.
                        if kind == MessageType::MsgAppend && from == self.node.raft.leader_id {
                            let (by, known) = self.leader_commit;
                            let known = if by == from {
                                known.max(commit)
                            } else {
                                commit
                            };
                            self.leader_commit = (from, known);
                        }
                    }
                    Ok(Err(e)) => log::debug!("raft group {}: step: {e}", self.group),
                    Err(_) => {
                        let name = self.names.get(&from).map_or("?", String::as_str);
                        log::error!(
                            "raft group {}: a message from {name} broke raft's invariants; \
                             the group stops on this node",
                            self.group
                        );
                        self.stopped = true;
                    }
                }
            }
            GroupCmd::Propose(data, done) => {
                let result = if self.node.raft.state != StateRole::Leader {
                    Err(ProposeError::NotLeader)
                } else {
                    self.node
                        .propose(Vec::new(), data)
                        .map_err(|e| ProposeError::Refused(e.to_string()))
                };
                if let Err(e) = &result {
                    log::debug!("raft group {}: proposal refused: {e}", self.group);
                }
                if let Some(done) = done {
                    let _ = done.try_send(result);
                }
            }
            GroupCmd::TransferLeader(to) => {
                let id = self
                    .names
                    .iter()
                    .find(|(_, n)| **n == to)
                    .map(|(id, _)| *id);
                match id {
                    Some(id) if self.node.raft.state == StateRole::Leader => {
                        log::info!("raft group {}: handing leadership to {to}", self.group);
                        self.node.transfer_leader(id);
                    }
                    _ => log::debug!("raft group {}: no leadership to hand to {to}", self.group),
                }
            }
            GroupCmd::Durable(index) => {
                self.durable = self.durable.max(index);
                self.compact();
            }
            GroupCmd::Remove => {
                self.stopped = true;
                self.removed = true;
            }
        }
    }

    fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let mut flush = FlushSet::default();
        for m in msgs {
            let Some(name) = self.names.get(&m.to) else {
                continue;
            };
            match frame::encode(self.group, &m) {
                Ok(bytes) => {
                    self.ctx.peers.send_raft(name, &bytes, &mut flush);
                }
                Err(e) => log::error!("raft group {}: cannot send to {name}: {e}", self.group),
            }
        }
        flush.forget_stalled();
        flush.flush();
    }

    /// One Ready cycle; `Err` when the log cannot be written (the group stops: it must
    /// not acknowledge what it could not make durable).
    async fn on_ready(&mut self) -> Result<(), ()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            // Snapshots come with log compaction (the next issue); no leader sends one yet.
            log::error!(
                "raft group {}: snapshot received, not supported yet",
                self.group
            );
        }
        let mut ops = Vec::new();
        if let Some(first) = rd.entries().first() {
            // A new leader's entries replace whatever this log held from there on.
            ops.push(WriteOp::RemoveFrom(first.index));
            for e in rd.entries() {
                let mut record = Vec::with_capacity(e.data.len() + 40);
                if let Err(err) = frame::encode_entry(&mut record, e) {
                    log::error!("raft group {}: entry {}: {err}", self.group, e.index);
                    return Err(());
                }
                ops.push(WriteOp::Append {
                    seq: e.index,
                    record,
                });
            }
            let entries = rd.entries().clone();
            if let Err(e) = self.node.mut_store().append(&entries) {
                log::error!("raft group {}: {e}", self.group);
                return Err(());
            }
        }
        if let Some(hs) = rd.hs() {
            let hs = hs.clone();
            self.node.mut_store().set_hard_state(hs);
            ops.push(WriteOp::PutRaftState(self.stored_state()));
        }
        if !ops.is_empty() {
            self.persist(ops).await?;
        }
        self.send(rd.take_persisted_messages());
        self.apply(rd.take_committed_entries());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.node.advance_apply();
        // A marker that just committed may let this node compact what its owner holds.
        self.compact();
        self.tell_stranded();
        self.propose_marker();
        self.observe();
        Ok(())
    }

    /// The state as stored with the log: hard state, voters, compaction point.
    fn stored_state(&self) -> Vec<u8> {
        GroupState {
            hard: self.node.store().hard_state().clone(),
            voters: self.voters.clone(),
            compacted: self.node.store().compacted(),
            owner_floor: self.owner_floor,
        }
        .encode()
    }

    /// When a peer lacks entries this log compacted away (a node whose store was
    /// lost: only a snapshot could bring it up, which is not built, issue 16): tells
    /// it so every time, and says so in this node's log once per peer.
    fn tell_stranded(&mut self) {
        let Some(id) = self.node.store().take_snapshot_wanted() else {
            return;
        };
        // It held those entries once (see `lost_store_notice`): tell it, and probe it
        // again from this log's end, so that once its store is replaced by a copy of a
        // replica's its answer moves the leader on (raft-rs would otherwise keep asking
        // for the snapshot it cannot have).
        let raft = &mut self.node.raft;
        let (me, term, last) = (raft.id, raft.term, raft.raft_log.last_index());
        let compacted = raft.raft_log.store.compacted();
        if let Some(pr) = raft.mut_prs().get_mut(id) {
            pr.become_probe();
            pr.next_idx = last + 1;
        }
        self.send(vec![consensus::lost_store_notice(me, id, term, compacted)]);
        if self.stranded.insert(id) {
            let name = self.names.get(&id).map_or("?", String::as_str);
            log::warn!(
                "raft group {}: {name} lacks entries compacted away (to {}) and cannot catch up: \
                 replace its store with a copy of a replica's (snapshots are not built)",
                self.group,
                self.node.store().compacted().index
            );
        }
    }

    /// As leader, proposes a compaction marker once every voter holds enough past the
    /// last one.
    fn propose_marker(&mut self) {
        let last = self.marker.max(self.proposed_marker);
        let every = consensus::compact_every(self.group);
        let Some(marker) = consensus::marker_due(&self.node.raft, last, every) else {
            return;
        };
        let data = marker.to_le_bytes().to_vec();
        match self.node.propose(consensus::COMPACT_MARKER.to_vec(), data) {
            Ok(()) => self.proposed_marker = marker,
            Err(e) => log::debug!("raft group {}: compaction marker: {e}", self.group),
        }
    }

    /// Drops what every voter holds and the owner holds durably, from memory and (in
    /// the store's order, after the owner's writes that made it durable) from disk.
    fn compact(&mut self) {
        let applied = self.node.raft.raft_log.applied;
        let held = consensus::owner_holds(self.durable, self.told, applied);
        if held < self.marker && self.asked_through < self.marker {
            // The owner holds the log back: ask it once per marker.
            self.asked_through = self.marker;
            let through = self.marker;
            self.tell(GroupEvent::Compacting { through });
        }
        let compacted = self.node.store().compacted().index;
        let Some(to) = consensus::compaction_point(self.marker, held, compacted) else {
            return;
        };
        let Compacted { index, .. } = match self.node.mut_store().compact_to(to) {
            Ok(c) => c,
            Err(e) => {
                log::error!("raft group {}: {e}", self.group);
                return;
            }
        };
        self.owner_floor = self
            .owner_floor
            .max(consensus::owner_floor(index, self.told));
        log::debug!("raft group {}: log compacted to {index}", self.group);
        let group = self.group;
        self.storage.submit(WriteBatch {
            stream: self.log_name.clone(),
            ops: vec![
                WriteOp::RemoveBelow(index + 1),
                WriteOp::PutRaftState(self.stored_state()),
            ],
            done: Box::new(move |r| {
                if let Err(e) = r {
                    log::error!("raft group {group}: compacting the stored log: {e}");
                }
            }),
        });
    }

    /// Writes `ops` and waits until they are durable as `jetstream.ack` says.
    async fn persist(&mut self, ops: Vec<WriteOp>) -> Result<(), ()> {
        let (tx, rx) = async_channel::bounded(2);
        self.storage.submit(WriteBatch {
            stream: self.log_name.clone(),
            ops,
            done: Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        });
        let want_written = self.ack == crate::config::AckAfter::Write;
        loop {
            match rx.recv().await {
                Ok(Ok(Progress::Committed)) => return Ok(()),
                Ok(Ok(Progress::Written)) if want_written => return Ok(()),
                Ok(Ok(Progress::Written)) => continue,
                Ok(Err(e)) => {
                    log::error!("raft group {}: log write failed: {e}", self.group);
                    return Err(());
                }
                Err(_) => return Err(()),
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.context.as_ref() == consensus::COMPACT_MARKER {
                match consensus::decode_marker(&e.data) {
                    Some(marker) => self.marker = self.marker.max(marker),
                    None => log::error!("raft group {}: bad marker at {}", self.group, e.index),
                }
                continue;
            }
            // Empty entries are a new leader's no-op.
            if e.data.is_empty() {
                continue;
            }
            self.told = e.index;
            self.tell(GroupEvent::Committed {
                index: e.index,
                term: e.term,
                data: e.data,
            });
        }
    }

    /// Publishes the group's status, and tells the owner when the leader changed.
    fn observe(&mut self) {
        let (leader_id, term, leading) = {
            let raft = &self.node.raft;
            (raft.leader_id, raft.term, raft.state == StateRole::Leader)
        };
        if leader_id != self.leader {
            self.leader = leader_id;
            self.leader_changes += 1;
            self.leader_since = runtime::now_unix_ns();
            let leader = self.names.get(&leader_id).cloned();
            match &leader {
                Some(name) => {
                    log::info!("raft group {}: leader is {name} (term {term})", self.group)
                }
                None => log::info!("raft group {}: no leader (term {term})", self.group),
            }
            self.tell(GroupEvent::Leader {
                leader,
                term,
                me: leading,
            });
        }
        let raft = &self.node.raft;
        let is_leader = raft.state == StateRole::Leader;
        let mut peers: Vec<PeerStatus> = self
            .voters
            .iter()
            .map(|id| {
                let name = self.names.get(id).cloned().unwrap_or_default();
                PeerStatus {
                    id: *id,
                    matched: if is_leader {
                        raft.prs().get(*id).map_or(0, |p| p.matched)
                    } else {
                        0
                    },
                    routed: name == self.ctx.server_name || self.ctx.peers.is_routed(&name),
                    heard: self.heard.get(id).copied(),
                    name,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        self.status.store(Arc::new(GroupStatus {
            id: raft.id,
            leader: self.names.get(&raft.leader_id).cloned(),
            leader_id: raft.leader_id,
            vote: raft.vote,
            role: match raft.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            is_leader,
            peers,
            leader_changes: self.leader_changes,
            leader_since: self.leader_since,
            last_index: raft.raft_log.last_index(),
            last_term: raft.raft_log.last_term(),
            compacted: raft.raft_log.store.compacted().index,
            log_entries: raft.raft_log.store.len() as u64,
            log_bytes: raft.raft_log.store.bytes() as u64,
            caught_up: is_leader
                || self.leader_commit.0 != raft.leader_id
                || raft.raft_log.applied >= self.leader_commit.1,
            broken: false,
        }));
    }
}
