//! A node: the embeddable handle that starts every actor and stops them again.
//!
//! `Node::start(config)` binds the listeners (so a bad address fails right there),
//! starts the runtime and the actors, and returns once clients can connect. The handle
//! gives the client URL and stops the node at once ([`Node::shutdown`]) or gracefully
//! ([`Node::lame_duck`]). The `meshbroker` binary is a thin shell around this.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::context::{listener_tls, ServerContext, Stats, TlsSetup, WsSetup};
use super::listener::{self, Command};
use super::monitor::Planes;
use super::router::{install_imports, Account};
use super::runtime::{self, Runtime, Task};
use super::subscription::Peers;
use crate::auth::accounts::AccountPlan;
use crate::auth::accounts::GLOBAL_ACCOUNT;
use crate::auth::operator::{ResolverKind, Trust};
use crate::auth::Authenticator;
use crate::config::{Config, ListenOn};
use crate::proto::info::COMPAT_VERSION;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen for clients on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start JetStream: {0}")]
    JetStream(#[source] super::jetstream::StartError),
    #[error("cannot listen for routes on {addr}: {source}")]
    Cluster {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Mesh(#[from] super::mesh::MeshError),
    #[error("cannot listen for monitoring on {addr}: {source}")]
    Monitor {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Builds the authenticator (the config was validated: this only fails on a bug) and
/// warns where the setup is weak.
fn compile_auth(config: &Config, live: Option<&Authenticator>) -> Result<Authenticator, NodeError> {
    let mut auth = config
        .authenticator()
        .map_err(|e| NodeError::Config(format!("key `{}`: {}", e.key, e.reason)))?;
    if let Some(trust) = auth.trust() {
        let mut trust = Trust::clone(trust);
        if let ResolverKind::Full { dir } = trust.resolver().clone() {
            let stored = runtime::read_jwt_dir(std::path::Path::new(&dir))
                .map_err(|e| NodeError::Config(format!("key `resolver`: directory {dir}: {e}")))?;
            let now_secs = runtime::now_unix_ns() / 1_000_000_000;
            for refused in trust.add_stored(&stored, now_secs) {
                log::warn!("resolver directory {dir}: {refused}; left in place, not loaded");
            }
            log::info!(
                "account JWTs in {dir}: {} accounts known",
                trust.account_keys().len()
            );
        }
        // Accounts pushed while the node ran survive a reload (a MEMORY resolver's
        // only copy is the live one).
        if let Some(live) = live.and_then(Authenticator::trust) {
            trust.carry_over(live);
        }
        auth = auth.with_trust(trust);
    }
    if auth.has_plain_passwords() {
        log::warn!(
            "plain-text passwords or tokens in [authorization]: prefer bcrypt hashes or nkeys"
        );
    }
    let loopback = config.listen_addr().is_ok_and(|a| a.is_loopback());
    if !auth.required() && !loopback {
        log::warn!(
            "the client listener {} is not on loopback and [authorization] is empty: anyone who reaches it can connect",
            config.listen
        );
    }
    Ok(auth)
}

/// The accounts to start: the config's, or in operator mode those `auth` trusts (the
/// preload and the full resolver's directory). A stored account never stops the node
/// from starting: JetStream stays with the config's account when a stored JWT asks for
/// it too, and a stored set that does not fit together falls back to the config's.
fn account_plan(config: &Config, auth: &Authenticator) -> Result<AccountPlan, NodeError> {
    let from_config = config
        .account_plan()
        .map_err(|e| NodeError::Config(format!("key `{}`: {}", e.key, e.reason)))?;
    let Some(trust) = auth.trust() else {
        return Ok(from_config);
    };
    let mut accounts = trust.account_configs();
    let jetstream = from_config.jetstream_account().map(str::to_string);
    if accounts.values().filter(|a| a.jetstream).count() > 1 {
        for (name, account) in accounts.iter_mut() {
            if account.jetstream && jetstream.as_deref() != Some(name.as_str()) {
                log::warn!(
                    "account {name}: its JWT enables JetStream, which serves one account per node ({}): off here",
                    jetstream.as_deref().unwrap_or("none")
                );
                account.jetstream = false;
            }
        }
    }
    match AccountPlan::new(&accounts, trust.system_account()) {
        Ok(plan) => Ok(plan),
        Err(e) => {
            log::warn!(
                "the stored account JWTs do not fit together ({}: {}): starting with the preloaded accounts",
                e.key,
                e.reason
            );
            Ok(from_config)
        }
    }
}

/// Sets the process's log level from the config, unless `RUST_LOG` chose the filter
/// (the binary sets up its logger to let everything through and filters here, so a
/// reload can change the level).
pub fn apply_log_level(level: crate::config::LogLevel) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level.as_filter());
    }
}

/// A running node.
pub struct Node {
    runtime: Option<Runtime>,
    ctx: Arc<ServerContext>,
    commands: async_channel::Sender<Command>,
    listener: Option<Task<()>>,
    /// JetStream's store, closed once the runtime (and every stream) has stopped.
    store_closed: Option<super::storage::Closed>,
    /// Where the monitoring endpoint listens, when it is on.
    monitor_addr: Option<SocketAddr>,
    /// Where the WebSocket listener listens, when it is on.
    websocket_addr: Option<SocketAddr>,
    /// Where the cluster listener listens, when it is on.
    cluster_addr: Option<SocketAddr>,
    /// The cluster and mesh actors, when configured (monitoring reads them too).
    planes: Arc<Planes>,
}

impl Node {
    /// Starts a node from a validated config and returns once it accepts clients.
    pub fn start(config: Config) -> Result<Node, NodeError> {
        config
            .validate(std::path::Path::new("<embedded config>"))
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let server_id = new_server_id();
        let server_name = config
            .server_name
            .clone()
            .unwrap_or_else(|| server_id.clone());
        // The mesh comes first: the cluster, and every listener on `mesh:`, listen on
        // its address.
        let mut mesh = if config.mesh.enabled() {
            let cluster_name = config.cluster.name.as_deref().unwrap_or_default();
            Some(super::mesh::prepare(
                &config.mesh,
                &server_name,
                cluster_name,
            )?)
        } else {
            None
        };
        let mut mesh_listeners = Vec::new();
        let on = config.listen_addr().map_err(NodeError::Config)?;
        let (listener, addr) = bind(on, mesh.as_ref(), &mut mesh_listeners, |addr, source| {
            NodeError::Listen { addr, source }
        })?;
        let client_addr = listener
            .local_addr()
            .map_err(|source| NodeError::Listen { addr, source })?;
        if let Some(mesh) = &mut mesh {
            // Client members are told the client port when clients can use it there:
            // on the mesh address, or a wildcard of its family (`[::]` takes both).
            let ip = client_addr.ip();
            let wildcard = ip.is_unspecified() && (ip.is_ipv6() || mesh.address().is_ipv4());
            let on_mesh = on.on_mesh() || wildcard;
            mesh.set_client_port(on_mesh.then_some(client_addr.port()));
        }
        let rt = Runtime::start(runtime::threads_for(config.threads), "meshbroker")
            .map_err(NodeError::Runtime)?;
        let spawner = rt.spawner();
        let auth = compile_auth(&config, None)?;
        let plan = account_plan(&config, &auth)?;
        let accounts: HashMap<String, Arc<Account>> = plan
            .accounts
            .iter()
            .map(|a| (a.name.clone(), Account::start(&a.name, &spawner)))
            .collect();
        let global = accounts
            .get(GLOBAL_ACCOUNT)
            .cloned()
            .unwrap_or_else(|| Account::start(GLOBAL_ACCOUNT, &spawner));
        let mut secret = [0u8; 32];
        if getrandom::fill(&mut secret).is_err() {
            fastrand::fill(&mut secret);
        }
        let node_tag: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(6)
            .collect();
        install_imports(&plan, &accounts, &node_tag, &secret);
        let tls = TlsSetup::load(&config).map_err(NodeError::Config)?;
        let ws = WsSetup::load(&config).map_err(NodeError::Config)?;
        let ws_on = config.websocket.addr().map_err(NodeError::Config)?;
        let ws_listener = match ws_on {
            Some(on) => Some(
                bind(on, mesh.as_ref(), &mut mesh_listeners, |addr, source| {
                    NodeError::Listen { addr, source }
                })?
                .0,
            ),
            None => None,
        };
        let websocket_addr = ws_listener.as_ref().and_then(|l| l.local_addr().ok());
        let ctx = Arc::new(ServerContext {
            websocket: arc_swap::ArcSwapOption::new(ws),
            auth: arc_swap::ArcSwap::from_pointee(auth),
            tls: arc_swap::ArcSwapOption::new(tls),
            config: arc_swap::ArcSwap::from_pointee(config),
            server_id,
            server_name,
            client_addr,
            global,
            accounts: arc_swap::ArcSwap::from_pointee(accounts),
            system_account: plan.system_account.clone(),
            next_client_id: AtomicU64::new(1),
            stats: Stats::default(),
            spawner: spawner.clone(),
            started: runtime::wall_clock(),
            peers: Peers::default(),
        });
        let mut store_closed = None;
        let mut js_view = None;
        let js_account = plan.jetstream_account().and_then(|name| ctx.account(name));
        if ctx.config().jetstream.enabled {
            // Every other account answers its JetStream requests as not enabled.
            for spec in &plan.accounts {
                let enabled = js_account.as_ref().is_some_and(|a| a.name == spec.name);
                if !enabled && spec.name != plan.system_account {
                    if let Some(account) = ctx.account(&spec.name) {
                        super::jetstream::serve_disabled(account, &spawner);
                    }
                }
            }
            if js_account.is_none() {
                log::warn!("[jetstream] is enabled but no account has `jetstream = true`: no account can use it");
            }
        }
        if let (true, Some(js_account)) = (ctx.config().jetstream.enabled, js_account) {
            let started = runtime::block_on(super::jetstream::start(
                &ctx,
                &ctx.config().jetstream,
                js_account,
                spawner.clone(),
                ctx.server_name.clone(),
            ))
            .map_err(NodeError::JetStream)?;
            store_closed = Some(started.closed);
            js_view = Some(super::monitor::JetStreamView {
                usage: started.usage,
                meta: started.meta,
                raft: started.raft,
            });
        }
        let (commands, command_rx) = async_channel::unbounded();
        {
            let commands = commands.clone();
            // A pushed JWT may change the JetStream account's limits too.
            let jetstream = js_view
                .as_ref()
                .map(|v| v.usage.clone())
                .zip(plan.jetstream_account().map(str::to_string));
            let resolver_ctx = Arc::downgrade(&ctx);
            super::system::start_resolver(&ctx, move || {
                if let (Some((usage, account)), Some(ctx)) = (&jetstream, resolver_ctx.upgrade()) {
                    super::jetstream::apply_account_limits(&ctx, account, usage);
                }
                let _ = commands.try_send(Command::Reauthorize);
            });
        }
        // Someone can ask only where the system account is chosen (by the config or the
        // operator): a default `$SYS` has no users, and its subscriptions would only
        // add to the counts.
        if ctx.auth().trust().is_some() || ctx.config().system_account.is_some() {
            super::server_events::start(&ctx);
        }
        let planes = Arc::new(Planes::default());
        let monitor_on = ctx.config().monitor.addr().map_err(NodeError::Config)?;
        let monitor_addr = match monitor_on {
            Some(on) => {
                let monitor = &ctx.config().monitor;
                let tls = listener_tls(&monitor.cert_file, &monitor.key_file, "monitor")
                    .map_err(NodeError::Config)?;
                let (listener, addr) =
                    bind(on, mesh.as_ref(), &mut mesh_listeners, |addr, source| {
                        NodeError::Monitor { addr, source }
                    })?;
                Some(
                    super::monitor::start(
                        ctx.clone(),
                        listener,
                        tls,
                        js_view,
                        commands.clone(),
                        planes.clone(),
                    )
                    .map_err(|source| NodeError::Monitor { addr, source })?,
                )
            }
            None => None,
        };
        if let Some(mesh) = &mesh {
            let faces = [Some(on), ws_on, monitor_on];
            if faces
                .iter()
                .flatten()
                .all(|f| f.on_mesh() || f.is_loopback())
            {
                log::info!(
                    "every listener is on the mesh ({}) or loopback: this node's only faces on the underlay are UDP ports {} (WireGuard) and {} (mesh announcements)",
                    mesh.address(),
                    ctx.config().mesh.listen_port,
                    ctx.config().mesh.discovery_port()
                );
            }
        }
        let cluster_addr = start_cluster(&ctx, &planes, mesh, mesh_listeners)?;
        let listener_task = spawner.spawn(listener::run(
            ctx.clone(),
            listener,
            ws_listener,
            command_rx,
        ));
        log::info!(
            "meshbroker {} ({}) listening for clients on {client_addr}",
            env!("CARGO_PKG_VERSION"),
            ctx.server_name
        );
        if let Some(addr) = websocket_addr {
            let scheme = if ctx.config().websocket.tls() {
                "wss"
            } else {
                "ws"
            };
            log::info!("listening for websocket clients on {scheme}://{addr}");
        }
        Ok(Node {
            runtime: Some(rt),
            ctx,
            commands,
            listener: listener_task,
            store_closed,
            monitor_addr,
            websocket_addr,
            cluster_addr,
            planes,
        })
    }

    /// Where the cluster listener listens, when `[cluster]` turned it on.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster_addr
    }

    /// Which other nodes' interest a message published here on `subject` reaches now:
    /// (route id, queue group, weight) for each entry in the index.
    pub fn remote_interest(&self, subject: &str) -> Vec<(u64, Option<String>, u32)> {
        use super::subscription::Target;
        let index = self.ctx.global.index();
        let found = index.matches(subject.as_bytes());
        let mut out: Vec<(u64, Option<String>, u32)> = Vec::new();
        let subs = found
            .plain
            .iter()
            .chain(found.queues.iter().flat_map(|g| g.members.iter()));
        for sub in subs {
            if let Target::Route(route) = &sub.target {
                let queue = sub
                    .queue
                    .as_deref()
                    .map(|q| String::from_utf8_lossy(q).into_owned());
                let entry = (route.id, queue, sub.weight);
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
        out
    }

    /// The routes up now (empty without `[cluster]`).
    pub fn routes(&self) -> Vec<super::cluster::RouteSummary> {
        match (self.planes.cluster.get(), &self.runtime) {
            (Some(cluster), Some(_)) => runtime::block_on(cluster.routes()),
            _ => Vec::new(),
        }
    }

    /// The address clients connect to (with the real port when the config said 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.ctx.client_addr
    }

    /// The WebSocket listener's address, when `[websocket]` turned it on.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// The monitoring endpoint's address, when `[monitor]` turned it on.
    pub fn monitor_addr(&self) -> Option<SocketAddr> {
        self.monitor_addr
    }

    /// `nats://host:port` for client libraries.
    pub fn client_url(&self) -> String {
        format!("nats://{}", self.ctx.client_addr)
    }

    pub fn server_name(&self) -> &str {
        &self.ctx.server_name
    }

    /// Node-wide counters.
    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    /// Applies a new config to the running node (SIGHUP): the log level at once, the
    /// client limits to connections opened from now on, ping and write timers to every
    /// connection at its next tick. What needs a restart (listeners, threads, the
    /// JetStream store and its limits, monitoring, the server name) must stay as it
    /// is: a change there refuses the whole reload, and the running config stays.
    pub fn reload(&self, new: Config) -> Result<(), NodeError> {
        new.validate(std::path::Path::new("<reloaded config>"))
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let old = self.ctx.config();
        let fixed = [
            ("listen", old.listen == new.listen),
            ("server_name", old.server_name == new.server_name),
            ("threads", old.threads == new.threads),
            ("jetstream", old.jetstream == new.jetstream),
            ("monitor", old.monitor == new.monitor),
            (
                "websocket.listen",
                old.websocket.listen == new.websocket.listen,
            ),
            ("cluster", old.cluster == new.cluster),
            ("mesh", old.mesh == new.mesh),
            // Users may come and go; the accounts, their imports, exports and JetStream
            // are wired into the routers at start.
            ("accounts", old.account_shape() == new.account_shape()),
            ("system_account", old.system_account == new.system_account),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(NodeError::Config(format!(
                "key `{key}` cannot change while the node runs; restart it to apply"
            )));
        }
        let auth = compile_auth(&new, Some(&self.ctx.auth()))?;
        // Certificates are read again: a renewed certificate applies to new
        // connections; live ones keep the session they negotiated.
        let tls = TlsSetup::load(&new).map_err(NodeError::Config)?;
        let ws = WsSetup::load(&new).map_err(NodeError::Config)?;
        let (old_level, new_level) = (old.log_level, new.log_level);
        self.ctx.websocket.store(ws);
        self.ctx.auth.store(Arc::new(auth));
        self.ctx.tls.store(tls);
        self.ctx.config.store(Arc::new(new));
        // Said once the new config is in place (a connection accepted after this
        // line gets it), and before the level changes, so it is seen at the old one.
        log::info!("config reloaded (log level {old_level:?} -> {new_level:?})");
        apply_log_level(new_level);
        // Every connection checks its credentials and permissions against the new
        // configuration: refused ones are closed, shrunk ones enforced.
        let _ = self.commands.try_send(Command::Reauthorize);
        Ok(())
    }

    /// Stops at once: closes every connection, waits briefly for them to drain.
    pub fn shutdown(mut self) {
        self.stop(Command::Shutdown);
    }

    /// Stops gracefully: no new connections, clients told to go elsewhere (`ldm`),
    /// closed after the grace period spread over the lame-duck duration.
    pub fn lame_duck(mut self) {
        self.stop(Command::LameDuck);
    }

    fn stop(&mut self, command: Command) {
        if let Some(cluster) = self.planes.cluster.get() {
            cluster.shutdown();
        }
        if let (Some(mesh), Some(_)) = (self.planes.mesh.get(), &self.runtime) {
            mesh.shutdown(std::time::Duration::from_secs(3));
        }
        let _ = self.commands.try_send(command);
        if let (Some(rt), Some(task)) = (self.runtime.take(), self.listener.take()) {
            runtime::block_on(task);
            rt.stop();
        }
        if let Some(closed) = self.store_closed.take() {
            closed.wait(std::time::Duration::from_secs(10));
        }
        log::info!("meshbroker {} stopped", self.ctx.server_name);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            self.stop(Command::Shutdown);
        }
    }
}

/// Binds a listener `on` an address or the mesh; one on the mesh is tied to its
/// interface, and its tie kept in `mesh_listeners` (made again with the interface).
fn bind(
    on: ListenOn,
    mesh: Option<&super::mesh::Prepared>,
    mesh_listeners: &mut Vec<runtime::DeviceBinding>,
    error: impl Fn(SocketAddr, std::io::Error) -> NodeError,
) -> Result<(runtime::TcpListener, SocketAddr), NodeError> {
    let addr = on.resolve(mesh.map(|m| m.address())).ok_or_else(|| {
        NodeError::Config(format!("\"{on}\" needs [mesh] (the node's mesh address)"))
    })?;
    let device = mesh.filter(|_| on.on_mesh()).map(|m| m.interface());
    let listener = runtime::listen_on(addr, device).map_err(|e| error(addr, e))?;
    if device.is_some() {
        mesh_listeners.push(runtime::DeviceBinding::of(&listener).map_err(|e| error(addr, e))?);
    }
    Ok((listener, addr))
}

/// Binds the cluster listener and starts the cluster actor, when `[cluster]` is set
/// (and the mesh actor with it, given the `mesh` prepared and the listeners tied to
/// its interface).
fn start_cluster(
    ctx: &Arc<ServerContext>,
    planes: &Planes,
    mesh: Option<super::mesh::Prepared>,
    mut mesh_listeners: Vec<runtime::DeviceBinding>,
) -> Result<Option<SocketAddr>, NodeError> {
    let config = ctx.config();
    let cluster = &config.cluster;
    let cluster_name = cluster.name.clone().unwrap_or_default();
    let network = match &mesh {
        Some(_) => Some(
            config
                .mesh
                .network(&cluster_name)
                .map_err(|e| NodeError::Config(format!("key `mesh.network`: {e}")))?,
        ),
        None => None,
    };
    let addr = match &mesh {
        Some(m) => SocketAddr::new(m.address(), config.mesh.route_port),
        None => match cluster.listen_addr().map_err(NodeError::Config)? {
            Some(addr) => addr,
            None => return Ok(None),
        },
    };
    // On the mesh, only what arrives over WireGuard reaches the cluster port.
    let device = mesh.as_ref().map(|m| m.interface().to_string());
    let listener = runtime::listen_on(addr, device.as_deref())
        .map_err(|source| NodeError::Cluster { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| NodeError::Cluster { addr, source })?;
    let secret = cluster
        .load_secret(&runtime::read_file)
        .map_err(|(key, reason)| NodeError::Config(format!("key `{key}`: {reason}")))?;
    let tls = match (&cluster.cert_file, &cluster.key_file, &cluster.ca_file) {
        (Some(cert), Some(key), Some(ca)) => {
            let (server, client) = crate::tls::route_configs(cert, key, ca, &runtime::read_file)
                .map_err(|e| NodeError::Config(e.to_string()))?;
            Some(super::cluster::RouteTls {
                acceptor: futures_rustls::TlsAcceptor::from(server),
                connector: futures_rustls::TlsConnector::from(client),
                timeout: crate::config::DEFAULT_TLS_TIMEOUT,
            })
        }
        _ => None,
    };
    let advertise = match &cluster.advertise {
        Some(a) => crate::cluster::parse_route_url(a).map_err(NodeError::Config)?,
        None => local_addr.to_string(),
    };
    if cluster.advertise.is_none() && local_addr.ip().is_unspecified() {
        log::warn!(
            "cluster.listen {local_addr} is a wildcard address: set cluster.advertise to the address other nodes should dial"
        );
    }
    let local = crate::cluster::LocalNode {
        server_id: ctx.server_id.clone(),
        server_name: ctx.server_name.clone(),
        cluster: cluster.name.clone().unwrap_or_default(),
        advertise,
        tls: tls.is_some(),
        secret,
        max_payload: config.max_payload.0,
        version: COMPAT_VERSION.to_string(),
    };
    let routes = cluster
        .routes
        .iter()
        .filter_map(|r| crate::cluster::parse_route_url(r).ok())
        .collect();
    let mesh_secret = local.secret.clone().unwrap_or_default();
    if mesh.is_some() {
        // The mesh actor ties the listener to the interface again if it is re-created.
        mesh_listeners.push(
            runtime::DeviceBinding::of(&listener)
                .map_err(|source| NodeError::Cluster { addr, source })?,
        );
    }
    let handle = super::cluster::start(ctx.clone(), listener, local, tls, routes, network);
    if let Some(prepared) = mesh {
        let client_secret = config
            .mesh
            .load_client_secret(&runtime::read_file)
            .map_err(|(key, reason)| NodeError::Config(format!("key `{key}`: {reason}")))?;
        let keys = crate::mesh::AnnounceKeys {
            cluster: Some(crate::mesh::AnnounceKey::derive(
                &mesh_secret,
                &cluster_name,
            )),
            client: client_secret
                .map(|s| crate::mesh::AnnounceKey::derive_client(&s, &cluster_name)),
        };
        let started = super::mesh::start(
            prepared,
            &cluster_name,
            keys,
            super::mesh::Plane::Broker(handle.clone()),
            mesh_listeners,
            &ctx.spawner,
        )?;
        let _ = planes.mesh.set(started);
    }
    let _ = planes.cluster.set(handle);
    log::info!(
        "listening for routes on {local_addr} (cluster {:?}{}{})",
        cluster.name.as_deref().unwrap_or_default(),
        if cluster.tls() { ", mutual TLS" } else { "" },
        if cluster.secret.is_some() || cluster.secret_file.is_some() {
            ", secret"
        } else {
            ""
        }
    );
    Ok(Some(local_addr))
}

/// A server id shaped like the reference's (56 characters of base32 after `N`).
fn new_server_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = fastrand::Rng::new();
    let mut id = String::with_capacity(56);
    id.push('N');
    for _ in 0..55 {
        id.push(ALPHABET[rng.usize(..ALPHABET.len())] as char);
    }
    id
}
