//! The deployment files: `docker-compose.yml` against the Compose
//! Specification's JSON Schema (vendored), the Dockerfile's toolchain and
//! health check, the Prometheus and Grafana files that the compose file
//! mounts, and `clearance healthcheck` against a running engine. No Docker
//! engine is needed (or used): the files are checked, not run.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE: &str = include_str!("../../docker-compose.yml");
const COMPOSE_SPEC: &str = include_str!("../../deploy/compose-spec/compose-spec.json");
/// The vendored schema's SHA-256 (deploy/compose-spec/README.md).
const COMPOSE_SPEC_SHA256: &str =
    "49eb9a1e1de41315949f302f8e6221bb42acd6038977f7c0974e38596ec4cdf6";
const DOCKERFILE: &str = include_str!("../../Dockerfile");
const CARGO_TOML: &str = include_str!("../../Cargo.toml");

fn compose() -> Value {
    serde_norway::from_str(COMPOSE).expect("docker-compose.yml is YAML")
}

/// Every error of `doc` against the compose-spec schema (empty: valid).
fn compose_errors(doc: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(COMPOSE_SPEC).expect("compose-spec.json is JSON");
    let validator = jsonschema::validator_for(&schema).expect("compose-spec.json compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path.as_str()))
        .collect()
}

#[test]
fn compose_file_is_valid_against_the_compose_specification() {
    let digest = Sha256::digest(COMPOSE_SPEC.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, COMPOSE_SPEC_SHA256,
        "deploy/compose-spec/compose-spec.json changed: update its version and checksum \
         (deploy/compose-spec/README.md, COMPOSE_SPEC_SHA256)"
    );
    let doc = compose();
    let errors = compose_errors(&doc);
    assert!(
        errors.is_empty(),
        "docker-compose.yml does not follow the Compose Specification:\n  {}",
        errors.join("\n  ")
    );

    // The validation has teeth: a misspelt key and a wrong type are errors.
    let mut bad = doc.clone();
    bad["services"]["clearance"]["healthchek"] = Value::from("x");
    assert!(
        !compose_errors(&bad).is_empty(),
        "an unknown key is an error"
    );
    let mut bad = doc.clone();
    bad["services"]["grafana"]["ports"] = Value::from(3000);
    assert!(!compose_errors(&bad).is_empty(), "ports must be a list");
}

#[test]
fn compose_runs_kafka_clearance_prometheus_and_grafana() {
    let doc = compose();
    let services = doc["services"].as_object().expect("services");
    for s in ["kafka", "clearance", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "service {s}");
    }
    // clearance's admin listens on all interfaces inside its container, on
    // the port Prometheus scrapes.
    let c = &services["clearance"];
    assert_eq!(
        c["environment"]["CLEARANCE_ADMIN__LISTEN"], "0.0.0.0:9464",
        "clearance's admin must listen on 0.0.0.0 in its container"
    );
    let prometheus =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/prometheus.yml"))
            .expect("deploy/prometheus/prometheus.yml");
    let prometheus: Value = serde_norway::from_str(&prometheus).expect("prometheus.yml is YAML");
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets[0], "clearance:9464", "{prometheus}");
    assert_eq!(prometheus["scrape_configs"][0]["metrics_path"], "/metrics");
    let test: Vec<&str> = c["healthcheck"]["test"]
        .as_array()
        .expect("clearance healthcheck")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(&test[..3], ["CMD", "clearance", "healthcheck"]);
    assert!(test.contains(&"http://127.0.0.1:9464/readyz"), "{test:?}");

    // Every bind mount's source exists in the repository.
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let source = v.split(':').next().unwrap();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(
                    Path::new(ROOT).join(rel).exists(),
                    "service {name} mounts {source}, which does not exist"
                );
            }
        }
    }
    // Grafana gets the datasource the dashboard names, and the dashboard.
    let ds = std::fs::read_to_string(
        Path::new(ROOT).join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("datasource provisioning");
    let ds: Value = serde_norway::from_str(&ds).expect("YAML");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    let uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    let dashboard = crate::dashboard::dashboard();
    let mut uids = std::collections::BTreeSet::new();
    crate::dashboard::walk(&dashboard, &mut |k, v| {
        if k == "datasource" {
            if let Some(u) = v["uid"].as_str() {
                if v["type"] == "prometheus" {
                    uids.insert(u.to_string());
                }
            }
        }
    });
    assert_eq!(
        uids.into_iter().collect::<Vec<_>>(),
        [uid],
        "the dashboard's datasource is the provisioned one"
    );
    let provider = std::fs::read_to_string(
        Path::new(ROOT).join("deploy/grafana/provisioning/dashboards/clearance.yml"),
    )
    .expect("dashboard provisioning");
    let provider: Value = serde_norway::from_str(&provider).expect("YAML");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let grafana_volumes: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .expect("grafana volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        grafana_volumes
            .iter()
            .any(|v| v.starts_with("./deploy/grafana/dashboards:") && v.contains(path)),
        "the dashboards directory is mounted where the provider reads ({path}): {grafana_volumes:?}"
    );
}

/// The Dockerfile builds with Cargo.toml's rust-version, runs as a
/// non-root user, and checks its health on /readyz with the binary.
#[test]
fn dockerfile_toolchain_user_and_healthcheck() {
    let rust_version = CARGO_TOML
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml has a rust-version")
        .trim_matches('"');
    let arg = DOCKERFILE
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("Dockerfile has ARG RUST_VERSION=");
    assert_eq!(
        arg, rust_version,
        "the Dockerfile's toolchain is Cargo.toml's rust-version"
    );
    assert!(
        DOCKERFILE.contains(&format!("rust-version ({rust_version})")),
        "the Dockerfile's comment names the rust-version"
    );
    let stages = DOCKERFILE
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage");
    let user = DOCKERFILE
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER");
    assert!(user != "root" && user != "0", "runs as {user}");
    let hc = DOCKERFILE
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .replace("\\\n", " ");
    let hc = hc.lines().next().unwrap();
    assert!(
        hc.contains(r#"CMD ["clearance", "healthcheck", "--url", "http://127.0.0.1:9464/readyz""#),
        "{hc}"
    );
}

fn healthcheck(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["healthcheck", "--url", url, "--timeout-secs", "5"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clearance healthcheck")
}

/// `clearance healthcheck`: exit 0 on a ready engine's /readyz, non-zero
/// with a message naming the URL on a closed port and on a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand() {
    let cfg = test_config("healthcheck");
    create_topics(&cfg).await;
    let (h, stop) = start_engine(&cfg).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while clearance::admin::get(h.admin_addr, "/readyz")
        .await
        .ok()
        .map(|r| r.0)
        != Some(200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "engine not ready in 120 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let url = format!("http://{}/readyz", h.admin_addr);
    let out = tokio::task::block_in_place(|| healthcheck(&url));
    assert!(
        out.status.success(),
        "{url}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("200"));

    let missing = format!("http://{}/nope", h.admin_addr);
    let out = tokio::task::block_in_place(|| healthcheck(&missing));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("answered 404"), "{err}");
    stop_engine(h, stop).await;

    // A closed port: bind one, then free it.
    let closed = free_admin_addr();
    let url = format!("http://{closed}/readyz");
    let out = tokio::task::block_in_place(|| healthcheck(&url));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("error: cannot reach {url}: ")) && err.contains("refused"),
        "{err}"
    );
    let out = tokio::task::block_in_place(|| healthcheck("https://127.0.0.1:1/readyz"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("only http:// URLs"), "{err}");
}
