//! The cluster actor: one per node with `[cluster]`.
//!
//! It owns the set of routes (one per other node, by server id), settles duplicates
//! when two nodes dial each other at once (`crate::cluster::new_route_wins`, the same
//! answer on both sides), tells the routes it has about every new one (gossip, so a
//! node that only knows a seed ends up routed to everyone), and runs the listener and
//! the dialers: one per configured route, and one per node it heard of, each redialing
//! with a short backoff while no route to that node is up.
//!
//! Who waits on whom: route actors await it to register; dialers await it to ask
//! whether a node is already routed; it awaits nobody (answers go back on bounded(1)
//! channels that never block it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::context::{short_id, ServerContext};
use super::route::{self, Registration, RouteEnd, RouteEvent, RouteLink, RouteSetup};
use super::runtime::{self, TcpListener, TcpStream};
use super::subscription::{RouteControl, RouteShared};
use crate::cluster::{new_route_wins, parse_route_url, route_url, LocalNode, Role};

/// What a dialer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialCheck {
    /// Dial (no route to that node is up).
    Dial,
    /// A route to that node is up: check again later.
    Routed,
    /// Nobody wants this address any more.
    Stop,
}

/// Why a dialer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialKind {
    /// `cluster.routes`: dialed for ever.
    Configured,
    /// Heard of from another node: given up after a few failures.
    Gossip,
    /// A live mesh member: dialed while the mesh says it is alive.
    Mesh,
}

/// A route as monitoring shows it.
pub type RouteSummary = crate::monitor::RouteSnapshot;

enum ClusterCmd {
    /// What a route reported (registration, gone, gossip).
    Route(RouteEvent),
    /// A dialer asks whether to go on.
    Check {
        addr: String,
        server_id: Option<String>,
        reply: async_channel::Sender<DialCheck>,
    },
    Forget(String),
    /// The mesh says a node is alive at this route address: route to it.
    MeshUp(SocketAddr),
    /// The mesh says the node at this route address went silent: drop its routes.
    MeshDown(SocketAddr),
    Routes(async_channel::Sender<Vec<RouteSummary>>),
    Shutdown,
}

/// How other actors reach the cluster actor.
#[derive(Clone)]
pub struct ClusterHandle {
    tx: async_channel::Sender<ClusterCmd>,
    stopping: Arc<AtomicBool>,
    /// Every route's events come on this one channel (route.rs defines them, so the
    /// route actor needs nothing of the cluster actor's).
    route_events: async_channel::Sender<RouteEvent>,
}

impl ClusterHandle {
    /// Where this cluster's routes report to.
    fn link(&self) -> RouteLink {
        RouteLink::new(self.route_events.clone())
    }

    async fn check(&self, addr: &str, server_id: Option<&str>) -> DialCheck {
        let (reply, answer) = async_channel::bounded(1);
        let cmd = ClusterCmd::Check {
            addr: addr.to_string(),
            server_id: server_id.map(str::to_string),
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            return DialCheck::Stop;
        }
        answer.recv().await.unwrap_or(DialCheck::Stop)
    }

    /// The mesh found a live node whose cluster listener is at `addr`.
    pub fn mesh_up(&self, addr: SocketAddr) {
        let _ = self.tx.try_send(ClusterCmd::MeshUp(addr));
    }

    /// The node at `addr` went silent on the mesh.
    pub fn mesh_down(&self, addr: SocketAddr) {
        let _ = self.tx.try_send(ClusterCmd::MeshDown(addr));
    }

    /// The routes up now.
    pub async fn routes(&self) -> Vec<RouteSummary> {
        let (reply, answer) = async_channel::bounded(1);
        if self.tx.send(ClusterCmd::Routes(reply)).await.is_err() {
            return Vec::new();
        }
        answer.recv().await.unwrap_or_default()
    }

    /// Closes every route and stops dialing.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.tx.try_send(ClusterCmd::Shutdown);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// TLS between nodes: both ends present a certificate from the cluster CA.
#[derive(Clone)]
pub struct RouteTls {
    pub acceptor: futures_rustls::TlsAcceptor,
    pub connector: futures_rustls::TlsConnector,
    pub timeout: Duration,
}

/// Everything a dialer or an accepted connection needs.
#[derive(Clone)]
struct Plane {
    ctx: Arc<ServerContext>,
    handle: ClusterHandle,
    local: LocalNode,
    tls: Option<RouteTls>,
    /// The mesh decides whom to dial (gossip over routes is not followed).
    mesh: bool,
    /// The mesh network: connections from outside its brokers' range (a client
    /// member) are refused.
    mesh_network: Option<crate::mesh::Network>,
}

/// Starts the cluster actor, its listener and its dialers.
pub fn start(
    ctx: Arc<ServerContext>,
    listener: TcpListener,
    local: LocalNode,
    tls: Option<RouteTls>,
    routes: Vec<String>,
    mesh_network: Option<crate::mesh::Network>,
) -> ClusterHandle {
    let (tx, rx) = async_channel::unbounded();
    let (route_events, events) = async_channel::unbounded();
    let handle = ClusterHandle {
        tx,
        stopping: Arc::new(AtomicBool::new(false)),
        route_events,
    };
    let plane = Plane {
        ctx: ctx.clone(),
        handle: handle.clone(),
        local: local.clone(),
        tls,
        mesh: mesh_network.is_some(),
        mesh_network,
    };
    let mut state = State {
        plane: plane.clone(),
        routes: HashMap::new(),
        dialing: HashMap::new(),
    };
    for url in routes {
        state.dial(url, None, DialKind::Configured);
    }
    ctx.spawner.spawn_detached(accept_loop(plane, listener));
    ctx.spawner.spawn_detached(async move {
        loop {
            let cmd = futures_lite::future::or(async { rx.recv().await.ok() }, async {
                events.recv().await.ok().map(ClusterCmd::Route)
            })
            .await;
            let Some(cmd) = cmd else { break };
            if !state.handle(cmd) {
                break;
            }
        }
    });
    handle
}

struct Entry {
    route: Arc<RouteShared>,
    role: Role,
    name: String,
    url: String,
    peer: SocketAddr,
}

struct State {
    plane: Plane,
    /// The route kept for each other node, by server id.
    routes: HashMap<String, Entry>,
    /// Route addresses (`host:port`) a dialer is working on, and why.
    dialing: HashMap<String, DialKind>,
}

impl State {
    /// Handles one command; `false` once the cluster plane stops.
    fn handle(&mut self, cmd: ClusterCmd) -> bool {
        match cmd {
            ClusterCmd::Route(RouteEvent::Register {
                route,
                server_id,
                server_name,
                url,
                role,
                peer,
                reply,
            }) => {
                let answer = self.register(route, server_id, server_name, url, role, peer);
                let _ = reply.try_send(answer);
            }
            ClusterCmd::Route(RouteEvent::Gone(id)) => {
                self.routes.retain(|_, e| e.route.id != id);
                self.plane.ctx.peers.remove(id);
            }
            ClusterCmd::Route(RouteEvent::Gossip { server_id, url }) => {
                log::debug!("heard of {} at {url}", short_id(&server_id));
                // With the mesh, membership alone decides whom to dial.
                if !self.plane.mesh
                    && server_id != self.plane.local.server_id
                    && !self.routes.contains_key(&server_id)
                {
                    match parse_route_url(&url) {
                        Ok(addr) => self.dial(addr, Some(server_id), DialKind::Gossip),
                        Err(e) => log::debug!("gossiped route address ignored: {e}"),
                    }
                }
            }
            ClusterCmd::Check {
                addr,
                server_id,
                reply,
            } => {
                let answer = if !self.dialing.contains_key(&addr) || self.plane.handle.stopping() {
                    DialCheck::Stop
                } else if server_id.is_some_and(|id| self.routes.contains_key(&id)) {
                    DialCheck::Routed
                } else {
                    DialCheck::Dial
                };
                let _ = reply.try_send(answer);
            }
            ClusterCmd::MeshUp(addr) => {
                let addr = addr.to_string();
                match self.dialing.get_mut(&addr) {
                    // Known by gossip already: the mesh keeps it now.
                    Some(kind) => {
                        if *kind == DialKind::Gossip {
                            *kind = DialKind::Mesh;
                        }
                    }
                    None => self.dial(addr, None, DialKind::Mesh),
                }
            }
            ClusterCmd::MeshDown(addr) => {
                let key = addr.to_string();
                if self.dialing.get(&key) != Some(&DialKind::Configured) {
                    self.dialing.remove(&key);
                }
                for entry in self.routes.values() {
                    let same_node = entry.peer.ip() == addr.ip() || entry.url == key;
                    if same_node {
                        entry
                            .route
                            .tell(RouteControl::Reset("the mesh lost this node"));
                    }
                }
            }
            ClusterCmd::Forget(url) => {
                self.dialing.remove(&url);
            }
            ClusterCmd::Routes(reply) => {
                let _ = reply.try_send(self.summaries());
            }
            ClusterCmd::Shutdown => {
                for entry in self.routes.values() {
                    entry.route.tell(RouteControl::Close("node stopping"));
                }
                return false;
            }
        }
        true
    }

    fn register(
        &mut self,
        route: Arc<RouteShared>,
        server_id: String,
        name: String,
        url: String,
        role: Role,
        peer: SocketAddr,
    ) -> Registration {
        if self.plane.handle.stopping() {
            return Registration::Duplicate;
        }
        if let Some(existing) = self.routes.get(&server_id) {
            if !new_route_wins(&self.plane.local.server_id, &server_id, existing.role, role) {
                log::debug!(
                    "duplicate route to {name} ({}) closed; the existing one stays",
                    short_id(&server_id)
                );
                return Registration::Duplicate;
            }
            log::debug!(
                "duplicate route to {name} ({}): the new one replaces the existing one",
                short_id(&server_id)
            );
            existing.route.tell(RouteControl::Close("duplicate route"));
        }
        // Tell the nodes already routed about the new one, so they dial it.
        if !url.is_empty() {
            let mut info = self.plane.local.info();
            info.server_id = server_id.clone();
            info.server_name = name.clone();
            info.ip = route_url(&url);
            if let Ok(json) = serde_json::to_vec(&info) {
                for (id, entry) in &self.routes {
                    if *id == server_id {
                        continue;
                    }
                    if let Ok(true) = entry.route.out.push_control(|buf| {
                        buf.extend_from_slice(b"INFO ");
                        buf.extend_from_slice(&json);
                        buf.extend_from_slice(b"\r\n");
                    }) {
                        entry.route.out.wake();
                    }
                }
            }
        }
        self.plane.ctx.peers.insert(&name, route.clone());
        self.routes.insert(
            server_id,
            Entry {
                route,
                role,
                name,
                url,
                peer,
            },
        );
        Registration::Accepted
    }

    /// Starts a dialer for `addr` unless one is working on it.
    fn dial(&mut self, addr: String, server_id: Option<String>, kind: DialKind) {
        if self.dialing.contains_key(&addr) {
            return;
        }
        self.dialing.insert(addr.clone(), kind);
        let plane = self.plane.clone();
        self.plane.ctx.spawner.spawn_detached(dial_loop(
            plane,
            addr,
            server_id,
            kind == DialKind::Gossip,
        ));
    }

    fn summaries(&self) -> Vec<RouteSummary> {
        let mut out: Vec<RouteSummary> = self
            .routes
            .iter()
            .map(|(id, e)| {
                let s = &e.route.stats;
                RouteSummary {
                    rid: e.route.id,
                    remote_id: id.clone(),
                    remote_name: e.name.clone(),
                    did_solicit: e.role == Role::Solicited,
                    peer: e.peer,
                    url: e.url.clone(),
                    in_msgs: s.in_msgs.load(Ordering::Relaxed),
                    out_msgs: s.out_msgs.load(Ordering::Relaxed),
                    in_bytes: s.in_bytes.load(Ordering::Relaxed),
                    out_bytes: s.out_bytes.load(Ordering::Relaxed),
                    subscriptions: s.subscriptions.load(Ordering::Relaxed),
                    pending_bytes: e.route.out.pending(),
                }
            })
            .collect();
        out.sort_by_key(|r| r.rid);
        out
    }
}

async fn accept_loop(plane: Plane, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if plane.handle.stopping() {
                    return;
                }
                log::warn!("cluster listener: accept failed: {e}");
                runtime::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if plane.handle.stopping() {
            return;
        }
        // WireGuard lets a peer send only from its own address, and a client member's
        // is outside the brokers' range: it is never a cluster peer.
        if let Some(network) = &plane.mesh_network {
            if network.role_of(peer.ip()) != Some(crate::mesh::Role::Broker) {
                log::warn!(
                    "route connection from {peer} refused: not a broker's mesh address (client members are never cluster peers)"
                );
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let plane = plane.clone();
        plane.ctx.spawner.clone().spawn_detached(async move {
            let end = run_connection(&plane, stream, peer, Role::Accepted, None).await;
            if let RouteEnd::Handshake(reason) = end {
                log::warn!("route connection from {peer} refused: {reason}");
            }
        });
    }
}

/// Runs one route connection, with TLS when the cluster uses it.
async fn run_connection(
    plane: &Plane,
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    dialed: Option<&str>,
) -> RouteEnd {
    let setup = RouteSetup {
        ctx: plane.ctx.clone(),
        cluster: plane.handle.link(),
        local: plane.local.clone(),
        role,
        peer,
        socket: stream.clone(),
        tls: plane.tls.is_some(),
    };
    let Some(tls) = &plane.tls else {
        return route::serve(setup, stream.clone(), stream).await;
    };
    match role {
        Role::Accepted => {
            let handshake = tls.acceptor.accept(stream.clone());
            over_tls(setup, &stream, tls.timeout, handshake).await
        }
        Role::Solicited => {
            let name = crate::tls::route_server_name(dialed.unwrap_or_default());
            let handshake = tls.connector.connect(name, stream.clone());
            over_tls(setup, &stream, tls.timeout, handshake).await
        }
    }
}

/// Completes a TLS handshake (either side's) within `limit`, then runs the route
/// over the session.
async fn over_tls<S>(
    setup: RouteSetup,
    stream: &TcpStream,
    limit: Duration,
    handshake: impl std::future::Future<Output = std::io::Result<S>>,
) -> RouteEnd
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
{
    let failure = match runtime::timeout(limit, handshake).await {
        Some(Ok(session)) => {
            let (r, w) = futures_lite::io::split(session);
            return route::serve(setup, r, w).await;
        }
        Some(Err(e)) => format!("TLS handshake failed: {e}"),
        None => "TLS handshake timed out".into(),
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    RouteEnd::Handshake(failure)
}

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The first redial after a route drops comes quickly; failures back off to this.
const REDIAL_MAX: Duration = Duration::from_secs(1);
const REDIAL_MIN: Duration = Duration::from_millis(100);
/// A node heard of by gossip that cannot be reached this many times in a row is
/// forgotten (a configured route is dialed forever).
const IMPLICIT_ATTEMPTS: u32 = 10;

async fn dial_loop(plane: Plane, addr: String, mut server_id: Option<String>, implicit: bool) {
    let mut backoff = REDIAL_MIN;
    let mut failures = 0u32;
    let mut last_problem = String::new();
    loop {
        match plane.handle.check(&addr, server_id.as_deref()).await {
            DialCheck::Stop => return,
            DialCheck::Routed => {
                backoff = REDIAL_MIN;
                failures = 0;
                runtime::sleep(REDIAL_MAX).await;
                continue;
            }
            DialCheck::Dial => {}
        }
        let problem = match runtime::timeout(DIAL_TIMEOUT, TcpStream::connect(addr.as_str())).await
        {
            Some(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let peer = stream
                    .peer_addr()
                    .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                match run_connection(&plane, stream, peer, Role::Solicited, Some(&addr)).await {
                    RouteEnd::SelfRoute => {
                        log::debug!("route {addr} is this node itself; not dialed again");
                        return;
                    }
                    RouteEnd::Duplicate { server_id: id }
                    | RouteEnd::Closed { server_id: id, .. } => {
                        server_id = Some(id);
                        backoff = REDIAL_MIN;
                        failures = 0;
                        last_problem.clear();
                        None
                    }
                    RouteEnd::Handshake(reason) => Some(reason),
                }
            }
            Some(Err(e)) => Some(format!("cannot connect: {e}")),
            None => Some("connect timed out".to_string()),
        };
        if let Some(problem) = problem {
            failures += 1;
            // Said once per kind of failure, not on every retry.
            if problem != last_problem {
                log::warn!("route to {addr}: {problem}; retrying");
                last_problem = problem;
            }
            if implicit && failures >= IMPLICIT_ATTEMPTS {
                log::info!(
                    "route to {addr} (heard of by gossip) given up after {failures} attempts"
                );
                let _ = plane.handle.tx.try_send(ClusterCmd::Forget(addr));
                return;
            }
        }
        let jitter = Duration::from_millis(fastrand::u64(0..50));
        runtime::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(REDIAL_MAX);
    }
}
