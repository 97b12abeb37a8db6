//! Subject transforms: a source filter and a destination with placeholders, as the
//! reference's subject mappings and stream/source `subject_transforms` write them.
//!
//! `orders.*.*` → `eu.{{wildcard(2)}}.{{wildcard(1)}}` (or the old `$2.$1`) maps
//! `orders.a.b` to `eu.b.a`. The functions of the reference's mapping language are
//! supported: `wildcard`, `partition` (FNV-1a, as the reference hashes), `split`,
//! `splitFromLeft`/`splitFromRight`, `sliceFromLeft`/`sliceFromRight`, `left`,
//! `right`; `random` is refused (a transform here must give the same subject on every
//! replica). Errors carry the reference's texts.

use thiserror::Error;

/// Why a transform is refused (the reference's words).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransformError {
    #[error("invalid subject")]
    BadSubject,
    #[error("invalid mapping destination: {what} in {token}")]
    Destination { what: &'static str, token: String },
}

fn dest_err(what: &'static str, token: impl Into<String>) -> TransformError {
    TransformError::Destination {
        what,
        token: token.into(),
    }
}

const OUT_OF_RANGE: &str = "wildcard index out of range";
const NOT_ENOUGH: &str = "not enough arguments passed to the function";
const TOO_MANY: &str = "too many arguments passed to the function";
const INVALID_ARG: &str = "function argument is invalid or in the wrong format";
const UNKNOWN: &str = "unknown function";

/// One destination token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `>` at the end: the rest of the source's tokens.
    Rest,
    /// Source token positions (0-based) of the wildcards named.
    Wildcard(usize),
    Partition {
        buckets: u32,
        tokens: Vec<usize>,
    },
    SplitFromLeft(usize, i32),
    SplitFromRight(usize, i32),
    SliceFromLeft(usize, i32),
    SliceFromRight(usize, i32),
    Left(usize, i32),
    Right(usize, i32),
    Split(usize, String),
}

/// A compiled transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTransform {
    source: String,
    /// Number of tokens in the source pattern (for a trailing `>`).
    source_tokens: usize,
    dest: String,
    parts: Vec<Part>,
}

/// Whether `s` is a valid subject pattern: its tokens, the count of `*`, and whether it
/// ends with `>`.
fn subject_info(s: &str) -> Option<(Vec<&str>, usize, bool)> {
    if s.is_empty() {
        return None;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    let (mut pwcs, mut fwc) = (0, false);
    for t in &tokens {
        if t.is_empty() || fwc {
            return None;
        }
        match *t {
            ">" => fwc = true,
            "*" => pwcs += 1,
            _ => {}
        }
    }
    Some((tokens, pwcs, fwc))
}

/// A function call `{{name(args)}}`: the name in lower case and its arguments.
fn function(token: &str) -> Option<(String, Vec<String>)> {
    let inner = token.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let open = inner.find('(')?;
    let body = inner[open + 1..].trim_end();
    let args = body.strip_suffix(')')?;
    let name = inner[..open].trim().to_ascii_lowercase();
    let args = args.split(',').map(|a| a.trim().to_string()).collect();
    Some((name, args))
}

/// The placeholder a destination token holds, with wildcard numbers still 1-based.
enum Placeholder {
    None,
    Indexed(Part, Vec<usize>),
}

fn placeholder(token: &str) -> Result<Placeholder, TransformError> {
    if let Some(n) = token.strip_prefix('$') {
        return Ok(match n.parse::<usize>() {
            Ok(i) => Placeholder::Indexed(Part::Wildcard(0), vec![i]),
            // Other tokens starting with `$` are plain text.
            Err(_) => Placeholder::None,
        });
    }
    if token.len() <= 4 || !token.starts_with("{{") || !token.ends_with("}}") {
        return Ok(Placeholder::None);
    }
    let Some((name, args)) = function(token) else {
        return Err(dest_err(UNKNOWN, token));
    };
    let int = |a: &str| a.parse::<i64>().map_err(|_| dest_err(INVALID_ARG, token));
    let index = |a: &str| a.parse::<usize>().map_err(|_| dest_err(INVALID_ARG, token));
    let two = |args: &[String]| -> Result<(usize, i32), TransformError> {
        match args {
            [a, b] => {
                let n = int(b)?;
                let n = i32::try_from(n).map_err(|_| dest_err(INVALID_ARG, token))?;
                Ok((index(a)?, n))
            }
            [] | [_] => Err(dest_err(NOT_ENOUGH, token)),
            _ => Err(dest_err(TOO_MANY, token)),
        }
    };
    let part = match name.as_str() {
        "wildcard" => match args.as_slice() {
            [a] if a.is_empty() => return Err(dest_err(NOT_ENOUGH, token)),
            [a] => (Part::Wildcard(0), vec![index(a)?]),
            _ => return Err(dest_err(TOO_MANY, token)),
        },
        "partition" => {
            let Some((n, rest)) = args.split_first() else {
                return Err(dest_err(NOT_ENOUGH, token));
            };
            let buckets = u32::try_from(int(n)?).map_err(|_| dest_err(INVALID_ARG, token))?;
            let idx = rest
                .iter()
                .filter(|a| !a.is_empty() || rest.len() > 1)
                .map(|a| index(a))
                .collect::<Result<Vec<_>, _>>()?;
            (
                Part::Partition {
                    buckets,
                    tokens: Vec::new(),
                },
                idx,
            )
        }
        "splitfromleft" | "splitfromright" | "slicefromleft" | "slicefromright" | "left"
        | "right" => {
            let (i, n) = two(&args)?;
            let part = match name.as_str() {
                "splitfromleft" => Part::SplitFromLeft(0, n),
                "splitfromright" => Part::SplitFromRight(0, n),
                "slicefromleft" => Part::SliceFromLeft(0, n),
                "slicefromright" => Part::SliceFromRight(0, n),
                "left" => Part::Left(0, n),
                _ => Part::Right(0, n),
            };
            (part, vec![i])
        }
        "split" => match args.as_slice() {
            [a, delim] => {
                if delim.contains(' ') || delim.contains('.') || delim.is_empty() {
                    return Err(dest_err(INVALID_ARG, token));
                }
                (Part::Split(0, delim.clone()), vec![index(a)?])
            }
            [] | [_] => return Err(dest_err(NOT_ENOUGH, token)),
            _ => return Err(dest_err(TOO_MANY, token)),
        },
        // `random` exists at the reference; a replicated stream needs transforms
        // that give every replica the same subject.
        _ => return Err(dest_err(UNKNOWN, token)),
    };
    Ok(Placeholder::Indexed(part.0, part.1))
}

impl SubjectTransform {
    /// Compiles `source` (empty: `>`) → `dest`. `Ok(None)` for an empty destination
    /// (no transform), as the reference.
    pub fn new(source: &str, dest: &str) -> Result<Option<SubjectTransform>, TransformError> {
        if dest.is_empty() {
            return Ok(None);
        }
        let source = if source.is_empty() { ">" } else { source };
        let (stokens, npwcs, s_fwc) = subject_info(source).ok_or(TransformError::BadSubject)?;
        let (dtokens, d_pwcs, d_fwc) = subject_info(dest).ok_or(TransformError::BadSubject)?;
        if d_pwcs > 0 || s_fwc != d_fwc {
            return Err(TransformError::BadSubject);
        }
        // Source positions of the 1st, 2nd, … `*`.
        let wildcard_at: Vec<usize> = stokens
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == "*")
            .map(|(i, _)| i)
            .collect();
        let mut parts = Vec::with_capacity(dtokens.len());
        for (i, token) in dtokens.iter().enumerate() {
            if *token == ">" && i + 1 == dtokens.len() {
                parts.push(Part::Rest);
                continue;
            }
            match placeholder(token)? {
                Placeholder::None => parts.push(Part::Literal(token.to_string())),
                Placeholder::Indexed(part, indexes) => {
                    if npwcs == 0 && !s_fwc {
                        // No wildcards in the source: only a whole-subject partition.
                        match part {
                            Part::Partition { buckets, .. } if indexes.is_empty() => {
                                parts.push(Part::Partition {
                                    buckets,
                                    tokens: Vec::new(),
                                });
                                continue;
                            }
                            _ => return Err(dest_err(OUT_OF_RANGE, *token)),
                        }
                    }
                    let mut at = Vec::with_capacity(indexes.len());
                    for n in indexes {
                        match n.checked_sub(1).and_then(|k| wildcard_at.get(k)) {
                            Some(&pos) => at.push(pos),
                            None => return Err(dest_err(OUT_OF_RANGE, format!("{token}: [{n}]"))),
                        }
                    }
                    let first = at.first().copied().unwrap_or(0);
                    parts.push(match part {
                        Part::Wildcard(_) => Part::Wildcard(first),
                        Part::Partition { buckets, .. } => Part::Partition {
                            buckets,
                            tokens: at,
                        },
                        Part::SplitFromLeft(_, n) => Part::SplitFromLeft(first, n),
                        Part::SplitFromRight(_, n) => Part::SplitFromRight(first, n),
                        Part::SliceFromLeft(_, n) => Part::SliceFromLeft(first, n),
                        Part::SliceFromRight(_, n) => Part::SliceFromRight(first, n),
                        Part::Left(_, n) => Part::Left(first, n),
                        Part::Right(_, n) => Part::Right(first, n),
                        Part::Split(_, d) => Part::Split(first, d),
                        other => other,
                    });
                }
            }
        }
        Ok(Some(SubjectTransform {
            source: source.to_string(),
            source_tokens: stokens.len(),
            dest: dest.to_string(),
            parts,
        }))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn destination(&self) -> &str {
        &self.dest
    }

    /// The transformed subject, if `subject` matches the source.
    pub fn apply(&self, subject: &str) -> Option<String> {
        if !crate::subject::is_valid_literal_subject(subject.as_bytes())
            || !crate::subject::matches(self.source.as_bytes(), subject.as_bytes())
        {
            return None;
        }
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut out = String::with_capacity(subject.len() + self.dest.len());
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            let tok = |at: &usize| tokens.get(*at).copied().unwrap_or_default();
            match part {
                Part::Literal(t) => out.push_str(t),
                Part::Rest => {
                    let from = self.source_tokens.saturating_sub(1);
                    out.push_str(&tokens.get(from..).unwrap_or_default().join("."));
                }
                Part::Wildcard(at) => out.push_str(tok(at)),
                Part::Partition {
                    buckets,
                    tokens: at,
                } => {
                    let key = if at.is_empty() {
                        subject.to_string()
                    } else {
                        at.iter().map(tok).collect::<String>()
                    };
                    let bucket = if *buckets == 0 {
                        0
                    } else {
                        fnv1a32(key.as_bytes()) % buckets
                    };
                    out.push_str(&bucket.to_string());
                }
                Part::SplitFromLeft(at, n) => split_at(&mut out, tok(at), *n, false),
                Part::SplitFromRight(at, n) => split_at(&mut out, tok(at), *n, true),
                Part::SliceFromLeft(at, n) => slice_left(&mut out, tok(at), *n),
                Part::SliceFromRight(at, n) => slice_right(&mut out, tok(at), *n),
                Part::Left(at, n) => {
                    let t = tok(at);
                    let n = usize::try_from(*n).unwrap_or(0);
                    out.push_str(if n > 0 && n < t.len() { &t[..n] } else { t });
                }
                Part::Right(at, n) => {
                    let t = tok(at);
                    let n = usize::try_from(*n).unwrap_or(0);
                    out.push_str(if n > 0 && n < t.len() {
                        &t[t.len() - n..]
                    } else {
                        t
                    });
                }
                Part::Split(at, delim) => {
                    let pieces: Vec<&str> = tok(at)
                        .split(delim.as_str())
                        .filter(|p| !p.is_empty())
                        .collect();
                    out.push_str(&pieces.join("."));
                }
            }
        }
        Some(out)
    }
}

/// FNV-1a, 32 bits (Go's `hash/fnv` New32a), which the reference's partitions use.
fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Byte offsets are safe: a split inside a UTF-8 character leaves the token whole.
fn cut(t: &str, at: usize) -> Option<(&str, &str)> {
    t.is_char_boundary(at).then(|| t.split_at(at))
}

fn split_at(out: &mut String, t: &str, n: i32, from_right: bool) {
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 || n >= t.len() {
        out.push_str(t);
        return;
    }
    let at = if from_right { t.len() - n } else { n };
    match cut(t, at) {
        Some((a, b)) => {
            out.push_str(a);
            out.push('.');
            out.push_str(b);
        }
        None => out.push_str(t),
    }
}

fn slice_left(out: &mut String, t: &str, n: i32) {
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 || n >= t.len() || !t.is_ascii() {
        out.push_str(t);
        return;
    }
    let pieces: Vec<&str> = t
        .as_bytes()
        .chunks(n)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    out.push_str(&pieces.join("."));
}

fn slice_right(out: &mut String, t: &str, n: i32) {
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 || n >= t.len() || !t.is_ascii() {
        out.push_str(t);
        return;
    }
    let rem = t.len() % n;
    let mut pieces: Vec<&str> = Vec::new();
    if rem > 0 {
        pieces.push(&t[..rem]);
    }
    pieces.extend(
        t.as_bytes()[rem..]
            .chunks(n)
            .filter_map(|c| std::str::from_utf8(c).ok()),
    );
    out.push_str(&pieces.join("."));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(src: &str, dest: &str) -> SubjectTransform {
        SubjectTransform::new(src, dest)
            .expect("valid")
            .expect("a transform")
    }

    #[test]
    fn wildcards_old_and_new_style() {
        let t = tr("orders.*.*", "eu.{{wildcard(2)}}.{{ Wildcard(1) }}");
        assert_eq!(t.apply("orders.a.b").as_deref(), Some("eu.b.a"));
        assert_eq!(t.apply("other.a.b"), None);
        assert_eq!(t.apply("orders.a"), None);
        let t = tr("orders.*.*", "eu.$2.$1");
        assert_eq!(t.apply("orders.a.b").as_deref(), Some("eu.b.a"));
        let t = tr("orig.*", "zero.{{wildcard(1)}}");
        assert_eq!(t.apply("orig.0").as_deref(), Some("zero.0"));
    }

    #[test]
    fn the_rest_passes_through_a_full_wildcard() {
        let t = tr("a.*.>", "b.{{wildcard(1)}}.>");
        assert_eq!(t.apply("a.x.y.z").as_deref(), Some("b.x.y.z"));
        let t = tr(">", "copy.>");
        assert_eq!(t.apply("p.q").as_deref(), Some("copy.p.q"));
        let t = tr("", "all.>");
        assert_eq!(t.apply("p").as_deref(), Some("all.p"));
    }

    #[test]
    fn functions() {
        let t = tr("*", "{{splitFromLeft(1,2)}}");
        assert_eq!(t.apply("abcdef").as_deref(), Some("ab.cdef"));
        let t = tr("*", "{{splitFromRight(1,2)}}");
        assert_eq!(t.apply("abcdef").as_deref(), Some("abcd.ef"));
        let t = tr("*", "{{sliceFromLeft(1,2)}}");
        assert_eq!(t.apply("abcde").as_deref(), Some("ab.cd.e"));
        let t = tr("*", "{{sliceFromRight(1,2)}}");
        assert_eq!(t.apply("abcde").as_deref(), Some("a.bc.de"));
        let t = tr("*", "{{left(1,2)}}.{{right(1,2)}}");
        assert_eq!(t.apply("abcde").as_deref(), Some("ab.de"));
        let t = tr("*", "{{split(1,-)}}");
        assert_eq!(t.apply("-a--b-").as_deref(), Some("a.b"));
        // Too short to cut: the token stays whole.
        let t = tr("*", "{{splitFromLeft(1,9)}}");
        assert_eq!(t.apply("abc").as_deref(), Some("abc"));
    }

    #[test]
    fn partitions_hash_as_the_reference() {
        // FNV-1a of "foo" is 0xa9f37ed7 (Go's hash/fnv New32a).
        assert_eq!(fnv1a32(b"foo"), 0xa9f3_7ed7);
        let t = tr("orders.*", "part.{{partition(10,1)}}");
        let expected = (0xa9f3_7ed7u32 % 10).to_string();
        assert_eq!(t.apply("orders.foo"), Some(format!("part.{expected}")));
        let whole = tr("foo", "p.{{partition(3)}}");
        assert_eq!(
            whole.apply("foo"),
            Some(format!("p.{}", 0xa9f3_7ed7u32 % 3))
        );
    }

    #[test]
    fn errors_carry_the_references_text() {
        let e = SubjectTransform::new("orig.0", "zero.{{wildcard(1)}}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mapping destination: wildcard index out of range in {{wildcard(1)}}"
        );
        let e = SubjectTransform::new("a.*", "b.{{wildcard(2)}}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mapping destination: wildcard index out of range in {{wildcard(2)}}: [2]"
        );
        let e = SubjectTransform::new("a.*", "b.{{nope(1)}}").unwrap_err();
        assert!(
            e.to_string().ends_with("unknown function in {{nope(1)}}"),
            "{e}"
        );
        assert!(SubjectTransform::new("a.*", "b.{{random(3)}}").is_err());
        let e = SubjectTransform::new("a.*", "b.{{left(1)}}").unwrap_err();
        assert!(e.to_string().contains("not enough arguments"), "{e}");
        assert_eq!(
            SubjectTransform::new("a.>", "b.*"),
            Err(TransformError::BadSubject)
        );
        assert_eq!(
            SubjectTransform::new("a.>", "b"),
            Err(TransformError::BadSubject)
        );
        assert_eq!(SubjectTransform::new("a", ""), Ok(None));
    }
}
