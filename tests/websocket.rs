//! NATS over WebSocket with a plain WebSocket client: the protocol in binary
//! messages, the origin policy (allowlist, same-origin when the list is empty), auth
//! exactly as on TCP, wss:// with a certificate, and the config policy for ws://.
//! (The browser test with the official JavaScript client is `tests/browser.rs`.)

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use common::certs::TestCa;
use common::{start, test_config, TempDir};
use meshbroker::Config;

const WAIT: Duration = Duration::from_secs(10);

fn ws_config(extra: &str) -> Config {
    let mut config = Config::from_toml(
        &format!("[websocket]\nlisten = \"127.0.0.1:0\"\nno_tls = true\n{extra}"),
        std::path::Path::new("ws-test.toml"),
    )
    .expect("valid test config");
    let base = test_config();
    config.listen = base.listen;
    config.jetstream.enabled = false;
    config
}

type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `addr`, sending `origin` if given.
fn open(addr: SocketAddr, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{addr}/").into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header value"));
    }
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WAIT)).ok();
    tungstenite::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

/// Reads messages until the text received so far contains `needle` (or the peer
/// closes, or the time is up); returns everything received.
fn read_until(ws: &mut Ws, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut got = String::new();
    while !got.contains(needle) && Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Binary(b)) => got.push_str(&String::from_utf8_lossy(&b)),
            Ok(Message::Text(t)) => got.push_str(t.as_str()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

fn send(ws: &mut Ws, bytes: &[u8]) {
    ws.send(Message::Binary(bytes.to_vec().into()))
        .expect("send");
}

#[test]
fn nats_protocol_in_binary_messages() {
    let node = start(ws_config("[monitor]\nlisten = \"127.0.0.1:0\"\n"));
    let addr = node.websocket_addr().expect("websocket listener");
    let mut ws = open(addr, None).expect("handshake");
    let info = read_until(&mut ws, "\r\n");
    assert!(info.starts_with("INFO {"), "{info}");
    // One operation split over two messages, and several in one.
    send(
        &mut ws,
        b"CONNECT {\"verbose\":false}\r\nSUB greet.* 1\r\nPUB gre",
    );
    send(&mut ws, b"et.joe 5\r\nhello\r\nPING\r\n");
    let got = read_until(&mut ws, "PONG\r\n");
    assert_eq!(got, "MSG greet.joe 1 5\r\nhello\r\nPONG\r\n");

    // A TCP client and the WebSocket client see each other's messages.
    let mut tcp = common::Raw::connect(node.client_addr());
    tcp.send(b"CONNECT {\"verbose\":false}\r\nSUB from.ws 7\r\nPING\r\n");
    assert!(tcp.read_until(b"PONG\r\n", WAIT));
    send(&mut ws, b"PUB from.ws 2\r\nhi\r\nPUB greet.tcp 0\r\n\r\n");
    assert!(
        tcp.read_until(b"MSG from.ws 7 2\r\nhi\r\n", WAIT),
        "{}",
        tcp.text()
    );
    tcp.send(b"PUB greet.sue 3\r\nhey\r\n");
    assert!(read_until(&mut ws, "hey").ends_with("MSG greet.sue 1 3\r\nhey\r\n"));

    // Monitoring tells the transports apart, as the reference's /connz does.
    let connz = common::http_get_json(node.monitor_addr().unwrap(), "/connz");
    let types: Vec<&str> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["websocket", "nats"]);
}

#[test]
fn origins_allowlist_and_same_origin() {
    let node = start(ws_config(
        "allowed_origins = [\"https://app.example.com\"]\n",
    ));
    let addr = node.websocket_addr().unwrap();
    assert!(open(addr, Some("https://app.example.com")).is_ok());
    match open(addr, Some("https://evil.example.com")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("an origin outside the list: {:?}", other.map(|_| ())),
    }
    assert!(
        open(addr, None).is_ok(),
        "non-browser clients send no origin"
    );

    // No list: only pages from the listener's own origin.
    let node = start(ws_config(""));
    let addr = node.websocket_addr().unwrap();
    assert!(open(addr, Some(&format!("http://{addr}"))).is_ok());
    match open(addr, Some("http://localhost:1")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!(
            "another origin in same-origin mode: {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn auth_applies_as_on_tcp() {
    let node = start(ws_config("[authorization]\ntoken = \"t0ken\"\n"));
    let addr = node.websocket_addr().unwrap();
    let mut ws = open(addr, None).unwrap();
    let info = read_until(&mut ws, "\r\n");
    assert!(info.contains("\"auth_required\":true"), "{info}");
    send(
        &mut ws,
        b"CONNECT {\"verbose\":false,\"auth_token\":\"nope\"}\r\nPING\r\n",
    );
    assert_eq!(
        read_until(&mut ws, "Violation'\r\n"),
        "-ERR 'Authorization Violation'\r\n"
    );
    assert!(
        matches!(ws.read(), Err(_) | Ok(Message::Close(_))),
        "closed after the violation"
    );
    let mut ws = open(addr, None).unwrap();
    read_until(&mut ws, "\r\n");
    send(
        &mut ws,
        b"CONNECT {\"verbose\":false,\"auth_token\":\"t0ken\"}\r\nPING\r\n",
    );
    assert_eq!(read_until(&mut ws, "PONG\r\n"), "PONG\r\n");
}

#[test]
fn wss_with_a_certificate() {
    let dir = TempDir::new("wss");
    let ca = TestCa::new("ws CA");
    let server = ca.leaf(&dir.0, "ws-server", &["localhost"]);
    let mut config = test_config();
    config.websocket.listen = Some("127.0.0.1:0".into());
    config.websocket.cert_file = Some(server.cert.clone());
    config.websocket.key_file = Some(server.key.clone());
    let node = start(config);
    let addr = node.websocket_addr().unwrap();

    let session =
        rustls::ClientConnection::new(ca.client_config(), "localhost".try_into().unwrap()).unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).ok();
    let tls_stream = rustls::StreamOwned::new(session, stream);
    let request = format!("wss://localhost:{}/", addr.port())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tungstenite::client(request, tls_stream).expect("wss handshake");
    let mut got = String::new();
    while !got.contains("\r\n") {
        if let Message::Binary(b) = ws.read().expect("INFO") {
            got.push_str(&String::from_utf8_lossy(&b));
        }
    }
    assert!(got.starts_with("INFO {"));
    ws.send(Message::Binary(
        b"CONNECT {\"verbose\":false}\r\nPING\r\n".to_vec().into(),
    ))
    .unwrap();
    let mut got = String::new();
    while !got.contains("PONG") {
        if let Message::Binary(b) = ws.read().expect("PONG") {
            got.push_str(&String::from_utf8_lossy(&b));
        }
    }
    // Plain ws:// to the wss:// listener fails.
    assert!(open(addr, None).is_err());
}

#[test]
fn plain_ws_needs_consent_off_loopback() {
    for (text, key) in [
        (
            "[websocket]\nlisten = \"0.0.0.0:8080\"\nno_tls = true\n",
            "websocket.no_tls",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8080\"\n",
            "websocket.cert_file",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8080\"\nno_tls = true\nallowed_origins = [\"*\"]\n",
            "websocket.allowed_origins",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8080\"\ncert_file = \"c.pem\"\n",
            "websocket.key_file",
        ),
    ] {
        let e = Config::from_toml(text, std::path::Path::new("node.toml"))
            .expect_err(text)
            .to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let behind_proxy =
        "[websocket]\nlisten = \"0.0.0.0:8080\"\nno_tls = true\nbehind_tls_proxy = true\n";
    assert!(Config::from_toml(behind_proxy, std::path::Path::new("node.toml")).is_ok());
}
