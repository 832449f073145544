//! Invariants of ARCHITECTURE.md that the rest of the suite let through
//! when each was broken on purpose, defended end to end: a policy is
//! swapped whole (decisions during a rollout that changes a rule), no
//! request is decided before the eligibility store has caught up (the
//! change feed held back), and an offset is stored only after its
//! decision is delivered (deliveries held back across commits and a
//! SIGKILL).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use clearance::decide::{decide, Eligibility};
use clearance::event::{Decision, EligibilityRecord, Outcome};
use clearance::loadgen;
use clearance::policy::CompiledPolicy;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::harness::*;

const EXAMPLE: &str = include_str!("../../policies/example.toml");

/// Decide `d` again from its recorded inputs with `policy`.
fn replay(policy: &CompiledPolicy, d: &Decision) -> clearance::decide::Verdict {
    let inputs = d.inputs.as_ref().expect("a decision records its inputs");
    decide(
        policy,
        &Eligibility {
            subject: inputs.subject.as_deref(),
            organization: inputs.organization.as_deref(),
            data_stale: false,
            owners: &inputs.owners,
        },
        &inputs.request,
    )
}

/// "A policy is swapped whole", end to end: v2 changes a rule (haiku-4
/// becomes controlled) and is published while requests flow. Every
/// decision, replayed with the policy of the version it names from its
/// recorded inputs, gives the same outcome, reasons and rule ids; both
/// versions decide, and both decide requests on which they disagree.
/// (A rollout whose v2 equals v1 cannot tell which policy decided.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_decisions_match_the_policy_they_name() {
    let cfg = test_config("whole");
    create_topics(&cfg).await;
    let subjects: Vec<_> = (0..200).map(|i| loadgen::subject("wh", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);

    let v1 = CompiledPolicy::from_toml_str(EXAMPLE, "v1.toml").expect("v1");
    let v2_text = EXAMPLE
        .replacen("version = \"2026.12.1\"", "version = \"2026.12.7\"", 1)
        .replacen(
            "\"haiku-4\" = { tags = [] }",
            "\"haiku-4\" = { tags = [\"order-2026-11\"] }",
            1,
        );
    let v2 = CompiledPolicy::from_toml_str(&v2_text, "v2.toml").expect("v2");
    let policies: BTreeMap<String, &CompiledPolicy> =
        [(v1.version.clone(), &v1), (v2.version.clone(), &v2)].into();

    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let s = engine_status(&h).await;
    assert_eq!(s["policy"]["version"], v1.version.as_str(), "{s}");

    const N: usize = 30_000;
    const EARLY: usize = 2_000;
    const HALF: usize = N / 2;
    let batch = |range| request_batch(&subjects, "wh", range);
    let c = reader(&cfg.topics.decisions);
    // Some decisions surely on v1: the first batch is decided before v2 is
    // published.
    publish_raw(&p, &cfg.topics.requests, &batch(0..EARLY));
    let mut reads = tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(120), |r| r.len() >= EARLY)
    });
    assert!(reads.len() >= EARLY, "{} early decisions", reads.len());
    // The next ones flow while v2 is published.
    let sender = {
        let b = batch(EARLY..HALF);
        let topic = cfg.topics.requests.clone();
        std::thread::spawn(move || publish_raw(&producer(), &topic, &b))
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    clearance::rollout::publish_text(&cfg, &v2_text, "v2.toml")
        .await
        .expect("publish v2");
    wait_status(&h, "v2 active", Duration::from_secs(120), |s| {
        s["policy"]["version"] == v2.version.as_str()
    })
    .await;
    sender.join().unwrap();
    // Surely on v2: produced after the engine reported v2 active.
    publish_raw(&p, &cfg.topics.requests, &batch(HALF..N));

    reads.extend(tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(300), |r| r.len() >= N - EARLY)
    }));
    let ds = decisions(&reads);
    let ids: HashSet<&str> = ds.iter().map(|d| d.request_id.as_str()).collect();
    assert_eq!(ids.len(), N, "every request decided");

    // version -> (decisions, decisions on which v1 and v2 disagree)
    let mut named: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for d in &ds {
        let version = d.versions.policy_version.as_str();
        let policy = policies
            .get(version)
            .unwrap_or_else(|| panic!("{}: unknown version {version}", d.request_id));
        let again = replay(policy, d);
        let reasons: Vec<String> = again.reasons.iter().map(|r| r.to_string()).collect();
        let what = format!("{} (naming {version})", d.request_id);
        assert_eq!(d.outcome, again.outcome, "{what}: outcome, {:?}", d.reasons);
        assert_eq!(d.reasons, reasons, "{what}: reasons");
        assert_eq!(d.rule_ids, again.rule_ids, "{what}: rule ids");
        assert_eq!(d.versions.policy_id, policy.id, "{what}: policy id");
        assert_eq!(
            d.versions.data_version, policy.data_version,
            "{what}: data version"
        );
        let e = named.entry(version.to_string()).or_default();
        e.0 += 1;
        if replay(&v1, d).outcome != replay(&v2, d).outcome {
            e.1 += 1;
        }
    }
    for v in [&v1.version, &v2.version] {
        let (n, disputed) = named.get(v).copied().unwrap_or_default();
        assert!(
            disputed > 0,
            "version {v} decided {n} requests, {disputed} of them ones v1 and v2 disagree on: \
             the test needs both versions to decide such requests ({named:?})"
        );
    }
    eprintln!("rollout with a rule change: (decisions, disputed) by version {named:?}");
    stop_engine(h, stop).await;
}

/// The members of consumer group `group` on the shared broker (`None`
/// when the broker did not answer in time).
fn group_members(group: &str) -> Option<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("client");
    let list = c
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .map_err(|e| eprintln!("group list of {group}: {e}"))
        .ok()?;
    Some(
        list.groups()
            .iter()
            .filter(|g| g.name() == group)
            .map(|g| g.members().len())
            .sum(),
    )
}

/// "No request is decided before the eligibility store has caught up":
/// the change feed lives on a broker of its own, stopped before the
/// engine starts, while requests wait on the shared broker. For a few
/// seconds after the policy topic has been read (the feed is then the only
/// thing the engine waits for), `/readyz` is 503, no request partition is
/// assigned, the consumer group has no member, and nothing is decided.
/// Once the feed's broker is back, the engine catches up, turns ready, and
/// decides every request with the records of the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_assigned_or_decided_while_the_feed_is_held_back() {
    let feed = tokio::task::block_in_place(PrivateBroker::up);
    let mut cfg = test_config("held-feed");
    cfg.kafka.feed_bootstrap_servers = Some(feed.bootstrap.clone());
    create_topics(&cfg).await;
    let mut feed_kafka = cfg.kafka.clone();
    feed_kafka.bootstrap_servers = feed.bootstrap.clone();
    clearance::kafka::create_topics(&feed_kafka, &cfg.topics)
        .await
        .expect("topics on the feed's broker");

    // U.S. citizens: allowed the controlled model with their record,
    // denied without one.
    let citizens: Vec<_> = (0..100)
        .map(|i| loadgen::subject("hf", i))
        .filter(|s| s.category == loadgen::Category::UsCitizen)
        .collect();
    assert_eq!(citizens.len(), 10);
    let fp = loadgen::data_producer(&feed.bootstrap).expect("producer");
    let recs: Vec<_> = citizens
        .iter()
        .map(|s| EligibilityRecord::User(s.record.clone().unwrap()))
        .collect();
    loadgen::publish_eligibility(&fp, &cfg.topics.eligibility, &recs).expect("publish");
    drop(fp);
    tokio::task::block_in_place(|| feed.stop());

    let requests: Vec<_> = citizens
        .iter()
        .map(|s| {
            let r = loadgen::request(s, format!("hf-{}", s.id), loadgen::TAGGED_MODEL);
            (s.id.as_bytes().to_vec(), serde_json::to_vec(&r).unwrap())
        })
        .collect();
    publish_raw(&producer(), &cfg.topics.requests, &requests);
    let c = reader(&cfg.topics.decisions);

    let (h, stop) = start_engine(&cfg).await;
    // The policy topic is on the shared broker: once it has been read, the
    // feed is all the engine waits for.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !h.state.rollout.is_ready() {
        assert!(Instant::now() < deadline, "the policy topic was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The claim: nothing happens for a few seconds.
    let hold = Instant::now() + Duration::from_secs(6);
    let (mut checks, mut group_checks) = (0, 0);
    while Instant::now() < hold {
        let (code, _) = clearance::admin::get(h.admin_addr, "/readyz")
            .await
            .expect("GET /readyz");
        assert_eq!(code, 503, "ready while the change feed is held back");
        let s = engine_status(&h).await;
        assert_eq!(
            s["assigned_partitions"],
            serde_json::json!([]),
            "request partitions assigned before the feed caught up: {s}"
        );
        let members = tokio::task::block_in_place(|| group_members(&cfg.kafka.group_id));
        assert!(
            members.unwrap_or(0) == 0,
            "the workers joined the consumer group before the feed caught up: {members:?} members"
        );
        group_checks += usize::from(members.is_some());
        let early =
            tokio::task::block_in_place(|| read_until(&c, Duration::from_millis(300), |_| false));
        assert!(
            early.is_empty(),
            "decided before the feed caught up: {:?}",
            decisions(&early)
                .iter()
                .map(|d| (&d.request_id, d.outcome, &d.reasons))
                .collect::<Vec<_>>()
        );
        checks += 1;
    }
    assert!(checks >= 3, "only {checks} checks while held back");
    assert!(
        group_checks >= 1,
        "the consumer group could never be listed"
    );

    let released = time::OffsetDateTime::now_utc();
    tokio::task::block_in_place(|| feed.start());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, _) = clearance::admin::get(h.admin_addr, "/readyz")
            .await
            .expect("GET /readyz");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 120 s after the feed's broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ds = decisions(&tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(120), |r| r.len() >= citizens.len())
    }));
    let first = first_by_request(&ds);
    assert_eq!(first.len(), citizens.len(), "every request decided");
    for d in first.values() {
        assert!(
            d.decided_at >= released,
            "{} decided at {} before the feed was released at {released}",
            d.request_id,
            d.decided_at
        );
        assert_eq!(
            d.versions.subject.as_ref().map(|v| v.version),
            Some(1),
            "{} decided with the feed's record",
            d.request_id
        );
        assert_eq!(
            d.outcome,
            Outcome::Allow,
            "{}: {:?}",
            d.request_id,
            d.reasons
        );
    }
    stop_engine(h, stop).await;
}

/// The value of the unlabelled metric `name` in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The group's committed offsets on the request topic (partition ->
/// offset; partitions without a committed offset are left out).
fn committed(cfg: &clearance::config::Config) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..cfg.topics.partitions {
        tpl.add_partition(&cfg.topics.requests, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// "An offset is stored only after its decision is delivered", end to end:
/// an engine whose producer holds every decision back (a linger of ten
/// minutes) consumes and decides all the requests, auto-commits for many
/// commit intervals, and is SIGKILLed with its decisions still queued. A
/// new instance then decides every request: none was committed as done
/// while its decision was only decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_held_back_across_commits_and_a_kill_are_not_lost() {
    let mut cfg = test_config("held-out");
    create_topics(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-held-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let subjects: Vec<_> = (0..50).map(|i| loadgen::subject("ho", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    // Few, small decisions: no batch fills up, so only the linger would
    // send them.
    const N: usize = 60;
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "ho", 0..N),
    );

    let base_id = cfg.engine.instance_id.clone();
    let mut held = cfg.clone();
    held.engine.instance_id = format!("{base_id}-held");
    held.engine.producer_linger_ms = 600_000;
    let (mut child, admin) = spawn_engine_with_admin(&held, &dir, "held");
    // Every request decided and waiting for its delivery.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        if let Ok((_, text)) = clearance::admin::get(admin, "/metrics").await {
            if metric(&text, "clearance_in_flight_messages") == Some(N as f64) {
                break;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "the held-back engine did not decide all {N} requests:\n{last}"
        );
        assert!(child.try_wait().unwrap().is_none(), "the engine exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Many commit intervals pass with every decision undelivered.
    tokio::time::sleep(Duration::from_millis(10 * cfg.engine.commit_interval_ms)).await;
    let c = reader(&cfg.topics.decisions);
    let leaked = tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(1), |_| false));
    assert!(
        leaked.is_empty(),
        "{} decisions were delivered: the deliveries were not held back, the test proves nothing",
        leaked.len()
    );
    let committed_while_held = tokio::task::block_in_place(|| committed(&cfg));
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    cfg.engine.instance_id = format!("{base_id}-after");
    let mut child = spawn_engine(&cfg, &dir, "after");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut from_held = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < N && Instant::now() < deadline {
        let reads =
            tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(2), |_| false));
        for d in decisions(&reads) {
            if d.engine_instance == held.engine.instance_id {
                from_held += 1;
            }
            seen.insert(d.request_id);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("ho-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a decision after the kill (their offsets were committed while \
         their decisions were still held back; committed then: {committed_while_held:?}): {missing:?}"
    );
    assert_eq!(
        from_held, 0,
        "the killed instance's decisions were never delivered"
    );
    assert!(
        committed_while_held.values().all(|o| *o <= 0),
        "offsets committed while every decision was held back: {committed_while_held:?}"
    );
}
