//! The route protocol parser on arbitrary bytes, fed whole and in arbitrary chunks
//! (same operations, same error, never a panic), and the route encoders: a message or
//! an interest line written from arbitrary fields parses back to the same fields.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::proto::route::{self, Parsed, RouteOp, RouteParser};

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes {
        step: u8,
        stream: Vec<u8>,
    },
    Msg {
        subject: u8,
        reply: Option<u8>,
        queues: Vec<u8>,
        headers: Option<u8>,
        data: Vec<u8>,
    },
}

fn run(parser: &RouteParser, input: &[u8], step: usize) -> (Vec<String>, Option<String>) {
    let mut ops = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match parser.parse(&buf) {
            Ok(Parsed::Op(op, n)) => {
                assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                let text = match &op {
                    RouteOp::Msg(m) => {
                        format!("{op:?} queues={:?}", m.queues().collect::<Vec<_>>())
                    }
                    _ => format!("{op:?}"),
                };
                ops.push(text);
                buf.drain(..n);
            }
            Ok(Parsed::Incomplete { .. }) => {
                if fed == input.len() {
                    return (ops, None);
                }
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
            Err(e) => return (ops, Some(format!("{e:?}"))),
        }
    }
}

/// A token (subject, reply or queue name) from a byte: valid, varied, never `+` or `|`.
fn token(n: u8) -> Vec<u8> {
    format!("t{}.{}", n % 7, n / 7).into_bytes()
}

fuzz_target!(|input: Input| {
    let parser = RouteParser::new(256, 4096);
    match input {
        Input::Bytes { step, stream } => {
            let whole = run(&parser, &stream, stream.len().max(1));
            let chunked = run(&parser, &stream, usize::from(step) + 1);
            assert_eq!(whole.0, chunked.0, "operations differ with chunking");
            assert_eq!(whole.1, chunked.1, "errors differ with chunking");
        }
        Input::Msg {
            subject,
            reply,
            queues,
            headers,
            data,
        } => {
            let data = &data[..data.len().min(4096)];
            let headers = headers.map(|h| usize::from(h).min(data.len()));
            let subject = token(subject);
            let reply = reply.map(token);
            let queues: Vec<Vec<u8>> = queues.iter().take(8).map(|&q| token(q)).collect();
            let queue_refs: Vec<&[u8]> = queues.iter().map(Vec::as_slice).collect();
            let mut buf = Vec::new();
            route::write_msg(
                &mut buf,
                b"$G",
                &subject,
                reply.as_deref(),
                &queue_refs,
                headers,
                data,
            );
            let Ok(Parsed::Op(RouteOp::Msg(m), n)) = parser.parse(&buf) else {
                panic!(
                    "our own RMSG does not parse: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            };
            assert_eq!(n, buf.len());
            assert_eq!(m.subject, &subject[..]);
            assert_eq!(m.reply, reply.as_deref());
            assert_eq!(m.queues().collect::<Vec<_>>(), queue_refs);
            assert_eq!(m.headers, headers);
            assert_eq!(m.data, data);
        }
    }
});
