//! Accounts as the official Rust client sees them: each account its own subject space,
//! crossed only by what one exports and another imports (a stream, a service with its
//! responses), JetStream for the account that has it and `10039` for the others. The
//! same scenario runs against meshbroker and against nats-server 2.15.1 configured
//! alike, and what the clients saw must be the same; then across two routed nodes.

mod common;

use std::time::Duration;

use futures::StreamExt;

use common::{start, start_reference, test_config, TempDir};
use meshbroker::Config;

const WAIT: Duration = Duration::from_secs(10);

/// Three accounts: A exports a stream and two services, B imports them (the stream
/// under another subject, one service under another name), C has JetStream.
const ACCOUNTS_TOML: &str = r#"
[accounts.A]
users = [{ user = "a", password = "a" }]
exports = [{ stream = "ev.>" }, { service = "help" }, { service = "svc.*", response_type = "stream" }]

[accounts.B]
users = [{ user = "b", password = "b" }]
imports = [
  { stream = { account = "A", subject = "ev.>" }, to = "froma.ev.>" },
  { service = { account = "A", subject = "help" }, to = "ahelp" },
  { service = { account = "A", subject = "svc.x" } },
]

[accounts.C]
users = [{ user = "c", password = "c" }]
jetstream = true
"#;

const ACCOUNTS_REFERENCE: &str = r#"
accounts {
  A: {
    users: [{user: a, password: a}]
    exports: [{stream: "ev.>"}, {service: "help"}, {service: "svc.*", response_type: stream}]
  }
  B: {
    users: [{user: b, password: b}]
    imports: [
      {stream: {account: A, subject: "ev.>"}, to: "froma.ev.>"}
      {service: {account: A, subject: "help"}, to: "ahelp"}
      {service: {account: A, subject: "svc.x"}}
    ]
  }
  C: { users: [{user: c, password: c}], jetstream: enabled }
}
"#;

fn meshbroker_config(dir: &TempDir, extra: &str) -> Config {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{extra}\n[jetstream]\nstore_dir = \"{}\"\n{ACCOUNTS_TOML}",
        dir.0.join("js").display()
    );
    Config::from_toml(&text, std::path::Path::new("accounts-test.toml")).expect("valid config")
}

async fn login(url: &str, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{user} connects to {url}: {e}"))
}

async fn next(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: subscription ended"))
}

fn text(m: &async_nats::Message) -> String {
    format!("{} {}", m.subject, String::from_utf8_lossy(&m.payload))
}

/// The error code in a JetStream API reply, or "ok" when it has none.
fn api_code(m: &async_nats::Message) -> String {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("API reply is JSON");
    match v.get("error") {
        Some(e) => format!("{} {} {}", e["code"], e["err_code"], e["description"]),
        None => format!("ok {}", v["type"]),
    }
}

/// Runs the scenario; `a_url`/`b_url`/`c_url` may be different nodes of one cluster.
/// Returns, in order, what each client saw.
async fn observe(a_url: &str, b_url: &str, c_url: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let (a, b, c) = (
        login(a_url, "a").await,
        login(b_url, "b").await,
        login(c_url, "c").await,
    );
    let mut a_ev = a.subscribe("ev.>").await.expect("sub");
    let mut b_ev = b.subscribe("ev.>").await.expect("sub");
    let mut b_from_a = b.subscribe("froma.ev.>").await.expect("sub");
    let mut c_ev = c.subscribe("ev.>").await.expect("sub");
    for client in [&a, &b, &c] {
        client.flush().await.expect("flush");
    }
    // Interest crosses routes in the cluster run: wait until A's stream reaches B.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        a.publish("ev.probe", "p".into()).await.expect("publish");
        a.flush().await.expect("flush");
        let got = tokio::time::timeout(Duration::from_millis(200), b_from_a.next()).await;
        if let Ok(Some(m)) = got {
            assert_eq!(m.subject.as_str(), "froma.ev.probe");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream import never delivered"
        );
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), a_ev.next()).await {}

    // Each account's own `ev.one` stays in it; A's reaches B under the import's name.
    a.publish("ev.one", "from a".into()).await.expect("publish");
    a.flush().await.expect("flush");
    b.publish("ev.two", "from b".into()).await.expect("publish");
    b.flush().await.expect("flush");
    c.publish("ev.three", "from c".into())
        .await
        .expect("publish");
    c.flush().await.expect("flush");
    seen.push(format!("a_ev: {}", text(&next(&mut a_ev, "a's own").await)));
    seen.push(format!(
        "b_from_a: {}",
        text(&next(&mut b_from_a, "import").await)
    ));
    // B's own subscription gets B's message first (not A's), C's gets C's.
    seen.push(format!("b_ev: {}", text(&next(&mut b_ev, "b's own").await)));
    seen.push(format!("c_ev: {}", text(&next(&mut c_ev, "c's own").await)));

    // A serves `help` (singleton: one response gets through) and `svc.x` (stream),
    // answering every request twice and noting who asked the first time.
    let svc = a.subscribe("svc.*").await.expect("sub");
    let help = a.subscribe("help").await.expect("sub");
    a.flush().await.expect("flush");
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel::<String>();
    for mut sub in [help, svc] {
        let (a, asked_tx) = (a.clone(), asked_tx.clone());
        tokio::spawn(async move {
            let mut first = true;
            while let Some(m) = sub.next().await {
                if first {
                    let who = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Request-Info"))
                        .map(|v| {
                            let v: serde_json::Value =
                                serde_json::from_str(v.as_str()).expect("request info is JSON");
                            v["acc"].to_string()
                        })
                        .unwrap_or_default();
                    let _ = asked_tx.send(format!("{} asked by {who}", m.subject));
                    first = false;
                }
                let Some(reply) = m.reply else { continue };
                for r in ["r1", "r2"] {
                    a.publish(reply.clone(), r.into()).await.expect("respond");
                }
                a.flush().await.expect("flush");
            }
        });
    }
    // Until the service's interest has crossed the route (in the cluster run), a
    // request finds no responder.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match b.request("ahelp", "probe".into()).await {
            Ok(m) => {
                assert_eq!(&m.payload[..], b"r1");
                break;
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "help never answered"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("help: {e}"),
        }
    }
    seen.push(asked.recv().await.expect("help was asked"));
    let inbox = b.new_inbox();
    let mut answers = b.subscribe(inbox.clone()).await.expect("sub");
    b.flush().await.expect("flush");
    b.publish_with_reply("ahelp", inbox.clone(), "q".into())
        .await
        .expect("publish");
    b.flush().await.expect("flush");
    let first = next(&mut answers, "help's answer").await;
    seen.push(format!("help: {}", String::from_utf8_lossy(&first.payload)));
    b.publish_with_reply("svc.x", inbox.clone(), "q".into())
        .await
        .expect("publish");
    b.flush().await.expect("flush");
    // help's second response (sent before these) must not be among them.
    for _ in 0..2 {
        let m = next(&mut answers, "svc.x's answers").await;
        seen.push(format!("svc.x: {}", String::from_utf8_lossy(&m.payload)));
    }
    seen.push(asked.recv().await.expect("svc.x was asked"));

    // What is not imported has no responders; A's `help` is not C's.
    for (who, client, subject) in [("b", &b, "help"), ("b", &b, "svc.y"), ("c", &c, "ahelp")] {
        let e = client
            .request(subject, "q".into())
            .await
            .expect_err("nobody answers");
        seen.push(format!("{who} {subject}: {:?}", e.kind()));
    }
    // JetStream is C's only.
    for (who, client) in [("a", &a), ("b", &b), ("c", &c)] {
        let m = client
            .request("$JS.API.INFO", "".into())
            .await
            .expect("an API answer");
        seen.push(format!("{who} $JS.API.INFO: {}", api_code(&m)));
    }
    seen
}

#[tokio::test]
async fn accounts_share_only_what_they_export_as_the_reference_does() {
    let dir = TempDir::new("accounts");
    let node = start(meshbroker_config(&dir, ""));
    let url = node.client_url();
    let ours = observe(&url, &url, &url).await;
    let expected = [
        "a_ev: ev.one from a",
        "b_from_a: froma.ev.one from a",
        "b_ev: ev.two from b",
        "c_ev: ev.three from c",
        "help asked by \"B\"",
        "help: r1",
        "svc.x: r1",
        "svc.x: r2",
        "svc.x asked by \"B\"",
        "b help: NoResponders",
        "b svc.y: NoResponders",
        "c ahelp: NoResponders",
        "a $JS.API.INFO: 503 10039 \"JetStream not enabled for account\"",
        "b $JS.API.INFO: 503 10039 \"JetStream not enabled for account\"",
        "c $JS.API.INFO: ok \"io.nats.jetstream.api.v1.account_info_response\"",
    ];
    assert_eq!(ours, expected, "meshbroker");

    let ref_dir = TempDir::new("accounts-ref");
    let conf = format!(
        "jetstream {{ store_dir: \"{}\" }}\n{ACCOUNTS_REFERENCE}",
        ref_dir.0.join("js").display()
    );
    let path = ref_dir.0.join("nats-server.conf");
    std::fs::write(&path, conf).expect("write reference config");
    let Some((_reference, addr)) = start_reference(&["-c", path.to_str().expect("utf-8")]) else {
        return;
    };
    let url = format!("nats://{addr}");
    assert_eq!(observe(&url, &url, &url).await, expected, "nats-server");
}

#[tokio::test]
async fn accounts_stay_apart_and_imports_work_across_routes() {
    let dir = TempDir::new("accounts-cluster");
    let port = common::free_port();
    let n1 = start(meshbroker_config(
        &dir,
        &format!(
            "server_name = \"n1\"\n[cluster]\nname = \"acc\"\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    ));
    let dir2 = TempDir::new("accounts-cluster2");
    let n2 = start(meshbroker_config(
        &dir2,
        &format!("server_name = \"n2\"\n[cluster]\nname = \"acc\"\nlisten = \"127.0.0.1:0\"\nroutes = [\"127.0.0.1:{port}\"]\n"),
    ));
    let deadline = std::time::Instant::now() + WAIT;
    while n1.routes().is_empty() || n2.routes().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the nodes route");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A on node 1, B and C on node 2: the stream, the services and their responses
    // all cross the route; nothing else does.
    let seen = observe(&n1.client_url(), &n2.client_url(), &n2.client_url()).await;
    assert_eq!(
        &seen[..4],
        [
            "a_ev: ev.one from a",
            "b_from_a: froma.ev.one from a",
            "b_ev: ev.two from b",
            "c_ev: ev.three from c",
        ]
    );
    assert_eq!(
        &seen[4..9],
        [
            "help asked by \"B\"",
            "help: r1",
            "svc.x: r1",
            "svc.x: r2",
            "svc.x asked by \"B\""
        ]
    );
}

#[test]
fn a_config_whose_imports_are_not_exported_is_refused_with_the_key() {
    let base = test_config();
    for (accounts, key, why) in [
        (
            "[accounts.A]\n[accounts.B]\nimports = [{ stream = { account = \"A\", subject = \"x\" } }]",
            "accounts.B.imports",
            "stream import not authorized",
        ),
        (
            "[accounts.B]\nimports = [{ service = { account = \"Z\", subject = \"x\" } }]",
            "accounts.B.imports",
            "\"Z\" account not defined for service import",
        ),
        (
            "[authorization]\nusers = [{ user = \"a\", password = \"x\" }]\n[accounts.A]\nusers = [{ user = \"a\", password = \"y\" }]",
            "accounts.A.users.user",
            "listed twice",
        ),
        (
            "[jetstream]\nenabled = false\n[accounts.A]\njetstream = true",
            "accounts.A.jetstream",
            "[jetstream] is not enabled",
        ),
    ] {
        let text = format!("listen = \"{}\"\n{accounts}", base.listen);
        let e = Config::from_toml(&text, std::path::Path::new("bad.toml"))
            .expect_err(accounts)
            .to_string();
        assert!(e.contains(&format!("bad.toml: key `{key}`")), "{e}");
        assert!(e.contains(why), "{e}");
    }
}
