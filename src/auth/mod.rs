//! Client authentication: who a CONNECT says it is, checked against `[authorization]`.
//!
//! [`Authenticator`] is built once per configuration (a reload builds a new one) and
//! answers one question: given the CONNECT options and the nonce the server sent in
//! INFO, which user is this and what may it do ([`Grant`])? It holds secrets, so
//! neither it nor its errors ever print a password, token or signature.

pub mod accounts;
pub mod claims;
pub mod config;
pub mod jwt;
pub mod mint;
pub mod operator;
pub mod permissions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::proto::info::ConnectOptions;
use crate::values::Secret;
use config::{AccountConfig, AuthorizationConfig, PermissionsConfig, UserConfig};
pub use permissions::Permissions;

/// A configuration mistake, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfigError {
    pub key: String,
    pub reason: String,
}

/// Why a client was refused. The text names the user or nkey, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    NoCredentials,
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("wrong password for user {0:?}")]
    WrongPassword(String),
    #[error("wrong token")]
    WrongToken,
    #[error("unknown nkey {0}")]
    UnknownNkey(String),
    #[error("nkey {0}: signature missing or not valid for the nonce")]
    BadSignature(String),
    #[error("user JWT: {0}")]
    UserJwt(String),
    /// The user's account revoked it (a connected user is closed with `User
    /// Authentication Revoked`).
    #[error("user {0} is revoked")]
    Revoked(String),
}

/// A stored password or token: plain text (compared in constant time) or a bcrypt
/// hash.
#[derive(Clone)]
enum Password {
    Plain(Secret),
    Bcrypt(Secret),
}

impl Password {
    fn new(secret: &Secret) -> Password {
        if is_bcrypt(&secret.0) {
            Password::Bcrypt(secret.clone())
        } else {
            Password::Plain(secret.clone())
        }
    }

    fn check(&self, given: Option<&str>) -> bool {
        let given = given.unwrap_or_default();
        match self {
            Password::Plain(p) => bool::from(p.0.as_bytes().ct_eq(given.as_bytes())),
            Password::Bcrypt(hash) => bcrypt::verify(given, &hash.0).unwrap_or(false),
        }
    }

    /// bcrypt is slow on purpose: callers run it off the executor threads.
    fn is_slow(&self) -> bool {
        matches!(self, Password::Bcrypt(_))
    }
}

/// `$2a$10$…` and its siblings (`$2b$`, `$2x$`, `$2y$`), as the reference detects them.
fn is_bcrypt(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 7
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}

/// A user who may connect, with what it may do and in which account.
#[derive(Clone)]
struct User {
    name: String,
    password: Option<Password>,
    permissions: Arc<Permissions>,
    account: Arc<str>,
}

impl User {
    fn grant(&self) -> Grant {
        Grant {
            user: Some(self.name.clone()),
            permissions: self.permissions.clone(),
            account: self.account.clone(),
            expires: None,
            connection_types: Vec::new(),
            limits: LoginLimits::default(),
            jwt: None,
        }
    }
}

/// The global account's name, shared.
pub fn global_account() -> Arc<str> {
    static G: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    G.get_or_init(|| Arc::from(accounts::GLOBAL_ACCOUNT))
        .clone()
}

/// Who a connection is, once accepted.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user name or nkey (for logs and monitoring); `None` on an open node.
    pub user: Option<String>,
    pub permissions: Arc<Permissions>,
    /// The account the connection belongs to (`$G` unless its user is in one).
    pub account: Arc<str>,
    /// When the credentials expire (a user JWT's `exp`, Unix seconds).
    pub expires: Option<i64>,
    /// The kinds of connection the user may make (`STANDARD`, `WEBSOCKET`, …; any
    /// when empty).
    pub connection_types: Vec<String>,
    /// Limits of the login's own (a user JWT's and its account's claims).
    pub limits: LoginLimits,
    /// The user JWT's identity, in operator mode.
    pub jwt: Option<Arc<JwtIdentity>>,
}

/// Who a JWT login is, as `$SYS` events and `$SYS.REQ.USER.INFO` name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtIdentity {
    pub jwt: String,
    /// The key that signed the user JWT (the account's or one of its signing keys).
    pub issuer_key: String,
    pub account_name: String,
    pub user_name: String,
}

/// Limits a login brings with it, on top of the node's config; `None`: no limit of
/// its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginLimits {
    /// Subscriptions the connection may hold (0: none).
    pub max_subscriptions: Option<usize>,
    /// The largest message (headers and payload) it may publish.
    pub max_payload: Option<usize>,
    /// Connections its account may have open on this node, this one included.
    pub account_connections: Option<usize>,
}

impl Grant {
    /// May this user connect over `transport` (`"nats"` or `"websocket"`)?
    pub fn allows_transport(&self, transport: &str) -> bool {
        let kind = if transport == "websocket" {
            "WEBSOCKET"
        } else {
            "STANDARD"
        };
        self.connection_types.is_empty()
            || self
                .connection_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(kind))
    }
}

/// Permissions that allow everything, shared (one per node would do; one per process
/// costs nothing): every connection of an open node holds them.
pub fn unrestricted() -> Arc<Permissions> {
    static ALL: std::sync::OnceLock<Arc<Permissions>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| Arc::new(Permissions::all())).clone()
}

/// The authentication configuration, compiled.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// No authentication configured: every client is accepted with all permissions.
    open: bool,
    users: HashMap<String, User>,
    nkeys: HashMap<String, User>,
    token: Option<(Password, Arc<Permissions>)>,
    /// Operator mode: users log in with JWTs this trusts.
    operator: Option<Arc<operator::Trust>>,
    no_auth_user: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("open", &self.open)
            .field("users", &self.users.len())
            .field("nkeys", &self.nkeys.len())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Compiles and checks `[authorization]`; `timeout` is how long a connection has
    /// to authenticate (see `Config::auth_timeout`).
    pub fn new(
        config: &AuthorizationConfig,
        timeout: Duration,
    ) -> Result<Authenticator, AuthConfigError> {
        Authenticator::with_accounts(config, &BTreeMap::new(), timeout)
    }

    /// Operator mode: every user logs in with a JWT `trust` accepts.
    pub fn operator(
        trust: operator::Trust,
        timeout: Duration,
    ) -> Result<Authenticator, AuthConfigError> {
        if timeout.is_zero() {
            return Err(AuthConfigError {
                key: "authorization.timeout".into(),
                reason: "must be more than 0".into(),
            });
        }
        Ok(Authenticator {
            open: false,
            timeout,
            operator: Some(Arc::new(trust)),
            ..Authenticator::default()
        })
    }

    /// Operator mode's trust, when the node runs in it.
    pub fn trust(&self) -> Option<&Arc<operator::Trust>> {
        self.operator.as_ref()
    }

    /// The same authenticator trusting `trust` (an account JWT was pushed).
    pub fn with_trust(&self, trust: operator::Trust) -> Authenticator {
        Authenticator {
            operator: Some(Arc::new(trust)),
            ..self.clone()
        }
    }

    /// Compiles `[authorization]` (its users are in `$G`) and the users of each of
    /// `accounts` (in theirs).
    pub fn with_accounts(
        config: &AuthorizationConfig,
        accounts: &BTreeMap<String, AccountConfig>,
        timeout: Duration,
    ) -> Result<Authenticator, AuthConfigError> {
        let err = |key: &str, reason: String| AuthConfigError {
            key: key.to_string(),
            reason,
        };
        let defaults = compile_permissions(
            "authorization.default_permissions",
            config.default_permissions.as_ref(),
        )?;
        let mut auth = Authenticator {
            open: true,
            timeout,
            ..Authenticator::default()
        };
        if auth.timeout.is_zero() {
            return Err(err("authorization.timeout", "must be more than 0".into()));
        }
        match (&config.user, &config.password) {
            (Some(user), Some(password)) => {
                if !config.users.is_empty() {
                    return Err(err(
                        "authorization.user",
                        "a single user and a users list cannot be combined; add the user to the list".into(),
                    ));
                }
                auth.users.insert(
                    user.clone(),
                    User {
                        name: user.clone(),
                        password: Some(Password::new(password)),
                        permissions: defaults.clone(),
                        account: global_account(),
                    },
                );
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(err(
                    "authorization.password",
                    "a user needs a password".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err("authorization.user", "a password needs a user".into()))
            }
        }
        if let Some(token) = &config.token {
            if config.user.is_some() || !config.users.is_empty() {
                return Err(err(
                    "authorization.token",
                    "a token cannot be combined with users".into(),
                ));
            }
            if token.0.is_empty() {
                return Err(err("authorization.token", "must not be empty".into()));
            }
            auth.token = Some((Password::new(token), defaults.clone()));
        }
        for (i, user) in config.users.iter().enumerate() {
            auth.add_user(i, user, "authorization.users", global_account(), &defaults)?;
        }
        for (name, account) in accounts {
            let key = format!("accounts.{name}.users");
            let account_name: Arc<str> = Arc::from(name.as_str());
            for (i, user) in account.users.iter().enumerate() {
                auth.add_user(i, user, &key, account_name.clone(), &defaults)?;
            }
        }
        if let Some(name) = &config.no_auth_user {
            let listed = auth.users.contains_key(name) || auth.nkeys.contains_key(name);
            if !listed || config.user.is_some() {
                return Err(err(
                    "authorization.no_auth_user",
                    format!("{name:?} is not in authorization.users"),
                ));
            }
            auth.no_auth_user = Some(name.clone());
        }
        auth.open = auth.users.is_empty() && auth.nkeys.is_empty() && auth.token.is_none();
        Ok(auth)
    }

    /// Adds entry `i` of the users list at `key` (in `account`).
    fn add_user(
        &mut self,
        i: usize,
        user: &UserConfig,
        key: &str,
        account: Arc<str>,
        defaults: &Arc<Permissions>,
    ) -> Result<(), AuthConfigError> {
        let err = |field: &str, reason: String| AuthConfigError {
            key: format!("{key}{field}"),
            reason,
        };
        let permissions = match &user.permissions {
            Some(p) => compile_permissions(&format!("{key}.permissions"), Some(p))?,
            None => defaults.clone(),
        };
        match (&user.user, &user.nkey) {
            (Some(name), None) => {
                if name.is_empty() {
                    return Err(err(".user", format!("entry {i}: empty user name")));
                }
                let entry = User {
                    name: name.clone(),
                    password: user.password.as_ref().map(Password::new),
                    permissions,
                    account,
                };
                if self.users.insert(name.clone(), entry).is_some() {
                    return Err(err(".user", format!("user {name:?} is listed twice")));
                }
            }
            (None, Some(nkey)) => {
                if user.password.is_some() {
                    return Err(err(
                        ".password",
                        format!("entry {i}: an nkey user has no password"),
                    ));
                }
                if !(nkey.starts_with('U') && nkeys::KeyPair::from_public_key(nkey).is_ok()) {
                    return Err(err(
                        ".nkey",
                        format!("entry {i}: {nkey:?} is not a user public nkey (U…)"),
                    ));
                }
                let entry = User {
                    name: nkey.clone(),
                    password: None,
                    permissions,
                    account,
                };
                if self.nkeys.insert(nkey.clone(), entry).is_some() {
                    return Err(err(".nkey", format!("nkey {nkey} is listed twice")));
                }
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "",
                    format!("entry {i}: give either a user or an nkey, not both"),
                ))
            }
            (None, None) => return Err(err("", format!("entry {i}: needs a user or an nkey"))),
        }
        Ok(())
    }

    /// Must clients authenticate (`auth_required` in INFO)?
    pub fn required(&self) -> bool {
        !self.open
    }

    /// `auth_required` in INFO: not when clients without credentials are let in as
    /// `no_auth_user` (the reference's rule; CONNECT is still awaited).
    pub fn advertised(&self) -> bool {
        !self.open && self.no_auth_user.is_none()
    }

    /// The grant of a client that sends no credentials, if there is one.
    pub fn anonymous(&self) -> Option<Grant> {
        if self.open {
            return Some(Grant {
                user: None,
                permissions: unrestricted(),
                account: global_account(),
                expires: None,
                connection_types: Vec::new(),
                limits: LoginLimits::default(),
                jwt: None,
            });
        }
        let name = self.no_auth_user.as_ref()?;
        self.users
            .get(name)
            .or_else(|| self.nkeys.get(name))
            .map(User::grant)
    }

    /// Are some passwords or tokens stored as plain text (worth a warning)?
    pub fn has_plain_passwords(&self) -> bool {
        let plain = |p: &Password| matches!(p, Password::Plain(_));
        self.users
            .values()
            .filter_map(|a| a.password.as_ref())
            .any(plain)
            || self.token.as_ref().is_some_and(|(t, _)| plain(t))
    }

    /// Do clients need a nonce to sign (nkey users configured)?
    pub fn wants_nonce(&self) -> bool {
        !self.nkeys.is_empty() || self.operator.is_some()
    }

    /// How long a new connection has to send a valid CONNECT.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Would checking these options run bcrypt (slow: run it off the executor)?
    pub fn is_slow(&self, opts: &ConnectOptions) -> bool {
        let user_slow = opts
            .user
            .as_ref()
            .and_then(|u| self.users.get(u))
            .and_then(|a| a.password.as_ref())
            .is_some_and(Password::is_slow);
        let token_slow = self.token.as_ref().is_some_and(|(t, _)| t.is_slow());
        user_slow || token_slow
    }

    /// Who the client is, given its CONNECT options, the nonce sent in INFO and the
    /// time (Unix seconds: user JWTs have a validity period).
    pub fn authenticate(
        &self,
        opts: &ConnectOptions,
        nonce: &str,
        now_secs: i64,
    ) -> Result<Grant, AuthError> {
        if let Some(trust) = &self.operator {
            return jwt_login(trust, opts, nonce, now_secs);
        }
        if self.open {
            return self.anonymous().ok_or(AuthError::NoCredentials);
        }
        let grant = User::grant;
        if let Some(nkey) = &opts.nkey {
            let Some(account) = self.nkeys.get(nkey) else {
                return Err(AuthError::UnknownNkey(nkey.clone()));
            };
            if verify_signature(nkey, nonce, opts.sig.as_deref()) {
                return Ok(grant(account));
            }
            return Err(AuthError::BadSignature(nkey.clone()));
        }
        if let Some(name) = &opts.user {
            let Some(account) = self.users.get(name) else {
                return Err(AuthError::UnknownUser(name.clone()));
            };
            let ok = account
                .password
                .as_ref()
                .is_none_or(|p| p.check(opts.pass.as_deref()));
            return if ok {
                Ok(grant(account))
            } else {
                Err(AuthError::WrongPassword(name.clone()))
            };
        }
        if let Some(given) = &opts.auth_token {
            return match &self.token {
                Some((token, permissions)) if token.check(Some(given)) => Ok(Grant {
                    user: None,
                    permissions: permissions.clone(),
                    account: global_account(),
                    expires: None,
                    connection_types: Vec::new(),
                    limits: LoginLimits::default(),
                    jwt: None,
                }),
                _ => Err(AuthError::WrongToken),
            };
        }
        // A password without a user is not "no credentials".
        if opts.pass.is_some() {
            return Err(AuthError::NoCredentials);
        }
        self.anonymous().ok_or(AuthError::NoCredentials)
    }
}

/// A login in operator mode: the user JWT passes `trust`, and the nonce is signed by
/// the user's key (unless the JWT is a bearer token).
fn jwt_login(
    trust: &operator::Trust,
    opts: &ConnectOptions,
    nonce: &str,
    now_secs: i64,
) -> Result<Grant, AuthError> {
    let Some(token) = &opts.jwt else {
        return Err(AuthError::NoCredentials);
    };
    let user = trust.verify_user(token, now_secs).map_err(|e| match e {
        operator::UserJwtError::Revoked(user) => AuthError::Revoked(user),
        e => AuthError::UserJwt(e.to_string()),
    })?;
    if !user.bearer && !verify_signature(&user.user, nonce, opts.sig.as_deref()) {
        return Err(AuthError::BadSignature(user.user));
    }
    let permissions = Permissions::from_config(&user.permissions)
        .map_err(|e| AuthError::UserJwt(format!("user {}: permissions: {e}", user.user)))?;
    Ok(Grant {
        user: Some(user.user),
        permissions: Arc::new(permissions),
        account: Arc::from(user.account.as_str()),
        expires: user.expires,
        connection_types: user.connection_types,
        limits: user.limits,
        jwt: Some(Arc::new(JwtIdentity {
            jwt: token.clone(),
            issuer_key: user.issuer,
            account_name: user.account_name,
            user_name: user.name,
        })),
    })
}

/// A permissions block compiled (everything allowed when absent); `key` names it in
/// errors.
fn compile_permissions(
    key: &str,
    config: Option<&PermissionsConfig>,
) -> Result<Arc<Permissions>, AuthConfigError> {
    config
        .map(Permissions::from_config)
        .transpose()
        .map(|p| Arc::new(p.unwrap_or_else(Permissions::all)))
        .map_err(|reason| AuthConfigError {
            key: key.to_string(),
            reason,
        })
}

/// Is `sig` (base64, URL-safe or standard) an ed25519 signature of `nonce` by `nkey`?
fn verify_signature(nkey: &str, nonce: &str, sig: Option<&str>) -> bool {
    let Some(sig) = sig else {
        return false;
    };
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(sig));
    let Ok(sig) = decoded else {
        return false;
    };
    nkeys::KeyPair::from_public_key(nkey)
        .and_then(|key| key.verify(nonce.as_bytes(), &sig))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_text: &str) -> Result<Authenticator, AuthConfigError> {
        let config: AuthorizationConfig = toml::from_str(toml_text).expect("parses");
        Authenticator::new(&config, config::DEFAULT_AUTH_TIMEOUT)
    }

    fn connect(json: &str) -> ConnectOptions {
        ConnectOptions::parse(json.as_bytes()).expect("connect json")
    }

    #[test]
    fn open_without_configuration() {
        let a = auth("").unwrap();
        assert!(!a.required());
        let grant = a.authenticate(&connect("{}"), "", 0).unwrap();
        assert!(grant.permissions.is_unrestricted());
    }

    #[test]
    fn users_with_plain_and_bcrypt_passwords() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let a = auth(&format!(
            "[[users]]\nuser = \"alice\"\npassword = \"pw\"\n[[users]]\nuser = \"bob\"\npassword = \"{hash}\"\n"
        ))
        .unwrap();
        assert!(a.required());
        assert!(a
            .authenticate(&connect(r#"{"user":"alice","pass":"pw"}"#), "", 0)
            .is_ok());
        assert_eq!(
            a.authenticate(&connect(r#"{"user":"alice","pass":"pW"}"#), "", 0)
                .unwrap_err(),
            AuthError::WrongPassword("alice".into())
        );
        assert!(a.is_slow(&connect(r#"{"user":"bob"}"#)));
        assert!(a
            .authenticate(&connect(r#"{"user":"bob","pass":"s3cret"}"#), "", 0)
            .is_ok());
        assert!(a
            .authenticate(&connect(r#"{"user":"bob","pass":"nope"}"#), "", 0)
            .is_err());
        assert_eq!(
            a.authenticate(&connect(r#"{"user":"eve","pass":"pw"}"#), "", 0)
                .unwrap_err(),
            AuthError::UnknownUser("eve".into())
        );
        assert_eq!(
            a.authenticate(&connect("{}"), "", 0).unwrap_err(),
            AuthError::NoCredentials
        );
    }

    #[test]
    fn token_and_no_auth_user() {
        let a = auth("token = \"t0ken\"").unwrap();
        assert!(a
            .authenticate(&connect(r#"{"auth_token":"t0ken"}"#), "", 0)
            .is_ok());
        assert_eq!(
            a.authenticate(&connect(r#"{"auth_token":"x"}"#), "", 0)
                .unwrap_err(),
            AuthError::WrongToken
        );
        let a = auth(
            "no_auth_user = \"guest\"\n[[users]]\nuser = \"guest\"\npassword = \"g\"\n[users.permissions]\npublish = [\"public.>\"]\n",
        )
        .unwrap();
        let guest = a.authenticate(&connect("{}"), "", 0).unwrap();
        assert_eq!(guest.user.as_deref(), Some("guest"));
        assert!(!guest.permissions.can_publish(b"private"));
        assert!(a
            .authenticate(&connect(r#"{"user":"guest","pass":"bad"}"#), "", 0)
            .is_err());
    }

    #[test]
    fn nkey_signature_over_the_nonce() {
        let key = nkeys::KeyPair::new_user();
        let public = key.public_key();
        let a = auth(&format!("[[users]]\nnkey = \"{public}\"\n")).unwrap();
        assert!(a.wants_nonce());
        let nonce = "abcdefghijklmno";
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key.sign(nonce.as_bytes()).unwrap());
        let ok = connect(&format!(r#"{{"nkey":"{public}","sig":"{sig}"}}"#));
        assert_eq!(
            a.authenticate(&ok, nonce, 0).unwrap().user,
            Some(public.clone())
        );
        assert_eq!(
            a.authenticate(&ok, "another-nonce", 0).unwrap_err(),
            AuthError::BadSignature(public.clone())
        );
        let other = nkeys::KeyPair::new_user().public_key();
        let unknown = connect(&format!(r#"{{"nkey":"{other}","sig":"{sig}"}}"#));
        assert_eq!(
            a.authenticate(&unknown, nonce, 0).unwrap_err(),
            AuthError::UnknownNkey(other)
        );
    }

    #[test]
    fn bad_configurations_name_the_key() {
        for (text, key) in [
            ("user = \"a\"", "authorization.password"),
            (
                "token = \"t\"\nuser = \"a\"\npassword = \"p\"",
                "authorization.token",
            ),
            ("no_auth_user = \"x\"", "authorization.no_auth_user"),
            ("[[users]]\nnkey = \"Nope\"", "authorization.users.nkey"),
            ("[[users]]\npassword = \"p\"", "authorization.users"),
            (
                "[[users]]\nuser = \"a\"\n[users.permissions]\npublish = [\"a..b\"]",
                "authorization.users.permissions",
            ),
        ] {
            let e = auth(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {}", e.reason);
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let a = auth("token = \"hunter2\"").unwrap();
        assert!(!format!("{a:?}").contains("hunter2"));
        let config: AuthorizationConfig = toml::from_str("token = \"hunter2\"").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
