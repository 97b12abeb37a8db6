//! The client protocol parser on arbitrary bytes, fed whole and in arbitrary chunks:
//! it never panics, and every chunking yields the same operations and the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshbroker::proto::{Parsed, Parser};

/// Parses `input` fed `step` bytes at a time; returns the operations (as text) and
/// the error that stopped it, if any.
fn run(parser: &Parser, input: &[u8], step: usize) -> (Vec<String>, Option<String>) {
    let mut ops = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match parser.parse(&buf) {
            Ok(Parsed::Op(op, n)) => {
                assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                ops.push(format!("{op:?}"));
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

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first bytes choose the chunking; the rest is the protocol stream.
    let step = usize::from(data[0]) + 1;
    let input = &data[1..];
    let parser = Parser::new(256, 4096);
    let whole = run(&parser, input, input.len());
    let chunked = run(&parser, input, step);
    // An error can surface earlier when the bytes that prove it arrive first (a bad
    // operation name), but never differently: same operations up to it, same error.
    assert_eq!(whole.0, chunked.0, "operations differ with chunking");
    assert_eq!(whole.1, chunked.1, "errors differ with chunking");
});
