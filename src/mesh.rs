//! The WireGuard mesh, without sockets or clocks: the `[mesh]` config, mesh addresses
//! derived from public keys, the announcements nodes exchange (authenticated with a
//! key derived from the cluster secret), and membership: who is in the mesh, who is
//! confirmed, who is alive (routed to) and who is forgotten.
//!
//! Membership is availability only: it decides which peers WireGuard knows and which
//! nodes the cluster dials, never quorum or leadership.
//!
//! A node announces itself every heartbeat to every member, over the mesh and over the
//! underlay (so a healed partition is seen at once, whatever state WireGuard's
//! handshake timers are in), and to its seeds over the underlay until they answer.
//! An announcement carries the sender's record and the records it knows (gossip).
//! A record heard from its own node (the announcement's MAC verified) is confirmed; a
//! record heard second-hand is a hint: WireGuard gets the peer so the node can be
//! reached, but the node is not routed to until it speaks for itself or completes a
//! WireGuard handshake, and an unconfirmed hint that stays silent is forgotten.
//!
//! Members have a role: brokers (the cluster's nodes, routed to) and client members
//! (application hosts, `meshbroker mesh member`), each in its own address range (see
//! [`Network`]). Client members announce themselves under a key derived from a secret
//! of their own, not the cluster's; they peer with brokers only, and take a broker's
//! word about other brokers only when it came through WireGuard (see
//! [`Membership::receive`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::values::Dur;

/// How the node gets its WireGuard interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshBackend {
    /// The kernel module; wireguard-go when the kernel has none.
    #[default]
    Auto,
    Kernel,
    /// wireguard-go, run and supervised by the node.
    Userspace,
}

/// A seed: a node to announce to until the mesh is joined.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// Its WireGuard endpoint on the underlay, `ip:port`.
    pub endpoint: String,
    /// Its WireGuard public key (base64).
    pub public_key: String,
}

/// `[mesh]`: the WireGuard mesh the cluster routes over. Off unless `interface` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// The WireGuard interface (at most 15 characters); created, or adopted if it
    /// exists.
    pub interface: Option<String>,
    /// `broker` (a node of the cluster), or `client`: an application host on the mesh
    /// (`meshbroker mesh member`), which peers with the brokers and runs no broker.
    pub role: Role,
    pub backend: MeshBackend,
    /// The private key, base64 in a file (`meshbroker mesh keygen --out FILE`).
    pub private_key_file: Option<PathBuf>,
    /// WireGuard's UDP port; announcements use the next port (`listen_port + 1`).
    pub listen_port: u16,
    /// This node's WireGuard endpoint as other nodes reach it on the underlay
    /// (`ip:port`).
    pub endpoint: Option<String>,
    /// The mesh network: `"ula"` (an IPv6 /48 derived from the cluster name, the
    /// default), an IPv6 ULA `/48`, or an IPv4 network; every member's address is
    /// derived from its public key in it (see [`Network`]).
    pub network: String,
    /// This node's mesh address, instead of the derived one (in its role's range).
    pub address: Option<IpAddr>,
    /// The interface MTU (default: the smallest underlay MTU less 80).
    pub mtu: Option<u32>,
    pub seeds: Vec<SeedConfig>,
    /// The cluster listener's port on the mesh address.
    pub route_port: u16,
    /// How often a node announces itself.
    pub heartbeat: Dur,
    /// A member not heard from for this long is dropped from routes.
    pub stale_after: Dur,
    /// A member not heard from for this long is removed from the interface.
    pub forget_after: Dur,
    /// Where the members last known are kept, to rejoin when every seed is down
    /// (default: beside the private key, `<key file>.peers.json`).
    pub state_file: Option<PathBuf>,
    /// The wireguard-go program for the userspace backend.
    pub wireguard_go: PathBuf,
    /// The secret client members announce themselves with (at least 16 bytes in a
    /// file). On a broker: client members are admitted with it (without it, none
    /// are); on a client member: required. Not the cluster secret: an application
    /// host must not hold the key to the cluster plane.
    pub client_secret_file: Option<PathBuf>,
    /// On a client member: where the brokers' `nats://` URLs are kept current, one
    /// line, comma-separated (default: beside the private key, `<key file>.brokers`).
    pub brokers_file: Option<PathBuf>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            interface: None,
            role: Role::Broker,
            backend: MeshBackend::Auto,
            private_key_file: None,
            listen_port: 51820,
            endpoint: None,
            network: "ula".into(),
            address: None,
            mtu: None,
            seeds: Vec::new(),
            route_port: 6222,
            heartbeat: Dur(Duration::from_millis(500)),
            stale_after: Dur(Duration::from_millis(1500)),
            forget_after: Dur(Duration::from_secs(600)),
            state_file: None,
            wireguard_go: PathBuf::from("wireguard-go"),
            client_secret_file: None,
            brokers_file: None,
        }
    }
}

/// What a member is: a broker (a node of the cluster, routed to) or a client member
/// (an application host on the mesh: a WireGuard peer of the brokers only, never
/// routed to, never a cluster peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Broker,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Client => "client",
        }
    }
}

/// The mesh network, and the address plan in it. Every member's address is derived
/// from its public key, in the range of its role, so the role can be read from an
/// address (the cluster listener refuses every address outside the brokers'; WireGuard
/// lets a peer send only from its own address):
///
/// - IPv6 (the default): a unique local /48 (RFC 4193, `fd…`), derived from the
///   cluster name unless given; subnet `0` holds the brokers, subnet `1` the client
///   members; the interface id is 64 bits of SHA-256 of the key, so two keys share an
///   address with odds of about n²/2⁶⁵ (none in practice).
/// - IPv4 (an option for hosts without IPv6): `a.b.c.d/len`; the lower half holds the
///   brokers, the upper half the client members; a hash of the key picks the host, so
///   collisions happen (about 2 % at 50 brokers in a /16) and are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    V4 { base: Ipv4Addr, prefix: u8 },
    V6 { base: Ipv6Addr },
}

/// The prefix length of an IPv6 mesh network.
pub const ULA_PREFIX: u8 = 48;

impl Network {
    /// `"ula"` (a /48 derived from the cluster name), an IPv6 ULA `/48`, or an IPv4
    /// network.
    pub fn parse(text: &str, cluster: &str) -> Result<Network, String> {
        if text == "ula" {
            return Ok(Network::ula_for(cluster));
        }
        let bad = || {
            format!(
                "{text:?} is not a mesh network: \"ula\", an IPv6 unique local /48 like \"fd12:3456:789a::/48\", or an IPv4 network like \"10.99.0.0/16\""
            )
        };
        let (ip, len) = text.split_once('/').ok_or_else(bad)?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        match ip.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(ip) => {
                if !(8..=30).contains(&prefix) {
                    return Err(format!("{text:?}: the prefix must be between /8 and /30"));
                }
                let mask = u32::MAX << (32 - prefix);
                Ok(Network::V4 {
                    base: Ipv4Addr::from(u32::from(ip) & mask),
                    prefix,
                })
            }
            IpAddr::V6(ip) => {
                if prefix != ULA_PREFIX || ip.octets()[0] != 0xfd {
                    return Err(format!(
                        "{text:?}: an IPv6 mesh network is a unique local /48 (fdxx:xxxx:xxxx::/48)"
                    ));
                }
                let mut octets = [0u8; 16];
                octets[..6].copy_from_slice(&ip.octets()[..6]);
                Ok(Network::V6 {
                    base: Ipv6Addr::from(octets),
                })
            }
        }
    }

    /// The cluster's unique local /48: `fd` and 40 bits of SHA-256 of its name (RFC
    /// 4193 asks for random bits; a hash gives every node of a cluster the same ones
    /// without configuration, and different clusters different ones).
    pub fn ula_for(cluster: &str) -> Network {
        let mut input = b"meshbroker mesh ula ".to_vec();
        input.extend_from_slice(cluster.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..6].copy_from_slice(&digest.as_ref()[..5]);
        Network::V6 {
            base: Ipv6Addr::from(octets),
        }
    }

    /// The prefix length the interface's address carries (the whole network is routed
    /// to the interface).
    pub fn prefix_len(&self) -> u8 {
        match self {
            Network::V4 { prefix, .. } => *prefix,
            Network::V6 { .. } => ULA_PREFIX,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Network::V4 { base, prefix }, IpAddr::V4(ip)) => {
                let mask = u32::MAX << (32 - prefix);
                u32::from(ip) & mask == u32::from(*base)
            }
            (Network::V6 { base }, IpAddr::V6(ip)) => ip.octets()[..6] == base.octets()[..6],
            _ => false,
        }
    }

    /// The role whose range `ip` is in (`None`: outside the network, or an address no
    /// member may hold).
    pub fn role_of(&self, ip: IpAddr) -> Option<Role> {
        if !self.contains(ip) {
            return None;
        }
        match (self, ip) {
            (Network::V4 { base, prefix }, IpAddr::V4(ip)) => {
                let hosts = 1u64 << (32 - prefix);
                let offset = u64::from(u32::from(ip) - u32::from(*base));
                if offset == 0 || offset >= hosts - 1 {
                    None
                } else if offset < hosts / 2 {
                    Some(Role::Broker)
                } else {
                    Some(Role::Client)
                }
            }
            (Network::V6 { .. }, IpAddr::V6(ip)) => match &ip.octets()[6..8] {
                [0, 0] => Some(Role::Broker),
                [0, 1] => Some(Role::Client),
                _ => None,
            },
            _ => None,
        }
    }

    /// The address of the member with `public_key` (its raw 32 bytes) and `role`.
    pub fn address_for(&self, public_key: &[u8], role: Role) -> IpAddr {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let digest = digest.as_ref();
        match self {
            Network::V4 { base, prefix } => {
                let mut first = [0u8; 4];
                first.copy_from_slice(&digest[..4]);
                let hosts = 1u64 << (32 - prefix);
                // Brokers 1 ..= half-1, client members half ..= hosts-2 (never the
                // network or broadcast address).
                let (start, count) = match role {
                    Role::Broker => (1, hosts / 2 - 1),
                    Role::Client => (hosts / 2, hosts / 2 - 1),
                };
                let host = start + u64::from(u32::from_be_bytes(first)) % count;
                IpAddr::V4(Ipv4Addr::from(u32::from(*base) + host as u32))
            }
            Network::V6 { base } => {
                let mut octets = base.octets();
                octets[6] = 0;
                octets[7] = match role {
                    Role::Broker => 0,
                    Role::Client => 1,
                };
                octets[8..].copy_from_slice(&digest[..8]);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::V4 { base, prefix } => write!(f, "{base}/{prefix}"),
            Network::V6 { base } => write!(f, "{base}/{ULA_PREFIX}"),
        }
    }
}

/// What a bad private key file is told.
pub const NOT_A_KEY: &str =
    "not a base64 WireGuard private key (write one with `meshbroker mesh keygen --out FILE`)";

/// A WireGuard public key, checked to be 32 bytes of base64.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "not base64".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "not a 32-byte WireGuard key".to_string())
}

impl MeshConfig {
    pub fn enabled(&self) -> bool {
        self.interface.is_some()
    }

    /// The UDP port announcements use.
    pub fn discovery_port(&self) -> u16 {
        self.listen_port.wrapping_add(1)
    }

    /// The mesh network of cluster `cluster`.
    pub fn network(&self, cluster: &str) -> Result<Network, String> {
        Network::parse(&self.network, cluster)
    }

    /// A file beside the private key: `<key file><suffix>`.
    fn beside_key(&self, suffix: &str) -> Option<PathBuf> {
        self.private_key_file.as_ref().map(|k| {
            let mut name = k.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        })
    }

    /// The file the last known members are kept in.
    pub fn state_file(&self) -> Option<PathBuf> {
        self.state_file
            .clone()
            .or_else(|| self.beside_key(".peers.json"))
    }

    /// The file a client member keeps the brokers' URLs in.
    pub fn brokers_file(&self) -> Option<PathBuf> {
        self.brokers_file
            .clone()
            .or_else(|| self.beside_key(".brokers"))
    }

    /// The client members' secret, read with `files` (`None`: not configured).
    pub fn load_client_secret(
        &self,
        files: crate::tls::ReadFile<'_>,
    ) -> Result<Option<Vec<u8>>, (&'static str, String)> {
        let Some(path) = &self.client_secret_file else {
            return Ok(None);
        };
        let err = |reason: String| {
            (
                "mesh.client_secret_file",
                format!("{}: {reason}", path.display()),
            )
        };
        let text = files(path).map_err(|e| err(e.to_string()))?;
        let secret = text.trim_ascii().to_vec();
        if secret.len() < crate::cluster::MIN_SECRET_LEN {
            return Err(err(format!(
                "too short ({} bytes; at least {})",
                secret.len(),
                crate::cluster::MIN_SECRET_LEN
            )));
        }
        Ok(Some(secret))
    }

    /// Reads the private key (with `files`) and checks that it is one.
    pub fn check_key(&self, files: crate::tls::ReadFile<'_>) -> Result<(), (&'static str, String)> {
        let (true, Some(path)) = (self.enabled(), &self.private_key_file) else {
            return Ok(());
        };
        let err = |reason: String| {
            (
                "mesh.private_key_file",
                format!("{}: {reason}", path.display()),
            )
        };
        let bytes = files(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| err(NOT_A_KEY.into()))?;
        decode_key(text).map_err(|_| err(NOT_A_KEY.into()))?;
        Ok(())
    }

    /// Checks the section (of cluster `cluster`); `Err` names the key and what is
    /// wrong.
    pub fn validate(&self, cluster: &str) -> Result<(), (&'static str, String)> {
        let Some(name) = &self.interface else {
            return Ok(());
        };
        if name.is_empty()
            || name.len() > 15
            || name.contains(|c: char| c == '/' || c.is_whitespace() || c == '\0')
        {
            return Err((
                "mesh.interface",
                format!("{name:?} is not an interface name (1 to 15 characters, no '/' or spaces)"),
            ));
        }
        if self.private_key_file.is_none() {
            return Err((
                "mesh.private_key_file",
                "the mesh needs a private key file (write one with `meshbroker mesh keygen --out FILE`)".into(),
            ));
        }
        if self.listen_port == 0 || self.listen_port == u16::MAX {
            return Err((
                "mesh.listen_port",
                "must be between 1 and 65534 (announcements use the next port)".into(),
            ));
        }
        match &self.endpoint {
            None => {
                return Err((
                    "mesh.endpoint",
                    "the mesh needs this node's underlay endpoint (ip:port) that other nodes reach"
                        .into(),
                ))
            }
            Some(e) => {
                let endpoint = e
                    .parse::<SocketAddr>()
                    .map_err(|_| ("mesh.endpoint", format!("{e:?} is not an ip:port")))?;
                if endpoint.ip().is_unspecified()
                    || endpoint.ip().is_multicast()
                    || endpoint.port() == 0
                {
                    return Err((
                        "mesh.endpoint",
                        format!("{e:?} is not an address other nodes can reach: give this node's own underlay ip:port"),
                    ));
                }
            }
        }
        let network = self.network(cluster).map_err(|e| ("mesh.network", e))?;
        if let Some(a) = self.address {
            if !network.contains(a) {
                return Err((
                    "mesh.address",
                    format!("{a} is not in mesh.network {network}"),
                ));
            }
            if network.role_of(a) != Some(self.role) {
                return Err((
                    "mesh.address",
                    format!(
                        "{a} is not in the {} range of {network} (see the address plan in the README)",
                        self.role.as_str()
                    ),
                ));
            }
        }
        if self.role == Role::Client && self.client_secret_file.is_none() {
            return Err((
                "mesh.client_secret_file",
                "a client member announces itself with the client members' secret: set client_secret_file (the brokers' mesh.client_secret_file)".into(),
            ));
        }
        if let Some(mtu) = self.mtu {
            if !(1280..=9000).contains(&mtu) {
                return Err(("mesh.mtu", format!("{mtu} is outside 1280..9000")));
            }
        }
        for seed in &self.seeds {
            seed.endpoint.parse::<SocketAddr>().map_err(|_| {
                (
                    "mesh.seeds",
                    format!("endpoint {:?} is not an ip:port", seed.endpoint),
                )
            })?;
            decode_key(&seed.public_key).map_err(|e| {
                (
                    "mesh.seeds",
                    format!("public_key {:?}: {e}", seed.public_key),
                )
            })?;
        }
        if self.route_port == 0 {
            return Err(("mesh.route_port", "must not be 0".into()));
        }
        if self.heartbeat.0.is_zero() {
            return Err(("mesh.heartbeat", "must be more than 0".into()));
        }
        if self.stale_after.0 <= self.heartbeat.0 {
            return Err((
                "mesh.stale_after",
                "must be longer than mesh.heartbeat (a member would be dropped between two announcements)".into(),
            ));
        }
        if self.forget_after.0 < self.stale_after.0 {
            return Err((
                "mesh.forget_after",
                "must be at least mesh.stale_after".into(),
            ));
        }
        Ok(())
    }
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its WireGuard public key (base64): its identity in the mesh.
    pub key: String,
    pub name: String,
    /// Its WireGuard endpoint on the underlay.
    pub endpoint: SocketAddr,
    pub mesh_addr: IpAddr,
    /// Its cluster listener's port on the mesh address.
    pub route_port: u16,
    #[serde(default)]
    pub role: Role,
    /// A broker's client listener on its mesh address, when clients can reach it
    /// there (`listen = "mesh:PORT"`, or a wildcard address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
    /// Bumped at every start: a record with a higher incarnation replaces the old.
    pub incarnation: u64,
}

impl NodeRecord {
    /// Where it listens for announcements on the underlay.
    pub fn underlay_discovery(&self) -> SocketAddr {
        SocketAddr::new(self.endpoint.ip(), self.endpoint.port().wrapping_add(1))
    }

    /// Its cluster listener, on the mesh.
    pub fn route_addr(&self) -> SocketAddr {
        SocketAddr::new(self.mesh_addr, self.route_port)
    }

    /// A broker's `nats://` URL on the mesh, when it has one.
    pub fn client_url(&self) -> Option<String> {
        let port = self.client_port.filter(|_| self.role == Role::Broker)?;
        Some(format!("nats://{}", SocketAddr::new(self.mesh_addr, port)))
    }
}

/// One announcement datagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub cluster: String,
    pub from: NodeRecord,
    /// Strictly increasing per incarnation (replayed datagrams are ignored).
    pub seq: u64,
    /// Which datagram of the announcement this is, when its members took several.
    #[serde(default)]
    pub part: u32,
    /// The sender's clock (ms since the Unix epoch), to refuse old datagrams.
    pub ts_ms: u64,
    /// Records the sender knows (gossip).
    #[serde(default)]
    pub members: Vec<NodeRecord>,
    /// The sender is leaving: drop it now.
    #[serde(default)]
    pub leave: bool,
}

const MAGIC: &[u8; 4] = b"MBA1";
const TAG_LEN: usize = 32;
/// Datagrams stay below this (fits a mesh MTU of 1280 with room for headers).
pub const MAX_DATAGRAM: usize = 1200;
/// How far a sender's clock may be from ours.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// The key that authenticates announcements: HKDF-SHA256 of the cluster secret,
/// salted with the cluster name, for this purpose only.
pub struct AnnounceKey(ring::hmac::Key);

impl AnnounceKey {
    /// The brokers' key, from the cluster secret.
    pub fn derive(secret: &[u8], cluster: &str) -> AnnounceKey {
        AnnounceKey::expand(secret, cluster, b"meshbroker mesh announce v1")
    }

    /// The client members' key, from their secret (another purpose, so the same
    /// bytes as the cluster secret would still give another key).
    pub fn derive_client(secret: &[u8], cluster: &str) -> AnnounceKey {
        AnnounceKey::expand(secret, cluster, b"meshbroker mesh client announce v1")
    }

    fn expand(secret: &[u8], cluster: &str, purpose: &[u8]) -> AnnounceKey {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, cluster.as_bytes());
        let prk = salt.extract(secret);
        let info = [purpose];
        let okm = prk
            .expand(&info, ring::hmac::HMAC_SHA256)
            .expect("HKDF output of one hash length");
        AnnounceKey(ring::hmac::Key::from(okm))
    }
}

/// Why a datagram was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("not an announcement")]
    NotAnnouncement,
    #[error("bad MAC (another cluster secret?)")]
    BadMac,
    #[error("unreadable announcement: {0}")]
    Unreadable(String),
    #[error("cluster {0:?} is not ours")]
    OtherCluster(String),
    #[error("clock {0} ms away from ours")]
    Clock(i64),
    #[error("replayed or old (seq {0})")]
    Replay(u64),
    #[error("our own key with another incarnation: is this node's key cloned?")]
    ClonedKey,
    #[error("a record that is not in the mesh network or with a bad key")]
    BadRecord,
    #[error("mesh address {0} is already another node's (two keys hash to it: set mesh.address on one of them)")]
    AddressTaken(IpAddr),
    #[error("sealed with the client members' secret, yet it says it is a broker")]
    NotAClient,
    #[error("a client member takes announcements from brokers only")]
    NotABroker,
    #[error("a broker no one named: a client member takes brokers from its seeds, the members it remembers, and known brokers' word over the mesh")]
    UnknownBroker,
}

/// Which key sealed an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// The cluster's: a broker (or anyone holding the cluster secret).
    Cluster,
    /// The client members': a client member, or a broker speaking to one.
    Client,
}

/// The keys a member checks announcements with.
pub struct AnnounceKeys {
    /// The brokers' (a client member has none).
    pub cluster: Option<AnnounceKey>,
    /// The client members' (a broker without `client_secret_file` has none).
    pub client: Option<AnnounceKey>,
}

impl AnnounceKeys {
    /// Checks a datagram's MAC against each key held and reads it.
    pub fn open(&self, datagram: &[u8]) -> Result<(Announcement, Sealed), Rejected> {
        let keys = [
            (self.cluster.as_ref(), Sealed::Cluster),
            (self.client.as_ref(), Sealed::Client),
        ];
        for (key, sealed) in keys {
            let Some(key) = key else { continue };
            match decode(key, datagram) {
                Err(Rejected::BadMac) => continue,
                other => return other.map(|a| (a, sealed)),
            }
        }
        Err(Rejected::BadMac)
    }
}

/// Encodes `ann` into datagrams of at most [`MAX_DATAGRAM`] bytes (the member list
/// split across them as needed).
pub fn encode(key: &AnnounceKey, ann: &Announcement) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = Announcement {
        members: Vec::new(),
        ..ann.clone()
    };
    let seal = |a: &Announcement| -> Vec<u8> {
        let body = serde_json::to_vec(a).unwrap_or_default();
        let tag = ring::hmac::sign(&key.0, &body);
        let mut d = Vec::with_capacity(4 + TAG_LEN + body.len());
        d.extend_from_slice(MAGIC);
        d.extend_from_slice(tag.as_ref());
        d.extend_from_slice(&body);
        d
    };
    for m in &ann.members {
        chunk.members.push(m.clone());
        if seal(&chunk).len() > MAX_DATAGRAM && chunk.members.len() > 1 {
            let last = chunk.members.pop();
            out.push(seal(&chunk));
            chunk.members = last.into_iter().collect();
            chunk.part += 1;
        }
    }
    out.push(seal(&chunk));
    out
}

/// Checks a datagram's MAC and reads it.
pub fn decode(key: &AnnounceKey, datagram: &[u8]) -> Result<Announcement, Rejected> {
    if datagram.len() < 4 + TAG_LEN || &datagram[..4] != MAGIC {
        return Err(Rejected::NotAnnouncement);
    }
    let (tag, body) = datagram[4..].split_at(TAG_LEN);
    ring::hmac::verify(&key.0, body, tag).map_err(|_| Rejected::BadMac)?;
    serde_json::from_slice(body).map_err(|e| Rejected::Unreadable(e.to_string()))
}

/// A member of the mesh as this node knows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub record: NodeRecord,
    /// It spoke for itself (or completed a WireGuard handshake with us).
    pub confirmed: bool,
    /// Routed to: heard from within `stale_after`.
    pub alive: bool,
    pub last_heard: Option<Instant>,
    pub since: Instant,
    /// Its silence was reported ([`MeshEvent::Down`]) and nothing was heard since.
    pub silence_reported: bool,
    /// The network refused a datagram to its announcement port since it was last
    /// heard (its process is gone, or a firewall rejects that port).
    pub refused: bool,
    /// Our datagrams to it were refused while it was still heard: a firewall rejects
    /// them, so a refusal says nothing, and only its silence takes it down.
    pub firewalled: bool,
}

/// What the mesh actor must do after a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// Give WireGuard this peer (new, or its endpoint or address changed).
    SetPeer(NodeRecord),
    /// Take the peer off the interface.
    RemovePeer { key: String, name: String },
    /// Route to it.
    Up(NodeRecord),
    /// Stop routing to it.
    Down(NodeRecord),
    /// Our datagrams to its underlay were refused while it kept speaking: a firewall
    /// (refusals no longer take it down; say so once).
    Firewalled(NodeRecord),
    /// It started again (a new incarnation, same key): WireGuard's session is with the
    /// process that died, whose keys the new one does not have, so the peer must start
    /// over (else traffic to it is dropped until WireGuard's own timers give up).
    Restarted(NodeRecord),
}

/// Membership: the members this node knows, by public key.
pub struct Membership {
    me: NodeRecord,
    cluster: String,
    network: Network,
    stale_after: Duration,
    /// A member the network refused a datagram to goes down once silent this long
    /// (a little over one heartbeat: a live one would have spoken).
    refused_silence: Duration,
    forget_after: Duration,
    members: BTreeMap<String, Member>,
    /// The newest (incarnation, seq, part) seen from each sender.
    last_seq: HashMap<String, (u64, u64, u32)>,
    /// Keys that left, and their incarnation: not resurrected by old gossip.
    left: HashMap<String, u64>,
    seq: u64,
}

/// An unconfirmed record that stays silent this long is forgotten.
pub const HINT_TTL: Duration = Duration::from_secs(600);

/// How long a member that went silent is sent announcements more often than once a
/// heartbeat (a partition that heals, a node started again); past it, at the
/// heartbeat, as every member.
pub const PROBE_QUIET_FOR: Duration = Duration::from_secs(60);

impl Membership {
    pub fn new(
        me: NodeRecord,
        cluster: &str,
        network: Network,
        heartbeat: Duration,
        stale_after: Duration,
        forget_after: Duration,
    ) -> Membership {
        Membership {
            me,
            cluster: cluster.to_string(),
            network,
            stale_after,
            refused_silence: (heartbeat + heartbeat / 5).min(stale_after),
            forget_after,
            members: BTreeMap::new(),
            last_seq: HashMap::new(),
            left: HashMap::new(),
            seq: 0,
        }
    }

    /// Whether any member has been heard since start: a node that knows members
    /// (seeds) but hears none of them is most likely misconfigured (another secret or
    /// cluster name: their announcements and ours are dropped on both sides).
    pub fn heard_anyone(&self) -> bool {
        // Every valid announcement leaves its sender's sequence number (never removed).
        !self.last_seq.is_empty()
    }

    pub fn me(&self) -> &NodeRecord {
        &self.me
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// A record known only by hearsay (a seed, a member remembered from the last run,
    /// gossip): WireGuard gets it, routes wait for the node itself.
    pub fn hint(&mut self, record: NodeRecord, now: Instant) -> Vec<MeshEvent> {
        if record.key == self.me.key || !self.valid(&record) || self.address_taken(&record) {
            return Vec::new();
        }
        // Client members peer with brokers only.
        if self.me.role == Role::Client && record.role == Role::Client {
            return Vec::new();
        }
        if self
            .left
            .get(&record.key)
            .is_some_and(|inc| *inc >= record.incarnation)
        {
            return Vec::new();
        }
        match self.members.get_mut(&record.key) {
            Some(m) => {
                if record.incarnation > m.record.incarnation && !m.confirmed {
                    let changed = m.record.endpoint != record.endpoint
                        || m.record.mesh_addr != record.mesh_addr;
                    m.record = record.clone();
                    if changed {
                        return vec![MeshEvent::SetPeer(record)];
                    }
                }
                Vec::new()
            }
            None => {
                self.members.insert(
                    record.key.clone(),
                    Member {
                        record: record.clone(),
                        confirmed: false,
                        alive: false,
                        last_heard: None,
                        since: now,
                        silence_reported: false,
                        refused: false,
                        firewalled: false,
                    },
                );
                vec![MeshEvent::SetPeer(record)]
            }
        }
    }

    /// A record with a key, at an address in its role's range.
    fn valid(&self, record: &NodeRecord) -> bool {
        decode_key(&record.key).is_ok()
            && self.network.role_of(record.mesh_addr) == Some(record.role)
    }

    /// Is `record`'s address ours or another member's? (The first to hold it keeps it:
    /// WireGuard can route an address to one peer only.)
    fn address_taken(&self, record: &NodeRecord) -> bool {
        record.mesh_addr == self.me.mesh_addr
            || self
                .members
                .values()
                .any(|m| m.record.key != record.key && m.record.mesh_addr == record.mesh_addr)
    }

    /// An authenticated announcement arrived (its MAC checked with the key `sealed`
    /// says; `over_mesh`: through WireGuard, from the address of the key it names);
    /// `now_ms` is our clock. What the client members' key seals speaks for a client
    /// member only, and its gossip is not taken (a broker learns brokers from
    /// brokers). A client member takes brokers only, and only those it was told of
    /// (its seeds, the members it remembers, gossip), and gossip only over the mesh:
    /// every client member holds the key its announcements are sealed with, and only
    /// WireGuard tells one that a broker's word is the broker's.
    pub fn receive(
        &mut self,
        ann: Announcement,
        sealed: Sealed,
        over_mesh: bool,
        now: Instant,
        now_ms: u64,
    ) -> Result<Vec<MeshEvent>, Rejected> {
        if ann.cluster != self.cluster {
            return Err(Rejected::OtherCluster(ann.cluster));
        }
        let skew = now_ms as i64 - ann.ts_ms as i64;
        if skew.unsigned_abs() > MAX_CLOCK_SKEW_MS {
            return Err(Rejected::Clock(skew));
        }
        let from = ann.from;
        if from.key == self.me.key {
            return if from.incarnation == self.me.incarnation {
                Ok(Vec::new())
            } else {
                Err(Rejected::ClonedKey)
            };
        }
        match (self.me.role, sealed, from.role) {
            (Role::Broker, Sealed::Client, Role::Broker) => return Err(Rejected::NotAClient),
            (Role::Client, _, Role::Client) => return Err(Rejected::NotABroker),
            _ => {}
        }
        if !self.valid(&from) {
            return Err(Rejected::BadRecord);
        }
        if self.me.role == Role::Client && !self.members.contains_key(&from.key) {
            return Err(Rejected::UnknownBroker);
        }
        if self.address_taken(&from) {
            return Err(Rejected::AddressTaken(from.mesh_addr));
        }
        let stamp = (from.incarnation, ann.seq, ann.part);
        if let Some(last) = self.last_seq.get(&from.key) {
            // Every announcement goes over the underlay and the mesh: to a client
            // member, the mesh's copy of one already heard is the one whose word
            // about other brokers counts.
            if stamp == *last && over_mesh && self.me.role == Role::Client {
                let mut events = Vec::new();
                for record in ann.members {
                    events.extend(self.hint(record, now));
                }
                return Ok(events);
            }
            if stamp <= *last {
                return Err(Rejected::Replay(ann.seq));
            }
        }
        self.last_seq.insert(from.key.clone(), stamp);
        let mut events = Vec::new();
        if ann.leave {
            self.left.insert(from.key.clone(), from.incarnation);
            if let Some(m) = self.members.remove(&from.key) {
                if m.alive {
                    events.push(MeshEvent::Down(m.record.clone()));
                }
                events.push(MeshEvent::RemovePeer {
                    key: m.record.key,
                    name: m.record.name,
                });
            }
            return Ok(events);
        }
        self.left.remove(&from.key);
        match self.members.get_mut(&from.key) {
            Some(m) => {
                if from.incarnation < m.record.incarnation {
                    return Err(Rejected::Replay(ann.seq));
                }
                // Heard before under an older incarnation: it restarted. Routes to the
                // old process go, and WireGuard starts a session with the new one.
                let restarted = m.last_heard.is_some() && from.incarnation > m.record.incarnation;
                if restarted {
                    if m.alive {
                        events.push(MeshEvent::Down(m.record.clone()));
                        m.alive = false;
                    }
                    events.push(MeshEvent::Restarted(from.clone()));
                    m.firewalled = false;
                } else if m.refused && !m.firewalled {
                    // Refused, yet the same process speaks: something between us
                    // rejects the datagrams, and it was not its death.
                    m.firewalled = true;
                    events.push(MeshEvent::Firewalled(from.clone()));
                }
                let changed =
                    m.record.endpoint != from.endpoint || m.record.mesh_addr != from.mesh_addr;
                if changed && !restarted {
                    // Moved: routes to the old address are gone.
                    if m.alive {
                        events.push(MeshEvent::Down(m.record.clone()));
                        m.alive = false;
                    }
                    events.push(MeshEvent::SetPeer(from.clone()));
                }
                m.record = from.clone();
                m.confirmed = true;
                m.last_heard = Some(now);
                m.silence_reported = false;
                m.refused = false;
                if !m.alive {
                    m.alive = true;
                    events.push(MeshEvent::Up(from.clone()));
                }
            }
            None => {
                self.members.insert(
                    from.key.clone(),
                    Member {
                        record: from.clone(),
                        confirmed: true,
                        alive: true,
                        last_heard: Some(now),
                        since: now,
                        silence_reported: false,
                        refused: false,
                        firewalled: false,
                    },
                );
                events.push(MeshEvent::SetPeer(from.clone()));
                events.push(MeshEvent::Up(from.clone()));
            }
        }
        let gossip_taken = match self.me.role {
            Role::Broker => sealed == Sealed::Cluster,
            Role::Client => over_mesh,
        };
        for record in ann.members.into_iter().filter(|_| gossip_taken) {
            events.extend(self.hint(record, now));
        }
        Ok(events)
    }

    /// WireGuard completed a handshake with `key` recently: a hint is confirmed (the
    /// node holds its key), though it is routed only once it announces itself.
    pub fn handshake(&mut self, key: &str) {
        if let Some(m) = self.members.get_mut(key) {
            m.confirmed = true;
        }
    }

    /// The network refused a datagram this node sent to `to` (an ICMP error: for a
    /// member's announcement port, most often "port unreachable" from a host whose
    /// node died): the member goes down now. One behind a firewall that rejects
    /// the underlay copy while the mesh copy gets through is heard again, by the
    /// same process: it goes up, is marked [`Member::firewalled`], and from then on
    /// goes down only once it is also silent past a heartbeat.
    pub fn refused(&mut self, to: SocketAddr, now: Instant) -> Vec<MeshEvent> {
        let mut events = Vec::new();
        for m in self.members.values_mut() {
            if m.last_heard.is_none() || m.record.underlay_discovery() != to {
                continue;
            }
            m.refused = true;
            if m.alive && !m.firewalled && !m.silence_reported {
                m.alive = false;
                m.silence_reported = true;
                events.push(MeshEvent::Down(m.record.clone()));
            }
        }
        events.extend(self.tick(now));
        events
    }

    /// Whether `key`'s member went down on a refusal rather than on silence alone.
    pub fn was_refused(&self, key: &str) -> bool {
        self.members.get(key).is_some_and(|m| m.refused)
    }

    /// The members that hear this node's heartbeat: every one but those down
    /// because their host refused us ([`Membership::gone`]). Their node is gone
    /// and announces itself when it starts again; and each datagram their host
    /// refuses spends one of the ICMP errors it sends us (about one a second once a
    /// burst of six is spent: the kernel's rate limit), which telling us of the next
    /// death there needs.
    pub fn heartbeat_targets(&self) -> Vec<String> {
        self.members
            .values()
            .filter(|m| !Membership::is_gone(m))
            .map(|m| m.record.key.clone())
            .collect()
    }

    /// Whether `key`'s member is down because its host refused us: its node is gone
    /// (until it is heard again).
    pub fn gone(&self, key: &str) -> bool {
        self.members.get(key).is_some_and(Membership::is_gone)
    }

    fn is_gone(m: &Member) -> bool {
        m.refused && !m.alive
    }

    /// Where the alive members' announcement ports are on the underlay: between
    /// heartbeats each gets an empty datagram, whose refusal says a node died.
    pub fn alive_underlay(&self) -> Vec<SocketAddr> {
        self.members
            .values()
            .filter(|m| m.alive)
            .map(|m| m.record.underlay_discovery())
            .collect()
    }

    /// Periodic (more often than a heartbeat: a refused member goes down as soon as
    /// its silence says so): members silent past `stale_after` (refused ones: past a
    /// heartbeat) go down, past `forget_after` (unconfirmed hints: [`HINT_TTL`]) are
    /// removed.
    pub fn tick(&mut self, now: Instant) -> Vec<MeshEvent> {
        let mut events = Vec::new();
        let mut forget = Vec::new();
        for (key, m) in self.members.iter_mut() {
            let silent = now.saturating_duration_since(m.last_heard.unwrap_or(m.since));
            let limit = if m.refused {
                self.refused_silence
            } else {
                self.stale_after
            };
            // Reported once per silence, alive or not: a node that routed to us
            // before we ever heard it must not keep that route after it dies.
            if silent > limit && !m.silence_reported {
                m.alive = false;
                m.silence_reported = true;
                events.push(MeshEvent::Down(m.record.clone()));
            }
            let limit = if m.confirmed {
                self.forget_after
            } else {
                HINT_TTL.max(self.forget_after)
            };
            if silent > limit {
                forget.push(key.clone());
            }
        }
        for key in forget {
            if let Some(m) = self.members.remove(&key) {
                events.push(MeshEvent::RemovePeer {
                    key: m.record.key,
                    name: m.record.name,
                });
            }
        }
        events
    }

    /// This node's next announcement to members of role `to` (members: the
    /// confirmed ones it knows; to a client member, the brokers only; from a client
    /// member, none).
    pub fn announcement(&mut self, now_ms: u64, leave: bool, to: Role) -> Announcement {
        self.seq += 1;
        let gossip = self.me.role == Role::Broker;
        Announcement {
            cluster: self.cluster.clone(),
            from: self.me.clone(),
            seq: self.seq,
            part: 0,
            ts_ms: now_ms,
            members: self
                .members
                .values()
                .filter(|m| gossip && m.confirmed)
                .filter(|m| to == Role::Broker || m.record.role == Role::Broker)
                .map(|m| m.record.clone())
                .collect(),
            leave,
        }
    }

    /// Members heard before and silent now, for less than [`PROBE_QUIET_FOR`]: they
    /// hear this node more often than once a heartbeat (see the actor), so a healed
    /// partition is seen within a fraction of one. Not those whose host refused us:
    /// their node is gone and announces itself when it starts again, and every
    /// refusal spends one of the few ICMP errors a host sends each of its peers a
    /// second (the kernel's rate limit), which the next death needs.
    pub fn quiet(&self, now: Instant) -> Vec<String> {
        self.members
            .values()
            .filter(|m| !m.alive && !m.refused)
            .filter(|m| {
                m.last_heard
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBE_QUIET_FOR)
            })
            .map(|m| m.record.key.clone())
            .collect()
    }

    /// This node's WireGuard sessions are gone (its interface was made again, with the
    /// same key): it takes a new incarnation, so that its members start new sessions
    /// with it as with a restarted node, and every live member is down until heard
    /// again (routes over the old interface are dead). Returns those members.
    pub fn renew(&mut self, incarnation: u64) -> Vec<NodeRecord> {
        self.me.incarnation = incarnation.max(self.me.incarnation + 1);
        let mut dropped = Vec::new();
        for m in self.members.values_mut() {
            if m.alive {
                m.alive = false;
                dropped.push(m.record.clone());
            }
        }
        dropped
    }

    /// The records worth remembering for the next start.
    pub fn remembered(&self) -> Vec<NodeRecord> {
        self.members
            .values()
            .filter(|m| m.confirmed)
            .map(|m| m.record.clone())
            .collect()
    }
}

/// One peer as monitoring shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    pub name: String,
    pub role: Role,
    pub public_key: String,
    pub endpoint: String,
    pub mesh_addr: String,
    pub confirmed: bool,
    pub routed: bool,
    /// Seconds since the last WireGuard handshake (absent: none yet).
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds since it last announced itself.
    pub last_heard_secs: Option<f64>,
}

/// The mesh as monitoring shows it (`/meshz`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MeshView {
    pub interface: String,
    pub role: Role,
    pub network: String,
    pub backend: String,
    pub public_key: String,
    pub mesh_addr: String,
    pub endpoint: String,
    pub peers: Vec<PeerView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn record(n: u8, inc: u64) -> NodeRecord {
        let net = Network::parse("10.99.0.0/16", "c1").unwrap();
        NodeRecord {
            key: key(n),
            name: format!("n{n}"),
            endpoint: format!("192.0.2.{n}:51820").parse().unwrap(),
            mesh_addr: net.address_for(&[n; 32], Role::Broker),
            route_port: 6222,
            incarnation: inc,
            role: Role::Broker,
            client_port: None,
        }
    }

    fn membership(n: u8) -> Membership {
        Membership::new(
            record(n, 1),
            "c1",
            Network::parse("10.99.0.0/16", "c1").unwrap(),
            Duration::from_millis(500),
            Duration::from_secs(3),
            Duration::from_secs(60),
        )
    }

    fn ann(from: NodeRecord, seq: u64, ts: u64) -> Announcement {
        Announcement {
            cluster: "c1".into(),
            from,
            seq,
            part: 0,
            ts_ms: ts,
            members: Vec::new(),
            leave: false,
        }
    }

    #[test]
    fn addresses_come_from_keys_inside_the_network_in_their_roles_range() {
        let net = Network::parse("10.99.7.9/16", "c1").unwrap();
        assert_eq!(net.to_string(), "10.99.0.0/16");
        let a = net.address_for(&[1; 32], Role::Broker);
        assert_eq!(net.role_of(a), Some(Role::Broker));
        assert_eq!(a, net.address_for(&[1; 32], Role::Broker), "stable");
        assert_ne!(a, net.address_for(&[2; 32], Role::Broker));
        let c = net.address_for(&[1; 32], Role::Client);
        assert_eq!(net.role_of(c), Some(Role::Client));
        let small = Network::parse("10.1.2.0/30", "c1").unwrap();
        for n in 0..50u8 {
            let b = small.address_for(&[n; 32], Role::Broker);
            let c = small.address_for(&[n; 32], Role::Client);
            assert_eq!(b, "10.1.2.1".parse::<IpAddr>().unwrap());
            assert_eq!(c, "10.1.2.2".parse::<IpAddr>().unwrap());
        }
        assert_eq!(small.role_of("10.1.2.0".parse().unwrap()), None, "network");
        assert_eq!(
            small.role_of("10.1.2.3".parse().unwrap()),
            None,
            "broadcast"
        );
        assert_eq!(small.role_of("10.1.3.1".parse().unwrap()), None, "outside");
        assert!(Network::parse("10.0.0.0/31", "c1").is_err());
        assert!(Network::parse("nope", "c1").is_err());

        // IPv6: the cluster's /48, subnet 0 for brokers and 1 for client members, the
        // interface id from the key.
        let ula = Network::parse("ula", "c1").unwrap();
        assert_eq!(ula, Network::ula_for("c1"));
        assert_ne!(ula, Network::ula_for("c2"), "each cluster its own /48");
        let b = ula.address_for(&[1; 32], Role::Broker);
        let c = ula.address_for(&[1; 32], Role::Client);
        let (IpAddr::V6(b6), IpAddr::V6(c6)) = (b, c) else {
            panic!("IPv6 addresses: {b} {c}");
        };
        assert_eq!(b6.octets()[0], 0xfd);
        assert_eq!(b6.octets()[..6], c6.octets()[..6]);
        assert_eq!(b6.octets()[6..8], [0, 0]);
        assert_eq!(c6.octets()[6..8], [0, 1]);
        assert_eq!(b6.octets()[8..], c6.octets()[8..]);
        assert_eq!(ula.role_of(b), Some(Role::Broker));
        assert_eq!(ula.role_of(c), Some(Role::Client));
        assert_eq!(ula.role_of(a), None, "an IPv4 address is not in it");
        let other = Network::ula_for("c2").address_for(&[1; 32], Role::Broker);
        assert_eq!(ula.role_of(other), None, "another cluster's");
        // 10,000 keys: 10,000 addresses.
        let distinct: std::collections::HashSet<IpAddr> = (0..10_000u32)
            .map(|n| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&n.to_be_bytes());
                ula.address_for(&k, Role::Broker)
            })
            .collect();
        assert_eq!(distinct.len(), 10_000);
        let given = Network::parse("fd12:3456:789a:ffff::1/48", "c1").unwrap();
        assert_eq!(given.to_string(), "fd12:3456:789a::/48");
        assert!(
            Network::parse("fd12:3456:789a::/64", "c1").is_err(),
            "a /48"
        );
        assert!(Network::parse("2001:db8::/48", "c1").is_err(), "a ULA");
    }

    #[test]
    fn announcements_need_the_secret() {
        let k = AnnounceKey::derive(b"a-long-cluster-secret", "c1");
        let mut a = ann(record(2, 1), 1, 1000);
        a.members = (3..40).map(|n| record(n, 1)).collect();
        let grams = encode(&k, &a);
        assert!(grams.len() > 1, "split into datagrams");
        let mut members = Vec::new();
        for g in &grams {
            assert!(g.len() <= MAX_DATAGRAM);
            let got = decode(&k, g).unwrap();
            assert_eq!(got.from, a.from);
            members.extend(got.members);
        }
        assert_eq!(members, a.members);
        let other = AnnounceKey::derive(b"another-cluster-secret", "c1");
        assert_eq!(decode(&other, &grams[0]), Err(Rejected::BadMac));
        let other_name = AnnounceKey::derive(b"a-long-cluster-secret", "c2");
        assert_eq!(decode(&other_name, &grams[0]), Err(Rejected::BadMac));
        let mut tampered = grams[0].clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(decode(&k, &tampered), Err(Rejected::BadMac));
        assert_eq!(decode(&k, b"hello"), Err(Rejected::NotAnnouncement));
    }

    #[test]
    fn a_node_that_speaks_for_itself_is_routed_and_replays_are_ignored() {
        let mut m = membership(1);
        let t0 = Instant::now();
        let ev = m
            .receive(
                ann(record(2, 5), 1, 10_000),
                Sealed::Cluster,
                false,
                t0,
                10_000,
            )
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::SetPeer(record(2, 5)),
                MeshEvent::Up(record(2, 5))
            ]
        );
        assert_eq!(
            m.receive(
                ann(record(2, 5), 1, 10_000),
                Sealed::Cluster,
                false,
                t0,
                10_000
            ),
            Err(Rejected::Replay(1))
        );
        assert!(m
            .receive(
                ann(record(2, 5), 2, 10_000),
                Sealed::Cluster,
                false,
                t0,
                10_000
            )
            .unwrap()
            .is_empty());
        // An old incarnation is refused.
        assert!(m
            .receive(
                ann(record(2, 4), 9, 10_000),
                Sealed::Cluster,
                false,
                t0,
                10_000
            )
            .is_err());
        // Far-off clocks are refused.
        assert!(matches!(
            m.receive(
                ann(record(2, 5), 3, 10_000),
                Sealed::Cluster,
                false,
                t0,
                10_000 + MAX_CLOCK_SKEW_MS + 1
            ),
            Err(Rejected::Clock(_))
        ));
        // Our own key from another incarnation: a clone.
        assert_eq!(
            m.receive(
                ann(record(1, 9), 1, 10_000),
                Sealed::Cluster,
                false,
                t0,
                10_000
            ),
            Err(Rejected::ClonedKey)
        );
    }

    #[test]
    fn gossip_is_a_hint_until_the_node_speaks() {
        let mut m = membership(1);
        let t0 = Instant::now();
        let mut a = ann(record(2, 1), 1, 0);
        a.members = vec![record(3, 1), record(1, 1)];
        let ev = m.receive(a, Sealed::Cluster, false, t0, 0).unwrap();
        assert!(ev.contains(&MeshEvent::SetPeer(record(3, 1))));
        assert!(
            !ev.contains(&MeshEvent::Up(record(3, 1))),
            "hints are not routed"
        );
        assert!(!ev
            .iter()
            .any(|e| matches!(e, MeshEvent::SetPeer(r) if r.key == key(1))));
        let three = m.members().find(|x| x.record.key == key(3)).unwrap();
        assert!(!three.confirmed && !three.alive);
        let ev = m
            .receive(ann(record(3, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert_eq!(ev, vec![MeshEvent::Up(record(3, 1))]);
        // A silent hint is forgotten after the hint TTL.
        m.hint(record(4, 1), t0);
        let ev = m.tick(t0 + HINT_TTL + Duration::from_secs(1));
        assert!(
            ev.contains(&MeshEvent::Down(record(4, 1))),
            "its silence is reported"
        );
        assert!(ev.contains(&MeshEvent::RemovePeer {
            key: key(4),
            name: "n4".into()
        }));
    }

    #[test]
    fn silence_drops_routes_then_the_peer_and_a_word_brings_it_back() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert!(m.tick(t0 + Duration::from_secs(2)).is_empty());
        assert_eq!(
            m.tick(t0 + Duration::from_secs(4)),
            vec![MeshEvent::Down(record(2, 1))]
        );
        let ev = m
            .receive(
                ann(record(2, 1), 2, 0),
                Sealed::Cluster,
                false,
                t0 + Duration::from_secs(5),
                0,
            )
            .unwrap();
        assert_eq!(ev, vec![MeshEvent::Up(record(2, 1))]);
        let ev = m.tick(t0 + Duration::from_secs(70));
        assert_eq!(
            ev,
            vec![
                MeshEvent::Down(record(2, 1)),
                MeshEvent::RemovePeer {
                    key: key(2),
                    name: "n2".into()
                }
            ]
        );
    }

    #[test]
    fn a_restarted_node_on_a_new_endpoint_is_moved_and_a_leave_is_final() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        let mut moved = record(2, 2);
        moved.endpoint = "192.0.2.99:51820".parse().unwrap();
        let ev = m
            .receive(ann(moved.clone(), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::Down(record(2, 1)),
                MeshEvent::Restarted(moved.clone()),
                MeshEvent::Up(moved.clone())
            ]
        );
        let mut leave = ann(moved.clone(), 2, 0);
        leave.leave = true;
        let ev = m.receive(leave, Sealed::Cluster, false, t0, 0).unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::Down(moved.clone()),
                MeshEvent::RemovePeer {
                    key: key(2),
                    name: "n2".into()
                }
            ]
        );
        // Old gossip does not bring it back.
        assert!(m.hint(moved, t0).is_empty());
    }

    #[test]
    fn a_refused_member_goes_down_at_once_unless_it_keeps_speaking() {
        let mut m = membership(1);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        let port = record(2, 1).underlay_discovery();
        // Its host refuses: no process holds the port, its node died.
        assert_eq!(
            m.refused(port, t0 + ms(100)),
            vec![MeshEvent::Down(record(2, 1))]
        );
        assert!(m.was_refused(&record(2, 1).key));
        assert!(m.alive_underlay().is_empty());
        assert!(m.refused(port, t0 + ms(150)).is_empty(), "said once");
        assert!(m.tick(t0 + ms(2_000)).is_empty(), "said once");
        // A refusal for another port, or for a seed never heard, changes nothing.
        let mut other = port;
        other.set_port(9);
        assert!(m.refused(other, t0 + ms(2_000)).is_empty());
        assert!(m.hint(record(3, 0), t0 + ms(2_000)).len() == 1);
        let seed = record(3, 0).underlay_discovery();
        assert!(m.refused(seed, t0 + ms(2_000)).is_empty());
        // The same process speaks after all: a firewall rejects our datagrams. Up,
        // said once, and from now on only its silence takes it down.
        let ev = m
            .receive(
                ann(record(2, 1), 2, 0),
                Sealed::Cluster,
                false,
                t0 + ms(2_100),
                0,
            )
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::Firewalled(record(2, 1)),
                MeshEvent::Up(record(2, 1))
            ]
        );
        assert!(!m.was_refused(&record(2, 1).key));
        assert_eq!(m.alive_underlay(), vec![port]);
        assert!(m.refused(port, t0 + ms(2_200)).is_empty());
        let ev = m
            .receive(
                ann(record(2, 1), 3, 0),
                Sealed::Cluster,
                false,
                t0 + ms(2_300),
                0,
            )
            .unwrap();
        assert!(ev.is_empty(), "firewalled is said once: {ev:?}");
        assert!(m.refused(port, t0 + ms(2_400)).is_empty());
        assert!(m.tick(t0 + ms(2_900)).is_empty(), "heard 600 ms ago");
        assert_eq!(m.tick(t0 + ms(2_901)), vec![MeshEvent::Down(record(2, 1))]);
        // A new incarnation is another process, perhaps elsewhere: refusals count.
        let ev = m
            .receive(
                ann(record(2, 2), 1, 0),
                Sealed::Cluster,
                false,
                t0 + ms(3_000),
                0,
            )
            .unwrap();
        assert!(ev.contains(&MeshEvent::Restarted(record(2, 2))));
        assert_eq!(
            m.refused(port, t0 + ms(3_100)),
            vec![MeshEvent::Down(record(2, 2))]
        );
    }

    #[test]
    fn a_member_whose_host_refused_us_is_gone_and_not_announced_to_until_heard() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        m.receive(ann(record(3, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert_eq!(m.heartbeat_targets(), vec![key(2), key(3)]);
        m.refused(record(2, 1).underlay_discovery(), t0);
        assert!(m.gone(&key(2)) && !m.gone(&key(3)));
        assert_eq!(m.heartbeat_targets(), vec![key(3)]);
        // Heard again (started again): every heartbeat.
        m.receive(ann(record(2, 2), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert!(!m.gone(&key(2)));
        assert_eq!(m.heartbeat_targets(), vec![key(2), key(3)]);
    }

    #[test]
    fn quiet_members_are_the_silent_ones_heard_within_a_minute() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        m.hint(record(3, 0), t0);
        assert!(m.quiet(t0).is_empty(), "alive, and a hint never heard");
        let down = t0 + Duration::from_millis(3_001);
        assert!(m.tick(down).contains(&MeshEvent::Down(record(2, 1))));
        assert_eq!(m.quiet(down), vec![record(2, 1).key], "not the hint");
        assert!(m.quiet(t0 + PROBE_QUIET_FOR).is_empty());
    }

    #[test]
    fn a_renewed_node_takes_a_new_incarnation_and_drops_its_live_members() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        m.hint(record(3, 0), t0);
        let before = m.me().incarnation;
        assert_eq!(m.renew(0), vec![record(2, 1)]);
        assert!(m.me().incarnation > before);
        assert!(m.renew(0).is_empty(), "nothing left alive");
        // Heard again: up, routes again.
        let ev = m
            .receive(ann(record(2, 1), 2, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert_eq!(ev, vec![MeshEvent::Up(record(2, 1))]);
    }

    #[test]
    fn a_node_restarted_in_place_gets_a_new_wireguard_session_and_its_routes_again() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        // Back before its silence was noticed: the old routes go, the peer starts over.
        let ev = m
            .receive(ann(record(2, 2), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::Down(record(2, 1)),
                MeshEvent::Restarted(record(2, 2)),
                MeshEvent::Up(record(2, 2))
            ]
        );
        // Back after it was dropped: nothing left to drop.
        assert_eq!(
            m.tick(t0 + Duration::from_secs(4)),
            vec![MeshEvent::Down(record(2, 2))]
        );
        let ev = m
            .receive(
                ann(record(2, 3), 1, 0),
                Sealed::Cluster,
                false,
                t0 + Duration::from_secs(5),
                0,
            )
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::Restarted(record(2, 3)),
                MeshEvent::Up(record(2, 3))
            ]
        );
        // A seed's hint (incarnation 0) answered by the node itself is no restart.
        m.hint(record(3, 0), t0);
        let ev = m
            .receive(ann(record(3, 5), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        assert_eq!(ev, vec![MeshEvent::Up(record(3, 5))]);
    }

    #[test]
    fn an_address_held_by_another_key_is_refused() {
        let mut m = membership(1);
        let t0 = Instant::now();
        m.receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        let mut clash = record(3, 1);
        clash.mesh_addr = record(2, 1).mesh_addr;
        assert_eq!(
            m.receive(ann(clash.clone(), 1, 0), Sealed::Cluster, false, t0, 0),
            Err(Rejected::AddressTaken(clash.mesh_addr))
        );
        assert!(m.hint(clash.clone(), t0).is_empty());
        clash.mesh_addr = m.me().mesh_addr;
        assert!(
            m.receive(ann(clash, 2, 0), Sealed::Cluster, false, t0, 0)
                .is_err(),
            "ours too"
        );
        // The holder itself keeps announcing.
        assert!(m
            .receive(ann(record(2, 1), 2, 0), Sealed::Cluster, false, t0, 0)
            .is_ok());
    }

    fn client_record(n: u8, inc: u64) -> NodeRecord {
        let net = Network::parse("10.99.0.0/16", "c1").unwrap();
        NodeRecord {
            mesh_addr: net.address_for(&[n; 32], Role::Client),
            role: Role::Client,
            name: format!("app{n}"),
            ..record(n, inc)
        }
    }

    #[test]
    fn each_key_opens_its_own_announcements() {
        let cluster = AnnounceKey::derive(b"a-long-cluster-secret", "c1");
        let client = AnnounceKey::derive_client(b"a-long-client-secret", "c1");
        let same_bytes = AnnounceKey::derive_client(b"a-long-cluster-secret", "c1");
        let a = ann(record(2, 1), 1, 1000);
        let broker = AnnounceKeys {
            cluster: Some(AnnounceKey::derive(b"a-long-cluster-secret", "c1")),
            client: Some(AnnounceKey::derive_client(b"a-long-client-secret", "c1")),
        };
        let member = AnnounceKeys {
            cluster: None,
            client: Some(AnnounceKey::derive_client(b"a-long-client-secret", "c1")),
        };
        let by_cluster = &encode(&cluster, &a)[0];
        let by_client = &encode(&client, &a)[0];
        assert_eq!(broker.open(by_cluster).unwrap().1, Sealed::Cluster);
        assert_eq!(broker.open(by_client).unwrap().1, Sealed::Client);
        assert_eq!(member.open(by_client).unwrap().1, Sealed::Client);
        assert_eq!(
            member.open(by_cluster),
            Err(Rejected::BadMac),
            "no cluster key"
        );
        assert_eq!(
            broker.open(&encode(&same_bytes, &a)[0]),
            Err(Rejected::BadMac),
            "the cluster secret as a client secret is another key"
        );
        assert_eq!(broker.open(b"hello"), Err(Rejected::NotAnnouncement));
    }

    #[test]
    fn client_members_peer_with_brokers_only_and_are_never_routed_between_brokers() {
        let t0 = Instant::now();
        // A broker hears a client member: a member of role client; its gossip (a
        // broker it invents) is not taken.
        let mut broker = membership(1);
        let mut from_app = ann(client_record(7, 1), 1, 0);
        from_app.members = vec![record(9, 1)];
        let ev = broker
            .receive(from_app, Sealed::Client, false, t0, 0)
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeshEvent::SetPeer(client_record(7, 1)),
                MeshEvent::Up(client_record(7, 1))
            ]
        );
        // Sealed with the client secret, a broker's record is a lie.
        assert_eq!(
            broker.receive(ann(record(8, 1), 1, 0), Sealed::Client, false, t0, 0),
            Err(Rejected::NotAClient)
        );
        // A client record at a broker's address, or a broker at a client's, is bad.
        let mut posing = client_record(6, 1);
        posing.mesh_addr = record(6, 1).mesh_addr;
        assert_eq!(
            broker.receive(ann(posing, 1, 0), Sealed::Cluster, false, t0, 0),
            Err(Rejected::BadRecord)
        );
        broker
            .receive(ann(record(2, 1), 1, 0), Sealed::Cluster, false, t0, 0)
            .unwrap();
        // To brokers, every member; to client members, the brokers only.
        let to_brokers = broker.announcement(0, false, Role::Broker);
        assert_eq!(to_brokers.members.len(), 2);
        let to_clients = broker.announcement(0, false, Role::Client);
        assert_eq!(to_clients.members, vec![record(2, 1)]);

        // A client member takes brokers, and brokers' gossip of brokers only; it says
        // nothing of its members.
        let mut app = Membership::new(
            client_record(7, 1),
            "c1",
            Network::parse("10.99.0.0/16", "c1").unwrap(),
            Duration::from_millis(500),
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        // A broker no one named is not taken (another client member could pose as
        // one: they all hold the key).
        assert_eq!(
            app.receive(ann(record(3, 1), 1, 0), Sealed::Client, false, t0, 0),
            Err(Rejected::UnknownBroker)
        );
        let seed = NodeRecord {
            incarnation: 0,
            ..record(1, 1)
        };
        assert_eq!(app.hint(seed.clone(), t0), vec![MeshEvent::SetPeer(seed)]);
        let mut from_broker = ann(record(1, 1), 1, 0);
        from_broker.members = vec![record(2, 1), client_record(5, 1)];
        // Over the underlay, its word about others is not taken.
        let ev = app
            .receive(from_broker.clone(), Sealed::Client, false, t0, 0)
            .unwrap();
        assert_eq!(ev, vec![MeshEvent::Up(record(1, 1))]);
        // Over the mesh (WireGuard vouches for it), the brokers it names are, also
        // in the mesh's copy of the announcement heard over the underlay (but only
        // their names: a replay changes nothing else).
        let ev = app
            .receive(from_broker.clone(), Sealed::Client, true, t0, 0)
            .unwrap();
        assert_eq!(ev, vec![MeshEvent::SetPeer(record(2, 1))]);
        assert!(app
            .receive(from_broker.clone(), Sealed::Client, true, t0, 0)
            .unwrap()
            .is_empty());
        assert_eq!(
            app.receive(from_broker, Sealed::Client, false, t0, 0),
            Err(Rejected::Replay(1))
        );
        assert_eq!(
            app.receive(ann(client_record(5, 1), 1, 0), Sealed::Client, false, t0, 0),
            Err(Rejected::NotABroker)
        );
        assert!(app.announcement(0, false, Role::Broker).members.is_empty());
        let mut with_port = record(1, 1);
        assert_eq!(with_port.client_url(), None);
        with_port.client_port = Some(4222);
        let url = with_port.client_url().unwrap();
        assert!(
            url.starts_with("nats://10.99.") && url.ends_with(":4222"),
            "{url}"
        );
        let v6 = NodeRecord {
            mesh_addr: "fd00:1:2:0::5".parse().unwrap(),
            ..with_port
        };
        assert_eq!(v6.client_url().unwrap(), "nats://[fd00:1:2::5]:4222");
    }

    #[test]
    fn config_checks() {
        let ok: MeshConfig = toml::from_str(
            "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:51820\"",
        )
        .unwrap();
        assert!(ok.validate("c1").is_ok());
        assert_eq!(ok.state_file(), Some(PathBuf::from("k.peers.json")));
        assert_eq!(ok.brokers_file(), Some(PathBuf::from("k.brokers")));
        for (text, key) in [
            ("interface = \"a-very-long-interface\"", "mesh.interface"),
            ("interface = \"mb0\"", "mesh.private_key_file"),
            ("interface = \"mb0\"\nprivate_key_file = \"k\"", "mesh.endpoint"),
            (
                "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:1\"\nnetwork = \"10.0.0.0/33\"",
                "mesh.network",
            ),
            (
                "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:1\"\naddress = \"10.1.0.1\"",
                "mesh.address",
            ),
            (
                "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:1\"\nnetwork = \"10.1.0.0/16\"\naddress = \"10.1.200.1\"",
                "mesh.address",
            ),
            (
                "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:1\"\nrole = \"client\"",
                "mesh.client_secret_file",
            ),
            (
                "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:1\"\nseeds = [{endpoint = \"192.0.2.2:1\", public_key = \"short\"}]",
                "mesh.seeds",
            ),
            (
                "interface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:1\"\nstale_after = \"1s\"\nheartbeat = \"1s\"",
                "mesh.stale_after",
            ),
        ] {
            let c: MeshConfig = toml::from_str(text).unwrap();
            assert_eq!(c.validate("c1").unwrap_err().0, key, "{text}");
        }
    }
}
