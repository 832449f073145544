//! `/api/summary`: what the status page shows, in one JSON document, from
//! the engine's `/status`, its rendered Prometheus metrics and the
//! [`DecisionLog`]. Counts are cumulative; the
//! page turns them into rates between two polls.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::recent::DecisionLog;
use crate::metrics as m;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parse the samples of a Prometheus text exposition (comments and lines
/// that do not parse are skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples named `name`, or `None` when there is none.
fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let mut it = samples.iter().filter(|s| s.name == name).peekable();
    it.peek()?;
    Some(it.map(|s| s.value).sum())
}

/// The summary document: readiness, the active policy (and the shadow one),
/// decisions by outcome and model, denials by reason (a decision denied for
/// two reasons counts under both), consumer lag, change-feed freshness and
/// the recent denials (request id and reasons only).
pub fn summary(
    metrics_text: &str,
    status: &Value,
    ready: bool,
    healthy: bool,
    log: &DecisionLog,
) -> Value {
    let samples = parse_prometheus(metrics_text);
    let mut deny_reasons: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples.iter().filter(|s| {
        s.name == m::DECISIONS_TOTAL && s.labels.get("outcome").map(String::as_str) == Some("deny")
    }) {
        if let Some(r) = s.labels.get("reason") {
            *deny_reasons.entry(r.clone()).or_default() += s.value;
        }
    }
    let policy = &status["policy"];
    json!({
        "instance_id": status["instance_id"],
        "ready": ready,
        "healthy": healthy,
        "failure": status["failure"],
        "policy": {
            "id": policy["id"],
            "version": policy["version"],
            "data_version": policy["data_version"],
            "shadow": policy["shadow"],
        },
        "decisions": log.counts(),
        "decisions_by_model": log.by_model(),
        "deny_reasons": deny_reasons,
        "consumer_lag_messages": sum(&samples, m::CONSUMER_LAG_MESSAGES),
        "feed": {
            "lag_messages": sum(&samples, m::FEED_LAG_MESSAGES),
            "last_record_age_seconds": sum(&samples, m::FEED_LAST_RECORD_AGE_SECONDS),
            // /status has it from the start; the gauge only once it changed.
            "stale": status["feed"]["stale"]
                .as_bool()
                .or_else(|| sum(&samples, m::FEED_STALE).map(|v| v > 0.0)),
        },
        "assigned_partitions": status["assigned_partitions"],
        "recent_denials": log.denials(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    clearance_decisions_total{outcome=\"deny\",reason=\"a\\\"b\",model=\"m\"} 3\n\
                    clearance_feed_stale 0\n\
                    clearance_consumer_lag_messages{partition=\"0\"} 4\n\
                    clearance_consumer_lag_messages{partition=\"1\"} 5\n";
        let s = parse_prometheus(text);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].labels["reason"], "a\"b");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(sum(&s, m::CONSUMER_LAG_MESSAGES), Some(9.0));
        assert_eq!(sum(&s, "absent"), None);
    }

    #[test]
    fn summary_counts_denials_by_reason_and_keeps_the_shadow_version() {
        let text = "clearance_decisions_total{outcome=\"deny\",reason=\"sanctioned\",model=\"a\"} 2\n\
                    clearance_decisions_total{outcome=\"deny\",reason=\"sanctioned\",model=\"b\"} 1\n\
                    clearance_decisions_total{outcome=\"allow\",reason=\"eligible\",model=\"a\"} 7\n\
                    clearance_feed_last_record_age_seconds 1.5\n";
        let status = json!({"instance_id": "i", "policy": {"id": "p", "version": "3", "shadow": {"version": "4"}}});
        let doc = summary(text, &status, true, true, &DecisionLog::new());
        assert_eq!(doc["deny_reasons"], json!({"sanctioned": 3.0}));
        assert_eq!(doc["policy"]["shadow"]["version"], "4");
        assert_eq!(doc["feed"]["last_record_age_seconds"], 1.5);
        assert_eq!(doc["consumer_lag_messages"], Value::Null);
        assert_eq!(doc["decisions"], json!({"allow": 0, "deny": 0}));
    }
}
