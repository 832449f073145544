//! Shadow mode through the broker: a candidate policy evaluated beside the
//! active one. Live decisions are the active policy's alone; the
//! differences on the shadow topic are exactly what a what-if re-decision
//! of the same decisions with the candidate gives.

use std::collections::BTreeSet;
use std::time::Duration;

use clearance::event::{Decision, Outcome, ShadowDifference};
use clearance::loadgen::{self, Subject};
use clearance::policy::{CompiledPolicy, EXAMPLE_POLICY};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_differences_match_a_what_if_of_the_same_traffic() {
    let dir = std::env::temp_dir().join(unique("shadow"));
    std::fs::create_dir_all(&dir).unwrap();
    // The candidate adds haiku-4 to the order.
    let candidate_text = EXAMPLE_POLICY
        .replace(
            "version = \"2026.12.1\"",
            "version = \"2026.12.2-candidate\"",
        )
        .replace(
            "\"haiku-4\" = { tags = [] }",
            "\"haiku-4\" = { tags = [\"order-2026-11\"] }",
        );
    let candidate_file = dir.join("candidate.toml");
    std::fs::write(&candidate_file, &candidate_text).unwrap();
    let candidate = CompiledPolicy::from_toml_str(&candidate_text, "candidate").unwrap();
    let active = CompiledPolicy::example();

    let mut cfg = test_config("shadow");
    cfg.policy.shadow_file = Some(candidate_file);
    create_topics(&cfg).await;
    let subjects: Vec<Subject> = (0..300).map(|i| loadgen::subject("sh", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    const N: usize = 3000;
    let mut batch = Vec::with_capacity(N);
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..N {
        let s = &subjects[i % subjects.len()];
        let model = loadgen::model_for(i);
        let req = loadgen::request(s, format!("sh-{i}"), model);
        expected.insert(req.request_id.clone(), s.category.expected(model));
        batch.push((
            req.subject_id.clone().into_bytes(),
            serde_json::to_vec(&req).unwrap(),
        ));
    }
    publish_raw(&p, &cfg.topics.requests, &batch);
    let c = reader(&cfg.topics.decisions);
    let reads =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(180), |r| r.len() >= N));
    let ds: Vec<Decision> = decisions(&reads);
    let live = first_by_request(&ds);
    assert_eq!(live.len(), N);

    // Live decisions: the active policy's, with the outcomes a run without
    // a shadow gives (the expectations of the mixed-load test).
    for (id, d) in &live {
        assert_eq!(d.versions.policy_version, active.version, "{id}");
        assert_eq!(d.outcome, expected[id], "{id}: {:?}", d.reasons);
    }
    // What-if: `clearance replay --policy candidate` over the same decisions;
    // shadow mode reports differences of outcome or reasons.
    let report = clearance::replay::replay_all(
        clearance::replay::Mode::WhatIf(std::sync::Arc::new(candidate.clone())),
        live.values(),
    );
    assert_eq!(report.replayed, N as u64);
    let what_if: BTreeSet<String> = report
        .changes
        .iter()
        .filter(|c| c.fields.contains(&"outcome") || c.fields.contains(&"reasons"))
        .map(|c| c.request_id.clone())
        .collect();
    assert!(
        what_if.len() > 50,
        "the candidate changes something: {}",
        what_if.len()
    );

    let sc = reader(&cfg.topics.shadow);
    let n = what_if.len();
    let reads =
        tokio::task::block_in_place(|| read_until(&sc, Duration::from_secs(60), |r| r.len() >= n));
    // Nothing more arrives than the what-if set.
    let extra = tokio::task::block_in_place(|| read_until(&sc, Duration::from_secs(2), |_| false));
    let diffs: Vec<ShadowDifference> = reads
        .iter()
        .chain(&extra)
        .map(|r| {
            let v: serde_json::Value =
                serde_json::from_slice(&r.payload).expect("shadow difference JSON");
            crate::schemas::validate("shadow-difference", &v)
                .unwrap_or_else(|e| panic!("schema: {e}\n{v}"));
            serde_json::from_value(v).expect("a shadow difference")
        })
        .collect();
    let shadowed: BTreeSet<String> = diffs.iter().map(|d| d.request_id.clone()).collect();
    assert_eq!(shadowed.len(), diffs.len(), "one difference per request");
    assert_eq!(shadowed, what_if);
    for d in &diffs {
        assert_eq!(d.active.policy_version, active.version);
        assert_eq!(d.shadow.policy_version, candidate.version);
        assert_eq!(d.model, "haiku-4", "only haiku-4 changes: {d:?}");
        // Allowed before; now denied, or allowed for another reason (a U.S.
        // person: `us_person` instead of `unrestricted_model`).
        assert_eq!(d.active.outcome, Outcome::Allow, "{d:?}");
        assert!(
            d.shadow.outcome == Outcome::Deny || d.shadow.reasons != d.active.reasons,
            "{d:?}"
        );
        assert_eq!(live[&d.request_id].outcome, d.active.outcome);
        assert_eq!(live[&d.request_id].reasons, d.active.reasons);
    }
    let lost = diffs
        .iter()
        .filter(|d| d.shadow.outcome == Outcome::Deny)
        .count();
    assert!(lost > 0 && lost < n, "{lost} of {n} lose access");
    let s = engine_status(&h).await;
    assert_eq!(
        s["policy"]["shadow"]["version"], "2026.12.2-candidate",
        "{s}"
    );
    assert_eq!(s["policy"]["shadow"]["differences"], n as u64, "{s}");
    assert_eq!(s["policy"]["shadow"]["evaluated"], N as u64, "{s}");
    let (_, metrics) = clearance::admin::get(h.admin_addr, "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains(&format!(
            "clearance_shadow_differences_total{{from=\"allow\",to=\"deny\",model=\"haiku-4\"}} {lost}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("shadow"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop_engine(h, stop).await;
    let _ = std::fs::remove_dir_all(&dir);
}
