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

use std::net::SocketAddr;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, StreamExt};

use super::context::{new_nonce, ServerContext, Traffic};
use super::publish::Publisher;
use super::readbuf::ReadBuf;
use super::router::{Account, AccountSeat, SubscriptionTable};
use super::runtime::{self, TcpStream};
use super::subscription::{ClientShared, Control, Message, Subscription};
use super::transport::{self, write_loop, Serve, Setup, Via};
use crate::auth::{AuthError, Grant, JwtIdentity};
use crate::connection::{Action, Connection, Identity, Limits, Publish, Reply, Step};
use crate::events::{self, ClientInfo};
use crate::monitor::ConnSnapshot;
use crate::proto::{encode, ConnectOptions, Parsed, Parser, WireError};

/// How much a publisher reads per batch while a subscriber it feeds stays stalled.
const THROTTLED_READ: usize = 4096;

/// Starts the actor (and its writer) for an accepted connection.
pub fn spawn(
    ctx: Arc<ServerContext>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    gone: async_channel::Sender<u64>,
    via: Via,
) -> Arc<ClientShared> {
    let setup = Setup::for_listener(&ctx, via);
    // Publishers write inline only to plain TCP sockets: TLS and WebSocket bytes
    // must go through their session.
    let inline = matches!(setup, Setup::Plain);
    let max_pending = ctx.config().max_pending.as_usize();
    let shared = Arc::new(ClientShared::new(
        id,
        max_pending,
        inline.then(|| stream.clone().into()),
    ));
    let handle = shared.clone();
    let spawner = ctx.spawner.clone();
    spawner.spawn_detached(async move {
        let mut client = Client::new(ctx, shared, peer, stream.clone());
        log::debug!("client {id} connected from {peer} ({via:?})");
        transport::open(&mut client, stream, setup, peer).await;
        let _ = client.socket.shutdown(std::net::Shutdown::Both);
        let _ = gone.send(id).await;
    });
    handle
}

/// The client actor as its transport sees it.
impl Serve for Client {
    fn first_info(&self) -> Vec<u8> {
        let mut line = Vec::new();
        encode::write_info(&mut line, &self.info(false));
        line
    }

    fn info_sent(&mut self) {
        self.info_sent = true;
    }

    fn tls_details(&mut self, details: (String, String)) {
        self.who.tls = Some(details);
    }

    fn websocket(&mut self) {
        self.who.transport = "websocket";
    }

    /// Starts the writer on one half and runs the actor on the other.
    async fn serve(
        &mut self,
        reader: impl futures_lite::AsyncRead + Unpin,
        writer: impl futures_lite::AsyncWrite + Unpin + Send + 'static,
    ) {
        let deadline = self.ctx.config().write_deadline.0;
        let (socket, shared, peer) = (self.socket.clone(), self.shared.clone(), self.who.peer);
        let writer = write_loop(writer, socket, shared, deadline, peer);
        let Some(writer) = self.ctx.spawner.spawn(writer) else {
            return;
        };
        let reason = self.run(reader).await;
        self.finish(reason, writer).await;
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
    /// Its place among the account's connections, once logged in.
    seat: Option<AccountSeat>,
    /// Who its user JWT says it is (operator mode), and when its credentials
    /// expire (Unix seconds).
    identity: Option<Arc<JwtIdentity>>,
    expires: Option<i64>,
    /// What monitoring and events show of the connection.
    who: Identity,
    parser: Parser,
    /// The protocol's rules and state.
    conn: Connection,
    /// The subscriptions, as the index holds them, by sid.
    subs: SubscriptionTable,
    publisher: Publisher,
    /// The first INFO went out before the TLS handshake.
    info_sent: bool,
    /// This client as events describe it (JetStream's API audit), from its first
    /// publish on (and again after its credentials change).
    event_info: Option<Arc<ClientInfo>>,
    traffic: Traffic,
    /// The TCP socket under any TLS or WebSocket layer, shut down at the end so that
    /// a read waiting on it ends too.
    socket: TcpStream,
}

impl Client {
    fn new(
        ctx: Arc<ServerContext>,
        shared: Arc<ClientShared>,
        peer: SocketAddr,
        socket: TcpStream,
    ) -> Self {
        let config = ctx.config();
        let parser = Parser {
            // Until a CONNECT says otherwise.
            headers: false,
            ..Parser::new(
                config.max_control_line.as_usize(),
                config.max_payload.as_usize(),
            )
        };
        let limits = Limits {
            max_subscriptions: config.max_subscriptions,
            max_payload: config.max_payload.as_usize(),
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
        let who = Identity {
            id: shared.id,
            peer,
            started_ns: runtime::now_unix_ns(),
            transport: "nats",
            tls: None,
        };
        Client {
            account: ctx.global.clone(),
            seat: None,
            identity: None,
            expires: None,
            ctx,
            shared,
            who,
            parser,
            conn,
            subs: SubscriptionTable::default(),
            publisher: Publisher::default(),
            info_sent: false,
            event_info: None,
            traffic: Traffic::default(),
            socket,
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
        let mut throttled = false;
        enum Event {
            Read(std::io::Result<usize>),
            Control(Control),
            Tick,
            AuthTimeout,
        }
        loop {
            let event = {
                // While a subscriber it feeds is not reading, the publisher reads a
                // little per stall: its socket fills and TCP holds its sender back,
                // rather than its burst filling the subscriber's queue to the cut.
                let spare = rbuf.spare();
                let window = if throttled {
                    spare.len().min(THROTTLED_READ)
                } else {
                    spare.len()
                };
                let read = async { Event::Read(stream.read(&mut spare[..window]).await) };
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
                    log::debug!("{} - authentication timeout", self.who);
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
                    throttled = self.publisher.flush.has_stalled()
                        && self
                            .publisher
                            .wait_stalled(&self.ctx.stats, &self.who)
                            .await;
                    rbuf.maybe_shrink(n);
                    if let Err(e) = result {
                        return Ended::Error(e);
                    }
                    continue;
                }
                Event::Control(ctl) => self.control(ctl).await,
                Event::Tick => match self.conn.tick(runtime::now()) {
                    Some(step) => self.step(step).await.map_err(Ended::Error),
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
            Control::AutoUnsubscribed(sub) if self.subs.holds(&sub) => self.remove_sub(&sub.sid),
            Control::AutoUnsubscribed(_) => {}
            Control::Snapshot(reply) => {
                let _ = reply.try_send(self.snapshot());
            }
            Control::Reauthorize => self.reauthorize().await.map_err(Ended::Error)?,
            Control::LameDuck => {
                let mut info = self.ctx.info_for(self.id(), self.who.peer.ip());
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
                        self.traffic.received(data.len());
                    }
                    let step = self.conn.handle(op);
                    // The common publish (nothing to reply, nothing to sync) is carried
                    // out here: no future is built for it.
                    let result = match step {
                        Step {
                            action: Some(Action::Publish(p)),
                            sync: false,
                            before,
                            after,
                        } if before.is_empty() && after.is_empty() => {
                            self.publish(p);
                            Ok(())
                        }
                        step => self.step(step).await,
                    };
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

    /// Carries out what one operation asked for, in order; `Err` closes the
    /// connection. Only a sync or an authentication awaits anything.
    #[inline]
    async fn step(&mut self, step: Step<'_>) -> Result<(), WireError> {
        for r in step.before.iter() {
            self.reply(r);
        }
        if step.sync {
            self.sync_subscriptions().await;
        }
        match step.action {
            None => {}
            Some(Action::Publish(p)) => self.publish(p),
            Some(Action::Subscribe {
                sid,
                subject,
                queue,
            }) => self.subs.add(self.new_subscription(subject, queue, sid)),
            Some(Action::Unsubscribe { sid, max }) => self.unsubscribe(sid, max),
            Some(Action::Violation { text, log }) => {
                log::error!("{} - {log}", self.who);
                self.send(|b| encode::write_err(b, &text));
            }
            Some(Action::Authenticate(opts)) => Box::pin(self.authenticate(*opts)).await?,
            Some(Action::Close(e)) => {
                if e == WireError::AuthorizationViolation {
                    log::error!(
                        "{} - authentication error: operation before CONNECT",
                        self.who
                    );
                } else if e == WireError::ProtocolViolation {
                    log::debug!("client {}: protocol violation", self.id());
                }
                return Err(e);
            }
        }
        for r in step.after.iter() {
            self.reply(r);
        }
        Ok(())
    }

    /// A CONNECT: its credentials checked (bcrypt off the executor), then accepted or
    /// closed.
    async fn authenticate(&mut self, opts: ConnectOptions) -> Result<(), WireError> {
        log::debug!(
            "client {}: CONNECT name={:?} lang={:?} version={:?}",
            self.id(),
            opts.name.as_deref().unwrap_or(""),
            opts.lang.as_deref().unwrap_or(""),
            opts.version.as_deref().unwrap_or("")
        );
        let mut result = self.check_credentials(opts, "").await;
        let (identity, expires) = result
            .as_ref()
            .map_or((None, None), |g| (g.jwt.clone(), g.expires));
        if let Ok(grant) = &result {
            // In operator mode an account the trust accepts may be new to this node
            // (pushed since start, or read from the resolver's directory).
            let account = self.ctx.account(&grant.account).or_else(|| {
                self.ctx
                    .auth()
                    .trust()
                    .is_some()
                    .then(|| super::system::activate_account(&self.ctx, &grant.account))
            });
            match account {
                _ if !grant.allows_transport(self.who.transport) => {
                    log::error!(
                        "{} - authentication error - client connection type {:?} not allowed",
                        self.who,
                        self.who.transport
                    );
                    result = Err(AuthError::NoCredentials);
                }
                Some(account) => {
                    let Some(seat) = account.take_seat(grant.limits.account_connections) else {
                        log::error!(
                            "{} - account {:?}: maximum active connections exceeded",
                            self.who,
                            grant.account
                        );
                        return Err(WireError::MaxAccountConnectionsExceeded);
                    };
                    self.seat = Some(seat);
                    self.account = account;
                    if let Some(exp) = grant.expires {
                        self.expire_at(exp);
                    }
                }
                None => {
                    log::error!(
                        "{} - authentication error - account {:?} does not exist",
                        self.who,
                        grant.account
                    );
                    result = Err(AuthError::NoCredentials);
                }
            }
        }
        for r in self.conn.authenticated(result)?.iter() {
            self.reply(r);
        }
        self.parser.max_payload = self.conn.max_payload();
        self.parser.headers = self.conn.headers();
        if self.seat.is_some() {
            (self.identity, self.expires) = (identity, expires);
            self.account_event("CONNECT", None);
        }
        Ok(())
    }

    /// Closes the connection with `User Authentication Expired` at `exp` (Unix
    /// seconds), as the reference does when a user JWT expires.
    fn expire_at(&self, exp: i64) {
        let now_ns = runtime::now_unix_ns();
        let left =
            u64::try_from(exp.saturating_mul(1_000_000_000).saturating_sub(now_ns)).unwrap_or(0);
        let shared = self.shared.clone();
        let who = self.who.to_string();
        self.ctx.spawner.spawn_detached(async move {
            runtime::sleep(std::time::Duration::from_nanos(left)).await;
            if shared.tell(Control::Close(WireError::AuthenticationExpired)) {
                log::info!("{who} - user authentication expired");
            }
        });
    }

    /// Checks credentials, on the blocking pool when bcrypt is involved (it is slow on
    /// purpose and would stall every connection sharing this executor thread).
    async fn check_credentials(
        &mut self,
        opts: ConnectOptions,
        when: &str,
    ) -> Result<Grant, AuthError> {
        let (auth, nonce) = (self.ctx.auth(), self.conn.nonce().to_string());
        let now_secs = runtime::now_unix_ns() / 1_000_000_000;
        let result = if auth.is_slow(&opts) {
            runtime::unblock(move || auth.authenticate(&opts, &nonce, now_secs)).await
        } else {
            auth.authenticate(&opts, &nonce, now_secs)
        };
        if let Err(e) = &result {
            log::error!("{} - authentication error{when} - {e}", self.who);
        }
        // Events describe the client anew from its next publish.
        self.event_info = None;
        result
    }

    fn reply(&mut self, reply: Reply) {
        match reply {
            Reply::Ok => self.send(|b| b.extend_from_slice(encode::OK)),
            Reply::Ping => self.send(|b| b.extend_from_slice(encode::PING)),
            Reply::Pong => self.send(|b| b.extend_from_slice(encode::PONG)),
            Reply::ConnectInfo => self.send_info(true),
            Reply::Err(e) => self.send_err(e),
        }
    }

    /// Makes this connection's subscription changes visible to every publisher.
    async fn sync_subscriptions(&mut self) {
        let changes = self.subs.take_changes().unwrap_or_default();
        self.account.apply(changes).await;
        self.conn.synced();
    }

    /// Checks this connection against a reloaded authorization config: closes it if its
    /// credentials no longer pass, otherwise applies the new permissions, ending the
    /// subscriptions they no longer allow.
    async fn reauthorize(&mut self) -> Result<(), WireError> {
        let Some(opts) = self.conn.reauthorize(self.ctx.auth()) else {
            return Ok(());
        };
        let mut result = self.check_credentials(opts, " after reload").await;
        if result
            .as_ref()
            .is_ok_and(|g| *g.account != *self.account.name)
        {
            // Its subscriptions live in the old account's index: a user moved to
            // another account connects again.
            log::info!("{} - user moved to another account by the reload", self.who);
            result = Err(AuthError::NoCredentials);
        }
        let done = self.conn.reauthorized(result)?;
        self.parser.max_payload = self.conn.max_payload();
        for (sid, text) in done.removed {
            log::info!("{} - removed subscription: {text}", self.who);
            self.send(|buf| encode::write_err(buf, &text));
            self.remove_sub(&sid);
        }
        // Subscriptions that stay get the new deny filter and reply log; a replaced
        // one stops delivering once the swap is visible.
        let replaced = self
            .subs
            .refilter(|subject| self.conn.delivery_filter(subject));
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
        if p.subject == events::USER_INFO {
            if let Some(reply) = p.reply {
                return self.answer_user_info(reply);
            }
        }
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
            self.traffic.sent(reach.delivered, p.data.len());
        } else if reach.no_interest && self.conn.options().no_responders {
            // A 503 on the reply subject, to one of the requester's own subscriptions.
            if let Some(reply) = p.reply {
                if let Some(sid) = self
                    .publisher
                    .own_subscription(&self.account, self.id(), reply)
                {
                    self.send(|buf| encode::write_no_responders(buf, reply, &sid, p.subject));
                }
            }
        }
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
        if self.subs.remove(sid) {
            self.conn.unsubscribed(sid);
        }
    }

    /// Work deferred to the end of a read batch: one router message for all the
    /// subscription changes, one wake per outbound queue touched, the stats.
    fn end_batch(&mut self) {
        if let Some(changes) = self.subs.take_changes() {
            self.account.send(changes);
        }
        // Wakes the queues touched; the stalled ones stay noted for `wait_stalled`.
        self.publisher.flush.flush();
        self.traffic.fold_into(&self.ctx.stats);
    }

    /// Tells the system account that this client logged in (`CONNECT`) or closed
    /// (`DISCONNECT`, with the reason), when anyone there listens.
    fn account_event(&mut self, what: &str, closed: Option<&str>) {
        let Some(system) = self.ctx.account(&self.ctx.system_account) else {
            return;
        };
        let subject = events::account_event_subject(&self.account.name, what);
        if !self.publisher.has_interest(&system, subject.as_bytes()) {
            return;
        }
        let mut client = self.describe();
        // The event's own `server` block names the server.
        client.server.clear();
        if let Some(id) = &self.identity {
            client.jwt = id.jwt.clone();
            client.issuer_key = id.issuer_key.clone();
            client.name_tag = id.account_name.clone();
        }
        let now = crate::jetstream::api::format_time(runtime::now_unix_ns());
        let id = events::event_id(&mut fastrand::Rng::new());
        let server = self.ctx.server_block();
        let body = match closed {
            None => serde_json::to_vec(&events::ConnectEvent {
                kind: events::CONNECT_EVENT,
                id,
                timestamp: now,
                server,
                client: &client,
            }),
            Some(reason) => {
                client.stop = now.clone();
                let (out_msgs, out_bytes) = self.shared.out.delivered();
                serde_json::to_vec(&events::DisconnectEvent {
                    kind: events::DISCONNECT_EVENT,
                    id,
                    timestamp: now,
                    server,
                    client: &client,
                    sent: events::DataStats {
                        msgs: self.traffic.in_msgs(),
                        bytes: self.traffic.in_bytes(),
                    },
                    received: events::DataStats {
                        msgs: out_msgs,
                        bytes: out_bytes,
                    },
                    reason,
                })
            }
        };
        match body {
            Ok(body) => self
                .publisher
                .send(&system, subject.as_bytes(), None, None, &body),
            Err(e) => log::warn!("{}: {what} event not encoded: {e}", self.who),
        }
    }

    /// Answers `$SYS.REQ.USER.INFO`: who this connection is.
    fn answer_user_info(&mut self, reply: &[u8]) {
        let identity = self.identity.clone().unwrap_or_default();
        let now_ns = runtime::now_unix_ns();
        let answer = events::UserInfoReply {
            server: self.ctx.server_block(),
            data: events::UserInfo {
                user: self.conn.user().unwrap_or_default().to_string(),
                account: self.account.name.to_string(),
                account_name: identity.account_name.clone(),
                user_name: identity.user_name.clone(),
                expires: self
                    .expires
                    .map(|exp| exp.saturating_mul(1_000_000_000).saturating_sub(now_ns)),
            },
        };
        match serde_json::to_vec(&answer) {
            Ok(body) => self.publisher.send(&self.account, reply, None, None, &body),
            Err(e) => log::warn!("{}: USER.INFO answer not encoded: {e}", self.who),
        }
    }

    /// This connection as server events name it.
    fn describe(&self) -> ClientInfo {
        let server = &self.ctx.server_name;
        self.conn.describe(&self.who, &self.account.name, server)
    }

    /// What `/connz` shows of this connection.
    fn snapshot(&self) -> ConnSnapshot {
        let (out_msgs, out_bytes) = self.shared.out.delivered();
        ConnSnapshot {
            pending_bytes: self.shared.out.pending() as u64,
            in_msgs: self.traffic.in_msgs(),
            in_bytes: self.traffic.in_bytes(),
            out_msgs,
            out_bytes,
            subs: self.subs.snapshot(self.id()),
            ..self
                .conn
                .snapshot(&self.who, runtime::now(), runtime::now_unix_ns())
        }
    }

    /// Queues bytes of our own (replies, errors); they are never refused for size.
    fn send(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(true) = self.shared.out.push_control(write) {
            self.publisher.flush.add(self.shared.clone());
        }
    }

    fn info(&self, after_connect: bool) -> crate::proto::ServerInfo {
        let mut info = self.ctx.info_for(self.id(), self.who.peer.ip());
        info.nonce = self.conn.nonce().to_string();
        if after_connect {
            info.connect_info = true;
            info.remote_account = self.account.name.clone();
            // The login's own payload limit, as the reference announces it.
            info.max_payload = self.conn.max_payload() as u64;
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
            let max_pending = self.shared.out.max_pending();
            self.ctx.stats.slow_consumer(&self.who, e, max_pending);
            self.send_err(e);
        }
        for sid in self.subs.sids() {
            self.remove_sub(&sid);
        }
        if self.seat.is_some() {
            self.account_event("DISCONNECT", Some(reason));
        }
        self.end_batch();
        self.shared.out.close();
        self.shared.close_mailbox();
        let deadline = self.ctx.config().write_deadline.0;
        let _ = runtime::timeout(deadline, writer).await;
        log::debug!("client {} closed: {reason}", self.id());
    }
}
