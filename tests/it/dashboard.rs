//! The Grafana dashboard (`deploy/grafana/dashboards/clearance.json`) names
//! only metrics that a running engine exports on `/metrics` and that
//! `src/metrics.rs` declares, with labels those metrics have.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clearance::event::EligibilityRecord;
use clearance::loadgen;
use regex::Regex;
use serde_json::Value;

use crate::harness::*;

const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboards/clearance.json");
const METRICS_RS: &str = include_str!("../../src/metrics.rs");
const EXAMPLE_POLICY: &str = include_str!("../../policies/example.toml");

/// The dashboard's JSON.
pub fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Call `f(key, value)` for every member of every object in `v`.
pub fn walk(v: &Value, f: &mut impl FnMut(&str, &Value)) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                f(k, x);
                walk(x, f);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// Every PromQL query of a dashboard: the panels' `expr`, and the template
/// variables' queries.
fn queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(d, &mut |k, v| {
        if k == "expr" {
            out.push(v.as_str().expect("expr is a string").to_string());
        }
    });
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            match &var["query"] {
                Value::String(q) => out.push(q.clone()),
                q => out.push(q["query"].as_str().expect("a variable's query").to_string()),
            }
        }
    }
    out
}

/// The metric names and the label names that a PromQL query uses.
///
/// String literals, label matchers (`{...}`, whose label names are kept),
/// ranges (`[...]`) and grouping clauses (`by (...)`, `without`, `on`,
/// `ignoring`, `group_left`, `group_right`, whose labels are kept) are
/// removed; what is left of the identifiers, but for functions and
/// aggregations (followed by `(`), keywords and Grafana variables, are
/// metric names. Grafana's `label_values(metric, label)` is understood.
fn names_in(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut labels = BTreeSet::new();
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"#).unwrap();
    let mut e = strings.replace_all(expr, "\"\"").into_owned();
    let label_values =
        Regex::new(r"label_values\s*\(([^,()]*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)").unwrap();
    for c in label_values.captures_iter(&e) {
        labels.insert(c[2].to_string());
    }
    e = label_values.replace_all(&e, " $1 ").into_owned();
    let matchers = Regex::new(r"\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap();
    for c in matchers.captures_iter(&e) {
        for m in matcher.captures_iter(&c[1]) {
            labels.insert(m[1].to_string());
        }
    }
    e = matchers.replace_all(&e, " ").into_owned();
    e = Regex::new(r"\[[^\]]*\]")
        .unwrap()
        .replace_all(&e, " ")
        .into_owned();
    let grouping =
        Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)").unwrap();
    for c in grouping.captures_iter(&e) {
        for l in c[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            labels.insert(l.to_string());
        }
    }
    e = grouping.replace_all(&e, " ").into_owned();
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
    ];
    let ident = Regex::new(r"[$]?[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap();
    let mut metrics = BTreeSet::new();
    for m in ident.find_iter(&e) {
        let name = m.as_str();
        let before = e[..m.start()].chars().next_back();
        let after = e[m.end()..].trim_start().chars().next();
        if name.starts_with('$')
            || KEYWORDS.contains(&name)
            || after == Some('(')
            || before.is_some_and(|c| c.is_ascii_digit() || c == '.')
        {
            continue;
        }
        metrics.insert(name.to_string());
    }
    (metrics, labels)
}

/// The metric names declared in `src/metrics.rs`.
fn declared() -> BTreeSet<String> {
    Regex::new(r#""(clearance_[a-z0-9_]+)""#)
        .unwrap()
        .captures_iter(METRICS_RS)
        .map(|c| c[1].to_string())
        .collect()
}

/// The series names of a `/metrics` text, each with the label names its
/// samples carry.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').unwrap_or(line.len());
            for c in label.captures_iter(&line[end..close]) {
                labels.insert(c[1].to_string());
            }
        }
    }
    out
}

/// What is wrong with the dashboard's queries, given what an engine
/// exports and what `src/metrics.rs` declares: each metric must be
/// exported and declared (a histogram's `_bucket`, `_sum` and `_count`
/// series by its name), and each label must be one of the query's
/// metrics' (or `instance` and `job`, which Prometheus adds).
fn problems(
    dashboard: &Value,
    exported: &BTreeMap<String, BTreeSet<String>>,
    declared: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let qs = queries(dashboard);
    if qs.is_empty() {
        out.push("the dashboard has no queries".to_string());
    }
    for q in qs {
        let (metrics, labels) = names_in(&q);
        if metrics.is_empty() {
            out.push(format!("no metric found in {q:?}"));
        }
        let mut known_labels: BTreeSet<String> =
            ["instance", "job"].iter().map(|s| s.to_string()).collect();
        for m in &metrics {
            match exported.get(m) {
                Some(ls) => known_labels.extend(ls.iter().cloned()),
                None => out.push(format!(
                    "{m} (in {q:?}) is not exported by the engine's /metrics"
                )),
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s))
                .filter(|b| declared.contains(*b));
            if !declared.contains(m) && base.is_none() {
                out.push(format!("{m} (in {q:?}) is not declared in src/metrics.rs"));
            }
        }
        for l in labels.difference(&known_labels) {
            out.push(format!(
                "label {l:?} (in {q:?}) is not a label of {metrics:?} on /metrics"
            ));
        }
    }
    out
}

/// Every metric name the dashboard uses.
fn dashboard_metrics(d: &Value) -> BTreeSet<String> {
    queries(d).iter().flat_map(|q| names_in(q).0).collect()
}

#[test]
fn promql_names_are_extracted() {
    let (m, l) = names_in(
        r#"histogram_quantile(0.99, sum by (le) (rate(clearance_decision_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval])))"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        ["clearance_decision_latency_seconds_bucket"]
    );
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["instance", "le"]);
    let (m, l) = names_in(
        r#"sum by (model) (rate(a_total{outcome="deny", x!="by (y)"}[5m])) / on(model) group_left sum without (reason) (b) > bool 0.5 and c unless d offset 5m"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        ["a_total", "b", "c", "d"]
    );
    assert_eq!(
        l.into_iter().collect::<Vec<_>>(),
        ["model", "outcome", "reason", "x"]
    );
    let (m, l) = names_in("label_values(clearance_ready, instance)");
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["clearance_ready"]);
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["instance"]);
}

/// The check itself, without an engine: a dashboard that names a metric
/// the engine does not export, or a label it does not have, fails.
#[test]
fn a_bogus_metric_or_label_fails_the_check() {
    let declared = declared();
    assert!(
        declared.contains("clearance_decisions_total"),
        "{declared:?}"
    );
    assert!(declared.contains("clearance_eligibility_deletion_marker_evictions_total"));
    // What an engine would export: every metric the dashboard names, with
    // the labels it uses.
    let d = dashboard();
    let mut fake: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for q in queries(&d) {
        let (ms, ls) = names_in(&q);
        for m in ms {
            fake.entry(m).or_default().extend(ls.iter().cloned());
        }
    }
    assert_eq!(problems(&d, &fake, &declared), Vec::<String>::new());

    let bogus = DASHBOARD.replacen(
        "clearance_feed_stale{",
        "clearance_feed_stale_bogus_total{",
        1,
    );
    let p = problems(&serde_json::from_str(&bogus).unwrap(), &fake, &declared);
    assert!(
        p.iter().any(
            |p| p.starts_with("clearance_feed_stale_bogus_total") && p.contains("not exported")
        ),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("not declared in src/metrics.rs")),
        "{p:?}"
    );
    let bogus = DASHBOARD.replacen("sum by (source, error)", "sum by (source, kind)", 1);
    assert_ne!(bogus, DASHBOARD);
    let mut fake2 = fake.clone();
    fake2
        .get_mut("clearance_deadletters_total")
        .unwrap()
        .remove("kind");
    let p = problems(&serde_json::from_str(&bogus).unwrap(), &fake2, &declared);
    assert!(p.iter().any(|p| p.starts_with("label \"kind\"")), "{p:?}");
}

fn with_version(v: &str) -> String {
    EXAMPLE_POLICY.replace("version = \"2026.12.1\"", &format!("version = \"{v}\""))
}

fn effective_from(text: &str, at: &str) -> String {
    text.replacen(
        "[policy]",
        &format!("effective_from = \"{at}\"\n\n[policy]"),
        1,
    )
}

/// Start an engine, make every event the dashboard shows happen at least
/// once (decisions, a dead letter, tombstones and a deletion-marker
/// eviction, snapshots, backpressure, stale data, a policy activated,
/// rejected, scheduled and superseded), and check the dashboard against its
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_metrics_are_exported_by_a_running_engine() {
    let mut cfg = test_config("dashboard");
    let dir = std::env::temp_dir().join(unique("clearance-dashboard"));
    std::fs::create_dir_all(&dir).unwrap();
    cfg.engine.snapshot_path = Some(dir.join("eligibility.snap"));
    cfg.engine.snapshot_interval_secs = 1;
    // Two tombstones with room for one marker: an eviction.
    cfg.engine.deletion_markers_max = 1;
    // A one-message producer queue: the second decision waits (backpressure).
    cfg.engine.producer_queue_max_messages = 1;
    // The engine sets clearance_feed_stale at its first change: a bound
    // shorter than the statistics interval (which confirms the feed caught
    // up) makes the data stale between two statistics.
    cfg.engine.staleness_bound_secs = 1;
    cfg.kafka.statistics_interval_ms = 3000;
    create_topics(&cfg).await;

    let subjects: Vec<_> = (0..20).map(|i| loadgen::subject("db", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    // Two of the subjects deleted.
    let doomed: Vec<String> = subjects
        .iter()
        .filter_map(|s| s.record.clone())
        .take(2)
        .map(|r| EligibilityRecord::User(r).key())
        .collect();
    assert_eq!(doomed.len(), 2);
    for key in &doomed {
        loadgen::send_blocking(&p, &cfg.topics.eligibility, key.as_bytes(), None)
            .expect("tombstone");
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).expect("flush");

    // Requests, and one that is not JSON.
    let mut batch = request_batch(&subjects, "db", 0..60);
    batch.push((b"db-x".to_vec(), b"not json".to_vec()));
    publish_raw(&p, &cfg.topics.requests, &batch);

    // Request/reply: a round trip through the client (replies, client
    // calls), and a request whose reply topic does not exist (a reply
    // failure).
    let reply_topic = format!("{}.replies", cfg.topics.requests);
    crate::client::create_topic(&reply_topic, 1).await;
    let c = crate::client::client(crate::client::client_options(&cfg, &reply_topic, Some(0))).await;
    let req = loadgen::request(&subjects[5], "db-reply".into(), loadgen::model_for(0));
    let d = c
        .decide(&req, Duration::from_secs(60))
        .await
        .expect("round trip");
    assert_eq!(d.request_id, "db-reply", "{d:?}");
    let missing = format!("{}.missing", cfg.topics.requests);
    let body = serde_json::to_vec(&loadgen::request(
        &subjects[6],
        "db-noreply".into(),
        loadgen::model_for(1),
    ))
    .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: clearance::pipeline::reply::REPLY_TOPIC_HEADER,
        value: Some(missing.as_bytes()),
    });
    p.send(
        rdkafka::producer::BaseRecord::to(&cfg.topics.requests)
            .key(subjects[6].id.as_bytes())
            .payload(&body[..])
            .headers(headers),
    )
    .map_err(|(e, _)| e)
    .expect("send");
    loadgen::confirm_delivery(&p).expect("delivered");

    // Policies: one activated, one rejected, one scheduled for later, one
    // superseded (its effective time is before the active one's).
    clearance::rollout::publish_text(&cfg, &with_version("2026.12.2"), "v2.toml")
        .await
        .expect("publish v2");
    clearance::rollout::publish_unchecked(&cfg, "junk", b"\xff not a policy")
        .await
        .expect("publish junk");
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    clearance::rollout::publish_text(
        &cfg,
        &effective_from(&with_version("2026.12.3"), &later),
        "v3.toml",
    )
    .await
    .expect("publish v3");
    clearance::rollout::publish_text(
        &cfg,
        &effective_from(&with_version("2026.12.4"), "2020-01-01T00:00:00Z"),
        "v4.toml",
    )
    .await
    .expect("publish v4");

    // Every metric of the dashboard appears (the lag gauges with the next
    // librdkafka statistics, the snapshot with the next write).
    let d = dashboard();
    let wanted = dashboard_metrics(&d);
    assert!(wanted.len() >= 25, "{wanted:?}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let text = loop {
        let (code, text) = clearance::admin::get(h.admin_addr, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(code, 200);
        let have = exported(&text);
        let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains_key(*m)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop_engine(h, stop).await;
    let _ = std::fs::remove_dir_all(&dir);

    let have = exported(&text);
    let p = problems(&d, &have, &declared());
    assert!(
        p.is_empty(),
        "the dashboard does not match the engine's /metrics:\n  {}\n\n/metrics:\n{text}",
        p.join("\n  ")
    );
    let unused: Vec<String> = declared()
        .into_iter()
        .filter(|m| {
            !wanted.iter().any(|w| {
                w.strip_prefix(m.as_str())
                    .is_some_and(|s| ["", "_bucket", "_sum", "_count"].contains(&s))
            })
        })
        .collect();
    eprintln!("declared metrics not on the dashboard: {unused:?}");
}
