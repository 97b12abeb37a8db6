//! TLS on the client listener, as the official Rust client uses it: server
//! certificates from a CA the test makes, mutual TLS, the handshake-first mode, and
//! the errors for files that are missing or do not fit.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use common::certs::{CertFiles, TestCa};
use common::{settle, start, start_reference, test_config, Raw, TempDir};
use meshbroker::Config;

const WAIT: Duration = Duration::from_secs(10);

struct Pki {
    dir: TempDir,
    ca_file: std::path::PathBuf,
    server: CertFiles,
    client: CertFiles,
    /// A client certificate from a CA the server does not trust.
    stranger: CertFiles,
}

fn pki(tag: &str) -> Pki {
    let dir = TempDir::new(tag);
    let ca = TestCa::new("meshbroker test CA");
    let other = TestCa::new("someone else's CA");
    Pki {
        ca_file: ca.write(&dir.0, "ca.pem"),
        server: ca.leaf(&dir.0, "server", &["localhost", "127.0.0.1"]),
        client: ca.leaf(&dir.0, "client", &["client.example"]),
        stranger: other.leaf(&dir.0, "stranger", &["client.example"]),
        dir,
    }
}

fn tls_config(pki: &Pki, extra: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    config.tls.cert_file = Some(pki.server.cert.clone());
    config.tls.key_file = Some(pki.server.key.clone());
    extra(&mut config);
    config
}

async fn round_trip(client: &async_nats::Client) {
    let mut sub = client.subscribe("secure.echo").await.unwrap();
    settle(client).await;
    client
        .publish("secure.echo", "sealed".into())
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, Bytes::from("sealed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_over_tls_and_plain_text_is_refused() {
    let pki = pki("tls-basic");
    let node = start(tls_config(&pki, |_| {}));
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .require_tls(true)
        .connect(format!("tls://localhost:{}", node.client_addr().port()))
        .await
        .expect("TLS client connects");
    round_trip(&client).await;

    // A plain-text client sees INFO with tls_required, and its CONNECT ends it.
    let mut raw = Raw {
        stream: std::net::TcpStream::connect(node.client_addr()).unwrap(),
        received: Vec::new(),
    };
    assert!(raw.read_until(b"\r\n", WAIT));
    assert!(
        raw.text().contains("\"tls_required\":true"),
        "{}",
        raw.text()
    );
    raw.send(b"CONNECT {}\r\nPING\r\n");
    assert!(raw.read_to_close(WAIT), "plain text after INFO is not TLS");
    assert!(!raw.text().contains("PONG"));

    // A client that trusts another CA refuses the server.
    let other = TestCa::new("not ours");
    let wrong_root = other.write(&pki.dir.0, "other-ca.pem");
    let refused = async_nats::ConnectOptions::new()
        .add_root_certificates(wrong_root)
        .require_tls(true)
        .connect(format!("tls://localhost:{}", node.client_addr().port()))
        .await;
    assert!(refused.is_err(), "server certificate from an untrusted CA");
    // The node serves on.
    round_trip(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_wants_a_client_certificate_from_the_ca() {
    let pki = pki("tls-mutual");
    let node = start(tls_config(&pki, |c| {
        c.tls.ca_file = Some(pki.ca_file.clone());
        c.tls.verify = true;
    }));
    let url = format!("tls://localhost:{}", node.client_addr().port());
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .add_client_certificate(pki.client.cert.clone(), pki.client.key.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .expect("client certificate from the CA accepted");
    round_trip(&client).await;
    assert!(client.server_info().tls_required);

    let without = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .require_tls(true)
        .connect(&url)
        .await;
    assert!(without.is_err(), "no client certificate");
    let stranger = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .add_client_certificate(pki.stranger.cert.clone(), pki.stranger.key.clone())
        .require_tls(true)
        .connect(&url)
        .await;
    assert!(stranger.is_err(), "client certificate from another CA");
    round_trip(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_first_mode() {
    let pki = pki("tls-first");
    let node = start(tls_config(&pki, |c| c.tls.handshake_first = true));
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .tls_first()
        .connect(format!("tls://localhost:{}", node.client_addr().port()))
        .await
        .expect("TLS-first client connects");
    round_trip(&client).await;
}

/// TLS and auth together: credentials travel inside the session and are checked as
/// on plain TCP; `/connz` shows the TLS version and suite, and with `auth=1` the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_applies_inside_tls() {
    let pki = pki("tls-auth");
    let node = start(tls_config(&pki, |c| {
        c.authorization.users = vec![meshbroker::config::UserConfig {
            user: Some("alice".into()),
            password: Some(meshbroker::config::Secret("pw".into())),
            ..Default::default()
        }];
        c.monitor.listen = Some("127.0.0.1:0".into());
    }));
    let url = format!("tls://localhost:{}", node.client_addr().port());
    let client = async_nats::ConnectOptions::with_user_and_password("alice".into(), "pw".into())
        .add_root_certificates(pki.ca_file.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .expect("password over TLS");
    round_trip(&client).await;
    let monitor = node.monitor_addr().unwrap();
    let connz = tokio::task::spawn_blocking(move || {
        (
            common::http_get_json(monitor, "/connz?auth=1"),
            common::http_get_json(monitor, "/connz"),
        )
    })
    .await
    .unwrap();
    let conn = &connz.0["connections"][0];
    assert_eq!(conn["tls_version"], "1.3", "{conn:#}");
    assert!(
        conn["tls_cipher_suite"]
            .as_str()
            .is_some_and(|s| s.starts_with("TLS_")),
        "{conn:#}"
    );
    assert_eq!(conn["authorized_user"], "alice");
    assert_eq!(
        connz.1["connections"][0].get("authorized_user"),
        None,
        "only with auth=1"
    );
    let refused =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "wrong".into())
            .add_root_certificates(pki.ca_file.clone())
            .require_tls(true)
            .connect(&url)
            .await
            .expect_err("wrong password over TLS");
    assert_eq!(
        refused.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );
}

/// A client that opens the connection and never starts the handshake is closed after
/// the handshake timeout; others are served meanwhile.
#[test]
fn silent_handshakes_time_out() {
    let pki = pki("tls-timeout");
    let node = start(tls_config(&pki, |c| {
        c.tls.timeout = Some(meshbroker::config::Dur(Duration::from_millis(300)));
    }));
    let mut raw = Raw::connect(node.client_addr());
    let started = std::time::Instant::now();
    assert!(
        raw.read_to_close(WAIT),
        "closed after the handshake timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[test]
fn half_or_broken_tls_settings_are_refused_with_the_file() {
    let pki = pki("tls-bad");
    for (text, key) in [
        ("[tls]\ncert_file = \"a.pem\"\n", "tls.key_file"),
        ("[tls]\nkey_file = \"a.pem\"\n", "tls.cert_file"),
        (
            "[tls]\ncert_file = \"a.pem\"\nkey_file = \"b.pem\"\nverify = true\n",
            "tls.ca_file",
        ),
        ("[tls]\nverify = true\n", "tls.cert_file"),
    ] {
        let e = Config::from_toml(text, std::path::Path::new("node.toml"))
            .expect_err(text)
            .to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let missing = pki.dir.0.join("missing.pem");
    let e = meshbroker::Node::start(tls_config(&pki, |c| {
        c.tls.cert_file = Some(missing.clone())
    }))
    .err()
    .expect("missing certificate")
    .to_string();
    assert!(
        e.contains("tls.cert_file") && e.contains("missing.pem"),
        "{e}"
    );
    // The client's key does not belong to the server's certificate.
    let e = meshbroker::Node::start(tls_config(&pki, |c| {
        c.tls.key_file = Some(pki.client.key.clone())
    }))
    .err()
    .expect("mismatched key")
    .to_string();
    assert!(
        e.contains("tls.key_file") && e.contains("client-key.pem"),
        "{e}"
    );
    let e = meshbroker::Node::start(tls_config(&pki, |c| {
        c.tls.key_file = Some(pki.ca_file.clone())
    }))
    .err()
    .expect("no key in the file")
    .to_string();
    assert!(e.contains("tls.key_file"), "{e}");
}

/// The INFO a server sends first, as JSON.
fn first_info(addr: std::net::SocketAddr) -> serde_json::Value {
    let mut raw = Raw {
        stream: std::net::TcpStream::connect(addr).unwrap(),
        received: Vec::new(),
    };
    assert!(raw.read_until(b"\r\n", WAIT));
    let line = raw.text();
    let json = line.strip_prefix("INFO ").unwrap().trim_end().to_string();
    serde_json::from_str::<serde_json::Value>(&json).unwrap()
}

/// INFO announces TLS as the reference does for the same setup.
#[test]
fn info_announces_tls_like_the_reference() {
    let pki = pki("tls-info");
    let conf = pki.dir.0.join("ref.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}\n",
            pki.server.cert, pki.server.key, pki.ca_file
        ),
    )
    .unwrap();
    let node = start(tls_config(&pki, |c| {
        c.tls.ca_file = Some(pki.ca_file.clone());
        c.tls.verify = true;
    }));
    let ours = first_info(node.client_addr());
    assert_eq!(ours["tls_required"], true);
    assert_eq!(ours["tls_verify"], true);
    if let Some((_reference, addr)) = start_reference(&["-c", conf.to_str().unwrap()]) {
        let theirs = first_info(addr);
        for key in ["tls_required", "tls_verify", "tls_available"] {
            assert_eq!(ours.get(key), theirs.get(key), "{key}");
        }
    }
}

/// A CA without `verify`, which nats-server accepts (the CA is then unused), starts
/// too: clients without a certificate connect to both servers, and INFO says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_without_verify_is_accepted_as_by_the_reference() {
    let pki = pki("tls-ca-no-verify");
    let config = tls_config(&pki, |c| c.tls.ca_file = Some(pki.ca_file.clone()));
    config
        .validate(std::path::Path::new("test.toml"))
        .expect("a ca_file without verify passes validation");
    let node = start(config);
    let conf = pki.dir.0.join("ref.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?} }}\n",
            pki.server.cert, pki.server.key, pki.ca_file
        ),
    )
    .unwrap();
    let connect = |port: u16| {
        async_nats::ConnectOptions::new()
            .add_root_certificates(pki.ca_file.clone())
            .require_tls(true)
            .connect(format!("tls://localhost:{port}"))
    };
    let client = connect(node.client_addr().port())
        .await
        .expect("a client without a certificate connects");
    round_trip(&client).await;
    let ours = first_info(node.client_addr());
    assert_eq!(
        ours.get("tls_verify"),
        None,
        "no client certificate is asked for"
    );
    if let Some((_reference, addr)) = start_reference(&["-c", conf.to_str().unwrap()]) {
        let theirs = connect(addr.port())
            .await
            .expect("the reference takes the same client");
        round_trip(&theirs).await;
        let theirs = first_info(addr);
        for key in ["tls_required", "tls_verify", "tls_available"] {
            assert_eq!(ours.get(key), theirs.get(key), "{key}");
        }
    }
}
