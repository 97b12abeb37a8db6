//! The cluster plane, without sockets: the `[cluster]` config, route URLs, the route
//! handshake as a state machine (cluster name, the shared-secret challenge), and the
//! rule that settles which of two routes to the same node survives.
//!
//! A route handshake follows the reference: the node that accepted the connection
//! sends INFO first; the node that dialed answers with CONNECT (its server id as
//! `name`) and its own INFO. With a cluster secret, each side proves it knows the
//! secret without sending it: the acceptor's INFO carries a nonce that the dialer's
//! CONNECT answers with an HMAC (`sig`), and the dialer's INFO carries a nonce that
//! the acceptor answers in a second INFO (`proof`). Neither side treats the connection
//! as a route (no interest, no messages) before its peer has proved itself, so a node
//! without the secret learns nothing and injects nothing.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::proto::route::{RouteConnect, RouteInfo, RouteOp, ROUTE_PROTO};
use crate::values::{Dur, Secret};

/// `[cluster]`: routes to other nodes. Off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster's name; routes from another cluster are refused.
    pub name: Option<String>,
    /// Where other nodes connect, `host:port` (port 0 picks a free port).
    pub listen: Option<String>,
    /// The `host:port` other nodes should dial, when it is not `listen` (behind NAT,
    /// or `listen` is a wildcard address).
    pub advertise: Option<String>,
    /// Nodes to dial: `nats-route://host:port`, `nats://host:port` or `host:port`.
    pub routes: Vec<String>,
    /// The shared secret every node of the cluster proves it knows (at least 16
    /// characters), or a file holding it.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    /// Mutual TLS between nodes: this node's certificate and key, and the cluster CA
    /// that signs every node's certificate. All three, or none.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// How often an idle route is pinged (default 30 s, as the reference's routes).
    pub ping_interval: Option<Dur>,
}

/// The reference's route ping interval.
pub const DEFAULT_ROUTE_PING: Duration = Duration::from_secs(30);
/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        text.parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| format!("{text:?} is not an address with a port, like \"127.0.0.1:6222\""))
    }

    pub fn tls(&self) -> bool {
        self.cert_file.is_some()
    }

    pub fn ping_interval(&self) -> Duration {
        self.ping_interval.map_or(DEFAULT_ROUTE_PING, |d| d.0)
    }

    /// Checks the section (`mesh`: `[mesh]` is on, and the cluster listens on the mesh
    /// address); `Err` names the key and what is wrong.
    pub fn validate(&self, mesh: bool) -> Result<(), (&'static str, String)> {
        let addr = self.listen_addr().map_err(|e| ("cluster.listen", e))?;
        if mesh {
            if addr.is_some() {
                return Err((
                    "cluster.listen",
                    "with [mesh] the cluster listens on the mesh address only: remove cluster.listen (the port is mesh.route_port)".into(),
                ));
            }
            if self.secret.is_none() && self.secret_file.is_none() {
                return Err((
                    "cluster.secret",
                    "the mesh authenticates its announcements with the cluster secret: set secret or secret_file".into(),
                ));
            }
            if self.name.is_none() {
                return Err((
                    "cluster.name",
                    "a cluster needs a name; every node of it uses the same".into(),
                ));
            }
        }
        let tls_parts = [&self.cert_file, &self.key_file, &self.ca_file];
        let tls_count = tls_parts.iter().filter(|p| p.is_some()).count();
        if tls_count != 0 && tls_count != 3 {
            let missing = ["cluster.cert_file", "cluster.key_file", "cluster.ca_file"]
                [tls_parts.iter().position(|p| p.is_none()).unwrap_or(0)];
            return Err((
                missing,
                "route TLS is mutual: set cert_file, key_file and ca_file (the cluster CA) together".into(),
            ));
        }
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err((
                "cluster.secret_file",
                "set either secret or secret_file, not both".into(),
            ));
        }
        if let Some(secret) = &self.secret {
            check_secret(secret.0.as_bytes()).map_err(|e| ("cluster.secret", e))?;
        }
        for route in &self.routes {
            parse_route_url(route).map_err(|e| ("cluster.routes", e))?;
        }
        if let Some(adv) = &self.advertise {
            parse_route_url(adv).map_err(|e| ("cluster.advertise", e))?;
        }
        if self.ping_interval.is_some_and(|d| d.0.is_zero()) {
            return Err(("cluster.ping_interval", "must be more than 0".into()));
        }
        let Some(addr) = addr else {
            if mesh {
                return Ok(());
            }
            if !self.routes.is_empty() || self.name.is_some() {
                return Err((
                    "cluster.listen",
                    "a cluster needs a listen address (use port 0 for any)".into(),
                ));
            }
            return Ok(());
        };
        match &self.name {
            None => {
                return Err((
                    "cluster.name",
                    "a cluster needs a name; every node of it uses the same".into(),
                ))
            }
            Some(name) if name.is_empty() || name.contains(|c: char| c.is_whitespace()) => {
                return Err((
                    "cluster.name",
                    format!("{name:?} must be non-empty and without spaces"),
                ))
            }
            Some(_) => {}
        }
        let has_secret = self.secret.is_some() || self.secret_file.is_some();
        let protected = has_secret && tls_count == 3;
        if !addr.ip().is_loopback() && !protected {
            return Err((
                "cluster.listen",
                format!("{addr} is not loopback: a cluster listener reachable from the network needs both a secret (secret or secret_file) and mutual TLS (cert_file, key_file, ca_file)"),
            ));
        }
        Ok(())
    }

    /// The secret's bytes, read from `secret_file` (with `files`) if that is where it is.
    pub fn load_secret(
        &self,
        files: crate::tls::ReadFile<'_>,
    ) -> Result<Option<Vec<u8>>, (&'static str, String)> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.0.as_bytes().to_vec()));
        }
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let text =
            files(path).map_err(|e| ("cluster.secret_file", format!("{}: {e}", path.display())))?;
        let trimmed = text.trim_ascii().to_vec();
        check_secret(&trimmed)
            .map_err(|e| ("cluster.secret_file", format!("{}: {e}", path.display())))?;
        Ok(Some(trimmed))
    }
}

fn check_secret(secret: &[u8]) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "too short ({} bytes; at least {MIN_SECRET_LEN})",
            secret.len()
        ));
    }
    Ok(())
}

/// A route URL as `host:port`: `nats-route://host:port`, `nats://host:port` (an
/// optional trailing `/`) or `host:port`.
pub fn parse_route_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("nats-route://")
        .or_else(|| url.strip_prefix("nats://"))
        .unwrap_or(url);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(format!(
            "{url:?}: credentials in a route URL are not used; set cluster.secret"
        ));
    }
    let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p != 0)
    });
    if !ok {
        return Err(format!(
            "{url:?} is not a route address like \"nats-route://10.0.0.2:6222\""
        ));
    }
    Ok(rest.to_string())
}

/// `nats-route://host:port/` for an address.
pub fn route_url(host_port: &str) -> String {
    format!("nats-route://{host_port}/")
}

/// What a node says about itself on its routes.
#[derive(Clone)]
pub struct LocalNode {
    pub server_id: String,
    pub server_name: String,
    pub cluster: String,
    /// `host:port` other nodes dial.
    pub advertise: String,
    pub secret: Option<Vec<u8>>,
    pub tls: bool,
    pub max_payload: u64,
    pub version: String,
}

impl fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalNode")
            .field("server_id", &self.server_id)
            .field("cluster", &self.cluster)
            .field("advertise", &self.advertise)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl LocalNode {
    /// The route INFO this node sends.
    pub fn info(&self) -> RouteInfo {
        let (host, port) = self
            .advertise
            .rsplit_once(':')
            .map(|(h, p)| {
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.parse().unwrap_or(0),
                )
            })
            .unwrap_or_default();
        RouteInfo {
            server_id: self.server_id.clone(),
            server_name: self.server_name.clone(),
            version: self.version.clone(),
            proto: ROUTE_PROTO,
            host,
            port,
            headers: true,
            max_payload: self.max_payload,
            cluster: self.cluster.clone(),
            auth_required: self.secret.is_some(),
            tls_required: self.tls,
            ..RouteInfo::default()
        }
    }
}

/// The HMAC-SHA256 a node answers a nonce with; `label` keeps a dialer's answer from
/// being replayed as an acceptor's and the ids bind it to this pair of nodes.
pub fn proof(secret: &[u8], label: &str, nonce: &str, from: &str, to: &str) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &proof_input(label, nonce, from, to));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

fn proof_input(label: &str, nonce: &str, from: &str, to: &str) -> Vec<u8> {
    [label, nonce, from, to].join("\0").into_bytes()
}

/// Checks a proof in constant time.
pub fn verify_proof(
    secret: &[u8],
    label: &str,
    nonce: &str,
    from: &str,
    to: &str,
    tag: &str,
) -> bool {
    use base64::Engine;
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &proof_input(label, nonce, from, to), &tag).is_ok()
}

const LABEL_CONNECT: &str = "meshbroker route connect v1";
const LABEL_ACCEPT: &str = "meshbroker route accept v1";

/// Which end of the route this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It accepted the connection on its cluster listener.
    Accepted,
    /// It dialed (a configured route, or one it was told about).
    Solicited,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// For the log.
    pub reason: String,
    /// The `-ERR` line to send before closing, if any.
    pub reply: Option<Vec<u8>>,
    /// The other end is this node itself (a route address that points back here):
    /// not worth dialing again.
    pub self_route: bool,
}

/// What the actor does after feeding an operation to the handshake.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send these bytes (possibly none) and keep reading.
    Continue(Vec<u8>),
    /// Send these bytes; the route is up with this peer.
    Established(Vec<u8>, Box<RouteInfo>),
    Refused(Refusal),
}

/// One route's handshake.
pub struct Handshake {
    role: Role,
    local: LocalNode,
    /// The challenge this node sent (empty without a secret).
    nonce: String,
    /// The acceptor's view of the dialer's CONNECT, once verified.
    connected: Option<String>,
    /// The dialer: the acceptor's INFO, while waiting for its proof.
    remote: Option<Box<RouteInfo>>,
}

fn refuse(reason: impl Into<String>, reply: Option<&str>) -> Step {
    Step::Refused(Refusal {
        reason: reason.into(),
        reply: reply.map(|r| format!("-ERR '{r}'\r\n").into_bytes()),
        self_route: false,
    })
}

fn refuse_self() -> Step {
    Step::Refused(Refusal {
        reason: "a route to this node itself".into(),
        reply: None,
        self_route: true,
    })
}

impl Handshake {
    /// `nonce` is fresh randomness from the caller (used only with a secret).
    pub fn new(role: Role, local: LocalNode, nonce: String) -> Handshake {
        let nonce = if local.secret.is_some() {
            nonce
        } else {
            String::new()
        };
        Handshake {
            role,
            local,
            nonce,
            connected: None,
            remote: None,
        }
    }

    /// What this node sends first: the acceptor's INFO; nothing for the dialer.
    pub fn start(&self) -> Vec<u8> {
        match self.role {
            Role::Accepted => self.info_bytes(|_| {}),
            Role::Solicited => Vec::new(),
        }
    }

    fn info_bytes(&self, edit: impl FnOnce(&mut RouteInfo)) -> Vec<u8> {
        let mut info = self.local.info();
        info.nonce = self.nonce.clone();
        edit(&mut info);
        let mut out = b"INFO ".to_vec();
        out.extend_from_slice(&serde_json::to_vec(&info).unwrap_or_default());
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Feeds one operation received before the route is up.
    pub fn on_op(&mut self, op: &RouteOp<'_>) -> Step {
        match op {
            RouteOp::Ping => Step::Continue(b"PONG\r\n".to_vec()),
            RouteOp::Pong | RouteOp::Ok => Step::Continue(Vec::new()),
            RouteOp::Err(text) => refuse(
                format!("peer refused: {}", String::from_utf8_lossy(text)),
                None,
            ),
            RouteOp::Info(json) => match self.role {
                Role::Accepted => self.accepted_info(json),
                Role::Solicited => self.solicited_info(json),
            },
            RouteOp::Connect(json) if self.role == Role::Accepted => self.connect(json),
            _ => refuse(
                "route operation before the handshake finished",
                Some("Authorization Violation"),
            ),
        }
    }

    fn cluster_mismatch(&self, theirs: &str) -> Option<Step> {
        (theirs != self.local.cluster).then(|| {
            refuse(
                format!(
                    "cluster name {theirs:?} does not match {:?}",
                    self.local.cluster
                ),
                Some(&format!(
                    "Rejecting connection, cluster name \"{theirs}\" does not match \"{}\"",
                    self.local.cluster
                )),
            )
        })
    }

    /// The acceptor gets the dialer's CONNECT.
    fn connect(&mut self, json: &[u8]) -> Step {
        let Ok(connect) = serde_json::from_slice::<RouteConnect>(json) else {
            return refuse("CONNECT is not valid JSON", Some("Invalid Connect"));
        };
        if let Some(step) = self.cluster_mismatch(&connect.cluster) {
            return step;
        }
        if let Some(secret) = &self.local.secret {
            let ok = connect.sig.as_deref().is_some_and(|sig| {
                verify_proof(
                    secret,
                    LABEL_CONNECT,
                    &self.nonce,
                    &connect.name,
                    &self.local.server_id,
                    sig,
                )
            });
            if !ok {
                return refuse(
                    "the dialer did not prove the cluster secret",
                    Some("Authorization Violation"),
                );
            }
        }
        self.connected = Some(connect.name);
        Step::Continue(Vec::new())
    }

    /// The acceptor gets the dialer's INFO (after its CONNECT).
    fn accepted_info(&mut self, json: &[u8]) -> Step {
        let Some(name) = self.connected.as_deref() else {
            return refuse("INFO before CONNECT", Some("Authorization Violation"));
        };
        let Ok(info) = serde_json::from_slice::<RouteInfo>(json) else {
            return refuse("INFO is not valid JSON", None);
        };
        if info.server_id != name {
            return refuse(
                format!("CONNECT named {name:?} but INFO {:?}", info.server_id),
                Some("Authorization Violation"),
            );
        }
        if info.server_id == self.local.server_id {
            return refuse_self();
        }
        let out = match &self.local.secret {
            Some(secret) => {
                if info.nonce.is_empty() {
                    return refuse("the dialer sent no nonce to answer", None);
                }
                let tag = proof(
                    secret,
                    LABEL_ACCEPT,
                    &info.nonce,
                    &self.local.server_id,
                    &info.server_id,
                );
                self.info_bytes(|i| {
                    i.nonce.clear();
                    i.proof = tag;
                })
            }
            None => Vec::new(),
        };
        Step::Established(out, Box::new(info))
    }

    /// The dialer gets the acceptor's INFO: the first one starts the handshake, the
    /// second (with a secret) carries the acceptor's proof.
    fn solicited_info(&mut self, json: &[u8]) -> Step {
        let Ok(info) = serde_json::from_slice::<RouteInfo>(json) else {
            return refuse("INFO is not valid JSON", None);
        };
        if let Some(first) = self.remote.take() {
            let ok = self.local.secret.as_ref().is_some_and(|secret| {
                info.server_id == first.server_id
                    && verify_proof(
                        secret,
                        LABEL_ACCEPT,
                        &self.nonce,
                        &first.server_id,
                        &self.local.server_id,
                        &info.proof,
                    )
            });
            if !ok {
                return refuse("the acceptor did not prove the cluster secret", None);
            }
            return Step::Established(Vec::new(), first);
        }
        if info.server_id == self.local.server_id {
            return refuse_self();
        }
        if info.cluster != self.local.cluster {
            return refuse(
                format!(
                    "cluster name {:?} does not match {:?}",
                    info.cluster, self.local.cluster
                ),
                None,
            );
        }
        let sig = match &self.local.secret {
            Some(secret) => {
                if info.nonce.is_empty() {
                    return refuse(
                        "the acceptor does not use a cluster secret (no nonce in its INFO)",
                        None,
                    );
                }
                Some(proof(
                    secret,
                    LABEL_CONNECT,
                    &info.nonce,
                    &self.local.server_id,
                    &info.server_id,
                ))
            }
            None => None,
        };
        let connect = RouteConnect {
            name: self.local.server_id.clone(),
            cluster: self.local.cluster.clone(),
            tls_required: self.local.tls,
            sig,
            ..RouteConnect::default()
        };
        let mut out = b"CONNECT ".to_vec();
        out.extend_from_slice(&serde_json::to_vec(&connect).unwrap_or_default());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.info_bytes(|_| {}));
        if self.local.secret.is_some() {
            self.remote = Some(Box::new(info));
            Step::Continue(out)
        } else {
            Step::Established(out, Box::new(info))
        }
    }
}

/// Two routes to the same node: does the new one replace the one registered first?
/// Both nodes must pick the same connection, or each would close the one the other
/// kept: the connection dialed by the node with the smaller server id wins; between
/// two dialed by the same node, the first one stays.
pub fn new_route_wins(local_id: &str, remote_id: &str, existing: Role, new: Role) -> bool {
    if existing == new {
        return false;
    }
    let preferred = if local_id < remote_id {
        Role::Solicited
    } else {
        Role::Accepted
    };
    new == preferred
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::route::{Parsed, RouteParser};

    fn node(id: &str, secret: Option<&str>) -> LocalNode {
        LocalNode {
            server_id: id.into(),
            server_name: id.into(),
            cluster: "c1".into(),
            advertise: "127.0.0.1:6222".into(),
            secret: secret.map(|s| s.as_bytes().to_vec()),
            tls: false,
            max_payload: 1 << 20,
            version: "2.15.1".into(),
        }
    }

    /// Feeds `bytes` (one or more operations) to `hs`, returning the last step.
    fn feed(hs: &mut Handshake, bytes: &[u8]) -> Step {
        let parser = RouteParser::new(4096, 1 << 20);
        let mut at = 0;
        let mut last = Step::Continue(Vec::new());
        while at < bytes.len() {
            let Ok(Parsed::Op(op, n)) = parser.parse(&bytes[at..]) else {
                panic!("unparsable {:?}", String::from_utf8_lossy(&bytes[at..]));
            };
            at += n;
            last = hs.on_op(&op);
            if !matches!(last, Step::Continue(_)) {
                break;
            }
        }
        last
    }

    /// Runs a whole handshake between a dialer and an acceptor.
    fn run(dialer: LocalNode, acceptor: LocalNode) -> (Step, Step) {
        let mut d = Handshake::new(Role::Solicited, dialer, "dialer-nonce".into());
        let mut a = Handshake::new(Role::Accepted, acceptor, "acceptor-nonce".into());
        let to_dialer = a.start();
        let d1 = feed(&mut d, &to_dialer);
        let to_acceptor = match &d1 {
            Step::Continue(out) | Step::Established(out, _) => out.clone(),
            Step::Refused(_) => return (d1, Step::Continue(Vec::new())),
        };
        let a1 = feed(&mut a, &to_acceptor);
        let Step::Established(back, _) = &a1 else {
            return (d1, a1);
        };
        if back.is_empty() {
            return (d1, a1);
        }
        let d2 = feed(&mut d, back);
        (d2, a1)
    }

    #[test]
    fn without_a_secret_both_sides_come_up() {
        let (d, a) = run(node("A", None), node("B", None));
        assert!(
            matches!(d, Step::Established(_, ref i) if i.server_id == "B"),
            "{d:?}"
        );
        assert!(
            matches!(a, Step::Established(_, ref i) if i.server_id == "A"),
            "{a:?}"
        );
    }

    #[test]
    fn with_the_same_secret_both_sides_prove_it() {
        let s = Some("a-long-cluster-secret");
        let (d, a) = run(node("A", s), node("B", s));
        assert!(
            matches!(d, Step::Established(_, ref i) if i.server_id == "B"),
            "{d:?}"
        );
        assert!(
            matches!(a, Step::Established(_, ref i) if i.server_id == "A"),
            "{a:?}"
        );
    }

    #[test]
    fn a_wrong_secret_is_refused_by_the_acceptor() {
        let (d, a) = run(
            node("A", Some("the-wrong-secret-here")),
            node("B", Some("a-long-cluster-secret")),
        );
        assert!(matches!(d, Step::Continue(_)), "{d:?}");
        let Step::Refused(r) = a else { panic!("{a:?}") };
        assert_eq!(
            r.reply.as_deref(),
            Some(&b"-ERR 'Authorization Violation'\r\n"[..])
        );
    }

    #[test]
    fn an_acceptor_without_the_secret_is_refused_by_the_dialer() {
        // The impostor accepts and claims to know the secret but answers garbage.
        let mut d = Handshake::new(
            Role::Solicited,
            node("A", Some("a-long-cluster-secret")),
            "n1".into(),
        );
        let mut impostor = node("B", None).info();
        impostor.nonce = "n2".into();
        let first = format!("INFO {}\r\n", serde_json::to_string(&impostor).unwrap());
        assert!(matches!(feed(&mut d, first.as_bytes()), Step::Continue(_)));
        impostor.nonce.clear();
        impostor.proof = "forged".into();
        let second = format!("INFO {}\r\n", serde_json::to_string(&impostor).unwrap());
        assert!(matches!(feed(&mut d, second.as_bytes()), Step::Refused(_)));
        // And one without any nonce is refused at once.
        let mut d = Handshake::new(
            Role::Solicited,
            node("A", Some("a-long-cluster-secret")),
            "n1".into(),
        );
        let plain = format!(
            "INFO {}\r\n",
            serde_json::to_string(&node("B", None).info()).unwrap()
        );
        assert!(matches!(feed(&mut d, plain.as_bytes()), Step::Refused(_)));
    }

    #[test]
    fn a_dialer_without_a_secret_is_refused() {
        let (_, a) = run(node("A", None), node("B", Some("a-long-cluster-secret")));
        assert!(matches!(a, Step::Refused(_)), "{a:?}");
    }

    #[test]
    fn another_cluster_is_refused_with_the_reference_text() {
        // The dialer refuses by itself, before it says anything.
        let mut other = node("A", None);
        other.cluster = "other".into();
        let (d, _) = run(other, node("B", None));
        assert!(
            matches!(d, Step::Refused(Refusal { reply: None, .. })),
            "{d:?}"
        );
        // The acceptor answers a CONNECT from another cluster as the reference does.
        let mut a = Handshake::new(Role::Accepted, node("B", None), String::new());
        let step = feed(
            &mut a,
            b"CONNECT {\"name\":\"A\",\"cluster\":\"other\"}\r\n",
        );
        let Step::Refused(r) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            r.reply.as_deref(),
            Some(
                &b"-ERR 'Rejecting connection, cluster name \"other\" does not match \"c1\"'\r\n"[..]
            )
        );
    }

    #[test]
    fn a_route_to_itself_is_refused() {
        let (d, _) = run(node("A", None), node("A", None));
        assert!(matches!(d, Step::Refused(_)), "{d:?}");
    }

    #[test]
    fn proofs_are_bound_to_label_nonce_and_ids() {
        let s = b"a-long-cluster-secret";
        let p = proof(s, LABEL_CONNECT, "n", "A", "B");
        assert!(verify_proof(s, LABEL_CONNECT, "n", "A", "B", &p));
        assert!(!verify_proof(s, LABEL_ACCEPT, "n", "A", "B", &p));
        assert!(!verify_proof(s, LABEL_CONNECT, "m", "A", "B", &p));
        assert!(!verify_proof(s, LABEL_CONNECT, "n", "B", "A", &p));
        assert!(!verify_proof(
            b"another-secret-xxxxx",
            LABEL_CONNECT,
            "n",
            "A",
            "B",
            &p
        ));
    }

    #[test]
    fn both_nodes_keep_the_same_duplicate() {
        // A < B: the route A dialed is the one both keep.
        assert!(new_route_wins("A", "B", Role::Accepted, Role::Solicited));
        assert!(!new_route_wins("A", "B", Role::Solicited, Role::Accepted));
        assert!(new_route_wins("B", "A", Role::Solicited, Role::Accepted));
        assert!(!new_route_wins("B", "A", Role::Accepted, Role::Solicited));
        assert!(!new_route_wins("A", "B", Role::Solicited, Role::Solicited));
    }

    #[test]
    fn route_urls() {
        assert_eq!(
            parse_route_url("nats-route://10.0.0.2:6222/").unwrap(),
            "10.0.0.2:6222"
        );
        assert_eq!(parse_route_url("nats://h:1").unwrap(), "h:1");
        assert_eq!(parse_route_url("[::1]:6222").unwrap(), "[::1]:6222");
        assert!(parse_route_url("nats-route://u:p@h:1").is_err());
        assert!(parse_route_url("h").is_err());
        assert!(parse_route_url("h:0").is_err());
    }

    fn cfg(text: &str) -> ClusterConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn config_policy() {
        assert!(cfg("").validate(false).is_ok());
        assert!(cfg("name = \"c\"\nlisten = \"127.0.0.1:0\"")
            .validate(false)
            .is_ok());
        let e = cfg("name = \"c\"\nlisten = \"0.0.0.0:6222\"")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.0, "cluster.listen");
        let e = cfg("name = \"c\"\nlisten = \"0.0.0.0:6222\"\nsecret = \"a-long-cluster-secret\"")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.0, "cluster.listen");
        assert!(cfg("name = \"c\"\nlisten = \"0.0.0.0:6222\"\nsecret = \"a-long-cluster-secret\"\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"ca\"")
            .validate(false)
            .is_ok());
        let e = cfg("name = \"c\"\nlisten = \"127.0.0.1:0\"\ncert_file = \"c\"\nkey_file = \"k\"")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.0, "cluster.ca_file");
        let e = cfg("name = \"c\"\nlisten = \"127.0.0.1:0\"\nsecret = \"short\"")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.0, "cluster.secret");
        let e = cfg("listen = \"127.0.0.1:0\"").validate(false).unwrap_err();
        assert_eq!(e.0, "cluster.name");
        let e = cfg("routes = [\"127.0.0.1:1\"]")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.0, "cluster.listen");
        let e = cfg("name = \"c\"\nlisten = \"127.0.0.1:0\"\nroutes = [\"x\"]")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.0, "cluster.routes");
    }

    #[test]
    fn secrets_never_print() {
        let mut n = node("A", Some("a-long-cluster-secret"));
        assert!(!format!("{n:?}").contains("a-long"));
        n.secret = None;
        let c = cfg("secret = \"a-long-cluster-secret\"");
        assert!(!format!("{c:?}").contains("a-long"));
    }
}
