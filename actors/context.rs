//! What every actor of a node may read: the config (swapped on reload), the node's
//! identity and counters, its accounts, the client listeners' TLS and WebSocket setup,
//! and the small helpers every floor shares (nonces, short ids).
//!
//! This is the floor under every actor that serves connections: it knows nothing of
//! them (no cluster, mesh or monitor handles live here: the node keeps those).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::router::Account;
use super::runtime::{self, Spawner};
use super::subscription::Peers;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::proto::info::{COMPAT_VERSION, PROTO};
use crate::proto::{ServerInfo, WireError};

/// Node-wide counters (atomics: written by many actors, read by monitoring).
#[derive(Default, Debug)]
pub struct Stats {
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_msgs: AtomicU64,
    pub out_bytes: AtomicU64,
    pub slow_consumers: AtomicU64,
    /// Times a client publisher waited at a stalled subscriber queue.
    pub stalls: AtomicU64,
    /// When a stalled producer was last logged (Unix ms), so the
    /// warning comes at most once a second, as the reference rate-limits it.
    pub stall_logged_ms: AtomicU64,
    pub total_connections: AtomicU64,
    /// Client connections open now (the listener counts them).
    pub connections: AtomicU64,
    /// `$SYS` events and replies sent (their `server.seq`).
    pub events: AtomicU64,
}

impl Stats {
    /// Counts a connection closed for `error` if it is a slow consumer, and logs a
    /// cut at `max_pending` as the reference does (the write deadline's cut is logged
    /// where it happens, in the writer).
    pub fn slow_consumer(
        &self,
        who: &impl std::fmt::Display,
        error: WireError,
        max_pending: usize,
    ) {
        if error.is_slow_consumer() {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
        if error == WireError::SlowConsumerPendingBytes {
            log::info!("{who} - Slow Consumer Detected: MaxPending of {max_pending} Exceeded");
        }
    }
}

/// A connection's message counts: kept locally, added to the node's counters once per
/// read batch (they are shared atomics), and totalled for monitoring.
#[derive(Debug, Default)]
pub struct Traffic {
    in_msgs: u64,
    in_bytes: u64,
    out_msgs: u64,
    out_bytes: u64,
    /// Folded so far.
    total_in_msgs: u64,
    total_in_bytes: u64,
}

impl Traffic {
    pub fn received(&mut self, bytes: usize) {
        self.in_msgs += 1;
        self.in_bytes += bytes as u64;
    }

    pub fn sent(&mut self, deliveries: u64, bytes: usize) {
        self.out_msgs += deliveries;
        self.out_bytes += deliveries * bytes as u64;
    }

    pub fn in_msgs(&self) -> u64 {
        self.total_in_msgs + self.in_msgs
    }

    pub fn in_bytes(&self) -> u64 {
        self.total_in_bytes + self.in_bytes
    }

    /// Adds what was counted since the last call to the node's counters.
    pub fn fold_into(&mut self, stats: &Stats) {
        self.total_in_msgs += self.in_msgs;
        self.total_in_bytes += self.in_bytes;
        for (local, shared) in [
            (&mut self.in_msgs, &stats.in_msgs),
            (&mut self.in_bytes, &stats.in_bytes),
            (&mut self.out_msgs, &stats.out_msgs),
            (&mut self.out_bytes, &stats.out_bytes),
        ] {
            if *local > 0 {
                shared.fetch_add(std::mem::take(local), std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// What every actor of a node may read: the config, identity, accounts, counters.
pub struct ServerContext {
    /// The running config; a reload swaps it (read it through [`ServerContext::config`]).
    pub(super) config: arc_swap::ArcSwap<Config>,
    pub server_id: String,
    pub server_name: String,
    pub client_addr: SocketAddr,
    /// The global account `$G`: every connection's when no accounts are configured,
    /// and that of users in `[authorization]`.
    pub global: Arc<Account>,
    /// Every account by name (`$G` and the system account included). In operator
    /// mode an account pushed while the node runs is added ([`ServerContext::add_account`]);
    /// none is ever removed.
    pub(super) accounts: arc_swap::ArcSwap<std::collections::HashMap<String, Arc<Account>>>,
    /// The system account's name.
    pub system_account: String,
    pub next_client_id: AtomicU64,
    pub stats: Stats,
    pub spawner: Spawner,
    /// When the node started (for uptime and monitoring).
    pub started: std::time::SystemTime,
    /// Client authentication, compiled from the config's `[authorization]`; a reload
    /// swaps it together with the config.
    pub(super) auth: arc_swap::ArcSwap<Authenticator>,
    /// TLS for client connections, when `[tls]` is set; a reload swaps it.
    pub(super) tls: arc_swap::ArcSwapOption<TlsSetup>,
    /// The WebSocket listener's TLS and origin policy, when `[websocket]` is set.
    pub(super) websocket: arc_swap::ArcSwapOption<WsSetup>,
    /// The routes by peer name, and the Raft inbox (see [`Peers`]).
    pub peers: Peers,
}

/// TLS for a listener configured with just a certificate and key (the WebSocket and
/// monitoring listeners); `section` names it in errors.
pub fn listener_tls(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    section: &str,
) -> Result<Option<futures_rustls::TlsAcceptor>, String> {
    let server = crate::tls::listener_config(cert, key, section, &runtime::read_file)
        .map_err(|e| e.to_string())?;
    Ok(server.map(futures_rustls::TlsAcceptor::from))
}

/// What a new WebSocket connection needs: TLS (wss://) and the origin policy.
pub struct WsSetup {
    pub acceptor: Option<futures_rustls::TlsAcceptor>,
    pub policy: crate::websocket::OriginPolicy,
    pub handshake_timeout: std::time::Duration,
    /// The largest message (tungstenite's message limit is set from it).
    pub max_payload: usize,
}

impl WsSetup {
    /// The WebSocket listener's setup from `config` (`None` without `[websocket]`).
    pub fn load(config: &Config) -> Result<Option<Arc<WsSetup>>, String> {
        let ws = &config.websocket;
        if ws.listen.is_none() {
            return Ok(None);
        }
        let acceptor = listener_tls(&ws.cert_file, &ws.key_file, "websocket")?;
        let policy = crate::websocket::OriginPolicy::new(&ws.allowed_origins)
            .map_err(|e| format!("key `websocket.allowed_origins`: {e}"))?;
        Ok(Some(Arc::new(WsSetup {
            acceptor,
            policy,
            handshake_timeout: ws.handshake_timeout(),
            max_payload: config.max_payload.as_usize(),
        })))
    }
}

/// What a new client connection needs for TLS.
pub struct TlsSetup {
    pub acceptor: futures_rustls::TlsAcceptor,
    pub timeout: std::time::Duration,
    pub handshake_first: bool,
    pub verify: bool,
}

impl TlsSetup {
    /// The client listener's TLS from `config` (`None` without `[tls]`).
    pub fn load(config: &Config) -> Result<Option<Arc<TlsSetup>>, String> {
        if !config.tls.enabled() {
            return Ok(None);
        }
        let server = crate::tls::server_config(&config.tls, "tls", &runtime::read_file)
            .map_err(|e| e.to_string())?;
        if config.tls.ca_file.is_some() && !config.tls.verify {
            // nats-server accepts this too (and ignores the CA): configs port over.
            log::warn!(
                "tls.ca_file is set but tls.verify is not: client certificates are neither asked for nor checked (set verify = true for mutual TLS)"
            );
        }
        Ok(Some(Arc::new(TlsSetup {
            acceptor: futures_rustls::TlsAcceptor::from(server),
            timeout: config.tls.timeout(),
            handshake_first: config.tls.handshake_first,
            verify: config.tls.verify,
        })))
    }
}

impl ServerContext {
    /// The config as it is now. Connections take their limits from it when they start
    /// (so a reload applies to new connections) and their timers on every tick.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Client authentication as configured now.
    pub fn auth(&self) -> Arc<Authenticator> {
        self.auth.load_full()
    }

    /// TLS as configured now (`None`: plain TCP).
    pub fn tls(&self) -> Option<Arc<TlsSetup>> {
        self.tls.load_full()
    }

    /// The WebSocket listener's setup as configured now.
    pub fn websocket(&self) -> Option<Arc<WsSetup>> {
        self.websocket.load_full()
    }

    /// The account named `name`, if this node has it.
    /// The `server` block of a `$SYS` event or reply sent now.
    pub fn server_block(&self) -> crate::events::ServerBlock {
        let jetstream = self.config().jetstream.enabled;
        crate::events::ServerBlock {
            name: self.server_name.clone(),
            host: self.client_addr.ip().to_string(),
            id: self.server_id.clone(),
            ver: crate::proto::info::COMPAT_VERSION.to_string(),
            jetstream,
            flags: u64::from(jetstream),
            seq: self.stats.events.fetch_add(1, Ordering::Relaxed) + 1,
            time: crate::jetstream::api::format_time(super::runtime::now_unix_ns()),
        }
    }

    pub fn account(&self, name: &str) -> Option<Arc<Account>> {
        self.accounts.load().get(name).cloned()
    }

    /// Every account, at this moment.
    pub fn accounts(&self) -> Arc<std::collections::HashMap<String, Arc<Account>>> {
        self.accounts.load_full()
    }

    /// The account named `name`, started now if this node did not have it (an account
    /// JWT pushed while the node runs): every route up hears its interest. Returns
    /// whether it is new.
    pub fn add_account(&self, name: &str) -> (Arc<Account>, bool) {
        if let Some(account) = self.account(name) {
            return (account, false);
        }
        let account = Account::start(name, &self.spawner);
        let mut added = false;
        self.accounts.rcu(|map| {
            let mut map = std::collections::HashMap::clone(map);
            added = !map.contains_key(name);
            map.entry(name.to_string())
                .or_insert_with(|| account.clone());
            map
        });
        let account = self.account(name).unwrap_or(account);
        // A route that came up before the insertion is attached here; one that comes
        // up after attaches itself (attaching twice is harmless).
        for route in self.peers.routes() {
            account.send(vec![super::router::SubChange::AttachRoute(route)]);
        }
        (account, added)
    }

    /// Entries in every account's subject index.
    pub fn subscriptions(&self) -> u64 {
        self.accounts
            .load()
            .values()
            .map(|a| a.index().len() as u64)
            .sum()
    }

    /// The INFO a client sees.
    pub fn info_for(&self, client_id: u64, client_ip: IpAddr) -> ServerInfo {
        ServerInfo {
            server_id: self.server_id.clone(),
            server_name: self.server_name.clone(),
            version: COMPAT_VERSION.to_string(),
            proto: PROTO,
            host: self.client_addr.ip().to_string(),
            port: self.client_addr.port(),
            headers: true,
            max_payload: self.config().max_payload.0,
            // As the reference: clients (nats.ws, nats.js) read it to offer JetStream.
            jetstream: self.config().jetstream.enabled,
            auth_required: self.auth.load().advertised(),
            tls_required: self.tls.load().is_some(),
            tls_verify: self.tls.load().as_ref().is_some_and(|t| t.verify),
            client_id,
            client_ip: client_ip.to_string(),
            // Always, as the reference: the JetStream API level this server speaks.
            api_lvl: u64::from(crate::jetstream::api::API_LEVEL),
            ..ServerInfo::default()
        }
    }
}

/// A fresh nonce for INFO: 11 random bytes, base64url without padding (15 characters),
/// as the reference makes them.
pub fn new_nonce() -> String {
    use base64::Engine;
    let mut raw = [0u8; 11];
    if getrandom::fill(&mut raw).is_err() {
        // No system randomness: a nonce from a seeded generator still differs per
        // connection, which is what a replayed signature needs to fail.
        fastrand::fill(&mut raw);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The first characters of a server id or a public key, enough to tell nodes apart in
/// a log line.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
