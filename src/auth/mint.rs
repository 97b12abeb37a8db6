//! Minting what operator mode trusts, as `nsc` writes it: operator, account and user
//! JWTs, `.creds` files, and the node's config block. Pure: the caller makes the keys'
//! files (`meshbroker auth`, in `main.rs`) and passes the time.

use super::jwt::{encode, AccountLimits, Claims, JwtError, NatsClaims, PermissionSpec};

/// What a user may do and for how long.
#[derive(Debug, Clone, Default)]
pub struct UserSpec {
    pub name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Seconds from now; none: no expiry.
    pub expires_in: Option<i64>,
    pub bearer: bool,
    /// `STANDARD`, `WEBSOCKET`, …; empty: any.
    pub connection_types: Vec<String>,
}

fn jti(now: i64, sub: &str) -> String {
    // nsc uses a hash of the claims; any unique id does.
    format!("{now:x}{}", &sub[sub.len().saturating_sub(12)..])
}

/// A self-signed operator JWT naming its system account.
pub fn operator_jwt(
    operator: &nkeys::KeyPair,
    name: &str,
    system_account: &str,
    now: i64,
) -> Result<String, JwtError> {
    let claims = Claims {
        jti: jti(now, &operator.public_key()),
        iat: now,
        iss: operator.public_key(),
        sub: operator.public_key(),
        name: name.into(),
        nats: NatsClaims {
            kind: "operator".into(),
            version: 2,
            system_account: Some(system_account.into()),
            ..NatsClaims::default()
        },
        ..Claims::default()
    };
    encode(&claims, operator)
}

/// An account JWT issued by `operator`, with JetStream (unlimited storage) or not.
pub fn account_jwt(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
    now: i64,
) -> Result<String, JwtError> {
    account_jwt_with(operator, account, name, jetstream, Default::default(), now)
}

/// An account JWT as [`account_jwt`], with `revocations` (user key or `*` → the time
/// before which their JWTs no longer count).
pub fn account_jwt_with(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
    revocations: std::collections::BTreeMap<String, i64>,
    now: i64,
) -> Result<String, JwtError> {
    let storage = if jetstream { -1 } else { 0 };
    let claims = Claims {
        jti: jti(now, &account.public_key()),
        iat: now,
        iss: operator.public_key(),
        sub: account.public_key(),
        name: name.into(),
        nats: NatsClaims {
            kind: "account".into(),
            version: 2,
            limits: Some(AccountLimits {
                mem_storage: storage,
                disk_storage: storage,
                ..AccountLimits::default()
            }),
            revocations,
            ..NatsClaims::default()
        },
        ..Claims::default()
    };
    encode(&claims, operator)
}

/// A user JWT issued by `account` for `user`.
pub fn user_jwt(
    account: &nkeys::KeyPair,
    user: &nkeys::KeyPair,
    spec: &UserSpec,
    now: i64,
) -> Result<String, JwtError> {
    let rules = |allow: &[String]| {
        (!allow.is_empty()).then(|| PermissionSpec {
            allow: allow.to_vec(),
            deny: Vec::new(),
        })
    };
    let claims = Claims {
        jti: jti(now, &user.public_key()),
        iat: now,
        iss: account.public_key(),
        sub: user.public_key(),
        name: spec.name.clone(),
        exp: spec.expires_in.map(|s| now + s),
        nats: NatsClaims {
            kind: "user".into(),
            version: 2,
            publish: rules(&spec.publish),
            subscribe: rules(&spec.subscribe),
            bearer_token: spec.bearer,
            allowed_connection_types: spec.connection_types.clone(),
            subs: Some(-1),
            data: Some(-1),
            payload: Some(-1),
            ..NatsClaims::default()
        },
        ..Claims::default()
    };
    encode(&claims, account)
}

/// A `.creds` file, in the format `nsc` writes and the clients parse.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
************************* IMPORTANT *************************\n\
NKEY Seed printed below can be used to sign and prove identity.\n\
NKEYs are sensitive and should be treated as secrets.\n\n\
-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
*************************************************************\n"
    )
}

/// The user JWT and seed of a `.creds` file (`None` when a marker is missing): the
/// line after each `BEGIN` marker, as the clients read it.
pub fn parse_creds(text: &str) -> Option<(String, String)> {
    let after = |marker: &str| {
        text.split(marker)
            .nth(1)
            .and_then(|t| t.lines().nth(1))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    };
    Some((
        after("BEGIN NATS USER JWT-----")?,
        after("BEGIN USER NKEY SEED-----")?,
    ))
}

/// The resolver a config block names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    Memory,
    /// Account JWTs stored in `dir`, updated by pushes.
    Full {
        dir: String,
    },
}

/// The part of a node's config that trusts this operator: `operator_path` is where
/// the operator JWT lies (relative to the node's config file, or absolute).
pub fn config_block(
    operator_path: &str,
    system_account: &str,
    resolver: &Resolver,
    accounts: &[(String, String)],
) -> String {
    let resolver = match resolver {
        Resolver::Memory => "\"MEMORY\"".to_string(),
        Resolver::Full { dir } => format!("{{ type = \"full\", dir = {} }}", toml_string(dir)),
    };
    let mut out = format!(
        "operator = {}\nsystem_account = \"{system_account}\"\nresolver = {resolver}\n\n[resolver_preload]\n",
        toml_string(operator_path)
    );
    for (key, jwt) in accounts {
        out.push_str(&format!("{key} = \"{jwt}\"\n"));
    }
    out
}

fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_minted_is_trusted_and_its_creds_parse() {
        let (op, sys, app, user) = (
            nkeys::KeyPair::new_operator(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_user(),
        );
        let now = 1_800_000_000;
        let op_jwt = operator_jwt(&op, "OP", &sys.public_key(), now).expect("operator");
        let preload = [
            (
                sys.public_key(),
                account_jwt(&op, &sys, "SYS", false, now).expect("sys"),
            ),
            (
                app.public_key(),
                account_jwt(&op, &app, "APP", true, now).expect("app"),
            ),
        ];
        let block = config_block(
            "op.jwt",
            &sys.public_key(),
            &Resolver::Full { dir: "jwt".into() },
            &preload,
        );
        let mut text = format!("listen = \"127.0.0.1:0\"\n{block}");
        text = text.replace("operator = \"op.jwt\"", &format!("operator = \"{op_jwt}\""));
        let config = crate::Config::from_toml(&text, std::path::Path::new("t.toml"))
            .expect("the config block is valid");
        let trust = config.trust().expect("trust").expect("operator mode");
        assert_eq!(trust.system_account(), Some(sys.public_key().as_str()));
        let spec = UserSpec {
            name: "web".into(),
            publish: vec!["chat.>".into()],
            expires_in: Some(60),
            connection_types: vec!["WEBSOCKET".into()],
            ..UserSpec::default()
        };
        let jwt = user_jwt(&app, &user, &spec, now).expect("user");
        let verified = trust.verify_user(&jwt, now + 1).expect("trusted");
        assert_eq!(verified.expires, Some(now + 60));
        assert_eq!(verified.connection_types, ["WEBSOCKET"]);
        assert!(trust.verify_user(&jwt, now + 60).is_err(), "expired");

        let seed = user.seed().expect("seed");
        let file = creds(&jwt, &seed);
        // What the clients look for: the JWT and the seed after their markers.
        assert_eq!(parse_creds(&file), Some((jwt.clone(), seed.clone())));
        assert_eq!(parse_creds("no markers"), None);
    }
}
