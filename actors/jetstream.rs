//! The JetStream actor: one per account. It answers `$JS.API.>` (an internal
//! subscription), owns the registry of the account's streams (names, subjects, and the
//! mailbox of each stream actor), creates and deletes streams, and forwards every
//! request about one stream to that stream's actor.
//!
//! On start it opens the storage actor and restores every stored stream.
//!
//! With `jetstream.peers` the node is one of a clustered JetStream: it runs the meta
//! Raft group with the other peers, whose log ([`MetaEntry`]) says which streams exist
//! and which peer holds each. Every peer receives every API request (they all
//! subscribe to `$JS.API.>`, and routes carry requests to all of them); the meta leader
//! answers what is about the set of streams (create, update, delete, names, account
//! info, unknown streams) by proposing to the log, and the peer that holds a stream
//! answers what is about that stream, and the create, update or delete of it once the
//! change is committed. Everyone else stays silent.
//!
//! Who waits on whom: this actor awaits stream actors (info, update, delete) and the
//! storage actor (a new stream's record is durable before the create is answered);
//! neither ever awaits this actor.

use std::collections::BTreeMap;

use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::context::ServerContext;
use super::publish::Publisher;
use super::raft::{GroupEvent, GroupHandle, GroupLabel, RaftHost};
use super::router::{Account, SubChange};
use super::runtime::Spawner;
use super::storage::{Closed, Progress, Storage, StorageError, WriteBatch, WriteOp};
use super::stream::{self as stream_actor, now_ns, StreamCmd, StreamHandle, Usage};
use super::subscription::{InternalMsg, InternalSink, Subscription};
use crate::config::JetStreamConfig;
use crate::jetstream::advisory::{Action, Advisory};
use crate::jetstream::api::{self, AccountInfo, ListRequest, StreamConfig, StreamInfo};
use crate::jetstream::errors::ApiError;
use crate::jetstream::headers;
use crate::jetstream::meta::{Assignment, Meta, MetaChange, MetaEntry};
use crate::jetstream::request::{self, ApiRequest};
use crate::jetstream::schema::{self, StreamRecord};
use crate::jetstream::stream::{self, Stream, STREAM_CACHE_BUDGET};
use crate::subject;

/// A started JetStream: when its store is closed, and its usage for monitoring.
pub struct Started {
    /// Tells when the store is closed after the node's runtime stopped.
    pub closed: Closed,
    pub usage: Arc<Usage>,
    /// The meta group, when the JetStream is clustered.
    pub meta: Option<GroupHandle>,
    /// The node's Raft groups, when the JetStream is clustered.
    pub raft: Option<RaftHost>,
}

/// Why JetStream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("JetStream meta group: {0}")]
    Raft(#[from] super::raft::StartError),
    #[error("JetStream store in {dir}: {source}")]
    MetaSnapshot {
        dir: String,
        source: crate::jetstream::meta::SnapshotError,
    },
}

/// The meta leader stepdown, a request of the system account's.
const META_STEPDOWN: &str = "$JS.API.META.LEADER.STEPDOWN";
/// The tag of that subscription (the account's API subscription has 0).
const TAG_META_STEPDOWN: u64 = 1;

/// The clustered part of a JetStream peer.
struct Clustered {
    ctx: Arc<ServerContext>,
    host: RaftHost,
    meta: Meta,
    /// The last meta log index applied to `meta`.
    applied: u64,
    group: GroupHandle,
    /// The meta leader's name, as the group last said.
    leader: Option<String>,
    peers: Vec<String>,
}

impl Clustered {
    fn is_leader(&self) -> bool {
        self.leader.as_deref() == Some(self.ctx.server_name.as_str())
    }

    /// The peers a new stream may go to now: this node and those routed to it.
    fn available(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|p| **p == self.ctx.server_name || self.ctx.peers.is_routed(p))
            .cloned()
            .collect()
    }
}

/// Starts JetStream for `account`: opens the store, restores the streams, subscribes
/// to the API, and with `jetstream.peers` starts the meta group. Fails if the store
/// or the meta group's log cannot be opened.
pub async fn start(
    ctx: &Arc<ServerContext>,
    config: &JetStreamConfig,
    account: Arc<Account>,
    spawner: Spawner,
    server_name: String,
) -> Result<Started, StartError> {
    let (storage, closed) = Storage::open(&config.store_dir, config.ack)?;
    let usage = Arc::new(Usage {
        max_memory: config.max_memory.0,
        max_file: config.max_file.0,
        ..Usage::default()
    });
    apply_account_limits(ctx, &account.name, &usage);
    let now = now_ns();
    let mut streams = BTreeMap::new();
    for loaded in storage.load_all()? {
        let n = loaded.messages.len();
        let stream = Stream::restore(loaded, now);
        log::info!(
            "JetStream: restored stream {} ({n} messages, {} consumers)",
            stream.name(),
            stream.consumers().count()
        );
        let name = stream.name().to_string();
        let handle = stream_actor::spawn(
            stream,
            account.clone(),
            Some(storage.clone()),
            usage.clone(),
            server_name.clone(),
            !config.peers.is_empty(),
            &spawner,
        );
        streams.insert(name, handle);
    }
    let (tx, rx) = async_channel::unbounded();
    let sub = Arc::new(
        Subscription::internal(
            "$JS.API.>",
            None,
            InternalSink {
                tag: 0,
                mailbox: tx.clone(),
            },
        )
        .cluster_wide(!config.peers.is_empty()),
    );
    account.apply(vec![SubChange::Add(sub.clone())]).await;
    let (meta_tx, meta_rx) = async_channel::unbounded();
    let cluster = if config.peers.is_empty() {
        None
    } else {
        // The assignments as of the meta log's last snapshot; the log holds the rest.
        let snapshot = storage.load_snapshot(&schema::raft_log(crate::raft::META_GROUP))?;
        let (applied, meta) = match snapshot {
            Some(bytes) => Meta::restore(&bytes).map_err(|source| StartError::MetaSnapshot {
                dir: config.store_dir.display().to_string(),
                source,
            })?,
            None => (0, Meta::default()),
        };
        let host = RaftHost::start(ctx);
        let group = host.start_group(
            ctx,
            crate::raft::META_GROUP,
            GroupLabel {
                account: "$SYS".to_string(),
                name: "_meta_".to_string(),
                stream: String::new(),
            },
            &config.peers,
            storage.clone(),
            config.ack,
            applied,
            false,
            Box::new(move |e| meta_tx.try_send(e).is_ok()),
        )?;
        log::info!(
            "JetStream clustered with {} (meta group of {} peers)",
            config.peers.join(", "),
            config.peers.len()
        );
        Some(Clustered {
            ctx: ctx.clone(),
            host,
            meta,
            applied,
            group,
            leader: None,
            peers: config.peers.clone(),
        })
    };
    // `$JS.API.META.LEADER.STEPDOWN` is the system account's, as at the reference.
    let mut subs = vec![sub];
    if let (Some(_), Some(system)) = (&cluster, ctx.account(&ctx.system_account)) {
        let stepdown = Arc::new(
            Subscription::internal(
                META_STEPDOWN,
                None,
                InternalSink {
                    tag: TAG_META_STEPDOWN,
                    mailbox: tx.clone(),
                },
            )
            .cluster_wide(true),
        );
        system.apply(vec![SubChange::Add(stepdown.clone())]).await;
        subs.push(stepdown);
    }
    let meta = cluster.as_ref().map(|c| c.group.clone());
    let raft = cluster.as_ref().map(|c| c.host.clone());
    let actor = JetStream {
        account,
        storage,
        usage: usage.clone(),
        streams,
        spawner: spawner.clone(),
        server_name,
        publisher: Publisher::default(),
        limits: config.clone(),
        advisories: Vec::new(),
        cluster,
    };
    log::info!(
        "JetStream enabled, store in {}",
        actor.storage.path().display()
    );
    spawner.spawn_detached(actor.run(rx, meta_rx, subs));
    Ok(Started {
        closed,
        usage,
        meta,
        raft,
    })
}

/// Takes `account`'s JetStream limits from its JWT (in operator mode; none
/// otherwise); the node calls it again whenever a pushed JWT changes the trust.
pub fn apply_account_limits(ctx: &ServerContext, account: &str, usage: &Usage) {
    let auth = ctx.auth();
    let limits = auth.trust().and_then(|t| t.jetstream_limits(account));
    usage
        .account
        .set(&limits.unwrap_or_else(api::AccountLimits::unlimited));
}

struct JetStream {
    account: Arc<Account>,
    storage: Storage,
    usage: Arc<Usage>,
    streams: BTreeMap<String, StreamHandle>,
    spawner: Spawner,
    server_name: String,
    publisher: Publisher,
    limits: JetStreamConfig,
    /// Advisories of the request being handled.
    advisories: Vec<Advisory>,
    cluster: Option<Clustered>,
}

/// Who answers a request in a clustered JetStream.
enum Answerer {
    /// This node (the meta leader, or the holder of the stream).
    Me,
    /// Nobody can: no meta leader is known, and the client is this node's.
    Unavailable,
    /// Another node.
    Other,
}

impl JetStream {
    async fn run(
        mut self,
        requests: async_channel::Receiver<InternalMsg>,
        meta: async_channel::Receiver<GroupEvent>,
        subs: Vec<Arc<Subscription>>,
    ) {
        enum Event {
            Request(Option<InternalMsg>),
            Meta(GroupEvent),
        }
        self.adopt_meta_snapshot().await;
        loop {
            let event = futures_lite::future::or(
                async { Event::Request(requests.recv().await.ok()) },
                async {
                    match meta.recv().await {
                        Ok(e) => Event::Meta(e),
                        // Not clustered (or the group stopped): requests only.
                        Err(_) => futures_lite::future::pending().await,
                    }
                },
            )
            .await;
            match event {
                Event::Request(Some(msg)) => self.request(msg).await,
                Event::Request(None) => break,
                Event::Meta(e) => self.meta_event(e).await,
            }
            self.publisher.flush();
        }
        for sub in subs {
            sub.close();
        }
    }

    /// After a start from a meta snapshot: what replaying the entries it stands for
    /// would have done on this node, for every stream placed here (a stream missing
    /// from the store is created empty, as a replay creates it; a replicated one gets
    /// its group, which brings it up to date).
    async fn adopt_meta_snapshot(&mut self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let me = cluster.ctx.server_name.clone();
        let mine: Vec<Assignment> = cluster
            .meta
            .streams()
            .filter(|(_, a)| a.peers.contains(&me))
            .map(|(_, a)| a.clone())
            .collect();
        for a in mine {
            let name = a.config.name.clone();
            if !self.streams.contains_key(&name) {
                if let Err(e) = self.start_stream(a.config.clone(), a.created).await {
                    log::error!("JetStream: stream {name}: cannot start it: {e:?}");
                    continue;
                }
            }
            if a.peers.len() > 1 {
                if let Err(e) = self.replicate(&name, a.group, &a.peers, None) {
                    log::error!("JetStream: stream {name}: cannot start its Raft group: {e}");
                }
            }
        }
        // Nothing was created by a request: nothing to advise.
        self.advisories.clear();
    }

    /// Stores the assignments as of the last applied meta entry, so the meta log can
    /// drop what every peer holds (the group asked: `GroupEvent::Compacting`).
    async fn snapshot_meta(&mut self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let index = cluster.applied;
        let bytes = cluster.meta.snapshot(index);
        let log_name = schema::raft_log(crate::raft::META_GROUP);
        // Committed to the database, not only in the journal: the log entries it
        // stands for are about to go.
        match self
            .write(&log_name, vec![WriteOp::PutSnapshot(bytes)], true)
            .await
        {
            Ok(()) => {
                log::debug!("JetStream: meta snapshot at {index}");
                cluster.group.durable(index);
            }
            Err(e) => log::error!("JetStream: cannot store the meta snapshot: {e}"),
        }
    }

    /// `$JS.API.META.LEADER.STEPDOWN` from the system account: the meta leader answers
    /// (in that account), then hands the group to the follower asked for or to a
    /// current one. Nobody else answers, and nobody while there is no leader.
    fn meta_stepdown(&mut self, msg: &InternalMsg) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let (Some(reply), true) = (&msg.reply, cluster.is_leader()) else {
            return;
        };
        let Some(system) = cluster.ctx.account(&cluster.ctx.system_account) else {
            return;
        };
        let me = &cluster.ctx.server_name;
        let followers: Vec<(String, bool)> = stream_actor::replicas(&cluster.group.status(), me)
            .into_iter()
            .filter(|p| !p.offline)
            .map(|p| (p.name, p.current))
            .collect();
        let target = crate::jetstream::replicated::meta_stepdown_target(
            msg.payload(),
            me,
            &followers,
            |n| fastrand::usize(..n),
        );
        const KIND: &str = "meta_leader_stepdown_response";
        let body = match &target {
            Ok(_) => api::response(KIND, &serde_json::json!({"success": true})),
            Err(e) => api::error_response(KIND, e),
        };
        self.publisher.send(&system, reply, None, None, &body);
        self.publisher.flush();
        if let Ok(to) = target {
            log::info!("JetStream: meta leader stepdown to {to}");
            cluster.group.transfer_leader(&to);
        }
    }

    /// Who answers a request about the set of streams: the meta leader.
    fn meta_answerer(&self, msg: &InternalMsg) -> Answerer {
        match &self.cluster {
            None => Answerer::Me,
            Some(c) if c.is_leader() => Answerer::Me,
            // The node the client is on says so, as the reference does.
            Some(c) if c.leader.is_none() && msg.from.is_some() => Answerer::Unavailable,
            Some(_) => Answerer::Other,
        }
    }

    /// What the meta group committed: the assignments change everywhere, and the
    /// peer that holds the stream acts on it and answers the client that asked.
    async fn meta_event(&mut self, event: GroupEvent) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let data = match event {
            GroupEvent::Leader { leader, me, .. } => {
                let elected = me && !cluster.is_leader();
                cluster.leader = leader;
                if elected {
                    // As the reference: in the system account only, naming this
                    // node by its peer id.
                    let ctx = cluster.ctx.clone();
                    let me = &ctx.server_name;
                    let advisory = Advisory::MetaLeaderElected {
                        leader: format!("{:08x}", crate::raft::node_id(me) as u32),
                        replicas: stream_actor::all_replicas(&cluster.group.status(), me),
                        cluster: ctx.config().cluster.name.clone().unwrap_or_default(),
                    };
                    if let Some(system) = ctx.account(&ctx.system_account) {
                        self.publisher.advise(&system, &advisory, now_ns());
                    }
                }
                return;
            }
            GroupEvent::Compacting { .. } => return self.snapshot_meta().await,
            GroupEvent::Committed { index, data, .. } => {
                cluster.applied = index;
                data
            }
        };
        let entry = match MetaEntry::decode(&data) {
            Ok(e) => e,
            Err(e) => {
                // Every peer skips it alike (the bytes are the same everywhere).
                log::error!("JetStream meta entry refused: {e}");
                return;
            }
        };
        let me = cluster.ctx.server_name.clone();
        let change = cluster.meta.apply(&entry);
        const CREATE: &str = "stream_create_response";
        const UPDATE: &str = "stream_update_response";
        const DELETE: &str = "stream_delete_response";
        let (reply, result, kind) = match (change, entry) {
            (
                MetaChange::Assigned(name),
                MetaEntry::AssignStream {
                    config,
                    peers,
                    group,
                    created,
                    reply,
                },
            ) => {
                if !peers.contains(&me) {
                    return;
                }
                let restored = self.streams.contains_key(&name);
                let result = if restored {
                    // Restored from this node's store (a replay of the meta log).
                    Ok(None)
                } else {
                    self.start_stream(config, created).await.map(Some)
                };
                if peers.len() > 1 {
                    // Its first leader answers the create, once elected (as the
                    // reference's: a publish right after the answer finds a leader).
                    let pending = match (&result, restored) {
                        (Ok(_), false) => reply.clone(),
                        _ => None,
                    };
                    if let Err(e) = self.replicate(&name, group, &peers, pending) {
                        log::error!("JetStream: stream {name}: cannot start its Raft group: {e}");
                    }
                    if result.is_ok() {
                        return;
                    }
                }
                // One of the replicas answers: the first placed.
                if restored || peers.first() != Some(&me) {
                    return;
                }
                let result = result.map(|info| {
                    let info = info.map(|i| i.for_clustered_create(true));
                    api::response(CREATE, &info)
                });
                (reply, result, CREATE)
            }
            (MetaChange::Updated(name), MetaEntry::UpdateStream { config, reply }) => {
                let first = cluster.meta.stream(&name).and_then(|a| a.peers.first()) == Some(&me);
                if !self.streams.contains_key(&name) {
                    return;
                }
                let reply = reply.filter(|_| first);
                let result = self
                    .update_local(&name, config)
                    .await
                    .map(|info| api::response(UPDATE, &info));
                (reply, result, UPDATE)
            }
            (MetaChange::Removed(a), MetaEntry::RemoveStream { name, reply }) => {
                if !self.streams.contains_key(&name) {
                    return;
                }
                let first = a.peers.first() == Some(&me);
                let reply = reply.filter(|_| first);
                let result = self
                    .delete_stream(&name)
                    .await
                    .map(|()| api::response(DELETE, &serde_json::json!({"success": true})));
                (reply, result, DELETE)
            }
            _ => return,
        };
        let Some(reply) = reply else {
            return;
        };
        let body = result.unwrap_or_else(|e| api::error_response(kind, &e));
        self.reply(reply.as_bytes(), &body);
        let now = now_ns();
        for advisory in std::mem::take(&mut self.advisories) {
            self.publisher.advise(&self.account, &advisory, now);
        }
    }

    fn reply(&mut self, to: &[u8], body: &[u8]) {
        self.publisher.send(&self.account, to, None, None, body);
    }

    /// What a client sees when no server listens: a 503 status naming the subject.
    fn no_responders(&mut self, to: &[u8], subject: &[u8]) {
        let h = headers::no_responders(subject);
        self.publisher.send_status(&self.account, to, None, &h);
    }

    async fn request(&mut self, msg: InternalMsg) {
        if msg.tag == TAG_META_STEPDOWN {
            return self.meta_stepdown(&msg);
        }
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        // Unknown or malformed API subjects get no answer at all from the reference
        // (not even no-responders: its subscription covers them).
        let Some(req) = request::parse(subject).filter(|r| *r != ApiRequest::Unknown) else {
            return;
        };
        let Some(reply) = msg.reply.clone() else {
            // The reference ignores API requests without a reply subject.
            return;
        };
        self.usage.api_total.fetch_add(1, Ordering::Relaxed);
        let kind = req.response_type();
        // Kept for the audit (cheap: shared bytes); the request may move on to a
        // stream actor, which then answers and audits it itself.
        let request = msg.clone();
        let local = msg.from.is_some();
        let result = self.handle(req.clone(), msg).await;
        log::trace!(
            "JetStream API {} ({}): {}",
            String::from_utf8_lossy(&request.subject),
            if local { "local client" } else { "routed" },
            match &result {
                Handled::Done => "forwarded or left to another node",
                Handled::Reply(_) => "answered",
                Handled::Error(_) => "answered with an error",
                Handled::NoResponders => "no responders",
            }
        );
        let body = match result {
            Handled::Done => return,
            Handled::Reply(body) => body,
            Handled::Error(e) => {
                self.usage.api_errors.fetch_add(1, Ordering::Relaxed);
                api::error_response(kind, &e)
            }
            Handled::NoResponders => {
                self.no_responders(&reply, &request.subject);
                return;
            }
        };
        self.reply(&reply, &body);
        let now = now_ns();
        for advisory in std::mem::take(&mut self.advisories) {
            self.publisher.advise(&self.account, &advisory, now);
        }
        stream_actor::audit(
            &mut self.publisher,
            &self.account,
            &self.server_name,
            &request,
            body,
            now,
        );
    }

    /// Notes a stream's advisory, published once the request is answered.
    fn advise(&mut self, stream: &str, action: Action) {
        self.advisories.push(Advisory::Stream {
            stream: stream.to_string(),
            action,
        });
    }

    async fn handle(&mut self, req: ApiRequest, msg: InternalMsg) -> Handled {
        if self.cluster.is_some() {
            return self.handle_clustered(req, msg).await;
        }
        let body = msg.payload().to_vec();
        let kind = req.response_type();
        match &req {
            ApiRequest::StreamLeaderStepdown(_) | ApiRequest::ConsumerLeaderStepdown(..) => {
                Handled::Error(ApiError::clustering_required())
            }
            ApiRequest::AccountInfo => Handled::Reply(api::response(kind, &self.account_info())),
            ApiRequest::StreamCreate(name) => match self.create_stream(name, &body).await {
                Ok(info) => Handled::Reply(api::response(kind, &info)),
                Err(e) => Handled::Error(e),
            },
            ApiRequest::StreamUpdate(name) => match self.update_stream(name, &body).await {
                Ok(info) => Handled::Reply(api::response(kind, &info)),
                Err(e) => Handled::Error(e),
            },
            ApiRequest::StreamDelete(name) => match self.delete_stream(name).await {
                Ok(()) => {
                    Handled::Reply(api::response(kind, &serde_json::json!({"success": true})))
                }
                Err(e) => Handled::Error(e),
            },
            ApiRequest::StreamNames | ApiRequest::StreamList => {
                match api::parse_optional::<ListRequest>(&body) {
                    Ok(r) => Handled::Reply(self.list(&req, &r).await),
                    Err(e) => Handled::Error(e),
                }
            }
            other => {
                let Some(name) = other.stream() else {
                    return Handled::Done;
                };
                match self.streams.get(name) {
                    Some(handle) => {
                        let _ = handle.commands.try_send(StreamCmd::Api(req.clone(), msg));
                        Handled::Done
                    }
                    None => match other {
                        // Nobody would subscribe to these at the reference.
                        ApiRequest::MsgNext(..) | ApiRequest::DirectGet(..) => {
                            Handled::NoResponders
                        }
                        _ => Handled::Error(ApiError::stream_not_found()),
                    },
                }
            }
        }
    }

    /// A request to a clustered JetStream (see the module's notes for who answers).
    async fn handle_clustered(&mut self, req: ApiRequest, msg: InternalMsg) -> Handled {
        let body = msg.payload().to_vec();
        let kind = req.response_type();
        // What is about a stream this node holds, it answers (creates and changes of
        // the set of streams excepted: the meta leader proposes those).
        if let Some(name) = req.stream() {
            if let Some(handle) = self.streams.get(name) {
                match &req {
                    ApiRequest::StreamCreate(_) => {
                        let first = self.cluster.as_ref().is_none_or(|c| {
                            c.meta
                                .stream(name)
                                .is_none_or(|a| a.peers.first() == Some(&c.ctx.server_name))
                        });
                        if !first {
                            // Another replica answers.
                            return Handled::Done;
                        }
                        return match self.parse_config(name, &body) {
                            // Clustered, an identical re-create is no create.
                            Ok(c) if c == handle.config => match self.stream_info(name).await {
                                Ok(info) => Handled::Reply(api::response(
                                    kind,
                                    &info.for_clustered_create(false),
                                )),
                                Err(e) => Handled::Error(e),
                            },
                            Ok(_) => Handled::Error(ApiError::stream_name_exists()),
                            Err(e) => Handled::Error(e),
                        };
                    }
                    ApiRequest::StreamUpdate(_) | ApiRequest::StreamDelete(_) => {}
                    _ => {
                        let _ = handle.commands.try_send(StreamCmd::Api(req.clone(), msg));
                        return Handled::Done;
                    }
                }
            }
        }
        match self.meta_answerer(&msg) {
            Answerer::Me => {}
            Answerer::Other => return Handled::Done,
            Answerer::Unavailable => return Handled::Error(ApiError::cluster_unavailable()),
        }
        let Some(cluster) = &self.cluster else {
            return Handled::Done;
        };
        let reply = msg.reply_text();
        let held_elsewhere = req
            .stream()
            .is_some_and(|n| cluster.meta.stream(n).is_some());
        let entry = match &req {
            ApiRequest::AccountInfo => {
                let mut info = self.account_info();
                info.streams = cluster.meta.len() as u64;
                return Handled::Reply(api::response(kind, &info));
            }
            ApiRequest::StreamNames | ApiRequest::StreamList => {
                return match api::parse_optional::<ListRequest>(&body) {
                    Ok(r) => Handled::Reply(self.list_clustered(&req, &r).await),
                    Err(e) => Handled::Error(e),
                };
            }
            // Its holder answers (identical or not).
            ApiRequest::StreamCreate(_) if held_elsewhere => return Handled::Done,
            ApiRequest::StreamCreate(name) => {
                let config = match self.parse_config(name, &body) {
                    Ok(c) => c,
                    Err(e) => return Handled::Error(e),
                };
                let checked = cluster.meta.check_overlap(&config).and_then(|()| {
                    stream::check_account_limits(
                        &self.account_limits(),
                        &config,
                        cluster.meta.streams().map(|(_, a)| &a.config),
                    )
                });
                if let Err(e) = checked {
                    return Handled::Error(e);
                }
                let replicas = config.num_replicas.max(1) as usize;
                let mut rng = fastrand::Rng::new();
                let mut pick = |n: usize| rng.usize(..n.max(1));
                let Some(peers) = cluster
                    .meta
                    .place(replicas, &cluster.available(), &mut pick)
                else {
                    return Handled::Error(ApiError::no_suitable_peers());
                };
                MetaEntry::AssignStream {
                    config,
                    peers,
                    // Random, so that no two streams (nor the meta group) share one.
                    group: fastrand::u64(1..),
                    created: now_ns(),
                    reply,
                }
            }
            ApiRequest::StreamUpdate(name) => {
                let config = match self.parse_config(name, &body) {
                    Ok(c) => c,
                    Err(e) => return Handled::Error(e),
                };
                let Some(old) = cluster.meta.stream(name) else {
                    return Handled::Error(ApiError::stream_not_found());
                };
                if config.num_replicas != old.config.num_replicas {
                    // Issue 16 (membership) brings live replica changes.
                    return Handled::Error(ApiError::invalid_stream_config(
                        "changing a stream's replica count is not supported yet",
                    ));
                }
                if let Err(e) = stream::check_update(&old.config, &config)
                    .and_then(|()| cluster.meta.check_overlap(&config))
                {
                    return Handled::Error(e);
                }
                MetaEntry::UpdateStream { config, reply }
            }
            ApiRequest::StreamDelete(name) => {
                if cluster.meta.stream(name).is_none() {
                    return Handled::Error(ApiError::stream_not_found());
                }
                MetaEntry::RemoveStream {
                    name: name.clone(),
                    reply,
                }
            }
            // A stream another node holds: it answers.
            _ if held_elsewhere => return Handled::Done,
            ApiRequest::MsgNext(..) | ApiRequest::DirectGet(..) => return Handled::NoResponders,
            _ => return Handled::Error(ApiError::stream_not_found()),
        };
        match cluster.group.propose(entry.encode()).await {
            // The holder answers once the entry is committed.
            Ok(()) => Handled::Done,
            Err(e) => {
                log::debug!("JetStream meta proposal refused: {e}");
                Handled::Error(ApiError::cluster_unavailable())
            }
        }
    }

    /// STREAM.NAMES / STREAM.LIST across the cluster, from the meta leader: names from
    /// the assignments, each stream's info from the node that holds it.
    async fn list_clustered(&mut self, req: &ApiRequest, r: &ListRequest) -> Vec<u8> {
        let kind = req.response_type();
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let filter = r.subject.as_deref().filter(|s| !s.is_empty());
        let names: Vec<String> = cluster
            .meta
            .streams()
            .filter(|(_, a)| {
                filter.is_none_or(|f| {
                    a.config
                        .subjects
                        .iter()
                        .any(|s| subject::overlaps(s.as_bytes(), f.as_bytes()))
                })
            })
            .map(|(n, _)| n.clone())
            .collect();
        let total = names.len();
        if matches!(req, ApiRequest::StreamNames) {
            return names_page(kind, &names, r.offset);
        }
        let limit = 256;
        let page: Vec<String> = names.into_iter().skip(r.offset).take(limit).collect();
        let mut slots: Vec<Option<StreamInfo>> = Vec::with_capacity(page.len());
        let mut remote = Vec::new();
        for n in &page {
            if self.streams.contains_key(n) {
                slots.push(self.stream_info(n).await.ok());
            } else {
                slots.push(None);
                remote.push(n.clone());
            }
        }
        let mut fetched = self.remote_infos(remote).await.into_iter();
        let mut infos = Vec::new();
        // Streams whose holder did not answer are left out of the page, and named.
        let mut missing = Vec::new();
        for (n, slot) in page.into_iter().zip(slots) {
            let held_here = self.streams.contains_key(&n);
            let info = if held_here {
                slot
            } else {
                fetched.next().flatten()
            };
            match info {
                Some(info) => infos.push(info.for_list()),
                None => missing.push(n),
            }
        }
        let mut body = serde_json::json!({
            "total": total, "offset": r.offset, "limit": limit, "streams": infos,
        });
        if !missing.is_empty() {
            body["missing"] = serde_json::json!(missing);
        }
        api::response(kind, &body)
    }

    /// Asks the holders of `names` for their info (STREAM.INFO over the cluster), all
    /// at once, waiting at most a second for the answers.
    async fn remote_infos(&mut self, names: Vec<String>) -> Vec<Option<StreamInfo>> {
        if names.is_empty() {
            return Vec::new();
        }
        let (tx, rx) = async_channel::unbounded();
        let inbox = format!("_INBOX.$JSM.{}", fastrand::u64(..));
        let sub = Arc::new(
            Subscription::internal(
                &format!("{inbox}.*"),
                None,
                InternalSink {
                    tag: 0,
                    mailbox: tx,
                },
            )
            .cluster_wide(true),
        );
        self.account.apply(vec![SubChange::Add(sub.clone())]).await;
        for (i, name) in names.iter().enumerate() {
            let subject = format!("{}STREAM.INFO.{name}", api::API_PREFIX);
            let reply = format!("{inbox}.{i}");
            self.publisher.send(
                &self.account,
                subject.as_bytes(),
                Some(reply.as_bytes()),
                None,
                b"",
            );
        }
        self.publisher.flush();
        let mut out: Vec<Option<StreamInfo>> = vec![None; names.len()];
        let deadline = super::runtime::now() + std::time::Duration::from_secs(1);
        let mut got = 0;
        while got < names.len() {
            let left = deadline.saturating_duration_since(super::runtime::now());
            let Some(Ok(m)) = super::runtime::timeout(left, rx.recv()).await else {
                break;
            };
            let i = std::str::from_utf8(&m.subject)
                .ok()
                .and_then(|s| s.rsplit('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(slot) = i.and_then(|i| out.get_mut(i)) {
                if slot.is_none() {
                    if let Ok(info) = serde_json::from_slice::<StreamInfo>(m.payload()) {
                        *slot = Some(info);
                        got += 1;
                    }
                }
            }
        }
        sub.close();
        self.account.apply(vec![SubChange::Remove(sub)]).await;
        out
    }

    /// The account's own limits (its JWT's).
    fn account_limits(&self) -> api::AccountLimits {
        let mut limits = api::AccountLimits::unlimited();
        self.usage.account.report(&mut limits);
        limits
    }

    fn account_info(&self) -> AccountInfo {
        let mut limits = api::AccountLimits {
            max_memory: api::limit_or_none(self.limits.max_memory.0),
            max_storage: api::limit_or_none(self.limits.max_file.0),
            ..api::AccountLimits::unlimited()
        };
        // The account's own limits (its JWT's) replace the node's where set.
        let node = limits.clone();
        self.usage.account.report(&mut limits);
        for (own, node) in [
            (&mut limits.max_memory, node.max_memory),
            (&mut limits.max_storage, node.max_storage),
        ] {
            if *own < 0 {
                *own = node;
            }
        }
        AccountInfo {
            memory: self.usage.memory.load(Ordering::Relaxed),
            storage: self.usage.storage.load(Ordering::Relaxed),
            reserved_memory: 0,
            reserved_storage: 0,
            streams: self.streams.len() as u64,
            consumers: self.usage.consumers.load(Ordering::Relaxed),
            limits,
            api: api::ApiStats {
                level: api::API_LEVEL,
                total: self.usage.api_total.load(Ordering::Relaxed),
                errors: self.usage.api_errors.load(Ordering::Relaxed),
            },
        }
    }

    fn parse_config(&self, name: &str, body: &[u8]) -> Result<StreamConfig, ApiError> {
        // No body is no name, and so (as at the reference) a name that does not match.
        if body.trim_ascii().is_empty() {
            return Err(ApiError::stream_name_mismatch());
        }
        let mut config: StreamConfig = api::parse_required(body)?;
        if config.name.is_empty() {
            config.name = name.to_string();
        }
        if config.name != name {
            return Err(ApiError::stream_name_mismatch());
        }
        if self.cluster.is_some() {
            stream::normalize_clustered_config(config)
        } else {
            stream::normalize_config(config)
        }
    }

    /// Makes this node's copy of stream `name` one replica of its Raft group `group`.
    fn replicate(
        &mut self,
        name: &str,
        group: u64,
        peers: &[String],
        create_reply: Option<String>,
    ) -> Result<(), String> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let Some(handle) = self.streams.get(name) else {
            return Ok(());
        };
        let applied = self.storage.load_applied(name).map_err(|e| e.to_string())?;
        let commands = handle.commands.clone();
        // Named as the reference names a stream's group: replicas and storage first.
        let storage = match handle.config.storage {
            api::Storage::Memory => 'M',
            api::Storage::File => 'F',
        };
        let raft_group = format!("S-R{}{storage}-{group:x}", peers.len());
        let group_handle = cluster
            .host
            .start_group(
                &cluster.ctx,
                group,
                GroupLabel {
                    account: self.account.name.clone(),
                    name: raft_group.clone(),
                    stream: name.to_string(),
                },
                peers,
                self.storage.clone(),
                self.limits.ack,
                applied,
                peers.first() == Some(&cluster.ctx.server_name),
                Box::new(move |e| commands.try_send(StreamCmd::Raft(e)).is_ok()),
            )
            .map_err(|e| e.to_string())?;
        let replica = stream_actor::Replica {
            group: group_handle,
            raft_group,
            peers: peers.to_vec(),
            cluster: cluster
                .ctx
                .config()
                .cluster
                .name
                .clone()
                .unwrap_or_default(),
            applied,
            leading: false,
            led_term: 0,
            leader: None,
            create_reply: create_reply.map(Bytes::from),
            system: cluster.ctx.account(&cluster.ctx.system_account),
        };
        let _ = handle
            .commands
            .try_send(StreamCmd::Replicate(Box::new(replica)));
        Ok(())
    }

    fn check_overlap(&self, config: &StreamConfig) -> Result<(), ApiError> {
        for (other, handle) in &self.streams {
            if other == &config.name {
                continue;
            }
            for a in &config.subjects {
                for b in &handle.config.subjects {
                    if subject::overlaps(a.as_bytes(), b.as_bytes()) {
                        return Err(ApiError::subjects_overlap());
                    }
                }
            }
        }
        Ok(())
    }

    fn check_limits(&self, config: &StreamConfig) -> Result<(), ApiError> {
        let (limit, used, err) = match config.storage {
            api::Storage::Memory => (
                self.limits.max_memory.0,
                self.usage.memory.load(Ordering::Relaxed),
                ApiError::insufficient_memory(),
            ),
            api::Storage::File => (
                self.limits.max_file.0,
                self.usage.storage.load(Ordering::Relaxed),
                ApiError::insufficient_storage(),
            ),
        };
        if limit > 0
            && (used >= limit || (config.max_bytes > 0 && config.max_bytes as u64 > limit - used))
        {
            return Err(err);
        }
        Ok(())
    }

    async fn create_stream(&mut self, name: &str, body: &[u8]) -> Result<StreamInfo, ApiError> {
        let config = self.parse_config(name, body)?;
        if let Some(existing) = self.streams.get(name) {
            if existing.config != config {
                return Err(ApiError::stream_name_exists());
            }
            // The reference says did_create for an identical re-create too.
            return Ok(self.stream_info(name).await?.for_change(true));
        }
        self.check_overlap(&config)?;
        self.check_limits(&config)?;
        stream::check_account_limits(
            &self.account_limits(),
            &config,
            self.streams.values().map(|h| &h.config),
        )?;
        self.start_stream(config, now_ns()).await
    }

    /// Creates stream `config.name` on this node: its record made durable, its actor
    /// started; answers with its info once its subscriptions are in place.
    async fn start_stream(
        &mut self,
        config: StreamConfig,
        now: i64,
    ) -> Result<StreamInfo, ApiError> {
        let name = config.name.clone();
        let name = name.as_str();
        let stream = Stream::new(config.clone(), now, STREAM_CACHE_BUDGET);
        let file = config.storage == api::Storage::File;
        if file {
            let record = StreamRecord {
                config: config.clone(),
                created: now,
                last_seq: stream.store().last_seq(),
                last_ts: 0,
            };
            self.write(name, vec![WriteOp::PutStream(Box::new(record))], false)
                .await
                .map_err(|e| ApiError::stream_general(&e))?;
        }
        let handle = stream_actor::spawn(
            stream,
            self.account.clone(),
            file.then(|| self.storage.clone()),
            self.usage.clone(),
            self.server_name.clone(),
            self.cluster.is_some(),
            &self.spawner,
        );
        self.streams.insert(name.to_string(), handle);
        log::debug!("JetStream: stream {name} created");
        self.advise(name, Action::Create);
        // Answered once the stream's subscriptions are visible (it answers Info after).
        Ok(self.stream_info(name).await?.for_change(true))
    }

    /// Writes `ops`; answers at the store's first word (written to the journal, or
    /// committed), or with `committed` only once redb committed them (past any
    /// journal: what must hold before log entries are dropped).
    async fn write(&self, stream: &str, ops: Vec<WriteOp>, committed: bool) -> Result<(), String> {
        let (tx, rx) = async_channel::bounded(2);
        self.storage.submit(WriteBatch {
            stream: stream.to_string(),
            ops,
            done: Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        });
        loop {
            match rx.recv().await {
                Ok(Ok(Progress::Written)) if committed => continue,
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("storage stopped".into()),
            }
        }
    }

    async fn stream_info(&self, name: &str) -> Result<StreamInfo, ApiError> {
        let handle = self
            .streams
            .get(name)
            .ok_or_else(ApiError::stream_not_found)?;
        let (tx, rx) = async_channel::bounded(1);
        handle
            .commands
            .send(StreamCmd::Info(tx))
            .await
            .map_err(|_| ApiError::stream_not_found())?;
        rx.recv().await.map_err(|_| ApiError::stream_not_found())
    }

    async fn update_stream(&mut self, name: &str, body: &[u8]) -> Result<StreamInfo, ApiError> {
        let config = self.parse_config(name, body)?;
        if !self.streams.contains_key(name) {
            return Err(ApiError::stream_not_found());
        }
        self.check_overlap(&config)?;
        self.update_local(name, config).await
    }

    /// Gives this node's stream `name` a new (validated) configuration.
    async fn update_local(
        &mut self,
        name: &str,
        config: StreamConfig,
    ) -> Result<StreamInfo, ApiError> {
        let Some(handle) = self.streams.get(name) else {
            return Err(ApiError::stream_not_found());
        };
        let (tx, rx) = async_channel::bounded(1);
        handle
            .commands
            .send(StreamCmd::Update(Box::new(config.clone()), tx))
            .await
            .map_err(|_| ApiError::stream_not_found())?;
        let info = rx
            .recv()
            .await
            .map_err(|_| ApiError::stream_not_found())??;
        if let Some(h) = self.streams.get_mut(name) {
            h.config = config;
        }
        self.advise(name, Action::Modify);
        Ok(info.for_change(false))
    }

    async fn delete_stream(&mut self, name: &str) -> Result<(), ApiError> {
        let Some(handle) = self.streams.remove(name) else {
            return Err(ApiError::stream_not_found());
        };
        let (tx, rx) = async_channel::bounded(1);
        if handle.commands.send(StreamCmd::Delete(tx)).await.is_err() {
            return Ok(());
        }
        rx.recv()
            .await
            .map_err(|_| ApiError::stream_general("stream stopped"))??;
        self.advise(name, Action::Delete);
        Ok(())
    }

    async fn list(&self, req: &ApiRequest, r: &ListRequest) -> Vec<u8> {
        let kind = req.response_type();
        let filter = r.subject.as_deref().filter(|s| !s.is_empty());
        let names: Vec<&String> = self
            .streams
            .iter()
            .filter(|(_, h)| {
                filter.is_none_or(|f| {
                    h.config
                        .subjects
                        .iter()
                        .any(|s| subject::overlaps(s.as_bytes(), f.as_bytes()))
                })
            })
            .map(|(n, _)| n)
            .collect();
        let total = names.len();
        if matches!(req, ApiRequest::StreamNames) {
            return names_page(kind, &names, r.offset);
        }
        let limit = 256;
        let mut infos = Vec::new();
        for n in names.into_iter().skip(r.offset).take(limit) {
            if let Ok(info) = self.stream_info(n).await {
                infos.push(info.for_list());
            }
        }
        api::response(
            kind,
            &serde_json::json!({
                "total": total, "offset": r.offset, "limit": limit, "streams": infos,
            }),
        )
    }
}

/// One page of STREAM.NAMES.
fn names_page<S: serde::Serialize>(kind: &str, names: &[S], offset: usize) -> Vec<u8> {
    let limit = 1024;
    let page: Vec<&S> = names.iter().skip(offset).take(limit).collect();
    // The reference sends null, not [], for no names (its LIST sends []).
    let streams = (!page.is_empty()).then_some(page);
    api::response(
        kind,
        &serde_json::json!({
            "total": names.len(), "offset": offset, "limit": limit, "streams": streams,
        }),
    )
}

enum Handled {
    /// Forwarded: the stream actor answers.
    Done,
    Reply(Vec<u8>),
    Error(ApiError),
    NoResponders,
}

/// Answers `$JS.API.>` in an account without JetStream as the reference does: each
/// request gets its response type with `503 10039 "JetStream not enabled for account"`.
pub fn serve_disabled(account: Arc<Account>, spawner: &Spawner) {
    let (tx, rx) = async_channel::unbounded::<InternalMsg>();
    let sub = Subscription::internal(
        "$JS.API.>",
        None,
        InternalSink {
            tag: 0,
            mailbox: tx,
        },
    );
    account.send(vec![SubChange::Add(Arc::new(sub))]);
    spawner.spawn_detached(async move {
        let mut publisher = Publisher::default();
        while let Ok(msg) = rx.recv().await {
            let (Ok(subject), Some(reply)) = (std::str::from_utf8(&msg.subject), &msg.reply) else {
                continue;
            };
            let Some(req) = request::parse(subject) else {
                continue;
            };
            let body =
                api::error_response(req.response_type(), &ApiError::not_enabled_for_account());
            publisher.send(&account, reply, None, None, &body);
            publisher.flush();
        }
    });
}
