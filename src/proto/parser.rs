//! The NATS text protocol parser: bytes in, one operation out, nothing else.
//!
//! The parser is stateless between calls and never consumes input it cannot use yet:
//! [`Parser::parse`] looks at the front of the read buffer and either returns an
//! operation with the number of bytes it spans, or says how many bytes it needs. The
//! caller drops the consumed bytes after handling the operation, so operations borrow
//! from the read buffer and payloads are never copied here. Any split of the input gives
//! the same operations (tested below at every offset).
//!
//! Both directions are parsed by the same code: servers read `PUB`/`HPUB`/`SUB`/...
//! and clients read `MSG`/`HMSG`/`INFO`/...; the caller decides which operations are
//! allowed where. Limits (control line, payload) are enforced here, before anything is
//! buffered for a payload.

use super::errors::ProtoError;

/// One protocol operation, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Op<'a> {
    Connect(&'a [u8]),
    Info(&'a [u8]),
    /// `PUB` (headers `None`) and `HPUB` (headers `Some(len)`); `data` holds the header
    /// block followed by the payload, without the trailing CRLF.
    Pub {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        headers: Option<usize>,
        data: &'a [u8],
    },
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    Unsub {
        sid: &'a [u8],
        max: Option<u64>,
    },
    /// `MSG` and `HMSG`, as a client receives them.
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        reply: Option<&'a [u8]>,
        headers: Option<usize>,
        data: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// The outcome of one call to [`Parser::parse`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// An operation and the number of bytes it spans (to be consumed by the caller).
    Op(Op<'a>, usize),
    /// Not enough bytes yet; `need` is the total buffer length that will make progress
    /// when known (a payload), otherwise 0.
    Incomplete { need: usize },
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct Parser {
    pub max_control_line: usize,
    pub max_payload: usize,
    /// Whether HPUB is accepted: a server sets it from the client's CONNECT (the
    /// reference refuses an HPUB on its control line, before any payload).
    pub headers: bool,
}

const MAX_ARGS: usize = 6;

impl Parser {
    pub fn new(max_control_line: usize, max_payload: usize) -> Self {
        Parser {
            max_control_line,
            max_payload,
            headers: true,
        }
    }

    pub fn parse<'a>(&self, buf: &'a [u8]) -> Result<Parsed<'a>, ProtoError> {
        // The name first: a wrong one is known before the line ends (and so whatever
        // the chunking), an overlong line only once it is longer than allowed.
        let Some((op, after, name_len)) = op_name(buf)? else {
            return Ok(Parsed::Incomplete { need: 0 });
        };
        // Like the reference, the limit counts the arguments only: not the name, not
        // the whitespace after it, not the line end.
        let args_at = name_len
            + buf[name_len..]
                .iter()
                .take_while(|&&b| after != After::Ignored && is_ws(b))
                .count();
        // A CONNECT or INFO whose name (and spaces) a bare LF follows: the reference
        // takes that LF as the argument's first byte, and the line runs on to the
        // next LF.
        let search_from = if after == After::Optional && buf.get(args_at) == Some(&b'\n') {
            args_at + 1
        } else {
            name_len
        };
        let limit = args_at + self.max_control_line + 2;
        let window = &buf[search_from..buf.len().min(limit)];
        let Some(nl) = memchr::memchr(b'\n', window).map(|i| i + search_from) else {
            if trim_cr(&buf[args_at..]).len() > self.max_control_line {
                return Err(ProtoError::MaxControlLine);
            }
            return Ok(Parsed::Incomplete { need: 0 });
        };
        let line_end = nl + 1;
        let rest = trim_cr(&buf[args_at..nl]);
        if rest.len() > self.max_control_line {
            return Err(ProtoError::MaxControlLine);
        }
        match op {
            OpCode::Ping => Ok(Parsed::Op(Op::Ping, line_end)),
            OpCode::Pong => Ok(Parsed::Op(Op::Pong, line_end)),
            OpCode::Ok => Ok(Parsed::Op(Op::Ok, line_end)),
            OpCode::Err => Ok(Parsed::Op(Op::Err(trim_ws(rest)), line_end)),
            OpCode::Connect => Ok(Parsed::Op(Op::Connect(rest), line_end)),
            OpCode::Info => Ok(Parsed::Op(Op::Info(rest), line_end)),
            OpCode::Sub => {
                let args = Args::split_at_cr_too(require(rest)?)?;
                let (subject, queue, sid) = match args.as_slice() {
                    [subject, sid] => (*subject, None, *sid),
                    [subject, queue, sid] => (*subject, Some(*queue), *sid),
                    _ => return Err(ProtoError::BadArgs("SUB")),
                };
                Ok(Parsed::Op(
                    Op::Sub {
                        subject,
                        queue,
                        sid,
                    },
                    line_end,
                ))
            }
            OpCode::Unsub => {
                let args = Args::split_at_cr_too(require(rest)?)?;
                let (sid, max) = match args.as_slice() {
                    [sid] => (*sid, None),
                    [sid, max] => (
                        *sid,
                        Some(parse_u64(max).ok_or(ProtoError::BadArgs("UNSUB"))?),
                    ),
                    _ => return Err(ProtoError::BadArgs("UNSUB")),
                };
                Ok(Parsed::Op(Op::Unsub { sid, max }, line_end))
            }
            OpCode::HPub if !self.headers => Err(ProtoError::HeadersNotSupported),
            OpCode::Pub | OpCode::HPub => {
                let with_headers = op == OpCode::HPub;
                let name = if with_headers { "HPUB" } else { "PUB" };
                let m = match self.message(buf, line_end, rest, name, with_headers, false)? {
                    Ok(m) => m,
                    Err(need) => return Ok(Parsed::Incomplete { need }),
                };
                let op = Op::Pub {
                    subject: m.subject,
                    reply: m.reply,
                    headers: m.headers,
                    data: m.data,
                };
                Ok(Parsed::Op(op, m.consumed))
            }
            OpCode::Msg | OpCode::HMsg => {
                let with_headers = op == OpCode::HMsg;
                let name = if with_headers { "HMSG" } else { "MSG" };
                let m = match self.message(buf, line_end, rest, name, with_headers, true)? {
                    Ok(m) => m,
                    Err(need) => return Ok(Parsed::Incomplete { need }),
                };
                let op = Op::Msg {
                    subject: m.subject,
                    sid: m.sid,
                    reply: m.reply,
                    headers: m.headers,
                    data: m.data,
                };
                Ok(Parsed::Op(op, m.consumed))
            }
        }
    }

    /// The part PUB, HPUB, MSG and HMSG share: `subject [sid] [reply] [hdr] total`,
    /// then the payload. `Err(need)` when the payload has not all arrived.
    fn message<'a>(
        &self,
        buf: &'a [u8],
        line_end: usize,
        rest: &'a [u8],
        name: &'static str,
        with_headers: bool,
        with_sid: bool,
    ) -> Result<Result<Message<'a>, usize>, ProtoError> {
        let args = Args::split(require(rest)?)?;
        let args = args.as_slice();
        let skip = usize::from(with_sid);
        let (subject, reply, (headers, total)) =
            split_sizes(args, with_headers, skip).ok_or(ProtoError::BadArgs(name))?;
        if total > self.max_payload {
            return Err(ProtoError::MaxPayload);
        }
        let Some((data, consumed)) = payload(buf, line_end, total)? else {
            return Ok(Err(line_end + total + 2));
        };
        Ok(Ok(Message {
            subject,
            sid: if with_sid { args[1] } else { &[] },
            reply,
            headers,
            data,
            consumed,
        }))
    }
}

/// A message operation's fields, before they become an [`Op`].
struct Message<'a> {
    subject: &'a [u8],
    sid: &'a [u8],
    reply: Option<&'a [u8]>,
    headers: Option<usize>,
    data: &'a [u8],
    consumed: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OpCode {
    Connect,
    Info,
    Pub,
    HPub,
    Sub,
    Unsub,
    Msg,
    HMsg,
    Ping,
    Pong,
    Ok,
    Err,
}

/// What may follow an operation's name, as the reference's state machine reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum After {
    /// PING, PONG, +OK: whatever comes up to the line end is ignored (`PINGx` is a
    /// PING to the reference).
    Ignored,
    /// CONNECT, INFO: optional whitespace, then the argument, which may be empty
    /// (`CONNECT{}` is a CONNECT).
    Optional,
    /// The rest: a space or tab, then the arguments.
    Space,
}

const OPS: [(&[u8], OpCode, After); 12] = [
    (b"PUB", OpCode::Pub, After::Space),
    (b"HPUB", OpCode::HPub, After::Space),
    (b"SUB", OpCode::Sub, After::Space),
    (b"UNSUB", OpCode::Unsub, After::Space),
    (b"PING", OpCode::Ping, After::Ignored),
    (b"PONG", OpCode::Pong, After::Ignored),
    (b"MSG", OpCode::Msg, After::Space),
    (b"HMSG", OpCode::HMsg, After::Space),
    (b"CONNECT", OpCode::Connect, After::Optional),
    (b"INFO", OpCode::Info, After::Optional),
    (b"+OK", OpCode::Ok, After::Ignored),
    (b"-ERR", OpCode::Err, After::Space),
];

/// The operation whose name begins `buf` (any case), what may follow it and the
/// name's length; `None` while `buf` is too short to tell. No name is a prefix of
/// another, so at most one matches.
fn op_name(buf: &[u8]) -> Result<Option<(OpCode, After, usize)>, ProtoError> {
    for &(name, code, after) in &OPS {
        let n = name.len().min(buf.len());
        if !buf[..n].eq_ignore_ascii_case(&name[..n]) {
            continue;
        }
        if buf.len() < name.len() {
            return Ok(None);
        }
        if after == After::Space {
            match buf.get(name.len()) {
                None => return Ok(None),
                Some(&b) if is_ws(b) => {}
                Some(_) => return Err(ProtoError::UnknownOp),
            }
        }
        return Ok(Some((code, after, name.len())));
    }
    Err(ProtoError::UnknownOp)
}

/// Fails early when the bytes seen so far cannot begin any of `names`.
pub(super) fn check_prefix<'n>(
    buf: &[u8],
    names: impl IntoIterator<Item = &'n [u8]>,
) -> Result<(), ProtoError> {
    let end = buf
        .iter()
        .position(|&b| is_ws(b) || b == b'\r')
        .unwrap_or(buf.len());
    let prefix = &buf[..end];
    let complete = end < buf.len();
    let plausible = names.into_iter().any(|n| {
        if complete {
            n.eq_ignore_ascii_case(prefix)
        } else {
            n.len() >= prefix.len() && n[..prefix.len()].eq_ignore_ascii_case(prefix)
        }
    });
    if plausible {
        Ok(())
    } else {
        Err(ProtoError::UnknownOp)
    }
}

#[inline]
pub(super) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub(super) fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_ws(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_ws(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Splits a control line into its operation name and the rest (arguments).
pub(super) fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| is_ws(b)) {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, &[]),
    }
}

/// An operation that needs arguments and got only whitespace (`SUB \r\n`; without
/// the space it is an unknown operation).
fn require(rest: &[u8]) -> Result<&[u8], ProtoError> {
    let rest = trim_ws(rest);
    if rest.is_empty() {
        Err(ProtoError::BadArgs("no arguments"))
    } else {
        Ok(rest)
    }
}

struct Args<'a> {
    items: [&'a [u8]; MAX_ARGS],
    len: usize,
}

impl<'a> Args<'a> {
    /// Arguments between spaces and tabs (a message's: PUB, HPUB, MSG, ...).
    fn split(rest: &'a [u8]) -> Result<Self, ProtoError> {
        Self::split_by(rest, is_ws)
    }

    /// Arguments between spaces, tabs and CRs, as the reference splits SUB's and
    /// UNSUB's (`SUB a\r1` subscribes to `a` with sid 1; `PUB a\r2` it refuses).
    fn split_at_cr_too(rest: &'a [u8]) -> Result<Self, ProtoError> {
        Self::split_by(rest, |b| is_ws(b) || b == b'\r')
    }

    fn split_by(rest: &'a [u8], separator: impl Fn(u8) -> bool) -> Result<Self, ProtoError> {
        let mut args = Args {
            items: [&[][..]; MAX_ARGS],
            len: 0,
        };
        for item in rest.split(|&b| separator(b)).filter(|s| !s.is_empty()) {
            if args.len == MAX_ARGS {
                return Err(ProtoError::BadArgs("too many arguments"));
            }
            args.items[args.len] = item;
            args.len += 1;
        }
        Ok(args)
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        &self.items[..self.len]
    }
}

/// Reads `subject [skip...] [reply] [hdr] total` where `skip` arguments (the sid of
/// MSG) follow the subject. Returns (subject, reply, (headers, total)).
#[allow(clippy::type_complexity)]
fn split_sizes<'a>(
    args: &[&'a [u8]],
    with_headers: bool,
    skip: usize,
) -> Option<(&'a [u8], Option<&'a [u8]>, (Option<usize>, usize))> {
    let sizes = if with_headers { 2 } else { 1 };
    let fixed = 1 + skip + sizes;
    let reply = match args.len().checked_sub(fixed)? {
        0 => None,
        1 => Some(args[1 + skip]),
        _ => return None,
    };
    let tail = &args[args.len() - sizes..];
    let total = parse_usize(tail[sizes - 1])?;
    let headers = if with_headers {
        let h = parse_usize(tail[0])?;
        if h > total {
            return None;
        }
        Some(h)
    } else {
        None
    };
    Some((args[0], reply, (headers, total)))
}

/// The payload after a control line, if all of it (and its CRLF) has arrived.
#[allow(clippy::type_complexity)]
pub(super) fn payload(
    buf: &[u8],
    start: usize,
    len: usize,
) -> Result<Option<(&[u8], usize)>, ProtoError> {
    let end = start + len;
    if buf.len() < end + 2 {
        // Reject a wrong terminator as soon as its first byte is there.
        if buf.len() > end && buf[end] != b'\r' {
            return Err(ProtoError::UnknownOp);
        }
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ProtoError::UnknownOp);
    }
    Ok(Some((&buf[start..end], end + 2)))
}

pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

pub(super) fn parse_usize(s: &[u8]) -> Option<usize> {
    parse_u64(s).and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Parser {
        Parser::new(4096, 1 << 20)
    }

    /// Parses a whole buffer into owned debug strings of its operations.
    fn parse_all(p: &Parser, mut buf: &[u8]) -> Result<Vec<String>, ProtoError> {
        let mut out = Vec::new();
        loop {
            match p.parse(buf)? {
                Parsed::Op(op, n) => {
                    out.push(format!("{op:?}"));
                    buf = &buf[n..];
                }
                Parsed::Incomplete { .. } => return Ok(out),
            }
        }
    }

    const SCRIPT: &[u8] =
        b"CONNECT {\"verbose\":false}\r\nPING\r\npong\r\nSUB foo 1\r\nsub foo q 2\r\n\
UNSUB 1\r\nUNSUB 2 10\r\nPUB foo 5\r\nhello\r\nPUB foo bar 0\r\n\r\n\
HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nHPUB foo r 12 12\r\nNATS/1.0\r\n\r\n\r\n\
MSG foo 1 2\r\nhi\r\nMSG foo 1 r 2\r\nhi\r\nHMSG foo 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n\
+OK\r\n-ERR 'Unknown Protocol Operation'\r\nINFO {}\r\nSUB\tbar\t 3\nPING\n";

    #[test]
    fn parses_every_operation() {
        let ops = parse_all(&parser(), SCRIPT).unwrap();
        assert_eq!(ops.len(), 19, "{ops:#?}");
        let p = parser();
        assert_eq!(
            p.parse(b"HPUB foo r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
                .unwrap(),
            Parsed::Op(
                Op::Pub {
                    subject: b"foo",
                    reply: Some(b"r"),
                    headers: Some(12),
                    data: b"NATS/1.0\r\n\r\nhi"
                },
                34
            )
        );
        assert_eq!(
            p.parse(b"UNSUB 7 3\r\n").unwrap(),
            Parsed::Op(
                Op::Unsub {
                    sid: b"7",
                    max: Some(3)
                },
                11
            )
        );
    }

    #[test]
    fn sub_and_unsub_split_at_a_cr_as_the_reference_does_but_pub_does_not() {
        let p = parser();
        assert_eq!(
            p.parse(b"SUB a\r1\r\n").unwrap(),
            Parsed::Op(
                Op::Sub {
                    subject: b"a",
                    queue: None,
                    sid: b"1"
                },
                9
            )
        );
        assert_eq!(
            p.parse(b"SUB \ra\rq 1\r\n").unwrap(),
            Parsed::Op(
                Op::Sub {
                    subject: b"a",
                    queue: Some(b"q"),
                    sid: b"1"
                },
                12
            )
        );
        assert_eq!(
            p.parse(b"UNSUB 1\r2\r\n").unwrap(),
            Parsed::Op(
                Op::Unsub {
                    sid: b"1",
                    max: Some(2)
                },
                11
            )
        );
        assert!(p.parse(b"PUB a\r2\r\nhi\r\n").is_err());
    }

    #[test]
    fn every_split_gives_the_same_operations() {
        let p = parser();
        let whole = parse_all(&p, SCRIPT).unwrap();
        for cut in 0..SCRIPT.len() {
            // Feed the first part, consume what parses, then append the rest.
            let mut buf = SCRIPT[..cut].to_vec();
            let mut ops = Vec::new();
            let mut rest = &SCRIPT[cut..];
            loop {
                match p.parse(&buf).unwrap() {
                    Parsed::Op(op, n) => {
                        ops.push(format!("{op:?}"));
                        buf.drain(..n);
                    }
                    Parsed::Incomplete { .. } if !rest.is_empty() => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                    Parsed::Incomplete { .. } => break,
                }
            }
            assert_eq!(ops, whole, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn errors_match_the_reference_classes() {
        let p = parser();
        let err = |b: &[u8]| p.parse(b).unwrap_err();
        assert_eq!(err(b"FOO bar\r\n"), ProtoError::UnknownOp);
        assert_eq!(err(b"FOO"), ProtoError::UnknownOp);
        assert_eq!(err(b"SUB\r\n"), ProtoError::UnknownOp);
        assert_eq!(err(b"PUB\r\n"), ProtoError::UnknownOp);
        assert_eq!(err(b"UNSUB\r\n"), ProtoError::UnknownOp);
        assert!(matches!(err(b"SUB foo\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err(b"SUB a b c d\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err(b"PUB foo x\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err(b"PUB foo -1\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err(b"PUB a b c 1\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err(b"HPUB foo 10 5\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err(b"UNSUB 1 x\r\n"), ProtoError::BadArgs(_)));
        assert_eq!(err(b"PUB foo 2000000\r\n"), ProtoError::MaxPayload);
        assert_eq!(err(b"PUB foo 2\r\nhiXX\r\n"), ProtoError::UnknownOp);
        assert_eq!(err(b"PUB foo 2\r\nhiX"), ProtoError::UnknownOp);
        let mut long = b"SUB ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(err(&long), ProtoError::MaxControlLine);
        long.extend_from_slice(b" 1\r\n");
        assert_eq!(err(&long), ProtoError::MaxControlLine);
        assert_eq!(
            p.parse(b"PUB foo 10\r\nabc").unwrap(),
            Parsed::Incomplete { need: 24 }
        );
        assert_eq!(p.parse(b"PU").unwrap(), Parsed::Incomplete { need: 0 });
        let no_headers = Parser {
            headers: false,
            ..parser()
        };
        assert_eq!(
            no_headers.parse(b"HPUB a 12 14\r\n").unwrap_err(),
            ProtoError::HeadersNotSupported
        );
    }

    /// As the reference's state machine reads names: PING/PONG/+OK ignore what
    /// follows, CONNECT/INFO need no space, the rest need one; the control line limit
    /// counts the arguments only.
    #[test]
    fn names_and_line_limits_as_the_reference_reads_them() {
        let p = Parser::new(8, 4096);
        let ops = |b: &[u8]| parse_all(&p, b).unwrap();
        assert_eq!(
            ops(b"PINGx\r\nPONG 1\r\n+OKAY\r\nPING\r\r\n"),
            ["Ping", "Pong", "Ok", "Ping"]
        );
        assert_eq!(ops(b"CONNECT{}\r\n"), ["Connect([123, 125])"]);
        assert_eq!(ops(b"connect \r\n"), ["Connect([])"]);
        assert_eq!(
            ops(b"CONNECT \n{}\r\nPING\n"),
            ["Connect([10, 123, 125])", "Ping"]
        );
        assert_eq!(
            p.parse(b"CONNECT\n").unwrap(),
            Parsed::Incomplete { need: 0 }
        );
        assert_eq!(p.parse(b"SUBx a 1\r\n").unwrap_err(), ProtoError::UnknownOp);
        assert_eq!(p.parse(b"-ERR\r\n").unwrap_err(), ProtoError::UnknownOp);
        assert!(matches!(
            p.parse(b"SUB \r\n").unwrap_err(),
            ProtoError::BadArgs(_)
        ));
        // Eight bytes of arguments pass however much whitespace leads them.
        assert_eq!(ops(b"SUB      abcd 123\r\n").len(), 1);
        assert_eq!(
            p.parse(b"SUB abcd 1234\r\n").unwrap_err(),
            ProtoError::MaxControlLine
        );
        assert_eq!(
            p.parse(b"SUB abcd 1234").unwrap_err(),
            ProtoError::MaxControlLine
        );
        assert_eq!(
            p.parse(b"SUB abcd 123").unwrap(),
            Parsed::Incomplete { need: 0 }
        );
    }

    /// Found by fuzzing (client_proto): a wrong operation name with an overlong line
    /// was MaxControlLine when whole but UnknownOp when the name arrived first.
    #[test]
    fn unknown_name_wins_over_line_length_whatever_the_chunking() {
        let p = Parser::new(256, 4096);
        let mut line = b"CONNEC T{".to_vec();
        line.extend(std::iter::repeat_n(b'x', 254));
        line.extend_from_slice(b"\r\n");
        assert_eq!(p.parse(&line).unwrap_err(), ProtoError::UnknownOp);
        assert_eq!(p.parse(&line[..8]).unwrap_err(), ProtoError::UnknownOp);
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_u64(b""), None);
    }
}
