//! `clearance demo`: the whole pipeline on synthetic data, in one command.
//!
//! With `--bootstrap` it uses that broker, creating its topics first (a
//! broker need not create them on first use). Without, it starts librdkafka's
//! in-process mock cluster (`rdkafka::mocking`): good enough for a demo,
//! never used by the acceptance tests (it has no admin API, keeps about 100k
//! messages per partition, and its transactions are not real).
//!
//! Every record it publishes is confirmed delivered
//! ([`loadgen::confirm_delivery`]): an undelivered one ends the demo with an
//! error naming the topic, instead of wrong answers later.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine;
use crate::event::{Decision, EligibilityRecord, Revocation};
use crate::loadgen::{self, Category, LoadOptions};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// An existing broker; `None` starts the mock cluster.
    pub bootstrap: Option<String>,
    /// Synthetic subjects.
    pub subjects: usize,
    /// Requests.
    pub requests: usize,
    /// Admin listen address.
    pub admin_listen: String,
    /// Keep serving after the demo until Ctrl-C.
    pub hold: bool,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// Load generation failed.
    #[error(transparent)]
    Loadgen(#[from] loadgen::LoadgenError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The demo's topics could not be created.
    #[error(transparent)]
    Topics(#[from] crate::kafka::KafkaBoundaryError),
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
}

/// Run the demo; prints to stdout.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let run_id = format!("demo{}-", std::process::id());
    let mut cfg = Config::default();
    cfg.admin.listen = opts.admin_listen.clone();
    cfg.kafka.group_id = format!("clearance-{run_id}");
    let _mock: Option<MockCluster<'static, DefaultProducerContext>>;
    match &opts.bootstrap {
        Some(b) => {
            println!("== broker: {b}");
            cfg.kafka.bootstrap_servers = b.clone();
            _mock = None;
            // Before anything is published: a broker need not create
            // topics on first use (ours do not).
            let created = crate::kafka::create_topics(&cfg.kafka, &cfg.topics).await?;
            if !created.is_empty() {
                println!("   created topics: {}", created.join(", "));
            }
        }
        None => {
            let mock = MockCluster::new(1)?;
            for t in [
                &cfg.topics.requests,
                &cfg.topics.eligibility,
                &cfg.topics.decisions,
                &cfg.topics.deadletter,
            ] {
                mock.create_topic(t, cfg.topics.partitions, 1)?;
            }
            mock.create_topic(&cfg.topics.policy, 1, 1)?;
            // Step 2b's reply topic (the mock cluster has no admin API).
            mock.create_topic(&crate::latency::reply_topic(&cfg), 2, 1)?;
            cfg.kafka.bootstrap_servers = mock.bootstrap_servers();
            cfg.topics.create_missing = false;
            // The mock cluster answers a fetch only when fetch.wait.max.ms
            // (500 ms by default) is up, not when data arrives as a broker
            // does: wait less, or step 2b would measure that wait.
            cfg.kafka
                .properties
                .insert("fetch.wait.max.ms".into(), "5".into());
            println!(
                "== broker: librdkafka mock cluster at {} (in-process; pass --bootstrap HOST:PORT for a real one)",
                cfg.kafka.bootstrap_servers
            );
            _mock = Some(mock);
        }
    }
    let bootstrap = cfg.kafka.bootstrap_servers.clone();

    // 1. The eligibility feed.
    println!(
        "\n== 1. eligibility feed: publishing {} synthetic subjects",
        opts.subjects
    );
    let producer = loadgen::data_producer_for(&cfg.kafka)?;
    let subjects: Vec<loadgen::Subject> = (0..opts.subjects)
        .map(|i| loadgen::subject(&run_id, i))
        .collect();
    let records: Vec<EligibilityRecord> = subjects
        .iter()
        .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
        .collect();
    tokio::task::block_in_place(|| {
        loadgen::publish_eligibility(&producer, &cfg.topics.eligibility, &records)
    })?;
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for s in &subjects {
        *mix.entry(format!("{:?}", s.category)).or_default() += 1;
    }
    for (c, n) in &mix {
        println!("   {c:26} {n}");
    }

    let engine_stop = shutdown.child_token();
    let handle = engine::start(cfg.clone(), engine_stop.clone()).await?;
    let admin = handle.admin_addr;
    let targets = loadgen::high_watermarks(&bootstrap, &cfg.topics.eligibility)?;
    let t0 = std::time::Instant::now();
    loadgen::wait_for_feed(admin, &targets, Duration::from_secs(60)).await?;
    println!(
        "   engine ready after applying the feed: {} users in the cache ({:.2} s)",
        handle.state.store.user_count(),
        t0.elapsed().as_secs_f64()
    );

    // 2. Decisions flowing: a burst, then paced request/reply.
    println!(
        "\n== 2. decisions: a burst of {} mixed requests, sent at once",
        opts.requests
    );
    let report = loadgen::run(LoadOptions {
        kafka: cfg.kafka.clone(),
        requests_topic: cfg.topics.requests.clone(),
        decisions_topic: cfg.topics.decisions.clone(),
        eligibility_topic: cfg.topics.eligibility.clone(),
        requests: opts.requests,
        rate: None,
        subjects: opts.subjects,
        seed: false,
        send: true,
        admin: Some(admin),
        timeout: Duration::from_secs(120),
        run_id: run_id.clone(),
    })
    .await?;
    println!(
        "   {} decisions in {:.2} s: {:.0} decisions/s (a backlog drained; each request waits for those before it)",
        report.decided,
        report.elapsed_secs,
        report.throughput()
    );
    for ((o, r), n) in &report.by_reason {
        println!("     {o:5} {r:28} {n}");
    }
    println!(
        "   outcomes differing from the expected: {}",
        report.mismatches
    );
    let rate = 200;
    println!(
        "\n== 2b. what a frontend sees: request/reply through clearance::client, {rate} requests/s paced"
    );
    let lat = crate::latency::run(crate::latency::LatencyOptions {
        cfg: cfg.clone(),
        rate,
        duration: Duration::from_secs(3),
        subjects: opts.subjects,
        run_id: run_id.clone(),
        seed: false,
        linger_ms: 0,
        echo: false,
        freshness: false,
        rounds: 1,
        call_timeout: Duration::from_secs(2),
        admin: Some(admin),
    })
    .await?;
    if let Some(p) = lat.phases.first() {
        println!(
            "   round trip, from each request's scheduled send to its decision on the reply topic: {}",
            p.round_trip
        );
        println!(
            "   ({} answered, {} timed out; a debug build on a shared machine: release figures and the echo baseline are in BENCHMARKS.md)",
            p.answered, p.timeouts
        );
    }

    // 3. A policy denial with its reasons.
    println!("\n== 3. a policy denial, with its reasons and versions");
    let cn = subjects
        .iter()
        .find(|s| s.category == Category::ChineseH1b)
        .cloned()
        .ok_or_else(|| DemoError::Timeout("no ChineseH1b subject (use more --subjects)".into()))?;
    let d = one_decision(
        &bootstrap,
        &cfg,
        &producer,
        &cn,
        "demo-deny",
        loadgen::TAGGED_MODEL,
    )
    .await?;
    print_decision(&d);

    // 4. A revocation.
    println!("\n== 4. a revocation on the change feed");
    let us = subjects
        .iter()
        .find(|s| s.category == Category::UsCitizen)
        .cloned()
        .ok_or_else(|| DemoError::Timeout("no UsCitizen subject".into()))?;
    let before = one_decision(
        &bootstrap,
        &cfg,
        &producer,
        &us,
        "demo-before",
        loadgen::TAGGED_MODEL,
    )
    .await?;
    println!(
        "   {} asks for {}: {} {:?}",
        us.id,
        loadgen::TAGGED_MODEL,
        before.outcome.as_str(),
        before.reasons
    );
    if let Some(mut rec) = us.record.clone() {
        rec.version += 1;
        rec.revocation = Some(Revocation {
            revoked_at: OffsetDateTime::now_utc(),
            reason: Some("demo: compliance revoked access".into()),
        });
        tokio::task::block_in_place(|| {
            loadgen::publish_eligibility(
                &producer,
                &cfg.topics.eligibility,
                &[EligibilityRecord::User(rec)],
            )
        })?;
        let targets = loadgen::high_watermarks(&bootstrap, &cfg.topics.eligibility)?;
        loadgen::wait_for_feed(admin, &targets, Duration::from_secs(30)).await?;
        println!("   revocation (version 2) applied by the engine");
    }
    let after = one_decision(
        &bootstrap,
        &cfg,
        &producer,
        &us,
        "demo-after",
        loadgen::TAGGED_MODEL,
    )
    .await?;
    println!(
        "   {} asks again: {} {:?}",
        us.id,
        after.outcome.as_str(),
        after.reasons
    );

    // 5. Metrics.
    println!("\n== 5. metrics at http://{admin}/metrics (also /healthz, /readyz, /status; the live status page at http://{admin}/)");
    if let Ok((_, body)) = crate::admin::get(admin, "/metrics").await {
        for line in body
            .lines()
            .filter(|l| {
                l.starts_with("clearance_decisions_total")
                    || l.starts_with("clearance_eligibility_records")
            })
            .take(12)
        {
            println!("   {line}");
        }
    }
    if opts.hold {
        println!("\n(serving; Ctrl-C to stop)");
        shutdown.cancelled().await;
    }
    engine_stop.cancel();
    handle
        .join
        .await
        .map_err(|e| DemoError::Timeout(e.to_string()))??;
    println!("\n== done: engine drained, committed and stopped");
    Ok(())
}

async fn one_decision(
    bootstrap: &str,
    cfg: &Config,
    producer: &loadgen::DataProducer,
    s: &loadgen::Subject,
    id: &str,
    model: &str,
) -> Result<Decision, DemoError> {
    let reader = loadgen::decision_reader(bootstrap, &cfg.topics.decisions)?;
    let request_id = format!("{id}-{}", std::process::id());
    let req = loadgen::request(s, request_id.clone(), model);
    let body = serde_json::to_vec(&req).unwrap_or_default();
    loadgen::send_blocking(producer, &cfg.topics.requests, s.id.as_bytes(), Some(&body))?;
    tokio::task::block_in_place(|| loadgen::confirm_delivery(producer))?;
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                if let Some(Ok(d)) = m.payload().map(serde_json::from_slice::<Decision>) {
                    if d.request_id == request_id {
                        return Ok(d);
                    }
                }
            }
        }
        reader.unsubscribe();
        Err(DemoError::Timeout(format!("no decision for {request_id}")))
    })
}

fn print_decision(d: &Decision) {
    let summary = serde_json::json!({
        "request_id": d.request_id,
        "outcome": d.outcome,
        "reasons": d.reasons,
        "rule_ids": d.rule_ids,
        "legal_basis": d.legal_basis,
        "obligations": d.obligations,
        "versions": d.versions,
        "subject": d.inputs.as_ref().and_then(|i| i.subject.as_ref()).map(|s| serde_json::json!({
            "id": s.id, "us_person_status": s.us_person_status, "citizenships": s.citizenships,
        })),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
}
