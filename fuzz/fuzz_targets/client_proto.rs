//! The client protocol on arbitrary bytes. The parser, fed whole and in arbitrary
//! chunks, never panics and every chunking yields the same operations and the same
//! error. The connection state machine, driven with those operations (credentials
//! checked for real, a clock that moves), never panics and keeps its rules: a closing
//! error is a close and nothing follows it, a refused subject is never published or
//! subscribed to, and never more subscriptions than the limit.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meshbroker::auth::Authenticator;
use meshbroker::config::{
    AuthorizationConfig, PermissionsConfig, Secret, SubjectPermissionConfig, UserConfig,
};
use meshbroker::connection::{Action, Connection, Limits, Reply, Step};
use meshbroker::proto::{Op, Parsed, Parser};
use meshbroker::subject;

/// Users `open` (no password needed: it is the no-auth user) and `u`/`p`, neither of
/// whom may publish or subscribe under `secret.>`.
fn authenticator() -> Arc<Authenticator> {
    let denied = || {
        Some(SubjectPermissionConfig::Rules {
            allow: None,
            deny: vec!["secret.>".into()],
        })
    };
    let perms = PermissionsConfig {
        publish: denied(),
        subscribe: denied(),
        allow_responses: None,
    };
    let user = |name: &str, pass: &str| UserConfig {
        user: Some(name.into()),
        password: Some(Secret(pass.into())),
        permissions: Some(perms.clone()),
        ..Default::default()
    };
    let config = AuthorizationConfig {
        users: vec![user("u", "p"), user("open", "x")],
        no_auth_user: Some("open".into()),
        ..Default::default()
    };
    Arc::new(Authenticator::new(&config, Duration::from_secs(2)).expect("authenticator"))
}

const MAX_SUBS: usize = 4;

/// Drives a connection with the operations in `input`; checks its rules.
fn drive(input: &[u8]) {
    let auth = authenticator();
    let start = Instant::now();
    let limits = Limits {
        max_subscriptions: MAX_SUBS,
        max_payload: 4096,
        ping_interval: Duration::from_secs(1),
        max_pings_out: 2,
    };
    let mut conn = Connection::new(auth.clone(), limits, String::new(), start);
    let parser = Parser::new(256, 4096);
    let mut rest = input;
    let mut secs = 0u64;
    while let Ok(Parsed::Op(op, n)) = parser.parse(rest) {
        rest = &rest[n..];
        secs += 1;
        let now = start + Duration::from_millis(secs * 300);
        conn.received(now);
        let is_ping = matches!(op, Op::Ping);
        let step = conn.handle(op);
        if !check(&step, conn.subscriptions()) {
            return;
        }
        if let Some(Action::Authenticate(opts)) = &step.action {
            let grant = auth.authenticate(opts, conn.nonce(), 0);
            match conn.authenticated(grant) {
                Ok(replies) => check_replies(replies.iter()),
                Err(e) => {
                    assert!(e.closes(), "a refused CONNECT closes");
                    return;
                }
            }
        }
        if step.sync || is_ping {
            conn.synced();
        }
        if let Some(tick) = conn.tick(now) {
            if !check(&tick, conn.subscriptions()) {
                return;
            }
        }
    }
}

/// Checks one step; `false` when it closes the connection.
fn check(step: &Step<'_>, subs: usize) -> bool {
    assert!(subs <= MAX_SUBS, "{subs} subscriptions");
    check_replies(step.before.iter());
    check_replies(step.after.iter());
    match &step.action {
        Some(Action::Close(e)) => {
            assert!(step.after.is_empty(), "nothing after a close: {step:?}");
            assert!(e.closes() || e.text().is_none(), "a close for {e:?}");
            false
        }
        Some(Action::Publish(p)) => {
            assert!(
                !subject::matches(b"secret.>", p.subject),
                "published to a refused subject"
            );
            true
        }
        // A wildcard that also covers refused subjects is allowed (deliveries are
        // filtered); the refused subjects themselves are not.
        Some(Action::Subscribe { subject: s, .. }) => {
            assert!(
                !subject::matches(b"secret.>", s),
                "subscribed to a refused subject"
            );
            true
        }
        _ => true,
    }
}

fn check_replies(replies: impl Iterator<Item = Reply>) {
    for r in replies {
        if let Reply::Err(e) = r {
            assert!(
                !e.closes(),
                "a closing error is a close, not a reply: {e:?}"
            );
        }
    }
}

/// Parses `input` fed `step` bytes at a time; returns the operations (as text) and
/// the error that stopped it, if any.
fn run(parser: &Parser, input: &[u8], step: usize) -> (Vec<String>, Option<String>) {
    let mut ops = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match parser.parse(&buf) {
            Ok(Parsed::Op(op, n)) => {
                assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                ops.push(format!("{op:?}"));
                buf.drain(..n);
            }
            Ok(Parsed::Incomplete { .. }) => {
                if fed == input.len() {
                    return (ops, None);
                }
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
            Err(e) => return (ops, Some(format!("{e:?}"))),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first bytes choose the chunking; the rest is the protocol stream.
    let step = usize::from(data[0]) + 1;
    let input = &data[1..];
    let parser = Parser::new(256, 4096);
    let whole = run(&parser, input, input.len());
    let chunked = run(&parser, input, step);
    // An error can surface earlier when the bytes that prove it arrive first (a bad
    // operation name), but never differently: same operations up to it, same error.
    assert_eq!(whole.0, chunked.0, "operations differ with chunking");
    assert_eq!(whole.1, chunked.1, "errors differ with chunking");
    drive(input);
});
