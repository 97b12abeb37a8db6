//! The client actor: one per client connection.
//!
//! It drives the connection's protocol rules (`crate::connection::Connection`, the
//! sans-io state machine) with the socket: it reads, parses, hands each operation to
//! the connection and carries out what it says — queue a reply, change a subscription,
//! make the changes visible, publish, authenticate, close. Two tasks serve a
//! connection: the actor proper (reads, its mailbox, its ping timer) and a writer that
//! drains the connection's outbound queue into the socket when it cannot be written
//! at once. Publishing appends straight to the subscribers' outbound queues; at the end
//! of each read batch the publisher flushes every queue it touched, writing inline when
//! the subscriber's socket is free (see `outbound.rs`).
//!
//! Who waits on whom: the actor awaits its account router only to make its own
//! subscription changes visible (before its own PUB or before answering PING), and the
//! blocking pool for a bcrypt check; the router never waits on a client. See
//! `actors/README.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};

use super::context::{new_nonce, ServerContext, TlsSetup, WsSetup};
use super::outbound::{drain, Drained, STALL_MAX, STALL_TOTAL};
use super::publish::Publisher;
use super::readbuf::ReadBuf;
use super::router::{Account, SubChange};
use super::runtime::{self, TcpStream};
use super::subscription::{ClientShared, Control, Message, Subscription};
use super::websocket;
use crate::auth::{AuthError, Authenticator, Grant};
use crate::connection::{Action, Connection, Limits, Publish, Reply};
use crate::events::ClientInfo;
use crate::monitor::{ConnSnapshot, SubSnapshot};
use crate::proto::{encode, errors, ConnectOptions, Parsed, Parser, WireError};

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The client listener: plain TCP, or TLS when `[tls]` is set.
    Tcp,
    /// The WebSocket listener: ws://, or wss:// with its own certificate.
    WebSocket,
}

/// Starts the actor (and its writer) for an accepted connection.
pub fn spawn(
    ctx: Arc<ServerContext>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    gone: async_channel::Sender<u64>,
    via: Via,
) -> Arc<ClientShared> {
    let (tls, websocket) = match via {
        Via::Tcp => (ctx.tls(), None),
        Via::WebSocket => (None, ctx.websocket()),
    };
    // Publishers write inline only to plain TCP sockets: TLS and WebSocket bytes
    // must go through their session.
    let inline = via == Via::Tcp && tls.is_none();
    let max_pending = ctx.config().max_pending.as_usize();
    let shared = Arc::new(ClientShared::new(
        id,
        max_pending,
        inline.then(|| stream.clone().into()),
    ));
    let handle = shared.clone();
    let spawner = ctx.spawner.clone();
    spawner.spawn_detached(async move {
        let mut client = Client::new(ctx, shared, peer);
        log::debug!("client {id} connected from {peer} ({via:?})");
        let mut session = Session {
            client: &mut client,
            socket: stream.clone(),
        };
        // Each transport's handshake state is boxed on its own: inline, the largest
        // (wss://, ~48 KiB) would make every connection's task that large.
        match (tls, websocket) {
            (Some(tls), _) => Box::pin(session.serve_tls(stream, &tls)).await,
            (None, Some(ws)) => match &ws.acceptor {
                None => Box::pin(session.serve_ws(stream, &ws)).await,
                Some(acceptor) => Box::pin(session.serve_wss(stream, &ws, acceptor)).await,
            },
            (None, None) if via == Via::Tcp => session.serve(stream.clone(), stream).await,
            (None, None) => {}
        }
        let _ = session.socket.shutdown(std::net::Shutdown::Both);
        let _ = gone.send(id).await;
    });
    handle
}

/// A TLS session's version and cipher suite as the reference's `/connz` names them
/// (`1.3`, `TLS_AES_128_GCM_SHA256`).
fn tls_session(conn: &rustls::ServerConnection) -> (String, String) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let name = s
                .suite()
                .as_str()
                .map_or_else(|| format!("{:?}", s.suite()), str::to_string);
            // rustls names the TLS 1.3 suites TLS13_…; IANA (and Go) TLS_….
            name.strip_prefix("TLS13_")
                .map_or(name.clone(), |rest| format!("TLS_{rest}"))
        })
        .unwrap_or_default();
    (version, suite)
}

/// Waits for a transport's handshakes; `None` (logged) if they failed or took too long.
async fn handshake<T>(
    what: &str,
    limit: Duration,
    handshakes: impl std::future::Future<Output = Result<T, String>>,
    peer: SocketAddr,
) -> Option<T> {
    match runtime::timeout(limit, handshakes).await {
        Some(Ok(done)) => Some(done),
        Some(Err(e)) => {
            log::debug!("{peer} - {what} handshake failed: {e}");
            None
        }
        None => {
            log::debug!("{peer} - {what} handshake timeout");
            None
        }
    }
}

/// A connection whose transport is being set up, then served: the actor reads from
/// one half while its writer task drains the outbound queue into the other.
struct Session<'a> {
    client: &'a mut Client,
    /// The TCP socket under any TLS or WebSocket layer, shut down at the end so that
    /// a read waiting on it ends too.
    socket: TcpStream,
}

impl Session<'_> {
    /// TLS on the client port: INFO in plain text (unless the handshake comes first),
    /// the handshake, then the session inside it.
    async fn serve_tls(&mut self, stream: TcpStream, tls: &TlsSetup) {
        let peer = self.client.peer;
        if !tls.handshake_first {
            let mut line = Vec::new();
            encode::write_info(&mut line, &self.client.info(false));
            let mut raw = stream.clone();
            if !matches!(
                runtime::timeout(tls.timeout, raw.write_all(&line)).await,
                Some(Ok(()))
            ) {
                return;
            }
            self.client.info_sent = true;
        }
        let accept = async { tls.acceptor.accept(stream).await.map_err(|e| e.to_string()) };
        if let Some(session) = handshake("TLS", tls.timeout, accept, peer).await {
            self.client.tls_session = Some(tls_session(session.get_ref().1));
            let (reader, writer) = futures_lite::io::split(session);
            self.serve(reader, writer).await;
        }
    }

    /// ws://: the WebSocket handshake (with the origin check), then the session in
    /// binary messages.
    async fn serve_ws(&mut self, stream: TcpStream, ws: &WsSetup) {
        self.client.transport = "websocket";
        let max_payload = self.client.ctx.config().max_payload.as_usize();
        let peer = self.client.peer;
        let accept = websocket::accept(stream, &ws.policy, false, max_payload, peer);
        if let Some((r, w)) = handshake("websocket", ws.handshake_timeout, accept, peer).await {
            self.serve(r, w).await;
        }
    }

    /// wss://: TLS with the WebSocket listener's certificate, then as [`Self::serve_ws`].
    async fn serve_wss(
        &mut self,
        stream: TcpStream,
        ws: &WsSetup,
        acceptor: &futures_rustls::TlsAcceptor,
    ) {
        self.client.transport = "websocket";
        let max_payload = self.client.ctx.config().max_payload.as_usize();
        let peer = self.client.peer;
        let handshakes = async {
            let tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
            let details = tls_session(tls.get_ref().1);
            websocket::accept(tls, &ws.policy, true, max_payload, peer)
                .await
                .map(|halves| (halves, details))
        };
        if let Some(((r, w), details)) =
            handshake("websocket", ws.handshake_timeout, handshakes, peer).await
        {
            self.client.tls_session = Some(details);
            self.serve(r, w).await;
        }
    }

    async fn serve(
        &mut self,
        reader: impl futures_lite::AsyncRead + Unpin,
        writer: impl futures_lite::AsyncWrite + Unpin + Send + 'static,
    ) {
        let deadline = self.client.ctx.config().write_deadline.0;
        let shared = self.client.shared.clone();
        let writer = write_loop(
            writer,
            self.socket.clone(),
            shared,
            deadline,
            self.client.peer,
        );
        let Some(writer) = self.client.ctx.spawner.spawn(writer) else {
            return;
        };
        let reason = self.client.run(reader).await;
        self.client.finish(reason, writer).await;
    }
}

/// Drains the connection's outbound queue into `out`; tells the actor when a write
/// fails or misses its deadline (logged as the reference logs it).
async fn write_loop(
    out: impl futures_lite::AsyncWrite + Unpin,
    socket: TcpStream,
    shared: Arc<ClientShared>,
    deadline: Duration,
    peer: SocketAddr,
) {
    match drain(out, socket, &shared.out, deadline).await {
        Drained::Closed => {}
        Drained::WriteFailed => {
            shared.tell(Control::WriteFailed);
        }
        Drained::Deadline { bytes, chunks } => {
            log::info!(
                "{peer} - cid:{} - Slow Consumer Detected: WriteDeadline of {} exceeded with {chunks} chunks of {bytes} total bytes.",
                shared.id,
                humantime::format_duration(deadline)
            );
            shared.tell(Control::Close(WireError::SlowConsumerWriteDeadline));
        }
    }
}

/// Checks credentials, on the blocking pool when bcrypt is involved (it is slow on
/// purpose and would stall every connection sharing this executor thread).
async fn check_credentials(
    auth: Arc<Authenticator>,
    opts: ConnectOptions,
    nonce: String,
) -> Result<Grant, AuthError> {
    if auth.is_slow(&opts) {
        runtime::unblock(move || auth.authenticate(&opts, &nonce)).await
    } else {
        auth.authenticate(&opts, &nonce)
    }
}

/// Why a connection ended.
enum Ended {
    ClientClosed,
    ReadError,
    Error(WireError),
}

struct Client {
    ctx: Arc<ServerContext>,
    shared: Arc<ClientShared>,
    account: Arc<Account>,
    peer: SocketAddr,
    parser: Parser,
    /// The protocol's rules and state.
    conn: Connection,
    /// The subscriptions, as the index holds them, by sid.
    subs: HashMap<Box<[u8]>, Arc<Subscription>>,
    /// Subscription changes not yet sent to the router.
    changes: Vec<SubChange>,
    publisher: Publisher,
    /// The first INFO went out before the TLS handshake.
    info_sent: bool,
    /// What monitoring shows of the transport: `nats` or `websocket`, and the TLS
    /// version and cipher suite when the connection uses TLS.
    transport: &'static str,
    tls_session: Option<(String, String)>,
    /// This client as events describe it (JetStream's API audit), from its first
    /// publish on (and again after its credentials change).
    event_info: Option<Arc<ClientInfo>>,
    in_msgs: u64,
    in_bytes: u64,
    out_msgs: u64,
    out_bytes: u64,
    /// Since the connection opened (the fields above are folded into the node's
    /// counters and reset once per batch).
    total_in_msgs: u64,
    total_in_bytes: u64,
    started_ns: i64,
}

impl Client {
    fn new(ctx: Arc<ServerContext>, shared: Arc<ClientShared>, peer: SocketAddr) -> Self {
        let config = ctx.config();
        let parser = Parser::new(
            config.max_control_line.as_usize(),
            config.max_payload.as_usize(),
        );
        let limits = Limits {
            max_subscriptions: config.max_subscriptions,
            ping_interval: config.ping_interval.0,
            max_pings_out: config.max_pings_out,
        };
        // The clock for authentication starts with the connection (TLS included).
        let auth = ctx.auth();
        let nonce = if auth.required() && auth.wants_nonce() {
            new_nonce()
        } else {
            String::new()
        };
        let conn = Connection::new(auth, limits, nonce, runtime::now());
        Client {
            account: ctx.global.clone(),
            ctx,
            shared,
            peer,
            parser,
            conn,
            subs: HashMap::new(),
            changes: Vec::new(),
            publisher: Publisher::default(),
            info_sent: false,
            transport: "nats",
            tls_session: None,
            event_info: None,
            in_msgs: 0,
            in_bytes: 0,
            out_msgs: 0,
            out_bytes: 0,
            total_in_msgs: 0,
            total_in_bytes: 0,
            started_ns: runtime::now_unix_ns(),
        }
    }

    fn id(&self) -> u64 {
        self.shared.id
    }

    async fn run(&mut self, stream: impl futures_lite::AsyncRead + Unpin) -> Ended {
        let mut stream = stream;
        if !self.info_sent {
            self.send_info(false);
            self.publisher.flush();
        }
        let mut rbuf = ReadBuf::new();
        let mut ping = runtime::interval(self.ctx.config().ping_interval.0);
        let shared = self.shared.clone();
        enum Event {
            Read(std::io::Result<usize>),
            Control(Control),
            Tick,
            AuthTimeout,
        }
        loop {
            let event = {
                let read = async { Event::Read(stream.read(rbuf.spare()).await) };
                let ctl = async { Event::Control(shared.next_control().await) };
                let tick = async {
                    ping.next().await;
                    Event::Tick
                };
                let deadline = self.conn.auth_deadline();
                let auth_timeout = async move {
                    match deadline {
                        Some(at) => runtime::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                    Event::AuthTimeout
                };
                futures_lite::future::or(
                    ctl,
                    futures_lite::future::or(read, futures_lite::future::or(tick, auth_timeout)),
                )
                .await
            };
            let result = match event {
                Event::AuthTimeout if self.conn.auth_timed_out(runtime::now()) => {
                    log::debug!(
                        "client {} ({}): authentication timeout",
                        self.id(),
                        self.peer
                    );
                    Err(Ended::Error(WireError::AuthenticationTimeout))
                }
                Event::AuthTimeout => Ok(()),
                Event::Read(Ok(0)) => Err(Ended::ClientClosed),
                Event::Read(Err(_)) => Err(Ended::ReadError),
                Event::Read(Ok(n)) => {
                    rbuf.filled(n);
                    self.conn.received(runtime::now());
                    let result = self.process(&mut rbuf).await;
                    self.end_batch();
                    if self.publisher.flush.has_stalled() {
                        self.wait_stalled().await;
                    }
                    rbuf.maybe_shrink(n);
                    result.map_err(Ended::Error)
                }
                Event::Control(ctl) => self.control(ctl).await,
                Event::Tick => match self.conn.tick(runtime::now()) {
                    Some(action) => self.perform(action).await.map_err(Ended::Error),
                    None => Ok(()),
                },
            };
            if let Err(ended) = result {
                return ended;
            }
            self.end_batch();
        }
    }

    async fn control(&mut self, ctl: Control) -> Result<(), Ended> {
        match ctl {
            Control::Close(e) => return Err(Ended::Error(e)),
            Control::WriteFailed => return Err(Ended::ReadError),
            Control::AutoUnsubscribed(sub) => {
                if self
                    .subs
                    .get(&sub.sid)
                    .is_some_and(|s| Arc::ptr_eq(s, &sub))
                {
                    self.remove_sub(&sub.sid.clone());
                }
            }
            Control::Snapshot(reply) => {
                let _ = reply.try_send(self.snapshot());
            }
            Control::Reauthorize => self.reauthorize().await.map_err(Ended::Error)?,
            Control::LameDuck => {
                let mut info = self.ctx.info_for(self.id(), self.peer.ip());
                info.ldm = true;
                self.send(|buf| encode::write_info(buf, &info));
            }
        }
        Ok(())
    }

    /// Handles every complete operation in the buffer.
    async fn process(&mut self, rbuf: &mut ReadBuf) -> Result<(), WireError> {
        loop {
            match self.parser.parse(rbuf.data()) {
                Ok(Parsed::Op(op, n)) => {
                    if let crate::proto::Op::Pub { data, .. } = &op {
                        self.in_msgs += 1;
                        self.in_bytes += data.len() as u64;
                    }
                    let actions = self.conn.handle(op);
                    let mut result = Ok(());
                    for action in actions {
                        result = self.perform(action).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    rbuf.consume(n);
                    result?;
                }
                Ok(Parsed::Incomplete { need }) => {
                    rbuf.reserve(need);
                    return Ok(());
                }
                Err(e) => {
                    log::debug!("client {}: {e}", self.id());
                    return Err(e.wire());
                }
            }
        }
    }

    /// Carries out one action of the connection; `Err` closes it.
    async fn perform(&mut self, action: Action<'_>) -> Result<(), WireError> {
        match action {
            Action::Reply(reply) => self.reply(reply),
            Action::SyncSubscriptions => self.sync_subscriptions().await,
            Action::Publish(p) => self.publish(p),
            Action::Subscribe {
                sid,
                subject,
                queue,
            } => {
                let sub = Arc::new(self.new_subscription(subject, queue, sid));
                self.subs.insert(sid.into(), sub.clone());
                self.changes.push(SubChange::Add(sub));
            }
            Action::Unsubscribe { sid, max } => self.unsubscribe(sid, max),
            Action::Authenticate(opts) => {
                log::debug!(
                    "client {}: CONNECT name={:?} lang={:?} version={:?}",
                    self.id(),
                    opts.name.as_deref().unwrap_or(""),
                    opts.lang.as_deref().unwrap_or(""),
                    opts.version.as_deref().unwrap_or("")
                );
                let nonce = self.conn.nonce().to_string();
                let result = check_credentials(self.ctx.auth(), (*opts).clone(), nonce).await;
                if let Err(e) = &result {
                    log::error!(
                        "{} - cid:{} - authentication error - {e}",
                        self.peer,
                        self.id()
                    );
                }
                self.event_info = None;
                for next in self.conn.authenticated(result) {
                    match next {
                        Action::Reply(r) => self.reply(r),
                        Action::Close(e) => return Err(e),
                        _ => {}
                    }
                }
            }
            Action::Close(e) => {
                if e == WireError::AuthorizationViolation {
                    log::error!(
                        "{} - cid:{} - authentication error: operation before CONNECT",
                        self.peer,
                        self.id()
                    );
                } else if e == WireError::ProtocolViolation {
                    log::debug!("client {}: protocol violation", self.id());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn reply(&mut self, reply: Reply<'_>) {
        match reply {
            Reply::Ok => self.send(|b| b.extend_from_slice(encode::OK)),
            Reply::Ping => self.send(|b| b.extend_from_slice(encode::PING)),
            Reply::Pong => self.send(|b| b.extend_from_slice(encode::PONG)),
            Reply::ConnectInfo => self.send_info(true),
            Reply::Err(e) => self.send_err(e),
            Reply::PublishViolation(subject) => {
                let shown = String::from_utf8_lossy(subject);
                log::error!(
                    "{} - cid:{} - Publish Violation - Subject {shown:?}",
                    self.peer,
                    self.id()
                );
                let text = errors::publish_violation(subject);
                self.send(|b| encode::write_err(b, &text));
            }
            Reply::SubscribeViolation { subject, queue } => {
                let text = errors::subscribe_violation(subject, queue);
                log::error!("{} - cid:{} - {text}", self.peer, self.id());
                self.send(|b| encode::write_err(b, &text));
            }
        }
    }

    /// Makes this connection's subscription changes visible to every publisher.
    async fn sync_subscriptions(&mut self) {
        self.account.apply(std::mem::take(&mut self.changes)).await;
        self.conn.synced();
    }

    /// Checks this connection against a reloaded authorization config: closes it if its
    /// credentials no longer pass, otherwise applies the new permissions, ending the
    /// subscriptions they no longer allow.
    async fn reauthorize(&mut self) -> Result<(), WireError> {
        let Some(opts) = self.conn.reauthorize(self.ctx.auth()) else {
            return Ok(());
        };
        let nonce = self.conn.nonce().to_string();
        let result = check_credentials(self.ctx.auth(), opts, nonce).await;
        if let Err(e) = &result {
            log::error!(
                "{} - cid:{} - authentication error after reload - {e}",
                self.peer,
                self.id()
            );
        }
        self.event_info = None;
        let done = self.conn.reauthorized(result)?;
        for (sid, text) in done.removed {
            log::info!(
                "{} - cid:{} - removed subscription: {text}",
                self.peer,
                self.id()
            );
            self.send(|buf| encode::write_err(buf, &text));
            self.remove_sub(&sid);
        }
        // Subscriptions that stay get the new deny filter and reply log: each one
        // whose filter changed is replaced in the index in one router batch (the new
        // one added with the old one's counts, the old one removed), so no message
        // falls between them; the old one stops delivering once the swap is visible.
        let mut replaced = Vec::new();
        let kept: Vec<Arc<Subscription>> = self.subs.values().cloned().collect();
        for old in kept {
            let new = self.new_subscription(&old.subject, old.queue.as_deref(), &old.sid);
            let same_log = match (&new.replies, &old.replies) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if new.deny == old.deny && same_log {
                continue;
            }
            new.carry_counts_from(&old);
            let new = Arc::new(new);
            self.subs.insert(old.sid.clone(), new.clone());
            self.changes.push(SubChange::Add(new));
            self.changes.push(SubChange::Remove(old.clone()));
            replaced.push(old);
        }
        if !replaced.is_empty() {
            self.sync_subscriptions().await;
            for old in replaced {
                old.close();
            }
        }
        Ok(())
    }

    /// A subscription of this connection, with its permissions' delivery filter.
    fn new_subscription(&self, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) -> Subscription {
        let mut sub = Subscription::for_client(
            self.shared.clone(),
            subject,
            queue,
            sid,
            self.conn.options().headers,
        );
        let (deny, replies) = self.conn.delivery_filter(subject);
        sub.deny = deny.into();
        sub.replies = replies;
        sub
    }

    fn publish(&mut self, p: Publish<'_>) {
        // Taken out and put back: no reference count touched per message.
        let from = match self.event_info.take() {
            Some(info) => info,
            None => Arc::new(self.describe()),
        };
        let msg = Message {
            subject: p.subject,
            reply: p.reply,
            headers: p.headers,
            data: p.data,
            from: Some(&from),
        };
        let echo = self.conn.options().echo;
        let reach = self.publisher.publish(&self.account, &msg, self.id(), echo);
        self.event_info = Some(from);
        if reach.delivered > 0 {
            self.out_msgs += reach.delivered;
            self.out_bytes += reach.delivered * p.data.len() as u64;
        } else if reach.no_interest && self.conn.options().no_responders {
            if let Some(reply) = p.reply {
                self.no_responders(p.subject, reply);
            }
        }
    }

    /// Tells a requester nobody listens on `subject`: a 503 status message on its reply
    /// subject, to one of its own subscriptions that matches it.
    fn no_responders(&mut self, subject: &[u8], reply: &[u8]) {
        let me = self.id();
        let reply_matches = self.publisher.cache.get(&self.account.index(), reply);
        let Some(sub) = reply_matches
            .plain
            .iter()
            .chain(reply_matches.queues.iter().flat_map(|g| g.members.iter()))
            .find(|s| s.client_id() == me && !s.is_closed())
        else {
            return;
        };
        let sid = sub.sid.clone();
        self.send(|buf| encode::write_no_responders(buf, reply, &sid, subject));
    }

    fn unsubscribe(&mut self, sid: &[u8], max: Option<u64>) {
        let Some(sub) = self.subs.get(sid) else {
            return;
        };
        if let Some(max) = max {
            if !sub.limit_deliveries(max) {
                return;
            }
        }
        self.remove_sub(sid);
    }

    fn remove_sub(&mut self, sid: &[u8]) {
        if let Some(sub) = self.subs.remove(sid) {
            sub.close();
            self.conn.unsubscribed(sid);
            self.changes.push(SubChange::Remove(sub));
        }
    }

    /// Waits, before reading more, for subscribers this batch found falling behind
    /// (at most [`STALL_TOTAL`]): the reference's fast-producer stall. Meanwhile this
    /// connection's socket fills and TCP slows its sender.
    async fn wait_stalled(&mut self) {
        let stats = &self.ctx.stats;
        let stalled = self.publisher.flush.wait_stalled(STALL_TOTAL).await;
        stats.stalls.fetch_add(stalled.waits, Ordering::Relaxed);
        if stalled.spent < STALL_MAX {
            return;
        }
        // Rate-limited as the reference's warning: once a second node-wide.
        let now_ms = (runtime::now_unix_ns() / 1_000_000).max(0) as u64;
        let last = stats.stall_logged_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= 1000;
        if due
            && stats
                .stall_logged_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "{} - cid:{} - Producer was stalled for a total of {}ms",
                self.peer,
                self.id(),
                stalled.spent.as_millis()
            );
        }
    }

    /// Work deferred to the end of a read batch: one router message for all the
    /// subscription changes, one wake per outbound queue touched, the stats.
    fn end_batch(&mut self) {
        if !self.changes.is_empty() {
            self.account.send(std::mem::take(&mut self.changes));
        }
        // Wakes the queues touched; the stalled ones stay noted for `wait_stalled`.
        self.publisher.flush.flush();
        self.total_in_msgs += self.in_msgs;
        self.total_in_bytes += self.in_bytes;
        // Node-wide counters are shared atomics: add to them once per batch.
        let stats = &self.ctx.stats;
        for (local, shared) in [
            (&mut self.in_msgs, &stats.in_msgs),
            (&mut self.in_bytes, &stats.in_bytes),
            (&mut self.out_msgs, &stats.out_msgs),
            (&mut self.out_bytes, &stats.out_bytes),
        ] {
            if *local > 0 {
                shared.fetch_add(std::mem::take(local), Ordering::Relaxed);
            }
        }
    }

    /// This connection as server events name it.
    fn describe(&self) -> ClientInfo {
        let opts = self.conn.options();
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        ClientInfo {
            start: crate::jetstream::api::format_time(self.started_ns),
            host: self.peer.ip().to_string(),
            id: self.id(),
            acc: self.account.name.clone(),
            user: self.conn.user().unwrap_or_default().to_string(),
            name: text(&opts.name),
            lang: text(&opts.lang),
            ver: text(&opts.version),
            server: self.ctx.server_name.clone(),
            kind: "Client",
            client_type: if self.transport == "websocket" {
                "websocket"
            } else {
                "nats"
            },
        }
    }

    /// What `/connz` shows of this connection.
    fn snapshot(&self) -> ConnSnapshot {
        let idle = runtime::now().saturating_duration_since(self.conn.last_activity());
        let now_ns = runtime::now_unix_ns();
        let (out_msgs, out_bytes) = self.shared.out.delivered();
        let opts = self.conn.options();
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let (tls_version, tls_cipher_suite) = self.tls_session.clone().unwrap_or_default();
        ConnSnapshot {
            cid: self.id(),
            ip: self.peer.ip().to_string(),
            port: self.peer.port(),
            start_ns: self.started_ns,
            last_activity_ns: now_ns.saturating_sub(idle.as_nanos().min(i64::MAX as u128) as i64),
            pending_bytes: self.shared.out.pending() as u64,
            in_msgs: self.total_in_msgs + self.in_msgs,
            in_bytes: self.total_in_bytes + self.in_bytes,
            out_msgs,
            out_bytes,
            name: text(&opts.name),
            lang: text(&opts.lang),
            version: text(&opts.version),
            transport: self.transport,
            authorized_user: self.conn.user().unwrap_or_default().to_string(),
            tls_version,
            tls_cipher_suite,
            subs: self
                .subs
                .values()
                .map(|sub| SubSnapshot {
                    subject: String::from_utf8_lossy(&sub.subject).into_owned(),
                    queue: sub
                        .queue
                        .as_ref()
                        .map(|q| String::from_utf8_lossy(q).into_owned()),
                    sid: String::from_utf8_lossy(&sub.sid).into_owned(),
                    msgs: sub.delivered(),
                    cid: self.id(),
                })
                .collect(),
        }
    }

    /// Queues bytes of our own (replies, errors); they are never refused for size.
    fn send(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(true) = self.shared.out.push_control(write) {
            self.publisher.flush.add(self.shared.clone());
        }
    }

    fn info(&self, after_connect: bool) -> crate::proto::ServerInfo {
        let mut info = self.ctx.info_for(self.id(), self.peer.ip());
        info.nonce = self.conn.nonce().to_string();
        if after_connect {
            info.connect_info = true;
            info.remote_account = self.account.name.clone();
        }
        info
    }

    fn send_info(&mut self, after_connect: bool) {
        let info = self.info(after_connect);
        self.send(|buf| encode::write_info(buf, &info));
    }

    fn send_err(&mut self, err: WireError) {
        if let Some(text) = err.text() {
            self.send(|buf| encode::write_err(buf, text));
        }
    }

    /// Closes the connection: unsubscribes everything, sends the error (if any), lets
    /// the writer drain and waits for it.
    async fn finish(&mut self, ended: Ended, writer: runtime::Task<()>) {
        let reason = match &ended {
            Ended::ClientClosed => "Client Closed",
            Ended::ReadError => "Read Error",
            Ended::Error(e) => e.reason(),
        };
        if let Ended::Error(e) = ended {
            if e.is_slow_consumer() {
                self.ctx
                    .stats
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed);
            }
            if e == WireError::SlowConsumerPendingBytes {
                log::info!(
                    "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
                    self.peer,
                    self.id(),
                    self.shared.out.max_pending()
                );
            }
            self.send_err(e);
        }
        let sids: Vec<Box<[u8]>> = self.subs.keys().cloned().collect();
        for sid in sids {
            self.remove_sub(&sid);
        }
        self.end_batch();
        self.shared.out.close();
        self.shared.close_mailbox();
        let deadline = self.ctx.config().write_deadline.0;
        let _ = runtime::timeout(deadline, writer).await;
        log::debug!("client {} closed: {reason}", self.id());
    }
}
