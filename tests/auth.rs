//! Client authentication and permissions, as real clients see them: the official Rust
//! client with passwords, bcrypt hashes, tokens and nkeys, and byte scripts sent both
//! to meshbroker and to the reference server configured alike, compared byte for byte.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::ConnectErrorKind;
use bytes::Bytes;
use futures::StreamExt;

use common::scripts::{self, Script};
use common::{raw_login, settle, start, start_reference, test_config, Raw, TempDir};
use meshbroker::Config;

const WAIT: Duration = Duration::from_secs(10);

/// The same users in both servers' config languages.
const USERS_TOML: &str = r#"
[[authorization.users]]
user = "alice"
password = "secret"
[authorization.users.permissions]
publish = { allow = ["orders.>", "_INBOX.>"], deny = ["orders.secret"] }
subscribe = { allow = ["orders.>", "jobs.> workers", "_INBOX.>"], deny = ["orders.hidden"] }

[[authorization.users]]
user = "svc"
password = "svc"
[authorization.users.permissions]
subscribe = ["svc.>"]
allow_responses = true

[[authorization.users]]
user = "guest"
password = "guest"
[authorization.users.permissions]
publish = ["public.>"]
subscribe = ["public.>"]
"#;

const USERS_REFERENCE: &str = r#"
authorization {
  users = [
    { user: alice, password: secret, permissions: {
        publish: { allow: ["orders.>", "_INBOX.>"], deny: ["orders.secret"] }
        subscribe: { allow: ["orders.>", "jobs.> workers", "_INBOX.>"], deny: ["orders.hidden"] } } }
    { user: svc, password: svc, permissions: { subscribe: ["svc.>"], allow_responses: true } }
    { user: guest, password: guest, permissions: { publish: ["public.>"], subscribe: ["public.>"] } }
  ]
}
"#;

fn config_from(text: &str) -> Config {
    let mut config = Config::from_toml(text, std::path::Path::new("auth-test.toml"))
        .expect("test config is valid");
    let base = test_config();
    config.listen = base.listen;
    config.jetstream.enabled = false;
    config
}

/// Starts the reference with `conf` written to a file in `dir`.
fn reference_with(dir: &TempDir, conf: &str) -> Option<(common::Child, SocketAddr)> {
    let path = dir.0.join("nats-server.conf");
    std::fs::write(&path, conf).expect("write reference config");
    start_reference(&["-c", path.to_str().expect("utf-8 path")])
}

const ALICE: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"alice\",\"pass\":\"secret\"}\r\n";

macro_rules! script {
    ($name:literal, [$($chunk:expr),* $(,)?], $expect:expr, $closed:expr) => {
        Script { name: $name, chunks: &[$($chunk),*], expect: $expect, closed: $closed }
    };
}

const USER_SCRIPTS: &[Script] = &[
    script!("PING before CONNECT", [b"PING\r\n"], b"-ERR 'Authorization Violation'\r\n", true),
    script!("SUB before CONNECT", [b"SUB foo 1\r\n"], b"-ERR 'Authorization Violation'\r\n", true),
    script!("no credentials", [b"CONNECT {\"verbose\":false}\r\n", b"PING\r\n"],
        b"-ERR 'Authorization Violation'\r\n", true),
    script!("wrong password", [b"CONNECT {\"verbose\":false,\"user\":\"alice\",\"pass\":\"nope\"}\r\n", b"PING\r\n"],
        b"-ERR 'Authorization Violation'\r\n", true),
    script!("unknown user", [b"CONNECT {\"verbose\":false,\"user\":\"eve\",\"pass\":\"secret\"}\r\n", b"PING\r\n"],
        b"-ERR 'Authorization Violation'\r\n", true),
    script!("token where users are configured", [b"CONNECT {\"verbose\":false,\"auth_token\":\"secret\"}\r\n", b"PING\r\n"],
        b"-ERR 'Authorization Violation'\r\n", true),
    script!("right password", [ALICE, b"PING\r\n"], b"PONG\r\n", false),
    script!("publish outside the allow list", [ALICE, b"PUB other 2\r\nhi\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Publish to \"other\"'\r\nPONG\r\n", false),
    script!("publish deny beats allow", [ALICE, b"SUB orders.> 1\r\nPUB orders.secret 2\r\nhi\r\nPUB orders.new 2\r\nok\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Publish to \"orders.secret\"'\r\nMSG orders.new 1 2\r\nok\r\nPONG\r\n", false),
    script!("subscribe outside the allow list", [ALICE, b"SUB other 1\r\nSUB > 2\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Subscription to \"other\"'\r\n-ERR 'Permissions Violation for Subscription to \">\"'\r\nPONG\r\n", false),
    script!("an empty token is outside every allow entry", [ALICE, b"SUB orders..x 1\r\nSUB orders. 2\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Subscription to \"orders..x\"'\r\n-ERR 'Permissions Violation for Subscription to \"orders.\"'\r\nPONG\r\n", false),
    script!("subscribe deny", [ALICE, b"SUB orders.hidden 1\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Subscription to \"orders.hidden\"'\r\nPONG\r\n", false),
    script!("queue permissions", [ALICE, b"SUB jobs.a workers 1\r\nSUB jobs.a others 2\r\nSUB jobs.a 3\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Subscription to \"jobs.a\" using queue \"others\"'\r\n-ERR 'Permissions Violation for Subscription to \"jobs.a\"'\r\nPONG\r\n", false),
    script!("wildcard subscription skips denied subjects", [ALICE, b"SUB orders.* 1\r\nPUB orders.hidden 1\r\na\r\nPUB orders.new 1\r\nb\r\nPING\r\n"],
        b"MSG orders.new 1 1\r\nb\r\nPONG\r\n", false),
    script!("a refused SUB gets no +OK", [b"CONNECT {\"verbose\":true,\"user\":\"alice\",\"pass\":\"secret\"}\r\n", b"SUB other 1\r\nPING\r\n"],
        b"+OK\r\n-ERR 'Permissions Violation for Subscription to \"other\"'\r\nPONG\r\n", false),
    script!("a refused sid stays free", [ALICE, b"SUB other 1\r\nSUB orders.x 1\r\nPUB orders.x 1\r\na\r\nPING\r\n"],
        b"-ERR 'Permissions Violation for Subscription to \"other\"'\r\nMSG orders.x 1 1\r\na\r\nPONG\r\n", false),
];

const NO_AUTH_USER_SCRIPTS: &[Script] = &[
    script!("PING before CONNECT is the guest", [b"PING\r\n"], b"PONG\r\n", false),
    script!("no credentials is the guest", [b"CONNECT {\"verbose\":false}\r\n", b"SUB public.x 1\r\nPUB public.x 1\r\na\r\nPUB private 1\r\nb\r\nPING\r\n"],
        b"MSG public.x 1 1\r\na\r\n-ERR 'Permissions Violation for Publish to \"private\"'\r\nPONG\r\n", false),
    script!("wrong password is not the guest", [b"CONNECT {\"verbose\":false,\"user\":\"alice\",\"pass\":\"x\"}\r\n", b"PING\r\n"],
        b"-ERR 'Authorization Violation'\r\n", true),
];

/// Runs `scripts` against a fresh meshbroker on `ours` and against the reference on
/// `theirs`; every answer must be the expected one, and the reference's too.
fn compare(scripts: &[Script], ours: &Config, theirs: Option<SocketAddr>) {
    let mut failures = Vec::new();
    for script in scripts {
        let node = start(ours.clone());
        let (bytes, closed) = scripts::run(node.client_addr(), script);
        let mut sides = vec![("meshbroker", bytes, closed)];
        if let Some(addr) = theirs {
            let (bytes, closed) = scripts::run(addr, script);
            sides.push(("reference", bytes, closed));
        }
        for (side, bytes, closed) in sides {
            if bytes != script.expect || closed != script.closed {
                failures.push(format!(
                    "{} ({side}): got {:?} closed={closed}, expected {:?} closed={}",
                    script.name,
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(script.expect),
                    script.closed
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn users_and_permissions_answer_as_the_reference() {
    let dir = TempDir::new("auth-ref");
    let reference = reference_with(&dir, USERS_REFERENCE);
    compare(
        USER_SCRIPTS,
        &config_from(USERS_TOML),
        reference.as_ref().map(|r| r.1),
    );
}

#[test]
fn no_auth_user_answers_as_the_reference() {
    let dir = TempDir::new("auth-ref-guest");
    let reference = reference_with(&dir, &format!("no_auth_user: guest\n{USERS_REFERENCE}"));
    let ours = config_from(&format!(
        "[authorization]\nno_auth_user = \"guest\"\n{USERS_TOML}"
    ));
    compare(NO_AUTH_USER_SCRIPTS, &ours, reference.as_ref().map(|r| r.1));
}

/// The INFO line's `auth_required`, and the nonce only where nkeys are configured.
#[test]
fn info_announces_auth() {
    let info = |config: Config| -> serde_json::Value {
        let node = start(config);
        let mut raw = Raw {
            stream: std::net::TcpStream::connect(node.client_addr()).expect("connect"),
            received: Vec::new(),
        };
        assert!(raw.read_until(b"\r\n", WAIT));
        let text = raw.text();
        let json = text
            .strip_prefix("INFO ")
            .and_then(|t| t.split("\r\n").next())
            .expect("INFO line");
        serde_json::from_str(json).expect("INFO json")
    };
    let open = info(test_config());
    assert_eq!(open.get("auth_required"), None);
    let users = info(config_from(USERS_TOML));
    assert_eq!(users["auth_required"], true);
    assert_eq!(users.get("nonce"), None, "no nkeys, no nonce");
    let guest = info(config_from(&format!(
        "[authorization]\nno_auth_user = \"guest\"\n{USERS_TOML}"
    )));
    assert_eq!(guest.get("auth_required"), None, "as the reference");
    let key = nkeys::KeyPair::new_user();
    let nkey = info(config_from(&format!(
        "[[authorization.users]]\nnkey = \"{}\"\n",
        key.public_key()
    )));
    let nonce = nkey["nonce"].as_str().expect("a nonce for nkey users");
    assert_eq!(nonce.len(), 15, "{nonce}");
}

/// A connection that never sends CONNECT is closed after the auth timeout, with the
/// reference's error.
#[test]
fn silent_connections_time_out() {
    let dir = TempDir::new("auth-timeout");
    let reference = reference_with(
        &dir,
        &format!("authorization {{ timeout: 0.5 }}\n{USERS_REFERENCE}"),
    );
    let ours = config_from(&format!(
        "[authorization]\ntimeout = \"500ms\"\n{USERS_TOML}"
    ));
    let node = start(ours);
    let mut addrs = vec![node.client_addr()];
    addrs.extend(reference.as_ref().map(|r| r.1));
    for addr in addrs {
        let mut raw = Raw::connect(addr);
        let started = std::time::Instant::now();
        assert!(raw.read_to_close(WAIT), "{addr}: closed");
        assert_eq!(raw.text(), "-ERR 'Authentication Timeout'\r\n", "{addr}");
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_plain_and_bcrypt_with_the_rust_client() {
    let hash = bcrypt::hash("s3cret", 6).expect("hash");
    let node = start(config_from(&format!(
        "[[authorization.users]]\nuser = \"alice\"\npassword = \"plain\"\n\
         [[authorization.users]]\nuser = \"bob\"\npassword = \"{hash}\"\n"
    )));
    let url = node.client_url();
    for (user, pass) in [("alice", "plain"), ("bob", "s3cret")] {
        let client = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        let mut sub = client.subscribe("hello").await.unwrap();
        settle(&client).await;
        client.publish("hello", "world".into()).await.unwrap();
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, Bytes::from("world"));
    }
    for (user, pass) in [("alice", "wrong"), ("bob", "plain"), ("carol", "s3cret")] {
        let refused = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
            .connect(&url)
            .await;
        let Err(refused) = refused else {
            panic!("{user}/{pass} was let in");
        };
        assert_eq!(
            refused.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "{user}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_nkey_with_the_rust_client() {
    let node = start(config_from("[authorization]\ntoken = \"t0ken\"\n"));
    let client = async_nats::ConnectOptions::with_token("t0ken".into())
        .connect(node.client_url())
        .await
        .expect("token accepted");
    client.flush().await.unwrap();
    let refused = async_nats::ConnectOptions::with_token("nope".into())
        .connect(node.client_url())
        .await
        .expect_err("wrong token refused");
    assert_eq!(refused.kind(), ConnectErrorKind::AuthorizationViolation);

    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().expect("seed");
    let node = start(config_from(&format!(
        "[[authorization.users]]\nnkey = \"{}\"\n",
        key.public_key()
    )));
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .connect(node.client_url())
        .await
        .expect("nkey accepted");
    let mut sub = client.subscribe("signed").await.unwrap();
    settle(&client).await;
    client.publish("signed", "yes".into()).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, Bytes::from("yes"));
    let stranger = nkeys::KeyPair::new_user().seed().expect("seed");
    let refused = async_nats::ConnectOptions::with_nkey(stranger)
        .connect(node.client_url())
        .await
        .expect_err("unknown nkey refused");
    assert_eq!(refused.kind(), ConnectErrorKind::AuthorizationViolation);
}

/// `allow_responses`: a service that may publish nothing but its own inbox answers
/// each request it received once; other subjects and second answers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_may_answer_each_request_once() {
    let node = start(config_from(
        r#"
[[authorization.users]]
user = "svc"
password = "svc"
[authorization.users.permissions]
publish = ["_INBOX.svc.>"]
subscribe = ["svc.>", "_INBOX.svc.>"]
allow_responses = true

[[authorization.users]]
user = "app"
password = "app"
"#,
    ));
    let url = node.client_url();
    let svc = async_nats::ConnectOptions::with_user_and_password("svc".into(), "svc".into())
        .custom_inbox_prefix("_INBOX.svc")
        .connect(&url)
        .await
        .unwrap();
    let app = async_nats::ConnectOptions::with_user_and_password("app".into(), "app".into())
        .connect(&url)
        .await
        .unwrap();
    let mut requests = svc.subscribe("svc.echo").await.unwrap();
    settle(&svc).await;
    let mut answers = app.subscribe("answers.>").await.unwrap();
    settle(&app).await;

    for n in 0..3 {
        let reply = format!("answers.{n}");
        app.publish_with_reply("svc.echo", reply.clone(), format!("q{n}").into())
            .await
            .unwrap();
        let request = tokio::time::timeout(WAIT, requests.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request.reply.as_deref(), Some(reply.as_str()));
        // Twice to the reply subject: only the first may go.
        for attempt in ["first", "second"] {
            svc.publish(reply.clone(), attempt.into()).await.unwrap();
        }
        // Never received as a reply: refused.
        svc.publish("answers.unasked", "no".into()).await.unwrap();
        settle(&svc).await;
        let answer = tokio::time::timeout(WAIT, answers.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (answer.subject.as_str(), &answer.payload[..]),
            (reply.as_str(), &b"first"[..])
        );
    }
    settle(&app).await;
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), answers.next()).await {
        panic!("refused answer delivered: {} {:?}", m.subject, m.payload);
    }
}

/// A reload applies at once: a changed password closes the connections that used the
/// old one, shrunk permissions drop the subscriptions they no longer allow and refuse
/// publishes, and new connections need the new password.
#[test]
fn reload_applies_passwords_and_permissions_to_live_connections() {
    let before = r#"
[[authorization.users]]
user = "alice"
password = "old"

[[authorization.users]]
user = "bob"
password = "bob"

[[authorization.users]]
user = "carol"
password = "carol"
"#;
    let after = r#"
[[authorization.users]]
user = "alice"
password = "new"

[[authorization.users]]
user = "carol"
password = "carol"

[[authorization.users]]
user = "bob"
password = "bob"
[authorization.users.permissions]
publish = ["allowed"]
subscribe = { allow = ["allowed", "news.*"], deny = ["news.secret"] }
"#;
    let node = start(config_from(before));
    let addr = node.client_addr();
    let mut alice = raw_login(addr, "alice", "old");
    assert!(alice.read_until(b"PONG\r\n", WAIT));
    alice.received.clear();
    let mut bob = raw_login(addr, "bob", "bob");
    bob.send(b"SUB secret 1\r\nSUB allowed 2\r\nSUB news.* 3\r\nPING\r\n");
    assert!(bob.read_until(b"PONG\r\nPONG\r\n", WAIT));
    bob.received.clear();

    node.reload(config_from(after)).expect("reload accepted");

    assert!(
        alice.read_to_close(WAIT),
        "alice's old password no longer passes"
    );
    assert_eq!(alice.text(), "-ERR 'Authorization Violation'\r\n");
    assert!(bob.read_until(b"(sid \"1\")'\r\n", WAIT), "{}", bob.text());
    assert_eq!(
        bob.text(),
        "-ERR 'Permissions Violation for Subscription to \"secret\" (sid \"1\")'\r\n"
    );
    bob.received.clear();
    bob.send(b"PUB secret 1\r\na\r\nPUB allowed 1\r\nb\r\nPING\r\n");
    assert!(bob.read_until(b"PONG\r\n", WAIT));
    assert_eq!(
        bob.text(),
        "-ERR 'Permissions Violation for Publish to \"secret\"'\r\nMSG allowed 2 1\r\nb\r\nPONG\r\n"
    );

    // bob's wildcard subscription stays, and from now on skips the denied subject.
    let mut carol = raw_login(addr, "carol", "carol");
    carol.send(b"PUB news.secret 1\r\ns\r\nPUB news.ok 1\r\nk\r\nPING\r\n");
    assert!(carol.read_until(b"PONG\r\nPONG\r\n", WAIT));
    bob.received.clear();
    bob.send(b"PING\r\n");
    assert!(bob.read_until(b"PONG\r\n", WAIT));
    assert_eq!(bob.text(), "MSG news.ok 3 1\r\nk\r\nPONG\r\n");

    let mut old = raw_login(addr, "alice", "old");
    assert!(old.read_to_close(WAIT));
    assert_eq!(old.text(), "-ERR 'Authorization Violation'\r\n");
    let mut new = raw_login(addr, "alice", "new");
    assert!(new.read_until(b"PONG\r\n", WAIT));

    // An invalid authorization section is refused and the node keeps the old one.
    let broken = config_from("");
    let mut broken = broken;
    broken.authorization.no_auth_user = Some("nobody".into());
    assert!(node.reload(broken).is_err());
    let mut still = raw_login(addr, "alice", "new");
    assert!(still.read_until(b"PONG\r\n", WAIT));
}

#[test]
fn bad_authorization_configs_name_the_key() {
    for (text, key) in [
        ("[authorization]\nuser = \"a\"\n", "authorization.password"),
        ("[authorization]\ntoken = \"t\"\n[[authorization.users]]\nuser = \"a\"\n", "authorization.token"),
        ("[[authorization.users]]\nnkey = \"UNOTAKEY\"\n", "authorization.users.nkey"),
        ("[[authorization.users]]\nuser = \"a\"\n[authorization.users.permissions]\nsubscribe = [\"a b c\"]\n", "authorization.users.permissions"),
    ] {
        let e = Config::from_toml(text, std::path::Path::new("node.toml"))
            .expect_err(text)
            .to_string();
        assert!(e.starts_with("node.toml: key `") && e.contains(key), "{text}: {e}");
    }
}
