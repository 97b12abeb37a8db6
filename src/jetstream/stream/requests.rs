//! A stream's own `$JS.API` requests, decided: info aside (the actor adds its mirror's
//! and sources' state), everything a request about one stream does to the stream and
//! its consumers, and the answer. Deterministic given the request, `now` and the name
//! a new consumer gets when it names none, so the same code serves a replicated
//! stream's log entries and a single node's requests.
//!
//! What needs a message's bytes (MSG.GET, DIRECT.GET) is answered in two steps: the
//! stream finds the sequence, the caller loads the message (it may live only in
//! storage) and builds the reply with [`msg_get_response`] or [`direct_message`].

use base64::Engine;

use super::{check_workqueue_consumer, valid_name, Stream};
use crate::jetstream::api::{
    self, ConsumerConfig, CreateConsumerRequest, MsgDeleteRequest, MsgGetRequest, NextRequest,
    PurgeRequest, StoredMessage, StreamConfig,
};
use crate::jetstream::consumer::{Consumer, Outbound};
use crate::jetstream::errors::ApiError;
use crate::jetstream::headers::{self, HeaderBuilder};
use crate::jetstream::request::ApiRequest;
use crate::jetstream::store::Loaded;

/// What to answer a request with, once the stream has acted on it.
#[derive(Debug)]
pub enum Answer {
    /// A JSON response or error, sent to the reply subject and audited.
    Json(Result<Vec<u8>, ApiError>),
    /// MSG.GET found the message at this sequence: load it, answer with
    /// [`msg_get_response`] (or `no_message_found` if its bytes are gone), audit.
    MsgGet(u64),
    /// DIRECT.GET found the message at this sequence: load it, send
    /// [`direct_message`] (or a 404 status if its bytes are gone); not audited.
    DirectGet(u64),
    /// A status message (headers only) to the reply subject; not audited.
    Status(Vec<u8>),
    /// Nothing to send.
    Nothing,
}

/// A consumer's info, with its stream's `cluster` block when replicated (a
/// consumer's state is replicated through its stream's group: the same leader and
/// replicas).
fn consumer_info(c: &Consumer, now: i64, cluster: Option<&api::ClusterInfo>) -> api::ConsumerInfo {
    let mut info = c.info(now);
    info.cluster = cluster.cloned();
    info
}

/// A request about this stream, as the stream actor hands it over.
pub struct Request<'a> {
    pub api: &'a ApiRequest,
    /// The request's payload (JSON, or empty).
    pub body: &'a [u8],
    /// Where the answer goes, if anywhere.
    pub reply: Option<&'a str>,
    /// The subject the request came on (a no-responders status names it).
    pub subject: &'a [u8],
    /// A replicated stream's `cluster` block, which its consumers' infos carry too.
    pub cluster: Option<&'a api::ClusterInfo>,
    /// The account's limit on consumers per stream (its JWT's `consumer`; the
    /// tighter of it and the stream's `max_consumers` counts).
    pub account_max_consumers: Option<usize>,
}

impl Stream {
    /// Acts on a request about this stream and says what to answer. `new_name` gives
    /// the name of a consumer created without one (random at the reference; a
    /// replicated stream takes it from the log entry). Statuses and deliveries the
    /// request causes (a pull request's, a deleted consumer's closing ones) go to
    /// `out`, to be sent before the answer.
    pub fn api(
        &mut self,
        req: &Request,
        now: i64,
        new_name: &mut dyn FnMut() -> String,
        out: &mut Vec<Outbound>,
    ) -> Answer {
        let kind = req.api.response_type();
        let body = req.body;
        let json = |r: Result<Vec<u8>, ApiError>| Answer::Json(r);
        match req.api {
            ApiRequest::StreamPurge(_) => {
                json(api::parse_optional::<PurgeRequest>(body).and_then(|r| {
                    let purged = self.purge(&r)?;
                    Ok(api::response(
                        kind,
                        &serde_json::json!({"success": true, "purged": purged}),
                    ))
                }))
            }
            ApiRequest::MsgDelete(_) => json(
                api::parse_required::<MsgDeleteRequest>(body)
                    .and_then(|r| self.delete_message(r.seq))
                    .map(|()| api::response(kind, &serde_json::json!({"success": true}))),
            ),
            ApiRequest::MsgGet(_) => {
                match api::parse_required::<MsgGetRequest>(body).and_then(|r| self.find_message(&r))
                {
                    Ok(seq) => Answer::MsgGet(seq),
                    Err(e) => Answer::Json(Err(e)),
                }
            }
            ApiRequest::DirectGet(_, last_by) => {
                if req.reply.is_none() {
                    return Answer::Nothing;
                }
                if !self.config.allow_direct {
                    // The reference only subscribes for streams that allow it.
                    return Answer::Status(headers::no_responders(req.subject));
                }
                self.direct_get(last_by.as_deref(), body)
            }
            ApiRequest::ConsumerCreate { name, filter, .. } => json(self.create_consumer(
                req,
                name.clone(),
                filter.as_deref(),
                false,
                now,
                new_name,
            )),
            ApiRequest::DurableCreate(_, name) => {
                json(self.create_consumer(req, Some(name.clone()), None, true, now, new_name))
            }
            ApiRequest::ConsumerInfo(_, name) => json(match self.consumers.get(name) {
                Some(c) => Ok(api::response(kind, &consumer_info(c, now, req.cluster))),
                None => Err(ApiError::consumer_not_found()),
            }),
            ApiRequest::ConsumerDelete(_, name) => {
                if self.remove_consumer(name, out) {
                    json(Ok(api::response(
                        kind,
                        &serde_json::json!({"success": true}),
                    )))
                } else {
                    json(Err(ApiError::consumer_not_found()))
                }
            }
            ApiRequest::ConsumerNames(_) | ApiRequest::ConsumerList(_) => {
                let list = matches!(req.api, ApiRequest::ConsumerList(_));
                json(self.consumer_page(req, list, kind, now))
            }
            ApiRequest::MsgNext(_, name) => {
                let Some(reply) = req.reply else {
                    return Answer::Nothing;
                };
                let status = match self.consumers.get_mut(name) {
                    // Nobody would be subscribed to it at the reference.
                    None => Some(Outbound::Status {
                        to: reply.to_string(),
                        reply: None,
                        headers: headers::no_responders(req.subject),
                    }),
                    Some(c) => match NextRequest::parse(body) {
                        Ok(r) => c.request_next(reply, r, now),
                        Err(e) => Some(Outbound::Status {
                            to: reply.to_string(),
                            reply: None,
                            headers: HeaderBuilder::status(
                                400,
                                &format!("Bad Request - {}", e.description),
                            )
                            .finish(),
                        }),
                    },
                };
                out.extend(status);
                Answer::Nothing
            }
            _ => json(Err(ApiError::bad_request())),
        }
    }

    /// CONSUMER.NAMES / CONSUMER.LIST: one page of the public consumers.
    fn consumer_page(
        &self,
        req: &Request,
        list: bool,
        kind: &str,
        now: i64,
    ) -> Result<Vec<u8>, ApiError> {
        let body = req.body;
        #[derive(serde::Deserialize, Default)]
        struct Paging {
            #[serde(default)]
            offset: usize,
        }
        let p = api::parse_optional::<Paging>(body)?;
        let total = self.public_consumers().count();
        let limit = if list { 256 } else { 1024 };
        let page = self.public_consumers().skip(p.offset).take(limit);
        let consumers = if list {
            let infos: Vec<_> = page
                .map(|c| {
                    let mut info = consumer_info(c, now, req.cluster);
                    api::strip_dynamic_metadata(&mut info.config.metadata);
                    info
                })
                .collect();
            serde_json::json!(infos)
        } else {
            serde_json::json!(page.map(|c| c.name.as_str()).collect::<Vec<_>>())
        };
        Ok(api::response(
            kind,
            &serde_json::json!({
                "total": total, "offset": p.offset, "limit": limit, "consumers": consumers,
            }),
        ))
    }

    fn create_consumer(
        &mut self,
        request: &Request,
        name_in_subject: Option<String>,
        filter_in_subject: Option<&str>,
        durable_api: bool,
        now: i64,
        new_name: &mut dyn FnMut() -> String,
    ) -> Result<Vec<u8>, ApiError> {
        let body = request.body;
        // An empty body names no stream, which is the reference's first complaint.
        let req: CreateConsumerRequest = if body.trim_ascii().is_empty() {
            return Err(ApiError::stream_name_mismatch());
        } else {
            api::parse_required(body)?
        };
        if req.stream_name != self.name() {
            return Err(ApiError::stream_name_mismatch());
        }
        let mut config = normalize_consumer(req.config, &self.config)?;
        // Which name wins, as the reference decides it: the durable API needs a
        // matching durable name; the named API takes the subject's name (a durable name
        // must match it, a `name` in the body is overridden); the legacy ephemeral API
        // takes the body's `name` and refuses a durable one.
        let name = match (durable_api, name_in_subject) {
            (true, Some(subject_name)) => {
                match &config.durable_name {
                    None => return Err(ApiError::consumer_durable_name_not_set()),
                    Some(d) if *d != subject_name => {
                        return Err(ApiError::consumer_durable_name_mismatch())
                    }
                    Some(_) => {}
                }
                subject_name
            }
            (_, Some(subject_name)) => {
                if config
                    .durable_name
                    .as_ref()
                    .is_some_and(|d| *d != subject_name)
                {
                    return Err(ApiError::consumer_durable_name_mismatch());
                }
                subject_name
            }
            (_, None) => {
                if config.durable_name.is_some() {
                    return Err(ApiError::consumer_ephemeral_with_durable());
                }
                config.name.clone().unwrap_or_else(new_name)
            }
        };
        config.name = Some(name.clone());
        if let Some(f) = filter_in_subject {
            if config
                .filter_subjects
                .as_ref()
                .is_some_and(|f| !f.is_empty())
            {
                return Err(ApiError::consumer_multiple_filters_not_allowed());
            }
            if config.filter_subject.as_deref() != Some(f) {
                return Err(ApiError::consumer_filter_mismatch());
            }
        }
        if !valid_name(&name) {
            return Err(ApiError::consumer_bad_durable_name());
        }
        if let Some(existing) = self.consumers.get_mut(&name) {
            if req.action == "create" && existing.config != config {
                return Err(ApiError::consumer_already_exists());
            }
            if existing.config != config {
                if existing.config.deliver_subject.is_none() != config.deliver_subject.is_none() {
                    return Err(ApiError::consumer_create(
                        "can not update pull consumer to push based",
                    ));
                }
                existing.config = config;
                existing.dirty = true;
            }
            return Ok(api::response(
                "consumer_create_response",
                &consumer_info(existing, now, request.cluster),
            ));
        }
        if req.action == "update" {
            return Err(ApiError::consumer_does_not_exist());
        }
        let max = usize::try_from(self.config.max_consumers)
            .ok()
            .filter(|&m| m > 0)
            .into_iter()
            .chain(request.account_max_consumers)
            .min();
        if max.is_some_and(|max| self.public_consumers().count() >= max) && !config.direct {
            return Err(ApiError::consumer_max_consumers());
        }
        if self.config.retention == api::Retention::Workqueue && !config.direct {
            check_workqueue_consumer(&config, self.consumers.values())?;
        }
        let consumer = Consumer::new(self.name(), &name, config, now, &self.store);
        let info = consumer_info(&consumer, now, request.cluster);
        self.add_consumer(consumer);
        Ok(api::response("consumer_create_response", &info))
    }

    /// DIRECT.GET: which message, or the status the reference answers with.
    fn direct_get(&self, last_by: Option<&str>, body: &[u8]) -> Answer {
        let status = |code, text| Answer::Status(HeaderBuilder::status(code, text).finish());
        let req = match last_by {
            Some(subject) => {
                if !body.iter().all(u8::is_ascii_whitespace) {
                    return status(408, "Bad Request");
                }
                MsgGetRequest {
                    last_by_subj: Some(subject.to_string()),
                    ..Default::default()
                }
            }
            None => match api::parse_optional::<MsgGetRequest>(body) {
                Ok(r)
                    if r.seq.unwrap_or(0) == 0
                        && r.last_by_subj.is_none()
                        && r.next_by_subj.is_none()
                        && r.multi_last.is_none() =>
                {
                    return status(408, "Empty Request");
                }
                Ok(r) => r,
                Err(_) => return status(408, "Malformed Request"),
            },
        };
        match self.find_message(&req) {
            Ok(seq) => Answer::DirectGet(seq),
            Err(ApiError { code: 404, .. }) => status(404, "Message Not Found"),
            Err(_) => status(408, "Bad Request"),
        }
    }
}

/// MSG.GET's response for a loaded message.
pub fn msg_get_response(kind: &str, m: &Loaded) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let stored = StoredMessage {
        subject: m.subject.to_string(),
        seq: m.seq,
        hdrs: (m.hdr_len > 0).then(|| b64.encode(m.headers())),
        data: (!m.payload().is_empty()).then(|| b64.encode(m.payload())),
        time: api::format_time(m.ts),
    };
    api::response(kind, &serde_json::json!({ "message": stored }))
}

/// DIRECT.GET's reply for a loaded message: its headers with the stream's added, then
/// its payload; and the length of the header block.
pub fn direct_message(stream: &str, m: &Loaded) -> (Vec<u8>, usize) {
    let mut data = HeaderBuilder::extend(m.headers())
        .add("Nats-Stream", stream)
        .add("Nats-Subject", &m.subject)
        .add("Nats-Sequence", &m.seq.to_string())
        .add("Nats-Time-Stamp", &api::format_time(m.ts))
        .finish();
    let hdr_len = data.len();
    data.extend_from_slice(m.payload());
    (data, hdr_len)
}

/// Fills a consumer config's defaults as the reference does and checks it.
pub fn normalize_consumer(
    mut c: ConsumerConfig,
    stream: &StreamConfig,
) -> Result<ConsumerConfig, ApiError> {
    api::strip_server_metadata(&mut c.metadata);
    if c.deliver_subject.as_deref() == Some("") {
        c.deliver_subject = None;
    }
    if c.durable_name.as_deref() == Some("") {
        c.durable_name = None;
    }
    if c.name.as_deref() == Some("") {
        c.name = None;
    }
    if c.filter_subject.as_deref() == Some("") {
        c.filter_subject = None;
    }
    // Direct consumers (what mirrors and sources run on their origins) push, and go
    // away with their subscriber.
    if c.direct && c.deliver_subject.is_none() {
        return Err(ApiError::consumer_direct_requires_push());
    }
    if c.direct && c.durable_name.is_some() {
        return Err(ApiError::consumer_direct_requires_ephemeral());
    }
    if let Some(d) = &c.durable_name {
        if !valid_name(d) {
            return Err(ApiError::consumer_bad_durable_name());
        }
    }
    if c.filter_subject.is_some() && c.filter_subjects.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::consumer_duplicate_filters());
    }
    if let Some(fs) = &c.filter_subjects {
        if fs.iter().any(String::is_empty) {
            return Err(ApiError::consumer_empty_filter());
        }
        for (i, a) in fs.iter().enumerate() {
            if fs[..i]
                .iter()
                .any(|b| crate::subject::overlaps(a.as_bytes(), b.as_bytes()))
            {
                return Err(ApiError::consumer_overlapping_filters());
            }
        }
        if fs.is_empty() {
            c.filter_subjects = None;
        }
    }
    for f in c.filters() {
        if !crate::subject::is_valid_subject(f.as_bytes())
            || !stream
                .subjects
                .iter()
                .any(|s| crate::subject::overlaps(f.as_bytes(), s.as_bytes()))
        {
            return Err(ApiError::consumer_filter_not_subset());
        }
    }
    let push = c.deliver_subject.is_some();
    if let Some(d) = &c.deliver_subject {
        if !crate::subject::is_valid_literal_subject(d.as_bytes()) {
            return Err(ApiError::consumer_deliver_to_wildcards());
        }
    }
    if !push {
        if c.idle_heartbeat > 0 {
            return Err(ApiError::consumer_hb_requires_push());
        }
        if c.flow_control {
            return Err(ApiError::consumer_fc_requires_push());
        }
        if c.max_waiting == 0 {
            c.max_waiting = api::DEFAULT_MAX_WAITING;
        }
    } else {
        if c.max_waiting != 0 {
            return Err(ApiError::consumer_push_max_waiting());
        }
        if c.idle_heartbeat > 0 && c.idle_heartbeat < 100_000_000 {
            return Err(ApiError::consumer_small_heartbeat());
        }
        if c.flow_control && c.idle_heartbeat == 0 {
            return Err(ApiError::consumer_fc_needs_heartbeats());
        }
    }
    if c.ack_wait <= 0 {
        c.ack_wait = api::DEFAULT_ACK_WAIT;
    }
    if c.max_deliver == 0 {
        c.max_deliver = -1;
    }
    if let Some(b) = &c.backoff {
        if b.iter().any(|x| *x <= 0) {
            return Err(ApiError::consumer_invalid_policy(
                "consumer backoff needs to be positive",
            ));
        }
        if c.max_deliver > 0 && c.max_deliver as usize <= b.len() {
            return Err(ApiError::consumer_max_deliver_backoff());
        }
        if b.is_empty() {
            c.backoff = None;
        }
    }
    if c.max_ack_pending == 0 && c.ack_policy != api::AckPolicy::None {
        c.max_ack_pending = api::DEFAULT_MAX_ACK_PENDING;
    }
    if c.ack_policy == api::AckPolicy::None && c.max_ack_pending > 0 {
        c.max_ack_pending = -1;
    }
    if c.num_replicas < 0 || c.num_replicas > 1 {
        return Err(ApiError::consumer_create(
            "replicas > 1 not supported in non-clustered mode",
        ));
    }
    match c.deliver_policy {
        api::DeliverPolicy::ByStartSequence if c.opt_start_seq.is_none() => {
            return Err(ApiError::consumer_invalid_policy(
                "consumer delivery policy is deliver by start sequence, but optional start sequence is not set",
            ))
        }
        api::DeliverPolicy::ByStartTime if c.opt_start_time.is_none() => {
            return Err(ApiError::consumer_invalid_policy(
                "consumer delivery policy is deliver by start time, but optional start time is not set",
            ))
        }
        _ => {}
    }
    if c.durable_name.is_none() && c.inactive_threshold == 0 {
        c.inactive_threshold = api::DEFAULT_INACTIVE_THRESHOLD;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::request;
    use crate::jetstream::stream::normalize_config;
    use bytes::Bytes;

    fn stream(json: &str) -> Stream {
        let cfg: StreamConfig = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        let cfg = normalize_config(cfg).unwrap_or_else(|e| panic!("{e}"));
        Stream::new(cfg, 1, u64::MAX)
    }

    /// Sends `$JS.API.<subject>` with `body` and a reply subject; returns the answer
    /// and the statuses the request caused.
    fn call(s: &mut Stream, subject: &str, body: &str) -> (Answer, Vec<Outbound>) {
        let full = format!("$JS.API.{subject}");
        let api = request::parse(&full).unwrap_or_else(|| panic!("not an API subject: {full}"));
        let req = Request {
            api: &api,
            body: body.as_bytes(),
            reply: Some("_INBOX.r"),
            subject: full.as_bytes(),
            cluster: None,
            account_max_consumers: None,
        };
        let mut out = Vec::new();
        let mut names = 0;
        let mut new_name = || {
            names += 1;
            format!("gen{names}")
        };
        let answer = s.api(&req, 100, &mut new_name, &mut out);
        (answer, out)
    }

    fn json(answer: Answer) -> serde_json::Value {
        match answer {
            Answer::Json(Ok(body)) => {
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"))
            }
            other => panic!("expected a JSON response, got {other:?}"),
        }
    }

    fn error(answer: Answer) -> ApiError {
        match answer {
            Answer::Json(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn status(answer: Answer) -> (Option<u16>, String) {
        match answer {
            Answer::Status(h) => (headers::status(&h), String::from_utf8_lossy(&h).into()),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    #[test]
    fn consumer_names_are_decided_as_the_reference_decides_them() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        // The legacy ephemeral API names the consumer itself.
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S",
            r#"{"stream_name":"S","config":{}}"#,
        );
        assert_eq!(json(a)["name"], "gen1");
        // The durable API wants the body's durable name to match the subject's.
        let (a, _) = call(
            &mut s,
            "CONSUMER.DURABLE.CREATE.S.D",
            r#"{"stream_name":"S","config":{"durable_name":"X"}}"#,
        );
        assert_eq!(error(a), ApiError::consumer_durable_name_mismatch());
        let (a, _) = call(
            &mut s,
            "CONSUMER.DURABLE.CREATE.S.D",
            r#"{"stream_name":"S","config":{}}"#,
        );
        assert_eq!(error(a), ApiError::consumer_durable_name_not_set());
        // The named API takes the subject's name over the body's `name`.
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.N",
            r#"{"stream_name":"S","config":{"name":"other"}}"#,
        );
        assert_eq!(json(a)["name"], "N");
        // A body naming another stream, an empty body, an update of nothing.
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.M",
            r#"{"stream_name":"T","config":{}}"#,
        );
        assert_eq!(error(a), ApiError::stream_name_mismatch());
        let (a, _) = call(&mut s, "CONSUMER.CREATE.S.M", "");
        assert_eq!(error(a), ApiError::stream_name_mismatch());
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.M",
            r#"{"stream_name":"S","action":"update","config":{}}"#,
        );
        assert_eq!(error(a), ApiError::consumer_does_not_exist());
        // A filter in the subject must be the body's filter.
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.F.s.a",
            r#"{"stream_name":"S","config":{"filter_subject":"s.b"}}"#,
        );
        assert_eq!(error(a), ApiError::consumer_filter_mismatch());
        assert_eq!(s.public_consumers().count(), 2);
        // A write: the new consumers are changes to persist.
        let mut changed: Vec<String> = s
            .take_changes()
            .into_iter()
            .filter_map(|c| match c {
                crate::jetstream::stream::Change::Consumer(name) => Some(name),
                _ => None,
            })
            .collect();
        changed.dedup();
        changed.sort();
        changed.dedup();
        assert_eq!(changed, ["N", "gen1"]);
    }

    #[test]
    fn a_consumer_create_that_differs_is_refused_and_an_update_is_applied() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        let body = |ack_wait: u64, action: &str| {
            format!(
                r#"{{"stream_name":"S","action":"{action}","config":{{"durable_name":"D","ack_wait":{ack_wait}}}}}"#
            )
        };
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.D",
            &body(5_000_000_000, "create"),
        );
        assert_eq!(json(a)["config"]["ack_wait"], 5_000_000_000u64);
        // The same again is fine; a different one under "create" is not.
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.D",
            &body(5_000_000_000, "create"),
        );
        json(a);
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.D",
            &body(7_000_000_000, "create"),
        );
        assert_eq!(error(a), ApiError::consumer_already_exists());
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.S.D",
            &body(7_000_000_000, "update"),
        );
        assert_eq!(json(a)["config"]["ack_wait"], 7_000_000_000u64);
        let (a, _) = call(&mut s, "CONSUMER.INFO.S.D", "");
        assert_eq!(json(a)["config"]["ack_wait"], 7_000_000_000u64);
    }

    #[test]
    fn work_queue_consumers_must_not_overlap() {
        let mut s = stream(r#"{"name":"W","subjects":["w.>"],"retention":"workqueue"}"#);
        let create = |s: &mut Stream, name: &str, filter: &str| {
            let body = format!(
                r#"{{"stream_name":"W","config":{{"durable_name":"{name}","ack_policy":"explicit","filter_subject":"{filter}"}}}}"#
            );
            call(s, &format!("CONSUMER.CREATE.W.{name}"), &body).0
        };
        json(create(&mut s, "A", "w.a"));
        assert_eq!(
            error(create(&mut s, "B", "w.*")),
            ApiError::consumer_wq_not_unique()
        );
        json(create(&mut s, "C", "w.c"));
        let (a, _) = call(
            &mut s,
            "CONSUMER.CREATE.W.E",
            r#"{"stream_name":"W","config":{"durable_name":"E","ack_policy":"none","filter_subject":"w.e"}}"#,
        );
        assert_eq!(error(a), ApiError::consumer_wq_requires_explicit_ack());
    }

    #[test]
    fn direct_get_answers_with_the_reference_statuses() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        // Not allowed: nobody would answer at the reference.
        let (code, _) = status(call(&mut s, "DIRECT.GET.S", r#"{"seq":1}"#).0);
        assert_eq!(code, Some(503));
        let mut s = stream(r#"{"name":"S","subjects":["s.>"],"allow_direct":true}"#);
        assert!(s.publish(10, "s.a", Bytes::from_static(b"one"), 0).is_ok());
        assert!(s.publish(11, "s.b", Bytes::from_static(b"two"), 0).is_ok());
        assert!(matches!(
            call(&mut s, "DIRECT.GET.S", r#"{"seq":2}"#).0,
            Answer::DirectGet(2)
        ));
        assert!(matches!(
            call(&mut s, "DIRECT.GET.S.s.a", "").0,
            Answer::DirectGet(1)
        ));
        let (code, text) = status(call(&mut s, "DIRECT.GET.S", r#"{"seq":9}"#).0);
        assert_eq!(code, Some(404));
        assert!(text.contains("Message Not Found"), "{text}");
        let (code, text) = status(call(&mut s, "DIRECT.GET.S", "{}").0);
        assert_eq!(code, Some(408));
        assert!(text.contains("Empty Request"), "{text}");
        let (code, text) = status(call(&mut s, "DIRECT.GET.S", "{nope").0);
        assert_eq!(code, Some(408));
        assert!(text.contains("Malformed Request"), "{text}");
        let (code, text) = status(call(&mut s, "DIRECT.GET.S.s.a", "{}").0);
        assert_eq!(code, Some(408));
        assert!(text.contains("Bad Request"), "{text}");
    }

    #[test]
    fn msg_get_and_delete_and_purge() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        for i in 0..5 {
            let subject = format!("s.{}", i % 2);
            assert!(s
                .publish(10 + i, &subject, Bytes::from_static(b"x"), 0)
                .is_ok());
        }
        assert!(matches!(
            call(&mut s, "STREAM.MSG.GET.S", r#"{"last_by_subj":"s.1"}"#).0,
            Answer::MsgGet(4)
        ));
        assert_eq!(
            json(call(&mut s, "STREAM.MSG.DELETE.S", r#"{"seq":4}"#).0)["success"],
            true
        );
        assert!(matches!(
            call(&mut s, "STREAM.MSG.GET.S", r#"{"last_by_subj":"s.1"}"#).0,
            Answer::MsgGet(2)
        ));
        assert_eq!(
            error(call(&mut s, "STREAM.MSG.GET.S", r#"{"seq":4}"#).0),
            ApiError::no_message_found()
        );
        let purged = json(call(&mut s, "STREAM.PURGE.S", r#"{"filter":"s.0"}"#).0);
        assert_eq!(purged["purged"], 3);
        assert_eq!(s.store().len(), 1);
    }

    #[test]
    fn a_deleted_consumer_closes_its_pull_requests_before_the_answer() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        json(
            call(
                &mut s,
                "CONSUMER.CREATE.S.P",
                r#"{"stream_name":"S","config":{"durable_name":"P"}}"#,
            )
            .0,
        );
        let (a, out) = call(
            &mut s,
            "CONSUMER.MSG.NEXT.S.P",
            r#"{"batch":1,"expires":60000000000}"#,
        );
        assert!(matches!(a, Answer::Nothing));
        assert!(out.is_empty(), "a waiting pull request answers nothing yet");
        let (a, out) = call(&mut s, "CONSUMER.DELETE.S.P", "");
        assert_eq!(json(a)["success"], true);
        assert_eq!(out.len(), 1, "the waiting request is told: {out:?}");
        assert_eq!(
            error(call(&mut s, "CONSUMER.DELETE.S.P", "").0),
            ApiError::consumer_not_found()
        );
        // A pull request for a consumer that is not there: no responders.
        let (_, out) = call(&mut s, "CONSUMER.MSG.NEXT.S.P", "1");
        match out.as_slice() {
            [Outbound::Status { headers: h, .. }] => assert_eq!(headers::status(h), Some(503)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_and_list_page_the_public_consumers() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"]}"#);
        for n in ["a", "b", "c"] {
            let body = format!(r#"{{"stream_name":"S","config":{{"durable_name":"{n}"}}}}"#);
            json(call(&mut s, &format!("CONSUMER.CREATE.S.{n}"), &body).0);
        }
        let names = json(call(&mut s, "CONSUMER.NAMES.S", r#"{"offset":1}"#).0);
        assert_eq!(names["total"], 3);
        assert_eq!(names["limit"], 1024);
        assert_eq!(names["consumers"], serde_json::json!(["b", "c"]));
        let list = json(call(&mut s, "CONSUMER.LIST.S", "").0);
        assert_eq!(list["limit"], 256);
        assert_eq!(list["consumers"][2]["name"], "c");
    }
}
