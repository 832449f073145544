//! The admin server of an engine process at its open-files limit: failed
//! `accept`s back off instead of spinning a core, the engine keeps
//! deciding, and the failures are counted.

use std::time::{Duration, Instant};

use clearance::loadgen;

use crate::harness::*;

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold
    // spaces): state is the first, utime the 12th, stime the 13th.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks as f64 / hz
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Hold connections to the admin port of an engine process whose
/// open-files limit leaves room for only a few, so that `accept` fails
/// with `EMFILE` while connections wait in the backlog. The engine's CPU
/// use over three seconds stays far below a core (0.01 measured; the
/// hand-written accept loop before hyper, which retried at once, measured
/// 0.83 here on a busy 2-core machine), requests published meanwhile are
/// decided, and once the connections are released `/metrics` answers again
/// with a non-zero `clearance_admin_accept_errors_total`.
///
/// `ADMIN_TEST_ENGINE_BIN` (not `CLEARANCE_*`: the engine reads those as
/// configuration) runs another build of the binary (to
/// measure an older accept loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_and_the_engine_keeps_deciding() {
    let prlimit_ok = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        prlimit_ok,
        "prlimit not found: it is util-linux's (Debian: apt-get install util-linux)"
    );
    let cfg = test_config("accept");
    create_topics(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-accept"));
    std::fs::create_dir_all(&dir).unwrap();
    let subjects: Vec<_> = (0..20).map(|i| loadgen::subject("ac", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);

    let bin = std::env::var_os("ADMIN_TEST_ENGINE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_clearance").into());
    let admin = free_admin_addr();
    let mut run_cfg = cfg.clone();
    run_cfg.admin.listen = admin.to_string();
    let child = spawn_engine_bin(&bin, &run_cfg, &dir, "accept");
    let pid = child.id();
    wait_applied_at(admin, &bootstrap(), &cfg).await;

    // A first decision: the group is joined and the producer connected
    // before the descriptors run out.
    let c = reader(&cfg.topics.decisions);
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "ac-warm", 0..1),
    );
    let warm =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(60), |r| !r.is_empty()));
    assert_eq!(warm.len(), 1, "the warm-up request was decided");

    // Room for SPARE more descriptors, then hold more connections than that.
    const SPARE: usize = 48;
    let limit = open_fds(pid) + SPARE;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("run prlimit");
    assert!(
        out.status.success(),
        "prlimit --pid {pid} --nofile={limit}:{limit}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut held = Vec::new();
    for _ in 0..SPARE + 150 {
        held.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }
    let t = Instant::now();
    while open_fds(pid) < limit && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fds = open_fds(pid);
    assert!(
        fds >= limit,
        "the engine reached its open-files limit ({fds} of {limit} open)"
    );

    // CPU over three seconds at the limit, while requests are decided.
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    const N: usize = 20;
    publish_raw(
        &p,
        &cfg.topics.requests,
        &request_batch(&subjects, "ac", 0..N),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cores = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let still = open_fds(pid);
    eprintln!(
        "accept at the open-files limit: engine CPU {cores:.3} cores over {:.1} s ({still} of {limit} descriptors open)",
        t0.elapsed().as_secs_f64()
    );
    let reads =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(30), |r| r.len() >= N));
    let ids: std::collections::BTreeSet<String> = decisions(&reads)
        .into_iter()
        .map(|d| d.request_id)
        .collect();
    assert!(
        cores < 0.5,
        "the engine spun at its open-files limit: {cores:.2} cores"
    );
    assert_eq!(
        ids.len(),
        N,
        "every request published at the limit was decided: {ids:?}"
    );

    // Release; the backlog drains and /metrics answers again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        match clearance::admin::get(admin, "/metrics").await {
            Ok((200, text)) => break text,
            other if Instant::now() > deadline => panic!("/metrics after the release: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("clearance_admin_accept_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    eprintln!("clearance_admin_accept_errors_total {errors}");
    assert!(errors > 0.0, "accept errors counted:\n{metrics}");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
