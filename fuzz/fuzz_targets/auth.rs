//! Client authentication and permissions on arbitrary input: CONNECT bodies, nonces
//! and signatures against users, a token and nkeys never panic and never let a wrong
//! secret in; compiled permissions agree with the naive reading of their rules for
//! literal subjects; origin parsing and the origin policy never panic, and an origin
//! taken from the allowlist is always accepted.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::auth::{Authenticator, Permissions};
use meshbroker::config::{AuthorizationConfig, PermissionsConfig, SubjectPermissionConfig};
use meshbroker::proto::ConnectOptions;
use meshbroker::subject;
use meshbroker::websocket::OriginPolicy;

#[derive(Arbitrary, Debug)]
struct Input {
    connect: String,
    nonce: String,
    allow: Option<Vec<u8>>,
    deny: Vec<u8>,
    subject: Vec<u8>,
    origins: Vec<String>,
    origin: String,
    host: String,
}

/// Patterns from a small alphabet, so that matches happen often.
fn pattern(n: u8) -> String {
    const TOKENS: [&str; 6] = ["a", "b", "*", ">", "c", "a"];
    let len = 1 + (n % 3) as usize;
    (0..len)
        .map(|i| TOKENS[((n as usize) >> i) % TOKENS.len()])
        .collect::<Vec<_>>()
        .join(".")
}

/// A user nkey made once per run (its seed never leaves this process).
fn nkey() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| nkeys::KeyPair::new_user().public_key())
}

fuzz_target!(|input: Input| {
    // Authentication: nothing but the right secret gets in.
    let config: AuthorizationConfig = toml_config();
    let auth = Authenticator::new(&config, std::time::Duration::from_secs(2)).expect("valid");
    if let Some(opts) = ConnectOptions::parse(input.connect.as_bytes()) {
        if let Ok(grant) = auth.authenticate(&opts, &input.nonce, 0) {
            let user = grant.user.as_deref();
            let right = match user {
                Some("alice") => opts.pass.as_deref() == Some("pw"),
                // No valid signature can be made without the seed.
                _ => false,
            };
            assert!(right, "let in as {user:?} with {opts:?}");
        }
    }

    // Permissions: for a literal subject, the compiled rules agree with the rules read
    // naively (allow list absent or matching, no deny matching).
    let allow: Option<Vec<String>> = input
        .allow
        .as_ref()
        .map(|a| a.iter().map(|&n| pattern(n)).collect());
    let deny: Vec<String> = input.deny.iter().map(|&n| pattern(n)).collect();
    let rule = SubjectPermissionConfig::Rules {
        allow: allow.clone(),
        deny: deny.clone(),
    };
    let perms = Permissions::from_config(&PermissionsConfig {
        publish: Some(rule.clone()),
        subscribe: Some(rule),
        allow_responses: None,
    })
    .expect("patterns from the alphabet are valid");
    let literal: String = input
        .subject
        .iter()
        .take(4)
        .map(|&b| ["a", "b", "c", "d"][(b % 4) as usize])
        .collect::<Vec<_>>()
        .join(".");
    if !literal.is_empty() {
        let s = literal.as_bytes();
        let naive = allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|p| subject::matches(p.as_bytes(), s)))
            && !deny.iter().any(|p| subject::matches(p.as_bytes(), s));
        assert_eq!(perms.can_publish(s), naive, "publish {literal}");
        assert_eq!(perms.can_subscribe(s, None), naive, "subscribe {literal}");
    }
    let _ = perms.can_subscribe(&input.subject, Some(b"q"));
    let _ = perms.delivery_deny(&input.subject);

    // Origins.
    if let Ok(policy) = OriginPolicy::new(&input.origins) {
        let _ = policy.check(Some(&input.origin), Some(&input.host), false);
        for origin in &input.origins {
            assert!(
                policy.check(Some(origin), Some(&input.host), true).is_ok(),
                "{origin} is in the list"
            );
        }
    }
});

fn toml_config() -> AuthorizationConfig {
    let mut config = AuthorizationConfig::default();
    config.users = vec![
        meshbroker::config::UserConfig {
            user: Some("alice".into()),
            password: Some(meshbroker::config::Secret("pw".into())),
            ..Default::default()
        },
        meshbroker::config::UserConfig {
            nkey: Some(nkey().into()),
            ..Default::default()
        },
    ];
    config
}
