//! Mirrors and sources: how a stream fills itself from other streams.
//!
//! As at the reference, everything goes through the API and the subject space, even on
//! one node: for each origin the stream asks the origin stream (on
//! `$JS.API.CONSUMER.CREATE.<origin>`, or the `external` API prefix) for a hidden
//! (`direct`) push consumer with flow control and idle heartbeats, starting after the
//! last origin sequence it holds, and takes what that consumer delivers. A gap in the
//! consumer's delivery sequence, a heartbeat that says a delivery was missed, silence
//! past [`HEALTH_CHECK`], a refused create or a message it could not store make it ask
//! for a new consumer from where it is. A mirror keeps the origin's sequences and times
//! (skipping what the origin deleted) and takes nothing else; a source appends with the
//! stream's own sequences and a `Nats-Stream-Source` header naming where each message
//! came from, by which the stream finds its place again after a restart.
//!
//! This is the pure part: [`Sourcing`] is fed the deliveries, control messages, create
//! responses and the clock, and says what to store, what to send and when to look
//! again. The stream actor does the subscribing, publishing and storing.

use serde::Serialize;

use super::api::{
    self, ConsumerConfig, DeliverPolicy, StreamConfig, StreamSource, StreamSourceInfo,
};
use super::errors::ApiError;
use super::headers;
use super::request;
use crate::subject_transform::SubjectTransform;

/// The origin consumer's idle heartbeat (the reference's `sourceHealthHB`).
pub const HEARTBEAT: i64 = 1_000_000_000;
/// Silence after which a consumer is given up and asked for again; also the origin
/// consumer's inactivity threshold, so one nobody takes from goes away by itself.
pub const HEALTH_CHECK: i64 = 10_000_000_000;
/// Wait before asking again after a create was refused or went unanswered.
pub const RETRY_AFTER: i64 = 2_000_000_000;
/// The header a sourced message carries.
pub const SOURCE_HEADER: &str = "Nats-Stream-Source";

/// What an origin is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setup {
    /// A consumer is to be asked for at this time.
    Due(i64),
    /// A create request for consumer `name` went out at this time.
    Requested { at: i64, name: String },
    /// Deliveries are coming from `consumer`.
    Running { consumer: String },
}

#[derive(Debug, Clone)]
struct Origin {
    spec: StreamSource,
    /// `<name> <filter> <destination>`, as the reference indexes sources (and writes
    /// their headers); `>` for none.
    iname: String,
    filters: Vec<String>,
    transforms: Vec<SubjectTransform>,
    /// The last origin sequence stored (or skipped over, for a mirror).
    sseq: u64,
    /// The last delivery sequence of the current consumer.
    dseq: u64,
    lag: u64,
    /// When the origin was last heard from (0: never).
    last_heard: i64,
    /// Each create request gets a new generation, in its reply and deliver subjects,
    /// so late answers and deliveries of an old one are told apart.
    generation: u64,
    setup: Setup,
    error: Option<ApiError>,
}

/// A consumer create request the stream actor publishes (with `reply` as its reply
/// subject), after subscribing to `deliver` for `origin`'s `generation` in place of
/// the previous generation's subject (so a consumer given up on loses its subscriber
/// and goes away after its inactivity threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub origin: usize,
    pub generation: u64,
    pub deliver: String,
    pub subject: String,
    pub reply: String,
    pub body: Vec<u8>,
}

/// A message to store, made from an origin's delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced {
    /// Which origin (for [`Sourcing::store_failed`]).
    pub origin: usize,
    /// The origin's sequence: a mirror stores under it.
    pub origin_seq: u64,
    /// The origin's time: a mirror keeps it.
    pub origin_ts: i64,
    pub subject: String,
    /// Header block (`hdr_len` bytes) followed by the payload.
    pub data: Vec<u8>,
    pub hdr_len: usize,
}

/// What a message on the sourcing subjects asks of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Nothing,
    /// Publish an empty message to this subject (a flow-control answer).
    Answer(String),
    Store(Sourced),
}

/// The mirror or the sources of one stream.
#[derive(Debug, Clone)]
pub struct Sourcing {
    stream: String,
    mirror: bool,
    origins: Vec<Origin>,
    /// Subjects of this stream's sourcing: deliveries arrive on
    /// `<prefix>.D.<origin>.<generation>` (under the origin's subjects), create
    /// responses on `<prefix>.R.<origin>.<generation>`.
    prefix: String,
}

/// `>` for an empty filter or destination, as in the reference's index names.
fn or_all(s: &str) -> &str {
    if s.is_empty() {
        ">"
    } else {
        s
    }
}

/// Checks a mirror's or source's settings (the stream's config is otherwise valid).
fn check_origin(o: &StreamSource, mirror: bool) -> Result<(), ApiError> {
    if !super::stream::valid_name(&o.name) {
        return Err(if mirror {
            ApiError::mirror_invalid_stream_name()
        } else {
            ApiError::source_invalid_stream_name()
        });
    }
    if o.filter_subject.as_deref().is_some_and(|f| !f.is_empty())
        && !o.subject_transforms.is_empty()
    {
        return Err(ApiError::filter_with_transforms(mirror));
    }
    let filters: Vec<&str> = match &o.filter_subject {
        Some(f) if !f.is_empty() => vec![f.as_str()],
        _ => o
            .subject_transforms
            .iter()
            .map(|t| or_all(&t.src))
            .collect(),
    };
    for f in &filters {
        if !crate::subject::is_valid_subject(f.as_bytes()) {
            return Err(ApiError::transform_source(mirror, &"invalid subject"));
        }
    }
    for (i, a) in filters.iter().enumerate() {
        if filters[..i]
            .iter()
            .any(|b| crate::subject::overlaps(a.as_bytes(), b.as_bytes()))
        {
            return Err(ApiError::overlapping_filters(mirror));
        }
    }
    for t in &o.subject_transforms {
        SubjectTransform::new(&t.src, &t.dest)
            .map_err(|e| ApiError::transform_destination(mirror, &e))?;
    }
    Ok(())
}

/// Validates `mirror` and `sources` of a stream config (called from
/// `normalize_config`, before defaults fill the subjects).
pub fn check_config(c: &StreamConfig) -> Result<(), ApiError> {
    if let Some(m) = &c.mirror {
        if !c.subjects.is_empty() {
            return Err(ApiError::mirror_with_subjects());
        }
        if c.sources.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::mirror_with_sources());
        }
        if c.first_seq > 0 {
            return Err(ApiError::mirror_with_first_seq());
        }
        check_origin(m, true)?;
    }
    if let Some(sources) = &c.sources {
        let mut seen = Vec::new();
        for s in sources {
            check_origin(s, false)?;
            let iname = index_name(s);
            if seen.contains(&iname) {
                return Err(ApiError::source_duplicate());
            }
            seen.push(iname);
        }
    }
    Ok(())
}

/// A mirror's configuration may not change at all (the reference's rule).
pub fn check_update(old: &StreamConfig, new: &StreamConfig) -> Result<(), ApiError> {
    if old.mirror != new.mirror {
        return Err(ApiError::mirror_not_updatable());
    }
    Ok(())
}

/// `<name> <filter> <destination>` of an origin.
fn index_name(o: &StreamSource) -> String {
    let (source, dest) = if o.subject_transforms.is_empty() {
        (
            or_all(o.filter_subject.as_deref().unwrap_or("")).to_string(),
            ">".to_string(),
        )
    } else {
        let src: Vec<&str> = o
            .subject_transforms
            .iter()
            .map(|t| or_all(&t.src))
            .collect();
        let dst: Vec<&str> = o
            .subject_transforms
            .iter()
            .map(|t| or_all(&t.dest))
            .collect();
        (src.join("\u{c}"), dst.join("\u{c}"))
    };
    format!("{} {source} {dest}", o.name)
}

/// The index name a stored message's `Nats-Stream-Source` header names, and the origin
/// sequence it came from: `<name> <seq> <filter> <dest> <subject> [<ident>]`.
pub fn parse_source_header(value: &str) -> Option<(String, u64)> {
    let f: Vec<&str> = value.split(' ').collect();
    if f.len() < 4 {
        return None;
    }
    let seq = f[1].parse().ok()?;
    Some((format!("{} {} {}", f[0], f[2], f[3]), seq))
}

#[derive(Serialize)]
struct CreateRequest<'a> {
    stream_name: &'a str,
    config: ConsumerConfig,
}

impl Sourcing {
    /// The sourcing of a stream with `mirror` or `sources` (validated), or `None`.
    /// `prefix` is a subject prefix unique to this stream's actor.
    pub fn new(config: &StreamConfig, prefix: String) -> Option<Sourcing> {
        let (mirror, specs): (bool, Vec<StreamSource>) = match (&config.mirror, &config.sources) {
            (Some(m), _) => (true, vec![m.clone()]),
            (None, Some(s)) if !s.is_empty() => (false, s.clone()),
            _ => return None,
        };
        let origins = specs
            .into_iter()
            .map(|spec| {
                let transforms = spec
                    .subject_transforms
                    .iter()
                    .filter_map(|t| SubjectTransform::new(&t.src, &t.dest).ok().flatten())
                    .collect();
                let filters = match &spec.filter_subject {
                    Some(f) if !f.is_empty() => vec![f.clone()],
                    _ => spec
                        .subject_transforms
                        .iter()
                        .map(|t| or_all(&t.src).to_string())
                        .filter(|f| f != ">")
                        .collect(),
                };
                Origin {
                    iname: index_name(&spec),
                    spec,
                    filters,
                    transforms,
                    sseq: 0,
                    dseq: 0,
                    lag: 0,
                    last_heard: 0,
                    generation: 0,
                    setup: Setup::Due(0),
                    error: None,
                }
            })
            .collect();
        Some(Sourcing {
            stream: config.name.clone(),
            mirror,
            origins,
            prefix,
        })
    }

    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    /// The generation of origin `i`'s current consumer.
    pub fn generation(&self, i: usize) -> u64 {
        self.origins.get(i).map_or(0, |o| o.generation)
    }

    /// Where create responses come, for every origin.
    pub fn reply_subscription(&self) -> String {
        format!("{}.R.>", self.prefix)
    }

    /// The index names of the sources, in order (a restart looks for each one's last
    /// message).
    pub fn index_names(&self) -> Vec<String> {
        self.origins.iter().map(|o| o.iname.clone()).collect()
    }

    /// Where origin `i` stands after a restart: its last sequence held here.
    pub fn resume(&mut self, i: usize, origin_seq: u64) {
        if let Some(o) = self.origins.get_mut(i) {
            o.sseq = origin_seq;
        }
    }

    /// Create requests due at `now`. `last_seq` is the stream's last sequence and
    /// `empty` whether it has never held anything (a mirror starts from its config
    /// then); `name` makes a fresh consumer name.
    pub fn poll_setup(
        &mut self,
        now: i64,
        last_seq: u64,
        empty: bool,
        name: &mut dyn FnMut() -> String,
    ) -> Vec<Request> {
        let mut out = Vec::new();
        for i in 0..self.origins.len() {
            let due = match &self.origins[i].setup {
                Setup::Due(at) => *at <= now,
                Setup::Requested { at, .. } => at + HEALTH_CHECK <= now,
                Setup::Running { .. } => false,
            };
            if !due {
                continue;
            }
            if self.mirror {
                self.origins[i].sseq = last_seq;
            }
            let name = name();
            let request = self.create_request(i, empty, name.clone());
            self.origins[i].setup = Setup::Requested { at: now, name };
            out.push(request);
        }
        out
    }

    fn create_request(&mut self, i: usize, empty: bool, name: String) -> Request {
        let mirror = self.mirror;
        let o = &mut self.origins[i];
        o.generation += 1;
        o.dseq = 0;
        let mut config = ConsumerConfig {
            name: Some(name.clone()),
            deliver_subject: Some(format!("{}.D.{i}.{}", self.prefix, o.generation)),
            ack_policy: api::AckPolicy::None,
            ack_wait: 22 * 3_600_000_000_000,
            max_deliver: 1,
            idle_heartbeat: HEARTBEAT,
            flow_control: true,
            direct: true,
            inactive_threshold: HEALTH_CHECK,
            ..ConsumerConfig::default()
        };
        let fresh = if mirror { empty } else { o.sseq == 0 };
        if !fresh {
            config.deliver_policy = DeliverPolicy::ByStartSequence;
            config.opt_start_seq = Some(o.sseq + 1);
        } else if o.spec.opt_start_seq > 0 {
            config.deliver_policy = DeliverPolicy::ByStartSequence;
            config.opt_start_seq = Some(o.spec.opt_start_seq);
        } else if let Some(t) = &o.spec.opt_start_time {
            config.deliver_policy = DeliverPolicy::ByStartTime;
            config.opt_start_time = Some(t.clone());
        } else {
            config.deliver_policy = DeliverPolicy::All;
        }
        match o.filters.as_slice() {
            [] => {}
            [one] => config.filter_subject = Some(one.clone()),
            many => config.filter_subjects = Some(many.to_vec()),
        }
        let mut metadata = std::collections::BTreeMap::new();
        let role = if mirror { "mirror" } else { "source" };
        metadata.insert(format!("_nats.{role}.stream"), self.stream.clone());
        config.metadata = Some(metadata);
        let api = o
            .spec
            .external
            .as_ref()
            .map(|e| e.api.trim_end_matches('.').to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "$JS.API".to_string());
        let subject = match &config.filter_subject {
            Some(f) => format!("{api}.CONSUMER.CREATE.{}.{name}.{f}", o.spec.name),
            None => format!("{api}.CONSUMER.CREATE.{}.{name}", o.spec.name),
        };
        let body = serde_json::to_vec(&CreateRequest {
            stream_name: &o.spec.name,
            config,
        })
        .unwrap_or_default();
        Request {
            origin: i,
            generation: o.generation,
            deliver: format!("{}.D.{i}.{}", self.prefix, o.generation),
            subject,
            reply: format!("{}.R.{i}.{}", self.prefix, o.generation),
            body,
        }
    }

    /// Asks for a new consumer for origin `i` at `at`, continuing after what it has.
    fn retry(&mut self, i: usize, at: i64) {
        if let Some(o) = self.origins.get_mut(i) {
            o.setup = Setup::Due(at);
        }
    }

    /// A message that could not be stored (limits, say): ask again from it.
    pub fn store_failed(&mut self, s: &Sourced, now: i64) {
        if let Some(o) = self.origins.get_mut(s.origin) {
            o.sseq = s.origin_seq.saturating_sub(1).min(o.sseq);
        }
        self.retry(s.origin, now + RETRY_AFTER);
    }

    /// A create response, on `<prefix>.R.<origin>.<generation>`.
    pub fn handle_response(&mut self, subject: &str, body: &[u8], now: i64) {
        let Some(rest) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".R."))
        else {
            return;
        };
        let Some((i, generation)) = rest.split_once('.') else {
            return;
        };
        let (Ok(i), Ok(generation)) = (i.parse::<usize>(), generation.parse::<u64>()) else {
            return;
        };
        if self
            .origins
            .get(i)
            .is_some_and(|o| o.generation == generation)
        {
            self.created(i, body, now);
        }
    }

    /// A message on origin `i`'s deliver subject of `generation`: a delivery (under its
    /// subject at the origin, with the consumer's ack subject as `reply`), a heartbeat
    /// or a flow-control request. `data` is the header block (`hdr_len` bytes) and
    /// payload. What an earlier generation's consumer still sends is ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_delivery(
        &mut self,
        i: usize,
        generation: u64,
        subject: &str,
        reply: Option<&str>,
        data: &[u8],
        hdr_len: usize,
        now: i64,
    ) -> Inbound {
        if self
            .origins
            .get(i)
            .is_none_or(|o| o.generation != generation)
        {
            return Inbound::Nothing;
        }
        let hdr = data.get(..hdr_len).unwrap_or_default();
        if headers::status(hdr) == Some(100) {
            self.origins[i].last_heard = now;
            return self.control(i, hdr, reply, now);
        }
        let Some(ack) = reply.and_then(request::parse_ack) else {
            return Inbound::Nothing;
        };
        let mirror = self.mirror;
        let o = &mut self.origins[i];
        match &o.setup {
            Setup::Running { consumer } if consumer == ack.consumer => {}
            // The consumer asked for delivers before its create response arrives.
            Setup::Requested { name, .. } if name == ack.consumer => {
                o.setup = Setup::Running {
                    consumer: name.clone(),
                };
            }
            // A late delivery of a consumer given up on.
            _ => return Inbound::Nothing,
        }
        o.last_heard = now;
        if ack.deliveries > 1 {
            return Inbound::Nothing;
        }
        if ack.stream_seq <= o.sseq {
            // Older than what we have: only keep count of deliveries.
            if ack.consumer_seq == o.dseq + 1 {
                o.dseq += 1;
            }
            return Inbound::Nothing;
        }
        let in_order = ack.consumer_seq == o.dseq + 1;
        let first = o.dseq == 0;
        let contiguous = ack.stream_seq == o.sseq + 1;
        // A jump in origin sequences with no delivery missed means the origin deleted
        // those messages (a mirror skips them too); a missed delivery means asking for a
        // new consumer from where we are.
        if !(in_order || first || (mirror && contiguous)) {
            self.retry(i, now);
            return Inbound::Nothing;
        }
        o.dseq = ack.consumer_seq;
        o.sseq = ack.stream_seq;
        o.lag = ack.pending.saturating_sub(1);
        o.error = None;
        let target = o
            .transforms
            .iter()
            .find_map(|t| t.apply(subject))
            .unwrap_or_else(|| subject.to_string());
        let (data, hdr_len) = if mirror {
            (data.to_vec(), hdr_len)
        } else {
            let mut parts = o.iname.splitn(3, ' ');
            let value = format!(
                "{} {} {} {} {subject}",
                parts.next().unwrap_or_default(),
                ack.stream_seq,
                parts.next().unwrap_or(">"),
                parts.next().unwrap_or(">"),
            );
            let block = headers::retain(hdr, |k| {
                k.eq_ignore_ascii_case(SOURCE_HEADER)
                    || starts_with_ignore_case(k, "Nats-Expected-")
                    || starts_with_ignore_case(k, "Nats-Batch-")
            })
            .add(SOURCE_HEADER, &value)
            .finish();
            let n = block.len();
            let mut out = block;
            out.extend_from_slice(data.get(hdr_len..).unwrap_or_default());
            (out, n)
        };
        Inbound::Store(Sourced {
            origin: i,
            origin_seq: ack.stream_seq,
            origin_ts: ack.ts,
            subject: target,
            data,
            hdr_len,
        })
    }

    /// A consumer create response for origin `i`.
    fn created(&mut self, i: usize, body: &[u8], now: i64) {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            error: Option<ApiError>,
        }
        let mirror = self.mirror;
        let o = &mut self.origins[i];
        let Setup::Requested { name: asked, .. } = &o.setup else {
            return;
        };
        match serde_json::from_slice::<Created>(body) {
            Ok(Created { error: None, name }) => {
                let consumer = name.unwrap_or_else(|| asked.clone());
                o.setup = Setup::Running { consumer };
                o.last_heard = now;
                o.error = None;
            }
            Ok(Created { error: Some(e), .. }) => {
                o.error = Some(if mirror {
                    ApiError::mirror_consumer_setup_failed(&e.description)
                } else {
                    ApiError::source_consumer_setup_failed(&e.description)
                });
                o.setup = Setup::Due(now + RETRY_AFTER);
            }
            Err(_) => {
                o.error = Some(ApiError::invalid_json(&"consumer create response"));
                o.setup = Setup::Due(now + RETRY_AFTER);
            }
        }
    }

    /// A heartbeat or flow-control request from origin `i`'s consumer.
    fn control(&mut self, i: usize, hdr: &[u8], reply: Option<&str>, now: i64) -> Inbound {
        if let Some(r) = reply.filter(|r| !r.is_empty()) {
            return Inbound::Answer(r.to_string());
        }
        let o = &self.origins[i];
        let last = headers::get(hdr, "Nats-Last-Consumer").and_then(|v| v.parse::<u64>().ok());
        if last.is_some_and(|l| l > 0 && l != o.dseq) {
            // A delivery went missing: start again after what we have.
            self.retry(i, now);
            return Inbound::Nothing;
        }
        match headers::get(hdr, "Nats-Consumer-Stalled") {
            Some(fc) if !fc.is_empty() => Inbound::Answer(fc.to_string()),
            _ => Inbound::Nothing,
        }
    }

    /// Gives up on consumers that have gone silent (or creates that went
    /// unanswered); they are asked for again by [`Self::poll_setup`].
    pub fn tick(&mut self, now: i64) {
        for o in &mut self.origins {
            if let Setup::Running { .. } = o.setup {
                if now - o.last_heard > HEALTH_CHECK {
                    o.setup = Setup::Due(now);
                }
            }
        }
    }

    /// When [`Self::tick`] or [`Self::poll_setup`] next has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        self.origins
            .iter()
            .map(|o| match &o.setup {
                Setup::Due(at) => *at,
                Setup::Requested { at, .. } => at + HEALTH_CHECK,
                Setup::Running { .. } => o.last_heard + HEALTH_CHECK + 1,
            })
            .min()
    }

    /// What STREAM.INFO says: the mirror's state, or each source's.
    pub fn info(&self, now: i64) -> (Option<StreamSourceInfo>, Option<Vec<StreamSourceInfo>>) {
        let one = |o: &Origin| StreamSourceInfo {
            name: o.spec.name.clone(),
            external: o.spec.external.clone(),
            lag: o.lag,
            seq: if self.mirror { 0 } else { o.sseq },
            active: if o.last_heard == 0 {
                -1
            } else {
                (now - o.last_heard).max(0)
            },
            error: o.error.clone(),
            filter_subject: o.spec.filter_subject.clone().filter(|f| !f.is_empty()),
            subject_transforms: o.spec.subject_transforms.clone(),
        };
        if self.mirror {
            (self.origins.first().map(one), None)
        } else {
            (None, Some(self.origins.iter().map(one).collect()))
        }
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> StreamConfig {
        serde_json::from_str(json).expect("config")
    }

    /// A delivery as an origin's push consumer sends it.
    fn ack(consumer: &str, sseq: u64, dseq: u64, pending: u64) -> String {
        format!(
            "$JS.ACK.ORIG.{consumer}.1.{sseq}.{dseq}.{}.{pending}",
            1000 + sseq
        )
    }

    fn setup(s: &mut Sourcing, now: i64, last: u64) -> Vec<Request> {
        let mut n = 0;
        s.poll_setup(now, last, last == 0, &mut || {
            n += 1;
            format!("C{n}")
        })
    }

    fn running(s: &mut Sourcing, i: usize, reqs: &[Request], name: &str) {
        let body = format!(
            r#"{{"type":"io.nats.jetstream.api.v1.consumer_create_response","name":"{name}"}}"#
        );
        s.handle_response(&reqs[i].reply, body.as_bytes(), 1);
    }

    #[test]
    fn validation_has_the_references_errors() {
        let code = |j: &str| check_config(&config(j)).map_err(|e| e.err_code);
        assert_eq!(
            code(r#"{"name":"M","subjects":["x"],"mirror":{"name":"O"}}"#),
            Err(10034)
        );
        assert_eq!(
            code(r#"{"name":"M","mirror":{"name":"O"},"sources":[{"name":"P"}]}"#),
            Err(10031)
        );
        assert_eq!(
            code(r#"{"name":"M","first_seq":4,"mirror":{"name":"O"}}"#),
            Err(10143)
        );
        assert_eq!(code(r#"{"name":"M","mirror":{"name":"a.b"}}"#), Err(10142));
        assert_eq!(
            code(r#"{"name":"S","sources":[{"name":"a*"}]}"#),
            Err(10141)
        );
        assert_eq!(
            code(r#"{"name":"S","sources":[{"name":"O"},{"name":"O"}]}"#),
            Err(10140)
        );
        assert_eq!(
            code(
                r#"{"name":"S","sources":[{"name":"O","subject_transforms":[{"src":"o.0","dest":"z.{{wildcard(1)}}"}]}]}"#
            ),
            Err(10146)
        );
        assert_eq!(
            code(
                r#"{"name":"S","sources":[{"name":"O","filter_subject":"a","subject_transforms":[{"src":"a","dest":"b"}]}]}"#
            ),
            Err(10144)
        );
        assert_eq!(
            code(
                r#"{"name":"S","sources":[{"name":"O","subject_transforms":[{"src":"a.>","dest":"b.>"},{"src":"a.*","dest":"c.*"}]}]}"#
            ),
            Err(10147)
        );
        assert_eq!(
            code(
                r#"{"name":"S","sources":[{"name":"O","filter_subject":"a"},{"name":"O","filter_subject":"b"}]}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn a_source_appends_with_its_header_and_asks_again_after_a_gap() {
        let cfg = config(r#"{"name":"S","sources":[{"name":"ORIG","filter_subject":"orig.1"}]}"#);
        let mut s = Sourcing::new(&cfg, "$JS.SRC.t".into()).expect("sourcing");
        let reqs = setup(&mut s, 0, 0);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].subject, "$JS.API.CONSUMER.CREATE.ORIG.C1.orig.1");
        let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(body["config"]["deliver_policy"], "all");
        assert_eq!(body["config"]["deliver_subject"], "$JS.SRC.t.D.0.1");
        assert_eq!(body["config"]["direct"], true);
        assert_eq!(body["config"]["flow_control"], true);
        assert!(setup(&mut s, 1, 0).is_empty(), "one request at a time");
        running(&mut s, 0, &reqs, "C1");
        let Inbound::Store(m) = s.handle_delivery(
            0,
            s.generation(0),
            "orig.1",
            Some(&ack("C1", 2, 1, 1)),
            b"payload",
            0,
            2,
        ) else {
            panic!("stored");
        };
        assert_eq!(m.subject, "orig.1");
        assert_eq!(&m.data[m.hdr_len..], b"payload");
        assert_eq!(
            headers::get(&m.data[..m.hdr_len], SOURCE_HEADER),
            Some("ORIG 2 orig.1 > orig.1")
        );
        assert_eq!(
            parse_source_header("ORIG 2 orig.1 > orig.1"),
            Some(("ORIG orig.1 >".into(), 2))
        );
        // A delivery of another consumer, or a redelivery, is not taken.
        assert_eq!(
            s.handle_delivery(
                0,
                s.generation(0),
                "orig.1",
                Some(&ack("OLD", 4, 2, 0)),
                b"x",
                0,
                3
            ),
            Inbound::Nothing
        );
        // Delivery 3 after 1: one went missing. Ask again, from after origin seq 2.
        assert_eq!(
            s.handle_delivery(
                0,
                s.generation(0),
                "orig.1",
                Some(&ack("C1", 6, 3, 0)),
                b"x",
                0,
                3
            ),
            Inbound::Nothing
        );
        let again = setup(&mut s, 3, 0);
        let body: serde_json::Value = serde_json::from_slice(&again[0].body).unwrap();
        assert_eq!(body["config"]["deliver_policy"], "by_start_sequence");
        assert_eq!(body["config"]["opt_start_seq"], 3);
        let (_, sources) = s.info(10);
        assert_eq!(sources.unwrap()[0].seq, 2);
    }

    #[test]
    fn a_mirror_keeps_sequences_skips_deletions_and_answers_flow_control() {
        let cfg = config(r#"{"name":"M","mirror":{"name":"ORIG","opt_start_seq":4}}"#);
        let mut s = Sourcing::new(&cfg, "$JS.SRC.m".into()).expect("sourcing");
        let reqs = setup(&mut s, 0, 0);
        let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(body["config"]["opt_start_seq"], 4);
        assert_eq!(reqs[0].subject, "$JS.API.CONSUMER.CREATE.ORIG.C1");
        running(&mut s, 0, &reqs, "C1");
        let Inbound::Store(m) = s.handle_delivery(
            0,
            s.generation(0),
            "o.a",
            Some(&ack("C1", 4, 1, 2)),
            b"four",
            0,
            1,
        ) else {
            panic!("stored");
        };
        assert_eq!((m.origin_seq, m.origin_ts, m.hdr_len), (4, 1004, 0));
        // 5 and 6 were deleted at the origin: 7 comes as the next delivery.
        let Inbound::Store(m) = s.handle_delivery(
            0,
            s.generation(0),
            "o.a",
            Some(&ack("C1", 7, 2, 0)),
            b"seven",
            0,
            2,
        ) else {
            panic!("stored");
        };
        assert_eq!(m.origin_seq, 7);
        let fc = b"NATS/1.0 100 FlowControl Request\r\n\r\n";
        assert_eq!(
            s.handle_delivery(
                0,
                s.generation(0),
                "$JS.SRC.m.D.0",
                Some("$JS.FC.ORIG.C1.1"),
                fc,
                fc.len(),
                3
            ),
            Inbound::Answer("$JS.FC.ORIG.C1.1".into())
        );
        // A heartbeat saying delivery 3 went out, which never arrived: ask again.
        let hb =
            b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 3\r\nNats-Last-Stream: 8\r\n\r\n";
        assert_eq!(
            s.handle_delivery(0, s.generation(0), "$JS.SRC.m.D.0", None, hb, hb.len(), 4),
            Inbound::Nothing
        );
        let again = setup(&mut s, 4, 7);
        let body: serde_json::Value = serde_json::from_slice(&again[0].body).unwrap();
        assert_eq!(
            body["config"]["opt_start_seq"], 8,
            "after the mirror's last sequence"
        );
        let (mirror, sources) = s.info(5);
        assert!(sources.is_none());
        assert_eq!(mirror.unwrap().seq, 0, "no seq for a mirror");
    }

    #[test]
    fn an_old_consumer_is_not_heard_once_a_new_one_is_asked_for() {
        let cfg = config(r#"{"name":"S","sources":[{"name":"ORIG"}]}"#);
        let mut s = Sourcing::new(&cfg, "$JS.SRC.g".into()).expect("sourcing");
        let first = setup(&mut s, 0, 0);
        running(&mut s, 0, &first, "C1");
        let old = s.generation(0);
        // Silent: a new consumer, on a new subject.
        s.tick(HEALTH_CHECK * 2);
        let second = setup(&mut s, HEALTH_CHECK * 2, 0);
        assert_ne!(second[0].deliver, first[0].deliver);
        // The old one's heartbeat (it may still be heard until its subscriber is gone)
        // and deliveries change nothing.
        let hb = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 9\r\n\r\n";
        let now = HEALTH_CHECK * 2 + 1;
        assert_eq!(
            s.handle_delivery(0, old, "x", None, hb, hb.len(), now),
            Inbound::Nothing
        );
        assert!(
            setup(&mut s, now, 0).is_empty(),
            "no retry for the old one's heartbeat"
        );
        let late = s.handle_delivery(0, old, "o", Some(&ack("C1", 3, 1, 0)), b"x", 0, now);
        assert_eq!(late, Inbound::Nothing);
        // A delivery of the new one before its create response is taken.
        let new = s.generation(0);
        let name = serde_json::from_slice::<serde_json::Value>(&second[0].body).unwrap()["config"]
            ["name"]
            .as_str()
            .unwrap()
            .to_string();
        let early = s.handle_delivery(0, new, "o", Some(&ack(&name, 1, 1, 0)), b"x", 0, now);
        assert!(matches!(early, Inbound::Store(_)));
    }

    #[test]
    fn silence_and_refusals_are_retried() {
        let cfg = config(r#"{"name":"S","sources":[{"name":"ORIG"}]}"#);
        let mut s = Sourcing::new(&cfg, "$JS.SRC.s".into()).expect("sourcing");
        let reqs = setup(&mut s, 0, 0);
        let refused = br#"{"type":"io.nats.jetstream.api.v1.consumer_create_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        s.handle_response(&reqs[0].reply, refused, 5);
        let (_, info) = s.info(6);
        let info = info.unwrap();
        assert_eq!(info[0].error.as_ref().map(|e| e.err_code), Some(10045));
        assert_eq!(info[0].active, -1);
        assert!(setup(&mut s, 6, 0).is_empty(), "not before the retry time");
        let reqs = setup(&mut s, 5 + RETRY_AFTER, 0);
        assert_eq!(reqs.len(), 1);
        // An answer to the old request is ignored.
        s.handle_response("$JS.SRC.s.R.0.1", b"{}", 10);
        running(&mut s, 0, &reqs, "C2");
        s.tick(10 + HEALTH_CHECK / 2);
        assert!(setup(&mut s, 10 + HEALTH_CHECK / 2, 0).is_empty());
        s.tick(10 + HEALTH_CHECK * 2);
        assert_eq!(
            setup(&mut s, 10 + HEALTH_CHECK * 2, 0).len(),
            1,
            "silent: asked again"
        );
    }
}
