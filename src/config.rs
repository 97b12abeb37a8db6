//! The node's configuration: the TOML file, its defaults and its validation.
//!
//! Everything a user can write in `node.toml` is declared here, with the reference's
//! defaults. Sizes are written the human way (`"1MiB"`, `"64MB"`, or a plain integer
//! of bytes) and durations too (`"2m"`, `"500ms"`, or a plain integer of seconds).
//! Unknown keys and bad values are errors that name the file, the key and the problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

// Where each section's types live; named here too, as the config's parts.
pub use crate::auth::config::{
    AllowResponsesConfig, AuthorizationConfig, PermissionsConfig, SubjectPermissionConfig,
    UserConfig, DEFAULT_AUTH_TIMEOUT,
};
pub use crate::tls::{TlsConfig, DEFAULT_TLS_TIMEOUT};
pub use crate::values::{Dur, Secret, Size};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Log verbosity; `RUST_LOG` overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `[jetstream]`: reserved here, served by the JetStream layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    pub enabled: bool,
    /// Where the redb store lives; relative paths are taken from the working directory.
    pub store_dir: PathBuf,
    /// Most bytes all memory streams may hold together (0: no limit).
    pub max_memory: Size,
    /// Most bytes all file streams may hold together (0: no limit).
    pub max_file: Size,
    /// When a write (a publish, a consumer ack, a stream change) is acknowledged.
    pub ack: AckAfter,
    /// The server names of the nodes that form one JetStream across the cluster (this
    /// node's among them). Empty: JetStream is this node's own.
    pub peers: Vec<String>,
}

/// `jetstream.ack`: what an acknowledgement promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckAfter {
    /// Once the write is in a redb commit that was fsynced: it survives `kill -9`,
    /// an OS crash and a power loss.
    #[default]
    Fsync,
    /// Once the write is in the store's journal file (`write()` returned: the OS has
    /// it). It survives `kill -9`, not an OS crash until the redb commit right behind
    /// it, like nats-server's default (which fsyncs every two minutes).
    Write,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            enabled: true,
            store_dir: PathBuf::from("./data/jetstream"),
            max_memory: Size(0),
            max_file: Size(0),
            ack: AckAfter::Fsync,
            peers: Vec::new(),
        }
    }
}

/// `[monitor]`: the HTTP monitoring endpoint. Off unless configured; on loopback
/// unless an address is given.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Serve the endpoint on the default address (`127.0.0.1:8222`).
    pub enabled: bool,
    /// Serve it on this address (implies `enabled`); port 0 picks a free port.
    pub listen: Option<String>,
    /// Serve HTTPS with this certificate chain and key (PEM) instead of HTTP.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Where a listener listens: an address, or the mesh (`mesh:PORT`: this node's mesh
/// address, taking only what arrives over its WireGuard interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenOn {
    Addr(SocketAddr),
    Mesh(u16),
}

impl ListenOn {
    /// `host:port` or `mesh:port`; `example` shows the form in the error.
    pub fn parse(text: &str, example: &str) -> Result<ListenOn, String> {
        if let Some(port) = text.strip_prefix("mesh:") {
            return port.parse::<u16>().map(ListenOn::Mesh).map_err(|_| {
                format!("{text:?}: the port after \"mesh:\" is a number, like \"mesh:4222\"")
            });
        }
        text.parse::<SocketAddr>().map(ListenOn::Addr).map_err(|_| {
            format!("{text:?} is not an address with a port, like \"{example}\", or \"mesh:PORT\" for the mesh address")
        })
    }

    /// The address to bind, given the node's mesh address.
    pub fn resolve(self, mesh: Option<std::net::IpAddr>) -> Option<SocketAddr> {
        match self {
            ListenOn::Addr(addr) => Some(addr),
            ListenOn::Mesh(port) => mesh.map(|ip| SocketAddr::new(ip, port)),
        }
    }

    pub fn on_mesh(self) -> bool {
        matches!(self, ListenOn::Mesh(_))
    }

    /// Reachable only from this host.
    pub fn is_loopback(self) -> bool {
        matches!(self, ListenOn::Addr(a) if a.ip().is_loopback())
    }
}

impl std::fmt::Display for ListenOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenOn::Addr(addr) => write!(f, "{addr}"),
            ListenOn::Mesh(port) => write!(f, "mesh:{port}"),
        }
    }
}

/// Where the monitoring endpoint listens when enabled without an address.
pub const DEFAULT_MONITOR_LISTEN: &str = "127.0.0.1:8222";

impl MonitorConfig {
    /// The address to serve on, or `None` when monitoring is off.
    pub fn addr(&self) -> Result<Option<ListenOn>, String> {
        let text = match (&self.listen, self.enabled) {
            (Some(listen), _) => listen.as_str(),
            (None, true) => DEFAULT_MONITOR_LISTEN,
            (None, false) => return Ok(None),
        };
        ListenOn::parse(text, "127.0.0.1:8222").map(Some)
    }
}

/// `[websocket]`: a listener for browser clients (NATS over WebSocket). Off unless
/// `listen` is set; wss:// with `cert_file` and `key_file`, ws:// only with `no_tls`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub listen: Option<String>,
    /// Serve wss:// with this certificate chain and key (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Serve ws:// without TLS: allowed on loopback, elsewhere only with
    /// `behind_tls_proxy` (a proxy in front terminates TLS).
    pub no_tls: bool,
    pub behind_tls_proxy: bool,
    /// Origins (`scheme://host[:port]`) whose pages may connect. Empty: only pages
    /// from the listener's own origin (same-origin), never any origin.
    pub allowed_origins: Vec<String>,
    /// Time a connection has to complete the TLS and WebSocket handshakes (default 2 s).
    pub handshake_timeout: Option<Dur>,
}

impl WebSocketConfig {
    pub fn addr(&self) -> Result<Option<ListenOn>, String> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        ListenOn::parse(text, "127.0.0.1:8080").map(Some)
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout.map_or(DEFAULT_TLS_TIMEOUT, |d| d.0)
    }

    pub fn tls(&self) -> bool {
        self.cert_file.is_some()
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let addr = self.addr().map_err(|e| ("websocket.listen", e))?;
        let tls = cert_and_key(
            &self.cert_file,
            &self.key_file,
            ("websocket.cert_file", "websocket.key_file"),
        )?;
        let Some(addr) = addr else {
            return Ok(());
        };
        if tls && self.no_tls {
            return Err((
                "websocket.no_tls",
                "set either no_tls or a certificate, not both".into(),
            ));
        }
        if !tls && !self.no_tls {
            return Err((
                "websocket.cert_file",
                "wss:// needs cert_file and key_file; for ws:// without TLS set no_tls = true"
                    .into(),
            ));
        }
        // On the mesh, WireGuard encrypts every byte between the hosts.
        if self.no_tls && !addr.is_loopback() && !addr.on_mesh() && !self.behind_tls_proxy {
            return Err((
                "websocket.no_tls",
                format!("ws:// without TLS on {addr}, which is not loopback: browsers' credentials would cross the network in clear; serve wss://, or set behind_tls_proxy = true if a proxy terminates TLS"),
            ));
        }
        for origin in &self.allowed_origins {
            crate::websocket::Origin::parse(origin)
                .map_err(|e| ("websocket.allowed_origins", e))?;
        }
        if self.handshake_timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(("websocket.handshake_timeout", "must be more than 0".into()));
        }
        Ok(())
    }
}

/// A listener's certificate and key come together: `Ok(true)` with both, `Ok(false)`
/// with neither, the missing one's key otherwise.
fn cert_and_key(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    (cert_key, key_key): (&'static str, &'static str),
) -> Result<bool, (&'static str, String)> {
    match (cert, key) {
        (Some(_), Some(_)) => Ok(true),
        (None, None) => Ok(false),
        (Some(_), None) => Err((key_key, "a certificate needs its key".into())),
        (None, Some(_)) => Err((cert_key, "a key needs its certificate".into())),
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Shown to clients in INFO; a random id when absent.
    pub server_name: Option<String>,
    /// Client listener, `host:port` (port 0 picks a free port).
    pub listen: String,
    pub max_payload: Size,
    pub max_control_line: Size,
    pub max_connections: usize,
    /// Per-connection subscription limit; 0 is unlimited.
    pub max_subscriptions: usize,
    /// Outbound bytes queued for one client before it is a slow consumer.
    pub max_pending: Size,
    pub ping_interval: Dur,
    pub max_pings_out: u32,
    /// A write to a client that takes longer than this makes it a slow consumer.
    pub write_deadline: Dur,
    /// Lame duck: time over which connections are closed after the grace period.
    pub lame_duck_duration: Dur,
    /// Lame duck: time clients get to leave on their own before being closed.
    pub lame_duck_grace_period: Dur,
    pub log_level: LogLevel,
    /// Executor threads; 0 picks one per core less one (at least one).
    pub threads: usize,
    pub jetstream: JetStreamConfig,
    pub monitor: MonitorConfig,
    pub authorization: AuthorizationConfig,
    /// Accounts of their own, by name (`[accounts.NAME]`); without any, every
    /// connection is in the global account `$G`.
    pub accounts: std::collections::BTreeMap<String, crate::auth::config::AccountConfig>,
    /// The system account (`$SYS` when not named; in operator mode a public key, or
    /// the operator JWT's).
    pub system_account: Option<String>,
    /// Operator mode: the trusted operator JWTs (paths, relative to this file's
    /// directory, or the JWTs themselves).
    pub operator: crate::auth::operator::OperatorList,
    /// Operator mode: where account JWTs come from (`"MEMORY"`: `resolver_preload`).
    pub resolver: Option<crate::auth::operator::ResolverConfig>,
    /// Operator mode: account JWTs by public key.
    pub resolver_preload: std::collections::BTreeMap<String, String>,
    pub tls: TlsConfig,
    pub websocket: WebSocketConfig,
    pub cluster: crate::cluster::ClusterConfig,
    pub mesh: crate::mesh::MeshConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: None,
            listen: "127.0.0.1:4222".into(),
            max_payload: Size::mib(1),
            max_control_line: Size::kib(4),
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_pending: Size::mib(64),
            ping_interval: Dur(Duration::from_secs(120)),
            max_pings_out: 2,
            write_deadline: Dur(Duration::from_secs(10)),
            lame_duck_duration: Dur(Duration::from_secs(120)),
            lame_duck_grace_period: Dur(Duration::from_secs(10)),
            log_level: LogLevel::Info,
            threads: 0,
            jetstream: JetStreamConfig::default(),
            monitor: MonitorConfig::default(),
            authorization: AuthorizationConfig::default(),
            accounts: Default::default(),
            system_account: None,
            operator: Default::default(),
            resolver: None,
            resolver_preload: Default::default(),
            tls: TlsConfig::default(),
            websocket: WebSocketConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            mesh: crate::mesh::MeshConfig::default(),
        }
    }
}

/// The largest payload the reference allows to be configured.
pub const MAX_PAYLOAD_LIMIT: Size = Size::mib(64);

impl Config {
    /// Reads (with `files`: `src/` opens no file itself) and validates a config file.
    pub fn load(path: &Path, files: crate::tls::ReadFile<'_>) -> Result<Config, ConfigError> {
        let bytes = files(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "the file is not UTF-8 text".into(),
        })?;
        let mut config = Config::parse(&text, path)?;
        // Operator JWTs named by path are read now (relative to the config's directory).
        let dir = path.parent().unwrap_or(Path::new("."));
        for entry in config.operator.entries_mut() {
            if crate::auth::operator::is_inline_jwt(entry) {
                continue;
            }
            let file = dir.join(&*entry);
            let bytes = files(&file).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                key: "operator".into(),
                reason: format!("cannot read {}: {e}", file.display()),
            })?;
            *entry = String::from_utf8_lossy(&bytes).trim().to_string();
        }
        config.validate(path)?;
        config.check_files(path, files)?;
        Ok(config)
    }

    /// Reads every other file the node reads at start (certificates and keys, the
    /// cluster secret, the mesh key) and checks it as the start would, so `--check`
    /// and a reload catch what would fail there — and a start fails before it has
    /// bound a port or made an interface.
    pub fn check_files(
        &self,
        path: &Path,
        files: crate::tls::ReadFile<'_>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        let tls_err =
            |e: crate::tls::TlsError| invalid(e.key, format!("{}: {}", e.path.display(), e.reason));
        if self.tls.enabled() {
            crate::tls::server_config(&self.tls, "tls", files).map_err(tls_err)?;
        }
        let listeners = [
            (
                "websocket",
                &self.websocket.cert_file,
                &self.websocket.key_file,
            ),
            ("monitor", &self.monitor.cert_file, &self.monitor.key_file),
        ];
        for (section, cert, key) in listeners {
            crate::tls::listener_config(cert, key, section, files).map_err(tls_err)?;
        }
        let cluster = &self.cluster;
        if let (Some(cert), Some(key), Some(ca)) =
            (&cluster.cert_file, &cluster.key_file, &cluster.ca_file)
        {
            crate::tls::route_configs(cert, key, ca, files).map_err(tls_err)?;
        }
        cluster
            .load_secret(files)
            .map_err(|(key, reason)| invalid(key.into(), reason))?;
        self.mesh
            .check_key(files)
            .map_err(|(key, reason)| invalid(key.into(), reason))?;
        self.mesh
            .load_client_secret(files)
            .map_err(|(key, reason)| invalid(key.into(), reason))?;
        Ok(())
    }

    /// Parses and validates config text; `path` is only used in error messages.
    /// Operator JWTs must be given inline here (only [`Config::load`] reads files).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_err(e.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim_end();
            if key == "." || key.is_empty() {
                parse_err(inner.to_string())
            } else {
                parse_err(format!("key `{key}`: {inner}"))
            }
        })?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_string(),
            reason,
        };
        self.listen_addr()
            .map_err(|reason| invalid("listen", reason))?;
        if self.max_payload.0 == 0 {
            return Err(invalid("max_payload", "must be more than 0".into()));
        }
        if self.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(invalid(
                "max_payload",
                format!(
                    "{} is over the limit of {MAX_PAYLOAD_LIMIT}",
                    self.max_payload
                ),
            ));
        }
        if self.max_payload > self.max_pending {
            return Err(invalid(
                "max_payload",
                format!(
                    "{} is larger than max_pending ({}); a client could never receive such a message",
                    self.max_payload, self.max_pending
                ),
            ));
        }
        if self.max_control_line.0 < 32 {
            return Err(invalid(
                "max_control_line",
                format!("{} is too small (at least 32 bytes)", self.max_control_line),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be more than 0".into()));
        }
        if self.ping_interval.0.is_zero() {
            return Err(invalid("ping_interval", "must be more than 0".into()));
        }
        if self.write_deadline.0.is_zero() {
            return Err(invalid("write_deadline", "must be more than 0".into()));
        }
        if let Some(name) = &self.server_name {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "server_name",
                    format!("{name:?} must be non-empty and without spaces"),
                ));
            }
        }
        self.monitor
            .addr()
            .map_err(|reason| invalid("monitor.listen", reason))?;
        cert_and_key(
            &self.monitor.cert_file,
            &self.monitor.key_file,
            ("monitor.cert_file", "monitor.key_file"),
        )
        .map_err(|(key, reason)| invalid(key, reason))?;
        if self.jetstream.enabled && self.jetstream.store_dir.as_os_str().is_empty() {
            return Err(invalid("jetstream.store_dir", "must not be empty".into()));
        }
        self.validate_jetstream_peers()
            .map_err(|reason| invalid("jetstream.peers", reason))?;
        self.authenticator()
            .map_err(|e| invalid(&e.key, e.reason))?;
        let plan = self.account_plan().map_err(|e| invalid(&e.key, e.reason))?;
        if let Some(account) = plan.accounts.iter().find(|a| a.jetstream) {
            if !self.jetstream.enabled {
                return Err(invalid(
                    &format!("accounts.{}.jetstream", account.name),
                    "the node's [jetstream] is not enabled".into(),
                ));
            }
        }
        self.validate_tls()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.websocket
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        let cluster_name = self.cluster.name.as_deref().unwrap_or_default();
        self.mesh
            .validate(cluster_name)
            .map_err(|(key, reason)| invalid(key, reason))?;
        if self.is_mesh_member() {
            return self
                .validate_mesh_member()
                .map_err(|(key, reason)| invalid(key, reason));
        }
        self.cluster
            .validate(self.mesh.enabled())
            .map_err(|(key, reason)| invalid(key, reason))?;
        let listeners = [
            ("listen", Some(self.listen_addr())),
            ("websocket.listen", self.websocket.addr().transpose()),
            ("monitor.listen", self.monitor.addr().transpose()),
        ];
        for (key, on) in listeners {
            if let (Some(Ok(on)), false) = (on, self.mesh.enabled()) {
                if on.on_mesh() {
                    return Err(invalid(
                        key,
                        format!("\"{on}\" listens on the mesh address, and there is no [mesh]: set up [mesh], or give an address"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The client authentication this config describes.
    pub fn authenticator(
        &self,
    ) -> Result<crate::auth::Authenticator, crate::auth::AuthConfigError> {
        if let Some(trust) = self.trust()? {
            return crate::auth::Authenticator::operator(trust, self.auth_timeout());
        }
        crate::auth::Authenticator::with_accounts(
            &self.authorization,
            &self.accounts,
            self.auth_timeout(),
        )
    }

    /// Operator mode's trust (`None` without `operator`).
    pub fn trust(
        &self,
    ) -> Result<Option<crate::auth::operator::Trust>, crate::auth::AuthConfigError> {
        let err = |key: &str, reason: &str| crate::auth::AuthConfigError {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if self.operator.is_empty() {
            if self.resolver.is_some() || !self.resolver_preload.is_empty() {
                return Err(err(
                    "resolver",
                    "a resolver is for operator mode: set `operator`",
                ));
            }
            return Ok(None);
        }
        if let Some(entry) = self
            .operator
            .entries()
            .iter()
            .find(|e| !crate::auth::operator::is_inline_jwt(e))
        {
            return Err(err(
                "operator",
                &format!("{entry:?} was not read (give the JWT itself, or load the config from its file)"),
            ));
        }
        if !self.accounts.is_empty() {
            return Err(err(
                "accounts",
                "operator mode takes its accounts from JWTs, not [accounts]",
            ));
        }
        let a = &self.authorization;
        if a.user.is_some() || a.token.is_some() || !a.users.is_empty() {
            return Err(err(
                "authorization",
                "operator mode takes its users from JWTs, not [authorization]",
            ));
        }
        crate::auth::operator::Trust::new(
            self.operator.entries(),
            self.resolver.as_ref(),
            &self.resolver_preload,
            self.system_account.as_deref(),
        )
        .map(Some)
    }

    /// The accounts without their users: what a reload may not change.
    pub fn account_shape(
        &self,
    ) -> Vec<(
        &str,
        bool,
        &[crate::auth::config::ExportConfig],
        &[crate::auth::config::ImportConfig],
    )> {
        self.accounts
            .iter()
            .map(|(name, a)| (name.as_str(), a.jetstream, &a.exports[..], &a.imports[..]))
            .collect()
    }

    /// The accounts this config describes, their imports checked.
    pub fn account_plan(
        &self,
    ) -> Result<crate::auth::accounts::AccountPlan, crate::auth::AuthConfigError> {
        match self.trust()? {
            Some(trust) => crate::auth::accounts::AccountPlan::new(
                &trust.account_configs(),
                trust.system_account(),
            ),
            None => crate::auth::accounts::AccountPlan::new(
                &self.accounts,
                self.system_account.as_deref(),
            ),
        }
    }

    /// A clustered JetStream needs routes, a name for this node among the peers, and
    /// peers that are told apart.
    /// A client member's config: the mesh, the cluster's name, and never its secret.
    fn validate_mesh_member(&self) -> Result<(), (&'static str, String)> {
        if self.cluster.secret.is_some() || self.cluster.secret_file.is_some() {
            return Err((
                if self.cluster.secret.is_some() { "cluster.secret" } else { "cluster.secret_file" },
                "a client member must not hold the cluster secret (the key to the cluster plane): it announces itself with mesh.client_secret_file only".into(),
            ));
        }
        if self.cluster.name.is_none() {
            return Err((
                "cluster.name",
                "a client member joins the mesh of one cluster: set the brokers' cluster.name"
                    .into(),
            ));
        }
        Ok(())
    }

    fn validate_jetstream_peers(&self) -> Result<(), String> {
        let peers = &self.jetstream.peers;
        if peers.is_empty() || !self.jetstream.enabled {
            return Ok(());
        }
        // The mesh makes the routes itself (the cluster listens on its interface).
        if !self.cluster.enabled() && !self.mesh.enabled() {
            return Err(
                "a clustered JetStream needs [cluster] or [mesh] (its peers talk over routes)"
                    .into(),
            );
        }
        let Some(name) = &self.server_name else {
            return Err("a clustered JetStream needs server_name (one of the peers)".into());
        };
        if !peers.contains(name) {
            return Err(format!(
                "this node's server_name {name:?} is not among them"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for p in peers {
            if p.is_empty() || p.chars().any(char::is_whitespace) {
                return Err(format!("{p:?} is not a server name"));
            }
            if !seen.insert(p) {
                return Err(format!("{p:?} is named twice"));
            }
            if !ids.insert(crate::raft::node_id(p)) {
                return Err(format!("{p:?} has the Raft id of another peer; rename one"));
            }
        }
        Ok(())
    }

    /// Half a TLS setup is refused rather than guessed at.
    fn validate_tls(&self) -> Result<(), (&'static str, String)> {
        let tls = &self.tls;
        cert_and_key(
            &tls.cert_file,
            &tls.key_file,
            ("tls.cert_file", "tls.key_file"),
        )?;
        let rest_without_cert =
            tls.ca_file.is_some() || tls.verify || tls.handshake_first || tls.timeout.is_some();
        if !tls.enabled() && rest_without_cert {
            return Err((
                "tls.cert_file",
                "TLS settings without a certificate and key".into(),
            ));
        }
        if tls.verify && tls.ca_file.is_none() {
            return Err((
                "tls.ca_file",
                "verify = true needs the CA that signs client certificates".into(),
            ));
        }
        if tls.timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(("tls.timeout", "must be more than 0".into()));
        }
        Ok(())
    }

    /// How long a new connection has to authenticate: as configured, or the
    /// reference's default (2 s, or the TLS handshake timeout plus 1 s with TLS).
    pub fn auth_timeout(&self) -> Duration {
        match (self.authorization.timeout, self.tls.enabled()) {
            (Some(t), _) => t.0,
            (None, true) => self.tls.timeout() + Duration::from_secs(1),
            (None, false) => DEFAULT_AUTH_TIMEOUT,
        }
    }

    /// Where the client listener listens.
    pub fn listen_addr(&self) -> Result<ListenOn, String> {
        ListenOn::parse(&self.listen, "127.0.0.1:4222")
    }

    /// Whether this config is a client member of a mesh (`meshbroker mesh member`):
    /// it runs the mesh only.
    pub fn is_mesh_member(&self) -> bool {
        self.mesh.enabled() && self.mesh.role == crate::mesh::Role::Client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("node.toml"))
    }

    #[test]
    fn listeners_on_the_mesh_need_one_and_client_members_never_hold_the_cluster_secret() {
        const MESH: &str =
            "[mesh]\ninterface = \"mb0\"\nprivate_key_file = \"k\"\nendpoint = \"192.0.2.1:51820\"";
        const CLUSTER: &str = "[cluster]\nname = \"c1\"\nsecret = \"a-long-enough-cluster-secret\"";
        let on = parse(&format!("listen = \"mesh:4222\"\n[websocket]\nlisten = \"mesh:8080\"\nno_tls = true\n{CLUSTER}\n{MESH}")).unwrap();
        assert_eq!(on.listen_addr(), Ok(ListenOn::Mesh(4222)));
        assert_eq!(
            on.websocket.addr(),
            Ok(Some(ListenOn::Mesh(8080))),
            "ws:// over WireGuard"
        );
        for (text, key) in [
            ("listen = \"mesh:4222\"", "`listen`"),
            ("[monitor]\nlisten = \"mesh:8222\"", "monitor.listen"),
            ("listen = \"mesh:port\"", "`listen`"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let member = format!(
            "[cluster]\nname = \"c1\"\n{MESH}\nrole = \"client\"\nclient_secret_file = \"s\""
        );
        assert!(parse(&member).unwrap().is_mesh_member());
        let e = parse(&format!(
            "{CLUSTER}\n{MESH}\nrole = \"client\"\nclient_secret_file = \"s\""
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cluster.secret") && e.contains("must not hold"),
            "{e}"
        );
        let e = parse(&format!(
            "{MESH}\nrole = \"client\"\nclient_secret_file = \"s\""
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("cluster.name"), "{e}");
    }

    #[test]
    fn monitoring_is_off_by_default_and_on_loopback_unless_given() {
        assert_eq!(parse("").unwrap().monitor.addr(), Ok(None));
        let on = parse("[monitor]\nenabled = true").unwrap();
        assert_eq!(
            on.monitor.addr(),
            Ok(Some(ListenOn::Addr("127.0.0.1:8222".parse().unwrap())))
        );
        let given = parse("[monitor]\nlisten = \"0.0.0.0:9000\"").unwrap();
        assert_eq!(
            given.monitor.addr(),
            Ok(Some(ListenOn::Addr("0.0.0.0:9000".parse().unwrap())))
        );
        let bad = parse("[monitor]\nlisten = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("monitor.listen") && bad.contains("node.toml"),
            "{bad}"
        );
    }

    #[test]
    fn defaults_are_the_reference_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.max_payload, Size(1024 * 1024));
        assert_eq!(c.max_control_line, Size(4096));
        assert_eq!(c.max_pending, Size(64 * 1024 * 1024));
        assert_eq!(c.ping_interval.0, Duration::from_secs(120));
        assert_eq!(c.max_pings_out, 2);
    }

    #[test]
    fn human_sizes_and_durations() {
        let c = parse(
            "max_payload = \"2MiB\"\nmax_control_line = 8192\nping_interval = \"1m30s\"\nwrite_deadline = 5\n",
        )
        .unwrap();
        assert_eq!(c.max_payload, Size(2 * 1024 * 1024));
        assert_eq!(c.max_control_line, Size(8192));
        assert_eq!(c.ping_interval.0, Duration::from_secs(90));
        assert_eq!(c.write_deadline.0, Duration::from_secs(5));
        assert_eq!(
            parse("max_payload = \"1MB\"").unwrap().max_payload,
            Size(1_000_000)
        );
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = parse("max_payload = \"1XB\"").unwrap_err().to_string();
        assert!(e.starts_with("node.toml: key `max_payload`"), "{e}");
        assert!(e.contains("1XB"), "{e}");
        let e = parse("max_paylod = 5").unwrap_err().to_string();
        assert!(e.contains("node.toml") && e.contains("max_paylod"), "{e}");
        let e = parse("[jetstream]\nstore = \"x\"").unwrap_err().to_string();
        assert!(e.contains("store"), "{e}");
        let e = parse("[jetstream]\nack = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `jetstream.ack`") && e.contains("sometimes") && e.contains("write"),
            "{e}"
        );
        assert_eq!(
            parse("[jetstream]\nack = \"write\"")
                .ok()
                .map(|c| c.jetstream.ack),
            Some(AckAfter::Write)
        );
        let e = parse("listen = \"localhost\"").unwrap_err().to_string();
        assert!(e.contains("key `listen`"), "{e}");
        let e = parse("max_payload = \"100MiB\"").unwrap_err().to_string();
        assert!(e.contains("over the limit"), "{e}");
        let e = parse("ping_interval = \"soon\"").unwrap_err().to_string();
        assert!(
            e.contains("key `ping_interval`") && e.contains("soon"),
            "{e}"
        );
        let e = parse("log_level = \"loud\"").unwrap_err().to_string();
        assert!(e.contains("key `log_level`"), "{e}");
        let e = parse("max_connections = -1").unwrap_err().to_string();
        assert!(e.contains("max_connections"), "{e}");
    }
}
