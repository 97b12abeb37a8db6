//! Encoders: operations into the bytes the wire expects, appended to a buffer.

use super::info::ServerInfo;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";
pub const OK: &[u8] = b"+OK\r\n";
pub const CRLF: &[u8] = b"\r\n";

/// The no-responders status a requester gets when nobody listens on the subject.
pub const NO_RESPONDERS_STATUS: &[u8] = b"NATS/1.0 503\r\n";

/// An upper bound of the bytes [`write_msg`] appends, for sizing and byte bounds.
pub fn msg_len(subject: &[u8], sid: &[u8], reply: Option<&[u8]>, data_len: usize) -> usize {
    // "HMSG " + subject + " " + sid + " " + reply + " " + 20 + " " + 20 + "\r\n"
    5 + subject.len() + 1 + sid.len() + reply.map_or(0, |r| r.len() + 1) + 44 + data_len + 2
}

/// Writes a complete `MSG` or `HMSG` (with `headers = Some(header_len)`) frame.
pub fn write_msg(
    buf: &mut Vec<u8>,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<usize>,
    data: &[u8],
) {
    buf.reserve(msg_len(subject, sid, reply, data.len()));
    let op: &[u8] = if headers.is_some() { b"HMSG " } else { b"MSG " };
    write_frame(buf, op, subject, Some(sid), reply, headers, data);
}

/// Writes a `PUB` or `HPUB` frame (client side).
pub fn write_pub(
    buf: &mut Vec<u8>,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<usize>,
    data: &[u8],
) {
    let op: &[u8] = if headers.is_some() { b"HPUB " } else { b"PUB " };
    write_frame(buf, op, subject, None, reply, headers, data);
}

/// `op subject [sid] [reply] [hdr_len] total\r\n data\r\n`
fn write_frame(
    buf: &mut Vec<u8>,
    op: &[u8],
    subject: &[u8],
    sid: Option<&[u8]>,
    reply: Option<&[u8]>,
    headers: Option<usize>,
    data: &[u8],
) {
    let mut ints = itoa::Buffer::new();
    buf.extend_from_slice(op);
    buf.extend_from_slice(subject);
    buf.push(b' ');
    for arg in [sid, reply].into_iter().flatten() {
        buf.extend_from_slice(arg);
        buf.push(b' ');
    }
    if let Some(h) = headers {
        buf.extend_from_slice(ints.format(h).as_bytes());
        buf.push(b' ');
    }
    buf.extend_from_slice(ints.format(data.len()).as_bytes());
    buf.extend_from_slice(CRLF);
    buf.extend_from_slice(data);
    buf.extend_from_slice(CRLF);
}

/// Writes a `SUB` (client side).
pub fn write_sub(buf: &mut Vec<u8>, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
    buf.extend_from_slice(b"SUB ");
    buf.extend_from_slice(subject);
    buf.push(b' ');
    if let Some(q) = queue {
        buf.extend_from_slice(q);
        buf.push(b' ');
    }
    buf.extend_from_slice(sid);
    buf.extend_from_slice(CRLF);
}

/// Writes `INFO {...} ` with the reference's trailing space before CRLF.
pub fn write_info(buf: &mut Vec<u8>, info: &ServerInfo) {
    buf.extend_from_slice(b"INFO ");
    // Serializing a struct of strings and numbers cannot fail.
    if serde_json::to_writer(&mut *buf, info).is_err() {
        buf.extend_from_slice(b"{}");
    }
    buf.extend_from_slice(b" \r\n");
}

/// Writes `-ERR 'text'`.
pub fn write_err(buf: &mut Vec<u8>, text: &str) {
    buf.extend_from_slice(b"-ERR '");
    buf.extend_from_slice(text.as_bytes());
    buf.extend_from_slice(b"'\r\n");
}

/// Writes the 503 no-responders status message to `reply` on `sid`, naming the subject
/// that had no responders as the reference does.
pub fn write_no_responders(buf: &mut Vec<u8>, reply: &[u8], sid: &[u8], subject: &[u8]) {
    let mut hdr = Vec::with_capacity(48 + subject.len());
    hdr.extend_from_slice(NO_RESPONDERS_STATUS);
    hdr.extend_from_slice(b"Nats-Subject: ");
    hdr.extend_from_slice(subject);
    hdr.extend_from_slice(b"\r\n\r\n");
    write_msg(buf, reply, sid, None, Some(hdr.len()), &hdr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::parser::{Op, Parsed, Parser};

    #[test]
    fn msg_frames_round_trip_through_the_parser() {
        let p = Parser::new(4096, 1 << 20);
        let mut buf = Vec::new();
        write_msg(
            &mut buf,
            b"foo.bar",
            b"7",
            Some(b"_INBOX.x"),
            None,
            b"hello",
        );
        assert_eq!(buf, b"MSG foo.bar 7 _INBOX.x 5\r\nhello\r\n");
        let Parsed::Op(op, n) = p.parse(&buf).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(n, buf.len());
        assert_eq!(
            op,
            Op::Msg {
                subject: b"foo.bar",
                sid: b"7",
                reply: Some(b"_INBOX.x"),
                headers: None,
                data: b"hello"
            }
        );
        let mut buf = Vec::new();
        write_pub(&mut buf, b"a", None, Some(12), b"NATS/1.0\r\n\r\nhi");
        assert_eq!(
            p.parse(&buf).unwrap(),
            Parsed::Op(
                Op::Pub {
                    subject: b"a",
                    reply: None,
                    headers: Some(12),
                    data: b"NATS/1.0\r\n\r\nhi"
                },
                buf.len()
            )
        );
    }

    #[test]
    fn no_responders_matches_the_reference_bytes() {
        let mut buf = Vec::new();
        write_no_responders(&mut buf, b"r.x", b"5", b"nobody");
        assert_eq!(
            buf,
            b"HMSG r.x 5 38 38\r\nNATS/1.0 503\r\nNats-Subject: nobody\r\n\r\n\r\n"
        );
    }
}
