//! Per-user permissions: where a client may publish, what it may subscribe to, and
//! whether it may answer requests it received.
//!
//! The rules follow the reference server's:
//! - publish: a literal subject is allowed when it matches an allow pattern (or there
//!   is no allow list) and no deny pattern;
//! - subscribe: a subscription is allowed when it is a subset of an allow pattern and
//!   not a subset of a deny pattern. A wildcard subscription that merely overlaps a
//!   deny pattern is allowed, and the messages that match the deny pattern are not
//!   delivered to it ([`Permissions::delivery_deny`]);
//! - queue entries (`"subject queue"`, the queue may use wildcards) decide for
//!   subscriptions in a matching queue group; a plain entry decides for plain
//!   subscriptions and for queue subscriptions no queue entry speaks about;
//! - `allow_responses`: a client may publish to the reply subject of a message it
//!   received, at most `max` times within `expires`, even where its publish
//!   permissions deny it (the reply table lives with the connection).

use std::time::{Duration, Instant};

use super::config::{AllowResponsesConfig, PermissionsConfig, SubjectPermissionConfig};
use crate::subject;

/// A reply allowed per request received, and for how long, unless configured.
pub const DEFAULT_RESPONSE_MAX: usize = 1;
pub const DEFAULT_RESPONSE_EXPIRES: Duration = Duration::from_secs(120);

/// One allow or deny entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    subject: Box<[u8]>,
    /// A queue entry applies only to queue subscriptions whose group matches it.
    queue: Option<Box<[u8]>>,
}

impl Pattern {
    fn parse(text: &str, queues: bool) -> Result<Pattern, String> {
        let mut parts = text.split_whitespace();
        let subject = parts.next().unwrap_or_default();
        let queue = parts.next();
        if parts.next().is_some() || (queue.is_some() && !queues) {
            return Err(format!("{text:?} is not a subject"));
        }
        if !subject::is_valid_subject(subject.as_bytes()) {
            return Err(format!("{text:?} is not a valid subject"));
        }
        Ok(Pattern {
            subject: subject.as_bytes().into(),
            queue: queue.map(|q| q.as_bytes().into()),
        })
    }

    fn queue_matches(&self, queue: &[u8]) -> bool {
        self.queue
            .as_deref()
            .is_some_and(|q| subject::matches(q, queue))
    }
}

/// An allow list (none: everything) and a deny list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    allow: Option<Vec<Pattern>>,
    deny: Vec<Pattern>,
}

impl Rule {
    fn parse(config: Option<&SubjectPermissionConfig>, queues: bool) -> Result<Rule, String> {
        let (allow, deny): (Option<&[String]>, &[String]) = match config {
            None => (None, &[]),
            Some(SubjectPermissionConfig::Allow(allow)) => (Some(allow), &[]),
            Some(SubjectPermissionConfig::Rules { allow, deny }) => (allow.as_deref(), deny),
        };
        let parse_all = |list: &[String]| {
            list.iter()
                .map(|p| Pattern::parse(p, queues))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Rule {
            allow: allow.map(parse_all).transpose()?,
            deny: parse_all(deny)?,
        })
    }

    fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Does `list` speak for a subscription to `subject` (in `queue`)? A queue entry
    /// decides for a queue subscription; otherwise the plain entries do. `applies`
    /// says whether an entry's subject speaks for the subscription's.
    fn covers(
        list: &[Pattern],
        subject: &[u8],
        queue: Option<&[u8]>,
        applies: impl Fn(&[u8], &[u8]) -> bool,
    ) -> bool {
        let mut plain = false;
        let mut queue_entries = false;
        for p in list.iter().filter(|p| applies(&p.subject, subject)) {
            match (&p.queue, queue) {
                (None, _) => plain = true,
                (Some(_), Some(q)) => {
                    queue_entries = true;
                    if p.queue_matches(q) {
                        return true;
                    }
                }
                (Some(_), None) => {}
            }
        }
        plain && !queue_entries
    }
}

/// An allow entry admits a subscription only when everything the subscription can
/// receive is inside the entry. (The reference treats the subscription's wildcards as
/// plain tokens here, which lets `allow = ["a.*"]` admit `SUB a.>`; we do not.)
fn allow_covers(entry: &[u8], subscription: &[u8]) -> bool {
    subject::is_subset(subscription, entry)
}

/// A deny entry refuses a subscription that its subject matches with the
/// subscription's wildcards read as plain tokens, as the reference does: `deny =
/// ["a.*"]` refuses `SUB a.b`, `SUB a.*` and `SUB a.>`.
fn deny_covers(entry: &[u8], subscription: &[u8]) -> bool {
    subject::matches(entry, subscription)
}

/// How many replies a client may send per request it received, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePermission {
    pub max: usize,
    pub expires: Duration,
}

/// One reply a client may send: when the request arrived and how many answers went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyGrant {
    received: Instant,
    answers: usize,
}

impl ReplyGrant {
    pub fn new(received: Instant) -> ReplyGrant {
        ReplyGrant {
            received,
            answers: 0,
        }
    }
}

impl ResponsePermission {
    pub fn expired(&self, grant: &ReplyGrant, now: Instant) -> bool {
        now.saturating_duration_since(grant.received) > self.expires
    }

    /// May one more answer go out under `grant` at `now`? Counts it if so.
    pub fn admit(&self, grant: &mut ReplyGrant, now: Instant) -> bool {
        if self.expired(grant, now) || grant.answers >= self.max {
            return false;
        }
        grant.answers += 1;
        true
    }
}

/// The reply subjects a client received and may answer (`allow_responses`): noted by
/// publishers as they deliver requests to it, consulted when it publishes. A lock of
/// its own guards it (several publishers note into it); nothing waits under it.
#[derive(Debug)]
pub struct ReplyLog {
    permission: ResponsePermission,
    grants: std::sync::Mutex<std::collections::HashMap<Box<[u8]>, ReplyGrant>>,
}

/// Entries kept before expired ones are pruned.
const REPLY_LOG_PRUNE_AT: usize = 4096;

impl ReplyLog {
    pub fn new(permission: ResponsePermission) -> Self {
        ReplyLog {
            permission,
            grants: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// How many answers per request, for how long.
    pub fn permission(&self) -> ResponsePermission {
        self.permission
    }

    fn grants(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<[u8]>, ReplyGrant>> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request with reply subject `reply` was delivered at `now`.
    pub fn note(&self, reply: &[u8], now: Instant) {
        let mut grants = self.grants();
        if grants.len() >= REPLY_LOG_PRUNE_AT {
            grants.retain(|_, g| !self.permission.expired(g, now));
        }
        grants.insert(reply.into(), ReplyGrant::new(now));
    }

    /// May the owner publish to `reply` at `now`? Counts the answer if so.
    pub fn admit(&self, reply: &[u8], now: Instant) -> bool {
        let mut grants = self.grants();
        let Some(grant) = grants.get_mut(reply) else {
            return false;
        };
        let admitted = self.permission.admit(grant, now);
        if !admitted {
            grants.remove(reply);
        }
        admitted
    }
}

/// What one user may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    publish: Rule,
    subscribe: Rule,
    responses: Option<ResponsePermission>,
}

impl Permissions {
    /// Everything allowed: the permissions of a client on a node without auth, or of a
    /// user without a permissions entry.
    pub fn all() -> Permissions {
        Permissions::default()
    }

    /// Compiles a permissions entry; the error says which subject is wrong.
    pub fn from_config(config: &PermissionsConfig) -> Result<Permissions, String> {
        let publish =
            Rule::parse(config.publish.as_ref(), false).map_err(|e| format!("publish: {e}"))?;
        let subscribe =
            Rule::parse(config.subscribe.as_ref(), true).map_err(|e| format!("subscribe: {e}"))?;
        let responses = match &config.allow_responses {
            None | Some(AllowResponsesConfig::Enabled(false)) => None,
            Some(AllowResponsesConfig::Enabled(true)) => Some(ResponsePermission {
                max: DEFAULT_RESPONSE_MAX,
                expires: DEFAULT_RESPONSE_EXPIRES,
            }),
            Some(AllowResponsesConfig::Limits { max, expires }) => Some(ResponsePermission {
                // 0 is the default, a negative number is unlimited (the reference's).
                max: match max {
                    None | Some(0) => DEFAULT_RESPONSE_MAX,
                    Some(m) => usize::try_from(*m).unwrap_or(usize::MAX),
                },
                expires: expires
                    .map(|d| d.0)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_RESPONSE_EXPIRES),
            }),
        };
        // As in the reference: answering requests without any publish rule means
        // publishing nothing else.
        let publish = match (&responses, publish.is_open()) {
            (Some(_), true) => Rule {
                allow: Some(Vec::new()),
                deny: Vec::new(),
            },
            _ => publish,
        };
        Ok(Permissions {
            publish,
            subscribe,
            responses,
        })
    }

    /// No rule at all: the hot path skips every check.
    pub fn is_unrestricted(&self) -> bool {
        self.publish.is_open() && self.subscribe.is_open() && self.responses.is_none()
    }

    /// May a message be published to the literal `subject` (replies aside)?
    pub fn can_publish(&self, subject: &[u8]) -> bool {
        let rule = &self.publish;
        let allowed = rule
            .allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|p| subject::matches(&p.subject, subject)));
        allowed
            && !rule
                .deny
                .iter()
                .any(|p| subject::matches(&p.subject, subject))
    }

    /// May the client subscribe to `subject`, in `queue` if given?
    pub fn can_subscribe(&self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        let rule = &self.subscribe;
        // A subject with an empty token (`a..b`, `.a`) matches no entry, allow or
        // deny, as in the reference's sublist: an allow list refuses it (a
        // Permissions Violation), a deny list leaves it to the validity check.
        let empty_token = subject.split(|&b| b == b'.').any(<[u8]>::is_empty);
        let allowed = rule
            .allow
            .as_ref()
            .is_none_or(|allow| !empty_token && Rule::covers(allow, subject, queue, allow_covers));
        allowed && (empty_token || !Rule::covers(&rule.deny, subject, queue, deny_covers))
    }

    /// The deny patterns a (wildcard) subscription to `subject` overlaps: messages
    /// matching them are not delivered to it.
    pub fn delivery_deny(&self, subject: &[u8]) -> Vec<Box<[u8]>> {
        self.subscribe
            .deny
            .iter()
            .filter(|p| p.queue.is_none() && subject::overlaps(&p.subject, subject))
            .map(|p| p.subject.clone())
            .collect()
    }

    /// Replies to received requests, if allowed.
    pub fn responses(&self) -> Option<ResponsePermission> {
        self.responses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(toml_text: &str) -> Permissions {
        let config: PermissionsConfig = toml::from_str(toml_text).expect("valid permissions");
        Permissions::from_config(&config).expect("compiles")
    }

    #[test]
    fn a_subject_with_an_empty_token_matches_no_entry() {
        let allow = perms(r#"subscribe = { allow = ["a.>"] }"#);
        for subject in [&b"a..b"[..], b"a..>", b".a", b"a.", b"a.*..b"] {
            assert!(!allow.can_subscribe(subject, None), "{subject:?}");
        }
        assert!(allow.can_subscribe(b"a.b", None));
        // Not denied either: the subject's validity check refuses it instead.
        let deny = perms(r#"subscribe = { deny = ["a.>"] }"#);
        assert!(deny.can_subscribe(b"a..b", None));
        assert!(!deny.can_subscribe(b"a.b", None));
    }

    #[test]
    fn publish_allow_and_deny() {
        let p =
            perms(r#"publish = { allow = ["orders.>", "status"], deny = ["orders.secret.*"] }"#);
        assert!(p.can_publish(b"orders.new"));
        assert!(p.can_publish(b"status"));
        assert!(!p.can_publish(b"status.x"));
        assert!(!p.can_publish(b"orders.secret.x"));
        assert!(p.can_publish(b"orders.secret.x.y"));
        let only_deny = perms(r#"publish = { deny = ["admin.>"] }"#);
        assert!(only_deny.can_publish(b"anything"));
        assert!(!only_deny.can_publish(b"admin.shutdown"));
        assert!(perms("").is_unrestricted());
        assert!(!only_deny.is_unrestricted());
    }

    #[test]
    fn subscribe_is_a_subset_check_and_deny_overlap_filters_delivery() {
        let p = perms(r#"subscribe = { allow = ["orders.>"], deny = ["orders.secret"] }"#);
        assert!(p.can_subscribe(b"orders.*", None));
        assert!(p.can_subscribe(b"orders.>", None));
        assert!(!p.can_subscribe(b">", None), "wider than the allow");
        assert!(!p.can_subscribe(b"orders.secret", None));
        assert_eq!(
            p.delivery_deny(b"orders.*"),
            vec![Box::from(&b"orders.secret"[..])]
        );
        assert!(p.delivery_deny(b"orders.new").is_empty());
        let wide_deny = perms(r#"subscribe = { deny = ["orders.>"] }"#);
        assert!(!wide_deny.can_subscribe(b"orders.*", None));
        let star_deny = perms(r#"subscribe = { deny = ["orders.*"] }"#);
        assert!(
            !star_deny.can_subscribe(b"orders.>", None),
            "as the reference"
        );
        let star_allow = perms(r#"subscribe = ["orders.*"]"#);
        assert!(
            !star_allow.can_subscribe(b"orders.>", None),
            "stricter than the reference"
        );
        assert!(wide_deny.can_subscribe(b">", None));
        assert_eq!(wide_deny.delivery_deny(b">").len(), 1);
    }

    #[test]
    fn queue_entries_decide_for_their_groups() {
        let p = perms(r#"subscribe = ["jobs.> workers", "jobs.> audit.*", "events"]"#);
        assert!(p.can_subscribe(b"jobs.a", Some(b"workers")));
        assert!(p.can_subscribe(b"jobs.a", Some(b"audit.eu")));
        assert!(!p.can_subscribe(b"jobs.a", Some(b"others")));
        assert!(
            !p.can_subscribe(b"jobs.a", None),
            "a queue entry allows only queues"
        );
        assert!(p.can_subscribe(b"events", None));
        assert!(p.can_subscribe(b"events", Some(b"any")));
        let deny = perms(r#"subscribe = { deny = ["jobs.> spies"] }"#);
        assert!(!deny.can_subscribe(b"jobs.x", Some(b"spies")));
        assert!(deny.can_subscribe(b"jobs.x", Some(b"workers")));
        assert!(deny.can_subscribe(b"jobs.x", None));
    }

    #[test]
    fn responses_close_publishing_unless_rules_say_otherwise() {
        let p = perms("allow_responses = true");
        assert!(!p.can_publish(b"anything"));
        assert_eq!(
            p.responses(),
            Some(ResponsePermission {
                max: 1,
                expires: DEFAULT_RESPONSE_EXPIRES
            })
        );
        let p = perms("publish = [\"log\"]\n[allow_responses]\nmax = 3\nexpires = \"1s\"");
        assert!(p.can_publish(b"log"));
        assert_eq!(
            p.responses(),
            Some(ResponsePermission {
                max: 3,
                expires: Duration::from_secs(1)
            })
        );
    }

    #[test]
    fn reply_grants_count_and_expire() {
        let permission = ResponsePermission {
            max: 2,
            expires: Duration::from_secs(1),
        };
        let start = Instant::now();
        let mut grant = ReplyGrant::new(start);
        assert!(permission.admit(&mut grant, start));
        assert!(permission.admit(&mut grant, start + Duration::from_millis(500)));
        assert!(!permission.admit(&mut grant, start), "max answers sent");
        let mut late = ReplyGrant::new(start);
        assert!(!permission.admit(&mut late, start + Duration::from_secs(2)));
    }

    #[test]
    fn bad_patterns_are_named() {
        let config: PermissionsConfig = toml::from_str(r#"publish = ["a..b"]"#).unwrap();
        let e = Permissions::from_config(&config).unwrap_err();
        assert!(e.contains("publish") && e.contains("a..b"), "{e}");
        let config: PermissionsConfig = toml::from_str(r#"publish = ["a q"]"#).unwrap();
        assert!(
            Permissions::from_config(&config).is_err(),
            "no queues in publish"
        );
    }
}
