//! The JetStream write journal's reader on arbitrary bytes (a damaged or foreign file
//! must give an error or a torn end, never a panic or a huge allocation), and records
//! written from arbitrary operations: they read back the same, and every cut or
//! flipped byte is caught rather than read as other operations.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::jetstream::journal::{self, Next, WriteOp};

#[derive(Arbitrary, Debug)]
enum Op {
    DeleteStream,
    Append(u64, Vec<u8>),
    Remove(u64),
    RemoveBelow(u64),
    PutConsumer(String, Vec<u8>),
    DeleteConsumer(String),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes {
        generation: u8,
        bytes: Vec<u8>,
    },
    Records {
        generation: u64,
        stream: String,
        ops: Vec<Op>,
        cut: u16,
        flip: u16,
    },
}

/// Reads records from the start of `bytes` until the end or a torn record.
fn read_all(bytes: &[u8], generation: u64) -> Vec<(String, Vec<WriteOp>)> {
    let mut at = 0;
    let mut out = Vec::new();
    while let Ok(Next::Record { stream, ops, len }) = journal::next_record(&bytes[at..], generation)
    {
        assert!(len > 0 && at + len <= bytes.len());
        at += len;
        out.push((stream, ops));
    }
    out
}

fuzz_target!(|input: Input| match input {
    Input::Bytes { generation, bytes } => {
        let _ = journal::read_header(&bytes);
        read_all(&bytes, u64::from(generation));
    }
    Input::Records {
        generation,
        stream,
        ops,
        cut,
        flip,
    } => {
        let stream: String = stream.chars().take(100).collect();
        let ops: Vec<WriteOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::DeleteStream => WriteOp::DeleteStream,
                Op::Append(seq, record) => WriteOp::Append { seq, record },
                Op::Remove(s) => WriteOp::Remove(s),
                Op::RemoveBelow(s) => WriteOp::RemoveBelow(s),
                Op::PutConsumer(name, record) => WriteOp::PutConsumer {
                    name: name.chars().take(100).collect(),
                    record,
                },
                Op::DeleteConsumer(name) => {
                    WriteOp::DeleteConsumer(name.chars().take(100).collect())
                }
            })
            .collect();
        let mut bytes = Vec::new();
        journal::encode_record(&mut bytes, generation, &stream, &ops);
        assert_eq!(
            read_all(&bytes, generation),
            vec![(stream.clone(), ops.clone())]
        );
        // A record cut anywhere is torn, never something else.
        let cut = usize::from(cut) % bytes.len();
        assert_eq!(
            journal::next_record(&bytes[..cut], generation),
            Ok(if cut == 0 { Next::End } else { Next::Torn })
        );
        // A flipped bit anywhere (length, check or body) is caught by the check.
        let mut flipped = bytes.clone();
        let at = usize::from(flip) % flipped.len();
        flipped[at] ^= 1 << (flip % 8);
        assert!(!matches!(
            journal::next_record(&flipped, generation),
            Ok(Next::Record { .. })
        ));
    }
});
