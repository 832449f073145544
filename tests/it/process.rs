//! The engine as a child process: SIGKILL in the middle of a load, restart,
//! and the CLI's handling of bad configuration.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use clearance::loadgen;

use crate::harness::*;

/// Kill and restart: SIGKILL in the middle of 50,000 requests, restart,
/// and every request has at least one decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_loses_no_request() {
    let mut cfg = test_config("kill");
    cfg.admin.listen = "127.0.0.1:0".into();
    create_topics(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-kill"));
    std::fs::create_dir_all(&dir).unwrap();

    let subjects: Vec<_> = (0..500).map(|i| loadgen::subject("kl", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);

    const N: usize = 50_000;
    let batch = request_batch(&subjects, "kl", 0..N);
    publish_raw(&p, &cfg.topics.requests, &batch);

    let c = reader(&cfg.topics.decisions);
    let mut seen: HashSet<String> = HashSet::new();
    let mut total = 0usize;
    let mut absorb = |reads: Vec<Read>, seen: &mut HashSet<String>| {
        for d in decisions(&reads) {
            total += 1;
            seen.insert(d.request_id);
        }
    };

    let mut child = spawn_engine(&cfg, &dir, "engine");
    // Kill it once it is well into the load.
    let reads = tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(180), |r| r.len() >= N / 4)
    });
    absorb(reads, &mut seen);
    assert!(
        seen.len() >= N / 4,
        "engine made progress before the kill: {}",
        seen.len()
    );
    assert!(seen.len() < N, "killed in the middle, not after the end");
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    let at_kill = seen.len();

    let mut child = spawn_engine(&cfg, &dir, "engine");
    let deadline = Instant::now() + Duration::from_secs(240);
    while seen.len() < N && Instant::now() < deadline {
        let reads = tokio::task::block_in_place(|| {
            read_until(&c, Duration::from_secs(5), |r| r.len() >= 5_000)
        });
        absorb(reads, &mut seen);
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("kl-{i}")))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a decision (first 10): {missing:?}"
    );
    eprintln!(
        "kill/restart: {N} requests, {at_kill} decided before SIGKILL, {total} decisions in all ({} duplicates from at-least-once)",
        total - N
    );
}

/// Bad configuration: the CLI names every invalid field and exits non-zero.
#[test]
fn bad_config_reports_every_field() {
    let dir = std::env::temp_dir().join(unique("clearance-badcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[engine]\nworkers = 65\nunknown_knob = 1\n[admin]\nlisten = \"not an address\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["config", "--config"])
        .arg(&path)
        .env("CLEARANCE_TOPICS__PARTITIONS", "zero")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "engine.workers",
        "engine.unknown_knob",
        "admin.listen",
        "topics.partitions",
    ] {
        assert!(err.contains(field), "{field} not reported in:\n{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A missing config file is a clear error, not a panic.
#[test]
fn missing_config_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["run", "--config", "/nonexistent/clearance.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: cannot read config file /nonexistent/clearance.toml"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("backtrace"), "a user error, not a bug: {err}");
}

/// The demo (README's first command) runs end to end on its zero-setup
/// mock cluster and shows what it promises.
#[test]
fn demo_shows_the_whole_pipeline() {
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args([
            "demo",
            "--subjects",
            "200",
            "--requests",
            "2000",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "== 1. eligibility feed",
        "engine ready after applying the feed: 180 users",
        "2000 decisions",
        "outcomes differing from the expected: 0",
        "restricted_nationality",
        "sanctioned_location",
        "revocation (version 2) applied",
        "subject_revoked",
        "/metrics",
        "clearance_decisions_total",
    ] {
        assert!(
            stdout.contains(want),
            "{want:?} missing from the demo output:\n{stdout}"
        );
    }
}

/// SIGTERM drains, commits and exits 0; a restarted engine then decides
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_so_a_restart_decides_nothing_twice() {
    let cfg = test_config("term");
    create_topics(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-term"));
    std::fs::create_dir_all(&dir).unwrap();
    let subjects: Vec<_> = (0..100).map(|i| loadgen::subject("tm", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    let batch = |range| request_batch(&subjects, "tm", range);
    publish_raw(&p, &cfg.topics.requests, &batch(0..5_000));

    let c = reader(&cfg.topics.decisions);
    let mut child = spawn_engine(&cfg, &dir, "engine");
    let first = tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(120), |r| r.len() >= 5_000)
    });
    assert_eq!(first.len(), 5_000);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "engine did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    publish_raw(&p, &cfg.topics.requests, &batch(5_000..5_010));
    let mut child = spawn_engine(&cfg, &dir, "engine");
    let more =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(60), |r| r.len() >= 10));
    // Give a re-decision of old requests time to show up, if there were any.
    let extra = tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(3), |_| false));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let ids: Vec<String> = decisions(&more)
        .into_iter()
        .chain(decisions(&extra))
        .map(|d| d.request_id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let want: Vec<String> = {
        let mut w: Vec<String> = (5_000..5_010).map(|i| format!("tm-{i}")).collect();
        w.sort();
        w
    };
    assert_eq!(
        sorted, want,
        "after a graceful stop only the new requests are decided"
    );
}

/// The engine refuses to start without a valid policy, and says why.
#[test]
fn engine_refuses_an_invalid_policy() {
    let dir = std::env::temp_dir().join(unique("clearance-badpolicy"));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        include_str!("../../policies/example.toml").replacen("\"CN\"", "\"XX\"", 1),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["run"])
        .env("CLEARANCE_POLICY__FILE", &policy)
        .env("CLEARANCE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid policy"), "{err}");
    assert!(err.contains("XX"), "names the bad value: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Secrets passed to Kafka never appear in what clearance prints.
#[test]
fn secrets_are_not_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["config"])
        .env(
            "CLEARANCE_KAFKA__PROPERTIES__SASL_PASSWORD",
            "hunter2-secret-value",
        )
        .env("CLEARANCE_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2-secret-value"), "{all}");
    assert!(all.contains("sasl.password"), "{all}");
    assert!(all.contains("SASL_SSL"), "{all}");
}

/// The number in `line_prefix N` (or `... N suffix`) in the demo's output.
fn number_after(stdout: &str, marker: &str) -> Option<usize> {
    let rest = &stdout[stdout.find(marker)? + marker.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// `clearance demo --bootstrap` on a fresh broker that has no topic and
/// does not create topics on its own (`scripts/kafka` sets
/// `auto.create.topics.enable=false`): the demo creates its topics before
/// it publishes the feed, the engine applies every record, and every
/// outcome is the expected one. (It once published into the void: "0 users
/// in the cache", 1300 differing outcomes.)
#[test]
fn demo_on_a_fresh_real_broker_gets_every_outcome_right() {
    let broker = PrivateBroker::up();
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args([
            "demo",
            "--bootstrap",
            &broker.bootstrap,
            "--subjects",
            "200",
            "--requests",
            "1000",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(
        number_after(&stdout, "engine ready after applying the feed: "),
        Some(180),
        "every seeded user (9 in 10 of 200) is in the cache:\n{stdout}"
    );
    assert!(
        stdout.contains("1000 decisions"),
        "every request decided:\n{stdout}"
    );
    assert_eq!(
        number_after(&stdout, "outcomes differing from the expected: "),
        Some(0),
        "{stdout}"
    );
    assert!(stdout.contains("subject_revoked"), "{stdout}");
}

/// `clearance loadgen` split across runs: a `--seed-only` run publishes the
/// subjects of its `--run-id`, and a later `--send-only` run with the same
/// run id sends requests for exactly those subjects. Every outcome is the
/// expected one, and `unknown_subject` comes only from the population's
/// deliberately unknown subjects (once the ids embedded the process id, so
/// a second run's subjects had never been seeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_send_only_uses_the_subjects_an_earlier_run_seeded() {
    let cfg = test_config("lgsplit");
    create_topics(&cfg).await;
    let (h, stop) = start_engine(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-lgsplit"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loadgen.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let run_id = unique("split");
    let admin = h.admin_addr.to_string();
    const SUBJECTS: usize = 100;
    const REQUESTS: usize = 400;
    let loadgen = |mode: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
            .arg("loadgen")
            .arg("--config")
            .arg(&path)
            .args(["--run-id", &run_id, mode, "--admin", &admin])
            .args(["--subjects", &SUBJECTS.to_string()])
            .args(["--requests", &REQUESTS.to_string(), "--timeout-secs", "120"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "loadgen {mode} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let seeded = tokio::task::block_in_place(|| loadgen("--seed-only"));
    assert!(seeded.contains("seeded 90 eligibility records"), "{seeded}");
    assert!(!seeded.contains("decisions"), "seed only: {seeded}");
    let sent = tokio::task::block_in_place(|| loadgen("--send-only"));
    stop_engine(h, stop).await;
    let _ = std::fs::remove_dir_all(&dir);

    assert!(sent.contains(&format!("{REQUESTS} decisions")), "{sent}");
    assert_eq!(
        number_after(&sent, "outcomes differing from the expected: "),
        Some(0),
        "{sent}"
    );
    let unknown: usize = sent
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[1] == "unknown_subject").then(|| w[2].parse::<usize>().unwrap())
        })
        .sum();
    let want = (0..REQUESTS)
        .filter(|&i| {
            loadgen::subject("x", i % SUBJECTS).category == loadgen::Category::Unknown
                && loadgen::model_for(i) == loadgen::TAGGED_MODEL
        })
        .count();
    assert_eq!(
        unknown, want,
        "unknown_subject only for the unknown subjects:\n{sent}"
    );
}
