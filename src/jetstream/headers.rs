//! NATS message headers (ADR-4): reading the header block a client sent, and building
//! the blocks JetStream sends (status messages, headers added on delivery).
//!
//! A block is `NATS/1.0[ <code>[ <text>]]\r\n` followed by `Key: Value\r\n` lines and an
//! empty line. Lookup is ASCII case-insensitive on the key; the first value wins.

/// The first value of header `name` in `block`, trimmed.
pub fn get<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    lines(block).find_map(|(k, v)| k.eq_ignore_ascii_case(name.as_bytes()).then_some(v))
}

/// Every `(key, value)` line of a block (after the version line), values trimmed.
/// Lines that are not valid UTF-8 or have no colon are skipped.
pub fn lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &str)> {
    block.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let key = line.get(..colon)?;
        let value = std::str::from_utf8(line.get(colon + 1..)?).ok()?;
        Some((key.trim_ascii(), value.trim()))
    })
}

/// The status code of a block's version line (`NATS/1.0 503` → 503), if any.
pub fn status(block: &[u8]) -> Option<u16> {
    let first = block.split(|&b| b == b'\n').next()?;
    let rest = first.strip_prefix(b"NATS/1.0")?;
    let rest = std::str::from_utf8(rest).ok()?.trim();
    rest.split(' ').next()?.parse().ok()
}

/// A builder holding `block`'s version line and every line but those whose key
/// `drop` picks (as is, order kept). An empty or malformed block gives a fresh one.
pub fn retain(block: &[u8], drop: impl Fn(&str) -> bool) -> HeaderBuilder {
    let Some(body) = block.strip_suffix(b"\r\n\r\n") else {
        return HeaderBuilder::new();
    };
    let mut lines = body.split(|&b| b == b'\n');
    let Some(version) = lines.next().filter(|v| v.starts_with(b"NATS/1.0")) else {
        return HeaderBuilder::new();
    };
    let mut buf = version.strip_suffix(b"\r").unwrap_or(version).to_vec();
    buf.extend_from_slice(b"\r\n");
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let key = line
            .iter()
            .position(|&b| b == b':')
            .and_then(|c| std::str::from_utf8(&line[..c]).ok())
            .map(str::trim);
        if key.is_some_and(&drop) {
            continue;
        }
        buf.extend_from_slice(line);
        buf.extend_from_slice(b"\r\n");
    }
    HeaderBuilder { buf }
}

/// Builds a header block.
#[derive(Debug, Clone)]
pub struct HeaderBuilder {
    buf: Vec<u8>,
}

impl HeaderBuilder {
    /// A block with no status.
    pub fn new() -> Self {
        HeaderBuilder {
            buf: b"NATS/1.0\r\n".to_vec(),
        }
    }

    /// A status message: `NATS/1.0 <code> <text>`.
    pub fn status(code: u16, text: &str) -> Self {
        let mut buf = format!("NATS/1.0 {code}").into_bytes();
        if !text.is_empty() {
            buf.push(b' ');
            buf.extend_from_slice(text.as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        HeaderBuilder { buf }
    }

    /// Starts from an existing block (a stored message's headers) to add lines to it.
    /// An empty or malformed block starts a fresh one.
    pub fn extend(block: &[u8]) -> Self {
        match block.strip_suffix(b"\r\n") {
            Some(head) if block.starts_with(b"NATS/1.0") && head.ends_with(b"\r\n") => {
                HeaderBuilder { buf: head.to_vec() }
            }
            _ => Self::new(),
        }
    }

    pub fn add(mut self, key: &str, value: &str) -> Self {
        self.push(key, value);
        self
    }

    pub fn push(&mut self, key: &str, value: &str) {
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The finished block, ending with the empty line.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"\r\n");
        self.buf
    }
}

impl Default for HeaderBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The header block of a no-responders answer to a request on `subject`: what a
/// requester gets where the reference has no subscription for it.
pub fn no_responders(subject: &[u8]) -> Vec<u8> {
    HeaderBuilder::status(503, "")
        .add("Nats-Subject", &String::from_utf8_lossy(subject))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_drops_the_lines_asked_and_keeps_the_rest_in_order() {
        let block = b"NATS/1.0\r\nA: 1\r\nNats-Expected-Stream: X\r\nB: 2\r\nnats-stream-source: S 1\r\n\r\n";
        let kept = retain(block, |k| {
            k.eq_ignore_ascii_case("Nats-Stream-Source") || k.starts_with("Nats-Expected-")
        })
        .add("Nats-Stream-Source", "O 3 > > s")
        .finish();
        assert_eq!(
            kept,
            b"NATS/1.0\r\nA: 1\r\nB: 2\r\nNats-Stream-Source: O 3 > > s\r\n\r\n".to_vec()
        );
        assert_eq!(retain(b"", |_| true).finish(), b"NATS/1.0\r\n\r\n".to_vec());
    }

    #[test]
    fn reads_values_case_insensitively() {
        let block = b"NATS/1.0\r\nNats-Msg-Id: abc \r\nnats-expected-stream:S\r\n\r\n";
        assert_eq!(get(block, "Nats-Msg-Id"), Some("abc"));
        assert_eq!(get(block, "Nats-Expected-Stream"), Some("S"));
        assert_eq!(get(block, "Missing"), None);
        assert_eq!(status(block), None);
        assert_eq!(status(b"NATS/1.0 503\r\n\r\n"), Some(503));
        assert_eq!(status(b"NATS/1.0 404 No Messages\r\n\r\n"), Some(404));
    }

    #[test]
    fn builds_and_extends() {
        let b = HeaderBuilder::status(404, "No Messages")
            .add("Nats-Pending-Messages", "1")
            .finish();
        assert_eq!(
            b,
            b"NATS/1.0 404 No Messages\r\nNats-Pending-Messages: 1\r\n\r\n"
        );
        let ext = HeaderBuilder::extend(b"NATS/1.0\r\nA: 1\r\n\r\n")
            .add("Nats-Stream", "S")
            .finish();
        assert_eq!(ext, b"NATS/1.0\r\nA: 1\r\nNats-Stream: S\r\n\r\n");
        assert_eq!(get(&ext, "a"), Some("1"));
        let fresh = HeaderBuilder::extend(b"").add("X", "y").finish();
        assert_eq!(fresh, b"NATS/1.0\r\nX: y\r\n\r\n");
    }
}
