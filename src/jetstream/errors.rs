//! JetStream API errors with the reference's codes (`code` is HTTP-like, `err_code` is
//! the stable JetStream number from nats-server's `errors.json`). Clients match on
//! `err_code`, so every error a request can produce is one of these constructors.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{description} (code {code}, err_code {err_code})")]
pub struct ApiError {
    pub code: u16,
    pub err_code: u16,
    pub description: String,
}

fn e(code: u16, err_code: u16, description: impl Into<String>) -> ApiError {
    ApiError {
        code,
        err_code,
        description: description.into(),
    }
}

impl ApiError {
    /// `err` with another description (same code and err_code).
    pub fn with_description(err: ApiError, description: &str) -> Self {
        ApiError {
            description: description.to_string(),
            ..err
        }
    }
    pub fn bad_request() -> Self {
        e(400, 10003, "bad request")
    }
    pub fn invalid_json(err: &dyn std::fmt::Display) -> Self {
        e(400, 10025, format!("invalid JSON: {err}"))
    }
    pub fn not_empty_request() -> Self {
        e(400, 10038, "expected an empty request payload")
    }
    pub fn not_enabled() -> Self {
        e(503, 10076, "JetStream not enabled")
    }
    /// A request in an account whose JetStream is not enabled.
    pub fn not_enabled_for_account() -> Self {
        e(503, 10039, "JetStream not enabled for account")
    }
    /// A cluster-only request (a leader stepdown) to a JetStream that is not clustered.
    pub fn clustering_required() -> Self {
        e(503, 10010, "JetStream clustering support required")
    }
    /// A clustered JetStream without a meta leader (nats-server's JSClusterNotAvailErr).
    pub fn cluster_unavailable() -> Self {
        e(503, 10008, "JetStream system temporarily unavailable")
    }
    /// A meta leader stepdown preferring a server that is no meta peer.
    pub fn preferred_not_known(name: &str) -> Self {
        e(400, 10005, format!("preferred server {name:?} not known"))
    }
    /// A meta leader stepdown preferring the leader itself.
    pub fn preferred_already_leader(name: &str) -> Self {
        e(
            400,
            10005,
            format!("preferred server {name:?} is already leader"),
        )
    }
    /// Too few peers are up to place a stream (JSClusterNoPeersErrF).
    pub fn no_suitable_peers() -> Self {
        e(400, 10005, "no suitable peers for placement")
    }
    /// A publish while the node is past `max_memory` / `max_file`.
    pub fn insufficient_resources() -> Self {
        e(503, 10023, "insufficient resources")
    }
    /// A publish that would take the account past its JWT's storage limit.
    pub fn account_resources_exceeded() -> Self {
        e(400, 10002, "resource limits exceeded for account")
    }
    pub fn insufficient_storage() -> Self {
        e(500, 10047, "insufficient storage resources available")
    }
    pub fn insufficient_memory() -> Self {
        e(500, 10028, "insufficient memory resources available")
    }
    pub fn stream_not_found() -> Self {
        e(404, 10059, "stream not found")
    }
    pub fn stream_name_exists() -> Self {
        e(
            400,
            10058,
            "stream name already in use with a different configuration",
        )
    }
    pub fn stream_name_mismatch() -> Self {
        e(400, 10056, "stream name in subject does not match request")
    }
    pub fn subjects_overlap() -> Self {
        e(400, 10065, "subjects overlap with an existing stream")
    }
    pub fn invalid_stream_config(why: &str) -> Self {
        e(500, 10052, why)
    }
    pub fn mirror_with_subjects() -> Self {
        e(400, 10034, "stream mirrors can not contain subjects")
    }
    pub fn mirror_with_sources() -> Self {
        e(
            400,
            10031,
            "stream mirrors can not also contain other sources",
        )
    }
    pub fn mirror_with_first_seq() -> Self {
        e(
            400,
            10143,
            "stream mirrors can not have first sequence configured",
        )
    }
    pub fn mirror_invalid_stream_name() -> Self {
        e(400, 10142, "mirrored stream name is invalid")
    }
    pub fn source_invalid_stream_name() -> Self {
        e(400, 10141, "sourced stream name is invalid")
    }
    pub fn mirror_not_updatable() -> Self {
        e(400, 10055, "stream mirror configuration can not be updated")
    }
    pub fn source_duplicate() -> Self {
        e(400, 10140, "duplicate source configuration detected")
    }
    /// A filter and several transforms at once (10150 for a mirror, 10144 a source).
    pub fn filter_with_transforms(mirror: bool) -> Self {
        if mirror {
            e(
                400,
                10150,
                "mirror with multiple subject transforms cannot also have a single subject filter",
            )
        } else {
            e(
                400,
                10144,
                "source with multiple subject transforms cannot also have a single subject filter",
            )
        }
    }
    /// A transform's source filter is invalid (10151 mirror, 10145 source).
    pub fn transform_source(mirror: bool, err: &dyn std::fmt::Display) -> Self {
        match mirror {
            true => e(400, 10151, format!("mirror transform source: {err}")),
            false => e(400, 10145, format!("source transform source: {err}")),
        }
    }
    /// A transform's destination is invalid (10154 mirror, 10146 source).
    pub fn transform_destination(mirror: bool, err: &dyn std::fmt::Display) -> Self {
        match mirror {
            true => e(400, 10154, format!("mirror transform: {err}")),
            false => e(400, 10146, format!("source transform: {err}")),
        }
    }
    /// Filters of one mirror or source overlap (10152 mirror, 10147 source).
    pub fn overlapping_filters(mirror: bool) -> Self {
        match mirror {
            true => e(400, 10152, "mirror subject filters can not overlap"),
            false => e(400, 10147, "source filters can not overlap"),
        }
    }
    /// Setting up the consumer on the origin failed (the reference's 10029).
    pub fn mirror_consumer_setup_failed(why: &str) -> Self {
        e(500, 10029, why)
    }
    pub fn source_consumer_setup_failed(why: &str) -> Self {
        e(500, 10045, why)
    }
    pub fn consumer_direct_requires_push() -> Self {
        e(400, 10090, "consumer direct requires a push based consumer")
    }
    pub fn consumer_direct_requires_ephemeral() -> Self {
        e(400, 10091, "consumer direct requires an ephemeral consumer")
    }
    pub fn stream_update(why: &str) -> Self {
        e(500, 10069, why)
    }
    pub fn stream_store_failed(why: &str) -> Self {
        e(503, 10077, why)
    }
    pub fn stream_general(why: &str) -> Self {
        e(500, 10051, why)
    }
    pub fn replicas_not_supported() -> Self {
        e(
            500,
            10074,
            "replicas > 1 not supported in non-clustered mode",
        )
    }
    pub fn max_streams() -> Self {
        e(400, 10027, "maximum number of streams reached")
    }
    pub fn no_message_found() -> Self {
        e(404, 10037, "no message found")
    }
    pub fn sequence_not_found(seq: u64) -> Self {
        e(400, 10043, format!("sequence {seq} not found"))
    }
    pub fn msg_delete_failed(why: &str) -> Self {
        e(500, 10057, why)
    }
    pub fn purge_failed(why: &str) -> Self {
        e(500, 10110, why)
    }
    pub fn message_too_big() -> Self {
        e(400, 10054, "message size exceeds maximum allowed")
    }
    pub fn expected_stream_mismatch() -> Self {
        e(400, 10060, "expected stream does not match")
    }
    pub fn wrong_last_sequence(seq: u64) -> Self {
        e(400, 10071, format!("wrong last sequence: {seq}"))
    }
    pub fn wrong_last_msg_id(id: &str) -> Self {
        e(400, 10070, format!("wrong last msg ID: {id}"))
    }
    pub fn sealed() -> Self {
        e(400, 10109, "invalid operation on sealed stream")
    }
    pub fn rollup_failed(why: &str) -> Self {
        e(500, 10111, why)
    }
    pub fn ttl_invalid() -> Self {
        e(400, 10165, "invalid per-message TTL")
    }
    pub fn ttl_disabled() -> Self {
        e(400, 10166, "per-message TTL is disabled")
    }
    pub fn consumer_not_found() -> Self {
        e(404, 10014, "consumer not found")
    }
    pub fn consumer_create(why: &str) -> Self {
        e(500, 10012, why)
    }
    pub fn consumer_name_exists() -> Self {
        e(400, 10013, "consumer name already in use")
    }
    pub fn consumer_already_exists() -> Self {
        e(400, 10148, "consumer already exists")
    }
    pub fn consumer_does_not_exist() -> Self {
        e(400, 10149, "consumer does not exist")
    }
    pub fn consumer_durable_name_mismatch() -> Self {
        e(
            400,
            10017,
            "consumer name in subject does not match durable name in request",
        )
    }
    pub fn consumer_durable_name_not_set() -> Self {
        e(
            400,
            10018,
            "consumer expected to be durable but a durable name was not set",
        )
    }
    pub fn consumer_ephemeral_with_durable() -> Self {
        e(
            400,
            10020,
            "consumer expected to be ephemeral but a durable name was set in request",
        )
    }
    pub fn consumer_bad_durable_name() -> Self {
        e(400, 10103, "durable name can not contain '.', '*', '>'")
    }
    pub fn consumer_filter_mismatch() -> Self {
        e(
            400,
            10131,
            "Consumer create request did not match filtered subject from create subject",
        )
    }
    pub fn consumer_filter_not_subset() -> Self {
        e(
            400,
            10093,
            "consumer filter subject is not a valid subset of the interest subjects",
        )
    }
    pub fn consumer_duplicate_filters() -> Self {
        e(
            400,
            10136,
            "consumer cannot have both FilterSubject and FilterSubjects specified",
        )
    }
    pub fn consumer_overlapping_filters() -> Self {
        e(400, 10138, "consumer subject filters cannot overlap")
    }
    pub fn consumer_empty_filter() -> Self {
        e(
            400,
            10139,
            "consumer filter in FilterSubjects cannot be empty",
        )
    }
    pub fn consumer_max_consumers() -> Self {
        e(400, 10026, "maximum consumers limit reached")
    }
    pub fn consumer_invalid_policy(why: &str) -> Self {
        e(400, 10094, why)
    }
    pub fn consumer_push_max_waiting() -> Self {
        e(400, 10080, "consumer in push mode can not set max waiting")
    }
    pub fn consumer_small_heartbeat() -> Self {
        e(400, 10083, "consumer idle heartbeat needs to be >= 100ms")
    }
    pub fn consumer_hb_requires_push() -> Self {
        e(
            400,
            10088,
            "consumer idle heartbeat requires a push based consumer",
        )
    }
    pub fn consumer_fc_requires_push() -> Self {
        e(
            400,
            10089,
            "consumer flow control requires a push based consumer",
        )
    }
    pub fn consumer_fc_needs_heartbeats() -> Self {
        e(
            400,
            10108,
            "consumer with flow control also needs heartbeats",
        )
    }
    pub fn consumer_deliver_to_wildcards() -> Self {
        e(400, 10079, "consumer deliver subject has wildcards")
    }
    pub fn consumer_max_deliver_backoff() -> Self {
        e(
            400,
            10116,
            "max deliver is required to be > length of backoff values",
        )
    }
    pub fn consumer_wq_requires_explicit_ack() -> Self {
        e(400, 10098, "workqueue stream requires explicit ack")
    }
    pub fn consumer_wq_multiple_unfiltered() -> Self {
        e(
            400,
            10099,
            "multiple non-filtered consumers not allowed on workqueue stream",
        )
    }
    pub fn consumer_wq_not_unique() -> Self {
        e(
            400,
            10100,
            "filtered consumer not unique on workqueue stream",
        )
    }
    pub fn consumer_wq_deliver_all() -> Self {
        e(
            400,
            10101,
            "consumer must be deliver all on workqueue stream",
        )
    }
    pub fn consumer_pull_requires_ack() -> Self {
        e(
            400,
            10084,
            "consumer in pull mode requires explicit ack policy on workqueue stream",
        )
    }
    pub fn consumer_max_pending_requires_ack() -> Self {
        e(
            400,
            10082,
            "consumer requires ack policy for max ack pending",
        )
    }
    pub fn consumer_multiple_filters_not_allowed() -> Self {
        e(
            400,
            10137,
            "consumer with multiple subject filters cannot use subject based API",
        )
    }
    pub fn consumer_name_too_long(max: usize) -> Self {
        e(
            400,
            10102,
            format!("consumer name is too long, maximum allowed is {max}"),
        )
    }
    pub fn consumer_config_required() -> Self {
        e(400, 10078, "consumer config required")
    }
}
