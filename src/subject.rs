//! Subjects: validation and wildcard matching, as the reference server defines them.
//!
//! A subject is a non-empty sequence of tokens separated by `.`. A token is any run of
//! bytes without `.` or whitespace; the tokens `*` (exactly one token) and `>` (one or
//! more trailing tokens) are wildcards when they stand alone. Subjects are bytes on the
//! wire; the reference accepts any non-whitespace byte, including UTF-8 and control
//! bytes, so do we.

/// Bytes that may never appear inside a token.
#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// A subject as a subscription may use it: wildcards allowed, `>` only as last token.
pub fn is_valid_subject(subject: &[u8]) -> bool {
    validate(subject, true)
}

/// A subject a message may be published to: like [`is_valid_subject`] without wildcards.
pub fn is_valid_literal_subject(subject: &[u8]) -> bool {
    validate(subject, false)
}

fn validate(subject: &[u8], wildcards: bool) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut after_fwc = false;
    for token in subject.split(|&b| b == b'.') {
        if token.is_empty() || after_fwc {
            return false;
        }
        if token.iter().any(|&b| is_space(b)) {
            return false;
        }
        match token {
            b">" if wildcards => after_fwc = true,
            b">" | b"*" if !wildcards => return false,
            _ => {}
        }
    }
    true
}

/// Does the literal subject `subject` match the (possibly wildcard) `filter`?
/// This is the naive definition the subject index is checked against. A subject with
/// an empty token (or an empty subject) matches nothing, as in the reference.
pub fn matches(filter: &[u8], subject: &[u8]) -> bool {
    if subject.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'.');
    let mut s = subject.split(|&b| b == b'.');
    loop {
        match (f.next(), s.next()) {
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(ft), Some(st)) if ft == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does every subject `inner` matches also match `outer`? (Used for stream subject
/// overlap and permission checks in later layers.)
pub fn is_subset(inner: &[u8], outer: &[u8]) -> bool {
    let mut i = inner.split(|&b| b == b'.');
    let mut o = outer.split(|&b| b == b'.');
    loop {
        match (i.next(), o.next()) {
            (Some(_), Some(b">")) => return true,
            (Some(b">"), _) => return false,
            (Some(_), Some(b"*")) => {}
            (Some(b"*"), Some(_)) => return false,
            (Some(it), Some(ot)) if it == ot => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is there a literal subject that both filters match? (Streams may not overlap.)
pub fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let mut x = a.split(|&c| c == b'.');
    let mut y = b.split(|&c| c == b'.');
    loop {
        match (x.next(), y.next()) {
            (Some(b">"), Some(_)) | (Some(_), Some(b">")) => return true,
            (Some(b"*"), Some(_)) | (Some(_), Some(b"*")) => {}
            (Some(s), Some(t)) if s == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_matches_reference_rules() {
        for ok in [
            "foo", "foo.bar", "*", ">", "foo.*", "foo.>", "*.*.>", "a*b", "f\u{e9}", "a>",
        ] {
            assert!(is_valid_subject(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            ">.foo",
            "a b",
            "a\tb",
        ] {
            assert!(!is_valid_subject(bad.as_bytes()), "{bad}");
        }
        assert!(is_valid_literal_subject(b"foo.bar"));
        assert!(is_valid_literal_subject(b"a*b.c>"));
        assert!(!is_valid_literal_subject(b"foo.*"));
        assert!(!is_valid_literal_subject(b"foo.>"));
        assert!(!is_valid_literal_subject(b"foo."));
    }

    #[test]
    fn matching() {
        assert!(matches(b"foo.*", b"foo.bar"));
        assert!(!matches(b"foo.*", b"foo.bar.baz"));
        assert!(matches(b"foo.>", b"foo.bar.baz"));
        assert!(!matches(b"foo.>", b"foo"));
        assert!(matches(b">", b"foo"));
        assert!(matches(b"*.bar", b"foo.bar"));
        assert!(!matches(b"foo", b"foo.bar"));
        assert!(!matches(b"foo.bar", b"foo"));
        // Found by fuzzing (subject_index): an empty subject matched `>`.
        assert!(!matches(b">", b""));
        assert!(!matches(b"foo.>", b"foo..bar"));
    }

    #[test]
    fn subsets() {
        assert!(is_subset(b"foo.bar", b"foo.*"));
        assert!(is_subset(b"foo.*", b"foo.>"));
        assert!(is_subset(b"foo.>", b">"));
        assert!(!is_subset(b"foo.>", b"foo.*"));
        assert!(!is_subset(b"foo.*", b"foo.bar"));
        assert!(is_subset(b"foo.bar", b"foo.bar"));
    }

    #[test]
    fn overlapping() {
        assert!(overlaps(b"foo.*", b"foo.bar"));
        assert!(overlaps(b"foo.*", b"*.bar"));
        assert!(overlaps(b">", b"a.b.c"));
        assert!(overlaps(b"a.>", b"a.*.c"));
        assert!(!overlaps(b"a.>", b"a"));
        assert!(!overlaps(b"foo.*", b"foo.bar.baz"));
        assert!(!overlaps(b"foo", b"bar"));
        assert!(!overlaps(b"foo.*", b"foo"));
    }
}
