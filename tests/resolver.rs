//! The full resolver of operator mode as `nsc push` meets it: account JWTs pushed on
//! the system account's claims subjects, stored, applied to live connections, looked
//! up and listed. The same pushes go to meshbroker and to nats-server 2.15.1 with a
//! full resolver and the same JWTs; the replies must match, except where the
//! reference is weak (README: "Accounts and operator mode"): it answers "jwt
//! updated" to an account JWT from an operator it does not trust, or older than the
//! one it holds; meshbroker refuses both and keeps what it had.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use meshbroker::auth::jwt::{encode, AccountLimits, Claims, NatsClaims};
use meshbroker::auth::mint;

use common::process::run_config;
use common::{start_reference, TempDir};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

struct Keys {
    operator: nkeys::KeyPair,
    sys: nkeys::KeyPair,
    app: nkeys::KeyPair,
    /// Issued only by a push.
    fresh: nkeys::KeyPair,
    /// Account JWTs are issued from this time on, one second apart.
    t0: i64,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            operator: nkeys::KeyPair::new_operator(),
            sys: nkeys::KeyPair::new_account(),
            app: nkeys::KeyPair::new_account(),
            fresh: nkeys::KeyPair::new_account(),
            t0: now() - 1000,
        }
    }

    fn operator_jwt(&self) -> String {
        mint::operator_jwt(&self.operator, "OP", &self.sys.public_key(), self.t0).expect("jwt")
    }

    /// An account JWT for `account` issued at `t0 + at` by `by`.
    fn account(
        &self,
        by: &nkeys::KeyPair,
        account: &nkeys::KeyPair,
        at: i64,
        edit: impl FnOnce(&mut NatsClaims),
    ) -> String {
        let mut nats = NatsClaims {
            kind: "account".into(),
            version: 2,
            limits: Some(AccountLimits::default()),
            ..NatsClaims::default()
        };
        edit(&mut nats);
        let claims = Claims {
            jti: format!("J{}{}", at, &account.public_key()[..8]),
            iat: self.t0 + at,
            iss: by.public_key(),
            sub: account.public_key(),
            name: "ACC".into(),
            nats,
            ..Claims::default()
        };
        encode(&claims, by).expect("jwt")
    }

    fn user(&self, account: &nkeys::KeyPair, user: &nkeys::KeyPair, at: i64) -> String {
        let claims = Claims {
            iat: self.t0 + at,
            iss: account.public_key(),
            sub: user.public_key(),
            name: "u".into(),
            nats: NatsClaims {
                kind: "user".into(),
                version: 2,
                // As `nsc` writes a user without limits (0 would allow no
                // subscription at the reference).
                subs: Some(-1),
                data: Some(-1),
                payload: Some(-1),
                ..NatsClaims::default()
            },
            ..Claims::default()
        };
        encode(&claims, account).expect("jwt")
    }

    fn sys_creds(&self) -> String {
        let user = nkeys::KeyPair::new_user();
        mint::creds(&self.user(&self.sys, &user, 1), &user.seed().expect("seed"))
    }

    fn preload(&self) -> [(String, String); 2] {
        [
            (
                self.sys.public_key(),
                self.account(&self.operator, &self.sys, 0, |_| {}),
            ),
            (
                self.app.public_key(),
                self.account(&self.operator, &self.app, 0, |_| {}),
            ),
        ]
    }
}

/// A meshbroker node's config with a full resolver in `dir/jwt`.
fn node_config(k: &Keys, dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let preload: String = k
        .preload()
        .iter()
        .map(|(key, jwt)| format!("{key} = \"{jwt}\"\n"))
        .collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nlog_level = \"debug\"\n{extra}operator = \"{}\"\nsystem_account = \"{}\"\nresolver = {{ type = \"full\", dir = \"{}\" }}\n\n[resolver_preload]\n{preload}",
        k.operator_jwt(),
        k.sys.public_key(),
        dir.join("jwt").display(),
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn reference(k: &Keys, dir: &std::path::Path) -> Option<(common::Child, SocketAddr)> {
    let preload: String = k
        .preload()
        .iter()
        .map(|(key, jwt)| format!("  {key}: \"{jwt}\"\n"))
        .collect();
    let conf = format!(
        "operator: \"{}\"\nsystem_account: {}\nresolver: {{ type: full, dir: \"{}\" }}\nresolver_preload: {{\n{preload}}}\n",
        k.operator_jwt(),
        k.sys.public_key(),
        dir.join("refjwt").display(),
    );
    let path = dir.join("nats-server.conf");
    std::fs::write(&path, conf).expect("reference config");
    start_reference(&["-c", path.to_str().expect("utf-8")])
}

/// A raw connection logged in as `user` (its JWT and key), past the first PONG.
struct Login {
    stream: TcpStream,
    /// What the login got (`PONG`, or an error and the close).
    greeting: String,
    seen: Vec<u8>,
}

impl Login {
    fn new(addr: SocketAddr, jwt: &str, user: &nkeys::KeyPair) -> Login {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut login = Login {
            stream: stream.try_clone().expect("clone"),
            greeting: String::new(),
            seen: Vec::new(),
        };
        login.read_until("\r\n");
        let text = String::from_utf8_lossy(&login.seen).into_owned();
        let info: serde_json::Value = serde_json::from_str(
            text.strip_prefix("INFO ")
                .and_then(|t| t.split("\r\n").next())
                .expect("INFO"),
        )
        .expect("INFO JSON");
        let nonce = info["nonce"].as_str().expect("nonce");
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(user.sign(nonce.as_bytes()).expect("sign"));
        let connect = serde_json::json!({"verbose": false, "protocol": 1, "jwt": jwt, "sig": sig});
        login.seen.clear();
        stream
            .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
            .expect("send");
        login.read_until("\r\n");
        login.greeting = login.text();
        login.seen.clear();
        login
    }

    /// Reads until `needle` is in what came, or the close (`<closed>`), or 10 s.
    fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.seen).contains(needle) && Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.seen.extend_from_slice(b"<closed>");
                    break;
                }
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Did the login pass (a PONG first)?
    fn passed(&self) -> bool {
        self.greeting.starts_with("PONG\r\n")
    }

    /// Waits for the close and says whether it came with `User Authentication
    /// Revoked` (after whatever INFO the server sent after the login).
    fn revoked(&mut self) -> bool {
        let got = self.read_until("<closed>");
        got.ends_with("-ERR 'User Authentication Revoked'\r\n<closed>") && !got.contains("PONG")
    }
}

/// A client that asks and collects every reply: one subscription on `<inbox>.>` for
/// all its requests (in a cluster, its interest reaches the other nodes once).
struct Asker {
    client: async_nats::Client,
    inbox: String,
    sub: async_nats::Subscriber,
    n: u64,
}

impl Asker {
    async fn new(client: async_nats::Client) -> Asker {
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(format!("{inbox}.>"))
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        Asker {
            client,
            inbox,
            sub,
            n: 0,
        }
    }
}

/// Sends `payload` to `subject` and collects every reply for `wait`.
async fn ask(asker: &mut Asker, subject: &str, payload: &str, wait: Duration) -> Vec<Vec<u8>> {
    asker.n += 1;
    let reply = format!("{}.{}", asker.inbox, asker.n);
    asker
        .client
        .publish_with_reply(
            subject.to_string(),
            reply.clone(),
            payload.to_string().into(),
        )
        .await
        .expect("publish");
    asker.client.flush().await.expect("flush");
    // Up to 5 s for the first answer (a push is fsynced before it is answered, and a
    // loaded machine is slow), then `wait` more for any other.
    let mut out = Vec::new();
    let mut until = tokio::time::Instant::now() + wait + Duration::from_secs(5);
    while let Ok(Some(m)) =
        tokio::time::timeout_at(until, futures::StreamExt::next(&mut asker.sub)).await
    {
        if m.subject.as_str() == reply {
            if out.is_empty() {
                until = until.min(tokio::time::Instant::now() + wait);
            }
            out.push(m.payload.to_vec());
        }
    }
    out
}

/// A reply's JSON without the server block (names, ids and times differ), checking
/// the block is there.
fn outcome(reply: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(reply)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(reply)));
    let server = v
        .as_object_mut()
        .and_then(|o| o.remove("server"))
        .expect("a server block");
    for key in ["name", "id", "ver", "time", "seq"] {
        assert!(
            server.get(key).is_some(),
            "server block without {key}: {server}"
        );
    }
    v
}

async fn system_client(k: &Keys, addr: SocketAddr) -> Asker {
    let client = async_nats::ConnectOptions::with_credentials(&k.sys_creds())
        .expect("creds")
        .connect(format!("nats://{addr}"))
        .await
        .expect("the system user logs in");
    Asker::new(client).await
}

/// Pushes `jwt` through `asker`'s node, which alone answers "jwt updated".
async fn pushed(asker: &mut Asker, jwt: &str, node: &str) {
    let answer = one(
        ask(asker, "$SYS.REQ.CLAIMS.UPDATE", jwt, Duration::from_secs(1)).await,
        &format!("{node}'s answer"),
    );
    assert_eq!(outcome(&answer)["data"]["message"], "jwt updated");
}

fn one(mut replies: Vec<Vec<u8>>, what: &str) -> Vec<u8> {
    assert_eq!(replies.len(), 1, "{what}: one reply expected");
    replies.remove(0)
}

#[tokio::test]
async fn pushed_account_jwts_are_answered_and_applied_as_at_the_reference() {
    let k = Keys::new();
    let dir = TempDir::new("resolver");
    let conf = node_config(&k, &dir.0, "");
    let (node, addr) = run_config(&conf);
    let Some((_reference, raddr)) = reference(&k, &dir.0) else {
        return;
    };
    let wait = Duration::from_millis(500);
    let mut ours = system_client(&k, addr).await;
    let mut theirs = system_client(&k, raddr).await;
    let (u1, u2, fresh_user) = (
        nkeys::KeyPair::new_user(),
        nkeys::KeyPair::new_user(),
        nkeys::KeyPair::new_user(),
    );
    let u1_jwt = k.user(&k.app, &u1, 10);
    let mut u1_ours = Login::new(addr, &u1_jwt, &u1);
    let mut u1_theirs = Login::new(raddr, &u1_jwt, &u1);
    assert!(u1_ours.passed() && u1_theirs.passed());

    // The same answers from both.
    let revoking = k.account(&k.operator, &k.app, 50, |n| {
        n.revocations = [(u1.public_key(), k.t0 + 20)].into()
    });
    let app = k.app.public_key();
    let fresh_jwt = k.account(&k.operator, &k.fresh, 5, |_| {});
    let cases: Vec<(&str, String, String)> = vec![
        (
            "a newer JWT revoking a connected user",
            "$SYS.REQ.CLAIMS.UPDATE".into(),
            revoking.clone(),
        ),
        (
            "the same on the account's subject",
            format!("$SYS.REQ.ACCOUNT.{app}.CLAIMS.UPDATE"),
            revoking.clone(),
        ),
        ("not a JWT", "$SYS.REQ.CLAIMS.UPDATE".into(), "nope".into()),
        (
            "a user JWT",
            "$SYS.REQ.CLAIMS.UPDATE".into(),
            k.user(&k.app, &u2, 3),
        ),
        (
            "a subject naming another account",
            format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", k.fresh.public_key()),
            revoking.clone(),
        ),
        (
            "a new account",
            "$SYS.REQ.CLAIMS.UPDATE".into(),
            fresh_jwt.clone(),
        ),
    ];
    for (what, subject, payload) in &cases {
        let a = outcome(&one(ask(&mut ours, subject, payload, wait).await, what));
        let b = outcome(&one(ask(&mut theirs, subject, payload, wait).await, what));
        assert_eq!(a, b, "{what}");
    }
    // The revoked user was closed at both, with the same words.
    for (server, login) in [
        ("meshbroker", &mut u1_ours),
        ("nats-server", &mut u1_theirs),
    ] {
        assert!(login.revoked(), "{server}: {}", login.text());
    }
    // The new account's users log in at both; the revoked user does not.
    for at in [addr, raddr] {
        assert!(Login::new(at, &k.user(&k.fresh, &fresh_user, 6), &fresh_user).passed());
        assert!(Login::new(at, &u1_jwt, &u1)
            .greeting
            .starts_with("-ERR 'Authorization Violation'"));
    }
    // Lookups and the list.
    let lookup = format!("$SYS.REQ.ACCOUNT.{app}.CLAIMS.LOOKUP");
    assert_eq!(
        one(ask(&mut ours, &lookup, "", wait).await, "lookup"),
        revoking.as_bytes()
    );
    assert_eq!(
        one(ask(&mut theirs, &lookup, "", wait).await, "lookup"),
        revoking.as_bytes()
    );
    let unknown = format!(
        "$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP",
        nkeys::KeyPair::new_account().public_key()
    );
    assert!(one(ask(&mut ours, &unknown, "", wait).await, "unknown").is_empty());
    assert!(one(ask(&mut theirs, &unknown, "", wait).await, "unknown").is_empty());
    let list = |reply: Vec<u8>| {
        let mut keys: Vec<String> =
            serde_json::from_value(outcome(&reply)["data"].clone()).expect("a list of keys");
        keys.sort();
        keys
    };
    assert_eq!(
        list(one(
            ask(&mut ours, "$SYS.REQ.CLAIMS.LIST", "", wait).await,
            "list"
        )),
        list(one(
            ask(&mut theirs, "$SYS.REQ.CLAIMS.LIST", "", wait).await,
            "list"
        )),
    );

    // Where meshbroker differs on purpose: a JWT from an operator it does not trust,
    // and one older than the JWT held, are refused (the reference says "jwt updated").
    let forged = k.account(&nkeys::KeyPair::new_operator(), &k.app, 60, |_| {});
    let older = k.account(&k.operator, &k.app, 40, |_| {});
    for (what, jwt, words) in [
        ("forged", &forged, "not issued by a trusted operator"),
        ("older", &older, "an older JWT never replaces a newer one"),
    ] {
        let a = outcome(&one(
            ask(&mut ours, "$SYS.REQ.CLAIMS.UPDATE", jwt, wait).await,
            what,
        ));
        assert_eq!(a["error"]["code"], 500, "{what}: {a}");
        assert_eq!(a["error"]["account"], app.as_str(), "{what}: {a}");
        let description = a["error"]["description"].as_str().unwrap_or_default();
        assert!(
            description.starts_with("jwt update resulted in error - ")
                && description.contains(words),
            "{what}: {a}"
        );
        let b = outcome(&one(
            ask(&mut theirs, "$SYS.REQ.CLAIMS.UPDATE", jwt, wait).await,
            what,
        ));
        assert_eq!(
            b["data"]["message"], "jwt updated",
            "{what} at the reference: {b}"
        );
    }
    assert_eq!(
        one(
            ask(&mut ours, &lookup, "", wait).await,
            "lookup after the refusals"
        ),
        revoking.as_bytes(),
        "meshbroker still holds the newest trusted JWT"
    );

    // After a restart the directory holds what was pushed, and only that.
    drop(node);
    let stored = std::fs::read_to_string(dir.0.join("jwt").join(format!("{app}.jwt")))
        .expect("the app account is stored");
    assert_eq!(stored, revoking);
    assert!(dir
        .0
        .join("jwt")
        .join(format!("{}.jwt", k.fresh.public_key()))
        .exists());
    let (node, addr) = run_config(&conf);
    assert!(
        Login::new(addr, &k.user(&k.fresh, &fresh_user, 7), &fresh_user).passed(),
        "the pushed account is known after a restart"
    );
    assert!(Login::new(addr, &u1_jwt, &u1)
        .greeting
        .starts_with("-ERR 'Authorization Violation'"));
    drop(node);
}

/// In a cluster every node answers a push for itself, as `nsc push` collects them:
/// a push through one node reaches the others, a new account's users log in on any
/// node and its messages cross the route, and a revocation closes a user connected
/// to another node.
#[tokio::test]
async fn a_push_reaches_every_node_of_a_cluster() {
    let k = Keys::new();
    let dirs = [TempDir::new("resolver-c1"), TempDir::new("resolver-c2")];
    let ports = [common::free_port(), common::free_port()];
    let cluster = |i: usize| {
        format!(
            "[cluster]\nname = \"c\"\nlisten = \"127.0.0.1:{}\"\nroutes = [\"nats-route://127.0.0.1:{}\"]\n\n",
            ports[i],
            ports[1 - i]
        )
    };
    // The cluster table must come after the top-level keys: written at the end.
    let conf = |i: usize| {
        let path = node_config(&k, &dirs[i].0, &format!("server_name = \"n{}\"\n", i + 1));
        let text = std::fs::read_to_string(&path).expect("config");
        let (top, preload) = text.split_once("[resolver_preload]").expect("preload");
        std::fs::write(
            &path,
            format!("{top}[resolver_preload]{preload}\n{}", cluster(i)),
        )
        .expect("config");
        path
    };
    let (n1, a1) = run_config(&conf(0));
    let (n2, a2) = run_config(&conf(1));
    let mut sys = system_client(&k, a1).await;
    // Both nodes' resolvers must be heard through node 1 before pushing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answers = ask(
            &mut sys,
            "$SYS.REQ.CLAIMS.LIST",
            "",
            Duration::from_millis(300),
        )
        .await;
        if answers.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both nodes answer LIST through node 1"
        );
    }
    // Every node answers a server ping, each for itself, knowing the other is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answers = ask(
            &mut sys,
            "$SYS.REQ.SERVER.PING",
            "",
            Duration::from_millis(300),
        )
        .await;
        let mut seen: Vec<(String, u64)> = answers
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r).ok())
            .map(|v| {
                let name = v["server"]["name"].as_str().unwrap_or_default().to_string();
                (name, v["statsz"]["active_servers"].as_u64().unwrap_or(0))
            })
            .collect();
        seen.sort();
        if seen == [("n1".to_string(), 2), ("n2".to_string(), 2)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both nodes answer PING through node 1: {seen:?}"
        );
    }
    let on_two = nkeys::KeyPair::new_user();
    let app_user_jwt = k.user(&k.app, &on_two, 10);
    let mut connected = Login::new(a2, &app_user_jwt, &on_two);
    let fresh_jwt = k.account(&k.operator, &k.fresh, 5, |_| {});
    let answers = ask(
        &mut sys,
        "$SYS.REQ.CLAIMS.UPDATE",
        &fresh_jwt,
        Duration::from_secs(1),
    )
    .await;
    let mut servers: Vec<String> = answers
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r).expect("json");
            assert_eq!(v["data"]["message"], "jwt updated", "{v}");
            v["server"]["name"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    servers.sort();
    assert_eq!(servers, ["n1", "n2"], "every node answers");

    // The new account on both nodes, its messages across the route.
    let fresh_user = nkeys::KeyPair::new_user();
    let creds = mint::creds(
        &k.user(&k.fresh, &fresh_user, 6),
        &fresh_user.seed().expect("seed"),
    );
    let c1 = async_nats::ConnectOptions::with_credentials(&creds)
        .expect("creds")
        .connect(format!("nats://{a1}"))
        .await
        .expect("logs in on node 1");
    let c2 = async_nats::ConnectOptions::with_credentials(&creds)
        .expect("creds")
        .connect(format!("nats://{a2}"))
        .await
        .expect("logs in on node 2");
    let mut sub = c2.subscribe("hello").await.expect("subscribe");
    c2.flush().await.expect("flush");
    // Interest crosses the route: publish until the first message arrives.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            c1.publish("hello", "from node 1".into())
                .await
                .expect("publish");
            c1.flush().await.expect("flush");
            if let Ok(Some(m)) = tokio::time::timeout(
                Duration::from_millis(200),
                futures::StreamExt::next(&mut sub),
            )
            .await
            {
                return m;
            }
        }
    })
    .await
    .expect("a message of the new account crosses the route");
    assert_eq!(&got.payload[..], b"from node 1");

    // A revocation pushed through node 1 closes the user connected to node 2.
    let revoking = k.account(&k.operator, &k.app, 50, |n| {
        n.revocations = [(on_two.public_key(), k.t0 + 20)].into()
    });
    let answers = ask(
        &mut sys,
        "$SYS.REQ.CLAIMS.UPDATE",
        &revoking,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(answers.len(), 2);
    assert!(connected.revoked(), "{}", connected.text());
    drop((n1, n2));
}

/// Anti-entropy: a node that was down while an account was pushed takes it from its
/// peer's resolver when it comes back (PACK, every `interval`), and the other way
/// round for a newer JWT pushed while the first node was down; an older JWT never
/// replaces a newer one on either side.
#[tokio::test]
async fn a_node_down_during_a_push_takes_it_from_its_peer() {
    let k = Keys::new();
    let dirs = [
        TempDir::new("resolver-pack1"),
        TempDir::new("resolver-pack2"),
    ];
    let ports = [common::free_port(), common::free_port()];
    let conf = |i: usize| {
        let path = node_config(&k, &dirs[i].0, &format!("server_name = \"n{}\"\n", i + 1));
        let text = std::fs::read_to_string(&path)
            .expect("config")
            .replace("/jwt\" }", "/jwt\", interval = \"1s\" }");
        assert!(text.contains("interval"), "{text}");
        std::fs::write(
            &path,
            format!(
                "{text}\n[cluster]\nname = \"c\"\nlisten = \"127.0.0.1:{}\"\nroutes = [\"nats-route://127.0.0.1:{}\"]\n",
                ports[i],
                ports[1 - i]
            ),
        )
        .expect("config");
        path
    };
    let stored = |i: usize, key: &str| {
        std::fs::read_to_string(dirs[i].0.join("jwt").join(format!("{key}.jwt"))).ok()
    };
    let logs_in = async |addr: SocketAddr, account: &nkeys::KeyPair| {
        let user = nkeys::KeyPair::new_user();
        let creds = mint::creds(&k.user(account, &user, 6), &user.seed().expect("seed"));
        async_nats::ConnectOptions::with_credentials(&creds)
            .expect("creds")
            .connect(format!("nats://{addr}"))
            .await
            .is_ok()
    };
    let (conf1, conf2) = (conf(0), conf(1));

    // n2 is down while the new account is pushed to n1.
    let (n1, a1) = run_config(&conf1);
    let mut sys = system_client(&k, a1).await;
    let fresh_jwt = k.account(&k.operator, &k.fresh, 5, |_| {});
    pushed(&mut sys, &fresh_jwt, "n1").await;
    let fresh = k.fresh.public_key();
    assert_eq!(stored(1, &fresh), None);
    let (n2, a2) = run_config(&conf2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored(1, &fresh).as_deref() != Some(fresh_jwt.as_str()) {
        assert!(
            Instant::now() < deadline,
            "n2 never took the account from n1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logs_in(a2, &k.fresh).await,
        "the account's users log in on n2"
    );

    // Now n1 is down while a newer APP JWT is pushed to n2.
    drop((sys, n1));
    let mut sys2 = system_client(&k, a2).await;
    let newer = k.account(&k.operator, &k.app, 40, |_| {});
    pushed(&mut sys2, &newer, "n2").await;
    let app = k.app.public_key();
    let (n1, _) = run_config(&conf1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored(0, &app).as_deref() != Some(newer.as_str()) {
        assert!(
            Instant::now() < deadline,
            "n1 never took the newer JWT from n2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several rounds later n2 still holds the newer one: n1's older preload never won.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored(1, &app).as_deref(), Some(newer.as_str()));
    drop((n1, n2));
}

/// `meshbroker auth account` and `auth push`: an account added with the CLI is pushed
/// to a running node and its users log in; a revocation re-issued with the CLI and
/// pushed closes the revoked user.
#[tokio::test]
async fn meshbroker_auth_pushes_accounts_as_nsc_push_does() {
    let dir = TempDir::new("resolver-cli");
    let keys = dir.0.join("auth");
    let d = keys.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        std::process::Command::new(common::meshbroker_binary())
            .arg("auth")
            .args(args)
            .output()
            .expect("meshbroker auth")
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "meshbroker auth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(&["init", "--dir", d, "--account", "APP"]);
    let block = std::fs::read_to_string(keys.join("auth.toml")).expect("auth.toml");
    assert!(block.contains("type = \"full\""), "{block}");
    let path = dir.0.join("node.toml");
    std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{block}")).expect("config");
    let (node, addr) = run_config(&path);
    let url = format!("nats://{addr}");

    // A new account: unknown to the node until pushed.
    ok(&["account", "--dir", d, "--name", "SHOP", "--no-jetstream"]);
    let creds = ok(&["user", "--dir", d, "--account", "SHOP", "--name", "clerk"]);
    let refused = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .expect("creds")
        .connect(&url)
        .await;
    assert!(refused.is_err(), "a user of an account not pushed yet");
    let said = ok(&["push", "--dir", d, "--server", &url]);
    for name in ["APP", "SHOP", "SYS"] {
        assert!(said.contains(&format!("{name}: server")), "{said}");
    }
    assert!(said.contains("jwt updated"), "{said}");
    let clerk = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .expect("creds")
        .connect(&url)
        .await
        .expect("the pushed account's user logs in");
    clerk.flush().await.expect("flush");

    // Revoke every user of SHOP issued until now and push only SHOP: the clerk's
    // connection is closed.
    let text = std::fs::read_to_string(&creds).expect("creds file");
    let (jwt, seed) = mint::parse_creds(&text).expect("creds");
    let mut connected = Login::new(addr, &jwt, &nkeys::KeyPair::from_seed(&seed).expect("seed"));
    assert!(connected.passed());
    ok(&[
        "account",
        "--dir",
        d,
        "--name",
        "SHOP",
        "--no-jetstream",
        "--revoke",
        "*",
    ]);
    let said = ok(&["push", "--dir", d, "--server", &url, "--account", "SHOP"]);
    assert!(
        said.starts_with("SHOP: server") && said.contains("jwt updated"),
        "{said}"
    );
    assert!(connected.revoked(), "{}", connected.text());
    drop(clerk);
    // Another operator's directory: its system user is not trusted, so the push
    // fails and says why.
    let other = dir.0.join("other");
    let o = other.to_str().expect("utf-8");
    ok(&["init", "--dir", o, "--account", "APP"]);
    let out = run(&["push", "--dir", o, "--server", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Authorization Violation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(node);
}
