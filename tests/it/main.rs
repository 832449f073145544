//! The integration test binary: every test runs against a real Apache Kafka
//! broker (started once per run by `scripts/kafka`, or the one named by
//! `KAFKA_BOOTSTRAP_SERVERS`).

mod admin;
mod bench;
mod cli;
mod client;
mod dashboard;
mod deploy;
mod domain;
mod examples;
mod explain;
mod faults;
mod group;
mod harness;
mod invariants;
mod memory;
mod ops;
mod pipeline;
mod policy;
mod process;
mod replay;
mod reply;
mod schemas;
mod security;
mod shadow;
mod signing;
mod status_page;
mod tombstones;
mod tools;
