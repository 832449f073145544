//! A secured cluster: one private broker for the whole module, started by
//! `scripts/kafka up --secure` (SASL_SSL with SCRAM-SHA-512, a CA made on
//! the fly, StandardAuthorizer, no ACL = deny), with the least-privilege
//! ACLs of `clearance::security::acl_plan` for each test's topics, created
//! once. The engine decides over it with its own narrow rights; a frontend
//! or feeder cannot publish a policy; a frontend cannot read decisions; a
//! wrong password or an untrusted CA ends the engine at startup with one
//! clear line; a credential revoked while it runs makes it unready and is
//! counted. (Needs Java 17+, Maven and openssl, like scripts/kafka.)

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clearance::config::{Config, KafkaConfig};
use clearance::event::Outcome;
use clearance::loadgen;
use clearance::security::{acl_plan, Principals};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::harness::*;

/// The tests of this module, each with its own topics and group (the ACLs
/// of all of them are created at once, when the broker starts).
const TESTS: [&str; 4] = ["decide", "publish", "read", "revoke"];
/// The engine user of the `revoke` test, made for it (its credential is
/// deleted while the engine runs; the other tests' `engine` is untouched).
const REVOCABLE: &str = "revocable";

/// The module's secured broker.
struct SecureBroker {
    dir: PathBuf,
    bootstrap: String,
    ca: String,
    untrusted_ca: String,
    passwords: BTreeMap<String, String>,
    run: String,
}

static SECURE: OnceLock<Result<SecureBroker, String>> = OnceLock::new();

fn script(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");
    let mut child = Command::new("bash")
        .arg(path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {path}: {e}"))?;
    if let Some(text) = stdin {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to scripts/kafka {args:?}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("scripts/kafka {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/kafka {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn random_password() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

impl SecureBroker {
    fn get() -> &'static SecureBroker {
        SECURE
            .get_or_init(Self::start)
            .as_ref()
            .unwrap_or_else(|e| {
                panic!(
                    "no secured Kafka broker for the security tests.\n{e}\n\
                     They start one with `scripts/kafka up --secure`, which needs Java 17+, \
                     Maven and openssl (Debian/Ubuntu: apt-get install openjdk-17-jre-headless \
                     maven openssl)."
                )
            })
    }

    fn start() -> Result<SecureBroker, String> {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(unique("clearance-secure-broker"));
        let d = dir.to_string_lossy().to_string();
        let pid = std::process::id().to_string();
        let bootstrap = script(
            &[
                "up",
                "--secure",
                "--ephemeral",
                "--dir",
                &d,
                "--owner-pid",
                &pid,
            ],
            None,
        )?;
        let env = std::fs::read_to_string(dir.join("secure.env"))
            .map_err(|e| format!("reading {d}/secure.env: {e}"))?;
        let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let var = |k: &str| {
            vars.get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| format!("{d}/secure.env has no {k}"))
        };
        let mut passwords = BTreeMap::new();
        for user in ["admin", "engine", "frontend", "publisher", "feeder"] {
            passwords.insert(
                user.to_string(),
                var(&format!("KAFKA_PASSWORD_{}", user.to_uppercase()))?,
            );
        }
        let revocable = random_password();
        script(&["scram", "--dir", &d, "set", REVOCABLE, &revocable], None)?;
        passwords.insert(REVOCABLE.to_string(), revocable);
        let broker = SecureBroker {
            dir,
            bootstrap,
            ca: var("KAFKA_CA_FILE")?,
            untrusted_ca: var("KAFKA_UNTRUSTED_CA_FILE")?,
            passwords,
            run: unique("sec"),
        };
        // Topics (as admin), then every test's ACLs in one go.
        let admin = broker.client("admin");
        let configs: Vec<Config> = TESTS.iter().map(|t| broker.config(t, "admin")).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    for c in &configs {
                        clearance::kafka::create_topics(&admin, &c.topics)
                            .await
                            .map_err(|e| format!("creating topics as admin: {e}"))?;
                    }
                    Ok::<_, String>(())
                })
            })
            .join()
            .expect("topic thread")
        })?;
        let mut acls = String::new();
        for (name, c) in TESTS.iter().zip(&configs) {
            let principals = Principals {
                engine: if *name == "revoke" {
                    REVOCABLE.into()
                } else {
                    "engine".into()
                },
                ..Principals::default()
            };
            for a in acl_plan(c, &principals) {
                acls.push_str(&format!("{a}\n"));
            }
        }
        script(&["acls", "--dir", &d], Some(&acls))?;
        eprintln!(
            "secured test broker {} ready with topics and ACLs in {:.1} s",
            broker.bootstrap,
            started.elapsed().as_secs_f64()
        );
        Ok(broker)
    }

    /// Client settings of `user`: SASL_SSL, SCRAM-SHA-512, the CA, host
    /// name verification.
    fn client(&self, user: &str) -> KafkaConfig {
        let mut k = KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            ..KafkaConfig::default()
        };
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", &self.passwords[user]),
            ("ssl.ca.location", &self.ca),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            k.properties.insert(key.into(), value.into());
        }
        k
    }

    /// The configuration of test `name`, connecting as `user`: topics
    /// `<run>-<name>.*` (created by an admin: `create_missing = false`).
    fn config(&self, name: &str, user: &str) -> Config {
        let id = format!("{}-{name}", self.run);
        let mut cfg = Config {
            kafka: self.client(user),
            ..Config::default()
        };
        cfg.kafka.group_id = format!("g-{id}");
        cfg.topics.requests = format!("{id}.requests");
        cfg.topics.eligibility = format!("{id}.eligibility");
        cfg.topics.decisions = format!("{id}.decisions");
        cfg.topics.deadletter = format!("{id}.deadletter");
        cfg.topics.policy = format!("{id}.policy");
        cfg.topics.partitions = 3;
        cfg.topics.create_missing = false;
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.engine.commit_interval_ms = 200;
        cfg.engine.instance_id = id;
        cfg
    }

    fn d(&self) -> String {
        self.dir.to_string_lossy().to_string()
    }

    /// A directory of mode 0700 for the tests' config files (they hold
    /// passwords); it goes with the broker's state directory.
    fn configs(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.dir.join("configs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }
}

/// A consumer of every partition of `topic` from the beginning, as the
/// user of `k` (librdkafka needs a group id to assign partitions, even
/// though nothing is committed).
fn reader_as(k: &KafkaConfig, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = clearance::kafka::base_config(k, "test-reader")
        .set("group.id", unique("sec-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// What a `clearance` child process did.
struct ChildRun {
    code: Option<i32>,
    stderr: String,
    stdout: String,
    secs: f64,
}

/// Run `clearance ARGS` with `env`, killing it after `limit`.
fn run_clearance(args: &[&str], env: &[(&str, &str)], limit: Duration) -> ChildRun {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env_remove("CLEARANCE_TEST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clearance");
    // Drain the pipes on threads of their own: a chatty child never blocks.
    let mut err = child.stderr.take().expect("stderr");
    let mut out = child.stdout.take().expect("stdout");
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ChildRun {
        code,
        secs: started.elapsed().as_secs_f64(),
        stderr: e.join().unwrap_or_default(),
        stdout: o.join().unwrap_or_default(),
    }
}

/// Write `cfg` (passwords included) to a file of mode 0600 in the
/// broker's state directory, which goes with the broker.
fn write_config(cfg: &Config, name: &str) -> PathBuf {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = SecureBroker::get().configs();
    let path = dir.join(format!("{}.toml", unique(name)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(toml::to_string(cfg).unwrap().as_bytes())
        .unwrap();
    path
}

/// The engine decides over SASL_SSL with nothing but its own ACLs: the
/// feeder seeds the subjects (`clearance loadgen --seed-only`), a frontend
/// sends the requests, an admin reads the decisions, and every outcome is
/// the expected one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_decides_over_sasl_ssl_with_least_privilege() {
    let b = tokio::task::block_in_place(SecureBroker::get);
    let cfg = b.config("decide", "engine");
    let admin = b.client("admin");
    let (h, stop) = start_engine(&cfg).await;

    // The feeder seeds the subjects with `clearance loadgen --seed-only`
    // (over SASL_SSL, from its config file).
    let feeder_cfg = write_config(&b.config("decide", "feeder"), "feeder");
    let out = tokio::task::block_in_place(|| {
        run_clearance(
            &[
                "loadgen",
                "--config",
                &feeder_cfg.to_string_lossy(),
                "--seed-only",
                "--run-id",
                "secl",
                "--subjects",
                "30",
            ],
            &[],
            Duration::from_secs(60),
        )
    });
    assert_eq!(
        out.code,
        Some(0),
        "loadgen --seed-only as feeder: {}",
        out.stderr
    );
    let subjects: Vec<_> = (0..30).map(|i| loadgen::subject("secl-", i)).collect();
    let targets =
        loadgen::high_watermarks_for(&admin, &cfg.topics.eligibility).expect("watermarks");
    loadgen::wait_for_feed(h.admin_addr, &targets, Duration::from_secs(120))
        .await
        .expect("the engine applied the change feed");

    const N: usize = 200;
    let frontend = loadgen::data_producer_for(&b.client("frontend")).expect("frontend producer");
    let batch = request_batch(&subjects, "sec", 0..N);
    publish_raw(&frontend, &cfg.topics.requests, &batch);

    let c = reader_as(&admin, &cfg.topics.decisions, cfg.topics.partitions);
    let reads =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(90), |r| r.len() >= N));
    let got = first_by_request(&decisions(&reads));
    assert_eq!(got.len(), N, "every request decided over SASL_SSL");
    let mut allowed = 0;
    for i in 0..N {
        let s = &subjects[i % subjects.len()];
        let model = loadgen::model_for(i);
        let d = &got[&format!("sec-{i}")];
        assert_eq!(
            d.outcome,
            s.category.expected(model),
            "sec-{i} ({:?}, {model}): {:?}",
            s.category,
            d.reasons
        );
        allowed += usize::from(d.outcome == Outcome::Allow);
    }
    assert!(allowed > 0 && allowed < N, "a mix of outcomes: {allowed}");
    let status = engine_status(&h).await;
    assert!(status["kafka_auth_failure"].is_null(), "{status}");
    stop_engine(h, stop).await;
}

/// Only the publisher may write the policy topic: `clearance policy
/// publish` as the frontend or the feeder fails with an authorization
/// error (exit 1, one `error:` line), as the publisher it succeeds.
#[test]
fn only_the_publisher_can_publish_a_policy() {
    let b = SecureBroker::get();
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example.toml");
    for user in ["frontend", "feeder"] {
        let cfg = b.config("publish", user);
        let path = write_config(&cfg, user);
        let out = run_clearance(
            &[
                "policy",
                "publish",
                "--config",
                &path.to_string_lossy(),
                policy,
            ],
            &[],
            Duration::from_secs(60),
        );
        eprintln!("publish as {user} ({:.1} s): {}", out.secs, out.stderr);
        assert_eq!(
            out.code,
            Some(1),
            "publish as {user} must fail: {}",
            out.stderr
        );
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {}", out.stderr);
        assert!(
            errors[0].contains("not authorized to write to topic")
                && errors[0].contains(&cfg.topics.policy),
            "{}",
            errors[0]
        );
        assert!(
            !out.stderr.contains(&b.passwords[user]),
            "the password is never printed"
        );
    }
    let cfg = b.config("publish", "publisher");
    let path = write_config(&cfg, "publisher");
    let out = run_clearance(
        &[
            "policy",
            "publish",
            "--config",
            &path.to_string_lossy(),
            policy,
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "publish as publisher: {}", out.stderr);
    assert!(out.stdout.contains("published policy"), "{}", out.stdout);
}

/// A frontend cannot read the decisions (personal data of every subject):
/// its consumer gets a topic authorization error and no record, while an
/// admin reads the same topic.
#[test]
fn a_frontend_cannot_read_decisions() {
    let b = SecureBroker::get();
    let cfg = b.config("read", "frontend");
    // A decision to read: an admin writes one.
    let admin = b.client("admin");
    let p = loadgen::data_producer_for(&admin).expect("admin producer");
    publish_raw(
        &p,
        &cfg.topics.decisions,
        &[(b"k".to_vec(), b"{\"not\":\"a decision\"}".to_vec())],
    );
    let c = reader_as(&b.client("frontend"), &cfg.topics.decisions, 3);
    let md = c
        .fetch_metadata(Some(&cfg.topics.decisions), Duration::from_secs(10))
        .expect("metadata request");
    let errors: Vec<Option<RDKafkaErrorCode>> = md
        .topics()
        .iter()
        .map(|t| t.error().map(RDKafkaErrorCode::from))
        .collect();
    assert_eq!(
        errors,
        [Some(RDKafkaErrorCode::TopicAuthorizationFailed)],
        "the frontend's consumer is refused the decisions topic"
    );
    // Nor does its assignment deliver anything.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut records, mut seen) = (0, Vec::new());
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(_)) => records += 1,
            Some(Err(e)) => seen.push(e.to_string()),
        }
    }
    assert_eq!(records, 0, "the frontend read decisions (errors: {seen:?})");
    let a = reader_as(&admin, &cfg.topics.decisions, 3);
    let reads = read_until(&a, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(reads.len(), 1, "the admin reads the decisions topic");
}

/// A wrong password (given in the environment) and an untrusted CA each
/// end `clearance run` within 30 s, exit code 1, with one line `error: …`
/// naming the cause; the password is never printed.
#[test]
fn wrong_password_and_untrusted_ca_fail_fast_at_startup() {
    let b = SecureBroker::get();
    let wrong = format!("wrong-{}", random_password());
    let mut no_password = b.config("decide", "engine");
    no_password.kafka.properties.remove("sasl.password");
    let path = write_config(&no_password, "wrong-password");
    let mut untrusted = b.config("decide", "engine");
    untrusted
        .kafka
        .properties
        .insert("ssl.ca.location".into(), b.untrusted_ca.clone());
    let untrusted_path = write_config(&untrusted, "untrusted-ca");
    let right = b.passwords["engine"].clone();
    let cases = [
        (
            "wrong password",
            path,
            Some(wrong.clone()),
            "authentication failed",
        ),
        (
            "untrusted CA",
            untrusted_path,
            None,
            "certificate verify failed",
        ),
    ];
    std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(what, path, password, _)| {
                s.spawn(move || {
                    let env: Vec<(&str, &str)> = password
                        .as_deref()
                        .map(|p| ("CLEARANCE_KAFKA__PROPERTIES__SASL_PASSWORD", p))
                        .into_iter()
                        .collect();
                    let out = run_clearance(
                        &["run", "--config", &path.to_string_lossy()],
                        &env,
                        Duration::from_secs(45),
                    );
                    eprintln!("{what}: exit {:?} after {:.1} s", out.code, out.secs);
                    out
                })
            })
            .collect();
        for ((what, _, _, cause), run) in cases.iter().zip(runs) {
            let out = run.join().expect("run thread");
            assert!(
                out.code.is_some() && out.secs < 30.0,
                "{what}: clearance run did not exit within 30 s ({:.1} s):\n{}",
                out.secs,
                out.stderr
            );
            assert_eq!(out.code, Some(1), "{what}: exit code:\n{}", out.stderr);
            let errors: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect();
            assert_eq!(errors.len(), 1, "{what}: one error line:\n{}", out.stderr);
            eprintln!("{what}: {}", errors[0]);
            assert!(
                errors[0].to_lowercase().contains(cause),
                "{what}: the error names the cause ({cause}): {}",
                errors[0]
            );
            for secret in [&wrong, &right] {
                assert!(
                    !out.stderr.contains(secret.as_str()),
                    "{what}: a password was printed"
                );
            }
        }
    });
}

/// A credential revoked while the engine runs: within seconds (the broker
/// re-authenticates connections every 10 s) the engine is unready and
/// `clearance_kafka_auth_failures_total` counts the failure; restored, the
/// engine is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_revoked_while_running_makes_the_engine_unready() {
    let b = tokio::task::block_in_place(SecureBroker::get);
    let cfg = b.config("revoke", REVOCABLE);
    let dir = b.configs();
    let (_child, admin_addr) = spawn_engine_with_admin(&cfg, &dir, "revoke");
    let wait_readyz = |want: u16, within: Duration| async move {
        let deadline = Instant::now() + within;
        loop {
            let code = clearance::admin::get(admin_addr, "/readyz")
                .await
                .map(|(c, _)| c)
                .unwrap_or(0);
            if code == want {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(
        wait_readyz(200, Duration::from_secs(60)).await,
        "the engine got ready as {REVOCABLE}"
    );
    let d = b.d();
    tokio::task::block_in_place(|| script(&["scram", "--dir", &d, "delete", REVOCABLE], None))
        .expect("delete the credential");
    let revoked = Instant::now();
    assert!(
        wait_readyz(503, Duration::from_secs(60)).await,
        "the engine stayed ready 60 s after its credential was deleted"
    );
    eprintln!(
        "unready {:.1} s after the credential was deleted",
        revoked.elapsed().as_secs_f64()
    );
    let (_, metrics) = clearance::admin::get(admin_addr, "/metrics")
        .await
        .expect("GET /metrics");
    let counted: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("clearance_kafka_auth_failures_total{")
                && l.contains("kind=\"authentication\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 1.0, "auth failures counted:\n{metrics}");
    let (_, status) = clearance::admin::get(admin_addr, "/status")
        .await
        .expect("GET /status");
    assert!(status.contains("authentication failed"), "{status}");

    let pw = b.passwords[REVOCABLE].clone();
    tokio::task::block_in_place(|| script(&["scram", "--dir", &d, "set", REVOCABLE, &pw], None))
        .expect("restore the credential");
    assert!(
        wait_readyz(200, Duration::from_secs(90)).await,
        "the engine got ready again once its credential was restored"
    );
}
