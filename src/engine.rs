//! Wires the engine together: policy, topics, producer, admin server,
//! change feed, then the request workers once the feed has caught up.
//!
//! `run(config, shutdown)` is what `clearance run` calls; [`start`] returns
//! a handle (admin address, state) for tools and tests that embed the
//! engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, StatusSource};
use crate::config::Config;
use crate::eligibility::feed::{self, FeedState};
use crate::eligibility::Store;
use crate::kafka::{self, KafkaBoundaryError, RetryHint};
use crate::metrics as m;
use crate::pipeline::{self, ActivePolicy, DeadLetterSink, Shared};
use crate::policy::{CompiledPolicy, PolicyError};
use crate::rollout::{self, RolloutState};

/// Errors that stop the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy is missing or invalid: the engine refuses to start.
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// Kafka setup failed.
    #[error(transparent)]
    Kafka(#[from] KafkaBoundaryError),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The change feed stopped.
    #[error("change feed: {0}")]
    Feed(#[from] feed::FeedError),
    /// A request worker stopped.
    #[error("pipeline: {0}")]
    Pipeline(#[from] pipeline::PipelineError),
    /// The policy watcher failed.
    #[error("policy rollout: {0}")]
    Rollout(#[from] rollout::RolloutError),
    /// The change feed did not catch up in time.
    #[error("change feed did not catch up within {0} s")]
    CatchupTimeout(u64),
    /// A task panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(String),
}

/// The engine's observable state.
pub struct EngineState {
    /// The instance id written into decisions.
    pub instance_id: String,
    /// The eligibility store.
    pub store: Arc<Store>,
    /// Change-feed positions and readiness.
    pub feed: Arc<FeedState>,
    /// The active policy.
    pub policy: Arc<ActivePolicy>,
    /// Request partitions assigned to this instance.
    pub assigned: Arc<Mutex<BTreeSet<i32>>>,
    /// Policy rollout state.
    pub rollout: Arc<RolloutState>,
    /// Shadow mode's candidate policy, if configured.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
    /// What the startup snapshot gave: loaded (records, positions), rejected
    /// (reason), or none.
    pub snapshot: serde_json::Value,
    /// The first fatal failure of a task (the change feed or the policy
    /// watcher died): the engine is unhealthy and stopping.
    failure: Mutex<Option<String>>,
}

impl EngineState {
    /// Ready to decide: the eligibility feed and the policy topic have both
    /// caught up with their startup ends, no task has failed, and no Kafka
    /// client has an authentication or TLS failure outstanding
    /// ([`kafka::auth_failure`]).
    pub fn is_ready(&self) -> bool {
        self.is_healthy()
            && self.feed.is_ready()
            && self.rollout.is_ready()
            && kafka::auth_failure().is_none()
    }

    /// Healthy: neither the change feed nor the policy watcher has died.
    pub fn is_healthy(&self) -> bool {
        self.failure().is_none()
    }

    /// Why the engine is unhealthy: the first task failure.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Record that `task` died (the first failure is kept): unhealthy and
    /// unready from now on, with a log line and a metric.
    fn fail(&self, task: Task, error: &EngineError) {
        tracing::error!(task = task.label(), %error, "task failed; the engine stops");
        metrics::counter!(m::TASK_FAILURES_TOTAL, "task" => task.label()).increment(1);
        metrics::gauge!(m::READY).set(0.0);
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| format!("{}: {error}", task.label()));
    }
}

impl StatusSource for EngineState {
    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn healthy(&self) -> bool {
        self.is_healthy()
    }

    fn status(&self) -> serde_json::Value {
        let p = self.policy.current();
        serde_json::json!({
            "instance_id": self.instance_id,
            "ready": self.is_ready(),
            "failure": self.failure(),
            "policy": {
                "id": p.id,
                "version": p.version,
                "data_version": p.data_version,
                "rollout": self.rollout.info(),
                "shadow": self.shadow.as_ref().map(|s| s.info()),
            },
            "eligibility": {
                "users": self.store.user_count(),
                "organizations": self.store.org_count(),
                "deletion_markers": self.store.deletion_marker_count(),
            },
            "feed": self.feed.positions(),
            "snapshot": self.snapshot,
            "kafka_auth_failure": kafka::auth_failure().map(|f| f.to_string()),
            "assigned_partitions": *self.assigned.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

/// A running engine.
pub struct EngineHandle {
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    /// Its state.
    pub state: Arc<EngineState>,
    /// Completes when the engine has stopped (after `shutdown`, or on a
    /// fatal error).
    pub join: JoinHandle<Result<(), EngineError>>,
    /// Fault injection, for the tests of supervision only.
    #[doc(hidden)]
    pub faults: FaultInjection,
}

/// Fault injection into a running engine, for the tests of its supervision
/// only: nothing in the engine or the CLI calls it. Once running, the
/// policy watcher offers no failure a test can provoke from outside (its
/// consumer errors are only logged), so this makes it return, or its
/// thread panic, as a bug would.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct FaultInjection {
    policy_watcher_stop: CancellationToken,
    policy_watcher_panic: Arc<AtomicBool>,
}

impl FaultInjection {
    /// The policy watcher returns `Ok(())` while the engine is not shutting
    /// down.
    #[doc(hidden)]
    pub fn stop_policy_watcher(&self) {
        self.policy_watcher_stop.cancel();
    }

    /// The policy watcher's thread panics.
    #[doc(hidden)]
    pub fn panic_policy_watcher(&self) {
        self.policy_watcher_panic.store(true, Ordering::SeqCst);
        self.policy_watcher_stop.cancel();
    }
}

/// The long-running tasks beside the request workers; the `task` label of
/// [`m::TASK_UP`] and [`m::TASK_FAILURES_TOTAL`].
#[derive(Debug, Clone, Copy)]
enum Task {
    ChangeFeed,
    PolicyWatcher,
}

impl Task {
    fn label(self) -> &'static str {
        match self {
            Task::ChangeFeed => "change_feed",
            Task::PolicyWatcher => "policy_watcher",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Task::ChangeFeed => "change feed",
            Task::PolicyWatcher => "policy watcher",
        }
    }
}

/// `clearance_task_up{task}` is 1 while this lives: from the start of the
/// task's thread until it returns or unwinds.
struct TaskUp(Task);

impl TaskUp {
    fn new(task: Task) -> Self {
        metrics::gauge!(m::TASK_UP, "task" => task.label()).set(1.0);
        TaskUp(task)
    }
}

impl Drop for TaskUp {
    fn drop(&mut self) {
        metrics::gauge!(m::TASK_UP, "task" => self.0.label()).set(0.0);
    }
}

/// Load the configured policy, or the shipped example.
pub fn load_policy(cfg: &Config) -> Result<CompiledPolicy, PolicyError> {
    match &cfg.policy.file {
        Some(path) => CompiledPolicy::load_file(path),
        None => Ok(CompiledPolicy::example()),
    }
}

fn instance_id(cfg: &Config) -> String {
    if !cfg.engine.instance_id.is_empty() {
        return cfg.engine.instance_id.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// What a start without a usable snapshot gets: an empty store (holding at
/// most `markers_max` deletion markers), the feed from its beginning, and
/// `status` to report.
fn full_bootstrap(
    markers_max: usize,
    status: serde_json::Value,
) -> (Store, BTreeMap<i32, i64>, serde_json::Value) {
    (
        Store::new().with_deletion_markers_max(markers_max),
        BTreeMap::new(),
        status,
    )
}

/// Load the eligibility snapshot, if one is configured and valid: the store,
/// the positions to resume the change feed from, and what to report. A bad
/// snapshot is rejected with a log line; the store is empty and the feed
/// replays from the beginning (full bootstrap). Blocking.
fn load_snapshot(cfg: &Config) -> (Store, BTreeMap<i32, i64>, serde_json::Value) {
    let markers_max = cfg.engine.deletion_markers_max;
    let Some(path) = &cfg.engine.snapshot_path else {
        return full_bootstrap(markers_max, serde_json::json!({ "status": "none" }));
    };
    crate::eligibility::snapshot::remove_leftovers(path);
    let outcome =
        |o: &'static str| metrics::counter!(m::SNAPSHOT_LOADS_TOTAL, "outcome" => o).increment(1);
    if !path.exists() {
        outcome("absent");
        return full_bootstrap(
            markers_max,
            serde_json::json!({ "status": "absent", "path": path }),
        );
    }
    let started = std::time::Instant::now();
    match crate::eligibility::snapshot::load(path, markers_max) {
        Ok((store, info)) => {
            outcome("loaded");
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                records = info.records,
                deletion_markers = info.markers,
                secs,
                "eligibility snapshot loaded; catching up from its positions"
            );
            (
                store,
                info.positions.clone(),
                serde_json::json!({ "status": "loaded", "records": info.records, "deletion_markers": info.markers, "positions": info.positions, "load_secs": secs }),
            )
        }
        Err(e) => {
            outcome("rejected");
            tracing::warn!(error = %e, "eligibility snapshot rejected; full bootstrap from the change feed");
            full_bootstrap(
                markers_max,
                serde_json::json!({ "status": "rejected", "reason": e.to_string() }),
            )
        }
    }
}

/// Run until `shutdown` is cancelled, then drain, commit and flush.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), EngineError> {
    let handle = start(cfg, shutdown).await?;
    tracing::info!(admin = %handle.admin_addr, "engine started");
    let EngineHandle { state, join, .. } = handle;
    let result = join.await.map_err(|e| EngineError::Task(e.to_string()))?;
    // Everything is committed and flushed. Freeing a large eligibility
    // store record by record takes a while (some 30 s at 10 million
    // subjects), so it happens on a thread of its own: a process that exits
    // now does not wait for it, one that goes on gets the memory back.
    let _ = std::thread::Builder::new()
        .name("clearance-free".into())
        .spawn(move || drop(state));
    result
}

/// Start the engine and return once the admin server is listening. Request
/// processing begins only after the change feed has caught up.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<EngineHandle, EngineError> {
    let prometheus = m::install();
    let policy = load_policy(&cfg)?;
    tracing::info!(policy_id = %policy.id, policy_version = %policy.version, "policy loaded");
    let shadow = crate::shadow::Shadow::from_config(&cfg)?;
    if let Some(s) = &shadow {
        tracing::info!(policy_id = %s.policy().id, policy_version = %s.policy().version, "shadow policy loaded: evaluated beside the active one, differences to {}", cfg.topics.shadow);
    }
    metrics::gauge!(m::POLICY_INFO, "policy_id" => policy.id.clone(), "policy_version" => policy.version.clone()).set(1.0);
    metrics::gauge!(m::READY).set(0.0);
    kafka::reset_auth_failures();

    // The producer first: its client reports an authentication or TLS
    // failure at once (it connects to fetch its producer id), which stops
    // the startup below.
    let producer = pipeline::create_producer(&cfg)?;
    let reply_producer = match cfg.engine.delivery {
        crate::config::DeliveryMode::AtLeastOnce => Some(pipeline::create_reply_producer(&cfg)?),
        crate::config::DeliveryMode::ExactlyOnce => None,
    };
    if cfg.topics.create_missing {
        let mut attempt = 0;
        loop {
            let created = tokio::select! {
                r = kafka::create_topics(&cfg.kafka, &cfg.topics) => r,
                e = kafka::auth_failed() => Err(e),
            };
            match created {
                Ok(created) => {
                    if !created.is_empty() {
                        tracing::info!(?created, "created topics");
                    }
                    break;
                }
                Err(e) if e.retry_hint() == RetryHint::Retryable && attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "topic creation failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(e.into()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    let deadletters = DeadLetterSink::new(
        producer.clone(),
        cfg.topics.deadletter.clone(),
        cfg.engine.deadletter_max_payload_bytes,
        shutdown.clone(),
    );
    let (store, start_positions, snapshot) = {
        let markers_max = cfg.engine.deletion_markers_max;
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || load_snapshot(&cfg))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "eligibility snapshot: the loading task failed; full bootstrap");
                full_bootstrap(
                    markers_max,
                    serde_json::json!({ "status": "rejected", "reason": e.to_string() }),
                )
            })
    };
    let store = Arc::new(store);
    let feed_state = Arc::new(FeedState::with_staleness_bound(Duration::from_secs(
        cfg.engine.staleness_bound_secs,
    )));
    let state = Arc::new(EngineState {
        instance_id: instance_id(&cfg),
        store: Arc::clone(&store),
        feed: Arc::clone(&feed_state),
        policy: Arc::new(ActivePolicy::new(policy)),
        assigned: Arc::default(),
        rollout: Arc::new(RolloutState::default()),
        shadow: shadow.map(Arc::new),
        snapshot,
        failure: Mutex::new(None),
    });

    let listener = admin::bind(&cfg.admin.listen).await?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| admin::AdminError::Bind {
            addr: cfg.admin.listen.clone(),
            source,
        })?;
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin::serve(
        listener,
        prometheus,
        state.clone() as Arc<dyn StatusSource>,
        admin_stop.clone(),
    ));

    // The change feed and the policy watcher stop with the root token (the
    // workers make no new decision while they drain), or when the workers
    // end on their own.
    let feed_stop = shutdown.child_token();
    let feed_task = {
        let (cfg, store, fs, dl, stop) = (
            cfg.clone(),
            Arc::clone(&store),
            Arc::clone(&feed_state),
            deadletters.clone(),
            feed_stop.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _up = TaskUp::new(Task::ChangeFeed);
            feed::run(&cfg, store, fs, dl, start_positions, stop)
        })
    };

    let faults = FaultInjection {
        policy_watcher_stop: feed_stop.child_token(),
        policy_watcher_panic: Arc::default(),
    };
    let policy_task = {
        let (cfg, active, st, stop, panic) = (
            cfg.clone(),
            Arc::clone(&state.policy),
            Arc::clone(&state.rollout),
            faults.policy_watcher_stop.clone(),
            Arc::clone(&faults.policy_watcher_panic),
        );
        tokio::task::spawn_blocking(move || {
            let _up = TaskUp::new(Task::PolicyWatcher);
            let r = rollout::run(&cfg, active, st, stop);
            if panic.load(Ordering::SeqCst) {
                panic!("policy watcher: injected fault");
            }
            r
        })
    };

    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        store,
        policy: Arc::clone(&state.policy),
        producer: producer.clone(),
        reply_producer: reply_producer.clone(),
        deadletters,
        instance_id: state.instance_id.clone(),
        assigned: Arc::clone(&state.assigned),
        feed: Arc::clone(&feed_state),
        shadow: state.shadow.clone(),
        replies: Default::default(),
    });
    let st = Arc::clone(&state);
    let join = tokio::spawn(async move {
        let result = supervise(
            shared,
            st,
            feed_task,
            policy_task,
            &feed_stop,
            shutdown.clone(),
        )
        .await;
        feed_stop.cancel();
        // Whatever else is queued (dead letters of the feed) goes out now.
        let p = producer.clone();
        let timeout = Duration::from_millis(cfg.engine.shutdown_timeout_ms);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = p.flush(timeout);
            if let Some(r) = reply_producer {
                let _ = r.flush(timeout);
            }
        })
        .await;
        admin_stop.cancel();
        tracing::info!("engine stopped");
        result
    });
    Ok(EngineHandle {
        admin_addr,
        state,
        join,
        faults,
    })
}

/// Start the workers once the feed and the policy topic have caught up,
/// and watch everything until the end. The change feed and the policy
/// watcher run as long as the engine: when either returns while the engine
/// is not shutting down, returns an error or panics, the engine is unhealthy
/// and unready at once ([`EngineState::fail`]), and stops (the workers drain
/// and commit): a restart reads the topics again.
async fn supervise(
    shared: Arc<Shared>,
    state: Arc<EngineState>,
    mut feed_task: JoinHandle<Result<(), feed::FeedError>>,
    mut policy_task: JoinHandle<Result<(), rollout::RolloutError>>,
    feed_stop: &CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    // Wait for the feed to catch up: no decision before that. Every way out
    // of this wait stops the feed and the policy watcher and waits for them:
    // the engine never returns while the feed thread is still running (it
    // writes the final snapshot on its way out).
    let catchup = shared.cfg.engine.feed_catchup_timeout_secs;
    let started = tokio::time::Instant::now();
    while !state.is_ready() {
        let early = if catchup > 0 && started.elapsed() > Duration::from_secs(catchup) {
            Err(EngineError::CatchupTimeout(catchup))
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => Ok(()),
                r = &mut feed_task => {
                    feed_stop.cancel();
                    let _ = policy_task.await;
                    return task_exit(&state, &shutdown, Task::ChangeFeed, r).map_or(Ok(()), Err);
                }
                r = &mut policy_task => {
                    feed_stop.cancel();
                    let _ = feed_task.await;
                    return task_exit(&state, &shutdown, Task::PolicyWatcher, r).map_or(Ok(()), Err);
                }
                e = kafka::auth_failed() => Err(EngineError::Kafka(e)),
                _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
            }
        };
        feed_stop.cancel();
        let _ = feed_task.await;
        let _ = policy_task.await;
        return early;
    }

    let mut workers = Vec::new();
    for w in 0..shared.cfg.engine.effective_workers() {
        let (sh, stop) = (Arc::clone(&shared), shutdown.clone());
        workers.push(tokio::task::spawn_blocking(move || {
            let r = pipeline::run_worker(sh, w, stop.clone());
            if r.is_err() {
                // One worker failed: stop the others too (they drain and commit).
                stop.cancel();
            }
            r
        }));
    }
    let all_workers = futures_join_all(workers);
    tokio::pin!(all_workers);
    let (mut feed_done, mut policy_done) = (false, false);
    let result = loop {
        let died = tokio::select! {
            r = &mut all_workers => break r,
            r = &mut feed_task, if !feed_done => {
                feed_done = true;
                task_exit(&state, &shutdown, Task::ChangeFeed, r)
            }
            r = &mut policy_task, if !policy_done => {
                policy_done = true;
                task_exit(&state, &shutdown, Task::PolicyWatcher, r)
            }
        };
        // A normal shutdown stops the feed and the watcher with the root
        // token: wait for the workers. A dead task stops the workers (they
        // drain and commit).
        if let Some(e) = died {
            shutdown.cancel();
            let _ = (&mut all_workers).await;
            break Err(e);
        }
    };
    feed_stop.cancel();
    if !feed_done {
        let _ = feed_task.await;
    }
    if !policy_done {
        let _ = policy_task.await;
    }
    if result.is_err() {
        shutdown.cancel();
    }
    result
}

/// What the end of the change feed or the policy watcher means: `None` for
/// a normal stop (it returned `Ok` while the engine shuts down); otherwise
/// the error, recorded as the engine's failure.
fn task_exit<E: Into<EngineError>>(
    state: &EngineState,
    shutdown: &CancellationToken,
    task: Task,
    r: Result<Result<(), E>, tokio::task::JoinError>,
) -> Option<EngineError> {
    let e = match r {
        Ok(Ok(())) if shutdown.is_cancelled() => return None,
        Ok(Ok(())) => EngineError::Task(format!("{} stopped unexpectedly", task.name())),
        Ok(Err(e)) => e.into(),
        Err(e) => EngineError::Task(format!("{}: {e}", task.name())),
    };
    state.fail(task, &e);
    Some(e)
}

/// Wait for every worker; the first error wins (the others are still
/// awaited, so every worker has drained and committed on return).
async fn futures_join_all(
    workers: Vec<JoinHandle<Result<(), pipeline::PipelineError>>>,
) -> Result<(), EngineError> {
    let mut first = Ok(());
    for w in workers {
        let r = match w.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Pipeline(e)),
            Err(e) => Err(EngineError::Task(e.to_string())),
        };
        if first.is_ok() {
            first = r;
        }
    }
    first
}
