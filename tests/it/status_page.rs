//! The status page at `/` in headless Chromium (Debian's `chromium`,
//! driven by playwright-core from `tests/browser/`): it loads, shows the
//! active policy, its decision counter moves when requests flow, it lists
//! recent denials, and a screenshot is kept.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clearance::loadgen;

use crate::harness::*;

const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

/// Fail, saying how to get them, when node, Chromium or playwright-core
/// are missing.
fn browser_tools() -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node not found: the status-page test needs Node.js 18+ \
         (Debian: apt-get install -y nodejs npm)"
    );
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.exists(),
        "{} not found: the status-page test needs Chromium \
         (Debian: apt-get install -y chromium; .ci/run installs it; or set CHROMIUM=/path/to/chromium)",
        chromium.display()
    );
    let installed = || {
        Path::new(BROWSER_DIR)
            .join("node_modules/playwright-core")
            .exists()
    };
    if !installed() {
        // From the lock file, like scripts/kafka fetches the broker's jars:
        // `cargo test` alone sets up what it needs.
        let out = Command::new("npm")
            .args(["ci", "--prefix", BROWSER_DIR, "--no-audit", "--no-fund"])
            .output();
        assert!(
            out.as_ref().is_ok_and(|o| o.status.success()),
            "`npm ci --prefix tests/browser` failed (needs npm and the npm registry): {:?}",
            out.map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        );
    }
    assert!(
        installed(),
        "playwright-core not installed: run `npm ci --prefix tests/browser` (.ci/run does)"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium_moves_with_the_traffic() {
    let chromium = browser_tools();
    let cfg = test_config("page");
    create_topics(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-page"));
    std::fs::create_dir_all(&dir).unwrap();
    // Known subjects of every category, and unknown ones (denied).
    let subjects: Vec<_> = (0..24).map(|i| loadgen::subject("pg", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects[..16]);
    // A child process: the page shows its own decisions only.
    let (child, admin) = spawn_engine_with_admin(&cfg, &dir, "page");
    wait_applied_at(admin, &bootstrap(), &cfg).await;
    let c = reader(&cfg.topics.decisions);
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "pg-a", 0..24),
    );
    let first =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(60), |r| r.len() >= 24));
    assert_eq!(first.len(), 24, "the first requests were decided");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut node = Command::new("node")
        .arg(Path::new(BROWSER_DIR).join("status-page.mjs"))
        .arg(format!("http://{admin}/"))
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next = |what: &str| -> u64 {
        let line = tokio::task::block_in_place(|| lines.next())
            .and_then(Result::ok)
            .unwrap_or_else(|| {
                panic!("status-page.mjs ended before `{what}` (its error is above)")
            });
        line.strip_prefix(what)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected `{what} N`, got {line:?}"))
    };
    let before = next("first");
    assert!(before >= 24, "the page shows the first decisions: {before}");
    // Requests flow between the two reads of the page's counter.
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "pg-b", 0..40),
    );
    writeln!(stdin, "published").unwrap();
    let after = next("second");
    let status = tokio::task::block_in_place(|| node.wait()).unwrap();
    assert!(status.success(), "status-page.mjs failed: {status}");
    assert!(
        after > before,
        "the page's counter moved: {before} -> {after}"
    );
    assert!(shot.exists(), "screenshot written");
    eprintln!(
        "status page: {before} -> {after} decisions shown; screenshot {}",
        shot.display()
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
