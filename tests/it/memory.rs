//! Memory: the decision histograms do not grow without bound when nothing
//! scrapes `/metrics`.

use std::process::Command;
use std::time::{Duration, Instant};

use clearance::metrics as m;

/// Set in the child process that measures (this same test binary, running
/// this one test).
const CHILD: &str = "CLEARANCE_TEST_MEMORY_CHILD";
/// Decisions recorded: each records both histograms, as the pipeline does.
const DECISIONS: u64 = 1_000_000;
const CHUNK: u64 = 100_000;
/// The RSS growth allowed. Without upkeep the recorder keeps every sample:
/// RSS grew by 34 MB for these two million samples (debug build); with it,
/// by 4.5 MB (about one chunk's samples).
const BOUND_KB: u64 = 16 * 1024;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Wait until the upkeep has run twice, so one whole run began after the
/// samples recorded so far.
fn wait_for_upkeep() {
    let seen = m::upkeep_runs();
    let deadline = Instant::now() + Duration::from_secs(30);
    while m::upkeep_runs() < seen + 2 {
        assert!(
            Instant::now() < deadline,
            "the metrics upkeep ran (waited 30 s)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(text: &str, histogram: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{histogram}_count ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{histogram}_count in:\n{text}"))
}

/// The measurement, in a process of its own: nothing else allocates there.
/// A million decisions' latency and processing samples, recorded the way
/// the pipeline records them, with no scrape until the end: the RSS grows
/// by less than [`BOUND_KB`], and the scrape then counts every sample.
fn measure() {
    let handle = m::install();
    let base = rss_kb();
    let mut peak = base;
    for chunk in 0..DECISIONS / CHUNK {
        for i in 0..CHUNK {
            let secs = ((chunk * CHUNK + i) % 1_000) as f64 * 1e-5;
            metrics::histogram!(m::DECISION_LATENCY_SECONDS).record(secs);
            metrics::histogram!(m::PROCESSING_SECONDS).record(secs);
        }
        peak = peak.max(rss_kb());
        wait_for_upkeep();
    }
    peak = peak.max(rss_kb());
    let grown = peak - base;
    eprintln!(
        "histogram memory: {DECISIONS} decisions (two samples each), no scrape: \
         RSS {base} kB before, peak {peak} kB, +{grown} kB (bound {BOUND_KB} kB)"
    );
    let text = handle.render();
    assert_eq!(count(&text, m::DECISION_LATENCY_SECONDS), DECISIONS as f64);
    assert_eq!(count(&text, m::PROCESSING_SECONDS), DECISIONS as f64);
    assert!(
        grown < BOUND_KB,
        "unscraped histograms held {grown} kB after {DECISIONS} decisions (bound {BOUND_KB} kB)"
    );
}

/// Unscraped histograms hold a bounded amount of memory. The measurement
/// runs in a child process (this test, re-run alone with [`CHILD`] set):
/// the other tests of this binary would disturb its RSS.
#[test]
fn unscraped_histograms_stay_bounded() {
    if std::env::var_os(CHILD).is_some() {
        return measure();
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "memory::unscraped_histograms_stay_bounded",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the measuring child");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the measuring child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed") && stderr.contains("histogram memory:"),
        "the child ran the measurement:\n{stdout}\n{stderr}"
    );
}
