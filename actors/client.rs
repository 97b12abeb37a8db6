//! The client actor: one per client connection.
//!
//! It owns the connection's parser state, its CONNECT options, its subscriptions and
//! its match cache, and drives the pure protocol code in `crate::proto` with the
//! socket. Two tasks serve a connection: the actor proper (reads, parses, publishes,
//! answers its mailbox and its ping timer) and a writer that drains the connection's
//! [`OutboundQueue`] into the socket when it cannot be written at once. Publishing
//! appends straight to the subscribers' outbound queues; at the end of each read batch
//! the publisher flushes every queue it touched, writing inline when the subscriber's
//! socket is free (see `outbound.rs`).
//!
//! Who waits on whom: the actor awaits its account router only to make its own
//! subscription changes visible (before its own PUB or before answering PING); the
//! router never waits on a client. See `actors/README.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};

use super::mailbox::Mailbox;
use super::node::{ServerContext, TlsSetup, WsSetup};
use super::outbound::{drain, Drained, OutboundQueue, Wake, STALL_MAX, STALL_TOTAL};
use super::publish::{Message, Publisher, ReplyLog, Subscription};
use super::readbuf::ReadBuf;
use super::router::{Account, SubChange};
use super::runtime::{self, TcpStream};
use super::websocket;
use crate::auth::{Authenticator, Grant, Permissions};
use crate::events::ClientInfo;
use crate::monitor::{ConnSnapshot, SubSnapshot};
use crate::proto::{encode, ConnectOptions, Op, Parsed, Parser, WireError};
use crate::subject;

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
    /// Leaves a message for the actor; `false` once the connection has ended.
    pub fn tell(&self, control: Control) -> bool {
        self.control.send(control)
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
    let tls = match via {
        Via::Tcp => ctx.tls(),
        Via::WebSocket => None,
    };
    let websocket = match via {
        Via::Tcp => None,
        Via::WebSocket => ctx.websocket(),
    };
    // Publishers write inline only to plain TCP sockets: TLS and WebSocket bytes
    // must go through their session.
    let inline = via == Via::Tcp && tls.is_none();
    let shared = Arc::new(ClientShared {
        id,
        out: OutboundQueue::new(ctx.config().max_pending.as_usize()),
        control: Mailbox::default(),
        socket: inline.then(|| stream.clone().into()),
    });
    let handle = shared.clone();
    let spawner = ctx.spawner.clone();
    let fut = async move {
        let account = ctx.global.clone();
        let mut client = Client::new(ctx, shared, account, peer);
        log::debug!("client {id} connected from {peer} ({via:?})");
        let mut session = Session {
            client: &mut client,
            socket: stream.clone(),
        };
        // Each transport's handshake state is boxed on its own: inline, the largest
        // (wss://, ~48 KiB) would make every connection's task that large.
        match (via, tls, websocket) {
            (Via::Tcp, None, _) => session.serve(stream.clone(), stream).await,
            (Via::Tcp, Some(tls), _) => Box::pin(session.serve_tls(stream, &tls)).await,
            (Via::WebSocket, _, Some(ws)) => match &ws.acceptor {
                None => Box::pin(session.serve_ws(stream, &ws)).await,
                Some(acceptor) => Box::pin(session.serve_wss(stream, &ws, acceptor)).await,
            },
            (Via::WebSocket, _, None) => {}
        }
        let _ = session.socket.shutdown(std::net::Shutdown::Both);
        let _ = gone.send(id).await;
    };
    spawner.spawn_detached(fut);
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

/// Waits for a WebSocket connection's handshakes; `None` (logged) if they failed or
/// took too long.
async fn ws_handshake<T>(
    limit: Duration,
    handshakes: impl std::future::Future<Output = Result<T, String>>,
    peer: SocketAddr,
) -> Option<T> {
    match runtime::timeout(limit, handshakes).await {
        Some(Ok(done)) => Some(done),
        Some(Err(e)) => {
            log::debug!("{peer} - websocket handshake failed: {e}");
            None
        }
        None => {
            log::debug!("{peer} - websocket handshake timeout");
            None
        }
    }
}

/// A connection whose transport is ready: the actor reads from one half while its
/// writer task drains the outbound queue into the other.
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
        if let Some(tls) = self.client.start_tls(&stream, tls).await {
            let (reader, writer) = futures_lite::io::split(tls);
            self.serve(reader, writer).await;
        }
    }

    /// ws://: the WebSocket handshake (with the origin check), then the session in
    /// binary messages.
    async fn serve_ws(&mut self, stream: TcpStream, ws: &WsSetup) {
        self.client.transport = "websocket";
        let max_payload = self.client.ctx.config().max_payload.as_usize();
        let peer = self.client.peer;
        let handshake = websocket::accept(stream, &ws.policy, false, max_payload, peer);
        if let Some((reader, writer)) = ws_handshake(ws.handshake_timeout, handshake, peer).await {
            self.serve(reader, writer).await;
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
        if let Some(((reader, writer), details)) =
            ws_handshake(ws.handshake_timeout, handshakes, peer).await
        {
            self.client.tls_session = Some(details);
            self.serve(reader, writer).await;
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

/// Subjects whose publish permission a connection remembers.
const PUBLISH_CACHE_MAX: usize = 1024;

/// The reference's text for a refused subscription.
fn subscribe_violation(subject: &[u8], queue: Option<&[u8]>) -> String {
    let subject = String::from_utf8_lossy(subject);
    match queue {
        Some(q) => format!(
            "Permissions Violation for Subscription to \"{subject}\" using queue \"{}\"",
            String::from_utf8_lossy(q)
        ),
        None => format!("Permissions Violation for Subscription to \"{subject}\""),
    }
}

/// A fresh nonce for INFO: 11 random bytes, base64url without padding (15 characters),
/// as the reference makes them.
pub(crate) fn new_nonce() -> String {
    use base64::Engine;
    let mut raw = [0u8; 11];
    if getrandom::fill(&mut raw).is_err() {
        // No system randomness: a nonce from a seeded generator still differs per
        // connection, which is what a replayed signature needs to fail.
        fastrand::fill(&mut raw);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Checks credentials, on the blocking pool when bcrypt is involved (it is slow on
/// purpose and would stall every connection sharing this executor thread).
async fn check_credentials(
    auth: Arc<Authenticator>,
    opts: ConnectOptions,
    nonce: String,
) -> Result<Grant, crate::auth::AuthError> {
    if auth.is_slow(&opts) {
        blocking::unblock(move || auth.authenticate(&opts, &nonce)).await
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
    opts: ConnectOptions,
    /// Sends a second INFO (with `connect_info`) after the first PONG that follows
    /// CONNECT, as the reference does.
    connect_info_due: bool,
    subs: HashMap<Box<[u8]>, Arc<Subscription>>,
    /// Subscription changes not yet sent to the router.
    changes: Vec<SubChange>,
    /// Changes sent to the router without waiting for them to be applied.
    unsynced: bool,
    publisher: Publisher,
    /// The first INFO went out before the TLS handshake.
    info_sent: bool,
    /// What monitoring shows of the transport: `nats` or `websocket`, and the TLS
    /// version and cipher suite when the connection uses TLS.
    transport: &'static str,
    tls_session: Option<(String, String)>,
    /// Sent in INFO for nkey users to sign; empty when none are configured.
    nonce: String,
    /// Until CONNECT is accepted: when the connection is closed for not sending it.
    auth_deadline: Option<Instant>,
    /// The authenticated user (for logs and monitoring).
    user: Option<String>,
    /// This client as events describe it (JetStream's API audit), from its first
    /// publish on (and again after its credentials change).
    event_info: Option<Arc<ClientInfo>>,
    permissions: Arc<Permissions>,
    /// Publish permission answers by subject (permissions are checked once per
    /// subject, not once per message).
    publish_allowed: HashMap<Box<[u8]>, bool>,
    /// Requests received that this client may answer (`allow_responses`).
    replies: Option<Arc<ReplyLog>>,
    pings_out: u32,
    last_in: Instant,
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
    fn new(
        ctx: Arc<ServerContext>,
        shared: Arc<ClientShared>,
        account: Arc<Account>,
        peer: SocketAddr,
    ) -> Self {
        let parser = Parser::new(
            ctx.config().max_control_line.as_usize(),
            ctx.config().max_payload.as_usize(),
        );
        // The clock for authentication starts with the connection (TLS included).
        let auth = ctx.auth();
        let (nonce, auth_deadline) = if auth.required() {
            let nonce = if auth.wants_nonce() {
                new_nonce()
            } else {
                String::new()
            };
            (nonce, Some(runtime::now() + auth.timeout()))
        } else {
            (String::new(), None)
        };
        Client {
            ctx,
            shared,
            account,
            peer,
            parser,
            opts: ConnectOptions::default(),
            connect_info_due: false,
            subs: HashMap::new(),
            changes: Vec::new(),
            unsynced: false,
            publisher: Publisher::default(),
            info_sent: false,
            transport: "nats",
            tls_session: None,
            nonce,
            auth_deadline,
            user: None,
            event_info: None,
            permissions: crate::auth::unrestricted(),
            publish_allowed: HashMap::new(),
            replies: None,
            pings_out: 0,
            last_in: runtime::now(),
            in_msgs: 0,
            in_bytes: 0,
            out_msgs: 0,
            out_bytes: 0,
            total_in_msgs: 0,
            total_in_bytes: 0,
            started_ns: runtime::unix_ns(std::time::SystemTime::now()),
        }
    }

    /// This connection as server events name it.
    fn describe(&self) -> ClientInfo {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        ClientInfo {
            start: crate::jetstream::api::format_time(self.started_ns),
            host: self.peer.ip().to_string(),
            id: self.id(),
            acc: self.account.name.clone(),
            user: self.user.clone().unwrap_or_default(),
            name: text(&self.opts.name),
            lang: text(&self.opts.lang),
            ver: text(&self.opts.version),
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
        let idle = runtime::now().duration_since(self.last_in);
        let now = std::time::SystemTime::now();
        let (out_msgs, out_bytes) = self.shared.out.delivered();
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        ConnSnapshot {
            cid: self.id(),
            ip: self.peer.ip().to_string(),
            port: self.peer.port(),
            start_ns: self.started_ns,
            last_activity_ns: runtime::unix_ns(now.checked_sub(idle).unwrap_or(now)),
            pending_bytes: self.shared.out.pending() as u64,
            in_msgs: self.total_in_msgs + self.in_msgs,
            in_bytes: self.total_in_bytes + self.in_bytes,
            out_msgs,
            out_bytes,
            name: text(&self.opts.name),
            lang: text(&self.opts.lang),
            version: text(&self.opts.version),
            transport: self.transport,
            authorized_user: self.user.clone().unwrap_or_default(),
            tls_version: self
                .tls_session
                .as_ref()
                .map(|t| t.0.clone())
                .unwrap_or_default(),
            tls_cipher_suite: self
                .tls_session
                .as_ref()
                .map(|t| t.1.clone())
                .unwrap_or_default(),
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
                    msgs: sub.delivered.load(Ordering::Relaxed),
                    cid: self.id(),
                })
                .collect(),
        }
    }

    fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues bytes of our own (replies, errors); they are never refused for size.
    fn send(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(true) = self.shared.out.push_control(write) {
            self.publisher.flush.add(self.shared.clone());
        }
    }

    fn info(&self, after_connect: bool) -> crate::proto::ServerInfo {
        let mut info = self.ctx.info_for(self.id(), self.peer.ip());
        info.nonce = self.nonce.clone();
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

    fn ok(&mut self) {
        if self.opts.verbose {
            self.send(|buf| buf.extend_from_slice(encode::OK));
        }
    }

    /// TLS before anything else: the plain-text INFO first (unless the handshake comes
    /// first), then the handshake within its timeout. `None`: no TLS session (the
    /// client spoke plain text, offered no valid certificate, or was too slow).
    async fn start_tls(
        &mut self,
        stream: &TcpStream,
        tls: &TlsSetup,
    ) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
        if !tls.handshake_first {
            let mut line = Vec::new();
            encode::write_info(&mut line, &self.info(false));
            let mut raw = stream.clone();
            runtime::timeout(tls.timeout, raw.write_all(&line))
                .await?
                .ok()?;
            self.info_sent = true;
        }
        match runtime::timeout(tls.timeout, tls.acceptor.accept(stream.clone())).await {
            Some(Ok(session)) => {
                self.tls_session = Some(tls_session(session.get_ref().1));
                Some(session)
            }
            Some(Err(e)) => {
                log::debug!(
                    "{} - cid:{} - TLS handshake error: {e}",
                    self.peer,
                    self.id()
                );
                None
            }
            None => {
                log::debug!("{} - cid:{} - TLS handshake timeout", self.peer, self.id());
                None
            }
        }
    }

    async fn run(&mut self, stream: impl futures_lite::AsyncRead + Unpin) -> Ended {
        let shared = self.shared.clone();
        let mut stream = stream;
        if !self.info_sent {
            self.send_info(false);
            self.publisher.flush();
        }
        let mut rbuf = ReadBuf::new();
        let mut ping = runtime::interval(self.ctx.config().ping_interval.0);
        enum Event {
            Read(std::io::Result<usize>),
            Control(Control),
            Tick,
            AuthTimeout,
        }
        loop {
            let event = {
                let read = async { Event::Read(stream.read(rbuf.spare()).await) };
                let ctl = async { Event::Control(shared.control.recv().await) };
                let tick = async {
                    ping.next().await;
                    Event::Tick
                };
                let deadline = self.auth_deadline;
                let auth_timeout = async move {
                    match deadline {
                        Some(at) => {
                            runtime::sleep(at.saturating_duration_since(runtime::now())).await
                        }
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
            match event {
                Event::AuthTimeout => {
                    log::debug!(
                        "client {} ({}): authentication timeout",
                        self.id(),
                        self.peer
                    );
                    return Ended::Error(WireError::AuthenticationTimeout);
                }
                Event::Read(Ok(0)) => return Ended::ClientClosed,
                Event::Read(Err(_)) => return Ended::ReadError,
                Event::Read(Ok(n)) => {
                    rbuf.filled(n);
                    self.last_in = runtime::now();
                    let result = self.process(&mut rbuf).await;
                    self.end_batch();
                    if let Err(e) = result {
                        return Ended::Error(e);
                    }
                    if self.publisher.flush.has_stalled() {
                        self.wait_stalled().await;
                    }
                    rbuf.maybe_shrink(n);
                }
                Event::Control(ctl) => match ctl {
                    Control::Close(e) => return Ended::Error(e),
                    Control::WriteFailed => return Ended::ReadError,
                    Control::AutoUnsubscribed(sub) => {
                        if self
                            .subs
                            .get(&sub.sid)
                            .is_some_and(|s| Arc::ptr_eq(s, &sub))
                        {
                            self.remove_sub(&sub.sid.clone());
                            self.end_batch();
                        }
                    }
                    Control::Snapshot(reply) => {
                        let _ = reply.try_send(self.snapshot());
                    }
                    Control::Reauthorize => {
                        if let Err(e) = self.reauthorize().await {
                            return Ended::Error(e);
                        }
                        self.end_batch();
                    }
                    Control::LameDuck => {
                        let mut info = self.ctx.info_for(self.id(), self.peer.ip());
                        info.ldm = true;
                        self.send(|buf| encode::write_info(buf, &info));
                        self.end_batch();
                    }
                },
                Event::Tick => {
                    // Activity within the interval makes a PING unnecessary (as in the
                    // reference); the slack keeps a CONNECT that arrived just after the
                    // timer started from delaying the first PING by a whole interval.
                    let config = self.ctx.config();
                    let interval = config.ping_interval.0;
                    if runtime::now().duration_since(self.last_in) < interval.mul_f64(0.9) {
                        continue;
                    }
                    if self.pings_out + 1 > config.max_pings_out {
                        return Ended::Error(WireError::StaleConnection);
                    }
                    self.pings_out += 1;
                    self.send(|buf| buf.extend_from_slice(encode::PING));
                    self.end_batch();
                }
            }
        }
    }

    /// Handles every complete operation in the buffer.
    async fn process(&mut self, rbuf: &mut ReadBuf) -> Result<(), WireError> {
        loop {
            match self.parser.parse(rbuf.data()) {
                Ok(Parsed::Op(op, n)) => {
                    let result = self.handle(op).await;
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

    /// Work deferred to the end of a read batch: one router message for all the
    /// subscription changes, one wake per outbound queue touched, the stats.
    fn end_batch(&mut self) {
        if !self.changes.is_empty() {
            self.account.send(std::mem::take(&mut self.changes));
            self.unsynced = true;
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

    /// Makes this connection's subscription changes visible to every publisher.
    async fn sync_subscriptions(&mut self) {
        if self.changes.is_empty() && !self.unsynced {
            return;
        }
        self.account.apply(std::mem::take(&mut self.changes)).await;
        self.unsynced = false;
    }

    async fn handle(&mut self, op: Op<'_>) -> Result<(), WireError> {
        if self.auth_deadline.is_some() && !matches!(op, Op::Connect(_)) {
            // Only CONNECT may come first where auth is required, unless clients
            // without credentials are let in as `no_auth_user` (the reference's rule).
            match self.ctx.auth().anonymous() {
                Some(grant) => self.accept(grant),
                None => {
                    log::error!(
                        "{} - cid:{} - authentication error: operation before CONNECT",
                        self.peer,
                        self.id()
                    );
                    return Err(WireError::AuthorizationViolation);
                }
            }
        }
        match op {
            Op::Pub {
                subject,
                reply,
                headers,
                data,
            } => {
                if headers.is_some() && !self.opts.headers {
                    log::debug!("client {}: HPUB without headers support", self.id());
                    return Err(WireError::ProtocolViolation);
                }
                self.in_msgs += 1;
                self.in_bytes += data.len() as u64;
                // The reference answers +OK before delivering (a verbose client sees
                // +OK ahead of its own echoed message), after a pedantic -ERR.
                let valid = !self.opts.pedantic || subject::is_valid_literal_subject(subject);
                if !valid {
                    self.send_err(WireError::InvalidPublishSubject);
                }
                self.ok();
                if valid && self.may_publish(subject) {
                    self.sync_subscriptions().await;
                    // Built at the first publish: a connection that only subscribes
                    // never pays for it.
                    // Taken out and put back: no reference count touched per message.
                    let from = match self.event_info.take() {
                        Some(info) => info,
                        None => Arc::new(self.describe()),
                    };
                    self.publish(&Message {
                        subject,
                        reply,
                        headers,
                        data,
                        from: Some(&from),
                    });
                    self.event_info = Some(from);
                }
            }
            Op::Sub {
                subject,
                queue,
                sid,
            } => {
                self.subscribe(subject, queue, sid);
            }
            Op::Unsub { sid, max } => {
                self.unsubscribe(sid, max);
                self.ok();
            }
            Op::Ping => {
                self.sync_subscriptions().await;
                self.send(|buf| buf.extend_from_slice(encode::PONG));
                // The reference follows the first PONG after CONNECT with an INFO;
                // clients (nats-py) wait for that PONG as the first line.
                if self.connect_info_due {
                    self.connect_info_due = false;
                    self.send_info(true);
                }
            }
            Op::Pong => {
                self.pings_out = 0;
            }
            Op::Connect(json) => self.connect(json).await?,
            // What a client may send but the server ignores, as the reference does.
            Op::Info(_) | Op::Ok => {}
            Op::Err(_) => return Err(WireError::ProtocolViolation),
            Op::Msg { .. } => return Err(WireError::UnknownProtocolOperation),
        }
        Ok(())
    }

    async fn connect(&mut self, json: &[u8]) -> Result<(), WireError> {
        let Some(opts) = ConnectOptions::parse(json) else {
            log::debug!("client {}: malformed CONNECT", self.id());
            return Err(WireError::ProtocolViolation);
        };
        if !(0..=1).contains(&opts.protocol) {
            return Err(WireError::InvalidClientProtocol);
        }
        if opts.no_responders && !opts.headers {
            return Err(WireError::NoRespondersRequiresHeaders);
        }
        log::debug!(
            "client {}: CONNECT name={:?} lang={:?} version={:?}",
            self.id(),
            opts.name.as_deref().unwrap_or(""),
            opts.lang.as_deref().unwrap_or(""),
            opts.version.as_deref().unwrap_or("")
        );
        let auth = self.ctx.auth();
        let grant = match check_credentials(auth, opts.clone(), self.nonce.clone()).await {
            Ok(grant) => grant,
            Err(e) => {
                log::error!(
                    "{} - cid:{} - authentication error - {e}",
                    self.peer,
                    self.id()
                );
                return Err(WireError::AuthorizationViolation);
            }
        };
        self.accept(grant);
        // Only clients that speak protocol 1 (dynamic INFO) get the second INFO.
        self.connect_info_due = opts.protocol >= 1;
        self.opts = opts;
        self.ok();
        Ok(())
    }

    /// The connection is authenticated as `grant`: its permissions apply from now on.
    fn accept(&mut self, grant: Grant) {
        self.auth_deadline = None;
        self.user = grant.user;
        self.event_info = None;
        // The requests already received stay answerable while the permission to
        // answer is the same.
        self.replies = match (grant.permissions.responses(), self.replies.take()) {
            (Some(permission), Some(log)) if log.permission() == permission => Some(log),
            (Some(permission), _) => Some(Arc::new(ReplyLog::new(permission))),
            (None, _) => None,
        };
        self.permissions = grant.permissions;
        self.publish_allowed.clear();
    }

    /// Checks this connection against a reloaded authorization config: closes it if its
    /// credentials no longer pass, otherwise applies the new permissions, dropping the
    /// subscriptions they no longer allow.
    async fn reauthorize(&mut self) -> Result<(), WireError> {
        if self.auth_deadline.is_some() {
            // Not authenticated yet: the new config applies to its CONNECT.
            return Ok(());
        }
        let auth = self.ctx.auth();
        let grant = match check_credentials(auth, self.opts.clone(), self.nonce.clone()).await {
            Ok(grant) => grant,
            Err(e) => {
                log::error!(
                    "{} - cid:{} - authentication error after reload - {e}",
                    self.peer,
                    self.id()
                );
                return Err(WireError::AuthorizationViolation);
            }
        };
        self.accept(grant);
        let refused: Vec<Arc<Subscription>> = self
            .subs
            .values()
            .filter(|s| {
                !self
                    .permissions
                    .can_subscribe(&s.subject, s.queue.as_deref())
            })
            .cloned()
            .collect();
        for sub in refused {
            let text = format!(
                "{} (sid \"{}\")",
                subscribe_violation(&sub.subject, sub.queue.as_deref()),
                String::from_utf8_lossy(&sub.sid)
            );
            log::info!(
                "{} - cid:{} - removed subscription: {text}",
                self.peer,
                self.id()
            );
            self.send(|buf| encode::write_err(buf, &text));
            self.remove_sub(&sub.sid);
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
            new.max
                .store(old.max.load(Ordering::Acquire), Ordering::Release);
            new.delivered
                .store(old.delivered.load(Ordering::Acquire), Ordering::Release);
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
        let mut sub =
            Subscription::for_client(self.shared.clone(), subject, queue, sid, self.opts.headers);
        if !self.permissions.is_unrestricted() {
            sub.deny = self.permissions.delivery_deny(subject).into();
            sub.replies = self.replies.clone();
        }
        sub
    }

    /// May this connection publish to `subject`? Sends the violation if not.
    fn may_publish(&mut self, subject: &[u8]) -> bool {
        if self.permissions.is_unrestricted() {
            return true;
        }
        let allowed = match self.publish_allowed.get(subject) {
            Some(&allowed) => allowed,
            None => {
                let allowed = self.permissions.can_publish(subject);
                if self.publish_allowed.len() >= PUBLISH_CACHE_MAX {
                    self.publish_allowed.clear();
                }
                self.publish_allowed.insert(subject.into(), allowed);
                allowed
            }
        };
        if allowed || self.replies.as_ref().is_some_and(|r| r.admit(subject)) {
            return true;
        }
        let subject = String::from_utf8_lossy(subject);
        log::error!(
            "{} - cid:{} - Publish Violation - Subject {subject:?}",
            self.peer,
            self.id()
        );
        let text = format!("Permissions Violation for Publish to \"{subject}\"");
        self.send(|buf| encode::write_err(buf, &text));
        false
    }

    fn publish(&mut self, msg: &Message<'_>) {
        let reach = self
            .publisher
            .publish(&self.account, msg, self.id(), self.opts.echo);
        if reach.delivered > 0 {
            self.out_msgs += reach.delivered;
            self.out_bytes += reach.delivered * msg.data.len() as u64;
        } else if reach.no_interest && self.opts.no_responders {
            if let Some(reply) = msg.reply {
                self.no_responders(msg.subject, reply);
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

    fn subscribe(&mut self, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
        if !subject::is_valid_subject(subject) {
            self.send_err(WireError::InvalidSubject);
            return;
        }
        if let Some(q) = queue {
            if q.iter().any(|&b| b == b' ' || b == b'\t') {
                self.send_err(WireError::InvalidSubject);
                return;
            }
        }
        let limit = self.ctx.config().max_subscriptions;
        if limit > 0 && self.subs.len() >= limit {
            self.send_err(WireError::MaxSubscriptionsExceeded);
            return;
        }
        if !self.permissions.can_subscribe(subject, queue) {
            let text = subscribe_violation(subject, queue);
            log::error!("{} - cid:{} - {text}", self.peer, self.id());
            self.send(|buf| encode::write_err(buf, &text));
            return;
        }
        // A sid already in use is ignored, as by the reference.
        if !self.subs.contains_key(sid) {
            let sub = Arc::new(self.new_subscription(subject, queue, sid));
            self.subs.insert(sid.into(), sub.clone());
            self.changes.push(SubChange::Add(sub));
        }
        self.ok();
    }

    fn unsubscribe(&mut self, sid: &[u8], max: Option<u64>) {
        let Some(sub) = self.subs.get(sid) else {
            return;
        };
        if let Some(max) = max.filter(|&m| m > 0) {
            sub.max.store(max, Ordering::Release);
            if sub.delivered.load(Ordering::Acquire) < max {
                return;
            }
        }
        self.remove_sub(sid);
    }

    fn remove_sub(&mut self, sid: &[u8]) {
        if let Some(sub) = self.subs.remove(sid) {
            sub.close();
            self.changes.push(SubChange::Remove(sub));
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
        self.shared.control.close();
        let deadline = self.ctx.config().write_deadline.0;
        let _ = runtime::timeout(deadline, writer).await;
        log::debug!("client {} closed: {reason}", self.id());
    }
}
