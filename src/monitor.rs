//! The monitoring endpoint's documents: `/varz`, `/healthz` and `/jsz` in the
//! reference's JSON shapes (so existing dashboards and exporters read them), and
//! `/metrics` in Prometheus' text format. They are built from plain snapshots that the
//! monitor actor gathers; nothing here reads a clock, a socket or a counter.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

/// What the node is and how it is configured, as `/varz` reports it.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub host: String,
    pub port: u16,
    pub http_host: String,
    pub http_port: u16,
    pub max_connections: usize,
    pub ping_interval_ns: u64,
    pub ping_max: u32,
    pub max_control_line: u64,
    pub max_payload: u64,
    pub max_pending: u64,
    pub write_deadline_ns: u64,
    /// RFC 3339 times.
    pub start: String,
    pub config_load_time: String,
}

/// The node's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCounters {
    pub now: String,
    pub uptime_secs: u64,
    /// Resident memory in bytes.
    pub mem: u64,
    pub cores: usize,
    /// CPU use since the last sample, percent of one core.
    pub cpu: f64,
    pub connections: u64,
    pub total_connections: u64,
    pub subscriptions: u64,
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    pub slow_consumers: u64,
    /// Times a client publisher waited at a subscriber's stalled queue.
    pub stalls: u64,
}

/// JetStream's configuration and usage at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JetStreamCounters {
    pub store_dir: String,
    /// Acks wait for an fsynced commit (`jetstream.ack = "fsync"`).
    pub sync_always: bool,
    /// Limits in bytes; 0 is none.
    pub max_memory: u64,
    pub max_file: u64,
    pub memory: u64,
    pub storage: u64,
    pub reserved_memory: u64,
    pub reserved_storage: u64,
    pub api_level: u32,
    pub api_total: u64,
    pub api_errors: u64,
    pub streams: Vec<StreamCounters>,
    /// The meta group, when the JetStream is clustered.
    pub meta: Option<MetaCounters>,
}

/// A clustered JetStream's meta group as this node sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaCounters {
    pub cluster: String,
    pub leader: Option<String>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub leader_changes: u64,
    /// The other peers.
    pub peers: Vec<MetaPeer>,
    pub size: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaPeer {
    pub name: String,
    /// Routed to, and (seen from the leader) holding everything committed.
    pub current: bool,
    /// Entries behind the commit (leader only).
    pub lag: u64,
}

/// One stream's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamCounters {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: u64,
}

/// One client connection as `/connz` reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnSnapshot {
    pub cid: u64,
    pub ip: String,
    pub port: u16,
    /// Nanoseconds since the Unix epoch.
    pub start_ns: i64,
    pub last_activity_ns: i64,
    pub pending_bytes: u64,
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub subs: Vec<SubSnapshot>,
    /// `nats` or `websocket`, as the reference's `type`.
    pub transport: &'static str,
    /// The authenticated user or nkey (shown with `auth=1`).
    pub authorized_user: String,
    /// `1.3`, `1.2` and the suite's IANA name, for TLS connections.
    pub tls_version: String,
    pub tls_cipher_suite: String,
}

/// One subscription of a connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SubSnapshot {
    pub subject: String,
    #[serde(rename = "qgroup", skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    pub sid: String,
    pub msgs: u64,
    pub cid: u64,
}

/// How `/connz` was asked: the reference's query parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnzQuery {
    pub offset: usize,
    pub limit: usize,
    pub sort: ConnSort,
    pub subs: SubsDetail,
    /// Show each connection's authorized user (`auth=1`).
    pub auth: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsDetail {
    None,
    Subjects,
    Detail,
}

/// The sort orders the reference offers (largest first for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnSort {
    Cid,
    Start,
    Subs,
    Pending,
    MsgsTo,
    MsgsFrom,
    BytesTo,
    BytesFrom,
    Last,
    Idle,
    Uptime,
}

/// A query flag's true, as Go's `strconv.ParseBool` reads it.
fn is_true(value: &str) -> bool {
    matches!(value, "1" | "true" | "t" | "T" | "TRUE" | "True")
}

/// The connections one `/connz` page shows by default.
pub const CONNZ_DEFAULT_LIMIT: usize = 1024;

impl Default for ConnzQuery {
    fn default() -> Self {
        ConnzQuery {
            offset: 0,
            limit: CONNZ_DEFAULT_LIMIT,
            sort: ConnSort::Cid,
            subs: SubsDetail::None,
            auth: false,
        }
    }
}

impl ConnzQuery {
    /// Parses a query string (`offset=…&limit=…&sort=…&subs=1|detail`); an unknown sort
    /// is refused with the reference's message, other unknown parameters are ignored.
    pub fn parse(query: &str) -> Result<ConnzQuery, String> {
        let mut q = ConnzQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "offset" => q.offset = value.parse().unwrap_or(0),
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|l| *l > 0)
                        .unwrap_or(CONNZ_DEFAULT_LIMIT)
                }
                "auth" => q.auth = is_true(value),
                "subs" => {
                    q.subs = match value {
                        "detail" => SubsDetail::Detail,
                        v if is_true(v) => SubsDetail::Subjects,
                        _ => SubsDetail::None,
                    }
                }
                "sort" => {
                    q.sort = match value {
                        "" | "cid" => ConnSort::Cid,
                        "start" => ConnSort::Start,
                        "subs" => ConnSort::Subs,
                        "pending" => ConnSort::Pending,
                        "msgs_to" => ConnSort::MsgsTo,
                        "msgs_from" => ConnSort::MsgsFrom,
                        "bytes_to" => ConnSort::BytesTo,
                        "bytes_from" => ConnSort::BytesFrom,
                        "last" => ConnSort::Last,
                        "idle" => ConnSort::Idle,
                        "uptime" => ConnSort::Uptime,
                        other => return Err(format!("invalid sorting option: {other}")),
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// `/connz`: the connections sorted and paged as asked, counters as the reference
/// names them ("to" a connection is what it received, "from" what it sent).
pub fn connz(
    server_id: &str,
    now_ns: i64,
    mut conns: Vec<ConnSnapshot>,
    q: &ConnzQuery,
) -> Vec<u8> {
    match q.sort {
        ConnSort::Cid => conns.sort_by_key(|c| c.cid),
        ConnSort::Start => conns.sort_by_key(|c| c.start_ns),
        ConnSort::Subs => conns.sort_by_key(|c| std::cmp::Reverse(c.subs.len())),
        ConnSort::Pending => conns.sort_by_key(|c| std::cmp::Reverse(c.pending_bytes)),
        ConnSort::MsgsTo => conns.sort_by_key(|c| std::cmp::Reverse(c.out_msgs)),
        ConnSort::MsgsFrom => conns.sort_by_key(|c| std::cmp::Reverse(c.in_msgs)),
        ConnSort::BytesTo => conns.sort_by_key(|c| std::cmp::Reverse(c.out_bytes)),
        ConnSort::BytesFrom => conns.sort_by_key(|c| std::cmp::Reverse(c.in_bytes)),
        ConnSort::Last => conns.sort_by_key(|c| std::cmp::Reverse(c.last_activity_ns)),
        ConnSort::Idle => conns.sort_by_key(|c| c.last_activity_ns),
        ConnSort::Uptime => conns.sort_by_key(|c| c.start_ns),
    }
    let total = conns.len();
    let secs = |from: i64| uptime((now_ns.saturating_sub(from).max(0) / 1_000_000_000) as u64);
    let page: Vec<serde_json::Value> = conns
        .into_iter()
        .skip(q.offset)
        .take(q.limit)
        .map(|c| {
            let mut v = serde_json::json!({
                "cid": c.cid,
                "kind": "Client",
                "type": c.transport,
                "ip": c.ip,
                "port": c.port,
                "start": crate::jetstream::api::format_time(c.start_ns),
                "last_activity": crate::jetstream::api::format_time(c.last_activity_ns),
                "uptime": secs(c.start_ns),
                "idle": secs(c.last_activity_ns),
                "pending_bytes": c.pending_bytes,
                "in_msgs": c.in_msgs,
                "out_msgs": c.out_msgs,
                "in_bytes": c.in_bytes,
                "out_bytes": c.out_bytes,
                "subscriptions": c.subs.len(),
            });
            if let Some(map) = v.as_object_mut() {
                let user = if q.auth {
                    c.authorized_user.as_str()
                } else {
                    ""
                };
                for (key, value) in [
                    ("name", c.name.as_str()),
                    ("lang", &c.lang),
                    ("version", &c.version),
                    ("tls_version", &c.tls_version),
                    ("tls_cipher_suite", &c.tls_cipher_suite),
                    ("authorized_user", user),
                ] {
                    if !value.is_empty() {
                        map.insert(key.into(), value.into());
                    }
                }
                match q.subs {
                    SubsDetail::None => {}
                    SubsDetail::Subjects if !c.subs.is_empty() => {
                        let subjects: Vec<&str> =
                            c.subs.iter().map(|s| s.subject.as_str()).collect();
                        map.insert("subscriptions_list".into(), subjects.into());
                    }
                    SubsDetail::Detail if !c.subs.is_empty() => {
                        map.insert(
                            "subscriptions_list_detail".into(),
                            serde_json::to_value(&c.subs).unwrap_or_default(),
                        );
                    }
                    _ => {}
                }
            }
            v
        })
        .collect();
    // Key order as the reference's (serde_json's map sorts; this is written out).
    let mut out = String::with_capacity(256 + page.len() * 512);
    let _ = write!(
        out,
        "{{\"server_id\":{},\"now\":\"{}\",\"num_connections\":{},\"total\":{},\"offset\":{},\"limit\":{},\"connections\":",
        serde_json::Value::from(server_id),
        crate::jetstream::api::format_time(now_ns),
        page.len(),
        total,
        q.offset,
        q.limit,
    );
    out.push_str(&serde_json::to_string(&page).unwrap_or_else(|_| "[]".into()));
    out.push('}');
    out.into_bytes()
}

/// A route as `/routez` shows it.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    pub rid: u64,
    pub remote_id: String,
    pub remote_name: String,
    pub did_solicit: bool,
    pub peer: std::net::SocketAddr,
    /// The address the other node advertises for routes.
    pub url: String,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub subscriptions: u64,
    pub pending_bytes: usize,
}

/// `/routez`, in the reference's shape.
pub fn routez(server_id: &str, server_name: &str, now: &str, routes: &[RouteSnapshot]) -> Vec<u8> {
    let rows: Vec<serde_json::Value> = routes
        .iter()
        .map(|r| {
            serde_json::json!({
                "rid": r.rid,
                "remote_id": r.remote_id,
                "remote_name": r.remote_name,
                "did_solicit": r.did_solicit,
                "ip": r.peer.ip().to_string(),
                "port": r.peer.port(),
                "advertised": r.url,
                "pending_size": r.pending_bytes,
                "in_msgs": r.in_msgs,
                "out_msgs": r.out_msgs,
                "in_bytes": r.in_bytes,
                "out_bytes": r.out_bytes,
                "subscriptions": r.subscriptions,
            })
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "server_id": server_id,
        "server_name": server_name,
        "now": now,
        "num_routes": rows.len(),
        "routes": rows,
    }))
    .unwrap_or_default()
}

/// `/meshz`: the WireGuard mesh, its members and their handshakes (meshbroker's own
/// endpoint; the reference has no mesh).
pub fn meshz(server_id: &str, now: &str, view: Option<&crate::mesh::MeshView>) -> Vec<u8> {
    let body = match view {
        Some(v) => serde_json::json!({
            "server_id": server_id,
            "now": now,
            "enabled": true,
            "mesh": v,
        }),
        None => serde_json::json!({
            "server_id": server_id,
            "now": now,
            "enabled": false,
        }),
    };
    serde_json::to_vec_pretty(&body).unwrap_or_default()
}

/// `/accountz`: the system account and every account's name.
pub fn accountz(server_id: &str, now: &str, system_account: &str, accounts: &[&str]) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "server_id": server_id,
        "now": now,
        "system_account": system_account,
        "accounts": accounts,
    }))
    .unwrap_or_default()
}

/// `/subsz`: how many subscriptions the subject index holds and, with `subs=1`, a page
/// of them (from the connections' snapshots). The reference's match-cache statistics
/// are not kept here (each publisher has its own cache), so they are not reported.
pub fn subsz(
    server_id: &str,
    now: &str,
    num_subscriptions: u64,
    subs: Option<Vec<SubSnapshot>>,
    offset: usize,
    limit: usize,
) -> Vec<u8> {
    let mut v = serde_json::json!({
        "server_id": server_id,
        "now": now,
        "num_subscriptions": num_subscriptions,
        "total": 0,
        "offset": offset,
        "limit": limit,
    });
    if let (Some(mut list), Some(map)) = (subs, v.as_object_mut()) {
        list.sort_by(|a, b| (a.cid, &a.sid).cmp(&(b.cid, &b.sid)));
        map.insert("total".into(), list.len().into());
        let page: Vec<serde_json::Value> = list
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|s| {
                let mut item = serde_json::to_value(&s).unwrap_or_default();
                if let Some(m) = item.as_object_mut() {
                    m.insert("account".into(), "$G".into());
                    m.insert("account_tag".into(), "$G".into());
                }
                item
            })
            .collect();
        map.insert("subscriptions_list".into(), page.into());
    }
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// Go's `time.Duration` string for whole seconds as the reference prints uptimes
/// (`0s`, `42s`, `3m7s`, `5h0m0s`, `2d3h0m0s`).
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h{m}m{s}s")
    } else if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[derive(Serialize, Default)]
struct Empty {}

#[derive(Serialize, Default)]
struct PerKind {
    clients: u64,
    routes: u64,
    gateways: u64,
    leafs: u64,
}

#[derive(Serialize)]
struct JetStreamVarz<'a> {
    config: JetStreamConfigz<'a>,
    stats: JetStreamStats,
    limits: JetStreamLimits,
}

#[derive(Serialize)]
struct JetStreamConfigz<'a> {
    max_memory: i64,
    max_storage: i64,
    store_dir: &'a str,
    /// Acks wait for an fsync'd commit: what the reference reports for its
    /// `sync_interval: always` (and then no interval). With `ack = "write"` false,
    /// and still no interval: the commit follows each write at once.
    sync_always: bool,
    strict: bool,
}

#[derive(Serialize)]
struct JetStreamStats {
    memory: u64,
    storage: u64,
    reserved_memory: u64,
    reserved_storage: u64,
    accounts: u64,
    ha_assets: u64,
    api: ApiStats,
}

#[derive(Serialize)]
struct ApiStats {
    level: u32,
    total: u64,
    errors: u64,
}

#[derive(Serialize)]
struct JetStreamLimits {
    default_max_consumers: u64,
}

impl JetStreamCounters {
    fn config(&self) -> JetStreamConfigz<'_> {
        JetStreamConfigz {
            max_memory: crate::jetstream::api::limit_or_none(self.max_memory),
            max_storage: crate::jetstream::api::limit_or_none(self.max_file),
            store_dir: &self.store_dir,
            sync_always: self.sync_always,
            strict: true,
        }
    }

    fn stats(&self) -> JetStreamStats {
        JetStreamStats {
            memory: self.memory,
            storage: self.storage,
            reserved_memory: self.reserved_memory,
            reserved_storage: self.reserved_storage,
            accounts: 1,
            ha_assets: 0,
            api: ApiStats {
                level: self.api_level,
                total: self.api_total,
                errors: self.api_errors,
            },
        }
    }

    fn totals(&self) -> (u64, u64, u64) {
        self.streams.iter().fold((0, 0, 0), |(m, b, c), s| {
            (m + s.messages, b + s.bytes, c + s.consumers)
        })
    }
}

/// `/varz`: the reference's keys, in its order, pretty-printed as it does. Keys for
/// what meshbroker does not have (gateways, leaf nodes, MQTT, Go's runtime) are left
/// out rather than filled with made-up values, except where the reference always
/// prints them empty.
pub fn varz(
    facts: &NodeFacts,
    now: &NodeCounters,
    js: Option<&JetStreamCounters>,
    http_req_stats: &BTreeMap<String, u64>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Varz<'a> {
        server_id: &'a str,
        server_name: &'a str,
        version: &'a str,
        proto: u32,
        host: &'a str,
        port: u16,
        max_connections: usize,
        ping_interval: u64,
        ping_max: u32,
        http_host: &'a str,
        http_port: u16,
        http_base_path: &'a str,
        https_port: u16,
        auth_timeout: u64,
        max_control_line: u64,
        max_payload: u64,
        max_pending: u64,
        cluster: Empty,
        gateway: Empty,
        leaf: Empty,
        mqtt: Empty,
        websocket: Empty,
        #[serde(serialize_with = "jetstream_or_empty")]
        jetstream: Option<JetStreamVarz<'a>>,
        tls_timeout: u64,
        write_deadline: u64,
        start: &'a str,
        now: &'a str,
        uptime: String,
        mem: u64,
        cores: usize,
        cpu: f64,
        connections: u64,
        total_connections: u64,
        routes: u64,
        remotes: u64,
        leafnodes: u64,
        in_msgs: u64,
        in_bytes: u64,
        in_client_msgs: u64,
        in_client_bytes: u64,
        out_msgs: u64,
        out_bytes: u64,
        out_client_msgs: u64,
        out_client_bytes: u64,
        slow_consumers: u64,
        stale_connections: u64,
        stalled_clients: u64,
        subscriptions: u64,
        http_req_stats: &'a BTreeMap<String, u64>,
        config_load_time: &'a str,
        config_digest: &'a str,
        slow_consumer_stats: PerKind,
        stale_connection_stats: PerKind,
    }
    fn jetstream_or_empty<S: serde::Serializer>(
        js: &Option<JetStreamVarz<'_>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match js {
            Some(js) => js.serialize(s),
            None => Empty {}.serialize(s),
        }
    }
    let v = Varz {
        server_id: &facts.server_id,
        server_name: &facts.server_name,
        version: &facts.version,
        proto: 1,
        host: &facts.host,
        port: facts.port,
        max_connections: facts.max_connections,
        ping_interval: facts.ping_interval_ns,
        ping_max: facts.ping_max,
        http_host: &facts.http_host,
        http_port: facts.http_port,
        http_base_path: "",
        https_port: 0,
        auth_timeout: 0,
        max_control_line: facts.max_control_line,
        max_payload: facts.max_payload,
        max_pending: facts.max_pending,
        cluster: Empty {},
        gateway: Empty {},
        leaf: Empty {},
        mqtt: Empty {},
        websocket: Empty {},
        jetstream: js.map(|js| JetStreamVarz {
            config: js.config(),
            stats: js.stats(),
            limits: JetStreamLimits {
                default_max_consumers: 0,
            },
        }),
        tls_timeout: 0,
        write_deadline: facts.write_deadline_ns,
        start: &facts.start,
        now: &now.now,
        uptime: uptime(now.uptime_secs),
        mem: now.mem,
        cores: now.cores,
        cpu: now.cpu,
        connections: now.connections,
        total_connections: now.total_connections,
        routes: 0,
        remotes: 0,
        leafnodes: 0,
        in_msgs: now.in_msgs,
        in_bytes: now.in_bytes,
        in_client_msgs: now.in_msgs,
        in_client_bytes: now.in_bytes,
        out_msgs: now.out_msgs,
        out_bytes: now.out_bytes,
        out_client_msgs: now.out_msgs,
        out_client_bytes: now.out_bytes,
        slow_consumers: now.slow_consumers,
        stale_connections: 0,
        stalled_clients: now.stalls,
        subscriptions: now.subscriptions,
        http_req_stats,
        config_load_time: &facts.config_load_time,
        config_digest: "",
        slow_consumer_stats: PerKind {
            clients: now.slow_consumers,
            ..PerKind::default()
        },
        stale_connection_stats: PerKind::default(),
    };
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// `/jsz` (without per-account details), as the reference shapes it.
pub fn jsz(server_id: &str, now: &str, js: &JetStreamCounters) -> Vec<u8> {
    #[derive(Serialize)]
    struct Jsz<'a> {
        #[serde(flatten)]
        stats: JetStreamStats,
        server_id: &'a str,
        now: &'a str,
        config: JetStreamConfigz<'a>,
        limits: JetStreamLimits,
        streams: u64,
        consumers: u64,
        messages: u64,
        bytes: u64,
        total: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        meta_cluster: Option<MetaCluster<'a>>,
    }
    /// The reference's `meta_cluster`, with the Raft numbers after its keys.
    #[derive(Serialize)]
    struct MetaCluster<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        leader: Option<&'a str>,
        replicas: Vec<Replica<'a>>,
        cluster_size: usize,
        term: u64,
        commit: u64,
        applied: u64,
        leader_changes: u64,
    }
    #[derive(Serialize)]
    struct Replica<'a> {
        name: &'a str,
        current: bool,
        lag: u64,
    }
    let (messages, bytes, consumers) = js.totals();
    let meta_cluster = js.meta.as_ref().map(|m| MetaCluster {
        name: &m.cluster,
        leader: m.leader.as_deref(),
        replicas: m
            .peers
            .iter()
            .map(|p| Replica {
                name: &p.name,
                current: p.current,
                lag: p.lag,
            })
            .collect(),
        cluster_size: m.size,
        term: m.term,
        commit: m.commit,
        applied: m.applied,
        leader_changes: m.leader_changes,
    });
    let v = Jsz {
        stats: js.stats(),
        server_id,
        now,
        config: js.config(),
        limits: JetStreamLimits {
            default_max_consumers: 0,
        },
        streams: js.streams.len() as u64,
        consumers,
        messages,
        bytes,
        total: 1,
        meta_cluster,
    };
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// One Raft group as `/raftz` shows it (this node's view).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftzGroup {
    pub account: String,
    pub name: String,
    /// This node's id, the leader's and the one voted for (0: none).
    pub id: u64,
    pub leader: u64,
    pub vote: u64,
    /// `LEADER`, `FOLLOWER` or `CANDIDATE`.
    pub state: &'static str,
    pub size: usize,
    pub committed: u64,
    pub applied: u64,
    /// Leader changes seen since start.
    pub leader_changes: u64,
    pub term: u64,
    /// The last entry's term and index.
    pub pterm: u64,
    pub pindex: u64,
    /// Entries and payload bytes held, and the first index held.
    pub log_entries: u64,
    pub log_bytes: u64,
    pub first_index: u64,
    pub peers: Vec<RaftzPeer>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftzPeer {
    pub id: u64,
    pub name: String,
    /// Routed to now.
    pub known: bool,
    /// Microseconds since last heard from (`None`: never).
    pub last_seen_us: Option<u64>,
    /// Committed entries the peer lacks, seen from the leader (`None` elsewhere).
    pub lag: Option<u64>,
}

/// `/raftz`'s filters: an account (the system account when absent, as at the
/// reference) and, optionally, one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftzQuery {
    pub account: String,
    pub group: Option<String>,
}

impl RaftzQuery {
    /// Parses `acc=…&group=…` (percent-encoded: `acc=%24G`).
    pub fn parse(query: &str) -> RaftzQuery {
        let mut q = RaftzQuery {
            account: "$SYS".to_string(),
            group: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            match key {
                "acc" if !value.is_empty() => q.account = value,
                "group" if !value.is_empty() => q.group = Some(value),
                _ => {}
            }
        }
        q
    }
}

/// A node id as `/raftz` names it.
fn raft_id(id: u64) -> String {
    format!("{id:016x}")
}

/// `/raftz`: account → group → this node's view of it, as the reference shapes it
/// (its queue lengths, which we do not have, left out; `wal` is the in-memory log).
pub fn raftz(groups: &[RaftzGroup], q: &RaftzQuery) -> Vec<u8> {
    #[derive(Serialize)]
    struct Group<'a> {
        id: String,
        state: &'a str,
        size: usize,
        quorum_needed: usize,
        committed: u64,
        applied: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        leader: Option<String>,
        ever_had_leader: bool,
        term: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        voted_for: Option<String>,
        pterm: u64,
        pindex: u64,
        wal: Wal,
        peers: BTreeMap<String, Peer<'a>>,
    }
    #[derive(Serialize)]
    struct Wal {
        messages: u64,
        bytes: u64,
        first_seq: u64,
        last_seq: u64,
    }
    #[derive(Serialize)]
    struct Peer<'a> {
        name: &'a str,
        known: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen: Option<String>,
    }
    let nonzero = |id: u64| (id != 0).then(|| raft_id(id));
    let mut accounts: BTreeMap<&str, BTreeMap<&str, Group>> = BTreeMap::new();
    for g in groups {
        if g.account != q.account || q.group.as_ref().is_some_and(|n| *n != g.name) {
            continue;
        }
        let group = Group {
            id: raft_id(g.id),
            state: g.state,
            size: g.size,
            quorum_needed: g.size / 2 + 1,
            committed: g.committed,
            applied: g.applied,
            leader: nonzero(g.leader),
            ever_had_leader: g.leader_changes > 0,
            term: g.term,
            voted_for: nonzero(g.vote),
            pterm: g.pterm,
            pindex: g.pindex,
            wal: Wal {
                messages: g.log_entries,
                bytes: g.log_bytes,
                first_seq: g.first_index,
                last_seq: g.pindex,
            },
            peers: g
                .peers
                .iter()
                .filter(|p| p.id != g.id)
                .map(|p| {
                    (
                        raft_id(p.id),
                        Peer {
                            name: &p.name,
                            known: p.known,
                            last_seen: p.last_seen_us.map(go_duration_us),
                        },
                    )
                })
                .collect(),
        };
        accounts
            .entry(&g.account)
            .or_default()
            .insert(&g.name, group);
    }
    serde_json::to_vec_pretty(&accounts).unwrap_or_default()
}

/// Go's `time.Duration` string for a span in microseconds (`850µs`, `469.688ms`,
/// `2.5s`, `1m3.2s`), as the reference prints `last_seen`.
pub fn go_duration_us(us: u64) -> String {
    // Trailing zeros of a fraction go, and the point with them.
    fn frac(whole: u64, part: u64, digits: usize) -> String {
        let f = format!("{part:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{f}")
        }
    }
    if us < 1_000 {
        return format!("{us}µs");
    }
    if us < 1_000_000 {
        return format!("{}ms", frac(us / 1_000, us % 1_000, 3));
    }
    let secs = us / 1_000_000;
    let s = frac(secs % 60, us % 1_000_000, 6);
    match (secs / 3600, secs / 60 % 60) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `/healthz`'s options, as the reference names them: `js-enabled-only` checks only
/// that JetStream runs, `js-server-only` (and `js-meta-only`) stop after the meta
/// group, without looking at the streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthzQuery {
    pub enabled_only: bool,
    pub server_only: bool,
}

impl HealthzQuery {
    pub fn parse(query: &str) -> HealthzQuery {
        let mut q = HealthzQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            match key {
                "js-enabled-only" | "js-enabled" => q.enabled_only = is_true(value),
                "js-server-only" | "js-meta-only" => q.server_only = is_true(value),
                _ => {}
            }
        }
        q
    }
}

/// One Raft group on this node, as the health check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHealth {
    pub account: String,
    /// The stream it replicates; empty for the meta group.
    pub stream: String,
    pub has_leader: bool,
    /// The leader, or a follower that heard from it lately and is not catching up.
    pub current: bool,
    /// Not stopped on this node (its store was lost, or it broke).
    pub running: bool,
}

/// What `/healthz` answers: (HTTP status, body).
///
/// The node is healthy when it serves clients and, where JetStream is configured,
/// JetStream runs. Clustered (`groups` is `Some`), as the reference checks it, in its
/// order and with its words: the meta group runs here, a meta leader is known, this
/// node is current with it, and each stream group here is current (not catching up).
pub fn healthz(
    js_configured: bool,
    js_running: bool,
    groups: Option<&[GroupHealth]>,
    q: HealthzQuery,
) -> (u16, Vec<u8>) {
    #[derive(Serialize)]
    struct Unavailable {
        status: &'static str,
        status_code: u16,
        error: String,
    }
    let unavailable = |error: String| {
        let body = Unavailable {
            status: "unavailable",
            status_code: 503,
            error,
        };
        (503, serde_json::to_vec(&body).unwrap_or_default())
    };
    if js_configured && !js_running {
        return unavailable("JetStream is not running".into());
    }
    if q.enabled_only {
        return (200, br#"{"status":"ok"}"#.to_vec());
    }
    let Some(groups) = groups else {
        return (200, br#"{"status":"ok"}"#.to_vec());
    };
    match groups.iter().find(|g| g.stream.is_empty()) {
        // Stopped on this node (its store was lost).
        None => return unavailable("JetStream meta layer is not running".into()),
        Some(meta) if !meta.running => {
            return unavailable("JetStream meta layer is not running".into())
        }
        Some(meta) if !meta.has_leader => {
            return unavailable("JetStream has not established contact with a meta leader".into())
        }
        Some(meta) if !meta.current => {
            return unavailable("JetStream is not current with the meta leader".into())
        }
        Some(_) => {}
    }
    if !q.server_only {
        let mut behind: Vec<&GroupHealth> = groups
            .iter()
            .filter(|g| !g.stream.is_empty() && !g.current)
            .collect();
        // The same answer whichever order the groups came in.
        behind.sort_by(|a, b| (&a.account, &a.stream).cmp(&(&b.account, &b.stream)));
        if let Some(g) = behind.first() {
            return unavailable(format!(
                "JetStream stream '{} > {}' is not current",
                g.account, g.stream
            ));
        }
    }
    (200, br#"{"status":"ok"}"#.to_vec())
}

/// `/metrics`: Prometheus text exposition (format 0.0.4) of the node's counters.
pub fn prometheus(
    now: &NodeCounters,
    js: Option<&JetStreamCounters>,
    raft: &[RaftzGroup],
) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP meshbroker_{name} {help}");
        let _ = writeln!(out, "# TYPE meshbroker_{name} {kind}");
        let _ = writeln!(out, "meshbroker_{name} {value}");
    };
    metric(
        "connections",
        "gauge",
        "Client connections open now.",
        now.connections.to_string(),
    );
    metric(
        "connections_total",
        "counter",
        "Client connections accepted since start.",
        now.total_connections.to_string(),
    );
    metric(
        "subscriptions",
        "gauge",
        "Subscriptions in the subject index.",
        now.subscriptions.to_string(),
    );
    metric(
        "in_messages_total",
        "counter",
        "Messages received from clients.",
        now.in_msgs.to_string(),
    );
    metric(
        "in_bytes_total",
        "counter",
        "Payload bytes received from clients.",
        now.in_bytes.to_string(),
    );
    metric(
        "out_messages_total",
        "counter",
        "Messages delivered to clients.",
        now.out_msgs.to_string(),
    );
    metric(
        "out_bytes_total",
        "counter",
        "Payload bytes delivered to clients.",
        now.out_bytes.to_string(),
    );
    metric(
        "slow_consumers_total",
        "counter",
        "Clients cut off as slow consumers.",
        now.slow_consumers.to_string(),
    );
    metric(
        "stalls_total",
        "counter",
        "Times a client publisher waited for a subscriber that fell behind.",
        now.stalls.to_string(),
    );
    metric(
        "resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
        now.mem.to_string(),
    );
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        now.uptime_secs.to_string(),
    );
    if let Some(js) = js {
        let (_, _, consumers) = js.totals();
        metric(
            "jetstream_memory_bytes",
            "gauge",
            "Bytes held by memory streams.",
            js.memory.to_string(),
        );
        metric(
            "jetstream_storage_bytes",
            "gauge",
            "Bytes held by file streams.",
            js.storage.to_string(),
        );
        if let Some(m) = &js.meta {
            metric(
                "raft_meta_term",
                "gauge",
                "The meta group's Raft term.",
                m.term.to_string(),
            );
            metric(
                "raft_meta_commit_index",
                "gauge",
                "The meta group's commit index.",
                m.commit.to_string(),
            );
            metric(
                "raft_meta_applied_index",
                "gauge",
                "The meta group's applied index.",
                m.applied.to_string(),
            );
            metric(
                "raft_meta_leader_changes_total",
                "counter",
                "Meta leader changes this node has seen.",
                m.leader_changes.to_string(),
            );
            metric(
                "raft_meta_is_leader",
                "gauge",
                "1 while this node leads the meta group.",
                u8::from(m.is_leader).to_string(),
            );
            metric(
                "raft_meta_peers_current",
                "gauge",
                "Other meta peers routed to and (seen from the leader) up to date.",
                m.peers.iter().filter(|p| p.current).count().to_string(),
            );
        }
        metric(
            "jetstream_streams",
            "gauge",
            "Streams.",
            js.streams.len().to_string(),
        );
        metric(
            "jetstream_consumers",
            "gauge",
            "Consumers of all streams.",
            consumers.to_string(),
        );
        metric(
            "jetstream_api_requests_total",
            "counter",
            "JetStream API requests answered.",
            js.api_total.to_string(),
        );
        metric(
            "jetstream_api_errors_total",
            "counter",
            "JetStream API requests answered with an error.",
            js.api_errors.to_string(),
        );
        type Gauge = fn(&StreamCounters) -> u64;
        let per_stream: [(&str, &str, Gauge); 3] = [
            ("stream_messages", "Messages in the stream.", |s| s.messages),
            ("stream_bytes", "Bytes in the stream.", |s| s.bytes),
            ("stream_consumers", "Consumers of the stream.", |s| {
                s.consumers
            }),
        ];
        for (name, help, value) in per_stream {
            let _ = writeln!(out, "# HELP meshbroker_jetstream_{name} {help}");
            let _ = writeln!(out, "# TYPE meshbroker_jetstream_{name} gauge");
            for s in &js.streams {
                let _ = writeln!(
                    out,
                    "meshbroker_jetstream_{name}{{stream=\"{}\"}} {}",
                    label_value(&s.name),
                    value(s)
                );
            }
        }
    }
    raft_metrics(&mut out, raft);
    out
}

/// Each Raft group's numbers, labelled by account and group name.
fn raft_metrics(out: &mut String, groups: &[RaftzGroup]) {
    if groups.is_empty() {
        return;
    }
    type Gauge = fn(&RaftzGroup) -> u64;
    let per_group: [(&str, &str, &str, Gauge); 8] = [
        ("raft_group_term", "gauge", "The group's Raft term.", |g| {
            g.term
        }),
        (
            "raft_group_commit_index",
            "gauge",
            "The group's commit index.",
            |g| g.committed,
        ),
        (
            "raft_group_applied_index",
            "gauge",
            "The group's applied index.",
            |g| g.applied,
        ),
        (
            "raft_group_leader_changes_total",
            "counter",
            "Leader changes this node has seen in the group.",
            |g| g.leader_changes,
        ),
        (
            "raft_group_is_leader",
            "gauge",
            "1 while this node leads the group.",
            |g| u64::from(g.state == "LEADER"),
        ),
        (
            "raft_group_log_entries",
            "gauge",
            "Entries the group's log holds (it compacts what every voter holds).",
            |g| g.log_entries,
        ),
        (
            "raft_group_log_bytes",
            "gauge",
            "Payload bytes the group's log holds.",
            |g| g.log_bytes,
        ),
        (
            "raft_group_first_index",
            "gauge",
            "The first index the group's log holds.",
            |g| g.first_index,
        ),
    ];
    for (name, kind, help, value) in per_group {
        let _ = writeln!(out, "# HELP meshbroker_{name} {help}");
        let _ = writeln!(out, "# TYPE meshbroker_{name} {kind}");
        for g in groups {
            let _ = writeln!(
                out,
                "meshbroker_{name}{{account=\"{}\",group=\"{}\"}} {}",
                label_value(&g.account),
                label_value(&g.name),
                value(g)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP meshbroker_raft_group_peer_lag Committed entries a peer lacks, seen from the group's leader."
    );
    let _ = writeln!(out, "# TYPE meshbroker_raft_group_peer_lag gauge");
    for g in groups {
        for p in &g.peers {
            if let Some(lag) = p.lag.filter(|_| p.id != g.id) {
                let _ = writeln!(
                    out,
                    "meshbroker_raft_group_peer_lag{{account=\"{}\",group=\"{}\",peer=\"{}\"}} {lag}",
                    label_value(&g.account),
                    label_value(&g.name),
                    label_value(&p.name)
                );
            }
        }
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raft_group(account: &str, name: &str) -> RaftzGroup {
        RaftzGroup {
            account: account.into(),
            name: name.into(),
            id: 1,
            leader: 2,
            vote: 2,
            state: "FOLLOWER",
            size: 3,
            committed: 9000,
            applied: 8999,
            leader_changes: 1,
            term: 4,
            pterm: 4,
            pindex: 9001,
            log_entries: 905,
            log_bytes: 70_000,
            first_index: 8097,
            peers: vec![
                RaftzPeer {
                    id: 1,
                    name: "me".into(),
                    known: true,
                    last_seen_us: None,
                    lag: None,
                },
                RaftzPeer {
                    id: 2,
                    name: "b".into(),
                    known: true,
                    last_seen_us: Some(469_688),
                    lag: None,
                },
            ],
        }
    }

    #[test]
    fn raftz_filters_by_account_and_group_and_shapes_as_the_reference() {
        let groups = [
            raft_group("$SYS", "_meta_"),
            raft_group("$G", "S-R3F-1"),
            raft_group("$G", "S-R3F-2"),
        ];
        let parse = |b: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        let sys = parse(raftz(&groups, &RaftzQuery::parse("")));
        assert_eq!(sys.as_object().map(|o| o.len()), Some(1));
        let meta = &sys["$SYS"]["_meta_"];
        assert_eq!(meta["quorum_needed"], 2);
        assert_eq!(meta["leader"], "0000000000000002");
        assert_eq!(meta["wal"]["first_seq"], 8097);
        assert_eq!(meta["wal"]["last_seq"], 9001);
        // This node is not among its own peers.
        let peers = meta["peers"].as_object().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers["0000000000000002"]["last_seen"], "469.688ms");
        let one = parse(raftz(&groups, &RaftzQuery::parse("acc=%24G&group=S-R3F-2")));
        let names: Vec<_> = one["$G"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(names, ["S-R3F-2"]);
        assert_eq!(raftz(&groups, &RaftzQuery::parse("acc=nobody")), b"{}");
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(go_duration_us(850), "850µs");
        assert_eq!(go_duration_us(1_000), "1ms");
        assert_eq!(go_duration_us(469_688), "469.688ms");
        assert_eq!(go_duration_us(2_500_000), "2.5s");
        assert_eq!(go_duration_us(63_200_000), "1m3.2s");
        assert_eq!(go_duration_us(3_600_000_000), "1h0m0s");
    }

    fn conn(cid: u64, in_msgs: u64, subs: usize) -> ConnSnapshot {
        ConnSnapshot {
            cid,
            in_msgs,
            start_ns: 1_000_000_000 * cid as i64,
            subs: (0..subs)
                .map(|i| SubSnapshot {
                    subject: format!("s.{i}"),
                    sid: i.to_string(),
                    cid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn connz_sorts_pages_and_lists_subscriptions() {
        let conns = vec![conn(1, 5, 0), conn(2, 50, 2), conn(3, 7, 1)];
        let page = |query: &str| -> serde_json::Value {
            let q = ConnzQuery::parse(query).unwrap();
            serde_json::from_slice(&connz("S", 10_000_000_000, conns.clone(), &q)).unwrap()
        };
        let cids = |v: &serde_json::Value| -> Vec<u64> {
            v["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["cid"].as_u64().unwrap())
                .collect()
        };
        let all = page("");
        assert_eq!(cids(&all), [1, 2, 3]);
        assert_eq!(
            (all["total"].as_u64(), all["limit"].as_u64()),
            (Some(3), Some(1024))
        );
        assert_eq!(all["connections"][0]["uptime"], "9s");
        assert_eq!(cids(&page("sort=msgs_from")), [2, 3, 1]);
        assert_eq!(cids(&page("sort=subs&limit=1")), [2]);
        let second = page("offset=1&limit=1");
        assert_eq!(
            (cids(&second), second["num_connections"].as_u64()),
            (vec![2], Some(1))
        );
        let subs = page("subs=1");
        assert_eq!(
            subs["connections"][1]["subscriptions_list"],
            serde_json::json!(["s.0", "s.1"])
        );
        assert!(subs["connections"][0].get("subscriptions_list").is_none());
        let detail = page("subs=detail");
        assert_eq!(
            detail["connections"][2]["subscriptions_list_detail"][0]["cid"],
            3
        );
        assert_eq!(
            ConnzQuery::parse("sort=bogus"),
            Err("invalid sorting option: bogus".to_string())
        );
    }

    #[test]
    fn uptime_reads_like_the_references() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(187), "3m7s");
        assert_eq!(uptime(5 * 3600), "5h0m0s");
        assert_eq!(uptime(2 * 86_400 + 3 * 3600), "2d3h0m0s");
    }

    #[test]
    fn varz_has_the_references_keys_and_our_numbers() {
        let facts = NodeFacts {
            server_id: "ID".into(),
            port: 4222,
            ..Default::default()
        };
        let now = NodeCounters {
            connections: 3,
            in_msgs: 10,
            ..Default::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&varz(&facts, &now, None, &BTreeMap::new())).unwrap();
        assert_eq!(v["connections"], 3);
        assert_eq!(v["in_client_msgs"], 10);
        assert_eq!(v["jetstream"], serde_json::json!({}));
        assert_eq!(v["port"], 4222);
    }

    #[test]
    fn healthz_fails_only_when_configured_jetstream_is_down() {
        let all = HealthzQuery::default();
        assert_eq!(healthz(false, false, None, all).0, 200);
        assert_eq!(healthz(true, true, None, all).0, 200);
        let (code, body) = healthz(true, false, None, all);
        assert_eq!(code, 503);
        assert_eq!(
            body,
            br#"{"status":"unavailable","status_code":503,"error":"JetStream is not running"}"#
        );
    }

    #[test]
    fn clustered_healthz_checks_the_meta_group_then_each_stream_as_the_reference() {
        let group = |stream: &str, has_leader: bool, current: bool| GroupHealth {
            account: "$G".into(),
            stream: stream.into(),
            has_leader,
            current,
            running: true,
        };
        let error = |groups: &[GroupHealth], q: &str| {
            let (code, body) = healthz(true, true, Some(groups), HealthzQuery::parse(q));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (code, v["error"].as_str().unwrap_or("").to_string())
        };
        let meta = group("", true, true);
        assert_eq!(
            error(&[meta.clone(), group("S", true, true)], ""),
            (200, "".into())
        );
        assert_eq!(
            error(&[group("", false, false)], ""),
            (
                503,
                "JetStream has not established contact with a meta leader".into()
            )
        );
        assert_eq!(
            error(&[group("", true, false)], ""),
            (503, "JetStream is not current with the meta leader".into())
        );
        let catching_up = [
            meta.clone(),
            group("Z", true, false),
            group("B", true, false),
        ];
        assert_eq!(
            error(&catching_up, ""),
            (503, "JetStream stream '$G > B' is not current".into())
        );
        // Narrower checks, as the reference's options.
        assert_eq!(error(&catching_up, "js-server-only=true").0, 200);
        assert_eq!(
            error(&[group("", false, false)], "js-enabled-only=1").0,
            200
        );
        // A node whose meta group stopped (its store lost) is not healthy.
        assert_eq!(
            error(&[group("S", true, true)], ""),
            (503, "JetStream meta layer is not running".into())
        );
        let mut stopped = group("", true, false);
        stopped.running = false;
        assert_eq!(
            error(&[stopped], ""),
            (503, "JetStream meta layer is not running".into())
        );
    }

    #[test]
    fn prometheus_text_is_well_formed() {
        let js = JetStreamCounters {
            streams: vec![StreamCounters {
                name: "a\"b".into(),
                messages: 5,
                bytes: 100,
                consumers: 1,
            }],
            ..Default::default()
        };
        let mut leading = raft_group("$G", "S-R3F-1");
        leading.state = "LEADER";
        leading.peers[1].lag = Some(7);
        let text = prometheus(&NodeCounters::default(), Some(&js), &[leading]);
        assert!(text.contains("meshbroker_jetstream_stream_messages{stream=\"a\\\"b\"} 5\n"));
        assert!(text
            .contains("meshbroker_raft_group_log_entries{account=\"$G\",group=\"S-R3F-1\"} 905\n"));
        assert!(text.contains(
            "meshbroker_raft_group_peer_lag{account=\"$G\",group=\"S-R3F-1\",peer=\"b\"} 7\n"
        ));
        assert!(
            text.contains("meshbroker_raft_group_is_leader{account=\"$G\",group=\"S-R3F-1\"} 1\n")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("meshbroker_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
