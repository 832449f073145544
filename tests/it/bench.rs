//! The drain benchmark's pieces (`clearance::bench`, `scripts/bench`)
//! against the real broker: the pass-through copies every record
//! byte-identical and commits its offsets; the watcher counts the drain;
//! the comparison reads outcomes back.

use std::collections::BTreeSet;
use std::time::Duration;

use clearance::bench::{self, PassthroughOptions, Profile, WatchOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

const N: usize = 2000;

fn items() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..N)
        .map(|i| {
            let outcome = if i % 3 == 0 { "deny" } else { "allow" };
            (
                format!("subject-{}", i % 97).into_bytes(),
                format!(r#"{{"request_id":"r-{i}","outcome":"{outcome}","n":{i}}}"#).into_bytes(),
            )
        })
        .collect()
}

/// What the group `group` committed on `topic`, summed over partitions.
fn committed_total(group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_copies_every_record_and_the_watcher_counts_the_drain() {
    init_test_logging();
    for profile in [Profile::Engine, Profile::Batched] {
        let mut cfg = test_config("bench");
        profile.apply(&mut cfg);
        let (input, output) = (cfg.topics.requests.clone(), cfg.topics.decisions.clone());
        bench::create_topic(&cfg.kafka, &input, 3, &[])
            .await
            .expect("input topic");
        bench::create_topic(&cfg.kafka, &output, 3, &[])
            .await
            .expect("output topic");
        let sent = items();
        tokio::task::block_in_place(|| publish_raw(&producer(), &input, &sent));

        let shutdown = CancellationToken::new();
        let opts = PassthroughOptions {
            cfg: cfg.clone(),
            input: input.clone(),
            output: output.clone(),
            threads: 2,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = shutdown.clone();
        let pass = std::thread::spawn(move || {
            bench::passthrough(
                &opts,
                move || {
                    let _ = ready_tx.send(());
                },
                &stop,
            )
        });
        let watch = WatchOptions {
            kafka: cfg.kafka.clone(),
            topic: output.clone(),
            count: N as u64,
            // This test process is the contender (the pass-through runs in it).
            pid: Some(std::process::id()),
            broker_pid: None,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(60),
        };
        let report = tokio::task::spawn_blocking(move || bench::watch(&watch))
            .await
            .expect("watch task")
            .expect("watch");
        ready_rx
            .recv_timeout(Duration::from_secs(1))
            .expect("the pass-through said it was ready");
        assert_eq!(report.count, N as u64, "{profile:?}: {report:?}");
        assert!(
            report.records <= N as u64 && report.secs >= 0.0,
            "{report:?}"
        );
        assert!(report.process_cpu_secs.is_some_and(|s| s >= 0.0));
        assert!(report.peak_rss_bytes.is_some_and(|b| b > 1_000_000));
        assert_eq!(report.broker_cpu_secs, None, "no broker pid given");

        shutdown.cancel();
        let passed = tokio::task::block_in_place(|| pass.join())
            .expect("pass-through thread")
            .expect("pass-through");
        assert_eq!(passed, N as u64, "{profile:?}");
        assert_eq!(
            committed_total(&cfg.kafka.group_id, &input, 3),
            N as i64,
            "{profile:?}: every offset committed after delivery"
        );

        // Byte-identical: the same keys and values, each exactly once.
        let reads = read_until(&reader(&output), Duration::from_secs(30), |r| r.len() >= N);
        let got: BTreeSet<(Vec<u8>, Vec<u8>)> = reads
            .iter()
            .map(|r| (r.key.clone().unwrap_or_default(), r.payload.clone()))
            .collect();
        assert_eq!(reads.len(), N, "{profile:?}");
        assert_eq!(got, sent.into_iter().collect(), "{profile:?}");

        // The comparison reads the same outcomes from input and output.
        let k = cfg.kafka.clone();
        let cmp = tokio::task::spawn_blocking(move || {
            bench::compare(&k, &input, &output, Duration::from_secs(60))
        })
        .await
        .expect("compare task")
        .expect("compare");
        assert!(cmp.all_agree(), "{cmp:?}");
        assert_eq!((cmp.a_records, cmp.agreed), (N as u64, N as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_fails_when_the_contender_is_gone() {
    let cfg = test_config("bench-gone");
    let topic = cfg.topics.decisions.clone();
    bench::create_topic(&cfg.kafka, &topic, 1, &[])
        .await
        .expect("topic");
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("exited");
    let watch = WatchOptions {
        kafka: cfg.kafka.clone(),
        topic,
        count: 10,
        pid: Some(pid),
        broker_pid: None,
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(20),
    };
    let err = tokio::task::spawn_blocking(move || bench::watch(&watch))
        .await
        .expect("watch task")
        .expect_err("the contender is gone");
    assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
}

/// The no-work consumer of `scripts/measure-start` reads every record of
/// every partition, empty ones included, and stops at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_work_reader_reads_every_record_once_and_stops() {
    let cfg = test_config("bench-read");
    let topic = cfg.topics.eligibility.clone();
    bench::create_topic(&cfg.kafka, &topic, 4, &[])
        .await
        .expect("topic");
    // One key: one partition gets every record, and the reader must not
    // wait for the three empty ones.
    let sent: Vec<(Vec<u8>, Vec<u8>)> = items()
        .into_iter()
        .take(500)
        .map(|(_, v)| (b"user:one".to_vec(), v))
        .collect();
    let bytes: usize = sent.iter().map(|(k, v)| k.len() + v.len()).sum();
    tokio::task::block_in_place(|| publish_raw(&producer(), &topic, &sent));
    let report =
        tokio::task::spawn_blocking(move || bench::read_all(&cfg, &topic, Duration::from_secs(60)))
            .await
            .expect("reader task")
            .expect("read");
    assert_eq!(report.records, 500, "{report:?}");
    assert_eq!(report.bytes, bytes as u64, "{report:?}");
    assert!(report.secs > 0.0 && report.secs < 60.0, "{report:?}");
}

/// `bench read` on a topic that does not exist says so instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_work_reader_fails_on_a_missing_topic() {
    let cfg = test_config("bench-read-missing");
    let err = tokio::task::spawn_blocking(move || {
        bench::read_all(&cfg, "no-such-topic-here", Duration::from_secs(30))
    })
    .await
    .expect("reader task")
    .expect_err("a missing topic is an error");
    assert!(err.to_string().contains("no-such-topic-here"), "{err}");
}
