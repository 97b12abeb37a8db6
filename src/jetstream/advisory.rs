//! JetStream advisories: the events published on `$JS.EVENT.ADVISORY.>` when streams
//! and consumers are created, changed and deleted, when a message is NAKed, terminated
//! or delivered as often as allowed, and for every API request (the audit).
//!
//! Subjects, JSON types and fields are the reference's (`jetstream_events.go`);
//! applications build dead-letter handling on `MAX_DELIVERIES` and `MSG_TERMINATED`,
//! and `nats events` prints them all. The state machines only say *what* happened; the
//! actors publish (when someone listens) with an id and a time of their own.

use std::sync::Arc;

use serde::Serialize;

use super::api::PeerInfo;
use crate::events::ClientInfo;

pub const PREFIX: &str = "$JS.EVENT.ADVISORY";
/// Where the API audit goes.
pub const API_AUDIT: &str = "$JS.EVENT.ADVISORY.API";

/// What was done to a stream or consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Delete,
    Modify,
}

/// One advisory.
#[derive(Debug, Clone, PartialEq)]
pub enum Advisory {
    Stream {
        stream: String,
        action: Action,
    },
    Consumer {
        stream: String,
        consumer: String,
        action: Action,
    },
    /// A message was delivered `deliveries` times, the consumer's `max_deliver`: it
    /// is not delivered again.
    MaxDeliveries {
        stream: String,
        consumer: String,
        stream_seq: u64,
        deliveries: u64,
    },
    Nak {
        stream: String,
        consumer: String,
        consumer_seq: u64,
        stream_seq: u64,
        deliveries: u64,
    },
    /// `+TERM` (with the client's reason, if it gave one).
    Terminated {
        stream: String,
        consumer: String,
        consumer_seq: u64,
        stream_seq: u64,
        deliveries: u64,
        reason: Option<String>,
    },
    /// An API request and the response it got.
    Api {
        server: String,
        client: Option<Arc<ClientInfo>>,
        subject: String,
        request: String,
        response: String,
    },
    /// A replicated stream's group (with `consumer`: that consumer's) elected this
    /// node; `replicas` are all its peers as the new leader sees them. `account` is
    /// named in the system account's copy only.
    LeaderElected {
        account: Option<String>,
        stream: String,
        consumer: Option<String>,
        leader: String,
        replicas: Vec<PeerInfo>,
    },
    /// The leader of a replicated stream's group (or consumer's) stopped hearing a
    /// quorum and stepped down.
    QuorumLost {
        account: Option<String>,
        stream: String,
        consumer: Option<String>,
        replicas: Vec<PeerInfo>,
    },
    /// The meta group elected this node (`leader`: its peer id); in the system
    /// account only.
    MetaLeaderElected {
        leader: String,
        replicas: Vec<PeerInfo>,
        cluster: String,
    },
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
    timestamp: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct Leader<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    stream: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<&'a str>,
    replicas: &'a [PeerInfo],
}

#[derive(Serialize)]
struct MetaLeader<'a> {
    leader: &'a str,
    replicas: &'a [PeerInfo],
    cluster: &'a str,
}

#[derive(Serialize)]
struct StreamAction<'a> {
    stream: &'a str,
    action: Action,
}

#[derive(Serialize)]
struct ConsumerAction<'a> {
    stream: &'a str,
    consumer: &'a str,
    action: Action,
}

#[derive(Serialize)]
struct MaxDeliver<'a> {
    stream: &'a str,
    consumer: &'a str,
    stream_seq: u64,
    deliveries: u64,
}

#[derive(Serialize)]
struct Delivery<'a> {
    stream: &'a str,
    consumer: &'a str,
    consumer_seq: u64,
    stream_seq: u64,
    deliveries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Audit<'a> {
    server: &'a str,
    client: Option<&'a ClientInfo>,
    subject: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request: &'a str,
    response: &'a str,
}

impl Advisory {
    /// The subject it is published on.
    pub fn subject(&self) -> String {
        match self {
            Advisory::Stream { stream, action } => {
                let what = match action {
                    Action::Create => "CREATED",
                    Action::Delete => "DELETED",
                    Action::Modify => "UPDATED",
                };
                format!("{PREFIX}.STREAM.{what}.{stream}")
            }
            Advisory::Consumer {
                stream,
                consumer,
                action,
            } => {
                let what = match action {
                    Action::Create => "CREATED",
                    Action::Delete => "DELETED",
                    Action::Modify => "UPDATED",
                };
                format!("{PREFIX}.CONSUMER.{what}.{stream}.{consumer}")
            }
            Advisory::MaxDeliveries {
                stream, consumer, ..
            } => format!("{PREFIX}.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"),
            Advisory::Nak {
                stream, consumer, ..
            } => format!("{PREFIX}.CONSUMER.MSG_NAKED.{stream}.{consumer}"),
            Advisory::Terminated {
                stream, consumer, ..
            } => format!("{PREFIX}.CONSUMER.MSG_TERMINATED.{stream}.{consumer}"),
            Advisory::Api { .. } => API_AUDIT.to_string(),
            Advisory::LeaderElected {
                stream, consumer, ..
            } => match consumer {
                Some(c) => format!("{PREFIX}.CONSUMER.LEADER_ELECTED.{stream}.{c}"),
                None => format!("{PREFIX}.STREAM.LEADER_ELECTED.{stream}"),
            },
            Advisory::QuorumLost {
                stream, consumer, ..
            } => match consumer {
                Some(c) => format!("{PREFIX}.CONSUMER.QUORUM_LOST.{stream}.{c}"),
                None => format!("{PREFIX}.STREAM.QUORUM_LOST.{stream}"),
            },
            Advisory::MetaLeaderElected { .. } => format!("{PREFIX}.DOMAIN.LEADER_ELECTED"),
        }
    }

    /// The copy the system account gets of an advisory about a replicated asset: the
    /// same, naming the asset's account (`None` for the others).
    pub fn for_system(&self, account_name: &str) -> Option<Advisory> {
        let mut copy = self.clone();
        match &mut copy {
            Advisory::LeaderElected { account, .. } | Advisory::QuorumLost { account, .. } => {
                *account = Some(account_name.to_string());
                Some(copy)
            }
            _ => None,
        }
    }

    /// The JSON body, with event id `id` and time `now` (ns since the epoch).
    pub fn encode(&self, id: &str, now: i64) -> Vec<u8> {
        let at = super::api::format_time(now);
        match self {
            Advisory::Stream { stream, action } => envelope(
                "stream_action",
                id,
                at,
                StreamAction {
                    stream,
                    action: *action,
                },
            ),
            Advisory::Consumer {
                stream,
                consumer,
                action,
            } => envelope(
                "consumer_action",
                id,
                at,
                ConsumerAction {
                    stream,
                    consumer,
                    action: *action,
                },
            ),
            Advisory::MaxDeliveries {
                stream,
                consumer,
                stream_seq,
                deliveries,
            } => envelope(
                "max_deliver",
                id,
                at,
                MaxDeliver {
                    stream,
                    consumer,
                    stream_seq: *stream_seq,
                    deliveries: *deliveries,
                },
            ),
            Advisory::Nak {
                stream,
                consumer,
                consumer_seq,
                stream_seq,
                deliveries,
            } => envelope(
                "nak",
                id,
                at,
                Delivery {
                    stream,
                    consumer,
                    consumer_seq: *consumer_seq,
                    stream_seq: *stream_seq,
                    deliveries: *deliveries,
                    reason: None,
                },
            ),
            Advisory::Terminated {
                stream,
                consumer,
                consumer_seq,
                stream_seq,
                deliveries,
                reason,
            } => envelope(
                "terminated",
                id,
                at,
                Delivery {
                    stream,
                    consumer,
                    consumer_seq: *consumer_seq,
                    stream_seq: *stream_seq,
                    deliveries: *deliveries,
                    reason: reason.as_deref(),
                },
            ),
            Advisory::LeaderElected {
                account,
                stream,
                consumer,
                leader,
                replicas,
            } => envelope(
                if consumer.is_some() {
                    "consumer_leader_elected"
                } else {
                    "stream_leader_elected"
                },
                id,
                at,
                Leader {
                    account: account.as_deref(),
                    stream,
                    consumer: consumer.as_deref(),
                    leader: Some(leader),
                    replicas,
                },
            ),
            Advisory::QuorumLost {
                account,
                stream,
                consumer,
                replicas,
            } => envelope(
                if consumer.is_some() {
                    "consumer_quorum_lost"
                } else {
                    "stream_quorum_lost"
                },
                id,
                at,
                Leader {
                    account: account.as_deref(),
                    stream,
                    consumer: consumer.as_deref(),
                    leader: None,
                    replicas,
                },
            ),
            Advisory::MetaLeaderElected {
                leader,
                replicas,
                cluster,
            } => envelope(
                "domain_leader_elected",
                id,
                at,
                MetaLeader {
                    leader,
                    replicas,
                    cluster,
                },
            ),
            Advisory::Api {
                server,
                client,
                subject,
                request,
                response,
            } => envelope(
                "api_audit",
                id,
                at,
                Audit {
                    server,
                    client: client.as_deref(),
                    subject,
                    request,
                    response,
                },
            ),
        }
    }
}

/// `{"type":"io.nats.jetstream.advisory.v1.<kind>","id":…,"timestamp":…,<body's fields>}`
/// (the body flattened in its declared order).
fn envelope(kind: &str, id: &str, timestamp: String, body: impl Serialize) -> Vec<u8> {
    let kind = format!("io.nats.jetstream.advisory.v1.{kind}");
    serde_json::to_vec(&Envelope {
        kind: &kind,
        id,
        timestamp,
        body,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_bodies_are_the_references() {
        let now = 1_764_756_053_897_792_359; // 2025-12-03T10:00:53.897792359Z
        let nak = Advisory::Nak {
            stream: "AD".into(),
            consumer: "C".into(),
            consumer_seq: 1,
            stream_seq: 1,
            deliveries: 1,
        };
        assert_eq!(nak.subject(), "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.AD.C");
        assert_eq!(
            String::from_utf8(nak.encode("ID", now)).unwrap(),
            r#"{"type":"io.nats.jetstream.advisory.v1.nak","id":"ID","timestamp":"2025-12-03T10:00:53.897792359Z","stream":"AD","consumer":"C","consumer_seq":1,"stream_seq":1,"deliveries":1}"#
        );
        let term = Advisory::Terminated {
            stream: "AD".into(),
            consumer: "C".into(),
            consumer_seq: 3,
            stream_seq: 1,
            deliveries: 2,
            reason: Some("because".into()),
        };
        assert!(String::from_utf8(term.encode("ID", now))
            .unwrap()
            .ends_with(r#""consumer_seq":3,"stream_seq":1,"deliveries":2,"reason":"because"}"#));
        let created = Advisory::Stream {
            stream: "AD".into(),
            action: Action::Modify,
        };
        assert_eq!(created.subject(), "$JS.EVENT.ADVISORY.STREAM.UPDATED.AD");
        assert!(String::from_utf8(created.encode("ID", now))
            .unwrap()
            .ends_with(r#""stream":"AD","action":"modify"}"#));
        let max = Advisory::MaxDeliveries {
            stream: "MD".into(),
            consumer: "C".into(),
            stream_seq: 1,
            deliveries: 2,
        };
        assert_eq!(
            max.subject(),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MD.C"
        );
        let audit = Advisory::Api {
            server: "S".into(),
            client: None,
            subject: "$JS.API.STREAM.DELETE.AD".into(),
            request: String::new(),
            response: "{}".into(),
        };
        assert!(String::from_utf8(audit.encode("ID", now)).unwrap().ends_with(
            r#""server":"S","client":null,"subject":"$JS.API.STREAM.DELETE.AD","response":"{}"}"#
        ));
    }

    /// Bodies as nats-server 2.15.1 sent them from a 3-node cluster (captured with
    /// nats-py on `$JS.EVENT.ADVISORY.>` in the stream's account and in the system
    /// account; ids, times and peer ids replaced).
    #[test]
    fn cluster_advisories_are_the_references() {
        let now = 1_764_756_053_897_792_359;
        let replicas = vec![
            PeerInfo {
                name: "r1".into(),
                current: true,
                active: 5_591_860,
                peer: "6vlCPYjH".into(),
                ..PeerInfo::default()
            },
            PeerInfo {
                name: "r3".into(),
                current: false,
                active: 0,
                lag: 4,
                peer: "gXbsihJ4".into(),
                ..PeerInfo::default()
            },
        ];
        let elected = Advisory::LeaderElected {
            account: None,
            stream: "S".into(),
            consumer: None,
            leader: "r1".into(),
            replicas: replicas.clone(),
        };
        assert_eq!(
            elected.subject(),
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.S"
        );
        let r = r#""replicas":[{"name":"r1","current":true,"active":5591860,"peer":"6vlCPYjH"},{"name":"r3","current":false,"active":0,"lag":4,"peer":"gXbsihJ4"}]"#;
        let head = r#"{"type":"io.nats.jetstream.advisory.v1."#;
        let at = r#""id":"ID","timestamp":"2025-12-03T10:00:53.897792359Z""#;
        assert_eq!(
            String::from_utf8(elected.encode("ID", now)).unwrap(),
            format!(r#"{head}stream_leader_elected",{at},"stream":"S","leader":"r1",{r}}}"#)
        );
        let system = elected.for_system("APP").unwrap();
        assert_eq!(system.subject(), elected.subject());
        assert_eq!(
            String::from_utf8(system.encode("ID", now)).unwrap(),
            format!(
                r#"{head}stream_leader_elected",{at},"account":"APP","stream":"S","leader":"r1",{r}}}"#
            )
        );
        let consumer = Advisory::LeaderElected {
            account: Some("APP".into()),
            stream: "S".into(),
            consumer: Some("C".into()),
            leader: "r3".into(),
            replicas: replicas.clone(),
        };
        assert_eq!(
            consumer.subject(),
            "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.S.C"
        );
        assert_eq!(
            String::from_utf8(consumer.encode("ID", now)).unwrap(),
            format!(
                r#"{head}consumer_leader_elected",{at},"account":"APP","stream":"S","consumer":"C","leader":"r3",{r}}}"#
            )
        );
        let lost = Advisory::QuorumLost {
            account: None,
            stream: "S".into(),
            consumer: Some("C".into()),
            replicas: replicas.clone(),
        };
        assert_eq!(
            lost.subject(),
            "$JS.EVENT.ADVISORY.CONSUMER.QUORUM_LOST.S.C"
        );
        assert_eq!(
            String::from_utf8(lost.encode("ID", now)).unwrap(),
            format!(r#"{head}consumer_quorum_lost",{at},"stream":"S","consumer":"C",{r}}}"#)
        );
        let lost = Advisory::QuorumLost {
            account: None,
            stream: "S".into(),
            consumer: None,
            replicas: replicas.clone(),
        };
        assert_eq!(lost.subject(), "$JS.EVENT.ADVISORY.STREAM.QUORUM_LOST.S");
        let meta = Advisory::MetaLeaderElected {
            leader: "6vlCPYjH".into(),
            replicas,
            cluster: "js".into(),
        };
        assert_eq!(meta.subject(), "$JS.EVENT.ADVISORY.DOMAIN.LEADER_ELECTED");
        assert_eq!(meta.for_system("APP"), None);
        assert_eq!(
            String::from_utf8(meta.encode("ID", now)).unwrap(),
            format!(
                r#"{head}domain_leader_elected",{at},"leader":"6vlCPYjH",{r},"cluster":"js"}}"#
            )
        );
    }
}
