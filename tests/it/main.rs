//! The integration test binary: every test runs against a real Apache Kafka
//! broker (started once per run by `scripts/kafka`, or the one named by
//! `KAFKA_BOOTSTRAP_SERVERS`).

mod domain;
mod explain;
mod faults;
mod harness;
mod invariants;
mod pipeline;
mod policy;
mod process;
mod schemas;
mod security;
mod signing;
mod tombstones;
mod tools;
