//! The `$JS.API` JSON: stream and consumer configurations, the info and state bodies,
//! PubAck, the request bodies, and the response envelope (`type` plus either the body
//! or `error`). Field names, defaults and encodings follow the reference: durations are
//! nanoseconds, times RFC 3339 in UTC, unknown request fields are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::errors::ApiError;

pub const API_PREFIX: &str = "$JS.API.";
pub const TYPE_PREFIX: &str = "io.nats.jetstream.api.v1.";
/// The JetStream API level we implement (ADR-44), as reported by the reference 2.11.
pub const API_LEVEL: u32 = 1;
/// Headers on a pull request's terminating status: what it still wanted.
pub const PENDING_MSGS_HEADER: &str = "Nats-Pending-Messages";
pub const PENDING_BYTES_HEADER: &str = "Nats-Pending-Bytes";
/// Default duplicate window: two minutes.
pub const DEFAULT_DUPLICATE_WINDOW: i64 = 120_000_000_000;
/// Default ack wait: thirty seconds.
pub const DEFAULT_ACK_WAIT: i64 = 30_000_000_000;
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1000;
pub const DEFAULT_MAX_WAITING: i64 = 512;
/// Ephemeral consumers go away after this long without interest.
pub const DEFAULT_INACTIVE_THRESHOLD: i64 = 5_000_000_000;

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &i64) -> bool {
    *n == 0
}
fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
fn minus_one() -> i64 {
    -1
}
fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    #[serde(alias = "workqueue")]
    Workqueue,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    #[default]
    Old,
    New,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    S2,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerLimits {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inactive_threshold: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ack_pending: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default = "minus_one")]
    pub max_consumers: i64,
    #[serde(default = "minus_one")]
    pub max_msgs: i64,
    #[serde(default = "minus_one")]
    pub max_bytes: i64,
    #[serde(default)]
    pub max_age: i64,
    #[serde(default = "minus_one")]
    pub max_msgs_per_subject: i64,
    #[serde(default = "minus_one")]
    pub max_msg_size: i64,
    #[serde(default)]
    pub discard: Discard,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default = "one")]
    pub num_replicas: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_ack: bool,
    /// Left out (0) for mirrors and sourcing streams, as by the reference.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicate_window: i64,
    /// Copy another stream, sequences and all (the stream then has no subjects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<StreamSource>,
    /// Streams whose messages are appended to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<StreamSource>>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub first_seq: u64,
    #[serde(default)]
    pub allow_direct: bool,
    #[serde(default)]
    pub mirror_direct: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub discard_new_per_subject: bool,
    #[serde(default)]
    pub sealed: bool,
    #[serde(default)]
    pub deny_delete: bool,
    #[serde(default)]
    pub deny_purge: bool,
    #[serde(default)]
    pub allow_rollup_hdrs: bool,
    #[serde(default)]
    pub consumer_limits: ConsumerLimits,
    #[serde(default)]
    pub allow_msg_ttl: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subject_delete_marker_ttl: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Features we do not implement; kept to refuse them clearly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub republish: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_transform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        // An empty JSON object gives the same defaults as a missing field.
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("defaults deserialize"))
    }
}

/// A stream to mirror or source from (the reference's `StreamSource`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub opt_start_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_transforms: Vec<SubjectTransformConfig>,
    /// Where the origin's API and deliveries are (another JetStream domain or account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStream>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectTransformConfig {
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub dest: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalStream {
    #[serde(default)]
    pub api: String,
    #[serde(default)]
    pub deliver: String,
}

/// How a mirror or source is doing, in STREAM.INFO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamSourceInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStream>,
    /// Messages the origin holds that are not here yet.
    pub lag: u64,
    /// The origin's last sequence received (sources only, as the reference).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub seq: u64,
    /// Nanoseconds since the origin was last heard from; -1 when never.
    pub active: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_transforms: Vec<SubjectTransformConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub first_ts: String,
    pub last_seq: u64,
    pub last_ts: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub num_subjects: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub num_deleted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<u64>>,
    pub consumer_count: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The replicated stream's Raft group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_group: Option<String>,
    /// Absent while a replicated stream has no leader, as the reference's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub leader: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since: Option<String>,
    /// The other replicas, as the leader sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<PeerInfo>,
    /// A replicated asset's Raft traffic runs in the system account (the reference
    /// says so; ours is in `$MBR`, an account no client is in).
    #[serde(default, skip_serializing_if = "is_false")]
    pub system_account: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_account: Option<String>,
}

/// A replica in a `cluster` block, as the reference describes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: String,
    /// Holds everything the leader applied.
    pub current: bool,
    /// Not reachable now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
    /// Nanoseconds since the leader last heard from it.
    pub active: u64,
    /// Entries behind the leader's log.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub lag: u64,
    /// The peer's id in the group.
    pub peer: String,
}

/// A stream as the API describes it. STREAM.INFO has everything; the reference leaves
/// out the paging fields (which describe `state.subjects`) and `cluster` in CREATE,
/// UPDATE and LIST replies, and only CREATE says `did_create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    pub config: StreamConfig,
    pub created: String,
    pub state: StreamState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<StreamSourceInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<StreamSourceInfo>>,
    pub ts: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did_create: Option<bool>,
}

impl StreamInfo {
    /// A clustered JetStream's CREATE form, as the reference's meta leader answers:
    /// no paging, the `cluster` block kept, `did_create` only for a new stream.
    pub fn for_clustered_create(mut self, created: bool) -> StreamInfo {
        let cluster = self.cluster.take();
        self = self.for_change(created);
        self.cluster = cluster;
        self
    }

    /// The CREATE / UPDATE form: no paging, no cluster.
    pub fn for_change(mut self, created: bool) -> StreamInfo {
        self.total = None;
        self.offset = None;
        self.limit = None;
        self.cluster = None;
        self.did_create = created.then_some(true);
        self
    }

    /// The form of a STREAM.LIST item: no paging, no cluster, no dynamic metadata.
    pub fn for_list(mut self) -> StreamInfo {
        self = self.for_change(false);
        strip_dynamic_metadata(&mut self.config.metadata);
        self
    }
}

/// A configured byte limit as the API reports it: the bytes, or -1 for none (0 in our
/// config). Without a limit the reference's monitoring prints a size it derived from
/// the machine; we have no such limit and say so.
pub fn limit_or_none(v: u64) -> i64 {
    if v == 0 {
        -1
    } else {
        v as i64
    }
}

/// Subjects STREAM.INFO lists at most in `state.subjects` (its paging `limit`).
pub const STREAM_INFO_SUBJECTS_LIMIT: u64 = 100_000;

/// Metadata key: the API level a config's features need (all ours: level 0).
const META_REQUIRED_LEVEL: &str = "_nats.req.level";
/// Metadata keys the server adds to replies and never stores.
const META_LEVEL: &str = "_nats.level";
const META_VERSION: &str = "_nats.ver";

/// Adds the server's metadata to a config in a reply, as the reference does: the level
/// the config requires, this server's API level and version.
pub fn add_server_metadata(meta: &mut Option<BTreeMap<String, String>>) {
    let m = meta.get_or_insert_with(BTreeMap::new);
    m.insert(META_REQUIRED_LEVEL.into(), "0".into());
    m.insert(META_LEVEL.into(), API_LEVEL.to_string());
    m.insert(
        META_VERSION.into(),
        crate::proto::info::COMPAT_VERSION.into(),
    );
}

/// Removes the per-server keys (list items carry only the required level).
pub fn strip_dynamic_metadata(meta: &mut Option<BTreeMap<String, String>>) {
    if let Some(m) = meta {
        m.remove(META_LEVEL);
        m.remove(META_VERSION);
    }
}

/// Removes every server-set key from a config a client sent (it may echo a previous
/// reply's), so stored configs and "same config" comparisons see only the client's.
pub fn strip_server_metadata(meta: &mut Option<BTreeMap<String, String>>) {
    if let Some(m) = meta {
        m.retain(|k, _| !k.starts_with("_nats."));
        if m.is_empty() {
            *meta = None;
        }
    }
}

/// Optional body of STREAM.INFO.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamInfoRequest {
    #[serde(default)]
    pub deleted_details: bool,
    #[serde(default)]
    pub subjects_filter: Option<String>,
    #[serde(default)]
    pub offset: usize,
}

/// Body of STREAM.NAMES and STREAM.LIST.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListRequest {
    #[serde(default)]
    pub offset: usize,
    #[serde(default)]
    pub subject: Option<String>,
}

/// Body of STREAM.PURGE.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PurgeRequest {
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub keep: Option<u64>,
}

/// Body of STREAM.MSG.GET and DIRECT.GET.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MsgGetRequest {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub last_by_subj: Option<String>,
    #[serde(default)]
    pub next_by_subj: Option<String>,
    #[serde(default)]
    pub batch: Option<u64>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub multi_last: Option<Vec<String>>,
    #[serde(default)]
    pub up_to_seq: Option<u64>,
    #[serde(default)]
    pub start_time: Option<String>,
}

/// Body of STREAM.MSG.DELETE.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MsgDeleteRequest {
    pub seq: u64,
    #[serde(default)]
    pub no_erase: bool,
}

/// A message in a STREAM.MSG.GET response.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub subject: String,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hdrs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub time: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PubAck {
    pub stream: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

impl PubAck {
    /// The reference's exact bytes, `"duplicate": true` with its space included (a
    /// publish answers with this on every message, so it is written directly).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.stream.len());
        out.extend_from_slice(b"{\"stream\":");
        if serde_json::to_writer(&mut out, &self.stream).is_err() {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        if self.duplicate {
            out.extend_from_slice(b",\"duplicate\": true");
        }
        out.push(b'}');
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    Last,
    New,
    ByStartSequence,
    ByStartTime,
    LastPerSubject,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    None,
    All,
    #[default]
    Explicit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayPolicy {
    #[default]
    Instant,
    Original,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    #[serde(default)]
    pub ack_policy: AckPolicy,
    #[serde(default)]
    pub ack_wait: i64,
    #[serde(default)]
    pub max_deliver: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subjects: Option<Vec<String>>,
    #[serde(default)]
    pub replay_policy: ReplayPolicy,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub rate_limit_bps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_freq: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_waiting: i64,
    #[serde(default)]
    pub max_ack_pending: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub flow_control: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_heartbeat: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers_only: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_batch: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_expires: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_group: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inactive_threshold: i64,
    #[serde(default)]
    pub num_replicas: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub mem_storage: bool,
    /// A consumer a mirror or source runs on its origin: hidden from the consumer
    /// lists, never persisted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_until: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("defaults deserialize"))
    }
}

impl ConsumerConfig {
    /// The filters as one list (`filter_subject` or `filter_subjects`; empty: all).
    pub fn filters(&self) -> Vec<String> {
        match (&self.filter_subject, &self.filter_subjects) {
            (Some(f), _) if !f.is_empty() => vec![f.clone()],
            (_, Some(fs)) => fs.iter().filter(|f| !f.is_empty()).cloned().collect(),
            _ => Vec::new(),
        }
    }

    pub fn is_pull(&self) -> bool {
        self.deliver_subject.as_deref().is_none_or(str::is_empty)
    }
}

/// Body of CONSUMER.CREATE and CONSUMER.DURABLE.CREATE.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateConsumerRequest {
    #[serde(default)]
    pub stream_name: String,
    pub config: ConsumerConfig,
    #[serde(default)]
    pub action: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceInfo {
    pub consumer_seq: u64,
    pub stream_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceInfoActive {
    pub consumer_seq: u64,
    pub stream_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerInfo {
    pub stream_name: String,
    pub name: String,
    pub created: String,
    pub config: ConsumerConfig,
    pub delivered: SequenceInfoActive,
    pub ack_floor: SequenceInfoActive,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub num_waiting: u64,
    pub num_pending: u64,
    /// Only a clustered consumer reports it (the reference leaves it out on one server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub push_bound: bool,
    pub ts: String,
}

/// Body of CONSUMER.MSG.NEXT (a JSON object, a plain batch number, or empty).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct NextRequest {
    #[serde(default)]
    pub batch: i64,
    #[serde(default)]
    pub expires: i64,
    #[serde(default)]
    pub max_bytes: i64,
    #[serde(default)]
    pub no_wait: bool,
    #[serde(default)]
    pub idle_heartbeat: i64,
}

impl NextRequest {
    pub fn parse(body: &[u8]) -> Result<NextRequest, ApiError> {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request())?;
        let text = text.trim();
        // No body asks for one message; a batch below 1 asks for nothing (the
        // reference then stays silent, see `Consumer::request_next`).
        let req = if text.is_empty() {
            NextRequest {
                batch: 1,
                ..Default::default()
            }
        } else if text.starts_with('{') {
            parse_json(text.as_bytes())?
        } else {
            NextRequest {
                batch: text.parse().map_err(|_| ApiError::bad_request())?,
                ..Default::default()
            }
        };
        // A heartbeat must fit twice into the request's life (which, without expiry,
        // it never does).
        if req.idle_heartbeat > 0 && req.idle_heartbeat.saturating_mul(2) > req.expires {
            return Err(ApiError::with_description(
                ApiError::bad_request(),
                "heartbeat value too large",
            ));
        }
        Ok(req)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiStats {
    pub level: u32,
    pub total: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountLimits {
    pub max_memory: i64,
    pub max_storage: i64,
    pub max_streams: i64,
    pub max_consumers: i64,
    pub max_ack_pending: i64,
    pub memory_max_stream_bytes: i64,
    pub storage_max_stream_bytes: i64,
    pub max_bytes_required: bool,
}

impl AccountLimits {
    /// No limit anywhere (-1).
    pub fn unlimited() -> Self {
        AccountLimits {
            max_memory: -1,
            max_storage: -1,
            max_streams: -1,
            max_consumers: -1,
            max_ack_pending: -1,
            memory_max_stream_bytes: -1,
            storage_max_stream_bytes: -1,
            max_bytes_required: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountInfo {
    pub memory: u64,
    pub storage: u64,
    pub reserved_memory: u64,
    pub reserved_storage: u64,
    pub streams: u64,
    pub consumers: u64,
    pub limits: AccountLimits,
    pub api: ApiStats,
}

/// Serializes a response body with its `type`.
pub fn response<T: Serialize>(kind: &str, body: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        #[serde(rename = "type")]
        kind: String,
        #[serde(flatten)]
        body: &'a T,
    }
    serde_json::to_vec(&Envelope {
        kind: format!("{TYPE_PREFIX}{kind}"),
        body,
    })
    .unwrap_or_default()
}

/// Serializes an error response with its `type`.
pub fn error_response(kind: &str, err: &ApiError) -> Vec<u8> {
    // The reference's error replies keep the response type's other non-optional
    // fields, zeroed, after the error; clients that read them expect them there.
    let extra = match kind {
        "stream_info_response" => r#","total":0,"offset":0,"limit":0"#,
        "stream_purge_response" => r#","purged":0"#,
        "consumer_names_response" => r#","total":0,"offset":0,"limit":0,"consumers":[]"#,
        _ => "",
    };
    let error = serde_json::to_vec(err).unwrap_or_default();
    let mut body = Vec::with_capacity(64 + kind.len() + error.len() + extra.len());
    body.extend_from_slice(b"{\"type\":\"");
    body.extend_from_slice(TYPE_PREFIX.as_bytes());
    body.extend_from_slice(kind.as_bytes());
    body.extend_from_slice(b"\",\"error\":");
    body.extend_from_slice(&error);
    body.extend_from_slice(extra.as_bytes());
    body.push(b'}');
    body
}

/// A PubAck for a failed publish: the error next to the stream name (as the reference).
pub fn pub_ack_error(stream: &str, err: &ApiError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Failed<'a> {
        error: &'a ApiError,
        stream: &'a str,
        seq: u64,
    }
    serde_json::to_vec(&Failed {
        error: err,
        stream,
        seq: 0,
    })
    .unwrap_or_default()
}

/// Is a request body empty as the clients send "nothing" (empty, `null`, `[]`, `{}`)?
fn is_empty_body(body: &[u8]) -> bool {
    let text = std::str::from_utf8(body).unwrap_or("x").trim();
    matches!(text, "" | "null" | "[]")
}

/// Drops `null` members of objects, recursively: Go reads a null as the zero value, and
/// clients send explicit nulls for fields they leave unset.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Parses a JSON request body the way the reference reads it (nulls as missing).
pub fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(&e))?;
    strip_nulls(&mut value);
    T::deserialize(value).map_err(|e| ApiError::invalid_json(&e))
}

/// Parses an optional JSON request body: an empty one gives the default.
pub fn parse_optional<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, ApiError> {
    if is_empty_body(body) {
        return Ok(T::default());
    }
    parse_json(body)
}

/// Parses a required JSON request body; none at all is a bad request (10003).
pub fn parse_required<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    if is_empty_body(body) {
        return Err(ApiError::bad_request());
    }
    parse_json(body)
}

/// RFC 3339 in UTC with nanoseconds, trailing zeros trimmed (Go's `RFC3339Nano`). Time
/// zero (no time) is Go's zero time, as the reference prints it.
pub fn format_time(ns: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    if ns == 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string())
}

/// Parses an RFC 3339 time to nanoseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_ack_bytes_are_the_references() {
        let ack = |duplicate| PubAck {
            stream: "S".into(),
            seq: 3,
            duplicate,
        };
        assert_eq!(ack(false).to_json(), br#"{"stream":"S","seq":3}"#);
        assert_eq!(
            ack(true).to_json(),
            br#"{"stream":"S","seq":3,"duplicate": true}"#
        );
        let back: PubAck = serde_json::from_slice(&ack(true).to_json()).unwrap();
        assert_eq!(back, ack(true));
    }

    #[test]
    fn error_replies_keep_their_types_zeroed_fields() {
        let err = ApiError::stream_not_found();
        let v: serde_json::Value =
            serde_json::from_slice(&error_response("stream_purge_response", &err)).unwrap();
        assert_eq!(v["purged"], 0);
        assert_eq!(v["error"]["err_code"], 10059);
        assert_eq!(v["type"], "io.nats.jetstream.api.v1.stream_purge_response");
        let v: serde_json::Value =
            serde_json::from_slice(&error_response("consumer_names_response", &err)).unwrap();
        assert_eq!(v["consumers"], serde_json::json!([]));
        let plain = error_response("stream_create_response", &err);
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn pull_heartbeats_must_fit_twice_into_the_expiry() {
        let too_large = NextRequest::parse(br#"{"batch":1,"expires":1000,"idle_heartbeat":600}"#);
        assert_eq!(
            too_large.map_err(|e| e.description),
            Err("heartbeat value too large".to_string())
        );
        let no_expiry = NextRequest::parse(br#"{"batch":1,"idle_heartbeat":600}"#);
        assert!(no_expiry.is_err());
        let fits = NextRequest::parse(br#"{"batch":1,"expires":1200,"idle_heartbeat":600}"#);
        assert_eq!(fits.map(|r| r.idle_heartbeat), Ok(600));
        assert_eq!(NextRequest::parse(b"").map(|r| r.batch), Ok(1));
        assert_eq!(NextRequest::parse(b"{\"batch\":0}").map(|r| r.batch), Ok(0));
    }

    #[test]
    fn server_metadata_is_added_in_replies_and_never_kept() {
        let mut meta = None;
        add_server_metadata(&mut meta);
        let keys: Vec<&str> = meta.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["_nats.level", "_nats.req.level", "_nats.ver"]);
        strip_dynamic_metadata(&mut meta);
        assert_eq!(meta.as_ref().map(|m| m.len()), Some(1));
        let mut sent = Some(BTreeMap::from([
            ("_nats.req.level".to_string(), "0".to_string()),
            ("owner".to_string(), "me".to_string()),
        ]));
        strip_server_metadata(&mut sent);
        assert_eq!(sent, Some(BTreeMap::from([("owner".into(), "me".into())])));
        let mut only_server = Some(BTreeMap::from([("_nats.ver".into(), "x".into())]));
        strip_server_metadata(&mut only_server);
        assert_eq!(only_server, None);
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = StreamConfig::default();
        assert_eq!(c.max_msgs, -1);
        assert_eq!(c.max_msgs_per_subject, -1);
        assert_eq!(c.storage, Storage::File);
        assert_eq!(c.num_replicas, 1);
        let json = serde_json::to_value(&c).unwrap_or_default();
        assert_eq!(json["retention"], "limits");
        assert!(json.get("subjects").is_none());
    }

    #[test]
    fn next_request_forms() {
        assert_eq!(NextRequest::parse(b"").map(|r| r.batch), Ok(1));
        assert_eq!(NextRequest::parse(b" 5 ").map(|r| r.batch), Ok(5));
        let r = NextRequest::parse(br#"{"batch":3,"no_wait":true}"#).unwrap_or_default();
        assert!(r.no_wait && r.batch == 3);
        assert!(NextRequest::parse(b"{bad").is_err());
        assert!(NextRequest::parse(b"x").is_err());
    }

    #[test]
    fn times_round_trip() {
        let ns = 1_700_000_000_123_456_000;
        let s = format_time(ns);
        assert_eq!(s, "2023-11-14T22:13:20.123456Z");
        assert_eq!(parse_time(&s), Some(ns));
        assert_eq!(format_time(0), "0001-01-01T00:00:00Z");
        assert_eq!(parse_time("2023-11-14T23:13:20.123456+01:00"), Some(ns));
    }

    #[test]
    fn envelopes() {
        let body = response(
            "pub_test",
            &PubAck {
                stream: "S".into(),
                seq: 1,
                duplicate: false,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["type"], "io.nats.jetstream.api.v1.pub_test");
        assert_eq!(v["seq"], 1);
        let e = error_response("x_response", &ApiError::stream_not_found());
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap_or_default();
        assert_eq!(v["error"]["err_code"], 10059);
    }
}
