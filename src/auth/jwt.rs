//! NATS JWTs (the decentralized auth of operator mode): decoding, signature checks,
//! and the trust chain operator → account → user, without I/O or clocks (the caller
//! passes the time).
//!
//! A NATS JWT is `header.claims.signature`, each part base64url without padding; the
//! header names the algorithm `ed25519-nkey`, the claims are JSON with the issuer's
//! public nkey in `iss`, and the signature is the issuer's ed25519 signature over the
//! first two parts as sent (version 1 JWTs, `alg: ed25519`, signed the claims part
//! alone; they are still read). A user JWT is issued by its account (or one of the
//! account's signing keys, with `issuer_account` naming the account); an account JWT
//! by a trusted operator.
//!
//! Operator mode ([`super::operator`]) checks client JWTs with these functions.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::config::{PermissionsConfig, SubjectPermissionConfig};
use super::LoginLimits;

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT (three base64url parts)")]
    Shape,
    #[error("unreadable JWT {0}: {1}")]
    Json(&'static str, String),
    #[error("unsupported JWT algorithm {0:?} (NATS uses ed25519-nkey)")]
    Algorithm(String),
    #[error("issuer {0:?} is not a public nkey")]
    Issuer(String),
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("a {expected} JWT was expected, this one is a {found:?}")]
    Kind {
        expected: &'static str,
        found: String,
    },
    #[error("the account JWT is not issued by a trusted operator")]
    UntrustedOperator,
    #[error("the user JWT is not issued by its account or one of its signing keys")]
    UntrustedAccount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub typ: String,
    pub alg: String,
}

/// Allow and deny lists of a user JWT.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PermissionSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// The `nats` section, the fields this node reads (others are ignored).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsClaims {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// User: the account a signing key issued it for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_account: Option<String>,
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publish: Option<PermissionSpec>,
    #[serde(rename = "sub", skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<PermissionSpec>,
    /// User: connects without proving the nkey (a bearer token).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bearer_token: bool,
    /// Account: keys that may issue its users (strings, or objects with a `key`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<serde_json::Value>,
    /// Operator: the system account's public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_account: Option<String>,
    /// Account: its limits (JetStream is on when either storage limit is not 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<AccountLimits>,
    /// Account: what it exports and imports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<JwtExport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<JwtImport>,
    /// Account: users revoked, by public key (or `*`), with the time before which
    /// their JWTs no longer count (Unix seconds).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revocations: std::collections::BTreeMap<String, i64>,
    /// User: its limits as `nsc` writes them (-1: unlimited; missing: 0, none
    /// allowed, as at the reference). `data` is not enforced (nor by the reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<i64>,
    /// User: the kinds of connection it may make (`STANDARD`, `WEBSOCKET`, …; any when
    /// empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_connection_types: Vec<String>,
}

/// An account's limits (-1: unlimited). `Default` is what `nsc` writes for a new
/// account (everything unlimited, JetStream off); a field missing from the JSON, or
/// the whole object, reads as the reference's Go zero value (0: none allowed), so a
/// hand-written JWT means here what it means there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimits {
    /// Subscriptions per connection of the account.
    #[serde(default)]
    pub subs: i64,
    #[serde(default)]
    pub data: i64,
    /// Largest message (headers and payload) a connection of the account may publish.
    #[serde(default)]
    pub payload: i64,
    #[serde(default)]
    pub imports: i64,
    #[serde(default)]
    pub exports: i64,
    #[serde(default)]
    pub wildcards: bool,
    /// Connections of the account on this node.
    #[serde(default)]
    pub conn: i64,
    #[serde(default)]
    pub leaf: i64,
    /// JetStream is on when either storage limit is not 0.
    #[serde(default)]
    pub mem_storage: i64,
    #[serde(default)]
    pub disk_storage: i64,
    /// JetStream streams and consumers of the account (0 or -1: no limit, as at the
    /// reference).
    #[serde(default)]
    pub streams: i64,
    #[serde(default)]
    pub consumer: i64,
}

impl AccountLimits {
    /// The limits of an account JWT without a `limits` object (Go's zero value).
    pub const ABSENT: AccountLimits = AccountLimits {
        subs: 0,
        data: 0,
        payload: 0,
        imports: 0,
        exports: 0,
        wildcards: false,
        conn: 0,
        leaf: 0,
        mem_storage: 0,
        disk_storage: 0,
        streams: 0,
        consumer: 0,
    };
}

/// The tighter of two limits where a negative one is no limit; `None`: neither
/// limits.
pub fn tighter(a: i64, b: i64) -> Option<usize> {
    let limit = |v: i64| usize::try_from(v).ok();
    match (limit(a), limit(b)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            subs: -1,
            data: -1,
            payload: -1,
            imports: -1,
            exports: -1,
            wildcards: true,
            conn: -1,
            leaf: -1,
            mem_storage: 0,
            disk_storage: 0,
            streams: -1,
            consumer: -1,
        }
    }
}

/// One export of an account JWT.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtExport {
    pub name: String,
    pub subject: String,
    /// `stream` or `service`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `Singleton`, `Stream` or `Chunked` (services).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub response_type: String,
    /// Importers need an activation token.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub token_req: bool,
}

/// One import of an account JWT.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtImport {
    pub name: String,
    pub subject: String,
    pub account: String,
    /// `stream` or `service`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The subject here (a prefix for old stream imports).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
}

/// The claims of a NATS JWT.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Claims {
    pub jti: String,
    pub iat: i64,
    pub iss: String,
    pub sub: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub nats: NatsClaims,
    /// Version 1's top-level `type` (read into `nats.type`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub v1_type: Option<String>,
}

impl NatsClaims {
    /// The signing keys an account lists.
    pub fn signing_keys(&self) -> impl Iterator<Item = &str> {
        self.signing_keys.iter().filter_map(|k| match k {
            serde_json::Value::String(s) => Some(s.as_str()),
            serde_json::Value::Object(o) => o.get("key").and_then(|v| v.as_str()),
            _ => None,
        })
    }
}

const ALG: &str = "ed25519-nkey";

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Shape)
}

/// Decodes `token` and checks its signature against its issuer (not its validity
/// period, not who the issuer is: see [`verify_user`]).
pub fn decode(token: &str) -> Result<Claims, JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let header: Header =
        serde_json::from_slice(&b64(h)?).map_err(|e| JwtError::Json("header", e.to_string()))?;
    // Version 1 JWTs say `ed25519`; the signature scheme is the same.
    if !header.alg.eq_ignore_ascii_case(ALG) && !header.alg.eq_ignore_ascii_case("ed25519") {
        return Err(JwtError::Algorithm(header.alg));
    }
    let claims: Claims =
        serde_json::from_slice(&b64(c)?).map_err(|e| JwtError::Json("claims", e.to_string()))?;
    let signature = b64(s)?;
    let issuer = nkeys::KeyPair::from_public_key(&claims.iss)
        .map_err(|_| JwtError::Issuer(claims.iss.clone()))?;
    // Version 2 signs `header.claims`; version 1 signed the claims part alone.
    let signed = if header.alg.eq_ignore_ascii_case(ALG) {
        &token.trim()[..h.len() + 1 + c.len()]
    } else {
        c
    };
    issuer
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    let mut claims = claims;
    if claims.nats.kind.is_empty() {
        // Version 1 kept the type beside the claims, not in `nats`.
        claims.nats.kind = claims.v1_type.take().unwrap_or_default();
    }
    Ok(claims)
}

/// Encodes and signs `claims` with `issuer` (tests and tooling; the server only
/// verifies).
pub fn encode(claims: &Claims, issuer: &nkeys::KeyPair) -> Result<String, JwtError> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = Header {
        typ: "JWT".into(),
        alg: ALG.into(),
    };
    let h = engine.encode(serde_json::to_vec(&header).unwrap_or_default());
    let c = engine.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{c}");
    let sig = issuer
        .sign(signing_input.as_bytes())
        .map_err(|_| JwtError::Signature)?;
    Ok(format!("{signing_input}.{}", engine.encode(sig)))
}

fn check_time(claims: &Claims, now_secs: i64) -> Result<(), JwtError> {
    if claims.exp.is_some_and(|exp| exp > 0 && now_secs >= exp) {
        return Err(JwtError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > 0 && now_secs < nbf) {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

fn kind(claims: &Claims, expected: &'static str) -> Result<(), JwtError> {
    if claims.nats.kind != expected {
        return Err(JwtError::Kind {
            expected,
            found: claims.nats.kind.clone(),
        });
    }
    Ok(())
}

/// A user that passed the chain of trust.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedUser {
    /// The user's public nkey (`U…`): the nonce must be signed with it (unless bearer).
    pub user: String,
    /// The account's public nkey (`A…`).
    pub account: String,
    pub name: String,
    pub bearer: bool,
    /// The user's permissions in the config's shape.
    pub permissions: PermissionsConfig,
    /// When the user JWT expires (Unix seconds).
    pub expires: Option<i64>,
    /// When it was issued (revocations name a time before which JWTs no longer count).
    pub issued_at: i64,
    pub connection_types: Vec<String>,
    /// The user's limits and its account's, combined.
    pub limits: LoginLimits,
    /// The key that signed the user JWT, and the account JWT's name.
    pub issuer: String,
    pub account_name: String,
}

/// What a user may do per connection, and its account per node: the tighter of the
/// user's and the account's limit. A user limit missing from the JWT is 0 (none
/// allowed), as the reference reads it; `nsc` writes -1 for "unlimited".
fn login_limits(user: &NatsClaims, account: Option<&AccountLimits>) -> LoginLimits {
    let account = account.unwrap_or(&AccountLimits::ABSENT);
    LoginLimits {
        max_subscriptions: tighter(user.subs.unwrap_or(0), account.subs),
        max_payload: tighter(user.payload.unwrap_or(0), account.payload),
        account_connections: usize::try_from(account.conn).ok(),
    }
}

/// Checks a user JWT against its account JWT and the trusted operators' keys at
/// `now_secs` (Unix seconds).
pub fn verify_user(
    user_jwt: &str,
    account_jwt: &str,
    trusted_operators: &[String],
    now_secs: i64,
) -> Result<VerifiedUser, JwtError> {
    let account = decode(account_jwt)?;
    kind(&account, "account")?;
    check_time(&account, now_secs)?;
    if !trusted_operators.contains(&account.iss) {
        return Err(JwtError::UntrustedOperator);
    }
    let user = decode(user_jwt)?;
    kind(&user, "user")?;
    check_time(&user, now_secs)?;
    let by_account = user.iss == account.sub;
    let by_signing_key = account.nats.signing_keys().any(|k| k == user.iss)
        && user.nats.issuer_account.as_deref() == Some(account.sub.as_str());
    if !(by_account || by_signing_key) {
        return Err(JwtError::UntrustedAccount);
    }
    let rules = |spec: &Option<PermissionSpec>| {
        spec.as_ref().map(|p| SubjectPermissionConfig::Rules {
            allow: (!p.allow.is_empty()).then(|| p.allow.clone()),
            deny: p.deny.clone(),
        })
    };
    Ok(VerifiedUser {
        user: user.sub.clone(),
        account: account.sub.clone(),
        name: user.name.clone(),
        bearer: user.nats.bearer_token,
        permissions: PermissionsConfig {
            publish: rules(&user.nats.publish),
            subscribe: rules(&user.nats.subscribe),
            allow_responses: None,
        },
        expires: user.exp.filter(|&e| e > 0),
        issued_at: user.iat,
        connection_types: user.nats.allowed_connection_types.clone(),
        limits: login_limits(&user.nats, account.nats.limits.as_ref()),
        issuer: user.iss.clone(),
        account_name: account.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chain {
        operator: nkeys::KeyPair,
        account: nkeys::KeyPair,
        user: nkeys::KeyPair,
    }

    fn chain() -> Chain {
        Chain {
            operator: nkeys::KeyPair::new_operator(),
            account: nkeys::KeyPair::new_account(),
            user: nkeys::KeyPair::new_user(),
        }
    }

    fn account_jwt(c: &Chain, signing_keys: Vec<String>) -> String {
        let claims = Claims {
            iss: c.operator.public_key(),
            sub: c.account.public_key(),
            name: "A".into(),
            nats: NatsClaims {
                kind: "account".into(),
                version: 2,
                signing_keys: signing_keys
                    .into_iter()
                    .map(serde_json::Value::String)
                    .collect(),
                ..NatsClaims::default()
            },
            ..Claims::default()
        };
        encode(&claims, &c.operator).unwrap()
    }

    fn user_claims(c: &Chain) -> Claims {
        Claims {
            iss: c.account.public_key(),
            sub: c.user.public_key(),
            name: "alice".into(),
            nats: NatsClaims {
                kind: "user".into(),
                version: 2,
                publish: Some(PermissionSpec {
                    allow: vec!["orders.>".into()],
                    deny: vec![],
                }),
                ..NatsClaims::default()
            },
            ..Claims::default()
        }
    }

    #[test]
    fn a_user_issued_by_its_account_under_a_trusted_operator_passes() {
        let c = chain();
        let user = encode(&user_claims(&c), &c.account).unwrap();
        let ok = verify_user(
            &user,
            &account_jwt(&c, vec![]),
            &[c.operator.public_key()],
            0,
        )
        .unwrap();
        assert_eq!(ok.user, c.user.public_key());
        assert_eq!(ok.account, c.account.public_key());
        assert_eq!(
            ok.permissions.publish,
            Some(SubjectPermissionConfig::Rules {
                allow: Some(vec!["orders.>".into()]),
                deny: vec![]
            })
        );
        // Another operator is not trusted.
        let other = nkeys::KeyPair::new_operator().public_key();
        assert_eq!(
            verify_user(&user, &account_jwt(&c, vec![]), &[other], 0),
            Err(JwtError::UntrustedOperator)
        );
    }

    #[test]
    fn signing_keys_need_issuer_account() {
        let c = chain();
        let sk = nkeys::KeyPair::new_account();
        let account = account_jwt(&c, vec![sk.public_key()]);
        let ops = [c.operator.public_key()];
        let mut claims = user_claims(&c);
        claims.iss = sk.public_key();
        let without = encode(&claims, &sk).unwrap();
        assert_eq!(
            verify_user(&without, &account, &ops, 0),
            Err(JwtError::UntrustedAccount)
        );
        claims.nats.issuer_account = Some(c.account.public_key());
        let with = encode(&claims, &sk).unwrap();
        assert!(verify_user(&with, &account, &ops, 0).is_ok());
        // A key the account does not list cannot issue users.
        let stranger = nkeys::KeyPair::new_account();
        claims.iss = stranger.public_key();
        let forged = encode(&claims, &stranger).unwrap();
        assert_eq!(
            verify_user(&forged, &account, &ops, 0),
            Err(JwtError::UntrustedAccount)
        );
    }

    #[test]
    fn tampering_expiry_and_shape_are_refused() {
        let c = chain();
        let user = encode(&user_claims(&c), &c.account).unwrap();
        // Change the claims, keep the signature.
        let mut parts: Vec<String> = user.split('.').map(str::to_string).collect();
        let mut claims = user_claims(&c);
        claims.name = "mallory".into();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap());
        assert_eq!(decode(&parts.join(".")), Err(JwtError::Signature));
        let mut claims = user_claims(&c);
        claims.exp = Some(100);
        let expired = encode(&claims, &c.account).unwrap();
        let account = account_jwt(&c, vec![]);
        let ops = [c.operator.public_key()];
        assert_eq!(
            verify_user(&expired, &account, &ops, 100),
            Err(JwtError::Expired)
        );
        assert!(verify_user(&expired, &account, &ops, 99).is_ok());
        claims.exp = None;
        claims.nbf = Some(50);
        let later = encode(&claims, &c.account).unwrap();
        assert_eq!(
            verify_user(&later, &account, &ops, 10),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(decode("a.b"), Err(JwtError::Shape));
        assert_eq!(decode("a.b.c.d"), Err(JwtError::Shape));
        // An account JWT where a user JWT belongs.
        assert!(matches!(
            verify_user(&account, &account, &ops, 0),
            Err(JwtError::Kind { .. })
        ));
    }

    #[test]
    fn limits_combine_the_tighter_and_missing_ones_allow_nothing() {
        let user = |subs, payload| NatsClaims {
            subs,
            payload,
            ..NatsClaims::default()
        };
        let unlimited = AccountLimits::default();
        // As `nsc` writes them: no limit anywhere.
        assert_eq!(
            login_limits(&user(Some(-1), Some(-1)), Some(&unlimited)),
            LoginLimits::default()
        );
        // The tighter of the user's and the account's.
        let account = AccountLimits {
            subs: 2,
            payload: 100,
            conn: 3,
            ..AccountLimits::default()
        };
        assert_eq!(
            login_limits(&user(Some(5), Some(10)), Some(&account)),
            LoginLimits {
                max_subscriptions: Some(2),
                max_payload: Some(10),
                account_connections: Some(3),
            }
        );
        // Missing claims read as Go's zero: none allowed, as at the reference.
        assert_eq!(
            login_limits(&user(None, None), None),
            LoginLimits {
                max_subscriptions: Some(0),
                max_payload: Some(0),
                account_connections: Some(0),
            }
        );
        let parsed: AccountLimits = serde_json::from_str(r#"{"subs":-1}"#).unwrap();
        assert_eq!(
            parsed,
            AccountLimits {
                subs: -1,
                ..AccountLimits::ABSENT
            }
        );
    }
}
