//! Which `$JS.API` operation a request subject names, and for which stream and
//! consumer. The JetStream actor routes on this.

/// A parsed API subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    AccountInfo,
    StreamCreate(String),
    StreamUpdate(String),
    StreamInfo(String),
    StreamDelete(String),
    StreamPurge(String),
    StreamNames,
    StreamList,
    MsgGet(String),
    MsgDelete(String),
    /// `DIRECT.GET.<stream>`, with the subject appended (last by subject) if any.
    DirectGet(String, Option<String>),
    /// `CONSUMER.CREATE.<stream>[.<name>[.<filter>]]`.
    ConsumerCreate {
        stream: String,
        name: Option<String>,
        filter: Option<String>,
    },
    DurableCreate(String, String),
    ConsumerInfo(String, String),
    ConsumerDelete(String, String),
    ConsumerNames(String),
    ConsumerList(String),
    MsgNext(String, String),
    /// `STREAM.LEADER.STEPDOWN.<stream>`.
    StreamLeaderStepdown(String),
    /// `CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>`.
    ConsumerLeaderStepdown(String, String),
    /// A subject under `$JS.API.` we do not implement.
    Unknown,
}

impl ApiRequest {
    /// The stream the request is about, if any.
    pub fn stream(&self) -> Option<&str> {
        use ApiRequest::*;
        match self {
            AccountInfo | StreamNames | StreamList | Unknown => None,
            StreamCreate(s)
            | StreamUpdate(s)
            | StreamInfo(s)
            | StreamDelete(s)
            | StreamPurge(s)
            | MsgGet(s)
            | MsgDelete(s)
            | DirectGet(s, _)
            | ConsumerNames(s)
            | ConsumerList(s)
            | StreamLeaderStepdown(s) => Some(s),
            ConsumerCreate { stream, .. } => Some(stream),
            DurableCreate(s, _)
            | ConsumerInfo(s, _)
            | ConsumerDelete(s, _)
            | MsgNext(s, _)
            | ConsumerLeaderStepdown(s, _) => Some(s),
        }
    }

    /// The response `type` suffix (`io.nats.jetstream.api.v1.<this>`).
    pub fn response_type(&self) -> &'static str {
        use ApiRequest::*;
        match self {
            AccountInfo => "account_info_response",
            StreamCreate(_) => "stream_create_response",
            StreamUpdate(_) => "stream_update_response",
            StreamInfo(_) => "stream_info_response",
            StreamDelete(_) => "stream_delete_response",
            StreamPurge(_) => "stream_purge_response",
            StreamNames => "stream_names_response",
            StreamList => "stream_list_response",
            MsgGet(_) => "stream_msg_get_response",
            MsgDelete(_) => "stream_msg_delete_response",
            DirectGet(..) => "stream_msg_get_response",
            ConsumerCreate { .. } | DurableCreate(..) => "consumer_create_response",
            ConsumerInfo(..) => "consumer_info_response",
            ConsumerDelete(..) => "consumer_delete_response",
            ConsumerNames(_) => "consumer_names_response",
            ConsumerList(_) => "consumer_list_response",
            MsgNext(..) => "consumer_getnext_response",
            StreamLeaderStepdown(_) => "stream_leader_stepdown_response",
            ConsumerLeaderStepdown(..) => "consumer_leader_stepdown_response",
            Unknown => "error_response",
        }
    }
}

/// Parses a subject that starts with `$JS.API.`; `None` if it does not.
pub fn parse(subject: &str) -> Option<ApiRequest> {
    use ApiRequest::*;
    let rest = subject.strip_prefix(super::api::API_PREFIX)?;
    let t: Vec<&str> = rest.splitn(6, '.').collect();
    let tail = |from: usize| -> Option<String> {
        let tokens: Vec<&str> = rest.split('.').skip(from).collect();
        (!tokens.is_empty()).then(|| tokens.join("."))
    };
    let req = match t.as_slice() {
        ["INFO"] => AccountInfo,
        ["STREAM", "NAMES"] => StreamNames,
        ["STREAM", "LIST"] => StreamList,
        ["STREAM", "CREATE", n] => StreamCreate(n.to_string()),
        ["STREAM", "UPDATE", n] => StreamUpdate(n.to_string()),
        ["STREAM", "INFO", n] => StreamInfo(n.to_string()),
        ["STREAM", "DELETE", n] => StreamDelete(n.to_string()),
        ["STREAM", "PURGE", n] => StreamPurge(n.to_string()),
        ["STREAM", "MSG", "GET", n] => MsgGet(n.to_string()),
        ["STREAM", "MSG", "DELETE", n] => MsgDelete(n.to_string()),
        ["DIRECT", "GET", n] => DirectGet(n.to_string(), None),
        ["DIRECT", "GET", n, ..] => DirectGet(n.to_string(), tail(3)),
        ["CONSUMER", "CREATE", n] => ConsumerCreate {
            stream: n.to_string(),
            name: None,
            filter: None,
        },
        ["CONSUMER", "CREATE", n, c] => ConsumerCreate {
            stream: n.to_string(),
            name: Some(c.to_string()),
            filter: None,
        },
        ["CONSUMER", "CREATE", n, c, ..] => ConsumerCreate {
            stream: n.to_string(),
            name: Some(c.to_string()),
            filter: tail(4),
        },
        ["CONSUMER", "DURABLE", "CREATE", n, c] => DurableCreate(n.to_string(), c.to_string()),
        ["CONSUMER", "INFO", n, c] => ConsumerInfo(n.to_string(), c.to_string()),
        ["CONSUMER", "DELETE", n, c] => ConsumerDelete(n.to_string(), c.to_string()),
        ["CONSUMER", "NAMES", n] => ConsumerNames(n.to_string()),
        ["CONSUMER", "LIST", n] => ConsumerList(n.to_string()),
        ["CONSUMER", "MSG", "NEXT", n, c] => MsgNext(n.to_string(), c.to_string()),
        ["STREAM", "LEADER", "STEPDOWN", n] => StreamLeaderStepdown(n.to_string()),
        ["CONSUMER", "LEADER", "STEPDOWN", n, c] => {
            ConsumerLeaderStepdown(n.to_string(), c.to_string())
        }
        _ => Unknown,
    };
    Some(req)
}

/// The parts of an ack reply subject: `$JS.ACK.<stream>.<consumer>.<dc>.<sseq>.<cseq>.<ts>.<pending>`
/// (or the v2 form with domain and account hash first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSubject<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    /// How often this message was delivered, this time included.
    pub deliveries: u64,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    /// When the message was stored (ns since the epoch).
    pub ts: i64,
    /// Messages still pending for the consumer after this one.
    pub pending: u64,
}

pub fn parse_ack(subject: &str) -> Option<AckSubject<'_>> {
    let rest = subject.strip_prefix("$JS.ACK.")?;
    let t: Vec<&str> = rest.split('.').collect();
    let base = match t.len() {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    let num = |i: usize| t.get(base + i).and_then(|v| v.parse::<u64>().ok());
    Some(AckSubject {
        stream: t.get(base)?,
        consumer: t.get(base + 1)?,
        deliveries: num(2).unwrap_or(1),
        stream_seq: num(3)?,
        consumer_seq: num(4).unwrap_or(0),
        ts: t.get(base + 5).and_then(|v| v.parse().ok()).unwrap_or(0),
        pending: num(6).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert_eq!(parse("$JS.API.INFO"), Some(ApiRequest::AccountInfo));
        assert_eq!(parse("foo"), None);
        assert_eq!(
            parse("$JS.API.CONSUMER.CREATE.S.C.a.b.>"),
            Some(ApiRequest::ConsumerCreate {
                stream: "S".into(),
                name: Some("C".into()),
                filter: Some("a.b.>".into()),
            })
        );
        assert_eq!(
            parse("$JS.API.DIRECT.GET.KV_b.$KV.b.k1"),
            Some(ApiRequest::DirectGet(
                "KV_b".into(),
                Some("$KV.b.k1".into())
            ))
        );
        assert_eq!(
            parse("$JS.API.CONSUMER.MSG.NEXT.S.C"),
            Some(ApiRequest::MsgNext("S".into(), "C".into()))
        );
        assert_eq!(parse("$JS.API.NOPE"), Some(ApiRequest::Unknown));
        assert_eq!(
            parse("$JS.API.STREAM.LEADER.STEPDOWN.S"),
            Some(ApiRequest::StreamLeaderStepdown("S".into()))
        );
        assert_eq!(
            parse("$JS.API.CONSUMER.LEADER.STEPDOWN.S.C"),
            Some(ApiRequest::ConsumerLeaderStepdown("S".into(), "C".into()))
        );
    }

    #[test]
    fn ack_subjects() {
        let a = parse_ack("$JS.ACK.S.C.1.5.3.1700000000.0");
        assert_eq!(
            a.as_ref().map(|a| (a.stream, a.consumer, a.stream_seq)),
            Some(("S", "C", 5))
        );
        let a = a.unwrap();
        assert_eq!(
            (a.deliveries, a.consumer_seq, a.ts, a.pending),
            (1, 3, 1_700_000_000, 0)
        );
        let v2 = parse_ack("$JS.ACK._.HASH.S.C.2.6.3.1700000000.4.x");
        assert_eq!(
            v2.map(|a| (a.stream_seq, a.deliveries, a.pending)),
            Some((6, 2, 4))
        );
        assert!(parse_ack("$JS.ACK.S.C.1.5").is_none());
    }
}
