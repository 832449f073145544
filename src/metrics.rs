//! Every metric clearance exports, in one place: `clearance_<what>_<unit>`,
//! `_total` for counters. Labels are bounded (outcome, reason, model,
//! partition, kind, error); never a user id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Counter: decisions published, by `outcome` and `reason` (one increment
/// per reason of the decision) and `model` (the catalog id, or `unknown`).
pub const DECISIONS_TOTAL: &str = "clearance_decisions_total";
/// Histogram: seconds from the request's event time to its decision.
pub const DECISION_LATENCY_SECONDS: &str = "clearance_decision_latency_seconds";
/// Histogram: seconds spent decoding, deciding and encoding one request.
pub const PROCESSING_SECONDS: &str = "clearance_processing_seconds";
/// Gauge: messages behind the high watermark, per `partition` of the request topic.
pub const CONSUMER_LAG_MESSAGES: &str = "clearance_consumer_lag_messages";
/// Gauge: eligibility records held, by `kind` (`user`, `organization`).
pub const ELIGIBILITY_RECORDS: &str = "clearance_eligibility_records";
/// Counter: change-feed records applied, by `result` (inserted, updated,
/// stale, deleted, absent, invalid).
pub const ELIGIBILITY_APPLIED_TOTAL: &str = "clearance_eligibility_applied_total";
/// Gauge: deletion markers held (keys a tombstone deleted, with the
/// version it deleted), bounded by `engine.deletion_markers_max`.
pub const DELETION_MARKERS: &str = "clearance_eligibility_deletion_markers";
/// Counter: deletion markers evicted, oldest first, beyond
/// `engine.deletion_markers_max` (a very late older record of an evicted
/// key would be applied again).
pub const DELETION_MARKER_EVICTIONS_TOTAL: &str =
    "clearance_eligibility_deletion_marker_evictions_total";
/// Counter: user records of the cache that did not unpack (a bug: the
/// store packed them); each lookup of one decides as for an unknown subject.
pub const CACHE_UNREADABLE_TOTAL: &str = "clearance_eligibility_unreadable_total";
/// Gauge: change-feed messages not yet applied, per `partition`.
pub const FEED_LAG_MESSAGES: &str = "clearance_feed_lag_messages";
/// Gauge: seconds since the Kafka timestamp of the last applied change-feed record.
pub const FEED_LAST_RECORD_AGE_SECONDS: &str = "clearance_feed_last_record_age_seconds";
/// Gauge: 1 while the eligibility data is stale (controlled models denied).
pub const FEED_STALE: &str = "clearance_feed_stale";
/// Gauge: 1 once the change feed has caught up with the startup high watermarks.
pub const READY: &str = "clearance_ready";
/// Counter: dead-letter records, by `source` (requests, eligibility) and `error`.
pub const DEADLETTERS_TOTAL: &str = "clearance_deadletters_total";
/// Counter: times a full producer queue made the pipeline wait (backpressure).
pub const PRODUCER_BACKPRESSURE_TOTAL: &str = "clearance_producer_backpressure_total";
/// Counter: replies delivered to a request's reply topic (request/reply).
pub const REPLIES_TOTAL: &str = "clearance_replies_total";
/// Counter: replies not sent, by `reason` (`pipeline::reply::failure`);
/// their decisions still went to the decisions topic.
pub const REPLY_FAILURES_TOTAL: &str = "clearance_reply_failures_total";
/// Counter: deliveries that failed permanently, by `topic` kind.
pub const DELIVERY_FAILURES_TOTAL: &str = "clearance_delivery_failures_total";
/// Counter: offsets stored for commit after confirmed delivery.
pub const OFFSETS_STORED_TOTAL: &str = "clearance_offsets_stored_total";
/// Gauge: decisions produced but not yet confirmed delivered.
pub const IN_FLIGHT_MESSAGES: &str = "clearance_in_flight_messages";
/// Counter: consumer-group rebalances, by `kind` (assign, revoke).
pub const REBALANCES_TOTAL: &str = "clearance_rebalances_total";
/// Counter: request consumers replaced after a fatal error, by `reason`
/// (`fenced`: another member took its `group.instance.id`, usually its
/// own rejoin after a session timeout).
pub const CONSUMER_RESTARTS_TOTAL: &str = "clearance_consumer_restarts_total";
/// Gauge: policy info (value 1), labelled with `policy_id` and `policy_version`.
pub const POLICY_INFO: &str = "clearance_policy_info";

/// Counter: policies activated (swapped in).
pub const POLICY_ACTIVATIONS_TOTAL: &str = "clearance_policy_activations_total";
/// Counter: published policies rejected as invalid (the previous stays).
pub const POLICY_REJECTED_TOTAL: &str = "clearance_policy_rejected_total";
/// Counter: published policies rejected for their signature, by `reason`
/// (`unsigned`, `untrusted_key`, `bad_signature`, `malformed`); also
/// counted in `clearance_policy_rejected_total`.
pub const POLICY_SIGNATURE_REJECTED_TOTAL: &str = "clearance_policy_signature_rejected_total";
/// Counter: requests on which the shadow policy decided otherwise than the
/// active one, by `from` (active outcome), `to` (shadow outcome), `model`.
pub const SHADOW_DIFFERENCES_TOTAL: &str = "clearance_shadow_differences_total";
/// Counter: published policies scheduled for a future `effective_from`.
pub const POLICY_SCHEDULED_TOTAL: &str = "clearance_policy_scheduled_total";
/// Counter: published policies superseded, never activated: read (or due)
/// when one with a later effective time was already effective.
pub const POLICY_SUPERSEDED_TOTAL: &str = "clearance_policy_superseded_total";
/// Counter: eligibility snapshots written, by `outcome` (`ok`, `error`).
pub const SNAPSHOT_WRITES_TOTAL: &str = "clearance_snapshot_writes_total";
/// Counter: eligibility snapshots at startup, by `outcome` (`loaded`,
/// `rejected`: corrupted, truncated or incompatible, so a full bootstrap;
/// `absent`).
pub const SNAPSHOT_LOADS_TOTAL: &str = "clearance_snapshot_loads_total";
/// Histogram: exactly-once, seconds from the end of a transaction's batch
/// to its commit (offsets sent to the transaction, then committed).
pub const TRANSACTION_COMMIT_SECONDS: &str = "clearance_transaction_commit_seconds";
/// Histogram: exactly-once, requests per committed transaction.
pub const TRANSACTION_REQUESTS: &str = "clearance_transaction_requests";
/// Gauge: seconds the last eligibility snapshot write took.
pub const SNAPSHOT_WRITE_SECONDS: &str = "clearance_snapshot_write_seconds";
/// Gauge: 1 while a long-running task runs, by `task` (`change_feed`,
/// `policy_watcher`); 0 once it has stopped.
pub const TASK_UP: &str = "clearance_task_up";
/// Counter: long-running tasks that died (returned an error, panicked, or
/// returned while the engine was not shutting down), by `task`
/// (`change_feed`, `policy_watcher`). Each stops the engine.
pub const TASK_FAILURES_TOTAL: &str = "clearance_task_failures_total";
/// Counter: failed `accept`s of the admin server (the open-files limit
/// reached, say); after each such failure the server sleeps, backing off.
pub const ADMIN_ACCEPT_ERRORS_TOTAL: &str = "clearance_admin_accept_errors_total";

/// Counter: authentication or TLS failures Kafka clients reported, by
/// `client` and `kind` (`authentication`, `certificate`, `tls`). Fatal at
/// startup; afterwards the engine is unready until a broker connection
/// authenticates again.
pub const KAFKA_AUTH_FAILURES_TOTAL: &str = "clearance_kafka_auth_failures_total";

/// Counter: calls of the request/reply client (`clearance::client`), by
/// `result` (`reply`, `timeout`: denied by the client, `error`).
pub const CLIENT_CALLS_TOTAL: &str = "clearance_client_calls_total";
/// Counter: client calls that timed out (each a `timeout` deny), by
/// `stage` (`permit`: no in-flight slot in time, `reply`: no reply in time).
pub const CLIENT_TIMEOUTS_TOTAL: &str = "clearance_client_timeouts_total";
/// Counter: replies the client read and dropped, by `reason` (`late`: its
/// call had ended, `foreign`: another client's on a shared reply partition,
/// `no_correlation_id`).
pub const CLIENT_REPLIES_DROPPED_TOTAL: &str = "clearance_client_replies_dropped_total";
/// Histogram: seconds from a client call to its reply (calls answered only).
pub const CLIENT_ROUND_TRIP_SECONDS: &str = "clearance_client_round_trip_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the recorder's upkeep runs. The recorder keeps every
/// histogram sample (some 24 bytes each; two per decision) until upkeep or
/// a scrape folds them into the buckets, so this bounds that memory to
/// about a second of samples, scraped or not.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// Install the Prometheus recorder (once per process), start its upkeep
/// thread and describe every metric. Later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static bucket list is non-empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(TRANSACTION_REQUESTS.into()),
                    &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0],
                )
                .expect("static bucket list is non-empty");
            // `install_recorder` (unlike `install`) leaves upkeep to us.
            let handle = match builder.install_recorder() {
                Ok(h) => {
                    start_upkeep(h.clone());
                    h
                }
                // Another recorder is installed (e.g. by an embedding
                // program): keep a private one so /metrics still renders.
                // Nothing records into it, so it needs no upkeep.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            handle
        })
        .clone()
}

/// Whether [`install`] has run in this process (a global recorder is set,
/// ours or an embedding program's).
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// The metrics the request path records for every decision, with their
/// handles resolved once per thread: no registry lookup (a hash of the
/// name and labels) and no label allocation per decision. Until
/// [`install`] has run, each call resolves its handle again (into whatever
/// recorder is set), so a handle resolved before the recorder existed is
/// never kept.
pub mod hot {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use metrics::{Counter, Gauge, Histogram};

    use super::*;

    /// `decisions_total` handles by (outcome, reason), then model.
    type DecisionCounters = HashMap<(&'static str, &'static str), HashMap<String, Counter>>;

    struct Handles {
        feed_applied: [Counter; FEED_RESULTS.len()],
        in_flight: Gauge,
        replies: Counter,
        processing: Histogram,
        latency: Histogram,
        decisions: DecisionCounters,
    }

    impl Handles {
        fn resolve() -> Self {
            Self {
                feed_applied: FEED_RESULTS
                    .map(|r| metrics::counter!(ELIGIBILITY_APPLIED_TOTAL, "result" => r)),
                in_flight: metrics::gauge!(IN_FLIGHT_MESSAGES),
                replies: metrics::counter!(REPLIES_TOTAL),
                processing: metrics::histogram!(PROCESSING_SECONDS),
                latency: metrics::histogram!(DECISION_LATENCY_SECONDS),
                decisions: HashMap::new(),
            }
        }
    }

    thread_local! {
        static HANDLES: RefCell<Option<Handles>> = const { RefCell::new(None) };
    }

    fn with<R>(f: impl FnOnce(&mut Handles) -> R) -> R {
        if !installed() {
            return f(&mut Handles::resolve());
        }
        HANDLES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut h) => f(h.get_or_insert_with(Handles::resolve)),
            // Re-entered (a metric recorded while recording one): resolve.
            Err(_) => f(&mut Handles::resolve()),
        })
    }

    /// The `result` labels of [`ELIGIBILITY_APPLIED_TOTAL`].
    pub const FEED_RESULTS: [&str; 6] = [
        "inserted", "updated", "stale", "deleted", "absent", "invalid",
    ];

    /// [`ELIGIBILITY_APPLIED_TOTAL`] up by one for `result`, one of
    /// [`FEED_RESULTS`] (anything else counts as `invalid`).
    pub fn feed_applied(result: &'static str) {
        debug_assert!(FEED_RESULTS.contains(&result), "{result}");
        let i = FEED_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(FEED_RESULTS.len() - 1);
        with(|h| h.feed_applied[i].increment(1));
    }

    /// [`IN_FLIGHT_MESSAGES`] up by one (a record handed to the producer).
    pub fn in_flight_added() {
        with(|h| h.in_flight.increment(1.0));
    }

    /// [`IN_FLIGHT_MESSAGES`] down by one (a delivery report).
    pub fn in_flight_done() {
        with(|h| h.in_flight.decrement(1.0));
    }

    /// [`REPLIES_TOTAL`] up by one.
    pub fn reply_delivered() {
        with(|h| h.replies.increment(1));
    }

    /// A [`PROCESSING_SECONDS`] sample.
    pub fn processing(secs: f64) {
        with(|h| h.processing.record(secs));
    }

    /// A [`DECISION_LATENCY_SECONDS`] sample.
    pub fn decision_latency(secs: f64) {
        with(|h| h.latency.record(secs));
    }

    /// [`DECISIONS_TOTAL`] up by one for (`outcome`, `reason`, `model`).
    /// `model` must be a bounded label (a catalog id or `unknown`).
    pub fn decision(outcome: &'static str, reason: &'static str, model: &str) {
        with(|h| {
            let by_model = h.decisions.entry((outcome, reason)).or_default();
            match by_model.get(model) {
                Some(c) => c.increment(1),
                None => {
                    let c = metrics::counter!(DECISIONS_TOTAL, "outcome" => outcome, "reason" => reason, "model" => model.to_string());
                    c.increment(1);
                    by_model.insert(model.to_string(), c);
                }
            }
        });
    }
}

/// Fold the histogram samples into their buckets every [`UPKEEP_INTERVAL`],
/// for the life of the process (the recorder lives as long).
fn start_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("clearance-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
            UPKEEPS.fetch_add(1, Ordering::Release);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics upkeep thread; histogram samples are kept until /metrics is scraped");
    }
}

/// How many times the upkeep has run in this process: for tests that wait
/// for one.
#[doc(hidden)]
pub fn upkeep_runs() -> u64 {
    UPKEEPS.load(Ordering::Acquire)
}

fn describe() {
    describe_counter!(
        DECISIONS_TOTAL,
        "Decisions published, by outcome, reason and model."
    );
    describe_histogram!(
        DECISION_LATENCY_SECONDS,
        Unit::Seconds,
        "From the request's event time to its decision."
    );
    describe_histogram!(
        PROCESSING_SECONDS,
        Unit::Seconds,
        "Decode, decide and encode time of one request."
    );
    describe_gauge!(CONSUMER_LAG_MESSAGES, "Request-topic lag per partition.");
    describe_gauge!(ELIGIBILITY_RECORDS, "Eligibility records held, by kind.");
    describe_counter!(
        ELIGIBILITY_APPLIED_TOTAL,
        "Change-feed records applied, by result."
    );
    describe_gauge!(
        DELETION_MARKERS,
        "Deletion markers held (deleted keys and the version deleted)."
    );
    describe_counter!(
        DELETION_MARKER_EVICTIONS_TOTAL,
        "Deletion markers evicted beyond engine.deletion_markers_max."
    );
    describe_counter!(
        CACHE_UNREADABLE_TOTAL,
        "Lookups of a cached user record that did not unpack (a bug; decided as unknown)."
    );
    describe_gauge!(FEED_LAG_MESSAGES, "Change-feed lag per partition.");
    describe_gauge!(
        FEED_LAST_RECORD_AGE_SECONDS,
        Unit::Seconds,
        "Age of the last applied change-feed record."
    );
    describe_gauge!(READY, "1 once the eligibility cache has caught up.");
    describe_gauge!(FEED_STALE, "1 while the eligibility data is stale.");
    describe_counter!(
        DEADLETTERS_TOTAL,
        "Dead-letter records, by source and error."
    );
    describe_counter!(
        PRODUCER_BACKPRESSURE_TOTAL,
        "Waits caused by a full producer queue."
    );
    describe_counter!(DELIVERY_FAILURES_TOTAL, "Permanently failed deliveries.");
    describe_counter!(
        REPLIES_TOTAL,
        "Replies delivered to requests' reply topics (request/reply)."
    );
    describe_counter!(
        REPLY_FAILURES_TOTAL,
        "Replies not sent, by reason; their decisions still reached the decisions topic."
    );
    describe_counter!(
        OFFSETS_STORED_TOTAL,
        "Offsets stored after confirmed delivery."
    );
    describe_gauge!(IN_FLIGHT_MESSAGES, "Produced, not yet confirmed.");
    describe_counter!(REBALANCES_TOTAL, "Consumer-group rebalances.");
    describe_counter!(
        CONSUMER_RESTARTS_TOTAL,
        "Request consumers replaced after a fatal error (fenced static member)."
    );
    describe_gauge!(POLICY_INFO, "The active policy (labels; 1 = active).");
    describe_counter!(POLICY_ACTIVATIONS_TOTAL, "Policies activated.");
    describe_counter!(
        POLICY_REJECTED_TOTAL,
        "Published policies rejected as invalid."
    );
    describe_counter!(
        SHADOW_DIFFERENCES_TOTAL,
        "Requests on which the shadow policy decided otherwise, by from, to, model."
    );
    describe_counter!(
        POLICY_SIGNATURE_REJECTED_TOTAL,
        "Published policies rejected for their signature, by reason."
    );
    describe_counter!(
        POLICY_SCHEDULED_TOTAL,
        "Published policies scheduled for later."
    );
    describe_counter!(
        POLICY_SUPERSEDED_TOTAL,
        "Published policies superseded by one with a later effective time, never activated."
    );
    describe_counter!(
        SNAPSHOT_WRITES_TOTAL,
        "Eligibility snapshots written, by outcome."
    );
    describe_counter!(
        SNAPSHOT_LOADS_TOTAL,
        "Eligibility snapshots at startup, by outcome."
    );
    describe_counter!(
        KAFKA_AUTH_FAILURES_TOTAL,
        "Kafka authentication or TLS failures, by client and kind."
    );
    describe_gauge!(
        TASK_UP,
        "1 while the task (change_feed, policy_watcher) runs."
    );
    describe_counter!(
        TASK_FAILURES_TOTAL,
        "Tasks that died while the engine was not shutting down; each stops the engine."
    );
    describe_counter!(
        ADMIN_ACCEPT_ERRORS_TOTAL,
        "Failed accepts of the admin server (each followed by a backoff sleep)."
    );
    describe_counter!(
        CLIENT_CALLS_TOTAL,
        "Request/reply client calls, by result (reply, timeout, error)."
    );
    describe_counter!(
        CLIENT_TIMEOUTS_TOTAL,
        "Request/reply client calls denied for a timeout, by stage (permit, reply)."
    );
    describe_counter!(
        CLIENT_REPLIES_DROPPED_TOTAL,
        "Replies the request/reply client dropped, by reason (late, foreign, no_correlation_id)."
    );
    describe_histogram!(
        CLIENT_ROUND_TRIP_SECONDS,
        Unit::Seconds,
        "Request/reply client: from a call to its reply."
    );
    describe_histogram!(
        TRANSACTION_COMMIT_SECONDS,
        Unit::Seconds,
        "Exactly-once: from the end of a transaction's batch to its commit."
    );
    describe_histogram!(
        TRANSACTION_REQUESTS,
        Unit::Count,
        "Exactly-once: requests per committed transaction."
    );
    describe_gauge!(
        SNAPSHOT_WRITE_SECONDS,
        Unit::Seconds,
        "Duration of the last eligibility snapshot write."
    );
}
