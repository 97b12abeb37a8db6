//! Accounts, compiled from `[accounts.NAME]`: which accounts exist, which has
//! JetStream, and every import checked against the exporter's exports (as nats-server
//! refuses a config whose import is not exported, or names an account that does not
//! exist). What comes out is a plan the node starts its account routers from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::{AccountConfig, ExportConfig, ImportConfig, ResponseTypeConfig};
use super::AuthConfigError;
use crate::subject::{is_subset, is_valid_subject};
use crate::subject_transform::SubjectTransform;

/// The account of every connection when no account is configured, and of users listed
/// in `[authorization]`.
pub const GLOBAL_ACCOUNT: &str = "$G";
/// The system account's name when the config names none (the reference's default).
pub const DEFAULT_SYSTEM_ACCOUNT: &str = "$SYS";

/// How many responses a service import forwards back per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseType {
    /// One.
    #[default]
    Singleton,
    /// Any number (within the response threshold).
    Stream,
    /// Any number, as parts of one answer.
    Chunked,
}

/// Messages the exporter publishes on `subject` appear in the importing account, under
/// `to` when set.
#[derive(Debug, Clone)]
pub struct StreamImport {
    pub exporter: String,
    pub subject: String,
    pub to: Option<SubjectTransform>,
}

/// Requests published in the importing account on `local` go to the exporter, on
/// `transform(local)` when set (else on the same subject); responses come back to the
/// requester's reply subject.
#[derive(Debug, Clone)]
pub struct ServiceImport {
    pub exporter: String,
    pub local: String,
    pub transform: Option<SubjectTransform>,
    pub response: ResponseType,
}

/// One account: its name, JetStream, and what it imports.
#[derive(Debug, Clone, Default)]
pub struct AccountSpec {
    pub name: String,
    pub jetstream: bool,
    pub streams: Vec<StreamImport>,
    pub services: Vec<ServiceImport>,
}

/// Every account of the node: `$G` first, then the configured ones in name order, then
/// the system account if the config does not define it.
#[derive(Debug, Clone)]
pub struct AccountPlan {
    pub accounts: Vec<AccountSpec>,
    pub system_account: String,
    /// The config names accounts (then `$G` has no JetStream, as at the reference).
    configured: bool,
}

impl AccountPlan {
    /// The account JetStream serves: the one account with `jetstream = true`, or `$G`
    /// when no account is configured. `None` when accounts are configured and none has
    /// JetStream.
    pub fn jetstream_account(&self) -> Option<&str> {
        let named: Vec<&AccountSpec> = self.accounts.iter().filter(|a| a.jetstream).collect();
        match named.first() {
            Some(a) => Some(&a.name),
            None if !self.configured => Some(GLOBAL_ACCOUNT),
            None => None,
        }
    }

    pub fn get(&self, name: &str) -> Option<&AccountSpec> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// Checks and compiles `accounts`; `system_account` names the system account.
    pub fn new(
        accounts: &BTreeMap<String, AccountConfig>,
        system_account: Option<&str>,
    ) -> Result<AccountPlan, AuthConfigError> {
        let err = |key: String, reason: String| AuthConfigError { key, reason };
        let mut plan = vec![AccountSpec {
            name: GLOBAL_ACCOUNT.into(),
            ..AccountSpec::default()
        }];
        for (name, account) in accounts {
            let key = |field: &str| format!("accounts.{name}.{field}");
            if name.is_empty()
                || name == GLOBAL_ACCOUNT
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c == '.' || c == '*' || c == '>')
            {
                return Err(err(
                    format!("accounts.{name}"),
                    format!("{name:?} cannot name an account (no spaces, dots or wildcards; `$G` is the global account)"),
                ));
            }
            for (i, export) in account.exports.iter().enumerate() {
                check_export(export, accounts)
                    .map_err(|reason| err(key("exports"), format!("entry {i}: {reason}")))?;
            }
            let mut spec = AccountSpec {
                name: name.clone(),
                jetstream: account.jetstream,
                ..AccountSpec::default()
            };
            for (i, import) in account.imports.iter().enumerate() {
                compile_import(name, import, accounts, &mut spec)
                    .map_err(|reason| err(key("imports"), format!("entry {i}: {reason}")))?;
            }
            plan.push(spec);
        }
        let with_jetstream: Vec<&str> = plan
            .iter()
            .filter(|a| a.jetstream)
            .map(|a| a.name.as_str())
            .collect();
        if with_jetstream.len() > 1 {
            return Err(err(
                "accounts.jetstream".into(),
                format!(
                    "JetStream is enabled for {} accounts ({}); this version serves JetStream in one account per cluster",
                    with_jetstream.len(),
                    with_jetstream.join(", ")
                ),
            ));
        }
        let system_account = match system_account {
            Some(name) if !accounts.contains_key(name) && name != DEFAULT_SYSTEM_ACCOUNT => {
                return Err(err(
                    "system_account".into(),
                    format!("{name:?} is not an account in [accounts]"),
                ))
            }
            Some(name) => name.to_string(),
            None => DEFAULT_SYSTEM_ACCOUNT.to_string(),
        };
        if system_account == DEFAULT_SYSTEM_ACCOUNT
            && !accounts.contains_key(DEFAULT_SYSTEM_ACCOUNT)
        {
            plan.push(AccountSpec {
                name: system_account.clone(),
                ..AccountSpec::default()
            });
        }
        if plan.iter().any(|a| a.name == system_account && a.jetstream) {
            return Err(err(
                format!("accounts.{system_account}.jetstream"),
                "the system account cannot have JetStream".into(),
            ));
        }
        Ok(AccountPlan {
            accounts: plan,
            system_account,
            configured: !accounts.is_empty(),
        })
    }
}

fn check_export(
    export: &ExportConfig,
    accounts: &BTreeMap<String, AccountConfig>,
) -> Result<(), String> {
    let subject = match (&export.stream, &export.service) {
        (Some(s), None) => {
            if export.response_type.is_some() {
                return Err("response_type is for service exports".into());
            }
            s
        }
        (None, Some(s)) => s,
        _ => return Err("give either `stream` or `service`".into()),
    };
    if !is_valid_subject(subject.as_bytes()) {
        return Err(format!("{subject:?} is not a valid subject"));
    }
    for account in export.accounts.iter().flatten() {
        if !accounts.contains_key(account) {
            return Err(format!(
                "{account:?} account not defined for export {subject:?}"
            ));
        }
    }
    Ok(())
}

/// The transform a legacy `to` writes with `*` tokens: each `*` is the matching
/// wildcard of the source, in order (`foo.*` → `bar.*` is `bar.$1`).
fn legacy_transform(source: &str, to: &str) -> Result<Option<SubjectTransform>, String> {
    if to == source {
        return Ok(None);
    }
    let mut n = 0;
    let dest: Vec<String> = to
        .split('.')
        .map(|t| {
            if t == "*" {
                n += 1;
                format!("${n}")
            } else {
                t.to_string()
            }
        })
        .collect();
    SubjectTransform::new(source, &dest.join("."))
        .map_err(|e| format!("cannot map {source:?} to {to:?}: {e}"))
}

fn compile_import(
    importer: &str,
    import: &ImportConfig,
    accounts: &BTreeMap<String, AccountConfig>,
    spec: &mut AccountSpec,
) -> Result<(), String> {
    let (source, is_stream) = match (&import.stream, &import.service) {
        (Some(s), None) => (s, true),
        (None, Some(s)) => (s, false),
        _ => return Err("give either `stream` or `service`".into()),
    };
    let kind = if is_stream { "stream" } else { "service" };
    let subject = &source.subject;
    let Some(exporter) = accounts.get(&source.account) else {
        return Err(format!(
            "{:?} account not defined for {kind} import",
            source.account
        ));
    };
    if source.account == importer {
        return Err(format!(
            "an account cannot import from itself ({kind} {subject:?})"
        ));
    }
    if !is_valid_subject(subject.as_bytes()) {
        return Err(format!("{subject:?} is not a valid subject"));
    }
    let export = exporter.exports.iter().find(|e| {
        let exported = if is_stream { &e.stream } else { &e.service };
        exported
            .as_ref()
            .is_some_and(|x| is_subset(subject.as_bytes(), x.as_bytes()))
            && e.accounts
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|a| a == importer))
    });
    let Some(export) = export else {
        return Err(format!(
            "Error adding {kind} import {subject:?}: {kind} import not authorized"
        ));
    };
    if let Some(to) = &import.to {
        if !is_valid_subject(to.as_bytes()) {
            return Err(format!("`to` {to:?} is not a valid subject"));
        }
    }
    if is_stream {
        let to = match (&import.to, &import.prefix) {
            (Some(_), Some(_)) => return Err("give `to` or `prefix`, not both".into()),
            (Some(to), None) => legacy_transform(subject, to)?,
            (None, Some(prefix)) => legacy_transform(subject, &format!("{prefix}.{subject}"))?,
            (None, None) => None,
        };
        spec.streams.push(StreamImport {
            exporter: source.account.clone(),
            subject: subject.clone(),
            to,
        });
    } else {
        if import.prefix.is_some() {
            return Err("`prefix` is for stream imports".into());
        }
        let local = import.to.clone().unwrap_or_else(|| subject.clone());
        let transform = legacy_transform(&local, subject)?;
        let response = match export.response_type {
            None | Some(ResponseTypeConfig::Singleton) => ResponseType::Singleton,
            Some(ResponseTypeConfig::Stream) => ResponseType::Stream,
            Some(ResponseTypeConfig::Chunked) => ResponseType::Chunked,
        };
        spec.services.push(ServiceImport {
            exporter: source.account.clone(),
            local,
            transform,
            response,
        });
    }
    Ok(())
}

/// The way back of a service import's responses, without a table of requests: the
/// reply subject the exporter sees is `_R_.<tag>.<seq>.<mac>.<reply>`, where `tag`
/// names this node's import, `seq` numbers the request, and `mac` (an HMAC under a key
/// of this node's) proves the exporter did not make it up, so a responder can answer
/// the requester's reply and nothing else in the importer. A singleton import lets
/// one response per request through: each request's number is marked in a ring of
/// atomics when answered (a second answer to a request more than `ANSWERED_RING`
/// requests old is not caught).
pub struct ResponseRoute {
    prefix: String,
    key: ring::hmac::Key,
    response: ResponseType,
    next: AtomicU64,
    answered: Box<[AtomicU64]>,
}

/// Bytes of HMAC kept in a mapped reply (base64url: 11 characters).
const MAC_BYTES: usize = 8;
/// Requests whose single answer a singleton import remembers.
const ANSWERED_RING: usize = 4096;

impl ResponseRoute {
    /// `tag`: a token unique to this node and import; `secret`: this node's key.
    pub fn new(tag: &str, secret: &[u8], response: ResponseType) -> ResponseRoute {
        let ring_len = if response == ResponseType::Singleton {
            ANSWERED_RING
        } else {
            0
        };
        ResponseRoute {
            prefix: format!("_R_.{tag}."),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            response,
            next: AtomicU64::new(1),
            answered: (0..ring_len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// What the way back subscribes to in the exporter.
    pub fn subject(&self) -> String {
        format!("{}>", self.prefix)
    }

    fn mac(&self, seq: &[u8], reply: &[u8]) -> String {
        use base64::Engine;
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(seq);
        ctx.update(b".");
        ctx.update(reply);
        let tag = ctx.sign();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..MAC_BYTES])
    }

    /// The reply subject the exporter sees for the requester's `reply`.
    pub fn map(&self, reply: &[u8]) -> Vec<u8> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let mut out = Vec::with_capacity(self.prefix.len() + 32 + reply.len());
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(seq.as_bytes());
        out.push(b'.');
        out.extend_from_slice(self.mac(seq.as_bytes(), reply).as_bytes());
        out.push(b'.');
        out.extend_from_slice(reply);
        out
    }

    /// The requester's reply subject a response on `mapped` goes to: `None` if the
    /// subject is not genuine, or a singleton's request was answered already.
    pub fn accept<'a>(&self, mapped: &'a [u8]) -> Option<&'a [u8]> {
        let rest = mapped.strip_prefix(self.prefix.as_bytes())?;
        let mut parts = rest.splitn(3, |&b| b == b'.');
        let (seq, mac, reply) = (parts.next()?, parts.next()?, parts.next()?);
        let genuine = crate::subject::is_valid_literal_subject(reply)
            && subtle::ConstantTimeEq::ct_eq(mac, self.mac(seq, reply).as_bytes()).into();
        if !genuine {
            return None;
        }
        if self.response == ResponseType::Singleton {
            let n: u64 = std::str::from_utf8(seq).ok()?.parse().ok()?;
            let slot = self.answered.get(n as usize % self.answered.len().max(1))?;
            if slot.swap(n, Ordering::AcqRel) == n {
                return None;
            }
        }
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<AccountPlan, AuthConfigError> {
        let accounts: BTreeMap<String, AccountConfig> = toml::from_str(text).expect("parses");
        AccountPlan::new(&accounts, None)
    }

    const AB: &str = r#"
        [A]
        exports = [{ stream = "ev.>" }, { service = "help" }, { service = "svc.*", response_type = "stream" }, { stream = "priv", accounts = ["C"] }]
        [C]
    "#;

    #[test]
    fn imports_are_checked_against_the_exports() {
        let ok = plan(&format!(
            "{AB}\n[B]\nimports = [{{ stream = {{ account = \"A\", subject = \"ev.x.>\" }}, to = \"froma.x.>\" }}, {{ service = {{ account = \"A\", subject = \"svc.x\" }} }}]"
        ))
        .expect("valid");
        let b = ok.get("B").expect("B");
        assert_eq!(b.streams.len(), 1);
        let to = b.streams[0].to.as_ref().expect("a transform");
        assert_eq!(to.apply("ev.x.y").as_deref(), Some("froma.x.y"));
        assert_eq!(b.services[0].response, ResponseType::Stream);
        assert_eq!(b.services[0].local, "svc.x");
        assert!(
            ok.get("$SYS").is_some(),
            "the system account exists by default"
        );

        for (import, why) in [
            (
                r#"{ stream = { account = "Z", subject = "ev.>" } }"#,
                "\"Z\" account not defined for stream import",
            ),
            (
                r#"{ stream = { account = "A", subject = "nope.>" } }"#,
                "Error adding stream import \"nope.>\": stream import not authorized",
            ),
            (
                r#"{ service = { account = "A", subject = "ev.x" } }"#,
                "service import not authorized",
            ),
            (
                r#"{ stream = { account = "A", subject = "priv" } }"#,
                "stream import not authorized",
            ),
            (
                r#"{ stream = { account = "A", subject = "ev.>" }, service = { account = "A", subject = "help" } }"#,
                "either",
            ),
        ] {
            let e = plan(&format!("{AB}\n[B]\nimports = [{import}]")).expect_err(import);
            assert_eq!(e.key, "accounts.B.imports", "{import}");
            assert!(e.reason.contains(why), "{import}: {}", e.reason);
        }
        // The private export is open to the account it names.
        plan(&format!(
            "{AB}\nimports = [{{ stream = {{ account = \"A\", subject = \"priv\" }} }}]"
        ))
        .expect("C may import priv");
    }

    #[test]
    fn a_mapped_reply_leads_back_to_its_requester_only() {
        let route = ResponseRoute::new("n1x", b"node key", ResponseType::Stream);
        let mapped = route.map(b"_INBOX.abc.1");
        assert!(crate::subject::matches(route.subject().as_bytes(), &mapped));
        assert_eq!(route.accept(&mapped), Some(&b"_INBOX.abc.1"[..]));
        assert_eq!(
            route.accept(&mapped),
            Some(&b"_INBOX.abc.1"[..]),
            "a stream answers again"
        );
        // A responder that rewrites the reply part gets nowhere.
        let text = String::from_utf8(mapped.clone()).expect("ascii");
        let forged = text.replace("_INBOX.abc.1", "orders.new");
        assert_eq!(route.accept(forged.as_bytes()), None);
        assert_eq!(route.accept(b"_R_.n1x.1.x.orders.new"), None);
        // Another node's key does not accept it.
        let other = ResponseRoute::new("n1x", b"other", ResponseType::Stream);
        assert_eq!(other.accept(&mapped), None);
    }

    #[test]
    fn a_singleton_request_is_answered_once() {
        let route = ResponseRoute::new("t", b"k", ResponseType::Singleton);
        let first = route.map(b"_INBOX.a");
        let second = route.map(b"_INBOX.b");
        assert_eq!(route.accept(&second), Some(&b"_INBOX.b"[..]));
        assert_eq!(route.accept(&first), Some(&b"_INBOX.a"[..]));
        assert_eq!(route.accept(&first), None);
        assert_eq!(route.accept(&second), None);
        // Requests far apart share a slot, and are still answered once each.
        let mut later = Vec::new();
        for _ in 0..ANSWERED_RING {
            later.push(route.map(b"_INBOX.c"));
        }
        let last = later.last().expect("one");
        assert_eq!(route.accept(last), Some(&b"_INBOX.c"[..]));
        assert_eq!(route.accept(last), None);
    }

    #[test]
    fn one_jetstream_account_and_a_system_account_without_it() {
        let p = plan("[A]\njetstream = true\n[B]").expect("valid");
        assert_eq!(p.jetstream_account(), Some("A"));
        assert_eq!(plan("[A]\n[B]").expect("valid").jetstream_account(), None);
        assert_eq!(plan("").expect("valid").jetstream_account(), Some("$G"));
        let e = plan("[A]\njetstream = true\n[B]\njetstream = true").expect_err("two");
        assert!(e.reason.contains("A, B"), "{}", e.reason);
        let accounts: BTreeMap<String, AccountConfig> =
            toml::from_str("[SYS]\njetstream = true").expect("parses");
        assert!(AccountPlan::new(&accounts, Some("SYS")).is_err());
        assert!(AccountPlan::new(&BTreeMap::new(), Some("NOPE")).is_err());
        assert!(plan("[\"a.b\"]").is_err());
    }
}
