//! Operator mode: trusted operator JWTs, account JWTs from a resolver, and users who
//! log in with a user JWT and a signature of the nonce (a creds file), as nats-server
//! does it. Accounts are named by their public keys; their exports, imports and
//! JetStream come from their JWTs ([`Trust::account_configs`] gives them the shape of
//! `[accounts]`, so the same plan wires them).
//!
//! The resolver built here is `MEMORY`: the account JWTs are in the config
//! (`resolver_preload`) and fixed while the node runs.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::config::{
    AccountConfig, ExportConfig, ImportConfig, ImportSourceConfig, ResponseTypeConfig,
};
use super::jwt::{self, Claims, JwtError, VerifiedUser};
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
    },
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
        match resolver {
            None => {
                return Err(err(
                    "resolver",
                    "operator mode needs a resolver (\"MEMORY\")".into(),
                ))
            }
            Some(ResolverConfig::Named(n)) if n.eq_ignore_ascii_case("memory") => {}
            Some(ResolverConfig::Table { kind, .. }) if kind.eq_ignore_ascii_case("memory") => {}
            Some(other) => {
                return Err(err(
                    "resolver",
                    format!(
                    "{other:?}: only the MEMORY resolver (with resolver_preload) is built so far"
                ),
                ))
            }
        }
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

    /// The accounts as `[accounts]` would write them: JetStream when the JWT's limits
    /// give it storage, exports and imports from the JWT (an export that needs an
    /// activation token is left out: tokens are not checked yet, and without the
    /// check anyone could import it).
    pub fn account_configs(&self) -> BTreeMap<String, AccountConfig> {
        let mut out = BTreeMap::new();
        for (key, account) in &self.accounts {
            let n = &account.claims.nats;
            let jetstream = n
                .limits
                .as_ref()
                .is_some_and(|l| l.mem_storage != 0 || l.disk_storage != 0);
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
        let claims = Claims {
            iss: op.public_key(),
            sub: acc.public_key(),
            name: "ACC".into(),
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
        };
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
}
