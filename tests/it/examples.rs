//! The example frontends (`examples/python`, `examples/typescript`) as
//! subprocesses against the real broker and an in-process engine: each
//! checks a scenario file (every category on every model) and exits 0; a
//! wrong expectation and an engine that does not answer (the fail-closed
//! `timeout` deny) make it exit 1; without `--check` it prints the
//! decision.
//!
//! The Python example runs in a venv of its own under the cargo target dir
//! (`python3 -m venv`, `pip install -r requirements.txt`, redone when
//! requirements.txt changes); the TypeScript one is installed with `npm
//! ci` from its lock file and compiled with its own `tsc`. Without python3
//! (and its venv module) or node and npm, the test fails saying how to get
//! them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clearance::config::Config;
use clearance::loadgen;

use crate::client::create_topic;
use crate::harness::*;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run a setup step, failing with `hint` and its output when it fails.
fn setup(cmd: &mut Command, hint: &str) {
    let out = cmd.output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{cmd:?} failed ({}): {hint}\n{}\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        ),
        Err(e) => panic!("cannot run {cmd:?}: {e}: {hint}"),
    }
}

/// The Python of the example's venv, created (and its requirements
/// installed) when missing or when requirements.txt changed.
fn python_venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples-python-venv");
    let python = venv.join("bin/python");
    let req = Path::new(EXAMPLES).join("python/requirements.txt");
    let wanted = std::fs::read_to_string(&req).expect("requirements.txt");
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return python;
    }
    let hint = "the Python example needs python3 with its venv module and pip, and PyPI \
                (Debian: apt-get install -y python3 python3-venv python3-pip)";
    let _ = std::fs::remove_dir_all(&venv);
    setup(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        hint,
    );
    setup(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&req),
        hint,
    );
    std::fs::write(&stamp, wanted).unwrap();
    python
}

/// The TypeScript example, installed from its lock file and compiled:
/// the path of its compiled script.
fn typescript_build() -> PathBuf {
    let dir = Path::new(EXAMPLES).join("typescript");
    let hint = "the TypeScript example needs Node.js 18+ and npm, and the npm registry \
                (Debian: apt-get install -y nodejs npm)";
    setup(Command::new("node").arg("--version"), hint);
    if !dir.join("node_modules/kafkajs").exists() || !dir.join("node_modules/.bin/tsc").exists() {
        setup(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            hint,
        );
    }
    // Always compiled: a type error in the example fails the test.
    setup(
        Command::new(dir.join("node_modules/.bin/tsc")).current_dir(&dir),
        "tsc failed on examples/typescript",
    );
    dir.join("dist/frontend.js")
}

/// Scenario lines (`{request, expected_outcome}`) for every subject on
/// every model, request ids `PREFIX-i-model`.
fn scenarios(subjects: &[loadgen::Subject], prefix: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for m in [
            loadgen::TAGGED_MODEL,
            loadgen::UNTAGGED_MODEL,
            loadgen::UNKNOWN_MODEL,
        ] {
            let req = loadgen::request(s, format!("{prefix}-{i}-{m}"), m);
            out.push(serde_json::json!({
                "request": req,
                "expected_outcome": s.category.expected(m),
            }));
        }
    }
    out
}

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, body).unwrap();
}

/// One example against the engine of `cfg`: `program` runs it, replies on
/// `reply_partition` of `reply`; `unserved` is a requests topic no engine
/// reads.
async fn check_example(
    name: &str,
    program: impl Fn() -> Command,
    cfg: &Config,
    reply: &str,
    reply_partition: i32,
    unserved: &str,
    subjects: &[loadgen::Subject],
) {
    let dir = std::env::temp_dir().join(unique(&format!("clearance-example-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    let args = |requests: &str, timeout_ms: u32| -> Command {
        let mut c = program();
        c.args(["--bootstrap", &bootstrap()])
            .args(["--requests-topic", requests])
            .args(["--reply-topic", reply])
            .args(["--reply-partition", &reply_partition.to_string()])
            .args(["--timeout-ms", &timeout_ms.to_string()]);
        c
    };

    // Every scenario as expected: exit 0.
    let lines = scenarios(subjects, name);
    let file = dir.join("scenarios.jsonl");
    write_lines(&file, &lines);
    let out = tokio::task::block_in_place(|| {
        run(
            args(&cfg.topics.requests, 20_000).arg("--check").arg(&file),
            "",
        )
    });
    let stdout = text(&out.stdout);
    eprintln!("{name} --check:\n{stdout}{}", text(&out.stderr));
    assert!(
        out.status.success(),
        "{name} --check failed: {}",
        out.status
    );
    let n = lines.len();
    assert!(
        stdout.contains(&format!("checked {n} requests: {n} as expected, 0 not")),
        "{stdout}"
    );
    for l in &lines {
        let id = l["request"]["request_id"].as_str().unwrap();
        assert!(
            stdout.lines().any(|s| s.starts_with(&format!("ok  {id} "))),
            "{id} not checked: {stdout}"
        );
    }

    // A wrong expectation: exit 1, the line marked.
    let mut wrong = lines[0].clone();
    let flipped = if wrong["expected_outcome"] == "allow" {
        "deny"
    } else {
        "allow"
    };
    wrong["expected_outcome"] = flipped.into();
    wrong["request"]["request_id"] = format!("{name}-wrong").into();
    let file = dir.join("wrong.jsonl");
    write_lines(&file, &[wrong]);
    let out = tokio::task::block_in_place(|| {
        run(
            args(&cfg.topics.requests, 20_000).arg("--check").arg(&file),
            "",
        )
    });
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: {stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("BAD {name}-wrong "))
            && stdout.contains(&format!("(expected {flipped})")),
        "{stdout}"
    );

    // Nobody answers: the fail-closed timeout deny, exit 1.
    let file = dir.join("unanswered.jsonl");
    write_lines(&file, &lines[..1]);
    let out =
        tokio::task::block_in_place(|| run(args(unserved, 500).arg("--check").arg(&file), ""));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: {stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.contains(" deny timeout"), "{stdout}");

    // Without --check: the decision of a request on stdin, as JSON.
    let s = &subjects[0];
    let req = loadgen::request(s, format!("{name}-stdin"), loadgen::TAGGED_MODEL);
    let out = tokio::task::block_in_place(|| {
        run(
            &mut args(&cfg.topics.requests, 20_000),
            &format!("{}\n", serde_json::to_string(&req).unwrap()),
        )
    });
    assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    let d: clearance::event::Decision = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{name} printed no decision ({e}): {}", text(&out.stdout)));
    assert_eq!(d.request_id, req.request_id);
    assert_eq!(d.outcome, s.category.expected(loadgen::TAGGED_MODEL));
    assert_eq!(d.engine_instance, cfg.engine.instance_id);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both examples against one engine: Python on reply partition 0,
/// TypeScript on partition 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_frontends_get_their_decisions_and_fail_closed() {
    let python = tokio::task::block_in_place(python_venv);
    let typescript = tokio::task::block_in_place(typescript_build);
    let cfg = test_config("examples");
    create_topics(&cfg).await;
    let reply = format!("{}.replies", cfg.topics.requests);
    create_topic(&reply, 2).await;
    let unserved = format!("{}.unserved", cfg.topics.requests);
    create_topic(&unserved, 1).await;
    let subjects: Vec<_> = (0..10).map(|i| loadgen::subject("ex", i)).collect();
    seed(&producer(), &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    loadgen::wait_for_assignment(h.admin_addr, Duration::from_secs(120))
        .await
        .expect("request partitions assigned");

    let script = Path::new(EXAMPLES).join("python/frontend.py");
    check_example(
        "py",
        || {
            let mut c = Command::new(&python);
            c.arg(&script);
            c
        },
        &cfg,
        &reply,
        0,
        &unserved,
        &subjects,
    )
    .await;
    check_example(
        "ts",
        || {
            let mut c = Command::new("node");
            c.arg(&typescript);
            c
        },
        &cfg,
        &reply,
        1,
        &unserved,
        &subjects,
    )
    .await;
    stop_engine(h, stop).await;
}
