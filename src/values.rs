//! Values a config is written in, shared by every section: sizes (`"1MiB"`, `"64MB"`
//! or bytes), durations (`"2m"`, `"500ms"` or seconds) and secrets (never shown in
//! `Debug` output). Every part of the configuration takes them from here.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written as an integer or as `"1MiB"`, `"64MB"`, `"4KiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub const fn kib(n: u64) -> Size {
        Size(n * 1024)
    }
    pub const fn mib(n: u64) -> Size {
        Size(n * 1024 * 1024)
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// A value written either as a plain integer or as text with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(i64),
    Text(String),
}

impl IntOrText {
    /// Converts either form; `what` names the kind of value in the error.
    fn parse<T, E: serde::de::Error>(
        self,
        what: &str,
        from_int: impl FnOnce(u64) -> T,
        from_text: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, E> {
        match self {
            IntOrText::Int(n) => u64::try_from(n)
                .map(from_int)
                .map_err(|_| E::custom(format!("a {what} cannot be negative"))),
            IntOrText::Text(s) => from_text(s.trim()).map_err(E::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IntOrText::deserialize(d)?.parse("size", Size, |s| {
            s.parse::<bytesize::ByteSize>().map(|b| Size(b.0)).map_err(|e| {
                format!("invalid size {s:?} ({e}); write e.g. \"1MiB\", \"512KB\" or a number of bytes")
            })
        })
    }
}

/// A duration, written as an integer of seconds or as `"2m"`, `"10s"`, `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IntOrText::deserialize(d)?.parse(
            "duration",
            |secs| Dur(Duration::from_secs(secs)),
            |s| {
                humantime::parse_duration(s).map(Dur).map_err(|e| {
                    format!("invalid duration {s:?} ({e}); write e.g. \"2m\", \"10s\" or \"250ms\"")
                })
            },
        )
    }
}

/// A password or token: kept out of `Debug` output so that no log line can show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}
