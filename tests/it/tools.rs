//! The operator tools' publishing (load generator, demo): a record that is
//! not delivered is an error, never a silent success.

use std::time::Duration;

use clearance::event::EligibilityRecord;
use clearance::loadgen;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::harness::*;

/// Whether the broker at `bootstrap` creates topics on first use.
async fn auto_creates_topics(bootstrap: &str) -> bool {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let broker = md.brokers().first().expect("a broker").id();
    let res = admin
        .describe_configs(&[ResourceSpecifier::Broker(broker)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let cfg = res
        .into_iter()
        .next()
        .expect("one resource")
        .expect("broker config");
    cfg.get("auto.create.topics.enable")
        .and_then(|e| e.value.clone())
        .is_some_and(|v| v == "true")
}

/// Publishing the eligibility feed to a topic that does not exist, on a
/// broker that does not create topics automatically, is an error naming
/// the topic (it used to return Ok after every record had failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_topic_is_an_error() {
    assert!(
        !auto_creates_topics(&bootstrap()).await,
        "this test needs a broker with auto.create.topics.enable=false \
         (scripts/kafka's default): KAFKA_BOOTSTRAP_SERVERS names one that creates topics"
    );
    let topic = unique("missing");
    let recs: Vec<EligibilityRecord> = (0..20)
        .filter_map(|i| {
            loadgen::subject("mt", i)
                .record
                .map(EligibilityRecord::User)
        })
        .collect();
    let p = loadgen::data_producer(&bootstrap()).expect("producer");
    let res = tokio::task::block_in_place(|| loadgen::publish_eligibility(&p, &topic, &recs));
    let err = res.expect_err("publishing to a missing topic must fail");
    let msg = err.to_string();
    assert!(msg.contains(&topic), "the error names the topic: {msg}");
    match err {
        loadgen::LoadgenError::Delivery {
            topic: t, failed, ..
        } => {
            assert_eq!(t, topic);
            assert_eq!(failed, recs.len() as u64, "every record failed: {msg}");
        }
        other => panic!("a delivery error, not {other:?}"),
    }
}

/// The load generator's request sender confirms delivery too: requests
/// sent to a missing topic end the run with an error naming that topic
/// (not a report of zero decisions after the whole reading timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_requests_to_a_missing_topic_are_an_error() {
    assert!(
        !auto_creates_topics(&bootstrap()).await,
        "this test needs a broker with auto.create.topics.enable=false"
    );
    let cfg = test_config("lgmissing");
    let res = loadgen::run(loadgen::LoadOptions {
        kafka: cfg.kafka.clone(),
        requests_topic: cfg.topics.requests.clone(),
        decisions_topic: cfg.topics.decisions.clone(),
        eligibility_topic: cfg.topics.eligibility.clone(),
        requests: 100,
        rate: None,
        subjects: 10,
        seed: false,
        send: true,
        admin: None,
        timeout: Duration::from_secs(600),
        run_id: unique("lgm"),
    })
    .await;
    match res {
        Err(loadgen::LoadgenError::Delivery { topic, .. }) => {
            assert_eq!(topic, cfg.topics.requests)
        }
        other => panic!(
            "a delivery error for {}, not {other:?}",
            cfg.topics.requests
        ),
    }
}
