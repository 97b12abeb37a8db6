//! A client connection's protocol rules, without sockets or clocks: what the server
//! answers to each operation, when it closes, what it lets a client publish and
//! subscribe to, when it pings — the rules nats-server applies, as a state machine the
//! client actor drives.
//!
//! # Call order
//!
//! 1. [`Connection::new`] when the connection is accepted (with the authenticator, the
//!    limits, the nonce sent in INFO and the time).
//! 2. For every read: [`Connection::received`] with the time, then for each operation the
//!    parser gives, [`Connection::handle`]. It returns a [`Step`] to carry out in
//!    order: replies to queue, whether to wait until the connection's subscription
//!    changes are visible to publishers, then one [`Action`] (a subscription change,
//!    a publish, a violation to report, authenticating a CONNECT, or closing), then
//!    more replies.
//! 3. After an [`Action::Authenticate`], the driver checks the credentials (off the
//!    executor when slow) and hands the result to [`Connection::authenticated`],
//!    which returns the next actions; no other operation is handled meanwhile.
//! 4. [`Connection::synced`] after the driver made the subscription changes visible.
//! 5. On its ping timer: [`Connection::tick`] (a PING to send, or a close);
//!    [`Connection::auth_deadline`] says when
//!    an unauthenticated connection is closed ([`Connection::auth_timed_out`]).
//! 6. After a reload: [`Connection::reauthorize`], then [`Connection::reauthorized`]
//!    with the result.
//! 7. [`Connection::unsubscribed`] when a subscription ended by itself (its
//!    auto-unsubscribe count was reached).
//!
//! Every error text comes from [`crate::proto::errors`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::permissions::ReplyLog;
use crate::auth::{AuthError, Authenticator, Grant, LoginLimits, Permissions};
use crate::events::ClientInfo;
use crate::monitor::ConnSnapshot;
use crate::proto::errors::{self, WireError};
use crate::proto::{ConnectOptions, Op};
use crate::subject;

/// Subjects whose publish permission a connection remembers.
const PUBLISH_CACHE_MAX: usize = 1024;

/// The limits a connection runs under (from the config when it opened).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// 0: unlimited.
    pub max_subscriptions: usize,
    /// The largest message (headers and payload) a client may publish.
    pub max_payload: usize,
    pub ping_interval: Duration,
    pub max_pings_out: u32,
}

/// A reply without data of its own, for the driver to encode and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Ping,
    Pong,
    /// The INFO that follows the first PONG after CONNECT (`connect_info`).
    ConnectInfo,
    Err(WireError),
}

/// A publish the connection may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// Length of the header block at the start of `data`, if any.
    pub headers: Option<usize>,
    pub data: &'a [u8],
}

/// The one thing an operation asks of the driver besides replies.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<'a> {
    Publish(Publish<'a>),
    /// A new subscription (its delivery filter from [`Connection::delivery_filter`]).
    Subscribe {
        sid: &'a [u8],
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
    },
    /// End subscription `sid` now, or (with `max`) once it has delivered that many
    /// messages in all; the driver tells [`Connection::unsubscribed`] when it ends.
    Unsubscribe {
        sid: &'a [u8],
        max: Option<u64>,
    },
    /// A permissions violation: send `-ERR <text>` (`Permissions Violation for
    /// Publish to "…"`, or `… for Subscription to "…"` with the queue) and log `log`
    /// as an error, as the reference does; the connection stays open.
    Violation {
        text: String,
        log: String,
    },
    /// Check these credentials against the nonce, then call
    /// [`Connection::authenticated`].
    Authenticate(Box<ConnectOptions>),
    /// Close the connection, after sending the error's text if it has one.
    Close(WireError),
}

/// Replies in order (at most two on either side of an action).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replies([Option<Reply>; 2]);

impl Replies {
    fn push(&mut self, r: Reply) {
        if let Some(slot) = self.0.iter_mut().find(|s| s.is_none()) {
            *slot = Some(r);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0[0].is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = Reply> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// What the driver does for one operation, in this order: queue `before`, make the
/// subscription changes visible if `sync` says so ([`Connection::synced`] after),
/// carry out `action`, queue `after`. Small and flat: the publish path builds nothing
/// bigger than this.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step<'a> {
    pub before: Replies,
    pub sync: bool,
    pub action: Option<Action<'a>>,
    pub after: Replies,
}

impl<'a> Step<'a> {
    fn act(action: Action<'a>) -> Self {
        Step {
            action: Some(action),
            ..Step::default()
        }
    }

    fn close(e: WireError) -> Self {
        Step::act(Action::Close(e))
    }
}

/// A subscription as the connection knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sub {
    subject: Box<[u8]>,
    queue: Option<Box<[u8]>>,
}

/// What a reload did to a connection whose credentials still pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reauthorized {
    /// Subscriptions the new permissions refuse: sid and the `-ERR` text (the driver
    /// sends it and ends them).
    pub removed: Vec<(Box<[u8]>, String)>,
}

/// What a connection is, fixed once its transport is set up: how monitoring and
/// events name it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: u64,
    pub peer: SocketAddr,
    /// When it was accepted, in nanoseconds since the Unix epoch.
    pub started_ns: i64,
    /// `nats` or `websocket`.
    pub transport: &'static str,
    /// The TLS version and cipher suite, for TLS connections.
    pub tls: Option<(String, String)>,
}

/// As the reference's log lines name a client: `127.0.0.1:50000 - cid:7`.
impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} - cid:{}", self.peer, self.id)
    }
}

/// Where a connection is with its first PONG after CONNECT.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FirstPong {
    BeforeConnect,
    Due,
    Sent,
}

/// One client connection's protocol state.
pub struct Connection {
    auth: Arc<Authenticator>,
    limits: Limits,
    /// Sent in INFO for nkey users to sign; empty when none are configured.
    nonce: String,
    opts: ConnectOptions,
    /// Until CONNECT is accepted, where authentication is required: when the
    /// connection is closed for not sending it.
    auth_deadline: Option<Instant>,
    /// A CONNECT being authenticated.
    connecting: Option<Box<ConnectOptions>>,
    /// Whether the first PING after CONNECT has been answered: only that PONG is
    /// followed by the INFO with `connect_info` (for protocol 1 clients).
    first_pong: FirstPong,
    user: Option<String>,
    permissions: Arc<Permissions>,
    /// The login's own limits (a user JWT's), on top of [`Limits`].
    login_limits: LoginLimits,
    /// Publish permission answers by subject (checked once per subject).
    publish_allowed: HashMap<Box<[u8]>, bool>,
    /// The last subject found allowed, checked before the cache: a publisher mostly
    /// repeats its subject, and a compare is cheaper than a hash (measured:
    /// `scripts/bench-accounts.sh`).
    last_allowed: Vec<u8>,
    /// Requests received that this client may answer (`allow_responses`).
    replies: Option<Arc<ReplyLog>>,
    subs: HashMap<Box<[u8]>, Sub>,
    /// Subscription changes were made since the last [`Self::synced`].
    unsynced: bool,
    pings_out: u32,
    last_in: Instant,
}

impl Connection {
    /// A new connection at `now`. With authentication required it must CONNECT
    /// within the authenticator's timeout.
    pub fn new(auth: Arc<Authenticator>, limits: Limits, nonce: String, now: Instant) -> Self {
        let auth_deadline = auth.required().then(|| now + auth.timeout());
        Connection {
            auth,
            limits,
            nonce,
            opts: ConnectOptions::default(),
            auth_deadline,
            connecting: None,
            first_pong: FirstPong::BeforeConnect,
            user: None,
            permissions: crate::auth::unrestricted(),
            login_limits: LoginLimits::default(),
            publish_allowed: HashMap::new(),
            last_allowed: Vec::new(),
            replies: None,
            subs: HashMap::new(),
            unsynced: false,
            pings_out: 0,
            last_in: now,
        }
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The client's CONNECT options (defaults until it sent them).
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the client said it speaks headers (the driver's parser refuses HPUB
    /// otherwise).
    pub fn headers(&self) -> bool {
        self.opts.headers
    }

    /// The largest message this client may publish now: the node's limit, or its
    /// login's when that is lower (the driver's parser enforces it).
    pub fn max_payload(&self) -> usize {
        let login = self.login_limits.max_payload.unwrap_or(usize::MAX);
        self.limits.max_payload.min(login)
    }

    /// How many subscriptions this client may hold (`None`: no limit).
    fn max_subscriptions(&self) -> Option<usize> {
        let node = (self.limits.max_subscriptions > 0).then_some(self.limits.max_subscriptions);
        match (node, self.login_limits.max_subscriptions) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn last_activity(&self) -> Instant {
        self.last_in
    }

    /// This connection as server events describe it (JetStream's API audit).
    pub fn describe(&self, who: &Identity, account: &str, server: &str) -> ClientInfo {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        ClientInfo {
            start: crate::jetstream::api::format_time(who.started_ns),
            host: who.peer.ip().to_string(),
            id: who.id,
            acc: account.to_string(),
            user: self.user().unwrap_or_default().to_string(),
            name: text(&self.opts.name),
            lang: text(&self.opts.lang),
            ver: text(&self.opts.version),
            server: server.to_string(),
            kind: "Client",
            client_type: who.transport,
            ..ClientInfo::default()
        }
    }

    /// What `/connz` shows of this connection at `now` (`now_ns` on the wall clock);
    /// the driver adds what it counts: traffic, pending bytes, subscriptions.
    pub fn snapshot(&self, who: &Identity, now: Instant, now_ns: i64) -> ConnSnapshot {
        let idle = now.saturating_duration_since(self.last_in).as_nanos();
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let (tls_version, tls_cipher_suite) = who.tls.clone().unwrap_or_default();
        ConnSnapshot {
            cid: who.id,
            ip: who.peer.ip().to_string(),
            port: who.peer.port(),
            start_ns: who.started_ns,
            last_activity_ns: now_ns.saturating_sub(idle.min(i64::MAX as u128) as i64),
            name: text(&self.opts.name),
            lang: text(&self.opts.lang),
            version: text(&self.opts.version),
            transport: who.transport,
            authorized_user: self.user().unwrap_or_default().to_string(),
            tls_version,
            tls_cipher_suite,
            ..ConnSnapshot::default()
        }
    }

    /// When an unauthenticated connection is closed.
    pub fn auth_deadline(&self) -> Option<Instant> {
        self.auth_deadline
    }

    /// Number of subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Bytes arrived at `now`.
    pub fn received(&mut self, now: Instant) {
        self.last_in = now;
    }

    /// The driver made the subscription changes visible.
    pub fn synced(&mut self) {
        self.unsynced = false;
    }

    /// A subscription ended by itself (its auto-unsubscribe count was reached).
    pub fn unsubscribed(&mut self, sid: &[u8]) {
        if self.subs.remove(sid).is_some() {
            self.unsynced = true;
        }
    }

    /// What a subscription on `subject` may not deliver (its subscribe-deny entries
    /// that a wildcard subscription would match) and the reply log to note requests
    /// in, when the permissions are restricted.
    pub fn delivery_filter(&self, subject: &[u8]) -> (Vec<Box<[u8]>>, Option<Arc<ReplyLog>>) {
        if self.permissions.is_unrestricted() {
            return (Vec::new(), None);
        }
        (
            self.permissions.delivery_deny(subject),
            self.replies.clone(),
        )
    }

    /// The authentication timed out (past [`Self::auth_deadline`]).
    pub fn auth_timed_out(&self, now: Instant) -> bool {
        self.auth_deadline.is_some_and(|d| now >= d)
    }

    /// The ping timer fired at `now`: a PING, nothing (the client was active), or a
    /// close as a stale connection.
    pub fn tick(&mut self, now: Instant) -> Option<Step<'static>> {
        // Activity within the interval makes a PING unnecessary (as in the reference);
        // the slack keeps a CONNECT that arrived just after the timer started from
        // delaying the first PING by a whole interval.
        let interval = self.limits.ping_interval;
        if now.saturating_duration_since(self.last_in) < interval.mul_f64(0.9) {
            return None;
        }
        if self.pings_out + 1 > self.limits.max_pings_out {
            return Some(Step::close(WireError::StaleConnection));
        }
        self.pings_out += 1;
        let mut step = Step::default();
        step.after.push(Reply::Ping);
        Some(step)
    }

    /// Handles one operation.
    #[inline]
    pub fn handle<'a>(&mut self, op: Op<'a>) -> Step<'a> {
        if self.auth_deadline.is_some() && !matches!(op, Op::Connect(_)) {
            // Only CONNECT may come first where auth is required, unless clients
            // without credentials are let in as `no_auth_user` (the reference's rule).
            match self.auth.anonymous() {
                Some(grant) => self.accept(grant),
                None => return Step::close(WireError::AuthorizationViolation),
            }
        }
        let mut step = Step::default();
        match op {
            Op::Pub {
                subject,
                reply,
                headers,
                data,
            } => {
                if headers.is_some() && !self.opts.headers {
                    return Step::close(WireError::ProtocolViolation);
                }
                // The reference answers +OK before delivering (a verbose client sees
                // +OK ahead of its own echoed message), after a pedantic -ERR. That
                // -ERR is a warning: the message is still delivered, a wildcard in
                // its subject matched as a plain token.
                if self.opts.pedantic && !subject::is_valid_literal_subject(subject) {
                    step.before
                        .push(Reply::Err(WireError::InvalidPublishSubject));
                }
                if self.opts.verbose {
                    step.before.push(Reply::Ok);
                }
                if !self.may_publish(subject) {
                    let shown = String::from_utf8_lossy(subject);
                    step.action = Some(Action::Violation {
                        text: errors::publish_violation(subject),
                        log: format!("Publish Violation - Subject {shown:?}"),
                    });
                    return step;
                }
                step.sync = self.unsynced;
                step.action = Some(Action::Publish(Publish {
                    subject,
                    reply,
                    headers,
                    data,
                }));
            }
            Op::Sub {
                subject,
                queue,
                sid,
            } => self.subscribe(subject, queue, sid, &mut step),
            Op::Unsub { sid, max } => {
                if self.subs.contains_key(sid) {
                    let max = max.filter(|&m| m > 0);
                    if max.is_none() {
                        self.subs.remove(sid);
                    }
                    self.unsynced = true;
                    step.action = Some(Action::Unsubscribe { sid, max });
                }
                self.ok(&mut step.after);
            }
            Op::Ping => {
                step.sync = self.unsynced;
                step.after.push(Reply::Pong);
                // The reference follows the first PONG after CONNECT with an INFO;
                // clients (nats-py) wait for that PONG as the first line.
                if self.first_pong == FirstPong::Due {
                    self.first_pong = FirstPong::Sent;
                    if self.opts.protocol >= 1 {
                        step.after.push(Reply::ConnectInfo);
                    }
                }
            }
            Op::Pong => self.pings_out = 0,
            Op::Connect(json) => {
                // A second CONNECT changes only the options it names.
                let base = self.connecting.as_deref().unwrap_or(&self.opts);
                let Some(opts) = base.merged(json) else {
                    return Step::close(WireError::ProtocolViolation);
                };
                if !(0..=1).contains(&opts.protocol) {
                    return Step::close(WireError::InvalidClientProtocol);
                }
                if opts.no_responders && !opts.headers {
                    return Step::close(WireError::NoRespondersRequiresHeaders);
                }
                let opts = Box::new(opts);
                self.connecting = Some(opts.clone());
                step.action = Some(Action::Authenticate(opts));
            }
            // What a client may send but the server ignores, as the reference does;
            // an INFO that is not a JSON object closes the connection there.
            Op::Info(json) => {
                if !matches!(
                    serde_json::from_slice::<serde_json::Value>(json),
                    Ok(serde_json::Value::Object(_) | serde_json::Value::Null)
                ) {
                    return Step::close(WireError::ProtocolViolation);
                }
            }
            Op::Ok => {}
            Op::Err(_) => return Step::close(WireError::ProtocolViolation),
            Op::Msg { .. } => return Step::close(WireError::UnknownProtocolOperation),
        }
        step
    }

    /// The result of an [`Action::Authenticate`]: `Ok` with the replies that follow
    /// it, or the error to close with.
    pub fn authenticated(
        &mut self,
        result: Result<Grant, AuthError>,
    ) -> Result<Replies, WireError> {
        let mut out = Replies::default();
        let Some(opts) = self.connecting.take() else {
            return Ok(out);
        };
        let grant = result.map_err(|_| WireError::AuthorizationViolation)?;
        self.accept(grant);
        if self.first_pong == FirstPong::BeforeConnect {
            self.first_pong = FirstPong::Due;
        }
        self.opts = *opts;
        self.ok(&mut out);
        Ok(out)
    }

    /// After a reload: `None` when there is nothing to check (not authenticated yet:
    /// the new config applies to its CONNECT); otherwise the credentials to check
    /// again with the new authenticator, whose result goes to [`Self::reauthorized`].
    pub fn reauthorize(&mut self, auth: Arc<Authenticator>) -> Option<ConnectOptions> {
        self.auth = auth;
        if self.auth_deadline.is_some() {
            return None;
        }
        Some(self.opts.clone())
    }

    /// The result of re-checking the credentials: `Err` with the wire error to close
    /// with, or the subscriptions the new permissions refuse. Every subscription that
    /// stays should get its new [`Self::delivery_filter`].
    pub fn reauthorized(
        &mut self,
        result: Result<Grant, AuthError>,
    ) -> Result<Reauthorized, WireError> {
        let grant = result.map_err(|e| match e {
            crate::auth::AuthError::Revoked(_) => WireError::AuthenticationRevoked,
            _ => WireError::AuthorizationViolation,
        })?;
        self.accept(grant);
        let mut removed = Vec::new();
        let refused: Vec<Box<[u8]>> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                !self
                    .permissions
                    .can_subscribe(&s.subject, s.queue.as_deref())
            })
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in refused {
            if let Some(sub) = self.subs.remove(&sid) {
                let text = errors::removed_subscription(&sub.subject, sub.queue.as_deref(), &sid);
                removed.push((sid, text));
                self.unsynced = true;
            }
        }
        Ok(Reauthorized { removed })
    }

    /// The connection is authenticated as `grant`: its permissions apply from now on.
    fn accept(&mut self, grant: Grant) {
        self.auth_deadline = None;
        self.user = grant.user;
        // The requests already received stay answerable while the permission to
        // answer is the same.
        self.replies = match (grant.permissions.responses(), self.replies.take()) {
            (Some(permission), Some(log)) if log.permission() == permission => Some(log),
            (Some(permission), _) => Some(Arc::new(ReplyLog::new(permission))),
            (None, _) => None,
        };
        self.permissions = grant.permissions;
        self.login_limits = grant.limits;
        self.publish_allowed.clear();
        self.last_allowed.clear();
    }

    fn ok(&self, out: &mut Replies) {
        if self.opts.verbose {
            out.push(Reply::Ok);
        }
    }

    /// May this connection publish to `subject`?
    fn may_publish(&mut self, subject: &[u8]) -> bool {
        if self.permissions.is_unrestricted() {
            return true;
        }
        if !self.last_allowed.is_empty() && self.last_allowed == subject {
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
        if allowed {
            self.last_allowed.clear();
            self.last_allowed.extend_from_slice(subject);
        }
        // Answers to requests it received are allowed (`allow_responses`), as of the
        // time of this read.
        allowed
            || self
                .replies
                .as_ref()
                .is_some_and(|r| r.admit(subject, self.last_in))
    }

    fn subscribe<'a>(
        &mut self,
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
        step: &mut Step<'a>,
    ) {
        // The reference's order: permissions, the limit, then (for a new sid only)
        // the subject's validity.
        if !self.permissions.can_subscribe(subject, queue) {
            let text = errors::subscribe_violation(subject, queue);
            step.action = Some(Action::Violation {
                log: text.clone(),
                text,
            });
            return;
        }
        if self
            .max_subscriptions()
            .is_some_and(|limit| self.subs.len() >= limit)
        {
            step.before
                .push(Reply::Err(WireError::MaxSubscriptionsExceeded));
            return;
        }
        let new_sid = !self.subs.contains_key(sid);
        if new_sid
            && (!subject::is_valid_subject(subject)
                || queue.is_some_and(|q| q.iter().any(|&b| b == b' ' || b == b'\t')))
        {
            step.before.push(Reply::Err(WireError::InvalidSubject));
            return;
        }
        // A sid already in use is ignored, as by the reference.
        if new_sid {
            self.subs.insert(
                sid.into(),
                Sub {
                    subject: subject.into(),
                    queue: queue.map(Into::into),
                },
            );
            self.unsynced = true;
            step.action = Some(Action::Subscribe {
                sid,
                subject,
                queue,
            });
        }
        self.ok(&mut step.after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthorizationConfig;
    use crate::proto::{Parsed, Parser, ProtoError};

    const LIMITS: Limits = Limits {
        max_subscriptions: 2,
        max_payload: 1 << 20,
        ping_interval: Duration::from_secs(10),
        max_pings_out: 2,
    };

    fn authenticator(toml: &str) -> Arc<Authenticator> {
        let config: AuthorizationConfig = toml::from_str(toml).expect("auth config");
        Arc::new(Authenticator::new(&config, Duration::from_secs(2)).expect("authenticator"))
    }

    /// A fake clock: a fixed start and offsets from it (nothing here reads the time).
    struct Clock(Instant);

    impl Clock {
        fn at(&self, secs: f64) -> Instant {
            self.0 + Duration::from_secs_f64(secs)
        }
    }

    /// What every operation in `wire` asked for, in order, as text, and the parser's
    /// error.
    fn run(conn: &mut Connection, wire: &[u8]) -> (Vec<String>, Option<ProtoError>) {
        let parser = Parser::new(4096, 64);
        let mut rest = wire;
        let mut out = Vec::new();
        loop {
            match parser.parse(rest) {
                Ok(Parsed::Op(op, n)) => {
                    let step = conn.handle(op);
                    out.extend(step.before.iter().map(reply));
                    if step.sync {
                        out.push("sync".into());
                    }
                    match &step.action {
                        Some(Action::Authenticate(opts)) => {
                            out.push("authenticate".into());
                            let grant = conn.auth.authenticate(opts, conn.nonce(), 0);
                            match conn.authenticated(grant) {
                                Ok(replies) => out.extend(replies.iter().map(reply)),
                                Err(e) => out.push(format!("close {e:?}")),
                            }
                        }
                        Some(a) => out.push(describe(a)),
                        None => {}
                    }
                    out.extend(step.after.iter().map(reply));
                    rest = &rest[n..];
                }
                Ok(Parsed::Incomplete { .. }) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn reply(r: Reply) -> String {
        match r {
            Reply::Err(e) => format!("-ERR {}", e.text().unwrap_or("")),
            r => format!("{r:?}"),
        }
    }

    fn describe(a: &Action<'_>) -> String {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match a {
            Action::Violation { text, .. } => format!("-ERR {text}"),
            Action::Publish(p) => format!("publish {}", s(p.subject)),
            Action::Subscribe { sid, subject, .. } => format!("sub {} {}", s(subject), s(sid)),
            Action::Unsubscribe { sid, max } => format!("unsub {} {max:?}", s(sid)),
            Action::Authenticate(_) => "authenticate".into(),
            Action::Close(e) => format!("close {e:?}"),
        }
    }

    fn open(now: Instant) -> Connection {
        Connection::new(authenticator(""), LIMITS, String::new(), now)
    }

    #[test]
    fn verbose_ok_comes_before_the_publish_and_subscriptions_are_synced_first() {
        let clock = Clock(Instant::now());
        let mut c = open(clock.at(0.0));
        let (acts, err) = run(
            &mut c,
            b"CONNECT {\"verbose\":true,\"pedantic\":false,\"protocol\":1}\r\nSUB a 1\r\nPUB a 2\r\nhi\r\nPUB a 2\r\nhi\r\n",
        );
        assert!(err.is_none());
        assert_eq!(
            acts,
            [
                "authenticate",
                "Ok",
                "sub a 1",
                "Ok",
                "Ok",
                "sync",
                "publish a",
                "Ok",
                "sync",
                "publish a"
            ]
        );
        c.synced();
        let (acts, _) = run(&mut c, b"PUB a 0\r\n\r\nPING\r\n");
        assert_eq!(acts, ["Ok", "publish a", "Pong", "ConnectInfo"]);
        let (acts, _) = run(&mut c, b"PING\r\n");
        assert_eq!(
            acts,
            ["Pong"],
            "the connect INFO follows the first PONG only"
        );
    }

    /// The pedantic -ERR is a warning: the message still goes out (tested against
    /// the reference by `tests/wire_fuzz.rs`).
    #[test]
    fn pedantic_subjects_are_checked_and_the_connection_stays() {
        let clock = Clock(Instant::now());
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(
            &mut c,
            b"CONNECT {\"verbose\":false,\"pedantic\":true}\r\nPUB a.* 1\r\nx\r\nPUB a.b 1\r\nx\r\nSUB a..b 1\r\nSUB a.b q 2\r\n",
        );
        assert_eq!(
            acts,
            [
                "authenticate",
                "-ERR Invalid Publish Subject",
                "publish a.*",
                "publish a.b",
                "-ERR Invalid Subject",
                "sub a.b 2"
            ]
        );
    }

    #[test]
    fn max_subscriptions_and_duplicate_sids() {
        let clock = Clock(Instant::now());
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(
            &mut c,
            b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 1\r\nSUB c 2\r\nSUB d 3\r\nUNSUB 2\r\nSUB d 3\r\nUNSUB 9\r\n",
        );
        assert_eq!(
            acts,
            [
                "authenticate",
                "sub a 1",
                "sub c 2",
                "-ERR maximum subscriptions exceeded",
                "unsub 2 None",
                "sub d 3"
            ]
        );
        assert_eq!(c.subscriptions(), 2);
        let (acts, _) = run(&mut c, b"UNSUB 3 5\r\n");
        assert_eq!(acts, ["unsub 3 Some(5)"]);
        assert_eq!(c.subscriptions(), 2, "kept until its count is reached");
        c.unsubscribed(b"3");
        assert_eq!(c.subscriptions(), 1);
    }

    #[test]
    fn a_logins_limits_tighten_the_nodes() {
        let clock = Clock(Instant::now());
        let login = |limits: LoginLimits| {
            let mut c = open(clock.at(0.0));
            let parser = Parser::new(4096, 64);
            let Ok(Parsed::Op(op, _)) = parser.parse(b"CONNECT {\"verbose\":false}\r\n") else {
                panic!("CONNECT parses");
            };
            assert!(matches!(c.handle(op).action, Some(Action::Authenticate(_))));
            let grant = Grant {
                limits,
                ..c.auth
                    .authenticate(&ConnectOptions::default(), "", 0)
                    .unwrap()
            };
            c.authenticated(Ok(grant)).unwrap();
            c
        };
        // The node's two subscriptions, or the login's one.
        let mut c = login(LoginLimits::default());
        assert_eq!(c.max_payload(), LIMITS.max_payload);
        let (acts, _) = run(&mut c, b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\n");
        assert_eq!(
            acts,
            ["sub a 1", "sub b 2", "-ERR maximum subscriptions exceeded"]
        );
        let mut c = login(LoginLimits {
            max_subscriptions: Some(1),
            max_payload: Some(10),
            account_connections: None,
        });
        assert_eq!(c.max_payload(), 10);
        let (acts, _) = run(&mut c, b"SUB a 1\r\nSUB b 2\r\n");
        assert_eq!(acts, ["sub a 1", "-ERR maximum subscriptions exceeded"]);
        // None at all (a user JWT without `subs`).
        let mut c = login(LoginLimits {
            max_subscriptions: Some(0),
            ..LoginLimits::default()
        });
        let (acts, _) = run(&mut c, b"SUB a 1\r\n");
        assert_eq!(acts, ["-ERR maximum subscriptions exceeded"]);
    }

    #[test]
    fn a_reload_revokes_a_subject_the_last_publish_was_allowed() {
        let clock = Clock(Instant::now());
        let users = |publish: &str| {
            authenticator(&format!(
                "[[users]]\nuser = \"u\"\npassword = \"p\"\npermissions = {{ publish = {publish} }}\n"
            ))
        };
        let mut c = Connection::new(users(r#"["a", "b"]"#), LIMITS, String::new(), clock.at(0.0));
        let (acts, _) = run(
            &mut c,
            b"CONNECT {\"verbose\":false,\"user\":\"u\",\"pass\":\"p\"}\r\nPUB a 0\r\n\r\nPUB a 0\r\n\r\n",
        );
        assert_eq!(acts, ["authenticate", "publish a", "publish a"]);
        let after = users(r#"["b"]"#);
        let opts = c.reauthorize(after.clone()).expect("check again");
        c.reauthorized(after.authenticate(&opts, "", 0))
            .expect("still allowed");
        let (acts, _) = run(&mut c, b"PUB a 0\r\n\r\nPUB b 0\r\n\r\n");
        assert_eq!(
            acts,
            [
                "-ERR Permissions Violation for Publish to \"a\"",
                "publish b"
            ]
        );
    }

    #[test]
    fn pings_go_out_when_idle_and_an_unanswered_one_too_many_closes() {
        let clock = Clock(Instant::now());
        let mut c = open(clock.at(0.0));
        run(&mut c, b"CONNECT {}\r\n");
        c.received(clock.at(1.0));
        assert_eq!(c.tick(clock.at(5.0)), None, "active within the interval");
        let ping = || {
            let mut step = Step::default();
            step.after.push(Reply::Ping);
            Some(step)
        };
        assert_eq!(c.tick(clock.at(11.0)), ping());
        assert_eq!(c.tick(clock.at(21.0)), ping());
        assert_eq!(
            c.tick(clock.at(31.0)),
            Some(Step::close(WireError::StaleConnection))
        );
        let mut c = open(clock.at(0.0));
        assert_eq!(c.tick(clock.at(11.0)), ping());
        run(&mut c, b"PONG\r\n");
        assert_eq!(c.tick(clock.at(21.0)), ping());
        assert_eq!(c.tick(clock.at(31.0)), ping(), "PONG reset it");
    }

    #[test]
    fn auth_required_connect_first_with_a_deadline() {
        let clock = Clock(Instant::now());
        let auth = authenticator("user = \"a\"\npassword = \"pw\"\n");
        let mut c = Connection::new(auth.clone(), LIMITS, String::new(), clock.at(0.0));
        assert_eq!(c.auth_deadline(), Some(clock.at(2.0)));
        assert!(!c.auth_timed_out(clock.at(1.9)));
        assert!(c.auth_timed_out(clock.at(2.0)));
        let (acts, _) = run(&mut c, b"PING\r\n");
        assert_eq!(
            acts,
            ["close AuthorizationViolation"],
            "nothing before CONNECT"
        );
        let mut c = Connection::new(auth.clone(), LIMITS, String::new(), clock.at(0.0));
        let (acts, _) = run(&mut c, b"CONNECT {\"user\":\"a\",\"pass\":\"no\"}\r\n");
        assert_eq!(acts, ["authenticate", "close AuthorizationViolation"]);
        let mut c = Connection::new(auth, LIMITS, String::new(), clock.at(0.0));
        let (acts, _) = run(
            &mut c,
            b"CONNECT {\"user\":\"a\",\"pass\":\"pw\",\"verbose\":false,\"protocol\":1}\r\nPING\r\n",
        );
        assert_eq!(acts, ["authenticate", "Pong", "ConnectInfo"]);
        assert_eq!(c.auth_deadline(), None);
        assert_eq!(c.user(), Some("a"));
    }

    #[test]
    fn no_auth_user_lets_a_client_without_credentials_in() {
        let clock = Clock(Instant::now());
        let auth = authenticator(
            "no_auth_user = \"guest\"\n[[users]]\nuser = \"guest\"\npassword = \"x\"\npermissions = { publish = [\"open.>\"] }\n",
        );
        let mut c = Connection::new(auth, LIMITS, String::new(), clock.at(0.0));
        let (acts, _) = run(&mut c, b"PUB open.a 0\r\n\r\nPUB closed 0\r\n\r\n");
        assert_eq!(
            acts,
            [
                "Ok",
                "publish open.a",
                "Ok",
                "-ERR Permissions Violation for Publish to \"closed\""
            ]
        );
        assert_eq!(c.user(), Some("guest"));
    }

    #[test]
    fn monitoring_and_events_see_the_connect_options_the_user_and_the_idle_time() {
        let clock = Clock(Instant::now());
        let auth = authenticator("[[users]]\nuser = \"u\"\npassword = \"p\"\n");
        let mut c = Connection::new(auth, LIMITS, String::new(), clock.at(0.0));
        c.received(clock.at(1.0));
        run(
            &mut c,
            b"CONNECT {\"user\":\"u\",\"pass\":\"p\",\"name\":\"svc\",\"lang\":\"rust\",\"version\":\"0.1\"}\r\n",
        );
        let who = Identity {
            id: 7,
            peer: "127.0.0.1:50000".parse().expect("addr"),
            started_ns: 1_000_000_000,
            transport: "websocket",
            tls: Some(("1.3".into(), "TLS_AES_128_GCM_SHA256".into())),
        };
        assert_eq!(who.to_string(), "127.0.0.1:50000 - cid:7");
        let info = c.describe(&who, "$G", "node-a");
        assert_eq!(
            (
                info.id,
                info.user.as_str(),
                info.name.as_str(),
                info.lang.as_str()
            ),
            (7, "u", "svc", "rust")
        );
        assert_eq!((info.ver.as_str(), info.acc.as_str()), ("0.1", "$G"));
        assert_eq!(
            (info.client_type, info.start.as_str()),
            ("websocket", "1970-01-01T00:00:01Z")
        );
        // Read 1 s after it opened, looked at 3.5 s after: idle for 2.5 s.
        let snap = c.snapshot(&who, clock.at(3.5), 10_000_000_000);
        assert_eq!(snap.last_activity_ns, 7_500_000_000);
        assert_eq!(
            (snap.cid, snap.port, snap.start_ns),
            (7, 50000, 1_000_000_000)
        );
        assert_eq!(
            (snap.authorized_user.as_str(), snap.version.as_str()),
            ("u", "0.1")
        );
        assert_eq!(snap.tls_version, "1.3");
    }

    #[test]
    fn permission_violations_have_the_references_texts_and_keep_the_connection() {
        let clock = Clock(Instant::now());
        let auth = authenticator(
            "[[users]]\nuser = \"u\"\npassword = \"p\"\npermissions = { publish = { deny = [\"secret.>\"] }, subscribe = [\"ok.>\", \"jobs workers\"] }\n",
        );
        let mut c = Connection::new(auth, LIMITS, String::new(), clock.at(0.0));
        let (acts, _) = run(
            &mut c,
            b"CONNECT {\"user\":\"u\",\"pass\":\"p\",\"verbose\":false}\r\nPUB secret.x 0\r\n\r\nSUB no 1\r\nSUB jobs others 2\r\nSUB jobs workers 3\r\nSUB ok.> 4\r\n",
        );
        assert_eq!(
            acts,
            [
                "authenticate",
                "-ERR Permissions Violation for Publish to \"secret.x\"",
                "-ERR Permissions Violation for Subscription to \"no\"",
                "-ERR Permissions Violation for Subscription to \"jobs\" using queue \"others\"",
                "sub jobs 3",
                "sub ok.> 4",
            ]
        );
    }

    #[test]
    fn a_reload_that_narrows_permissions_removes_those_subscriptions() {
        let clock = Clock(Instant::now());
        let before = authenticator(
            "[[users]]\nuser = \"u\"\npassword = \"p\"\npermissions = { subscribe = [\"a\", \"b\"] }\n",
        );
        let mut c = Connection::new(before, LIMITS, String::new(), clock.at(0.0));
        run(
            &mut c,
            b"CONNECT {\"user\":\"u\",\"pass\":\"p\"}\r\nSUB a 1\r\nSUB b 2\r\n",
        );
        let after = authenticator(
            "[[users]]\nuser = \"u\"\npassword = \"p\"\npermissions = { subscribe = [\"a\"] }\n",
        );
        let opts = c
            .reauthorize(after.clone())
            .expect("authenticated: check again");
        let done = c
            .reauthorized(after.authenticate(&opts, "", 0))
            .expect("still allowed");
        assert_eq!(
            done.removed,
            [(
                Box::from(&b"2"[..]),
                "Permissions Violation for Subscription to \"b\" (sid \"2\")".to_string()
            )]
        );
        assert_eq!(c.subscriptions(), 1);
        let gone = authenticator("[[users]]\nuser = \"v\"\npassword = \"p\"\n");
        let opts = c.reauthorize(gone.clone()).expect("check again");
        assert_eq!(
            c.reauthorized(gone.authenticate(&opts, "", 0)),
            Err(WireError::AuthorizationViolation)
        );
    }

    #[test]
    fn max_payload_and_protocol_errors_close() {
        let clock = Clock(Instant::now());
        let mut c = open(clock.at(0.0));
        let (_, err) = run(&mut c, b"CONNECT {}\r\nPUB a 65\r\n");
        assert_eq!(err.map(|e| e.wire()), Some(WireError::MaxPayloadViolation));
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(
            &mut c,
            b"CONNECT {\"verbose\":false}\r\nHPUB a 12 12\r\nNATS/1.0\r\n\r\n\r\n",
        );
        assert_eq!(
            acts,
            ["authenticate", "close ProtocolViolation"],
            "headers not asked for"
        );
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(&mut c, b"CONNECT {\"protocol\":2}\r\n");
        assert_eq!(acts, ["close InvalidClientProtocol"]);
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(&mut c, b"CONNECT {\"no_responders\":true}\r\n");
        assert_eq!(acts, ["close NoRespondersRequiresHeaders"]);
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(&mut c, b"CONNECT {nope\r\n");
        assert_eq!(acts, ["close ProtocolViolation"]);
        let mut c = open(clock.at(0.0));
        let (acts, _) = run(&mut c, b"-ERR 'x'\r\nMSG a 1 0\r\n\r\n");
        assert_eq!(
            acts,
            ["close ProtocolViolation", "close UnknownProtocolOperation"]
        );
    }
}
