//! Operator mode: trusted operator JWTs, account JWTs from a resolver, and users who
//! log in with a user JWT and a signature of the nonce (a creds file), as nats-server
//! does it. Accounts are named by their public keys; their exports, imports and
//! JetStream come from their JWTs ([`Trust::account_configs`] gives them the shape of
//! `[accounts]`, so the same plan wires them).
//!
//! Two resolvers, as the reference names them: `MEMORY` (the account JWTs are in the
//! config, `resolver_preload`; an update on `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`
//! replaces one it holds, in memory) and `full` (every account JWT is a file in a
//! directory, read at start; updates store new accounts too). [`Trust::update`]
//! decides an update; the node's system actor stores it and swaps the trust.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::config::{
    AccountConfig, ExportConfig, ImportConfig, ImportSourceConfig, ResponseTypeConfig,
};
use super::jwt::{self, AccountLimits, Claims, JwtError, VerifiedUser};
use super::AuthConfigError;

/// `operator`: one path or JWT, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OperatorList {
    One(String),
    Many(Vec<String>),
}

impl Default for OperatorList {
    fn default() -> Self {
        OperatorList::Many(Vec::new())
    }
}

impl OperatorList {
    pub fn entries(&self) -> &[String] {
        match self {
            OperatorList::One(s) => std::slice::from_ref(s),
            OperatorList::Many(v) => v,
        }
    }

    pub fn entries_mut(&mut self) -> &mut [String] {
        match self {
            OperatorList::One(s) => std::slice::from_mut(s),
            OperatorList::Many(v) => v,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}

/// `resolver`: where account JWTs come from. `"MEMORY"` (the preload), or a table
/// naming a type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ResolverConfig {
    Named(String),
    Table {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        dir: Option<String>,
        /// How often a full resolver asks its peers for the JWTs it lacks.
        #[serde(default)]
        interval: Option<crate::values::Dur>,
    },
}

/// The full resolver's default `interval` (the reference's: one minute).
pub const PACK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The resolver a config names, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResolverKind {
    /// `MEMORY`: the preloaded accounts, updated in memory only.
    #[default]
    Memory,
    /// `full`: account JWTs stored in `dir` (relative to the working directory, as
    /// the reference reads it), each as `<account public key>.jwt`.
    Full { dir: String },
}

impl ResolverConfig {
    /// Which resolver this is, or why it is not one this node builds.
    pub fn kind(&self) -> Result<ResolverKind, String> {
        match self {
            ResolverConfig::Named(n) if n.eq_ignore_ascii_case("memory") => Ok(ResolverKind::Memory),
            ResolverConfig::Table { kind, .. } if kind.eq_ignore_ascii_case("memory") => {
                Ok(ResolverKind::Memory)
            }
            ResolverConfig::Table { interval: Some(d), .. } if d.0.is_zero() => {
                Err("`interval` must be more than 0".into())
            }
            ResolverConfig::Table { kind, dir, .. } if kind.eq_ignore_ascii_case("full") => match dir {
                Some(dir) if !dir.trim().is_empty() => Ok(ResolverKind::Full { dir: dir.clone() }),
                _ => Err("the full resolver needs `dir`, the directory for account JWTs".into()),
            },
            other => Err(format!(
                "{other:?}: the resolvers built are MEMORY (with resolver_preload) and {{ type = \"full\", dir = \"…\" }}"
            )),
        }
    }
}

impl ResolverConfig {
    /// How often a full resolver asks its peers for what it lacks (`interval`).
    pub fn pack_interval(&self) -> std::time::Duration {
        match self {
            ResolverConfig::Table {
                interval: Some(d), ..
            } => d.0,
            _ => PACK_INTERVAL,
        }
    }
}

/// Is `text` a JWT rather than a path to one?
pub fn is_inline_jwt(text: &str) -> bool {
    text.trim_start().starts_with("eyJ")
}

/// One account JWT, checked.
#[derive(Debug, Clone)]
struct AccountJwt {
    token: String,
    claims: Claims,
}

/// Whom operator mode trusts, and the accounts it knows.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The operators' public keys and signing keys: who may issue accounts.
    issuers: Vec<String>,
    accounts: HashMap<String, AccountJwt>,
    system_account: Option<String>,
    resolver: ResolverKind,
}

/// Why an account JWT pushed to the node was refused: the reply's `error` block
/// (`account` is `n/a` when the JWT does not say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jwt update resulted in error - {description}")]
pub struct ClaimsError {
    pub account: String,
    pub description: String,
}

/// What an accepted update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsUpdate {
    /// The account's public key.
    pub account: String,
    /// The JWT as it is to be stored.
    pub token: String,
    /// The node did not know the account before.
    pub new_account: bool,
    /// The same JWT was held already (nothing to store or apply).
    pub unchanged: bool,
    /// Its exports or imports differ from the held JWT's (they are wired at start).
    pub shape_changed: bool,
    /// Its JetStream limits turn JetStream on or off (wired at start).
    pub jetstream_changed: bool,
}

/// Is a JWT's JetStream on (either storage limit not 0)?
fn jetstream_on(claims: &Claims) -> bool {
    claims
        .nats
        .limits
        .as_ref()
        .is_some_and(|l| l.mem_storage != 0 || l.disk_storage != 0)
}

/// Why a user JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserJwtError {
    #[error("{0}")]
    Jwt(#[from] JwtError),
    #[error("account {0} is not known to the resolver")]
    UnknownAccount(String),
    #[error("user {0} is revoked")]
    Revoked(String),
}

impl Trust {
    /// Checks the operator JWTs (texts, already read from their files), the resolver
    /// and its preloaded account JWTs; `system_account` is the config's.
    pub fn new(
        operators: &[String],
        resolver: Option<&ResolverConfig>,
        preload: &BTreeMap<String, String>,
        system_account: Option<&str>,
    ) -> Result<Trust, AuthConfigError> {
        let err = |key: &str, reason: String| AuthConfigError {
            key: key.to_string(),
            reason,
        };
        let mut trust = Trust::default();
        for (i, token) in operators.iter().enumerate() {
            let claims = jwt::decode(token)
                .map_err(|e| err("operator", format!("entry {i}: operator JWT: {e}")))?;
            if claims.nats.kind != "operator" {
                return Err(err(
                    "operator",
                    format!("entry {i}: a {:?} JWT, not an operator's", claims.nats.kind),
                ));
            }
            // An operator JWT is signed by the operator itself or one of its keys.
            let own_keys: Vec<&str> = claims.nats.signing_keys().collect();
            if claims.iss != claims.sub && !own_keys.contains(&claims.iss.as_str()) {
                return Err(err(
                    "operator",
                    format!(
                        "entry {i}: not signed by the operator {} itself",
                        claims.sub
                    ),
                ));
            }
            trust.issuers.push(claims.sub.clone());
            trust.issuers.extend(own_keys.iter().map(|k| k.to_string()));
            if trust.system_account.is_none() {
                trust.system_account = claims.nats.system_account.clone();
            }
        }
        trust.resolver = match resolver {
            None => return Err(err(
                "resolver",
                "operator mode needs a resolver (\"MEMORY\", or { type = \"full\", dir = \"…\" })"
                    .into(),
            )),
            Some(r) => r.kind().map_err(|reason| err("resolver", reason))?,
        };
        for (key, token) in preload {
            let claims =
                jwt::decode(token).map_err(|e| err("resolver_preload", format!("{key}: {e}")))?;
            if claims.nats.kind != "account" {
                return Err(err(
                    "resolver_preload",
                    format!("{key}: a {:?} JWT, not an account's", claims.nats.kind),
                ));
            }
            if claims.sub != *key {
                return Err(err(
                    "resolver_preload",
                    format!("{key}: the JWT is for account {}", claims.sub),
                ));
            }
            if !trust.issuers.contains(&claims.iss) {
                return Err(err(
                    "resolver_preload",
                    format!("{key}: not issued by a trusted operator"),
                ));
            }
            trust.accounts.insert(
                key.clone(),
                AccountJwt {
                    token: token.clone(),
                    claims,
                },
            );
        }
        if let Some(sys) = system_account {
            trust.system_account = Some(sys.to_string());
        }
        Ok(trust)
    }

    /// The system account: the config's, else the operator's.
    pub fn system_account(&self) -> Option<&str> {
        self.system_account.as_deref()
    }

    /// The resolver the accounts come from.
    pub fn resolver(&self) -> &ResolverKind {
        &self.resolver
    }

    /// The account JWT held for `account`, as it was pushed or loaded.
    pub fn lookup(&self, account: &str) -> Option<&str> {
        self.accounts.get(account).map(|a| a.token.as_str())
    }

    /// The accounts held, by public key, sorted.
    pub fn account_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.accounts.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Checks an account JWT against the trusted operators at `now_secs`.
    fn check_account(&self, token: &str, now_secs: i64) -> Result<AccountJwt, ClaimsError> {
        let failed = |account: &str, description: String| ClaimsError {
            account: account.to_string(),
            description,
        };
        let claims = match jwt::decode(token) {
            Ok(c) => c,
            // The reference's words for what most pushes get wrong.
            Err(JwtError::Shape) => return Err(failed("n/a", "expected 3 chunks".into())),
            Err(e) => return Err(failed("n/a", e.to_string())),
        };
        if claims.nats.kind != "account" {
            return Err(failed("n/a", "not account claim".into()));
        }
        // Where the reference answers "jwt updated" and stores what it cannot use,
        // nothing untrusted or expired is taken here.
        if !self.issuers.contains(&claims.iss) {
            return Err(failed(
                &claims.sub,
                format!("not issued by a trusted operator (issuer {})", claims.iss),
            ));
        }
        if claims.exp.is_some_and(|exp| exp > 0 && now_secs >= exp) {
            return Err(failed(&claims.sub, "the account JWT has expired".into()));
        }
        Ok(AccountJwt {
            token: token.trim().to_string(),
            claims,
        })
    }

    /// Decides an account JWT pushed on `$SYS.REQ.CLAIMS.UPDATE` (`subject_account`:
    /// the key in `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`) at `now_secs`: the trust
    /// with it applied, and what changed. It must be issued by a trusted operator, not
    /// expired, and not older than the JWT held for the account (an older JWT never
    /// replaces a newer one); the MEMORY resolver takes only accounts it holds.
    pub fn update(
        &self,
        token: &str,
        subject_account: Option<&str>,
        now_secs: i64,
    ) -> Result<(Trust, ClaimsUpdate), ClaimsError> {
        let checked = match self.check_account(token, now_secs) {
            // The subject's account is the one the error is about when the JWT
            // names no other.
            Err(e) if e.account == "n/a" && subject_account.is_some() => {
                return Err(ClaimsError {
                    account: subject_account.unwrap_or_default().to_string(),
                    ..e
                })
            }
            other => other?,
        };
        let account = checked.claims.sub.clone();
        if subject_account.is_some_and(|s| s != account) {
            return Err(ClaimsError {
                account: subject_account.unwrap_or_default().to_string(),
                description: "subject does not match jwt content".into(),
            });
        }
        let held = self.accounts.get(&account);
        if held.is_none() && self.resolver == ResolverKind::Memory {
            return Err(ClaimsError {
                account,
                description: "the MEMORY resolver takes updates of preloaded accounts only".into(),
            });
        }
        if let Some(held) = held {
            if checked.claims.iat < held.claims.iat {
                return Err(ClaimsError {
                    account,
                    description: format!(
                        "issued at {}, before the account JWT held (issued at {}): an older JWT never replaces a newer one",
                        checked.claims.iat, held.claims.iat
                    ),
                });
            }
        }
        let update = ClaimsUpdate {
            account: account.clone(),
            token: checked.token.clone(),
            new_account: held.is_none(),
            unchanged: held.is_some_and(|h| h.token == checked.token),
            shape_changed: held.is_some_and(|h| {
                h.claims.nats.exports != checked.claims.nats.exports
                    || h.claims.nats.imports != checked.claims.nats.imports
            }),
            jetstream_changed: held
                .is_some_and(|h| jetstream_on(&h.claims) != jetstream_on(&checked.claims)),
        };
        let mut trust = self.clone();
        trust.accounts.insert(account, checked);
        Ok((trust, update))
    }

    /// Adds the account JWTs a full resolver's directory holds (`(file, JWT)`),
    /// keeping the newer of a stored and a preloaded JWT. A file that does not check
    /// (not an account JWT, untrusted, filed under another key) is left where it is
    /// and reported, never deleted.
    pub fn add_stored(&mut self, stored: &[(String, String)], now_secs: i64) -> Vec<String> {
        let mut refused = Vec::new();
        for (file, token) in stored {
            match self.check_account(token, now_secs) {
                Ok(jwt) if file.trim_end_matches(".jwt") != jwt.claims.sub => refused.push(
                    format!("{file}: holds the JWT of account {}", jwt.claims.sub),
                ),
                Ok(jwt) => {
                    let newer = self
                        .accounts
                        .get(&jwt.claims.sub)
                        .is_none_or(|held| jwt.claims.iat >= held.claims.iat);
                    if newer {
                        self.accounts.insert(jwt.claims.sub.clone(), jwt);
                    }
                }
                Err(e) => refused.push(format!("{file}: {}", e.description)),
            }
        }
        refused
    }

    /// Takes from `live` (the trust the node runs with) the accounts pushed since
    /// start that are newer than, or missing from, this one (a reload builds a trust
    /// from the config alone).
    pub fn carry_over(&mut self, live: &Trust) {
        for (key, jwt) in &live.accounts {
            let newer = self
                .accounts
                .get(key)
                .is_none_or(|held| jwt.claims.iat > held.claims.iat);
            if newer && self.issuers.contains(&jwt.claims.iss) {
                self.accounts.insert(key.clone(), jwt.clone());
            }
        }
    }

    /// The accounts as `[accounts]` would write them: JetStream when the JWT's limits
    /// give it storage, exports and imports from the JWT (an export that needs an
    /// activation token is left out: tokens are not checked yet, and without the
    /// check anyone could import it).
    pub fn account_configs(&self) -> BTreeMap<String, AccountConfig> {
        let mut out = BTreeMap::new();
        for (key, account) in &self.accounts {
            let n = &account.claims.nats;
            let jetstream = jetstream_on(&account.claims);
            let exports = n
                .exports
                .iter()
                .filter(|e| !e.token_req)
                .map(|e| {
                    let response_type = match e.response_type.to_ascii_lowercase().as_str() {
                        "stream" => Some(ResponseTypeConfig::Stream),
                        "chunked" => Some(ResponseTypeConfig::Chunked),
                        _ => None,
                    };
                    if e.kind == "service" {
                        ExportConfig {
                            service: Some(e.subject.clone()),
                            response_type,
                            ..ExportConfig::default()
                        }
                    } else {
                        ExportConfig {
                            stream: Some(e.subject.clone()),
                            ..ExportConfig::default()
                        }
                    }
                })
                .collect();
            let imports = n
                .imports
                .iter()
                .filter(|i| self.accounts.contains_key(&i.account))
                .map(|i| {
                    let source = ImportSourceConfig {
                        account: i.account.clone(),
                        subject: i.subject.clone(),
                    };
                    let local = (!i.local_subject.is_empty()).then(|| i.local_subject.clone());
                    if i.kind == "service" {
                        ImportConfig {
                            service: Some(source),
                            to: local.or_else(|| (!i.to.is_empty()).then(|| i.to.clone())),
                            ..ImportConfig::default()
                        }
                    } else {
                        // An old stream import's `to` is a prefix.
                        let prefix = (local.is_none() && !i.to.is_empty()).then(|| i.to.clone());
                        ImportConfig {
                            stream: Some(source),
                            to: local,
                            prefix,
                            ..ImportConfig::default()
                        }
                    }
                })
                .collect();
            out.insert(
                key.clone(),
                AccountConfig {
                    users: Vec::new(),
                    jetstream,
                    exports,
                    imports,
                },
            );
        }
        if let Some(sys) = &self.system_account {
            out.entry(sys.clone()).or_default();
        }
        out
    }

    /// The JetStream limits `account`'s JWT sets (`None`: no such account), as
    /// `$JS.API.INFO` reports them (-1: none).
    pub fn jetstream_limits(&self, account: &str) -> Option<crate::jetstream::api::AccountLimits> {
        let claims = &self.accounts.get(account)?.claims;
        let l = claims
            .nats
            .limits
            .as_ref()
            .unwrap_or(&AccountLimits::ABSENT);
        Some(crate::jetstream::api::AccountLimits {
            max_memory: l.mem_storage,
            max_storage: l.disk_storage,
            max_streams: l.streams,
            max_consumers: l.consumer,
            max_ack_pending: -1,
            memory_max_stream_bytes: -1,
            storage_max_stream_bytes: -1,
            max_bytes_required: false,
        })
    }

    /// Checks a user JWT at `now_secs`: issued by a known account (or one of its
    /// signing keys) under a trusted operator, in its validity period, not revoked.
    pub fn verify_user(&self, user_jwt: &str, now_secs: i64) -> Result<VerifiedUser, UserJwtError> {
        let user = jwt::decode(user_jwt)?;
        let account_key = user.nats.issuer_account.clone().unwrap_or(user.iss.clone());
        let Some(account) = self.accounts.get(&account_key) else {
            return Err(UserJwtError::UnknownAccount(account_key));
        };
        let verified = jwt::verify_user(user_jwt, &account.token, &self.issuers, now_secs)?;
        let revoked = |key: &str| {
            account
                .claims
                .nats
                .revocations
                .get(key)
                .is_some_and(|&before| verified.issued_at <= before)
        };
        if revoked(&verified.user) || revoked("*") {
            return Err(UserJwtError::Revoked(verified.user));
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{encode, AccountLimits, JwtExport, JwtImport, NatsClaims};

    fn operator_jwt(op: &nkeys::KeyPair, sys: Option<&str>) -> String {
        let claims = Claims {
            iss: op.public_key(),
            sub: op.public_key(),
            name: "OP".into(),
            nats: NatsClaims {
                kind: "operator".into(),
                version: 2,
                system_account: sys.map(str::to_string),
                ..NatsClaims::default()
            },
            ..Claims::default()
        };
        encode(&claims, op).expect("encode")
    }

    fn account_jwt(op: &nkeys::KeyPair, acc: &nkeys::KeyPair, nats: NatsClaims) -> String {
        account_jwt_at(op, acc, 0, nats)
    }

    fn account_jwt_at(
        op: &nkeys::KeyPair,
        acc: &nkeys::KeyPair,
        iat: i64,
        nats: NatsClaims,
    ) -> String {
        let claims = Claims {
            iss: op.public_key(),
            sub: acc.public_key(),
            name: "ACC".into(),
            iat,
            nats: NatsClaims {
                kind: "account".into(),
                version: 2,
                ..nats
            },
            ..Claims::default()
        };
        encode(&claims, op).expect("encode")
    }

    fn user_jwt(acc: &nkeys::KeyPair, user: &nkeys::KeyPair, iat: i64) -> String {
        let claims = Claims {
            iss: acc.public_key(),
            sub: user.public_key(),
            iat,
            nats: NatsClaims {
                kind: "user".into(),
                version: 2,
                ..NatsClaims::default()
            },
            ..Claims::default()
        };
        encode(&claims, acc).expect("encode")
    }

    const MEMORY: Option<&ResolverConfig> = None;

    fn memory() -> ResolverConfig {
        ResolverConfig::Named("MEMORY".into())
    }

    #[test]
    fn preloaded_accounts_under_the_operator_and_their_users() {
        let (op, app, sys, user) = (
            nkeys::KeyPair::new_operator(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_user(),
        );
        let mut preload = BTreeMap::new();
        let app_nats = NatsClaims {
            limits: Some(AccountLimits {
                mem_storage: -1,
                disk_storage: -1,
                ..AccountLimits::default()
            }),
            exports: vec![JwtExport {
                subject: "ev.>".into(),
                kind: "stream".into(),
                ..JwtExport::default()
            }],
            revocations: [(nkeys::KeyPair::new_user().public_key(), 100)].into(),
            ..NatsClaims::default()
        };
        preload.insert(app.public_key(), account_jwt(&op, &app, app_nats));
        let sys_nats = NatsClaims {
            imports: vec![JwtImport {
                subject: "ev.>".into(),
                account: app.public_key(),
                kind: "stream".into(),
                ..JwtImport::default()
            }],
            ..NatsClaims::default()
        };
        preload.insert(sys.public_key(), account_jwt(&op, &sys, sys_nats));
        let ops = [operator_jwt(&op, Some(&sys.public_key()))];
        let memory = memory();
        let trust = Trust::new(&ops, Some(&memory), &preload, None).expect("valid");
        assert_eq!(trust.system_account(), Some(sys.public_key().as_str()));
        let accounts = trust.account_configs();
        assert!(accounts[&app.public_key()].jetstream);
        assert!(!accounts[&sys.public_key()].jetstream);
        let plan = crate::auth::accounts::AccountPlan::new(&accounts, trust.system_account())
            .expect("the JWTs' imports match their exports");
        assert_eq!(plan.jetstream_account(), Some(app.public_key().as_str()));

        let ok = trust
            .verify_user(&user_jwt(&app, &user, 10), 20)
            .expect("a user of a known account");
        assert_eq!(ok.account, app.public_key());
        let stranger = nkeys::KeyPair::new_account();
        assert!(matches!(
            trust.verify_user(&user_jwt(&stranger, &user, 10), 20),
            Err(UserJwtError::UnknownAccount(_))
        ));
    }

    #[test]
    fn revocations_and_bad_preloads() {
        let (op, app, user) = (
            nkeys::KeyPair::new_operator(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_user(),
        );
        let nats = NatsClaims {
            revocations: [(user.public_key(), 100)].into(),
            ..NatsClaims::default()
        };
        let preload: BTreeMap<String, String> =
            [(app.public_key(), account_jwt(&op, &app, nats))].into();
        let ops = [operator_jwt(&op, None)];
        let memory = memory();
        let trust = Trust::new(&ops, Some(&memory), &preload, None).expect("valid");
        assert!(matches!(
            trust.verify_user(&user_jwt(&app, &user, 100), 200),
            Err(UserJwtError::Revoked(_))
        ));
        assert!(trust.verify_user(&user_jwt(&app, &user, 101), 200).is_ok());

        // An account the operator did not issue; a JWT filed under another key; no
        // resolver; a resolver not built.
        let other_op = nkeys::KeyPair::new_operator();
        let foreign: BTreeMap<String, String> = [(
            app.public_key(),
            account_jwt(&other_op, &app, NatsClaims::default()),
        )]
        .into();
        let e = Trust::new(&ops, Some(&memory), &foreign, None).expect_err("foreign");
        assert_eq!(
            (e.key.as_str(), e.reason.contains("trusted operator")),
            ("resolver_preload", true)
        );
        let misfiled: BTreeMap<String, String> = [(
            nkeys::KeyPair::new_account().public_key(),
            account_jwt(&op, &app, NatsClaims::default()),
        )]
        .into();
        assert!(Trust::new(&ops, Some(&memory), &misfiled, None).is_err());
        assert_eq!(
            Trust::new(&ops, MEMORY, &preload, None)
                .expect_err("none")
                .key,
            "resolver"
        );
        let full = ResolverConfig::Table {
            kind: "full".into(),
            dir: None,
            interval: None,
        };
        assert!(full.kind().is_err(), "a full resolver without a directory");
        let never = ResolverConfig::Table {
            kind: "full".into(),
            dir: Some("jwt".into()),
            interval: Some(crate::values::Dur(std::time::Duration::ZERO)),
        };
        assert_eq!(never.kind(), Err("`interval` must be more than 0".into()));
        assert_eq!(full.pack_interval(), PACK_INTERVAL);
        assert_eq!(
            Trust::new(&ops, Some(&full), &preload, None)
                .expect_err("full")
                .key,
            "resolver"
        );
        assert_eq!(
            Trust::new(&["eyJnope".into()], Some(&memory), &preload, None)
                .expect_err("bad")
                .key,
            "operator"
        );
    }

    #[test]
    fn pushed_account_jwts_are_checked_before_they_are_taken() {
        let (op, app, new, user) = (
            nkeys::KeyPair::new_operator(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_user(),
        );
        let ops = [operator_jwt(&op, None)];
        let held = account_jwt_at(&op, &app, 100, NatsClaims::default());
        let preload: BTreeMap<String, String> = [(app.public_key(), held.clone())].into();
        let full = ResolverConfig::Table {
            kind: "full".into(),
            dir: Some("jwt".into()),
            interval: None,
        };
        let trust = Trust::new(&ops, Some(&full), &preload, None).expect("valid");
        let now = 1000;

        // A newer JWT revoking a user: taken, and the user is refused from then on.
        let revoking = account_jwt_at(
            &op,
            &app,
            200,
            NatsClaims {
                revocations: [(user.public_key(), 150)].into(),
                ..NatsClaims::default()
            },
        );
        assert!(trust.verify_user(&user_jwt(&app, &user, 120), now).is_ok());
        let (after, update) = trust.update(&revoking, None, now).expect("newer");
        assert!(!update.new_account && !update.unchanged && !update.shape_changed);
        assert!(matches!(
            after.verify_user(&user_jwt(&app, &user, 120), now),
            Err(UserJwtError::Revoked(_))
        ));
        assert_eq!(after.lookup(&app.public_key()), Some(revoking.as_str()));
        // The same again: unchanged. An older one: refused, the newer one stays.
        assert!(
            after
                .update(&revoking, None, now)
                .expect("same")
                .1
                .unchanged
        );
        let e = after.update(&held, None, now).expect_err("older");
        assert_eq!(e.account, app.public_key());
        assert!(e.description.contains("older JWT never replaces"), "{e}");
        // An account issued by an operator not trusted, an expired one, garbage, a
        // user JWT, a subject naming another account: refused with the reason.
        let forged = account_jwt_at(
            &nkeys::KeyPair::new_operator(),
            &app,
            300,
            NatsClaims::default(),
        );
        let e = after.update(&forged, None, now).expect_err("forged");
        assert!(
            e.description.contains("not issued by a trusted operator"),
            "{e}"
        );
        let mut expired: Claims = jwt::decode(&revoking).expect("decode");
        expired.iat = 400;
        expired.exp = Some(500);
        let expired = encode(&expired, &op).expect("encode");
        assert!(after.update(&expired, None, now).is_err());
        let e = after.update("garbage", None, now).expect_err("garbage");
        assert_eq!(
            (e.account.as_str(), e.description.as_str()),
            ("n/a", "expected 3 chunks")
        );
        let e = after
            .update(&user_jwt(&app, &user, 1), None, now)
            .expect_err("user");
        assert_eq!(e.description, "not account claim");
        let e = after
            .update(&revoking, Some(&new.public_key()), now)
            .expect_err("mismatch");
        assert_eq!(
            (e.account, e.description.as_str()),
            (new.public_key(), "subject does not match jwt content")
        );
        // A new account: the full resolver takes it, the MEMORY resolver does not.
        let fresh = account_jwt_at(&op, &new, 10, NatsClaims::default());
        let (with_new, update) = after
            .update(&fresh, Some(&new.public_key()), now)
            .expect("new account");
        assert!(update.new_account);
        assert_eq!(with_new.account_keys().len(), 2);
        let memory = memory();
        let in_memory = Trust::new(&ops, Some(&memory), &preload, None).expect("valid");
        assert!(in_memory.update(&fresh, None, now).is_err());

        // A reload's trust (the preload alone) keeps what was pushed since.
        let mut reloaded = Trust::new(&ops, Some(&full), &preload, None).expect("valid");
        reloaded.carry_over(&with_new);
        assert_eq!(reloaded.lookup(&app.public_key()), Some(revoking.as_str()));
        assert!(reloaded.lookup(&new.public_key()).is_some());

        // The directory at start: the newer of stored and preloaded wins; a file
        // under another key or a forged one is reported, not loaded.
        let mut started = Trust::new(&ops, Some(&full), &preload, None).expect("valid");
        let refused = started.add_stored(
            &[
                (format!("{}.jwt", app.public_key()), revoking.clone()),
                (format!("{}.jwt", new.public_key()), held.clone()),
                ("x.jwt".into(), forged),
            ],
            now,
        );
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(started.lookup(&app.public_key()), Some(revoking.as_str()));
        assert!(started.lookup(&new.public_key()).is_none());
    }
}
