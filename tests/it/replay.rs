//! `clearance replay` against the real broker: fidelity over a window with
//! a policy change, a tampered export, what-if, and the policy history
//! surviving compaction.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clearance::config::Config;
use clearance::event::Outcome;
use clearance::loadgen::{self, Subject};
use clearance::policy::{CompiledPolicy, EXAMPLE_POLICY};
use clearance::replay::{self, Mode, Origin, Window};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use time::OffsetDateTime;

use crate::harness::*;

/// The example policy as another version that also puts `haiku-4` under
/// the order.
fn haiku_in_order(version: &str) -> String {
    let text = EXAMPLE_POLICY
        .replace(
            "version = \"2026.12.1\"",
            &format!("version = \"{version}\""),
        )
        .replace(
            "\"haiku-4\" = { tags = [] }",
            "\"haiku-4\" = { tags = [\"order-2026-11\"] }",
        );
    assert_ne!(text, EXAMPLE_POLICY);
    assert!(text.contains("\"haiku-4\" = { tags = [\"order-2026-11\"] }"));
    text
}

/// Total of the high watermarks of `topic`.
fn written(topic: &str) -> i64 {
    loadgen::high_watermarks(&bootstrap(), topic)
        .expect("watermarks")
        .values()
        .sum()
}

async fn wait_written(topic: &str, n: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while written(topic) < n {
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {n} records after {secs} s",
            written(topic)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The configuration file a `clearance` child process reads.
fn write_config(cfg: &Config, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("replay.toml");
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    path
}

fn clearance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clearance")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Fidelity: 100,000 decisions in a window in which the policy changed
/// once (v2 also puts `haiku-4` under the order) replay 100% identically,
/// from the library and from the CLI (exit code 0); both versions occur.
/// A decision of a malformed request is counted as not replayable, not as
/// a difference. A JSONL copy with one outcome flipped is reported as a
/// difference, with exit code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fidelity_window_with_a_policy_change_replays_identically() {
    let cfg = test_config("replay");
    create_topics(&cfg).await;
    let subjects: Vec<Subject> = (0..500).map(|i| loadgen::subject("rp", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let from = OffsetDateTime::now_utc() - time::Duration::seconds(1);

    const N: usize = 100_000;
    const HALF: usize = N / 2;
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "rp", 0..HALF),
    );
    // One malformed request (its id can be read): a deny with no inputs.
    publish_raw(
        &p,
        &cfg.topics.requests,
        &[(
            b"x".to_vec(),
            br#"{"request_id":"rp-malformed","model":"fable-5"}"#.to_vec(),
        )],
    );
    wait_written(&cfg.topics.decisions, (HALF + 1) as i64, 300).await;
    let v2 = haiku_in_order("2026.12.2");
    clearance::rollout::publish_text(&cfg, &v2, "v2.toml")
        .await
        .expect("publish v2");
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine_status(&h).await["policy"]["version"] != "2026.12.2" {
        assert!(Instant::now() < deadline, "v2 never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "rp", HALF..N),
    );
    wait_written(&cfg.topics.decisions, (N + 1) as i64, 300).await;
    stop_engine(h, stop).await;

    // The library: read the window, replay it with the recorded versions.
    let window = Window::Times { from, to: None };
    let t = Instant::now();
    let records = tokio::task::block_in_place(|| replay::read_window(&cfg, &window))
        .expect("read the window");
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(records.len(), N + 1, "every decision of the window");
    let mut history =
        clearance::rollout::read_history(&cfg, Duration::from_secs(30)).expect("policy history");
    // The engine's file policy (the shipped example) is v1.
    history.add(CompiledPolicy::example(), "policy.file");
    let t = Instant::now();
    let report =
        replay::replay_source::<()>(Mode::Fidelity(Arc::new(history)), 2, &mut |_| {}, |sink| {
            for r in &records {
                sink(r.origin, &r.bytes);
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{report}(debug build: read {} decisions in {read_s:.1} s, replayed in {:.1} s)",
        records.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(report.read, (N + 1) as u64);
    assert_eq!(report.replayed, N as u64);
    assert_eq!(report.identical, N as u64, "100% identical");
    assert_eq!(report.different, 0, "{:?}", report.changes.first());
    assert_eq!(report.not_replayable_malformed, 1);
    assert!(report.bad.is_empty(), "{:?}", report.bad.first());
    assert!(report.clean());
    assert!(
        report
            .by_policy
            .get("example@2026.12.1")
            .copied()
            .unwrap_or(0)
            > 0
            && report
                .by_policy
                .get("example@2026.12.2")
                .copied()
                .unwrap_or(0)
                > 0,
        "both versions occur in the window: {:?}",
        report.by_policy
    );
    // v2 really changed decisions: haiku-4 is denied to restricted nationals.
    let denied_haiku_v2 = records
        .iter()
        .filter_map(|r| r.decode().ok())
        .filter(|d| {
            d.versions.policy_version == "2026.12.2"
                && d.inputs
                    .as_ref()
                    .is_some_and(|i| i.request.model == "haiku-4")
                && d.outcome == Outcome::Deny
                && d.reasons.iter().any(|r| r == "restricted_nationality")
        })
        .count();
    assert!(denied_haiku_v2 > 0, "v2's rule change shows in the window");

    // The CLI says so, exit code 0.
    let dir = std::env::temp_dir().join(unique("clearance-replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = write_config(&cfg, &dir);
    let out = tokio::task::block_in_place(|| {
        clearance(&[
            "replay",
            "--config",
            conf.to_str().unwrap(),
            "--from",
            &rfc3339(from),
        ])
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "result: {N} of {N} replayable decisions identical (100%)"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("example@2026.12.2"), "{stdout}");

    // A JSONL copy with one outcome flipped: one difference, exit code 1.
    let mut lines: Vec<String> = records
        .iter()
        .take(2_000)
        .map(|r| String::from_utf8(r.bytes.clone()).unwrap())
        .collect();
    let victim = lines
        .iter()
        .position(|l| l.contains("\"outcome\":\"allow\""))
        .expect("an allow");
    let victim_id = records[victim].decode().unwrap().request_id;
    lines[victim] = lines[victim].replacen("\"outcome\":\"allow\"", "\"outcome\":\"deny\"", 1);
    let export = dir.join("tampered.jsonl");
    std::fs::write(&export, lines.join("\n") + "\n").unwrap();
    let diff = dir.join("diff.jsonl");
    let out = tokio::task::block_in_place(|| {
        clearance(&[
            "replay",
            "--config",
            conf.to_str().unwrap(),
            "--input",
            export.to_str().unwrap(),
            "--out",
            diff.to_str().unwrap(),
        ])
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("NOT identical: 1 different"), "{stdout}");
    assert!(stdout.contains(&victim_id), "{stdout}");
    let written = std::fs::read_to_string(&diff).unwrap();
    assert_eq!(written.lines().count(), 1, "{written}");
    let change: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
    assert_eq!(change["request_id"], victim_id.as_str());
    assert_eq!(change["fields"], serde_json::json!(["outcome"]));
    assert_eq!(change["origin"]["line"], victim + 1);
    assert_eq!(change["recorded"]["outcome"], "deny");
    assert_eq!(change["replayed"]["outcome"], "allow");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What-if: a candidate that puts `haiku-4` under the order. The subjects
/// who lose access are exactly the ones the test derives from the
/// synthetic categories (allowed an untagged model, denied a controlled
/// one) among those who asked for `haiku-4`; nobody gains access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_lists_who_loses_access() {
    let cfg = test_config("whatif");
    create_topics(&cfg).await;
    let subjects: Vec<Subject> = (0..300).map(|i| loadgen::subject("wi", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    const N: usize = 6_000;
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "wi", 0..N),
    );
    wait_written(&cfg.topics.decisions, N as i64, 180).await;
    stop_engine(h, stop).await;

    // Computed from the test's own data: who asked for haiku-4, and whose
    // category is allowed an untagged model but denied a controlled one.
    let expected: BTreeSet<String> = (0..N)
        .filter(|i| loadgen::model_for(*i) == loadgen::UNTAGGED_MODEL)
        .map(|i| &subjects[i % subjects.len()])
        .filter(|s| {
            s.category.expected(loadgen::UNTAGGED_MODEL) == Outcome::Allow
                && s.category.expected(loadgen::TAGGED_MODEL) == Outcome::Deny
        })
        .map(|s| s.id.clone())
        .collect();
    assert!(!expected.is_empty());

    let records = tokio::task::block_in_place(|| {
        let ends = loadgen::high_watermarks(&bootstrap(), &cfg.topics.decisions).unwrap();
        let ranges = ends
            .iter()
            .map(|(p, end)| replay::PartitionRange {
                partition: *p,
                start: 0,
                end: *end,
            })
            .collect();
        replay::read_window(&cfg, &Window::Offsets(ranges))
    })
    .expect("read");
    assert_eq!(records.len(), N);
    let cand = haiku_in_order("2026.12.9");
    let policy = Arc::new(CompiledPolicy::from_toml_str(&cand, "candidate.toml").unwrap());
    let decisions: Vec<_> = records.iter().map(|r| r.decode().unwrap()).collect();
    let report = replay::replay_all(Mode::WhatIf(policy), &decisions);
    eprintln!("{report}");
    assert_eq!(report.what_if.lose_access, expected);
    assert!(report.what_if.gain_access.is_empty());
    assert_eq!(
        report.what_if.by_model.keys().collect::<Vec<_>>(),
        ["haiku-4"],
        "only haiku-4 decisions change"
    );
    assert!(report.bad.is_empty());
    for c in &report.changes {
        assert!(matches!(c.origin, Origin::Index(_)));
    }

    // The CLI: same lists, the changes as CSV, exit code 1.
    let dir = std::env::temp_dir().join(unique("clearance-whatif"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = write_config(&cfg, &dir);
    let cand_path = dir.join("candidate.toml");
    std::fs::write(&cand_path, &cand).unwrap();
    let csv = dir.join("changes.csv");
    let offsets = loadgen::high_watermarks(&bootstrap(), &cfg.topics.decisions)
        .unwrap()
        .iter()
        .map(|(p, e)| format!("{p}:0-{e}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = tokio::task::block_in_place(|| {
        clearance(&[
            "replay",
            "--config",
            conf.to_str().unwrap(),
            "--offsets",
            &offsets,
            "--policy",
            cand_path.to_str().unwrap(),
            "--out",
            csv.to_str().unwrap(),
        ])
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "subjects who lose access (allow -> deny): {}",
            expected.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("subjects who gain access (deny -> allow): 0"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), report.changes.len() + 1);
    assert!(text.starts_with("origin,request_id,subject_id,model"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The policy history survives compaction: three versions of one policy
/// id on a topic compacted as eagerly as the broker allows; one version is
/// published twice, and once the older copy of it is gone (the cleaner
/// ran), `read_history` still finds every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_history_survives_compaction() {
    let cfg = test_config("history");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topic = NewTopic::new(&cfg.topics.policy, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "100")
        .set("min.compaction.lag.ms", "0");
    let r = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create the policy topic");
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    create_topics(&cfg).await; // the others; the policy topic stays as created

    let v = |n: u32| {
        EXAMPLE_POLICY.replace(
            "version = \"2026.12.1\"",
            &format!("version = \"2026.12.{n}\""),
        )
    };
    let mut v2_offsets = Vec::new();
    for (n, text) in [(1, v(1)), (2, v(2)), (2, v(2)), (3, v(3))] {
        let published = clearance::rollout::publish_text(&cfg, &text, &format!("v{n}.toml"))
            .await
            .expect("publish");
        if n == 2 {
            v2_offsets.push(published.offset);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (older, newer) = (v2_offsets[0], v2_offsets[1]);
    // Keys of the records still on the topic.
    let keys = |cfg: &Config| -> Vec<(i64, String)> {
        let c = reader(&cfg.topics.policy);
        let (_, high) = c
            .fetch_watermarks(&cfg.topics.policy, 0, Duration::from_secs(10))
            .unwrap();
        let reads = read_until(&c, Duration::from_secs(10), |r| {
            r.last().is_some_and(|l| l.offset + 1 >= high)
        });
        reads
            .iter()
            .map(|r| {
                let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default());
                (r.offset, key.to_string())
            })
            .collect()
    };
    // Keep rolling segments (a record more every 200 ms, the latest version
    // again) until the cleaner has removed the older copy of 2026.12.2.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut fillers = 0;
    loop {
        let ks = tokio::task::block_in_place(|| keys(&cfg));
        let v2: Vec<i64> = ks
            .iter()
            .filter(|(_, k)| k == "example@2026.12.2")
            .map(|(o, _)| *o)
            .collect();
        if v2 == [newer] {
            // The older copy is gone: the cleaner ran.
            assert!(!ks.iter().any(|(o, _)| *o == older));
            eprintln!("compacted after {fillers} more records: keys now {ks:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log cleaner never compacted the policy topic: {ks:?}"
        );
        clearance::rollout::publish_text(&cfg, &v(3), "v3.toml")
            .await
            .unwrap();
        fillers += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = tokio::task::block_in_place(|| {
        clearance::rollout::read_history(&cfg, Duration::from_secs(30))
    })
    .expect("read history");
    for n in 1..=3 {
        let text = v(n);
        let digest = clearance::policy::digest(&text);
        let p = history
            .get("example", &format!("2026.12.{n}"), &digest)
            .unwrap_or_else(|e| panic!("version 2026.12.{n}: {e}"));
        assert_eq!(p.digest, digest);
    }
    assert_eq!(history.len(), 3, "{:?}", history.versions());
    assert!(history.invalid.is_empty());
}
