//! The route actor: one per route to another node of the cluster.
//!
//! It owns the connection to that node: the handshake (`crate::cluster::Handshake`),
//! the interest the other node announced (entered into the account's subject index as
//! [`Target::Route`](super::subscription::Target) subscriptions, so publishers reach the
//! route by matching like for any subscriber), the messages it forwards (delivered to
//! local subscribers only: a routed message is never routed again), and the route's
//! outbound queue, which publishers and the account router append to. A writer task
//! drains the queue, as for clients.
//!
//! Who waits on whom: the actor awaits the cluster actor once, to register (which
//! settles duplicates), and its account router before answering a PING; nobody
//! awaits a route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};

use super::context::{short_id, ServerContext};
use super::outbound::{drain, Wake};
use super::publish::Publisher;
use super::readbuf::ReadBuf;
use super::router::{Account, SubChange};
use super::runtime::{self, TcpStream};
use super::subscription::{
    InterestKey, Message, RouteControl, RouteShared, Subscription, RAFT_ACCOUNT,
};
use crate::cluster::{Handshake, LocalNode, Refusal, Role, Step};
use crate::proto::route::{Parsed, RouteInfo, RouteOp, RouteParser};

/// Whether a new route was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Accepted,
    /// Another route to the same node is kept; this one closes.
    Duplicate,
}

/// What a route tells whoever runs the cluster (the cluster actor consumes these).
pub enum RouteEvent {
    /// An established route asks whether it stays.
    Register {
        route: Arc<RouteShared>,
        server_id: String,
        server_name: String,
        /// Where the other node listens for routes (`host:port`), if it said.
        url: String,
        role: Role,
        peer: SocketAddr,
        reply: async_channel::Sender<Registration>,
    },
    Gone(u64),
    /// The other node told us of a node and where it listens for routes.
    Gossip {
        server_id: String,
        url: String,
    },
}

/// A route's line to the cluster actor.
#[derive(Clone)]
pub struct RouteLink {
    events: async_channel::Sender<RouteEvent>,
}

impl RouteLink {
    pub fn new(events: async_channel::Sender<RouteEvent>) -> Self {
        RouteLink { events }
    }

    /// Registers an established route; the answer says whether it stays.
    pub async fn register(
        &self,
        route: Arc<RouteShared>,
        info: &RouteInfo,
        role: Role,
        peer: SocketAddr,
    ) -> Registration {
        let (reply, answer) = async_channel::bounded(1);
        let url = if info.host.is_empty() || info.port == 0 {
            String::new()
        } else if info.host.contains(':') {
            format!("[{}]:{}", info.host, info.port)
        } else {
            format!("{}:{}", info.host, info.port)
        };
        let event = RouteEvent::Register {
            route,
            server_id: info.server_id.clone(),
            server_name: info.server_name.clone(),
            url,
            role,
            peer,
            reply,
        };
        if self.events.send(event).await.is_err() {
            return Registration::Duplicate;
        }
        answer.recv().await.unwrap_or(Registration::Duplicate)
    }

    pub fn gone(&self, route_id: u64) {
        let _ = self.events.try_send(RouteEvent::Gone(route_id));
    }

    /// A peer told us about another node and where it listens for routes.
    pub fn gossip(&self, server_id: String, url: String) {
        let _ = self.events.try_send(RouteEvent::Gossip { server_id, url });
    }
}

/// How a route ended, for the dialer that may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEnd {
    /// The handshake failed (refused, timed out, or the peer hung up during it).
    Handshake(String),
    /// The other end is this node itself: do not dial it again.
    SelfRoute,
    /// Another route to the same node was kept.
    Duplicate { server_id: String },
    /// The route was up and closed.
    Closed { server_id: String, reason: String },
}

/// A handshake that failed for a reason of our own (I/O, a protocol error).
fn failed(reason: String) -> Refusal {
    Refusal {
        reason,
        reply: None,
        self_route: false,
    }
}

/// Time the two nodes have for the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a route connection needs to run.
pub struct RouteSetup {
    pub ctx: Arc<ServerContext>,
    pub cluster: RouteLink,
    pub local: LocalNode,
    pub role: Role,
    pub peer: SocketAddr,
    /// The plain socket under any TLS layer (shut down at the end, and for inline
    /// flushing when there is no TLS).
    pub socket: TcpStream,
    pub tls: bool,
}

/// Runs a route over `reader`/`writer` (the socket, or its TLS session) until it ends.
pub async fn serve(
    setup: RouteSetup,
    reader: impl AsyncRead + Unpin,
    writer: impl AsyncWrite + Unpin + Send + 'static,
) -> RouteEnd {
    let RouteSetup {
        ctx,
        cluster,
        local,
        role,
        peer,
        socket,
        tls,
    } = setup;
    let config = ctx.config();
    let parser = RouteParser::new(
        config.max_control_line.as_usize(),
        config.max_payload.as_usize(),
    );
    let mut reader = reader;
    let mut writer = writer;
    let mut rbuf = ReadBuf::new();
    let mut handshake = Handshake::new(role, local.clone(), super::context::new_nonce());
    let first = handshake.start();
    let shake = async {
        let io = |e: std::io::Error| failed(e.to_string());
        if !first.is_empty() {
            writer.write_all(&first).await.map_err(io)?;
            writer.flush().await.map_err(io)?;
        }
        loop {
            // Complete operations first: the peer may send several in one segment.
            loop {
                match parser.parse(rbuf.data()) {
                    Ok(Parsed::Op(op, n)) => {
                        let step = handshake.on_op(&op);
                        rbuf.consume(n);
                        match step {
                            Step::Continue(out) => {
                                if !out.is_empty() {
                                    writer.write_all(&out).await.map_err(io)?;
                                    writer.flush().await.map_err(io)?;
                                }
                            }
                            Step::Established(out, info) => {
                                writer.write_all(&out).await.map_err(io)?;
                                writer.flush().await.map_err(io)?;
                                return Ok(info);
                            }
                            Step::Refused(refusal) => {
                                if let Some(reply) = &refusal.reply {
                                    let _ = writer.write_all(reply).await;
                                    let _ = writer.flush().await;
                                }
                                return Err(refusal);
                            }
                        }
                    }
                    Ok(Parsed::Incomplete { need }) => {
                        rbuf.reserve(need);
                        break;
                    }
                    Err(e) => return Err(failed(format!("protocol error: {e}"))),
                }
            }
            match reader.read(rbuf.spare()).await {
                Ok(0) => return Err(failed("closed during the handshake".into())),
                Ok(n) => rbuf.filled(n),
                Err(e) => return Err(failed(format!("read failed during the handshake: {e}"))),
            }
        }
    };
    let info = match runtime::timeout(HANDSHAKE_TIMEOUT, shake).await {
        Some(Ok(info)) => info,
        Some(Err(refusal)) => {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            if refusal.self_route {
                return RouteEnd::SelfRoute;
            }
            return RouteEnd::Handshake(refusal.reason);
        }
        None => {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return RouteEnd::Handshake("handshake timed out".to_string());
        }
    };

    let (control_tx, control_rx) = async_channel::unbounded();
    let shared = Arc::new(RouteShared::new(
        ctx.next_client_id.fetch_add(1, Ordering::Relaxed),
        config.max_pending.as_usize(),
        control_tx,
        (!tls).then(|| socket.clone().into()),
    ));
    let server_id = info.server_id.clone();
    match cluster.register(shared.clone(), &info, role, peer).await {
        Registration::Accepted => {}
        Registration::Duplicate => {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return RouteEnd::Duplicate { server_id };
        }
    }
    log::info!(
        "route to {} ({}) at {peer} is up ({})",
        info.server_name,
        short_id(&server_id),
        match role {
            Role::Accepted => "accepted",
            Role::Solicited => "dialed",
        }
    );
    let deadline = config.write_deadline.0;
    let writer_task = {
        let shared = shared.clone();
        let socket = socket.clone();
        ctx.spawner.spawn(async move {
            if drain(writer, socket, &shared.out, deadline).await
                != super::outbound::Drained::Closed
            {
                shared.tell(RouteControl::WriteFailed);
            }
        })
    };
    for account in ctx.accounts().values() {
        account.send(vec![SubChange::AttachRoute(shared.clone())]);
    }
    let mut route = Route {
        ctx: ctx.clone(),
        shared: shared.clone(),
        remote: info,
        cluster: cluster.clone(),
        interest: HashMap::new(),
        changes: Vec::new(),
        publisher: Publisher::default(),
        pings_out: 0,
        pongs_due: 0,
        unsynced: Vec::new(),
        last_in: runtime::now(),
        reset: false,
    };
    let reason = route.run(reader, rbuf, parser, control_rx).await;
    route.finish();
    shared.out.close();
    if let Some(task) = writer_task {
        let _ = runtime::timeout(deadline, task).await;
    }
    if route.reset {
        // Dropped without a FIN: the last handle's close sends one RST.
        let _ = runtime::reset_on_close(&socket);
    } else {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    cluster.gone(shared.id);
    log::info!(
        "route to {} ({}) at {peer} closed: {reason}",
        route.remote.server_name,
        short_id(&server_id)
    );
    RouteEnd::Closed { server_id, reason }
}
/// What the other node announced in one account: the account, and the entry in its
/// index.
type AnnouncedSub = (Arc<Account>, Arc<Subscription>);

/// An established route.
struct Route {
    ctx: Arc<ServerContext>,
    shared: Arc<RouteShared>,
    remote: Box<RouteInfo>,
    cluster: RouteLink,
    /// What the other node announced: (account, subject, queue) → the account and its
    /// entry in the account's index.
    interest: HashMap<(Box<[u8]>, InterestKey), AnnouncedSub>,
    /// Index changes gathered during one read batch, by account.
    changes: Vec<(Arc<Account>, Vec<SubChange>)>,
    publisher: Publisher,
    pings_out: u32,
    /// PINGs read in this batch: answered once the batch's interest is in the index
    /// (so a PONG means what came before it is in effect, as with the reference).
    pongs_due: u32,
    /// Accounts whose routers were sent interest changes without waiting for them.
    unsynced: Vec<Arc<Account>>,
    last_in: std::time::Instant,
    /// Reset rather than closed at the end ([`RouteControl::Reset`]).
    reset: bool,
}

/// The most members one queue-group announcement may count: a peer that claims more
/// gets this many (the weight decides how often the group's picks go to that node,
/// and each unit is an entry in the index).
const MAX_QUEUE_WEIGHT: u32 = 1024;

impl Route {
    async fn run(
        &mut self,
        reader: impl AsyncRead + Unpin,
        mut rbuf: ReadBuf,
        parser: RouteParser,
        control: async_channel::Receiver<RouteControl>,
    ) -> String {
        let mut reader = reader;
        let interval = self.ctx.config().cluster.ping_interval();
        let mut ping = runtime::interval(interval);
        enum Event {
            Read(std::io::Result<usize>),
            Control(Option<RouteControl>),
            Tick,
        }
        // Operations that arrived with the end of the handshake.
        if let Err(reason) = self.process_all(&mut rbuf, &parser).await {
            return reason;
        }
        self.end_batch().await;
        loop {
            let event = {
                let read = async { Event::Read(reader.read(rbuf.spare()).await) };
                let ctl = async { Event::Control(control.recv().await.ok()) };
                let tick = async {
                    ping.next().await;
                    Event::Tick
                };
                futures_lite::future::or(ctl, futures_lite::future::or(read, tick)).await
            };
            match event {
                Event::Read(Ok(0)) => return "closed by the peer".into(),
                Event::Read(Err(e)) => return format!("read error: {e}"),
                Event::Read(Ok(n)) => {
                    rbuf.filled(n);
                    self.last_in = runtime::now();
                    let result = self.process_all(&mut rbuf, &parser).await;
                    self.end_batch().await;
                    if let Err(reason) = result {
                        return reason;
                    }
                    rbuf.maybe_shrink(n);
                }
                Event::Control(None) => return "node stopping".into(),
                Event::Control(Some(RouteControl::Close(reason))) => return reason.into(),
                Event::Control(Some(RouteControl::Reset(reason))) => {
                    self.reset = true;
                    return reason.into();
                }
                Event::Control(Some(RouteControl::WriteFailed)) => return "write failed".into(),
                Event::Tick => {
                    if runtime::now().duration_since(self.last_in) < interval.mul_f64(0.9) {
                        continue;
                    }
                    if self.pings_out + 1 > self.ctx.config().max_pings_out {
                        return "stale connection (no answer to PING)".into();
                    }
                    self.pings_out += 1;
                    self.push(b"PING\r\n");
                }
            }
        }
    }

    fn push(&self, line: &[u8]) {
        if let Ok(true) = self
            .shared
            .out
            .push_control(|buf| buf.extend_from_slice(line))
        {
            self.shared.wake_writer();
        }
    }

    /// Handles what the buffer holds. A message that follows interest changes not yet
    /// visible to publishers waits for them: the other node sent the `RS+` first (a
    /// client's new reply inbox, then its request), and an answer published before the
    /// inbox is in the index would be dropped.
    async fn process_all(
        &mut self,
        rbuf: &mut ReadBuf,
        parser: &RouteParser,
    ) -> Result<(), String> {
        while self.process(rbuf, parser)? == Processed::NeedSync {
            self.sync().await;
        }
        Ok(())
    }

    /// A change to `account`'s index, sent at the end of the batch.
    fn change(&mut self, account: &Arc<Account>, change: SubChange) {
        match self
            .changes
            .iter_mut()
            .find(|(a, _)| Arc::ptr_eq(a, account))
        {
            Some((_, changes)) => changes.push(change),
            None => self.changes.push((account.clone(), vec![change])),
        }
    }

    /// Has interest been read that publishers may not see yet?
    fn unsynced(&self) -> bool {
        !self.changes.is_empty() || !self.unsynced.is_empty()
    }

    /// Makes every interest change read so far visible to publishers.
    async fn sync(&mut self) {
        // The router never waits on a route: awaiting it here cannot deadlock.
        for (account, changes) in std::mem::take(&mut self.changes) {
            account.apply(changes).await;
            self.unsynced.retain(|a| !Arc::ptr_eq(a, &account));
        }
        for account in std::mem::take(&mut self.unsynced) {
            account.apply(Vec::new()).await;
        }
    }

    fn process(&mut self, rbuf: &mut ReadBuf, parser: &RouteParser) -> Result<Processed, String> {
        loop {
            match parser.parse(rbuf.data()) {
                Ok(Parsed::Op(op, n)) => {
                    if matches!(op, RouteOp::Msg(_)) && self.unsynced() {
                        return Ok(Processed::NeedSync);
                    }
                    let result = self.handle(op);
                    rbuf.consume(n);
                    result?;
                }
                Ok(Parsed::Incomplete { need }) => {
                    rbuf.reserve(need);
                    return Ok(Processed::All);
                }
                Err(e) => {
                    // Tell the peer, as the reference does, then close.
                    let line =
                        format!("-ERR '{}'\r\n", e.wire().text().unwrap_or("Protocol Error"));
                    self.push(line.as_bytes());
                    return Err(format!("protocol error: {e}"));
                }
            }
        }
    }

    fn handle(&mut self, op: RouteOp<'_>) -> Result<(), String> {
        match op {
            RouteOp::Msg(m) => {
                self.shared.stats.in_msgs.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .stats
                    .in_bytes
                    .fetch_add(m.data.len() as u64, Ordering::Relaxed);
                // `$G` without a lookup (or a reference count) per message.
                let named;
                let account: &Account = if m.account == self.ctx.global.name.as_bytes() {
                    &self.ctx.global
                } else if let Some(a) = account_named(&self.ctx, m.account) {
                    named = a;
                    &named
                } else {
                    if m.account == RAFT_ACCOUNT {
                        self.ctx.peers.raft_frame(m.data);
                    }
                    return Ok(());
                };
                if let Some(d) = crate::proto::route::unwrap_delivery(m.headers, m.data) {
                    // A consumer's delivery made on the other node (see `wrap_delivery`).
                    let msg = Message {
                        subject: &d.subject,
                        reply: m.reply,
                        headers: d.headers,
                        data: &d.data,
                        from: None,
                    };
                    self.publisher.publish_routed_via(account, m.subject, &msg);
                    return Ok(());
                }
                let msg = Message {
                    subject: m.subject,
                    reply: m.reply,
                    headers: m.headers,
                    data: m.data,
                    from: None,
                };
                let queues = m.queue_list();
                self.publisher.publish_routed(account, &msg, queues);
            }
            RouteOp::Sub {
                account: acc,
                subject,
                queue,
            } => {
                let account = account_named(&self.ctx, acc).or_else(|| self.pushed_account(acc));
                let (Some(account), true) = (account, crate::subject::is_valid_subject(subject))
                else {
                    log::debug!(
                        "route {}: interest in {:?} ignored (unknown account or invalid subject)",
                        self.shared.id,
                        String::from_utf8_lossy(subject)
                    );
                    return Ok(());
                };
                let key = (
                    Box::<[u8]>::from(acc),
                    (Box::<[u8]>::from(subject), queue.map(|(q, _)| q.into())),
                );
                let weight = queue.map_or(1, |(_, w)| w.clamp(1, MAX_QUEUE_WEIGHT));
                if let Some((_, old)) = self.interest.get(&key) {
                    if old.queue.is_none() || old.weight == weight {
                        return Ok(());
                    }
                    // A queue group's weight changed: swap the entry in one batch.
                    let old = old.clone();
                    self.change(&account, SubChange::Remove(old));
                } else {
                    self.shared
                        .stats
                        .subscriptions
                        .fetch_add(1, Ordering::Relaxed);
                }
                let sub = Arc::new(Subscription::for_route(
                    self.shared.clone(),
                    subject,
                    queue.map(|(q, _)| q),
                    weight,
                ));
                self.change(&account, SubChange::Add(sub.clone()));
                self.interest.insert(key, (account, sub));
            }
            RouteOp::Unsub {
                account: acc,
                subject,
                queue,
            } => {
                let key = (
                    Box::<[u8]>::from(acc),
                    (Box::<[u8]>::from(subject), queue.map(Into::into)),
                );
                if let Some((account, sub)) = self.interest.remove(&key) {
                    self.shared
                        .stats
                        .subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                    sub.close();
                    self.change(&account, SubChange::Remove(sub));
                }
            }
            RouteOp::Ping => self.pongs_due += 1,
            RouteOp::Pong => self.pings_out = 0,
            RouteOp::Ok => {}
            RouteOp::Err(text) => {
                return Err(format!("peer error: {}", String::from_utf8_lossy(text)));
            }
            RouteOp::Info(json) => match serde_json::from_slice::<RouteInfo>(json) {
                // Gossip: another node the peer knows; the cluster actor may dial it.
                Ok(info) if info.server_id != self.remote.server_id && !info.ip.is_empty() => {
                    self.cluster.gossip(info.server_id, info.ip);
                }
                Ok(_) => {}
                Err(e) => log::debug!("route {}: unreadable INFO: {e}", self.shared.id),
            },
            RouteOp::Connect(_) => {
                return Err("CONNECT on an established route".into());
            }
        }
        Ok(())
    }

    async fn end_batch(&mut self) {
        if self.pongs_due > 0 {
            self.sync().await;
            for _ in 0..std::mem::take(&mut self.pongs_due) {
                self.push(b"PONG\r\n");
            }
        } else {
            for (account, changes) in std::mem::take(&mut self.changes) {
                account.send(changes);
                if !self.unsynced.iter().any(|a| Arc::ptr_eq(a, &account)) {
                    self.unsynced.push(account);
                }
            }
        }
        self.publisher.flush();
    }

    /// In operator mode, interest in an account this node has not heard of yet: one
    /// pushed to the cluster and not yet applied here (or pushed while this node was
    /// down). Its router starts now so the interest is not lost; its users still log in
    /// only once this node trusts the account's JWT.
    fn pushed_account(&self, name: &[u8]) -> Option<Arc<Account>> {
        let name = std::str::from_utf8(name).ok()?;
        let is_account_key = name.starts_with('A') && nkeys::KeyPair::from_public_key(name).is_ok();
        if !is_account_key || self.ctx.auth().trust().is_none() {
            return None;
        }
        log::debug!(
            "route {}: interest in account {name}, not known here yet",
            self.shared.id
        );
        Some(super::system::activate_account(&self.ctx, name))
    }

    /// Withdraws everything the other node announced.
    fn finish(&mut self) {
        for account in self.ctx.accounts().values() {
            account.send(vec![SubChange::DetachRoute(self.shared.id)]);
        }
        for (_, (account, sub)) in std::mem::take(&mut self.interest) {
            sub.close();
            account.send(vec![SubChange::Remove(sub)]);
        }
        self.publisher.flush();
    }
}

/// The account a route operation names, if this node has it (`$G` without a lookup).
fn account_named(ctx: &ServerContext, name: &[u8]) -> Option<Arc<Account>> {
    if name == ctx.global.name.as_bytes() {
        return Some(ctx.global.clone());
    }
    std::str::from_utf8(name).ok().and_then(|n| ctx.account(n))
}

/// How far [`Route::process`] got.
#[derive(Debug, PartialEq, Eq)]
enum Processed {
    /// Everything complete in the buffer.
    All,
    /// A message waits for earlier interest changes to be applied.
    NeedSync,
}
