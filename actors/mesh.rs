//! The mesh actor: one per node with `[mesh]`, and the whole of a client member
//! (`meshbroker mesh member`, [`Member`]).
//!
//! It owns the WireGuard interface (created or adopted at start, through
//! `wireguard-control`; with the userspace backend it runs wireguard-go as its own
//! child, so the daemon never outlives the node), the UDP sockets announcements travel
//! on (one for the underlay, one tied to the interface for what crosses the mesh), and
//! the membership state (`crate::mesh::Membership`). Every heartbeat it announces
//! itself to every member (over the mesh and over the underlay; to client members with
//! their key), applies membership changes to the interface in place (one update per
//! round, never a remove-and-add), reads the peers' handshake ages and byte counters,
//! and tells the cluster actor which brokers to route to and which to drop; on a client
//! member, it keeps the live brokers' URLs in the brokers file instead.
//!
//! Keys never reach a log line: `wireguard_control::Key` prints itself in full, so it
//! is never formatted; peers are named by their node name and a key prefix.
//!
//! Who waits on whom: it awaits the blocking pool (WireGuard and `ip` calls); it only
//! sends to the cluster actor, never awaits it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::cluster::ClusterHandle;
use super::context::short_id;
use super::runtime;
use crate::mesh::{
    decode_key, encode, AnnounceKey, AnnounceKeys, Membership, MeshBackend, MeshConfig, MeshEvent,
    MeshView, Network, NodeRecord, PeerView, Role,
};

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("key `mesh.private_key_file`: {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("mesh interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error("key `mesh.client_secret_file`: {0}")]
    ClientSecret(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("mesh announcements: cannot open a socket for the underlay: {0}")]
    UnderlaySocket(#[source] std::io::Error),
    #[error("mesh announcements: cannot bind UDP port {port}: {source}")]
    Socket {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Writes a new private key (base64, mode 0600) to `out`, refusing to overwrite one,
/// and returns the public key to give other nodes as a seed.
pub fn keygen(out: &Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = Key::generate_private();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(file, "{}", key.to_base64()).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(key.get_public().to_base64())
}

fn read_key(path: &Path) -> Result<Key, MeshError> {
    let err = |reason: String| MeshError::Key {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    Key::from_base64(text.trim()).map_err(|_| err(crate::mesh::NOT_A_KEY.into()))
}

/// The interface once set up, and who owns it.
struct Interface {
    name: InterfaceName,
    label: String,
    backend: Backend,
    /// wireguard-go, when we started it.
    child: Option<Child>,
    /// We created the kernel link (deleted again at shutdown).
    created_link: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn uapi_socket(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{name}.sock"))
}

fn uapi_alive(name: &str) -> bool {
    std::os::unix::net::UnixStream::connect(uapi_socket(name)).is_ok()
}

/// Starts wireguard-go in the foreground as our child: its logs go to ours, and the
/// kernel kills it if this process dies (so a killed node leaves no daemon behind).
fn spawn_wireguard_go(program: &Path, name: &str) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    command
        .arg("-f")
        .arg(name)
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches nothing of the
    // parent's state; it is all the child does between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e} (install wireguard-go)",
            program.display()
        )
    })?;
    for (stream, label) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            "stderr",
        ),
    ] {
        if let Some(stream) = stream {
            let name = name.to_string();
            let thread = format!("wireguard-go-{label}");
            let _ = runtime::spawn_thread(&thread, move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    log::debug!("wireguard-go {name} ({label}): {line}");
                }
            });
        }
    }
    let deadline = runtime::now() + Duration::from_secs(5);
    while !uapi_alive(name) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "wireguard-go exited ({status}) before opening its control socket (is the name taken on this host, or /dev/net/tun missing?)"
            ));
        }
        if runtime::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("wireguard-go did not open its control socket within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// How long a running wireguard-go must stay up to be adopted (see `setup_interface`).
const ADOPT_SETTLE: Duration = Duration::from_millis(300);

/// How long a dying wireguard-go and its device get to go away.
const OLD_DEVICE_GONE: Duration = Duration::from_secs(2);

/// Polls `done` every 20 ms for up to `limit`; whether it came true. (Blocking: at
/// start, or off the executor.)
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = runtime::now() + limit;
    loop {
        if done() {
            return true;
        }
        if runtime::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The smallest MTU of the host's other interfaces that are up, less 80 (WireGuard's
/// overhead over an IPv6 underlay), so mesh packets are never fragmented.
fn default_mtu(ours: &str) -> u32 {
    let mut smallest = 1500u32;
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "lo" || name == ours {
                continue;
            }
            let up = std::fs::read_to_string(entry.path().join("operstate"))
                .is_ok_and(|s| s.trim() != "down");
            let mtu = std::fs::read_to_string(entry.path().join("mtu"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if let (true, Some(mtu)) = (up, mtu) {
                smallest = smallest.min(mtu);
            }
        }
    }
    smallest.saturating_sub(80).max(1280)
}

fn setup_interface(
    config: &MeshConfig,
    key: &Key,
    address: IpAddr,
    network: Network,
) -> Result<Interface, MeshError> {
    let prefix = network.prefix_len();
    let label = config.interface.clone().unwrap_or_default();
    let err = |reason: String| MeshError::Interface {
        interface: label.clone(),
        reason,
    };
    let name: InterfaceName = label
        .parse()
        .map_err(|e| err(format!("invalid name: {e}")))?;
    let settings = || {
        DeviceUpdate::new()
            .set_private_key(Key(key.0))
            .set_listen_port(config.listen_port)
    };
    let mut child = None;
    let mut created_link = false;
    let kernel = match config.backend {
        MeshBackend::Userspace => false,
        MeshBackend::Kernel | MeshBackend::Auto => {
            let existed = Device::get(&name, Backend::Kernel).is_ok();
            match settings().apply(&name, Backend::Kernel) {
                Ok(()) => {
                    created_link = !existed;
                    true
                }
                Err(e) if config.backend == MeshBackend::Auto => {
                    log::info!("mesh: kernel WireGuard unavailable ({e}); using wireguard-go");
                    false
                }
                Err(e) => return Err(err(format!("kernel WireGuard: {e}"))),
            }
        }
    };
    let backend = if kernel {
        Backend::Kernel
    } else {
        // A running wireguard-go is adopted, unless it is dying: the one of a node
        // killed a moment ago (it dies with its parent) still answers for a few
        // milliseconds, and would take our configuration with it.
        let mut adopted = false;
        if uapi_alive(&label) && !wait_for(ADOPT_SETTLE, || !uapi_alive(&label)) {
            log::info!("mesh: adopting the running userspace interface {label}");
            match settings().apply(&name, Backend::Userspace) {
                Ok(()) => adopted = true,
                Err(e) if wait_for(OLD_DEVICE_GONE, || !uapi_alive(&label)) => {
                    log::info!("mesh: the running {label} went away ({e}); starting our own");
                }
                Err(e) => return Err(err(format!("configuring wireguard-go: {e}"))),
            }
        }
        if !adopted {
            // The tun device of a wireguard-go that just died goes a moment after it.
            let device = Path::new("/sys/class/net").join(&label);
            wait_for(OLD_DEVICE_GONE, || !device.exists());
            let mut spawned = spawn_wireguard_go(&config.wireguard_go, &label).map_err(err)?;
            if let Err(e) = settings().apply(&name, Backend::Userspace) {
                let _ = spawned.kill();
                let _ = spawned.wait();
                return Err(err(format!("configuring wireguard-go: {e}")));
            }
            child = Some(spawned);
        }
        Backend::Userspace
    };
    let iface = Interface {
        name,
        label: label.clone(),
        backend,
        child,
        created_link,
    };
    let mtu = config.mtu.unwrap_or_else(|| default_mtu(&label));
    let configure = || -> Result<(), String> {
        ip(&["link", "set", "dev", &label, "mtu", &mtu.to_string(), "up"])?;
        let with_prefix = format!("{address}/{prefix}");
        let mut args = vec!["addr", "replace", &with_prefix, "dev", &label];
        // No duplicate address detection: the address is derived from our key, and
        // the kernel would hold it back (tentative) for a second or more meanwhile.
        if address.is_ipv6() {
            args.push("nodad");
        }
        ip(&args)
    };
    if let Err(e) = configure() {
        iface.close();
        return Err(err(e));
    }
    log::info!(
        "mesh: interface {label} up ({}), address {address}/{prefix}, mtu {mtu}, WireGuard port {}",
        if kernel { "kernel" } else { "wireguard-go" },
        config.listen_port
    );
    Ok(iface)
}

impl Interface {
    /// Takes the interface down if we made it.
    fn close(self) {
        drop(self);
    }
}

/// Also when a start fails after the interface was made (a port taken, a bad file):
/// the daemon and its control socket never outlive the node.
impl Drop for Interface {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // wireguard-go watches its control socket and exits cleanly (taking the
            // tun device with it) when the socket is removed.
            let _ = std::fs::remove_file(uapi_socket(&self.label));
            let deadline = runtime::now() + Duration::from_secs(1);
            while matches!(child.try_wait(), Ok(None)) && runtime::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.created_link {
            let _ = ip(&["link", "del", "dev", &self.label]);
        }
    }
}

enum MeshCmd {
    /// Say goodbye to every member and take the interface down; answer when done.
    Shutdown(async_channel::Sender<()>),
}

/// How the node reaches its mesh actor.
pub struct MeshHandle {
    tx: async_channel::Sender<MeshCmd>,
    pub view: Arc<arc_swap::ArcSwap<MeshView>>,
}

impl MeshHandle {
    /// Leaves the mesh (members drop this node at once) and removes the interface.
    pub fn shutdown(&self, limit: Duration) {
        let (tx, rx) = async_channel::bounded(1);
        if self.tx.try_send(MeshCmd::Shutdown(tx)).is_ok() {
            let _ = runtime::block_on(runtime::timeout(limit, rx.recv()));
        }
    }
}

/// What the node needs before the cluster listener binds: the interface with its
/// address. The actor itself starts with [`start`].
pub struct Prepared {
    config: MeshConfig,
    iface: Interface,
    key: Key,
    me: NodeRecord,
    network: Network,
    socket: std::net::UdpSocket,
    /// Announcements that crossed the mesh: bound to the mesh address, tied to the
    /// interface.
    mesh_socket: std::net::UdpSocket,
}

impl Prepared {
    pub fn address(&self) -> IpAddr {
        self.me.mesh_addr
    }

    /// The client listener's port on the mesh address, announced to client members.
    pub fn set_client_port(&mut self, port: Option<u16>) {
        self.me.client_port = port;
    }

    /// The WireGuard interface's name.
    pub fn interface(&self) -> &str {
        &self.iface.label
    }
}

/// Sets up the interface and the announcement socket (blocking; at node start) for a
/// member of cluster `cluster_name`'s mesh.
pub fn prepare(
    config: &MeshConfig,
    server_name: &str,
    cluster_name: &str,
) -> Result<Prepared, MeshError> {
    let key_path = config.private_key_file.clone().unwrap_or_default();
    let key = read_key(&key_path)?;
    let public = key.get_public();
    let network = config
        .network(cluster_name)
        .map_err(|e| MeshError::Interface {
            interface: config.interface.clone().unwrap_or_default(),
            reason: e,
        })?;
    let address = config
        .address
        .unwrap_or_else(|| network.address_for(&public.0, config.role));
    let endpoint: SocketAddr = config
        .endpoint
        .as_deref()
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| MeshError::Interface {
            interface: config.interface.clone().unwrap_or_default(),
            reason: "mesh.endpoint is not an ip:port".into(),
        })?;
    let port = config.discovery_port();
    // Both families: the underlay's copies (IPv4 here) and the mesh's (IPv6 on a
    // ULA network).
    let socket =
        runtime::udp_any_family(port).map_err(|source| MeshError::Socket { port, source })?;
    let iface = setup_interface(config, &key, address, network)?;
    let mesh_socket = runtime::udp_on_device(SocketAddr::new(address, port), &iface.label)
        .map_err(|source| MeshError::Socket { port, source })?;
    let incarnation = incarnation_now();
    let me = NodeRecord {
        key: public.to_base64(),
        name: server_name.to_string(),
        endpoint,
        mesh_addr: address,
        route_port: config.route_port,
        incarnation,
        role: config.role,
        client_port: None,
    };
    Ok(Prepared {
        config: config.clone(),
        iface,
        key,
        me,
        network,
        socket,
        mesh_socket,
    })
}

/// A new incarnation: the wall clock in milliseconds (a node started again, or its
/// interface made again, announces a larger one than before).
fn incarnation_now() -> u64 {
    runtime::wall_clock()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the mesh actor serves: a broker's cluster (told whom to route to), or a
/// client member (which keeps the brokers' URLs in a file).
pub enum Plane {
    Broker(ClusterHandle),
    Member,
}

/// Starts the mesh actor. `keys` are the cluster's (a broker) and the client
/// members'; `listeners` are tied to the interface again whenever it is made again.
pub fn start(
    prepared: Prepared,
    cluster_name: &str,
    keys: AnnounceKeys,
    plane: Plane,
    listeners: Vec<runtime::DeviceBinding>,
    spawner: &runtime::Spawner,
) -> Result<MeshHandle, MeshError> {
    let Prepared {
        config,
        iface,
        key,
        me,
        network,
        socket,
        mesh_socket,
    } = prepared;
    let port = config.discovery_port();
    let mut listeners = listeners;
    listeners.push(
        runtime::DeviceBinding::of(&mesh_socket)
            .map_err(|source| MeshError::Socket { port, source })?,
    );
    let socket = runtime::UdpSocket::try_from(socket)
        .map_err(|source| MeshError::Socket { port, source })?;
    let mesh_socket = runtime::UdpSocket::try_from(mesh_socket)
        .map_err(|source| MeshError::Socket { port, source })?;
    let underlay = runtime::ErrorReportingUdp::bind().map_err(MeshError::UnderlaySocket)?;
    let view = Arc::new(arc_swap::ArcSwap::from_pointee(MeshView {
        interface: iface.label.clone(),
        role: me.role,
        network: network.to_string(),
        backend: match iface.backend {
            Backend::Kernel => "kernel".into(),
            _ => "wireguard-go".into(),
        },
        public_key: me.key.clone(),
        mesh_addr: me.mesh_addr.to_string(),
        endpoint: me.endpoint.to_string(),
        peers: Vec::new(),
    }));
    let mut membership = Membership::new(
        me,
        cluster_name,
        network,
        config.heartbeat.0,
        config.stale_after.0,
        config.forget_after.0,
    );
    let now = runtime::now();
    let mut initial = Vec::new();
    for seed in &config.seeds {
        let (Ok(raw), Ok(endpoint)) = (decode_key(&seed.public_key), seed.endpoint.parse()) else {
            continue;
        };
        initial.extend(membership.hint(
            NodeRecord {
                key: seed.public_key.trim().to_string(),
                name: format!("seed {}", seed.endpoint),
                endpoint,
                mesh_addr: network.address_for(&raw, Role::Broker),
                route_port: config.route_port,
                incarnation: 0,
                role: Role::Broker,
                client_port: None,
            },
            now,
        ));
    }
    let state_file = config.state_file();
    if let Some(path) = &state_file {
        if let Ok(text) = std::fs::read(path) {
            match serde_json::from_slice::<Vec<NodeRecord>>(&text) {
                Ok(records) => {
                    log::info!(
                        "mesh: {} members remembered from {}",
                        records.len(),
                        path.display()
                    );
                    for r in records {
                        initial.extend(membership.hint(r, now));
                    }
                }
                Err(e) => log::warn!("mesh: {} is unreadable ({e}); ignored", path.display()),
            }
        }
    }
    let (tx, rx) = async_channel::unbounded();
    let cluster = match plane {
        Plane::Broker(cluster) => Some(cluster),
        Plane::Member => None,
    };
    let brokers_file = cluster.is_none().then(|| config.brokers_file()).flatten();
    let actor = MeshActor {
        config,
        iface: Some(iface),
        key,
        network,
        membership,
        keys,
        socket,
        mesh_socket,
        underlay,
        cluster,
        listeners,
        brokers_file,
        broker_urls: None,
        gone_peers: std::collections::HashSet::new(),
        mesh_sessions: std::collections::HashSet::new(),
        newly_meshed: Vec::new(),
        view: view.clone(),
        stats: HashMap::new(),
        stale_sessions: HashMap::new(),
        state_file,
        remembered: Vec::new(),
        rejected_logged: HashMap::new(),
        started: now,
        unheard_logged: None,
    };
    spawner.spawn_detached(actor.run(rx, initial));
    Ok(MeshHandle { tx, view })
}

/// A member as a WireGuard peer: its endpoint, and its mesh address as the only
/// address routed to it.
fn peer_config(raw: [u8; 32], record: &NodeRecord) -> PeerConfigBuilder {
    let host = if record.mesh_addr.is_ipv6() { 128 } else { 32 };
    PeerConfigBuilder::new(&Key(raw))
        .set_endpoint(record.endpoint)
        .replace_allowed_ips()
        .add_allowed_ip(record.mesh_addr, host)
}

/// Handshake and byte counters of one peer, from the last read of the interface.
#[derive(Debug, Clone, Copy, Default)]
struct PeerStats {
    handshake: Option<SystemTime>,
    rx: u64,
    tx: u64,
}

struct MeshActor {
    config: MeshConfig,
    iface: Option<Interface>,
    /// For setting the interface up again if wireguard-go dies.
    key: Key,
    network: Network,
    membership: Membership,
    keys: AnnounceKeys,
    /// Receives the announcements that cross the underlay.
    socket: runtime::UdpSocket,
    /// Receives the announcements that cross the mesh (what WireGuard vouches for);
    /// sends the copies that cross it.
    mesh_socket: runtime::UdpSocket,
    /// Sends the copies that cross the underlay, and hears which ones the network
    /// refused (a member whose node died).
    underlay: runtime::ErrorReportingUdp,
    /// The listeners tied to the interface (the cluster's, and those on `mesh:`):
    /// tied again when wireguard-go restarts and the interface is a new one.
    listeners: Vec<runtime::DeviceBinding>,
    /// A broker's cluster; `None` on a client member.
    cluster: Option<ClusterHandle>,
    /// A client member's file of broker URLs.
    brokers_file: Option<PathBuf>,
    /// The URLs last written there (and printed).
    broker_urls: Option<Vec<String>>,
    /// Members taken off the interface because their host refused us (their node is
    /// gone): put back when heard again.
    gone_peers: std::collections::HashSet<String>,
    /// Members heard over the mesh since their session last started: a WireGuard
    /// session with them exists.
    mesh_sessions: std::collections::HashSet<String>,
    /// Members first heard over the mesh in the datagram being handled: they hear
    /// us at once.
    newly_meshed: Vec<String>,
    view: Arc<arc_swap::ArcSwap<MeshView>>,
    stats: HashMap<String, PeerStats>,
    /// Members that restarted and are to start the new session themselves (they dial
    /// us): handshakes up to this time were with the process that died.
    stale_sessions: HashMap<String, SystemTime>,
    state_file: Option<PathBuf>,
    remembered: Vec<NodeRecord>,
    /// Sources whose refused announcements were logged, and when (one line a minute).
    rejected_logged: HashMap<IpAddr, Instant>,
    started: Instant,
    /// When "no member heard" was last logged (one line a minute).
    unheard_logged: Option<Instant>,
}

/// WireGuard's persistent keepalive toward live members (as wg-quick setups use): it
/// keeps NAT mappings and the session warm.
const KEEPALIVE_SECS: u16 = 25;

/// A handshake younger than this confirms a hint (WireGuard re-keys every 2 minutes
/// on a live session).
const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

impl MeshActor {
    async fn run(mut self, commands: async_channel::Receiver<MeshCmd>, initial: Vec<MeshEvent>) {
        self.apply(initial).await;
        let mut heartbeat = runtime::interval(self.config.heartbeat.0);
        // Membership's clock between heartbeats: a member the network refused goes
        // down as soon as its silence passes a heartbeat, not at the next one.
        let mut watch = runtime::interval(self.config.heartbeat.0 / 5);
        let mut buf = vec![0u8; 64 * 1024];
        let mut mesh_buf = vec![0u8; 64 * 1024];
        enum Event {
            Datagram(std::io::Result<(usize, SocketAddr)>),
            MeshDatagram(std::io::Result<(usize, SocketAddr)>),
            Refused(Vec<SocketAddr>),
            Tick,
            Watch,
            Command(Option<MeshCmd>),
        }
        self.announce(false).await;
        loop {
            let event = {
                let recv = async { Event::Datagram(self.socket.recv_from(&mut buf).await) };
                let recv_mesh =
                    async { Event::MeshDatagram(self.mesh_socket.recv_from(&mut mesh_buf).await) };
                let recv = futures_lite::future::or(recv, recv_mesh);
                let refused = async { Event::Refused(self.underlay.refused().await) };
                let tick = async {
                    futures_lite::StreamExt::next(&mut heartbeat).await;
                    Event::Tick
                };
                let watch = async {
                    futures_lite::StreamExt::next(&mut watch).await;
                    Event::Watch
                };
                let cmd = async { Event::Command(commands.recv().await.ok()) };
                let io = futures_lite::future::or(recv, refused);
                let timers = futures_lite::future::or(tick, watch);
                futures_lite::future::or(cmd, futures_lite::future::or(io, timers)).await
            };
            match event {
                Event::Datagram(Ok((n, from))) => {
                    let events = self.receive(&buf[..n], from, false);
                    self.apply(events).await;
                }
                Event::MeshDatagram(Ok((n, from))) => {
                    let events = self.receive(&mesh_buf[..n], from, true);
                    self.apply(events).await;
                    let meshed = std::mem::take(&mut self.newly_meshed);
                    if !meshed.is_empty() {
                        self.announce_to(Some(&meshed), false).await;
                    }
                }
                Event::Datagram(Err(e)) | Event::MeshDatagram(Err(e)) => {
                    log::debug!("mesh: receive failed: {e}");
                    runtime::sleep(Duration::from_millis(10)).await;
                }
                Event::Refused(targets) => {
                    let now = runtime::now();
                    let mut events = Vec::new();
                    for to in targets {
                        events.extend(self.membership.refused(to, now));
                    }
                    self.apply(events).await;
                }
                Event::Watch => {
                    let now = runtime::now();
                    let events = self.membership.tick(now);
                    self.apply(events).await;
                    let quiet = self.membership.quiet(now);
                    if !quiet.is_empty() {
                        self.announce_to(Some(&quiet), false).await;
                    }
                    // An empty datagram to each live member's host: if its node is
                    // gone, the host refuses it, and the member is dropped now rather
                    // than at our next heartbeat's refusal.
                    for to in self.membership.alive_underlay() {
                        let _ = self.underlay.send_to(&[], to).await;
                    }
                }
                Event::Tick => {
                    self.supervise().await;
                    let events = self.membership.tick(runtime::now());
                    self.apply(events).await;
                    let targets = self.membership.heartbeat_targets();
                    self.announce_to(Some(&targets), false).await;
                    self.read_device().await;
                    self.remember();
                    self.write_brokers();
                    self.warn_if_unheard();
                }
                Event::Command(Some(MeshCmd::Shutdown(done))) => {
                    self.announce(true).await;
                    if let Some(iface) = self.iface.take() {
                        let _ = runtime::unblock(move || iface.close()).await;
                    }
                    let _ = done.try_send(());
                    return;
                }
                Event::Command(None) => {
                    if let Some(iface) = self.iface.take() {
                        iface.close();
                    }
                    return;
                }
            }
        }
    }

    /// A datagram from `from`, `on_mesh` if it arrived over the interface.
    fn receive(&mut self, datagram: &[u8], from: SocketAddr, on_mesh: bool) -> Vec<MeshEvent> {
        // The socket takes both families: an IPv4 sender comes as a mapped address.
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        // A member's liveness probe: only its refusal (if we were dead) means anything.
        if datagram.is_empty() {
            return Vec::new();
        }
        let now_ms = runtime::now_unix_ns().max(0) as u64 / 1_000_000;
        let result = self.keys.open(datagram).and_then(|(ann, sealed)| {
            // WireGuard lets a peer send only from its own address: one that comes
            // from the address of the key it names is that key's word.
            let over_mesh = on_mesh && from.ip() == ann.from.mesh_addr;
            let (key, incarnation) = (ann.from.key.clone(), ann.from.incarnation);
            let result = self
                .membership
                .receive(ann, sealed, over_mesh, runtime::now(), now_ms);
            // Its current process spoke through WireGuard (even in the mesh's copy of
            // an announcement the underlay brought first): a session exists, and ours
            // can go over the mesh too without waiting for the next read of the
            // interface to show its handshake.
            let current = self
                .membership
                .members()
                .any(|m| m.record.key == key && m.record.incarnation == incarnation);
            if over_mesh && current && self.mesh_sessions.insert(key.clone()) {
                // It hears us over the mesh now: for a client member, that is where
                // our word about the other brokers counts.
                self.newly_meshed.push(key);
            }
            result
        });
        match result {
            Ok(events) => events,
            Err(rejected) => {
                let now = runtime::now();
                let recent = self
                    .rejected_logged
                    .get(&from.ip())
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60));
                // A broker that heard of us before we heard of it is named to us by
                // its peers a moment later: nothing to warn about.
                let routine = matches!(
                    rejected,
                    crate::mesh::Rejected::Replay(_) | crate::mesh::Rejected::UnknownBroker
                );
                if !recent && !routine {
                    log::warn!("mesh: announcement from {from} ignored: {rejected}");
                    self.rejected_logged.insert(from.ip(), now);
                }
                Vec::new()
            }
        }
    }

    /// Sends this node's announcement to every member, over the underlay and the
    /// mesh (`leave`: the last one, before the node goes).
    async fn announce(&mut self, leave: bool) {
        self.announce_to(None, leave).await;
    }

    /// Sends this node's announcement to the members `only` names (by key; `None`:
    /// every member).
    async fn announce_to(&mut self, only: Option<&[String]>, leave: bool) {
        for to in [Role::Broker, Role::Client] {
            self.announce_to_role(only, leave, to).await;
        }
    }

    /// The key announcements to members of role `to` are sealed with: the cluster's
    /// between brokers, the client members' to and from a client member.
    fn key_for(&self, to: Role) -> Option<&AnnounceKey> {
        match (self.membership.me().role, to) {
            (Role::Broker, Role::Broker) => self.keys.cluster.as_ref(),
            _ => self.keys.client.as_ref().or(self.keys.cluster.as_ref()),
        }
    }

    /// [`MeshActor::announce_to`] the members of role `to`.
    async fn announce_to_role(&mut self, only: Option<&[String]>, leave: bool, to: Role) {
        let wanted = |m: &crate::mesh::Member| {
            m.record.role == to && only.is_none_or(|keys| keys.contains(&m.record.key))
        };
        if !self.membership.members().any(wanted) {
            return;
        }
        let now_ms = runtime::now_unix_ns().max(0) as u64 / 1_000_000;
        let ann = self.membership.announcement(now_ms, leave, to);
        let Some(key) = self.key_for(to) else {
            return;
        };
        let grams = encode(key, &ann);
        let port = self.config.discovery_port();
        // Over the mesh only once a WireGuard session with the member exists: a mesh
        // packet starts a handshake, and the first one is left to the side that
        // dials the route (two handshakes crossing, or one toward a node that does
        // not know us yet, leave wireguard-go waiting out its 5 s retry timer). The
        // underlay copy reaches everyone meanwhile.
        let stats = &self.stats;
        let mut underlay = Vec::new();
        let mut mesh = Vec::new();
        for m in self.membership.members().filter(|m| wanted(m)) {
            underlay.push(m.record.underlay_discovery());
            let session = stats
                .get(&m.record.key)
                .is_some_and(|s| s.handshake.is_some())
                || self.mesh_sessions.contains(&m.record.key);
            // A client member starts the session with a broker itself (it is the side
            // that dials): its announcements cross the mesh at once, so the broker's
            // answers (and their word about other brokers) come back over it.
            let starts = self.membership.me().role == Role::Client;
            if m.alive && (session || starts) {
                mesh.push(SocketAddr::new(m.record.mesh_addr, port));
            }
        }
        // Unreachable members are normal (a partition): nothing to report here; what
        // the network refuses comes back through `underlay.refused()`.
        for gram in &grams {
            for &target in &underlay {
                let _ = self.underlay.send_to(gram, target).await;
            }
            for &target in &mesh {
                let _ = self.mesh_socket.send_to(gram, target).await;
            }
        }
    }

    /// Carries out membership events: peers on the interface in one update, routes
    /// through the cluster actor.
    async fn apply(&mut self, events: Vec<MeshEvent>) {
        if events.is_empty() {
            return;
        }
        let mut update = DeviceUpdate::new();
        let mut peers_changed = false;
        let mut answer = Vec::new();
        let mut dial = Vec::new();
        let mut confirmed = false;
        let mut gone_routes = Vec::new();
        for event in events {
            match event {
                MeshEvent::SetPeer(record) => {
                    let Ok(raw) = decode_key(&record.key) else {
                        continue;
                    };
                    log::info!(
                        "mesh: peer {} ({}) at {}, mesh address {}",
                        record.name,
                        short_id(&record.key),
                        record.endpoint,
                        record.mesh_addr
                    );
                    // No keepalive yet: turning it on sends one at once, which for a
                    // node that does not know us yet is a handshake it drops (and a
                    // 5 s wait before the next). It is turned on after the first
                    // handshake.
                    update = update.add_peer(peer_config(raw, &record));
                    peers_changed = true;
                    self.gone_peers.remove(&record.key);
                    // Told of it (by gossip, say): it hears us now, not at our next
                    // heartbeat, so that it can answer (a node restarted with an old
                    // state file learns its members this way, and each one's
                    // silence would add up to a heartbeat to its return).
                    if !answer.contains(&record.key) {
                        answer.push(record.key.clone());
                    }
                }
                MeshEvent::Restarted(record) => {
                    let Ok(raw) = decode_key(&record.key) else {
                        continue;
                    };
                    self.stats.remove(&record.key);
                    self.mesh_sessions.remove(&record.key);
                    // Exactly one side starts the new session: the one that dials
                    // (two handshakes crossing leave both waiting out wireguard-go's
                    // 5 s retry timer).
                    if self.gone_peers.remove(&record.key) {
                        // Off the interface since its host refused us: no old
                        // session to replace, it comes back new.
                        log::info!(
                            "mesh: {} ({}) restarted: back on the interface",
                            record.name,
                            short_id(&record.key)
                        );
                        update = update.add_peer(peer_config(raw, &record));
                    } else if self.dials(&record) {
                        log::info!(
                            "mesh: {} ({}) restarted: starting a new WireGuard session with it",
                            record.name,
                            short_id(&record.key)
                        );
                        // Removed and added again: the old session and its timers go
                        // (else our packets would go out under keys the new process
                        // does not have). The removal is its own update, applied
                        // first: the order of a removal and an add of one key inside
                        // one update is the backend's.
                        let remove = DeviceUpdate::new().remove_peer_by_key(&Key(raw));
                        self.update_device(remove, "restarting a peer").await;
                        update = update.add_peer(peer_config(raw, &record));
                    } else {
                        log::info!(
                            "mesh: {} ({}) restarted: waiting for its new WireGuard session",
                            record.name,
                            short_id(&record.key)
                        );
                        // It dials us, so its handshake replaces the old session on
                        // arrival. Removing the peer now could drop that handshake (or
                        // the session it just made), leaving it 5 s to retry; the old
                        // session only must not start a handshake of ours meanwhile
                        // (the keepalive would, on old keys), so the keepalive is off
                        // until the new session's first handshake.
                        self.stale_sessions
                            .insert(record.key.clone(), runtime::wall_clock());
                        update = update.add_peer(
                            peer_config(raw, &record).set_persistent_keepalive_interval(0),
                        );
                    }
                    peers_changed = true;
                }
                MeshEvent::Firewalled(record) => log::warn!(
                    "mesh: {} ({}) keeps announcing itself, yet {} refuses our datagrams to UDP port {}: a firewall rejects that port? Its node's death will be noticed by its silence only, not at once",
                    record.name,
                    short_id(&record.key),
                    record.endpoint.ip(),
                    self.config.discovery_port()
                ),
                MeshEvent::RemovePeer { key, name } => {
                    let Ok(raw) = decode_key(&key) else {
                        continue;
                    };
                    log::info!("mesh: peer {name} ({}) removed", short_id(&key));
                    self.gone_peers.remove(&key);
                    self.mesh_sessions.remove(&key);
                    update = update.remove_peer_by_key(&Key(raw));
                    self.stats.remove(&key);
                    peers_changed = true;
                }
                MeshEvent::Up(record) => {
                    if !answer.contains(&record.key) {
                        answer.push(record.key.clone());
                    }
                    confirmed = true;
                    // Heard again by the same process (a firewall, not its death):
                    // back on the interface.
                    if self.gone_peers.remove(&record.key) {
                        if let Ok(raw) = decode_key(&record.key) {
                            update = update.add_peer(peer_config(raw, &record));
                            peers_changed = true;
                        }
                    }
                    if self.routes_to(&record) {
                        log::info!(
                            "mesh: {} ({}) is up at {}: routing to it",
                            record.name,
                            short_id(&record.key),
                            record.route_addr()
                        );
                        if self.dials(&record) {
                            dial.push(record.route_addr());
                        }
                    } else {
                        log::info!(
                            "mesh: {} {} ({}) is up at {}",
                            record.role.as_str(),
                            record.name,
                            short_id(&record.key),
                            record.mesh_addr
                        );
                    }
                }
                MeshEvent::Down(record) => {
                    let heard = self
                        .membership
                        .members()
                        .any(|m| m.record.key == record.key && m.last_heard.is_some());
                    if !heard {
                        // There never were routes: nothing to drop but a dialed route.
                        log::info!(
                            "mesh: {} ({}) not heard from within {}s of learning of it",
                            record.name,
                            short_id(&record.key),
                            self.config.stale_after.0.as_secs_f64()
                        );
                        self.route_down(&record);
                        continue;
                    }
                    let s = self.stats.get(&record.key).copied().unwrap_or_default();
                    let handshake = s
                        .handshake
                        .and_then(|t| runtime::wall_clock().duration_since(t).ok())
                        .map_or_else(|| "never".to_string(), |d| format!("{}s ago", d.as_secs()));
                    let gone = self.membership.gone(&record.key);
                    let why = if gone {
                        "its host refuses our announcements (its node is gone)"
                    } else {
                        "went silent"
                    };
                    let what = if self.routes_to(&record) {
                        "dropping its routes"
                    } else {
                        "down"
                    };
                    log::info!(
                        "mesh: {} {} ({}) {why}: {what} (last handshake {handshake}, {} B received, {} B sent)",
                        record.role.as_str(),
                        record.name,
                        short_id(&record.key),
                        s.rx,
                        s.tx
                    );
                    if gone && !self.gone_peers.contains(&record.key) {
                        // Off the interface before the routes go: what our side would
                        // still send it (the routes' last segments, WireGuard's
                        // retries) would each draw an ICMP error from its host, which
                        // sends us only about one a second, and telling us of the
                        // next death there needs one. It is put back when heard.
                        if let Ok(raw) = decode_key(&record.key) {
                            update = update.remove_peer_by_key(&Key(raw));
                            peers_changed = true;
                            self.stats.remove(&record.key);
                            self.mesh_sessions.remove(&record.key);
                            self.gone_peers.insert(record.key.clone());
                        }
                    }
                    gone_routes.push(record);
                }
            }
        }
        if peers_changed {
            self.update_device(update, "updating the peers").await;
        }
        for record in &gone_routes {
            self.route_down(record);
        }
        // Only once WireGuard has the peer: a connection started before it would lose
        // its first packet and wait a second for TCP to send it again.
        if let Some(cluster) = &self.cluster {
            for addr in dial {
                cluster.mesh_up(addr);
            }
        }
        // A member just heard (joined, restarted, or back from a partition) hears us
        // now rather than at our next heartbeat: it routes to us as soon as we do.
        if !answer.is_empty() {
            self.announce_to(Some(&answer), false).await;
        }
        // A member heard: remembered now, not at the next heartbeat (a node that
        // dies within one would forget it, and its next start would learn it again
        // only by gossip).
        if confirmed {
            self.remember();
        }
    }

    /// Whether this node starts the WireGuard handshake with the member (only one
    /// side must): between brokers the one with the smaller key (it dials the route),
    /// between a broker and a client member the client member (its clients connect).
    fn dials(&self, record: &NodeRecord) -> bool {
        match (self.membership.me().role, record.role) {
            (Role::Client, _) => true,
            (_, Role::Client) => false,
            _ => self.membership.me().key < record.key,
        }
    }

    /// Whether the cluster routes to this member: a broker, seen by a broker.
    fn routes_to(&self, record: &NodeRecord) -> bool {
        self.cluster.is_some() && record.role == Role::Broker
    }

    /// Drops the cluster's routes to the member, if it had any.
    fn route_down(&self, record: &NodeRecord) {
        if let (Some(cluster), true) = (&self.cluster, self.routes_to(record)) {
            cluster.mesh_down(record.route_addr());
        }
    }

    /// Restarts wireguard-go if it died (the tun device went with it): a new
    /// interface with the same key, port and address, and every member's peer again.
    async fn supervise(&mut self) {
        let label = self.config.interface.clone().unwrap_or_default();
        match self.iface.as_mut() {
            // A restart that failed: try again.
            None => {}
            Some(iface) => {
                let exited = iface
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let Some(status) = exited else {
                    return;
                };
                log::error!("mesh: wireguard-go for {label} exited ({status}); starting it again");
            }
        }
        if let Some(mut old) = self.iface.take() {
            old.child = None;
            old.close();
        }
        let config = self.config.clone();
        let key = Key(self.key.0);
        let (address, network) = (self.membership.me().mesh_addr, self.network);
        match runtime::unblock(move || setup_interface(&config, &key, address, network)).await {
            Ok(iface) => {
                for listener in &self.listeners {
                    if let Err(e) = listener.rebind(&iface.label) {
                        log::error!(
                            "mesh: a listener cannot take connections over the new {label}: {e}"
                        );
                    }
                }
                self.iface = Some(iface);
                // Handshakes start over; keepalives come back after the first one.
                self.stats.clear();
                self.stale_sessions.clear();
                self.mesh_sessions.clear();
                // The members still hold sessions with the old interface: a new
                // incarnation makes them start over, as with a restarted node, and
                // routes over the old interface go until each member is heard again.
                for record in self.membership.renew(incarnation_now()) {
                    log::info!(
                        "mesh: {} ({}) is down with the old interface",
                        record.name,
                        short_id(&record.key)
                    );
                    self.route_down(&record);
                }
                let peers = self
                    .membership
                    .members()
                    .map(|m| MeshEvent::SetPeer(m.record.clone()))
                    .collect();
                self.apply(peers).await;
            }
            Err(e) => log::error!("mesh: {e}; trying again at the next heartbeat"),
        }
    }

    /// Applies one update to the interface, off the executor.
    async fn update_device(&self, update: DeviceUpdate, what: &str) {
        let Some(iface) = &self.iface else {
            return;
        };
        let (name, backend) = (iface.name, iface.backend);
        if let Err(e) = runtime::unblock(move || update.apply(&name, backend)).await {
            log::error!("mesh: {what} of {} failed: {e}", iface.label);
        }
    }

    /// Reads handshake ages and counters; a fresh handshake confirms a hint.
    async fn read_device(&mut self) {
        let Some(iface) = &self.iface else {
            return;
        };
        let (name, backend) = (iface.name, iface.backend);
        let device = match runtime::unblock(move || Device::get(&name, backend)).await {
            Ok(device) => device,
            Err(e) => {
                log::warn!("mesh: cannot read the interface {}: {e}", iface.label);
                return;
            }
        };
        let now = runtime::wall_clock();
        let mut keepalives = Vec::new();
        for peer in device.peers {
            let key = peer.config.public_key.to_base64();
            // A restarted member's old session is no session.
            let stale_until = self.stale_sessions.get(&key).copied();
            let handshake = peer
                .stats
                .last_handshake_time
                .filter(|t| stale_until.is_none_or(|until| *t > until));
            if stale_until.is_some() && handshake.is_some() {
                self.stale_sessions.remove(&key);
            }
            let stats = PeerStats {
                handshake,
                rx: peer.stats.rx_bytes,
                tx: peer.stats.tx_bytes,
            };
            let before = self.stats.insert(key.clone(), stats).unwrap_or_default();
            let fresh = stats
                .handshake
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age < HANDSHAKE_FRESH);
            if fresh {
                self.membership.handshake(&key);
                if before.handshake.is_none() {
                    keepalives.push(peer.config.public_key.0);
                    let name = self
                        .membership
                        .members()
                        .find(|m| m.record.key == key)
                        .map_or_else(|| "?".to_string(), |m| m.record.name.clone());
                    log::info!("mesh: first handshake with {name} ({})", short_id(&key));
                }
            }
        }
        let peers = self
            .membership
            .members()
            .map(|m| {
                let s = self.stats.get(&m.record.key).copied().unwrap_or_default();
                PeerView {
                    name: m.record.name.clone(),
                    role: m.record.role,
                    public_key: m.record.key.clone(),
                    endpoint: m.record.endpoint.to_string(),
                    mesh_addr: m.record.mesh_addr.to_string(),
                    confirmed: m.confirmed,
                    routed: m.alive,
                    handshake_age_secs: s
                        .handshake
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: s.rx,
                    tx_bytes: s.tx,
                    last_heard_secs: m.last_heard.map(|t| t.elapsed().as_secs_f64()),
                }
            })
            .collect();
        let mut view = MeshView::clone(&self.view.load());
        view.peers = peers;
        self.view.store(Arc::new(view));
        if !keepalives.is_empty() {
            let update = keepalives.into_iter().fold(DeviceUpdate::new(), |u, raw| {
                u.add_peer(
                    PeerConfigBuilder::new(&Key(raw))
                        .set_persistent_keepalive_interval(KEEPALIVE_SECS),
                )
            });
            self.update_device(update, "turning on keepalives").await;
        }
    }

    /// Tells this node itself when it hears no member at all: with another secret or
    /// cluster name, only the members log the refused announcements.
    fn warn_if_unheard(&mut self) {
        let now = runtime::now();
        let quiet = now.duration_since(self.started);
        let recent = self
            .unheard_logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60));
        if self.membership.heard_anyone() || quiet <= self.config.stale_after.0 || recent {
            return;
        }
        let members: Vec<String> = self
            .membership
            .members()
            .map(|m| m.record.name.clone())
            .collect();
        if members.is_empty() {
            return;
        }
        let secret = match self.membership.me().role {
            Role::Broker => "cluster.secret",
            Role::Client => "mesh.client_secret_file (the brokers' client secret)",
        };
        log::warn!(
            "mesh: no valid announcement from any member in {}s ({}): if they are up, check that {secret} and cluster.name are the same as theirs, and that UDP port {} reaches them",
            quiet.as_secs(),
            members.join(", "),
            self.config.discovery_port()
        );
        self.unheard_logged = Some(now);
    }

    /// On a client member: prints the live brokers' `nats://` URLs and writes them to
    /// the brokers file (one line, comma-separated, as `nats --server` and the client
    /// libraries' server lists take them) when they change.
    fn write_brokers(&mut self) {
        let Some(path) = &self.brokers_file else {
            return;
        };
        let mut urls: Vec<String> = self
            .membership
            .members()
            .filter(|m| m.alive)
            .filter_map(|m| m.record.client_url())
            .collect();
        urls.sort();
        if self.broker_urls.as_ref() == Some(&urls) {
            return;
        }
        let line = urls.join(",");
        println!("brokers: {line}");
        log::info!(
            "mesh: brokers on the mesh: {}",
            if line.is_empty() { "none" } else { &line }
        );
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, format!("{line}\n")).and_then(|()| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => self.broker_urls = Some(urls),
            Err(e) => log::warn!("mesh: cannot write {}: {e}", path.display()),
        }
    }

    /// Writes the confirmed members to the state file when they changed.
    fn remember(&mut self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let now = self.membership.remembered();
        if now == self.remembered {
            return;
        }
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(&now)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => self.remembered = now,
            Err(e) => log::warn!("mesh: cannot write {}: {e}", path.display()),
        }
    }
}

/// A client member (`meshbroker mesh member`): the mesh alone, on a runtime of its
/// own, peering with the brokers and keeping their URLs in its brokers file.
pub struct Member {
    runtime: Option<runtime::Runtime>,
    handle: MeshHandle,
}

impl Member {
    /// Brings up the interface and starts the mesh actor for a client member config
    /// (validated: `config.is_mesh_member()`).
    pub fn start(config: &crate::config::Config) -> Result<Member, MeshError> {
        let cluster_name = config.cluster.name.clone().unwrap_or_default();
        let name = config
            .server_name
            .clone()
            .or_else(|| config.mesh.interface.clone())
            .unwrap_or_default();
        let secret = config
            .mesh
            .load_client_secret(&runtime::read_file)
            .map_err(|(_, reason)| MeshError::ClientSecret(reason))?
            .ok_or_else(|| MeshError::ClientSecret("not set".into()))?;
        let prepared = prepare(&config.mesh, &name, &cluster_name)?;
        log::info!(
            "mesh: client member {name} at {} on the mesh of cluster {cluster_name:?}; brokers' URLs in {}",
            prepared.address(),
            config
                .mesh
                .brokers_file()
                .map_or_else(|| "no file".to_string(), |p| p.display().to_string())
        );
        let rt = runtime::Runtime::start(1, "meshbroker-member").map_err(MeshError::Runtime)?;
        let keys = AnnounceKeys {
            cluster: None,
            client: Some(AnnounceKey::derive_client(&secret, &cluster_name)),
        };
        let handle = start(
            prepared,
            &cluster_name,
            keys,
            Plane::Member,
            Vec::new(),
            &rt.spawner(),
        )?;
        Ok(Member {
            runtime: Some(rt),
            handle,
        })
    }

    /// Leaves the mesh (the brokers drop this member at once) and removes the
    /// interface.
    pub fn shutdown(mut self) {
        self.handle.shutdown(Duration::from_secs(3));
        if let Some(rt) = self.runtime.take() {
            rt.stop();
        }
    }
}
