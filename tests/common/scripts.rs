//! Byte scripts for the wire tests, with what nats-server 2.15.1 answers to each
//! (recorded from the reference with INFO lines removed; `tests/differential.rs` runs
//! the same scripts against the reference itself).

use std::net::SocketAddr;
use std::time::Duration;

use super::Raw;

pub struct Script {
    pub name: &'static str,
    pub chunks: &'static [&'static [u8]],
    /// Everything the server sends after its first INFO, other INFO lines removed.
    pub expect: &'static [u8],
    pub closed: bool,
}

const C: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}\r\n";

macro_rules! script {
    ($name:literal, [$($chunk:expr),* $(,)?], $expect:expr, $closed:expr) => {
        Script { name: $name, chunks: &[$($chunk),*], expect: $expect, closed: $closed }
    };
}

pub const SCRIPTS: &[Script] = &[
    script!("unknown op", [C, b"FOO bar\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("SUB without args", [C, b"SUB\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("SUB with one arg", [C, b"SUB foo\r\n"], b"", true),
    script!("SUB with four args", [C, b"SUB a b c d\r\n"], b"", true),
    script!("SUB invalid subject", [C, b"SUB foo..bar 1\r\nPING\r\n"], b"-ERR 'Invalid Subject'\r\nPONG\r\n", false),
    script!("SUB > not last", [C, b"SUB foo.>.bar 1\r\nPING\r\n"], b"-ERR 'Invalid Subject'\r\nPONG\r\n", false),
    script!("SUB empty first token", [C, b"SUB .foo 1\r\nPING\r\n"], b"-ERR 'Invalid Subject'\r\nPONG\r\n", false),
    script!("PUB without args", [C, b"PUB\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("PUB bad size", [C, b"PUB foo x\r\n"], b"", true),
    script!("PUB negative size", [C, b"PUB foo -1\r\n"], b"", true),
    script!("PUB wildcard subject", [C, b"PUB foo.* 2\r\nhi\r\nPING\r\n"], b"PONG\r\n", false),
    script!("PUB wildcard pedantic", [b"CONNECT {\"pedantic\":true}\r\n", b"PUB foo.* 2\r\nhi\r\nPING\r\n"],
        b"+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n", false),
    script!("PUB bad payload end", [C, b"PUB foo 2\r\nhiXX\r\nPING\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("UNSUB without args", [C, b"UNSUB\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("UNSUB unknown sid", [C, b"UNSUB 99\r\nPING\r\n"], b"PONG\r\n", false),
    script!("UNSUB non-numeric sid", [C, b"UNSUB x\r\nPING\r\n"], b"PONG\r\n", false),
    // A CR separates SUB's and UNSUB's arguments as a space does; PUB's, it does not.
    script!("SUB args split at a CR", [C, b"SUB a\r1\r\nSUB \rb\rq 2\r\nPUB a 2\r\nhi\r\nPUB b 1\r\nx\r\nPING\r\n"],
        b"MSG a 1 2\r\nhi\r\nMSG b 2 1\r\nx\r\nPONG\r\n", false),
    script!("UNSUB args split at a CR", [C, b"SUB a 1\r\nUNSUB 1\r1\r\nPUB a 1\r\nx\r\nPUB a 1\r\ny\r\nPING\r\n"],
        b"MSG a 1 1\r\nx\r\nPONG\r\n", false),
    script!("PUB args not split at a CR", [C, b"PUB a\r2\r\nhi\r\nPING\r\n"], b"", true),
    script!("HPUB header over total", [C, b"HPUB foo 10 5\r\n"], b"", true),
    script!("HPUB without headers", [b"CONNECT {}\r\n", b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n"], b"+OK\r\n", true),
    script!("max payload", [C, b"PUB foo 2000000\r\n"], b"-ERR 'Maximum Payload Violation'\r\n", true),
    script!("verbose", [b"CONNECT {\"verbose\":true}\r\n", b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\nPING\r\n"],
        b"+OK\r\n+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\n+OK\r\nPONG\r\n", false),
    script!("no_responders without headers", [b"CONNECT {\"no_responders\":true}\r\n", b"PING\r\n"],
        b"-ERR 'no responders requires headers support'\r\n", true),
    script!("bad CONNECT json", [b"CONNECT {bad\r\n", b"PING\r\n"], b"", true),
    script!("PUB before CONNECT", [b"PUB foo 2\r\nhi\r\n", b"PING\r\n"], b"+OK\r\nPONG\r\n", false),
    script!("PING before CONNECT", [b"PING\r\n"], b"PONG\r\n", false),
    script!("no responders", [C, b"SUB _INBOX.x 1\r\nPUB foo _INBOX.x 2\r\nhi\r\nPING\r\n"],
        b"HMSG _INBOX.x 1 35 35\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\nPONG\r\n", false),
    script!("no responders, only its own subscriber with echo off",
        [b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"echo\":false}\r\n",
         b"SUB foo 1\r\nSUB _INBOX.x 2\r\nPUB foo _INBOX.x 2\r\nhi\r\nPING\r\n"],
        b"HMSG _INBOX.x 2 35 35\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\nPONG\r\n", false),
    script!("no responders needs a reply", [C, b"SUB _INBOX.x 1\r\nPUB foo 2\r\nhi\r\nPING\r\n"], b"PONG\r\n", false),
    script!("HPUB multi-value headers", [C, b"SUB foo 1\r\nHPUB foo 24 26\r\nNATS/1.0\r\nA: b\r\nA: c\r\n\r\nhi\r\nPING\r\n"],
        b"HMSG foo 1 24 26\r\nNATS/1.0\r\nA: b\r\nA: c\r\n\r\nhi\r\nPONG\r\n", false),
    script!("queue and plain", [C, b"SUB foo q 1\r\nSUB > 2\r\nPUB foo bar 2\r\nhi\r\nPING\r\n"],
        b"MSG foo 2 bar 2\r\nhi\r\nMSG foo 1 bar 2\r\nhi\r\nPONG\r\n", false),
    script!("lower case ops", [b"connect {}\r\n", b"sub foo 1\r\npub foo 2\r\nhi\r\nping\r\n"],
        b"+OK\r\n+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\nPONG\r\n", false),
    script!("tabs and spaces", [C, b"SUB\tfoo\t 1\r\nPUB  foo   2\r\nhi\r\nPING\r\n"], b"MSG foo 1 2\r\nhi\r\nPONG\r\n", false),
    script!("LF line ends", [C, b"SUB foo 1\nPUB foo 2\nhi\r\nPING\n"], b"MSG foo 1 2\r\nhi\r\nPONG\r\n", false),
    script!("PONG from client", [C, b"PONG\r\nPING\r\n"], b"PONG\r\n", false),
    script!("duplicate sid", [C, b"SUB foo 1\r\nSUB bar 1\r\nPUB foo 1\r\na\r\nPUB bar 1\r\nb\r\nPING\r\n"],
        b"MSG foo 1 1\r\na\r\nPONG\r\n", false),
    script!("UNSUB max", [C, b"SUB foo 1\r\nUNSUB 1 2\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nPUB foo 1\r\nc\r\nPING\r\n"],
        b"MSG foo 1 1\r\na\r\nMSG foo 1 1\r\nb\r\nPONG\r\n", false),
    script!("UNSUB max counts earlier deliveries", [C, b"SUB foo 1\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nPUB foo 1\r\nc\r\nUNSUB 1 2\r\nPUB foo 1\r\nd\r\nPING\r\n"],
        b"MSG foo 1 1\r\na\r\nMSG foo 1 1\r\nb\r\nMSG foo 1 1\r\nc\r\nPONG\r\n", false),
    script!("UNSUB max after one", [C, b"SUB bar 2\r\nPUB bar 1\r\na\r\nUNSUB 2 2\r\nPUB bar 1\r\nb\r\nPUB bar 1\r\nc\r\nPING\r\n"],
        b"MSG bar 2 1\r\na\r\nMSG bar 2 1\r\nb\r\nPONG\r\n", false),
    script!("CONNECT then PING in separate reads", [b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n", b"PING\r\n"],
        b"PONG\r\n", false),
    script!("UNSUB max 0", [C, b"SUB foo 1\r\nUNSUB 1 0\r\nPUB foo 1\r\na\r\nPING\r\n"], b"PONG\r\n", false),
    script!("echo false", [b"CONNECT {\"echo\":false}\r\n", b"SUB foo 1\r\nPUB foo 1\r\na\r\nPING\r\n"],
        b"+OK\r\n+OK\r\n+OK\r\nPONG\r\n", false),
    script!("INFO from client", [C, b"INFO {}\r\nPING\r\n"], b"PONG\r\n", false),
    script!("MSG from client", [C, b"MSG foo 1 2\r\nhi\r\nPING\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("+OK from client", [C, b"+OK\r\nPING\r\n"], b"PONG\r\n", false),
    script!("-ERR from client", [C, b"-ERR 'x'\r\nPING\r\n"], b"", true),
    script!("PUB empty last token", [C, b"SUB > 1\r\nPUB foo. 1\r\na\r\nPING\r\n"], b"PONG\r\n", false),
    script!("PUB empty token pedantic", [b"CONNECT {\"pedantic\":true}\r\n", b"PUB foo. 1\r\na\r\nPING\r\n"],
        b"+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n", false),
    script!("PUB wildcard reaches wildcard subs", [C, b"SUB foo.* 1\r\nSUB > 2\r\nPUB foo.* 1\r\na\r\nPUB foo..x 1\r\nb\r\nPING\r\n"],
        b"MSG foo.* 2 1\r\na\r\nMSG foo.* 1 1\r\na\r\nPONG\r\n", false),
    script!("queue name with wildcard", [C, b"SUB foo q.* 1\r\nPING\r\n"], b"PONG\r\n", false),
    script!("PUB too many args", [C, b"PUB foo bar baz 1\r\na\r\nPING\r\n"], b"", true),
    script!("CONNECT twice", [C, C, b"PING\r\n"], b"PONG\r\n", false),
    script!("CONNECT unknown field", [b"CONNECT {\"foo\":1,\"verbose\":false}\r\n", b"PING\r\n"], b"PONG\r\n", false),
    script!("CONNECT protocol 2", [b"CONNECT {\"protocol\":2}\r\n", b"PING\r\n"], b"-ERR 'invalid client protocol'\r\n", true),
    script!("CONNECT wrong type", [b"CONNECT {\"verbose\":\"yes\"}\r\n", b"PING\r\n"], b"", true),
    script!("HPUB without status line", [C, b"SUB foo 1\r\nHPUB foo 4 6\r\nabcdhi\r\nPING\r\n"], b"HMSG foo 1 4 6\r\nabcdhi\r\nPONG\r\n", false),
    script!("UTF-8 subject", [C, b"SUB f\xc3\xa9 1\r\nPUB f\xc3\xa9 1\r\na\r\nPING\r\n"], b"MSG f\xc3\xa9 1 1\r\na\r\nPONG\r\n", false),
    script!("control byte in subject", [C, b"SUB f\x01o 1\r\nPUB f\x01o 1\r\na\r\nPING\r\n"], b"MSG f\x01o 1 1\r\na\r\nPONG\r\n", false),
    script!("payload split across reads", [C, b"SUB foo 1\r\nPUB foo 5\r\nhe", b"llo\r\nPING\r\n"], b"MSG foo 1 5\r\nhello\r\nPONG\r\n", false),
    // Reproducers found by the differential fuzzer (tests/wire_fuzz.rs), minimised.
    script!("PING and PONG ignore what follows the name", [C, b"PINGx\r\nPING x\r\nPING\r\r\nPONG 1\r\n"],
        b"PONG\r\nPONG\r\nPONG\r\n", false),
    script!("+OK ignores what follows", [C, b"+OKAY\r\nPING\r\n"], b"PONG\r\n", false),
    script!("-ERR needs a space", [C, b"-ERR\r\n"], b"-ERR 'Unknown Protocol Operation'\r\n", true),
    script!("CONNECT needs no space", [b"CONNECT{\"verbose\":false}\r\n", b"PING\r\n"], b"PONG\r\n", false),
    script!("CONNECT without a body", [b"CONNECT \r\n"], b"", true),
    script!("CONNECT then a bare LF runs on to the next line", [b"CONNECT \n{\"verbose\":false}\r\n", b"PING\r\n"], b"PONG\r\n", false),
    script!("CONNECT repeated key, last wins", [b"CONNECT {\"verbose\":true,\"verbose\":false}\r\n", b"PING\r\n"], b"PONG\r\n", false),
    script!("CONNECT repeated key, first of the wrong type", [b"CONNECT {\"verbose\":\"x\",\"verbose\":false}\r\n", b"PING\r\n"], b"", true),
    script!("CONNECT keys in any case, null keeps the default", [b"CONNECT {\"VERBOSE\":false,\"pedantic\":null}\r\n", b"PUB a.* 0\r\n\r\nPING\r\n"],
        b"-ERR 'Invalid Publish Subject'\r\nPONG\r\n", false),
    script!("second CONNECT keeps what it does not name", [b"CONNECT {\"verbose\":false,\"echo\":false}\r\n", b"CONNECT {\"name\":\"x\"}\r\nSUB a 1\r\nPUB a 1\r\nx\r\nPING\r\n"],
        b"PONG\r\n", false),
    script!("only the first PONG after CONNECT is followed by INFO", [b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n", b"PING\r\nCONNECT {\"protocol\":1}\r\nPING\r\n"],
        b"PONG\r\nPONG\r\n", false),
    script!("HPUB before CONNECT closes at its control line", [b"HPUB a 17 26\r\n"], b"", true),
    script!("SUB with only whitespace", [C, b"SUB \r\n"], b"", true),
    script!("INFO from client that is not JSON", [C, b"INFO x\r\n"], b"", true),
    script!("pedantic error still delivers", [b"CONNECT {\"verbose\":false,\"pedantic\":true}\r\n", b"SUB a.> 1\r\nPUB a.* 1\r\nx\r\nPING\r\n"],
        b"-ERR 'Invalid Publish Subject'\r\nMSG a.* 1 1\r\nx\r\nPONG\r\n", false),
    script!("pedantic before CONNECT", [b"PUB a.* 1\r\nx\r\n", b"PING\r\n"], b"-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n", false),
    script!("duplicate sid is not checked again", [C, b"SUB a 1\r\nSUB a..b 1\r\nPING\r\n"], b"PONG\r\n", false),
];

/// Removes every `INFO …\r\n` line.
pub fn strip_info(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |p| p + 2);
        let line = &rest[..end];
        if !line.starts_with(b"INFO ") {
            out.extend_from_slice(line);
        }
        rest = &rest[end..];
    }
    out
}

/// Runs a script and returns (what came back without INFO lines, closed by server).
pub fn run(addr: SocketAddr, script: &Script) -> (Vec<u8>, bool) {
    let mut raw = Raw::connect(addr);
    for chunk in script.chunks {
        raw.send(chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed = if script.closed {
        raw.read_to_close(Duration::from_secs(5))
    } else {
        let done = raw.read_until(b"PONG\r\n", Duration::from_secs(5));
        // Anything after the last PONG would be a bug too: give it a moment.
        let extra = raw.read_to_close(Duration::from_millis(100));
        assert!(done || extra, "{}: no PONG and not closed", script.name);
        extra
    };
    (strip_info(&raw.received), closed)
}

/// Runs every script, each against a fresh in-process node (scripts share subject
/// names), in parallel.
pub fn run_all_on_fresh_nodes() -> Vec<(&'static Script, (Vec<u8>, bool))> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = SCRIPTS
            .iter()
            .map(|script| {
                scope.spawn(move || {
                    let node = super::start(super::test_config());
                    (script, run(node.client_addr(), script))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("script thread"))
            .collect()
    })
}
