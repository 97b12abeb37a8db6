//! Encode → parse gives back the same operation, for any subject, reply, sid, headers
//! length and payload the encoders accept.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::proto::{encode, Op, Parsed, Parser};

#[derive(Arbitrary, Debug)]
struct Frame {
    subject: Vec<u8>,
    reply: Option<Vec<u8>>,
    sid: Vec<u8>,
    headers: Option<u8>,
    data: Vec<u8>,
    msg: bool,
}

/// A protocol token: non-empty, no whitespace (the encoders do not escape).
fn token(bytes: &[u8]) -> Option<Vec<u8>> {
    let t: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    (!t.is_empty()).then_some(t)
}

fuzz_target!(|f: Frame| {
    let (Some(subject), Some(sid)) = (token(&f.subject), token(&f.sid)) else {
        return;
    };
    let reply = match &f.reply {
        Some(r) => match token(r) {
            Some(t) => Some(t),
            None => return,
        },
        None => None,
    };
    let headers = f.headers.map(|h| usize::from(h).min(f.data.len()));
    let mut buf = Vec::new();
    if f.msg {
        encode::write_msg(&mut buf, &subject, &sid, reply.as_deref(), headers, &f.data);
    } else {
        encode::write_pub(&mut buf, &subject, reply.as_deref(), headers, &f.data);
    }
    assert!(buf.len() <= encode::msg_len(&subject, &sid, reply.as_deref(), f.data.len()) || !f.msg);
    let parser = Parser::new(1 << 16, 1 << 20);
    let Ok(Parsed::Op(op, n)) = parser.parse(&buf) else {
        panic!(
            "an encoded frame does not parse: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    assert_eq!(n, buf.len());
    let expected = if f.msg {
        Op::Msg {
            subject: &subject,
            sid: &sid,
            reply: reply.as_deref(),
            headers,
            data: &f.data,
        }
    } else {
        Op::Pub {
            subject: &subject,
            reply: reply.as_deref(),
            headers,
            data: &f.data,
        }
    };
    assert_eq!(op, expected);
});
