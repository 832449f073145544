//! The CLI's output when it goes to files and pipes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::harness::*;

/// Logs written to a pipe (a file, a log collector) carry no ANSI colour
/// codes: colour only when stderr is a terminal.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    // `run` logs "policy loaded" at once; the broker address is a closed
    // port, and the child is killed as soon as that line has been read.
    let mut child = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["run", "--bootstrap", "127.0.0.1:1"])
        .env("RUST_LOG", "info")
        .env("CLEARANCE_ADMIN__LISTEN", "127.0.0.1:0")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the clearance binary");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr is text");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("policy loaded") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("policy loaded"),
        "the engine logged its policy: {seen:?}"
    );
    assert!(
        !seen.contains("\x1b["),
        "no ANSI escape codes in logs written to a pipe: {seen:?}"
    );
}

fn policy_diff(old: &std::path::Path, new: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["policy", "diff"])
        .arg(old)
        .arg(new)
        .output()
        .expect("run the clearance binary");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `clearance policy diff` ends its output with one newline, with and
/// without differences.
#[test]
fn policy_diff_output_ends_with_a_newline() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example.toml");
    let dir = std::env::temp_dir().join(unique("clearance-diff"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(example).unwrap();
    let bumped = text.replacen("version = \"2026.12.1\"", "version = \"2026.12.2\"", 1);
    assert_ne!(text, bumped, "the example's version line was found");
    let new = dir.join("new.toml");
    std::fs::write(&new, bumped).unwrap();

    let same = policy_diff(example.as_ref(), example.as_ref());
    let changed = policy_diff(example.as_ref(), &new);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(same, "no differences\n");
    assert!(
        changed.contains("policy.version: 2026.12.1 -> 2026.12.2"),
        "{changed:?}"
    );
    assert!(
        changed.ends_with('\n') && !changed.ends_with("\n\n"),
        "one trailing newline: {changed:?}"
    );
}

/// `clearance bench cache` prints one JSON line with every measurement,
/// and a bad policy path is a clear error, not a panic.
#[test]
fn bench_cache_reports_memory_lookups_and_the_probe() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .current_dir(root)
        .args([
            "bench",
            "cache",
            "--subjects",
            "5000",
            "--lookups",
            "20000",
            "--probe",
        ])
        .output()
        .expect("run clearance bench cache");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(r["subjects"], 5000, "{r}");
    assert_eq!(r["records"], 5000, "one record per subject: {r}");
    for key in ["bytes_per_record", "batched_ns", "single_ns", "probe_ns"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert!(
        r["probe_bytes"].as_u64().is_some_and(|b| b >= 8 << 20),
        "{r}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .current_dir(root)
        .args([
            "bench",
            "cache",
            "--subjects",
            "10",
            "--policy",
            "no/such.toml",
        ])
        .output()
        .expect("run clearance bench cache");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no/such.toml") && !err.contains("panicked"),
        "{err}"
    );
}
