//! What a delivery reaches: a subscription and its target — a client connection's or a
//! route's shared half (its outbound queue and mailbox), or an internal actor's
//! mailbox — and the message as every delivery sees it.
//!
//! These are the types the router indexes and the publish path delivers to; they sit
//! below both, and below the client and route actors that own the other halves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::mailbox::Mailbox;
use super::outbound::{FlushSet, OutboundQueue, PushError, Wake};
use super::runtime;
use crate::auth::accounts::ResponseRoute;
use crate::auth::permissions::ReplyLog;
use crate::events::ClientInfo;
use crate::monitor::ConnSnapshot;
use crate::proto::route::write_msg;
use crate::proto::WireError;
use crate::subject_index::SubjectIndex;
use crate::subject_transform::SubjectTransform;

/// The index type every account publishes.
pub type Index = SubjectIndex<Arc<Subscription>>;

/// An account as publishers see it: its name and the read-only index its router
/// publishes (the router's mailbox is in the router's `Account`, a floor above).
pub struct AccountIndex {
    pub name: String,
    snapshot: ArcSwap<Index>,
}

impl AccountIndex {
    pub fn new(name: &str) -> AccountIndex {
        AccountIndex {
            name: name.to_string(),
            snapshot: ArcSwap::from_pointee(Index::new()),
        }
    }

    /// The current read-only index.
    #[inline]
    pub fn index(&self) -> arc_swap::Guard<Arc<Index>> {
        self.snapshot.load()
    }

    /// Publishes a new index (the account's router only).
    pub(super) fn store(&self, index: Index) {
        self.snapshot.store(Arc::new(index));
    }
}

/// An import: what a subscription in one account carries into another.
pub struct ImportLink {
    /// The account the message goes on in.
    pub into: Arc<AccountIndex>,
    pub kind: ImportKind,
}

pub enum ImportKind {
    /// A stream import, subscribed in the exporter: the message goes to the importer's
    /// local subscribers (every node has its own import, so none is routed), under
    /// `to` when set.
    Stream { to: Option<SubjectTransform> },
    /// A service import, subscribed in the importer: the request is published in the
    /// exporter (on `transform` of its subject), its reply subject mapped so the
    /// response finds its way back, with `Nats-Request-Info` naming `importer`.
    Service {
        transform: Option<SubjectTransform>,
        replies: Arc<ResponseRoute>,
        importer: String,
    },
    /// The way back, subscribed in the exporter on the mapped replies: a response is
    /// published in the importer on the requester's reply subject.
    Response { replies: Arc<ResponseRoute> },
}

/// Who receives what a subscription matches.
pub enum Target {
    /// A client connection: frames go into its outbound queue.
    Client(Arc<ClientShared>),
    /// An internal actor: an owned copy of the message goes into its mailbox.
    Internal(InternalSink),
    /// Another node's interest, learned over a route: the message goes to that route
    /// once (however many of its subscriptions match) as an RMSG naming the queue
    /// groups it was picked for there.
    Route(Arc<RouteShared>),
    /// Another account, through an import.
    Import(Arc<ImportLink>),
}

/// The mailbox of an internal subscriber, and the tag it gave this subscription so it
/// can tell its subscriptions apart.
#[derive(Clone)]
pub struct InternalSink {
    pub tag: u64,
    pub mailbox: async_channel::Sender<InternalMsg>,
}

/// A message as an internal subscriber receives it (owned: it crosses to another task).
#[derive(Debug, Clone)]
pub struct InternalMsg {
    /// The tag of the subscription that matched.
    pub tag: u64,
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    /// Length of the header block at the start of `data`, if the message has headers.
    pub headers: Option<usize>,
    pub data: Bytes,
    /// The client that published it, when it came from a local client (JetStream's
    /// API audit names it).
    pub from: Option<Arc<ClientInfo>>,
}

impl InternalMsg {
    /// The payload (after the header block), sharing the message's bytes.
    pub fn payload_bytes(&self) -> Bytes {
        self.data
            .slice(self.headers.unwrap_or(0).min(self.data.len())..)
    }

    /// The reply subject as text.
    pub fn reply_text(&self) -> Option<String> {
        self.reply
            .as_deref()
            .map(|r| String::from_utf8_lossy(r).into_owned())
    }

    pub fn header_block(&self) -> &[u8] {
        self.data
            .get(..self.headers.unwrap_or(0))
            .unwrap_or_default()
    }

    pub fn payload(&self) -> &[u8] {
        self.data
            .get(self.headers.unwrap_or(0)..)
            .unwrap_or_default()
    }
}

/// One subscription, as the subject index holds it.
pub struct Subscription {
    pub target: Target,
    pub sid: Box<[u8]>,
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    /// Whether the subscriber understands HMSG (otherwise headers are stripped).
    pub headers: bool,
    /// Auto-unsubscribe after this many deliveries (`u64::MAX`: never).
    pub(super) max: AtomicU64,
    pub(super) delivered: AtomicU64,
    closed: AtomicBool,
    /// Subjects the owner may not receive although this (wildcard) subscription
    /// matches them: its subscribe-deny permissions.
    pub deny: Box<[Box<[u8]>]>,
    /// Where the reply subjects of delivered messages are noted, when the owner may
    /// answer requests its publish permissions would otherwise refuse.
    pub replies: Option<Arc<ReplyLog>>,
    /// How many entries the index holds for it: a route's queue interest counts as
    /// many members as the other node has (so picks are weighted as the reference's),
    /// everything else once.
    pub weight: u32,
    /// An internal subscription the cluster hears of (a clustered JetStream's: its API
    /// and its streams serve every node's clients); client interest always is.
    pub cluster_wide: bool,
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Subscription {
    /// The fields every kind of subscription starts with.
    fn new(target: Target, sid: Box<[u8]>, subject: &[u8], queue: Option<&[u8]>) -> Self {
        Subscription {
            target,
            sid,
            subject: subject.into(),
            queue: queue.map(Into::into),
            headers: true,
            max: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            deny: Box::default(),
            replies: None,
            weight: 1,
            cluster_wide: false,
        }
    }

    /// Makes an internal subscription's interest known to the other nodes (or not).
    pub fn cluster_wide(mut self, yes: bool) -> Self {
        self.cluster_wide = yes;
        self
    }

    pub fn for_client(
        client: Arc<ClientShared>,
        subject: &[u8],
        queue: Option<&[u8]>,
        sid: &[u8],
        headers: bool,
    ) -> Self {
        Subscription {
            headers,
            ..Subscription::new(Target::Client(client), sid.into(), subject, queue)
        }
    }

    /// Interest another node announced over `route` (`weight` members of a queue group).
    pub fn for_route(
        route: Arc<RouteShared>,
        subject: &[u8],
        queue: Option<&[u8]>,
        weight: u32,
    ) -> Self {
        Subscription {
            weight: weight.max(1),
            ..Subscription::new(Target::Route(route), Box::default(), subject, queue)
        }
    }

    /// An import's subscription on `subject` (see [`ImportKind`]).
    pub fn import(subject: &str, link: ImportLink) -> Self {
        Subscription::new(
            Target::Import(Arc::new(link)),
            Box::default(),
            subject.as_bytes(),
            None,
        )
    }

    pub fn internal(subject: &str, queue: Option<&str>, sink: InternalSink) -> Self {
        let sid = sink.tag.to_string().into_bytes().into();
        Subscription::new(
            Target::Internal(sink),
            sid,
            subject.as_bytes(),
            queue.map(str::as_bytes),
        )
    }

    /// The client connection this subscription belongs to (0 for internal ones).
    #[inline]
    pub fn client_id(&self) -> u64 {
        match &self.target {
            Target::Client(c) => c.id,
            Target::Route(r) => r.id,
            Target::Internal(_) | Target::Import(_) => 0,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Auto-unsubscribe after `max` deliveries in all; `true` when that many are
    /// already done (the subscription ends now).
    pub fn limit_deliveries(&self, max: u64) -> bool {
        self.max.store(max, Ordering::Release);
        self.delivered.load(Ordering::Acquire) >= max
    }

    /// A client's subscription with a new delivery filter (after a reload), taking over
    /// this one's counts; `None` when the filter is the same.
    pub fn refiltered(
        &self,
        deny: Vec<Box<[u8]>>,
        replies: Option<Arc<ReplyLog>>,
    ) -> Option<Subscription> {
        let Target::Client(client) = &self.target else {
            return None;
        };
        let same_log = match (&replies, &self.replies) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if *self.deny == *deny && same_log {
            return None;
        }
        let mut new = Subscription::for_client(
            client.clone(),
            &self.subject,
            self.queue.as_deref(),
            &self.sid,
            self.headers,
        );
        new.deny = deny.into();
        new.replies = replies;
        new.max
            .store(self.max.load(Ordering::Acquire), Ordering::Release);
        new.delivered
            .store(self.delivered.load(Ordering::Acquire), Ordering::Release);
        Some(new)
    }

    /// What `/subsz` and `/connz` show of it (`cid`: its connection).
    pub fn snapshot(&self, cid: u64) -> crate::monitor::SubSnapshot {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        crate::monitor::SubSnapshot {
            subject: text(&self.subject),
            queue: self.queue.as_deref().map(text),
            sid: text(&self.sid),
            msgs: self.delivered(),
            cid,
        }
    }

    /// Stops deliveries at once (the router removes it from the index later).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A message being published, as every delivery sees it.
pub struct Message<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// Length of the header block at the start of `data`, if any.
    pub headers: Option<usize>,
    pub data: &'a [u8],
    /// The local client that published it (internal subscribers get it).
    pub from: Option<&'a Arc<ClientInfo>>,
}

/// Messages other actors send a client actor.
pub enum Control {
    /// Close the connection, sending the error's text first if it has one.
    Close(WireError),
    /// The writer failed: the peer is gone.
    WriteFailed,
    /// A subscription reached its auto-unsubscribe count.
    AutoUnsubscribed(Arc<Subscription>),
    /// Lame-duck mode: tell the client (INFO with `ldm`) to reconnect elsewhere.
    LameDuck,
    /// Monitoring asks what this connection is and did.
    Snapshot(async_channel::Sender<ConnSnapshot>),
    /// The authorization config changed: check the credentials again, apply the new
    /// permissions (dropping subscriptions they no longer allow), or close.
    Reauthorize,
}

/// The part of a client connection that publishers and subscriptions reach.
pub struct ClientShared {
    pub id: u64,
    pub out: OutboundQueue,
    control: Mailbox<Control>,
    /// The socket, for publishers that flush this connection's queue inline (plain
    /// TCP only: TLS bytes must go through the connection's TLS session).
    socket: Option<Arc<runtime::Async<std::net::TcpStream>>>,
}

impl ClientShared {
    /// A connection's shared half; `socket` when publishers may write to it inline
    /// (plain TCP only: TLS and WebSocket bytes must go through their session).
    pub fn new(
        id: u64,
        max_pending: usize,
        socket: Option<Arc<runtime::Async<std::net::TcpStream>>>,
    ) -> Self {
        ClientShared {
            id,
            out: OutboundQueue::new(max_pending),
            control: Mailbox::default(),
            socket,
        }
    }

    /// Leaves a message for the actor; `false` once the connection has ended.
    pub fn tell(&self, control: Control) -> bool {
        self.control.send(control)
    }

    /// The actor's next message (only the connection's own actor receives).
    pub async fn next_control(&self) -> Control {
        self.control.recv().await
    }

    /// The connection ended: later messages are dropped.
    pub fn close_mailbox(&self) {
        self.control.close();
    }
}

impl Wake for ClientShared {
    fn wake_writer(&self) {
        match &self.socket {
            Some(socket) => self.out.flush_inline(socket.get_ref()),
            None => self.out.wake(),
        }
    }

    fn outbound(&self) -> &OutboundQueue {
        &self.out
    }
}

/// Messages other actors send a route actor.
pub enum RouteControl {
    /// Close the route (a duplicate replaced it, the node stops, the peer left).
    Close(&'static str),
    /// The peer is gone (the mesh lost it): reset the connection rather than close
    /// it, since a FIN to a dead peer is sent again and again, and over the mesh each
    /// copy draws an ICMP error from its host that telling of its next death needs.
    Reset(&'static str),
    WriteFailed,
}

/// Counters of one route (atomics: written by publishers and the actor).
#[derive(Default, Debug)]
pub struct RouteStats {
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_msgs: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Interest entries the other node has announced.
    pub subscriptions: AtomicU64,
}

/// The part of a route that publishers and the account router reach.
pub struct RouteShared {
    pub id: u64,
    pub out: OutboundQueue,
    control: async_channel::Sender<RouteControl>,
    /// The plain TCP socket, for publishers that flush inline (not with TLS).
    socket: Option<Arc<runtime::Async<std::net::TcpStream>>>,
    pub stats: RouteStats,
}

impl RouteShared {
    /// A route's shared half (see [`ClientShared::new`] for `socket`).
    pub fn new(
        id: u64,
        max_pending: usize,
        control: async_channel::Sender<RouteControl>,
        socket: Option<Arc<runtime::Async<std::net::TcpStream>>>,
    ) -> Self {
        RouteShared {
            id,
            out: OutboundQueue::new(max_pending),
            control,
            socket,
            stats: RouteStats::default(),
        }
    }

    pub fn tell(&self, control: RouteControl) {
        let _ = self.control.try_send(control);
    }

    /// Queues one RMSG/HMSG for a message this route's node has interest in; `queues`
    /// are the groups whose member on that node was picked. Returns whether it was
    /// queued.
    pub fn send_msg<'q>(
        self: &Arc<Self>,
        account: &[u8],
        msg: &Message<'_>,
        queues: impl Iterator<Item = &'q [u8]> + Clone,
        flush: &mut FlushSet,
    ) -> bool {
        let names: usize = queues.clone().map(|q| q.len() + 1).sum();
        let len = 48
            + account.len()
            + msg.subject.len()
            + msg.reply.map_or(0, <[u8]>::len)
            + names
            + msg.data.len();
        let pushed = self.out.push(len, msg.data.len(), |buf| {
            write_msg(
                buf,
                account,
                msg.subject,
                msg.reply,
                queues,
                msg.headers,
                msg.data,
            )
        });
        match pushed {
            Ok(pushed) => {
                self.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .out_bytes
                    .fetch_add(msg.data.len() as u64, Ordering::Relaxed);
                if pushed.wake {
                    flush.add(self.clone());
                }
                if pushed.stalled {
                    flush.stall(self.clone());
                }
                true
            }
            Err(PushError::SlowConsumer) => {
                self.tell(RouteControl::Close("Slow Consumer"));
                false
            }
            Err(PushError::Closed) => false,
        }
    }
}

impl Wake for RouteShared {
    fn wake_writer(&self) {
        match &self.socket {
            Some(socket) => self.out.flush_inline(socket.get_ref()),
            None => self.out.wake(),
        }
    }

    fn outbound(&self) -> &OutboundQueue {
        &self.out
    }
}

/// A subject and, for a queue group, its name.
pub type InterestKey = (Box<[u8]>, Option<Box<[u8]>>);

pub use crate::proto::route::RAFT_ACCOUNT;
const RAFT_SUBJECT: &[u8] = b"$MBR.RAFT";

/// The routes to the other nodes by server name, for what goes to one node rather
/// than to an interest (Raft), and where a route hands the Raft frames it receives.
/// The cluster actor keeps the routes; the Raft host reads them and sets the inbox.
#[derive(Default)]
pub struct Peers {
    routes: arc_swap::ArcSwap<std::collections::HashMap<String, Arc<RouteShared>>>,
    raft_inbox: arc_swap::ArcSwapOption<async_channel::Sender<Bytes>>,
}

impl Peers {
    /// The route to `name` is `route` from now on.
    pub fn insert(&self, name: &str, route: Arc<RouteShared>) {
        self.routes.rcu(|map| {
            let mut map = std::collections::HashMap::clone(map);
            map.insert(name.to_string(), route.clone());
            map
        });
    }

    /// Route `id` is gone.
    pub fn remove(&self, id: u64) {
        self.routes.rcu(|map| {
            let mut map = std::collections::HashMap::clone(map);
            map.retain(|_, r| r.id != id);
            map
        });
    }

    /// Every route up now.
    pub fn routes(&self) -> Vec<Arc<RouteShared>> {
        self.routes.load().values().cloned().collect()
    }

    pub fn is_routed(&self, name: &str) -> bool {
        self.routes.load().contains_key(name)
    }

    /// Queues a Raft frame for node `name`; false when no route to it is up (Raft
    /// retries by itself, so nothing is kept).
    pub fn send_raft(&self, name: &str, frame: &[u8], flush: &mut FlushSet) -> bool {
        let Some(route) = self.routes.load().get(name).cloned() else {
            return false;
        };
        let msg = Message {
            subject: RAFT_SUBJECT,
            reply: None,
            headers: None,
            data: frame,
            from: None,
        };
        route.send_msg(RAFT_ACCOUNT, &msg, std::iter::empty(), flush)
    }

    /// Where Raft frames from routes go from now on.
    pub fn set_raft_inbox(&self, inbox: async_channel::Sender<Bytes>) {
        self.raft_inbox.store(Some(Arc::new(inbox)));
    }

    /// A route received a Raft frame (dropped while this node runs no Raft).
    pub fn raft_frame(&self, frame: &[u8]) {
        if let Some(inbox) = self.raft_inbox.load().as_ref() {
            let _ = inbox.try_send(Bytes::copy_from_slice(frame));
        }
    }
}
