//! # clearance
//!
//! A streaming decision engine: for every request to use an AI model, it
//! decides in real time whether the user is cleared to use that model under
//! export-control policy, and publishes the decision with its reasons and the
//! exact inputs and versions it used.
//!
//! # Layout
//!
//! - [`event`]: wire types (request, eligibility record, decision, dead
//!   letter) and their decoders. No I/O.
//! - [`policy`]: the policy file model, validation, compilation. No I/O but
//!   reading the file it is given.
//! - [`schema`]: the JSON Schemas of the wire documents, derived from the
//!   [`event`] types (`schemas/*.schema.json`). No I/O.
//! - [`vocab`]: reason codes, obligations, built-in rule ids: the
//!   vocabulary below both `policy` and `decide`.
//! - [`decide`]: the one pure function that every tool calls.
//! - [`eligibility`]: the DashMap store and the change-feed task.
//! - [`pipeline`]: the consumer-group request path, offsets stored only after
//!   delivery.
//! - [`kafka`]: client configuration and topic admin.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`,
//!   `/status`).
//! - [`metrics`]: every metric name, in one place.
//! - [`config`]: the typed, layered configuration; [`config_docs`]: its
//!   operator reference (`docs/configuration.md`), generated from the types.
//! - [`security`]: the least-privilege ACLs of each principal.
//! - [`rollout`]: policy publishing, and the watcher that swaps a newly
//!   published policy in (or schedules, supersedes, or rejects it), by the
//!   pure [`rollout::Timeline`].
//! - [`engine`]: wires it all together: `engine::run(config, shutdown)`.
//! - [`explain`]: the derivation of a recorded decision, traced by the same
//!   `decide` code (`decide_traced`).
//! - `shape` (private): objects and tables are read only from maps, never
//!   from serde's positional form.
//! - [`shadow`]: a candidate policy evaluated beside the active one on live
//!   traffic; differences go to `access.shadow`.
//! - [`replay`]: `clearance replay`: decides a window of the decision log
//!   again from its recorded inputs, with the recorded policy versions
//!   (fidelity) or a candidate policy (what-if), and reports every
//!   difference.
//! - [`client`]: the request/reply client of API frontends (Spring's
//!   `kafka_replyTopic` / `kafka_correlationId` headers): `decide` a
//!   request and get its decision back, or a fail-closed `timeout` deny.
//! - [`loadgen`], [`latency`], [`demo`]: tools built on the same core
//!   (`latency`: the round trip a frontend sees, the echo baseline, freshness).
//! - [`bench`]: the drain benchmark's pieces (`clearance bench`,
//!   `scripts/bench`): the pass-through pipe, the drain watcher, the outcome
//!   comparison, the input loader and the Markdown report.

#![warn(missing_docs)]

pub mod admin;
pub mod bench;
pub mod client;
pub mod config;
pub mod config_docs;
pub mod decide;
pub mod demo;
pub mod eligibility;
pub mod engine;
pub mod event;
pub mod explain;
pub mod kafka;
pub mod latency;
pub mod loadgen;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod replay;
pub mod rollout;
pub mod schema;
pub mod security;
pub mod shadow;
mod shape;
pub mod vocab;
