//! The route protocol: what two nodes of a cluster say to each other, parsed and
//! encoded as nats-server does (so its documentation and tools apply).
//!
//! A route carries interest (`RS+ account subject [queue weight]`,
//! `RS- account subject [queue]`) and messages (`RMSG account subject [reply] size`,
//! with the queue groups a message was picked for as `+ reply q1 q2` or `| q1 q2`, and
//! `HMSG` with a header size for messages with headers), besides INFO, CONNECT, PING,
//! PONG and `-ERR`. Nodes never advertise route pooling or leaf-origin support, so the
//! `LS+`/`LMSG` family never reaches them (the reference then uses one connection with
//! the account in every operation).

use serde::{Deserialize, Serialize};

use super::errors::ProtoError;
use super::parser::{check_prefix, is_ws, parse_usize, payload, split_op, trim_cr, trim_ws};

/// The INFO a node sends on a route, with the reference's field names (a subset:
/// what a peer needs to identify the node and to dial it back).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u8,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    pub max_payload: u64,
    pub cluster: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    /// `nats-route://host:port` a peer told about this node should dial.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// meshbroker's cluster-secret challenge: a fresh random value the peer must
    /// answer with an HMAC (the reference ignores the field).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// The answer to the peer's `nonce`, from the node that accepted the route.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proof: String,
}

/// Route protocol level the reference speaks.
pub const ROUTE_PROTO: u8 = 3;

/// The CONNECT a node sends on a route it dialed. `name` carries the server id, as in
/// the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteConnect {
    pub echo: bool,
    pub verbose: bool,
    pub pedantic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    pub tls_required: bool,
    pub headers: bool,
    pub name: String,
    pub cluster: String,
    /// meshbroker's answer to the acceptor's `nonce` (an HMAC with the cluster secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Default for RouteConnect {
    fn default() -> Self {
        RouteConnect {
            echo: true,
            verbose: false,
            pedantic: false,
            user: None,
            pass: None,
            tls_required: false,
            headers: true,
            name: String::new(),
            cluster: String::new(),
            sig: None,
        }
    }
}

/// One operation received on a route.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteOp<'a> {
    Info(&'a [u8]),
    Connect(&'a [u8]),
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
    /// `RS+`: the peer has (more) interest in `subject`; for a queue group, `weight`
    /// is how many of its members the peer holds.
    Sub {
        account: &'a [u8],
        subject: &'a [u8],
        queue: Option<(&'a [u8], u32)>,
    },
    /// `RS-`: the peer's interest is gone.
    Unsub {
        account: &'a [u8],
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
    },
    /// `RMSG` / `HMSG`: a message for the receiver's local subscribers, and for one
    /// local member of each queue group in `queues`.
    Msg(RouteMsg<'a>),
}

/// The outcome of one call to [`RouteParser::parse`] (as the client parser's).
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// An operation and the number of bytes it spans.
    Op(RouteOp<'a>, usize),
    /// Not enough bytes yet; `need` is the buffer length that will make progress when
    /// known (a payload), otherwise 0.
    Incomplete { need: usize },
}

/// A routed message.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct RouteMsg<'a> {
    pub account: &'a [u8],
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// The queue group names, space separated (see [`RouteMsg::queues`]).
    queue_list: &'a [u8],
    /// Length of the header block at the start of `data`, for `HMSG`.
    pub headers: Option<usize>,
    pub data: &'a [u8],
}

impl<'a> RouteMsg<'a> {
    /// The queue group names as sent: space separated, possibly empty.
    pub fn queue_list(&self) -> &'a [u8] {
        self.queue_list
    }

    /// The queue groups the sender picked this node's members for.
    pub fn queues(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        queue_names(self.queue_list)
    }
}

/// The names in an RMSG's queue list ([`RouteMsg::queue_list`]).
pub fn queue_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| is_ws(b)).filter(|q| !q.is_empty())
}

/// The account name Raft frames travel under on a route (`RMSG $MBR $MBR.RAFT …`). No
/// client can be in it: a route hands what comes under it to the Raft host, never to
/// the router, so only route peers (who proved the cluster secret) reach Raft.
pub const RAFT_ACCOUNT: &[u8] = b"$MBR";

/// The largest Raft frame a route accepts. A frame carries up to raft-rs'
/// `max_size_per_msg` of entries, or one entry alone when it is bigger, and an entry
/// holds a whole message: so a frame outgrows the clients' `max_payload` whenever a
/// burst of publishes is replicated. Bounded by the largest `max_payload` a node may be
/// configured with (64 MiB, as the reference) and room for the entries' framing.
pub const MAX_RAFT_FRAME: usize = (64 << 20) + (1 << 20);

/// Route protocol parser; like the client parser it is resumable (returns
/// `Incomplete` until an operation and its payload have arrived) and zero-copy.
#[derive(Debug, Clone, Copy)]
pub struct RouteParser {
    pub max_control_line: usize,
    pub max_payload: usize,
}

/// Operation names a route may send (`LS+`, `LS-` and `LMSG` are never asked for).
const ROUTE_OPS: [&[u8]; 10] = [
    b"RMSG", b"HMSG", b"RS+", b"RS-", b"PING", b"PONG", b"INFO", b"CONNECT", b"+OK", b"-ERR",
];

impl RouteParser {
    pub fn new(max_control_line: usize, max_payload: usize) -> Self {
        RouteParser {
            max_control_line,
            max_payload,
        }
    }

    pub fn parse<'a>(&self, buf: &'a [u8]) -> Result<Parsed<'a>, ProtoError> {
        let limit = self.max_control_line.saturating_add(10);
        let window = &buf[..buf.len().min(limit)];
        let Some(nl) = memchr::memchr(b'\n', window) else {
            check_prefix(buf, ROUTE_OPS)?;
            if buf.len() >= limit {
                return Err(ProtoError::MaxControlLine);
            }
            return Ok(Parsed::Incomplete { need: 0 });
        };
        let line_end = nl + 1;
        let (name, rest) = split_op(trim_cr(&buf[..nl]));
        let op = ROUTE_OPS
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or(ProtoError::UnknownOp)?;
        let args = trim_ws(rest);
        if args.len() > self.max_control_line {
            return Err(ProtoError::MaxControlLine);
        }
        let done = |op| Ok(Parsed::Op(op, line_end));
        match ROUTE_OPS[op] {
            b"RMSG" | b"HMSG" => {
                let with_headers = ROUTE_OPS[op] == b"HMSG";
                let Some(head) = MsgHead::parse(args, with_headers) else {
                    return Err(ProtoError::BadArgs("RMSG"));
                };
                let limit = if head.account == RAFT_ACCOUNT {
                    MAX_RAFT_FRAME
                } else {
                    self.max_payload
                };
                if head.total > limit {
                    return Err(ProtoError::MaxPayload);
                }
                let Some((data, consumed)) = payload(buf, line_end, head.total)? else {
                    return Ok(Parsed::Incomplete {
                        need: line_end + head.total + 2,
                    });
                };
                let msg = RouteMsg {
                    account: head.account,
                    subject: head.subject,
                    reply: head.reply,
                    queue_list: head.queues,
                    headers: head.headers,
                    data,
                };
                Ok(Parsed::Op(RouteOp::Msg(msg), consumed))
            }
            b"RS+" => {
                let mut it = args.split(|&b| is_ws(b)).filter(|s| !s.is_empty());
                let (Some(account), Some(subject)) = (it.next(), it.next()) else {
                    return Err(ProtoError::BadArgs("RS+"));
                };
                let queue = match (it.next(), it.next(), it.next()) {
                    (None, _, _) => None,
                    (Some(q), Some(w), None) => {
                        let weight = parse_usize(w)
                            .and_then(|w| u32::try_from(w).ok())
                            .ok_or(ProtoError::BadArgs("RS+"))?;
                        Some((q, weight))
                    }
                    // A queue without a weight counts one member, as the reference.
                    (Some(q), None, None) => Some((q, 1)),
                    _ => return Err(ProtoError::BadArgs("RS+")),
                };
                done(RouteOp::Sub {
                    account,
                    subject,
                    queue,
                })
            }
            b"RS-" => {
                let mut it = args.split(|&b| is_ws(b)).filter(|s| !s.is_empty());
                let (Some(account), Some(subject)) = (it.next(), it.next()) else {
                    return Err(ProtoError::BadArgs("RS-"));
                };
                let queue = it.next();
                if it.next().is_some() {
                    return Err(ProtoError::BadArgs("RS-"));
                }
                done(RouteOp::Unsub {
                    account,
                    subject,
                    queue,
                })
            }
            b"PING" => done(RouteOp::Ping),
            b"PONG" => done(RouteOp::Pong),
            b"+OK" => done(RouteOp::Ok),
            b"-ERR" => done(RouteOp::Err(args)),
            b"INFO" if !args.is_empty() => done(RouteOp::Info(args)),
            b"CONNECT" if !args.is_empty() => done(RouteOp::Connect(args)),
            _ => Err(ProtoError::UnknownOp),
        }
    }
}

/// The arguments of `RMSG`/`HMSG`:
/// `account subject [reply | + reply q… | "|" q…] [hdr] total`.
struct MsgHead<'a> {
    account: &'a [u8],
    subject: &'a [u8],
    reply: Option<&'a [u8]>,
    queues: &'a [u8],
    headers: Option<usize>,
    total: usize,
}

impl<'a> MsgHead<'a> {
    fn parse(args: &'a [u8], with_headers: bool) -> Option<MsgHead<'a>> {
        // Token spans, found without allocating: the first four and the last two are
        // all the shapes need; the queue list is the span between them.
        let mut count = 0usize;
        let mut first: [(usize, usize); 4] = [(0, 0); 4];
        let mut last: [(usize, usize); 2] = [(0, 0); 2];
        let mut i = 0;
        while i < args.len() {
            while i < args.len() && is_ws(args[i]) {
                i += 1;
            }
            if i == args.len() {
                break;
            }
            let start = i;
            while i < args.len() && !is_ws(args[i]) {
                i += 1;
            }
            if count < first.len() {
                first[count] = (start, i);
            }
            last = [last[1], (start, i)];
            count += 1;
        }
        let tok = |(s, e): (usize, usize)| &args[s..e];
        let sizes = if with_headers { 2 } else { 1 };
        // account, subject, sizes at least.
        let middle = count.checked_sub(2 + sizes)?;
        let total = parse_usize(tok(last[1]))?;
        let headers = if with_headers {
            let h = parse_usize(tok(last[0]))?;
            (h <= total).then_some(h)?;
            Some(h)
        } else {
            None
        };
        // Where the size arguments start: the queue list ends before them.
        let sizes_start = if with_headers { last[0].0 } else { last[1].0 };
        // The queue list runs from after `+ reply` or `|` up to the sizes.
        let list_after = |token: (usize, usize)| trim_ws(&args[token.1..sizes_start]);
        let (reply, queues): (Option<&[u8]>, &[u8]) = match middle {
            0 => (None, &[]),
            1 => {
                let t = tok(first[2]);
                if t == b"+" || t == b"|" {
                    return None;
                }
                (Some(t), &[])
            }
            _ => match tok(first[2]) {
                b"+" if middle >= 3 => (Some(tok(first[3])), list_after(first[3])),
                b"|" => (None, list_after(first[2])),
                _ => return None,
            },
        };
        Some(MsgHead {
            account: tok(first[0]),
            subject: tok(first[1]),
            reply,
            queues,
            headers,
            total,
        })
    }
}

/// Writes `RS+ account subject[ queue weight]`.
pub fn write_sub(buf: &mut Vec<u8>, account: &[u8], subject: &[u8], queue: Option<(&[u8], u32)>) {
    buf.extend_from_slice(b"RS+ ");
    buf.extend_from_slice(account);
    buf.push(b' ');
    buf.extend_from_slice(subject);
    if let Some((q, weight)) = queue {
        buf.push(b' ');
        buf.extend_from_slice(q);
        buf.push(b' ');
        buf.extend_from_slice(itoa::Buffer::new().format(weight).as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
}

/// Writes `RS- account subject[ queue]`.
pub fn write_unsub(buf: &mut Vec<u8>, account: &[u8], subject: &[u8], queue: Option<&[u8]>) {
    buf.extend_from_slice(b"RS- ");
    buf.extend_from_slice(account);
    buf.push(b' ');
    buf.extend_from_slice(subject);
    if let Some(q) = queue {
        buf.push(b' ');
        buf.extend_from_slice(q);
    }
    buf.extend_from_slice(b"\r\n");
}

/// Writes a routed message: `RMSG` (or `HMSG` when `headers` is the length of a header
/// block at the start of `data`), with the queue groups it was picked for.
#[allow(clippy::too_many_arguments)]
pub fn write_msg<Q: AsRef<[u8]>>(
    buf: &mut Vec<u8>,
    account: &[u8],
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: impl IntoIterator<Item = Q>,
    headers: Option<usize>,
    data: &[u8],
) {
    let mut queues = queues.into_iter().peekable();
    buf.extend_from_slice(if headers.is_some() {
        b"HMSG "
    } else {
        b"RMSG "
    });
    buf.extend_from_slice(account);
    buf.push(b' ');
    buf.extend_from_slice(subject);
    match (reply, queues.peek().is_none()) {
        (Some(r), true) => {
            buf.push(b' ');
            buf.extend_from_slice(r);
        }
        (Some(r), false) => {
            buf.extend_from_slice(b" + ");
            buf.extend_from_slice(r);
        }
        (None, false) => buf.extend_from_slice(b" |"),
        (None, true) => {}
    }
    for q in queues {
        buf.push(b' ');
        buf.extend_from_slice(q.as_ref());
    }
    let mut n = itoa::Buffer::new();
    if let Some(h) = headers {
        buf.push(b' ');
        buf.extend_from_slice(n.format(h).as_bytes());
    }
    buf.push(b' ');
    buf.extend_from_slice(n.format(data.len()).as_bytes());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

/// The header line that carries a delivery's own subject across a route between
/// meshbroker nodes. A JetStream consumer delivers a stored message to a deliver
/// subject (a client's inbox) under the subject it was stored with; a route routes by
/// the inbox, so the stored subject travels in this line and the receiving node puts
/// it back (`1`/`0`: whether the message had headers of its own).
pub const DELIVERED_AS: &[u8] = b"Nats-Mbr-Delivered: ";

/// Wraps a delivery of `data` (`headers`: its header block's length) made under
/// `subject`: the header block, with [`DELIVERED_AS`] as its second line, and its
/// length.
pub fn wrap_delivery(subject: &[u8], headers: Option<usize>, data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len() + subject.len() + 48);
    let (first, rest) = match headers {
        Some(n) => {
            let block = data.get(..n).unwrap_or_default();
            let end = memchr::memmem::find(block, b"\r\n").map_or(block.len(), |i| i + 2);
            (&block[..end], data.get(end..).unwrap_or_default())
        }
        None => (&b"NATS/1.0\r\n"[..], &b"\r\n"[..]),
    };
    out.extend_from_slice(first);
    out.extend_from_slice(DELIVERED_AS);
    out.push(if headers.is_some() { b'1' } else { b'0' });
    out.push(b' ');
    out.extend_from_slice(subject);
    out.extend_from_slice(b"\r\n");
    let hdr_len = out.len() + headers.map_or(2, |n| n.saturating_sub(first.len()));
    out.extend_from_slice(rest);
    if headers.is_none() {
        out.extend_from_slice(data);
    }
    (out, hdr_len)
}

/// A delivery unwrapped: its subject, its own header length, and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    pub subject: Vec<u8>,
    pub headers: Option<usize>,
    pub data: Vec<u8>,
}

/// Takes [`DELIVERED_AS`] out of a routed message, if it carries one.
pub fn unwrap_delivery(headers: Option<usize>, data: &[u8]) -> Option<Delivery> {
    let n = headers?;
    let block = data.get(..n)?;
    let first_end = memchr::memmem::find(block, b"\r\n")? + 2;
    let line = block.get(first_end..)?;
    let line = line.strip_prefix(DELIVERED_AS)?;
    let line_end = memchr::memmem::find(line, b"\r\n")?;
    let (flag, subject) = line[..line_end].split_first()?;
    let subject = subject.strip_prefix(b" ")?;
    if subject.is_empty() {
        return None;
    }
    let after = first_end + DELIVERED_AS.len() + line_end + 2;
    match flag {
        b'1' => {
            let mut out = Vec::with_capacity(data.len());
            out.extend_from_slice(&block[..first_end]);
            out.extend_from_slice(data.get(after..)?);
            Some(Delivery {
                subject: subject.to_vec(),
                headers: Some(n - (after - first_end)),
                data: out,
            })
        }
        b'0' => Some(Delivery {
            subject: subject.to_vec(),
            headers: None,
            data: data.get(n..)?.to_vec(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> RouteParser {
        RouteParser::new(4096, 1 << 20)
    }

    fn one(bytes: &[u8]) -> RouteOp<'_> {
        match parser().parse(bytes) {
            Ok(Parsed::Op(op, n)) => {
                assert_eq!(n, bytes.len(), "whole input consumed");
                op
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn interest_lines() {
        assert_eq!(
            one(b"RS+ $G foo.*\r\n"),
            RouteOp::Sub {
                account: b"$G",
                subject: b"foo.*",
                queue: None
            }
        );
        assert_eq!(
            one(b"RS+ $G foo q1 3\r\n"),
            RouteOp::Sub {
                account: b"$G",
                subject: b"foo",
                queue: Some((b"q1", 3))
            }
        );
        assert_eq!(
            one(b"RS- $G foo q1\r\n"),
            RouteOp::Unsub {
                account: b"$G",
                subject: b"foo",
                queue: Some(b"q1")
            }
        );
        assert!(parser().parse(b"RS+ $G\r\n").is_err());
        assert!(parser().parse(b"RS+ $G foo q x\r\n").is_err());
        assert!(parser().parse(b"RS- $G foo q extra\r\n").is_err());
    }

    #[test]
    fn raft_frames_may_outgrow_max_payload_but_messages_may_not() {
        let frame = |account: &str, len: usize| {
            let mut bytes = format!("RMSG {account} $MBR.RAFT {len}\r\n").into_bytes();
            bytes.resize(bytes.len() + len, b'r');
            bytes.extend_from_slice(b"\r\n");
            bytes
        };
        let big = frame("$MBR", (1 << 20) + 4096);
        match parser().parse(&big) {
            Ok(Parsed::Op(RouteOp::Msg(m), n)) => {
                assert_eq!(n, big.len());
                assert_eq!(m.data.len(), (1 << 20) + 4096);
            }
            other => panic!("{other:?}"),
        }
        let client_sized = frame("$G", (1 << 20) + 4096);
        assert_eq!(parser().parse(&client_sized), Err(ProtoError::MaxPayload));
        let head = format!("RMSG $MBR $MBR.RAFT {}\r\n", MAX_RAFT_FRAME + 1);
        assert_eq!(parser().parse(head.as_bytes()), Err(ProtoError::MaxPayload));
    }

    #[test]
    fn message_shapes() {
        let msg = |bytes: &'static [u8]| match one(bytes) {
            RouteOp::Msg(m) => m,
            other => panic!("{other:?}"),
        };
        let m = msg(b"RMSG $G foo 5\r\nhello\r\n");
        assert_eq!(
            (m.account, m.subject, m.reply, m.data),
            (&b"$G"[..], &b"foo"[..], None, &b"hello"[..])
        );
        assert_eq!(m.queues().count(), 0);
        let m = msg(b"RMSG $G foo _INBOX.x 5\r\nhello\r\n");
        assert_eq!(m.reply, Some(&b"_INBOX.x"[..]));
        let m = msg(b"RMSG $G foo + _INBOX.x q1 q2 5\r\nhello\r\n");
        assert_eq!(m.reply, Some(&b"_INBOX.x"[..]));
        assert_eq!(m.queues().collect::<Vec<_>>(), vec![&b"q1"[..], &b"q2"[..]]);
        let m = msg(b"RMSG $G foo | q1 q2 5\r\nhello\r\n");
        assert_eq!(m.reply, None);
        assert_eq!(m.queues().collect::<Vec<_>>(), vec![&b"q1"[..], &b"q2"[..]]);
        let m = msg(b"HMSG $G foo + r q1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        assert_eq!(m.headers, Some(12));
        assert_eq!(m.queues().collect::<Vec<_>>(), vec![&b"q1"[..]]);
        for bad in [
            &b"RMSG $G 5\r\nhello\r\n"[..],
            b"RMSG $G foo + 5\r\nhello\r\n",
            b"RMSG $G foo | 5\r\nhello\r\n",
            b"RMSG $G foo a b 5\r\nhello\r\n",
            b"HMSG $G foo 9 5\r\nhello\r\n",
            b"RMSG $G foo x\r\n",
        ] {
            assert!(
                parser().parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn encode_then_parse_gives_the_same_message() {
        // (reply, queues, header length, data)
        type Case<'a> = (Option<&'a [u8]>, &'a [&'a [u8]], Option<usize>, &'a [u8]);
        let cases: [Case; 5] = [
            (None, &[], None, b"hello"),
            (Some(b"_INBOX.r"), &[], None, b""),
            (Some(b"_INBOX.r"), &[b"q1", b"q2"], None, b"x"),
            (None, &[b"workers"], Some(12), b"NATS/1.0\r\n\r\nhi"),
            (Some(b"r"), &[b"a"], Some(12), b"NATS/1.0\r\n\r\n"),
        ];
        for (reply, queues, headers, data) in cases {
            let mut buf = Vec::new();
            write_msg(&mut buf, b"$G", b"orders.new", reply, queues, headers, data);
            let RouteOp::Msg(m) = one(&buf) else {
                panic!("not a message: {buf:?}");
            };
            assert_eq!(m.account, b"$G");
            assert_eq!(m.subject, b"orders.new");
            assert_eq!(m.reply, reply);
            assert_eq!(m.queues().collect::<Vec<_>>(), queues.to_vec());
            assert_eq!(m.headers, headers);
            assert_eq!(m.data, data);
        }
        let mut buf = Vec::new();
        write_sub(&mut buf, b"$G", b"a.>", Some((b"q", 4)));
        write_unsub(&mut buf, b"$G", b"a.>", Some(b"q"));
        assert_eq!(buf, b"RS+ $G a.> q 4\r\nRS- $G a.> q\r\n");
    }

    #[test]
    fn resumable_at_every_split() {
        let mut stream = Vec::new();
        write_sub(&mut stream, b"$G", b"foo", None);
        write_msg(
            &mut stream,
            b"$G",
            b"foo",
            Some(b"r"),
            [b"q"],
            None,
            b"payload",
        );
        stream.extend_from_slice(b"PING\r\n");
        let p = parser();
        for split in 0..stream.len() {
            let mut buf = stream[..split].to_vec();
            let mut ops = 0;
            let mut fed = split;
            loop {
                match p.parse(&buf).expect("valid stream") {
                    Parsed::Op(_, n) => {
                        buf.drain(..n);
                        ops += 1;
                    }
                    Parsed::Incomplete { .. } if fed < stream.len() => {
                        buf.extend_from_slice(&stream[fed..]);
                        fed = stream.len();
                    }
                    Parsed::Incomplete { .. } => break,
                }
            }
            assert_eq!(ops, 3, "split at {split}");
        }
    }

    #[test]
    fn handshake_json_reads_the_reference_fields() {
        let info: RouteInfo = serde_json::from_str(
            r#"{"server_id":"NABC","server_name":"n1","version":"2.15.1","proto":3,"go":"go1.25","host":"127.0.0.1","port":6222,"headers":true,"max_payload":1048576,"cluster":"c1","lnoc":true,"lnocu":true,"route_pool_size":3}"#,
        )
        .expect("a reference route INFO");
        assert_eq!(
            (info.server_id.as_str(), info.cluster.as_str(), info.port),
            ("NABC", "c1", 6222)
        );
        let connect = RouteConnect {
            name: "NABC".into(),
            cluster: "c1".into(),
            ..RouteConnect::default()
        };
        let json = serde_json::to_string(&connect).unwrap();
        assert_eq!(
            json,
            r#"{"echo":true,"verbose":false,"pedantic":false,"tls_required":false,"headers":true,"name":"NABC","cluster":"c1"}"#
        );
    }

    #[test]
    fn client_operations_are_not_route_operations() {
        assert_eq!(parser().parse(b"PUB foo 1\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(parser().parse(b"SUB"), Err(ProtoError::UnknownOp));
        assert_eq!(
            parser().parse(b"LMSG x $G foo 0 1\r\n"),
            Err(ProtoError::UnknownOp)
        );
    }

    #[test]
    fn a_delivery_keeps_its_subject_and_headers_across_a_route() {
        let plain = b"hello";
        let (wrapped, n) = wrap_delivery(b"orders.1", None, plain);
        assert_eq!(
            &wrapped[..n],
            b"NATS/1.0\r\nNats-Mbr-Delivered: 0 orders.1\r\n\r\n"
        );
        let d = unwrap_delivery(Some(n), &wrapped).unwrap_or_else(|| panic!("unwrapped"));
        assert_eq!(
            d,
            Delivery {
                subject: b"orders.1".to_vec(),
                headers: None,
                data: plain.to_vec()
            }
        );
        let with = b"NATS/1.0\r\nA: b\r\n\r\npayload";
        let (wrapped, n) = wrap_delivery(b"s", Some(18), with);
        let d = unwrap_delivery(Some(n), &wrapped).unwrap_or_else(|| panic!("unwrapped"));
        assert_eq!(d.subject, b"s");
        assert_eq!(d.headers, Some(18));
        assert_eq!(d.data, with.to_vec());
        // Anything else is left alone.
        assert_eq!(unwrap_delivery(Some(18), with), None);
        assert_eq!(unwrap_delivery(None, plain), None);
        assert_eq!(unwrap_delivery(Some(400), plain), None);
    }
}
