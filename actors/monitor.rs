//! The monitor actor: the HTTP monitoring endpoint (hyper, HTTP/1.1, on this node's
//! runtime through smol-hyper's I/O adapter).
//!
//! It owns the listening socket and the per-endpoint request counters; for every
//! request it takes a snapshot of the node's counters (atomics written by the other
//! actors) and lets `src/monitor.rs` build the document. It never changes anything,
//! never logs payloads, and serves only GET (and HEAD).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::context::ServerContext;
use super::listener::Command;
use super::raft::{GroupHandle, RaftHost, Role};
use super::runtime::{self, TcpListener};
use super::stream::Usage;
use super::subscription::Control;
use crate::jetstream::api::API_LEVEL;
use crate::monitor::{
    self, ConnSnapshot, ConnzQuery, GroupHealth, HealthzQuery, JetStreamCounters, MetaCounters,
    MetaPeer, NodeCounters, NodeFacts, RaftzGroup, RaftzPeer, RaftzQuery, StreamCounters,
};
use crate::proto::info::COMPAT_VERSION;

/// The endpoints served, in the order `/varz`'s `http_req_stats` lists them.
const ENDPOINTS: [&str; 11] = [
    "/",
    "/accountz",
    "/connz",
    "/healthz",
    "/jsz",
    "/meshz",
    "/metrics",
    "/raftz",
    "/routez",
    "/subsz",
    "/varz",
];

/// How long `/connz` waits for the connections' answers (a busy one may be late; it
/// is left out rather than holding the page).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// How long one HTTP connection may stay open: monitoring requests are quick, and a
/// client that never finishes its request must not hold a socket forever.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

struct Monitor {
    ctx: Arc<ServerContext>,
    addr: SocketAddr,
    js: Option<Arc<Usage>>,
    /// The JetStream meta group, when clustered.
    meta: Option<GroupHandle>,
    /// Every Raft group, when clustered.
    raft: Option<RaftHost>,
    /// The listener, which knows the connections.
    listener: async_channel::Sender<Command>,
    /// Requests per endpoint, as `/varz` reports them.
    requests: [AtomicU64; ENDPOINTS.len()],
    planes: Arc<Planes>,
}

/// The cluster and mesh actors, for `/routez` and `/meshz`: set once each has started
/// (the monitor starts first).
#[derive(Default)]
pub struct Planes {
    pub cluster: std::sync::OnceLock<super::cluster::ClusterHandle>,
    pub mesh: std::sync::OnceLock<super::mesh::MeshHandle>,
}

/// What the monitor sees of JetStream: its usage and, when clustered, the meta
/// group and every Raft group.
pub struct JetStreamView {
    pub usage: Arc<Usage>,
    pub meta: Option<GroupHandle>,
    pub raft: Option<RaftHost>,
}

/// Binds `addr` and serves the endpoint on the node's runtime; returns the bound
/// address (the real port when `addr` said 0).
pub fn start(
    ctx: Arc<ServerContext>,
    listener: runtime::TcpListener,
    tls: Option<futures_rustls::TlsAcceptor>,
    js: Option<JetStreamView>,
    listener_commands: async_channel::Sender<Command>,
    planes: Arc<Planes>,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        log::warn!(
            "monitoring endpoint on {bound} is reachable from other hosts and has no authentication"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    log::info!("monitoring endpoint on {scheme}://{bound}");
    let monitor = Arc::new(Monitor {
        ctx: ctx.clone(),
        addr: bound,
        meta: js.as_ref().and_then(|j| j.meta.clone()),
        raft: js.as_ref().and_then(|j| j.raft.clone()),
        js: js.map(|j| j.usage),
        listener: listener_commands,
        requests: Default::default(),
        planes,
    });
    ctx.spawner.spawn_detached(accept(monitor, listener, tls));
    Ok(bound)
}

/// Time a monitoring client has for the TLS handshake.
const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

async fn accept(
    monitor: Arc<Monitor>,
    listener: TcpListener,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("monitoring endpoint: accept failed: {e}");
                runtime::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let monitor = monitor.clone();
        let tls = tls.clone();
        monitor.ctx.spawner.clone().spawn_detached(async move {
            match tls {
                None => serve(monitor, stream).await,
                // Boxed: the TLS session would make every plain request's task as big.
                Some(acceptor) => {
                    Box::pin(async move {
                        match runtime::timeout(TLS_HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                            Some(Ok(session)) => serve(monitor, session).await,
                            Some(Err(e)) => log::debug!("monitoring TLS handshake failed: {e}"),
                            None => log::debug!("monitoring TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
        });
    }
}

/// Serves HTTP/1 requests on one connection (plain or TLS).
async fn serve(
    monitor: Arc<Monitor>,
    io: impl futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
) {
    let service = hyper::service::service_fn(move |req| {
        let monitor = monitor.clone();
        async move { Ok::<_, Infallible>(monitor.handle(req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(runtime::hyper_io(io), service);
    if let Some(Err(e)) = runtime::timeout(CONNECTION_LIMIT, conn).await {
        log::debug!("monitoring connection ended: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(hyper::header::CONTENT_TYPE, v);
    }
    // As the reference: dashboards in browsers read the endpoint from other origins.
    headers.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        hyper::header::HeaderValue::from_static("*"),
    );
    response
}

fn not_found() -> Reply {
    reply(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        b"404 page not found\n".to_vec(),
    )
}

impl Monitor {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                b"method not allowed\n".to_vec(),
            );
        }
        let path = req.uri().path();
        let Some(i) = ENDPOINTS.iter().position(|e| *e == path) else {
            return not_found();
        };
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        const JSON: &str = "application/json";
        match path {
            "/varz" => {
                let stats: BTreeMap<String, u64> = ENDPOINTS
                    .iter()
                    .zip(&self.requests)
                    .map(|(e, n)| (e.to_string(), n.load(Ordering::Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let body = monitor::varz(
                    &self.facts(),
                    &self.counters(),
                    self.jetstream().as_ref(),
                    &stats,
                );
                reply(StatusCode::OK, JSON, body)
            }
            "/connz" => match ConnzQuery::parse(req.uri().query().unwrap_or("")) {
                Ok(q) => {
                    let conns = self.connections().await;
                    let body =
                        monitor::connz(&self.ctx.server_id, runtime::now_unix_ns(), conns, &q);
                    reply(StatusCode::OK, JSON, body)
                }
                Err(e) => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    e.into_bytes(),
                ),
            },
            "/routez" => {
                let now = crate::jetstream::api::format_time(runtime::now_unix_ns());
                let routes = match self.planes.cluster.get() {
                    Some(cluster) => cluster.routes().await,
                    None => Vec::new(),
                };
                let body =
                    monitor::routez(&self.ctx.server_id, &self.ctx.server_name, &now, &routes);
                reply(StatusCode::OK, JSON, body)
            }
            "/meshz" => {
                let now = crate::jetstream::api::format_time(runtime::now_unix_ns());
                let view = self.planes.mesh.get().map(|m| m.view.load_full());
                let body = monitor::meshz(&self.ctx.server_id, &now, view.as_deref());
                reply(StatusCode::OK, JSON, body)
            }
            "/accountz" => {
                let now = crate::jetstream::api::format_time(runtime::now_unix_ns());
                reply(StatusCode::OK, JSON, {
                    let accounts = self.ctx.accounts();
                    let mut names: Vec<&str> = accounts.keys().map(String::as_str).collect();
                    names.sort_by_key(|n| (*n != "$G", *n));
                    monitor::accountz(&self.ctx.server_id, &now, &self.ctx.system_account, &names)
                })
            }
            "/subsz" => {
                // The same paging and `subs` parameters as /connz.
                let q = ConnzQuery::parse(req.uri().query().unwrap_or("")).unwrap_or_default();
                let subs = match q.subs {
                    monitor::SubsDetail::None => None,
                    _ => Some(
                        self.connections()
                            .await
                            .into_iter()
                            .flat_map(|c| c.subs)
                            .collect(),
                    ),
                };
                let now = crate::jetstream::api::format_time(runtime::now_unix_ns());
                let body = monitor::subsz(
                    &self.ctx.server_id,
                    &now,
                    self.ctx.subscriptions(),
                    subs,
                    q.offset,
                    q.limit,
                );
                reply(StatusCode::OK, JSON, body)
            }
            "/healthz" => {
                let configured = self.ctx.config().jetstream.enabled;
                let q = HealthzQuery::parse(req.uri().query().unwrap_or(""));
                let groups = self.group_health();
                let (code, body) =
                    monitor::healthz(configured, self.js.is_some(), groups.as_deref(), q);
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                reply(status, JSON, body)
            }
            "/jsz" => match self.jetstream() {
                Some(js) => {
                    let now = crate::jetstream::api::format_time(runtime::now_unix_ns());
                    let body = monitor::jsz(&self.ctx.server_id, &now, &js);
                    reply(StatusCode::OK, JSON, body)
                }
                None => reply(StatusCode::OK, JSON, br#"{"disabled":true}"#.to_vec()),
            },
            "/raftz" => {
                let q = RaftzQuery::parse(req.uri().query().unwrap_or(""));
                let body = monitor::raftz(&self.raft_groups(), &q);
                reply(StatusCode::OK, JSON, body)
            }
            "/metrics" => {
                let text = monitor::prometheus(
                    &self.counters(),
                    self.jetstream().as_ref(),
                    &self.raft_groups(),
                );
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                )
            }
            _ => {
                // The index lists what is served.
                let list: Vec<String> = ENDPOINTS[1..]
                    .iter()
                    .map(|e| format!("http://{}{e}", self.addr))
                    .collect();
                reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    (list.join("\n") + "\n").into_bytes(),
                )
            }
        }
    }

    /// Every connection's snapshot: the listener names them, each answers for itself.
    async fn connections(&self) -> Vec<ConnSnapshot> {
        let (tx, rx) = async_channel::bounded(1);
        if self.listener.send(Command::Clients(tx)).await.is_err() {
            return Vec::new();
        }
        let Ok(clients) = rx.recv().await else {
            return Vec::new();
        };
        let (snap_tx, snap_rx) = async_channel::unbounded();
        let mut asked = 0;
        for client in clients {
            if client.tell(Control::Snapshot(snap_tx.clone())) {
                asked += 1;
            }
        }
        drop(snap_tx);
        let mut conns = Vec::with_capacity(asked);
        let deadline = runtime::now() + SNAPSHOT_WAIT;
        while conns.len() < asked {
            let left = deadline.saturating_duration_since(runtime::now());
            match runtime::timeout(left, snap_rx.recv()).await {
                Some(Ok(snapshot)) => conns.push(snapshot),
                _ => break,
            }
        }
        conns
    }

    fn facts(&self) -> NodeFacts {
        let c = self.ctx.config();
        let started = runtime::unix_ns(self.ctx.started);
        NodeFacts {
            server_id: self.ctx.server_id.clone(),
            server_name: self.ctx.server_name.clone(),
            version: COMPAT_VERSION.to_string(),
            host: self.ctx.client_addr.ip().to_string(),
            port: self.ctx.client_addr.port(),
            http_host: self.addr.ip().to_string(),
            http_port: self.addr.port(),
            max_connections: c.max_connections,
            ping_interval_ns: c.ping_interval.0.as_nanos() as u64,
            ping_max: c.max_pings_out,
            max_control_line: c.max_control_line.0,
            max_payload: c.max_payload.0,
            max_pending: c.max_pending.0,
            write_deadline_ns: c.write_deadline.0.as_nanos() as u64,
            start: crate::jetstream::api::format_time(started),
            config_load_time: crate::jetstream::api::format_time(started),
        }
    }

    fn counters(&self) -> NodeCounters {
        let s = &self.ctx.stats;
        let uptime = self.ctx.started.elapsed().unwrap_or_default();
        let (mem, cpu_secs) = runtime::process_usage();
        NodeCounters {
            now: crate::jetstream::api::format_time(runtime::now_unix_ns()),
            uptime_secs: uptime.as_secs(),
            mem,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            // Average since start, percent of one core.
            cpu: if uptime.as_secs_f64() > 0.0 {
                (cpu_secs / uptime.as_secs_f64() * 1000.0).round() / 10.0
            } else {
                0.0
            },
            connections: s.connections.load(Ordering::Relaxed),
            total_connections: s.total_connections.load(Ordering::Relaxed),
            subscriptions: self.ctx.subscriptions(),
            in_msgs: s.in_msgs.load(Ordering::Relaxed),
            in_bytes: s.in_bytes.load(Ordering::Relaxed),
            out_msgs: s.out_msgs.load(Ordering::Relaxed),
            out_bytes: s.out_bytes.load(Ordering::Relaxed),
            slow_consumers: s.slow_consumers.load(Ordering::Relaxed),
            stalls: s.stalls.load(Ordering::Relaxed),
        }
    }

    /// Every Raft group on this node, for the health check (`None`: not clustered).
    fn group_health(&self) -> Option<Vec<GroupHealth>> {
        let host = self.raft.as_ref()?;
        let now = runtime::now();
        let groups = host
            .statuses()
            .into_iter()
            .map(|(label, st)| GroupHealth {
                account: label.account.clone(),
                stream: label.stream.clone(),
                has_leader: st.leader.is_some(),
                current: st.is_current(now),
                running: !st.broken,
            })
            .collect();
        Some(groups)
    }

    /// Every Raft group on this node, as `/raftz` shows them.
    fn raft_groups(&self) -> Vec<RaftzGroup> {
        let Some(host) = &self.raft else {
            return Vec::new();
        };
        let now = runtime::now();
        host.statuses()
            .into_iter()
            .map(|(label, st)| RaftzGroup {
                account: label.account.clone(),
                name: label.name.clone(),
                id: st.id,
                leader: st.leader_id,
                vote: st.vote,
                state: match st.role {
                    Role::Leader => "LEADER",
                    Role::Candidate => "CANDIDATE",
                    Role::Follower => "FOLLOWER",
                },
                size: st.peers.len(),
                committed: st.commit,
                applied: st.applied,
                leader_changes: st.leader_changes,
                term: st.term,
                pterm: st.last_term,
                pindex: st.last_index,
                log_entries: st.log_entries,
                log_bytes: st.log_bytes,
                first_index: st.compacted + 1,
                peers: st
                    .peers
                    .iter()
                    .map(|p| RaftzPeer {
                        id: p.id,
                        name: p.name.clone(),
                        known: p.routed,
                        last_seen_us: p
                            .heard
                            .map(|t| now.saturating_duration_since(t).as_micros() as u64),
                        lag: st.is_leader.then(|| st.commit.saturating_sub(p.matched)),
                    })
                    .collect(),
            })
            .collect()
    }

    fn jetstream(&self) -> Option<JetStreamCounters> {
        let usage = self.js.as_ref()?;
        let config = self.ctx.config();
        let streams = usage
            .streams
            .load()
            .iter()
            .map(|s| StreamCounters {
                name: s.name.clone(),
                messages: s.messages.load(Ordering::Relaxed),
                bytes: s.bytes.load(Ordering::Relaxed),
                consumers: s.consumers.load(Ordering::Relaxed),
            })
            .collect();
        Some(JetStreamCounters {
            store_dir: config.jetstream.store_dir.display().to_string(),
            sync_always: config.jetstream.ack == crate::config::AckAfter::Fsync,
            max_memory: usage.max_memory,
            max_file: usage.max_file,
            memory: usage.memory.load(Ordering::Relaxed),
            storage: usage.storage.load(Ordering::Relaxed),
            reserved_memory: 0,
            reserved_storage: 0,
            api_level: API_LEVEL,
            api_total: usage.api_total.load(Ordering::Relaxed),
            api_errors: usage.api_errors.load(Ordering::Relaxed),
            streams,
            meta: self.meta.as_ref().map(|g| {
                let st = g.status();
                MetaCounters {
                    cluster: config.cluster.name.clone().unwrap_or_default(),
                    leader: st.leader.clone(),
                    is_leader: st.is_leader,
                    term: st.term,
                    commit: st.commit,
                    applied: st.applied,
                    leader_changes: st.leader_changes,
                    peers: st
                        .peers
                        .iter()
                        .filter(|p| p.name != self.ctx.server_name)
                        .map(|p| MetaPeer {
                            name: p.name.clone(),
                            current: p.routed && (!st.is_leader || p.matched >= st.commit),
                            lag: if st.is_leader {
                                st.commit.saturating_sub(p.matched)
                            } else {
                                0
                            },
                        })
                        .collect(),
                    size: st.peers.len(),
                }
            }),
        })
    }
}
