//! `chronik-server`: the Kafka protocol front of Chronik.
//!
//! # Layout
//! - `server.rs`: the accept loop, one task per connection, framing, request-size limit, graceful shutdown.
//! - `api/`: one file per Kafka API; `api/mod.rs` holds the table of versions advertised and the dispatch.
//! - `broker.rs`: what every request handler shares: the WAL, the topic registry, the configuration.
//! - `topics.rs`: the topic registry, persisted through an internal WAL partition; `topic_config.rs`
//!   which topic configs exist and which are enforced (retention).
//! - `retention.rs`: the periodic task deleting old segments by each topic's retention settings.
//! - `groups.rs`: the group coordinator (classic rebalance protocol, client-side assignment).
//! - `offsets.rs`: committed consumer offsets, persisted through an internal WAL partition.
//! - `producers.rs`: idempotent-producer sequence tracking, rebuilt from the log on start.
//! - `record_batch.rs`: validation of produced RecordBatches (stored verbatim).
//! - `http.rs`: the operations endpoint (/metrics, /health, /ready).
//! - `telemetry.rs`: request and connection metrics.
//! - `alloc_guard.rs`: the allocator that keeps absurd request claims from aborting the process.
//!
//! Kafka error codes appear only in `api/`; below it errors are the WAL's and the registry's own types.

pub mod alloc_guard;
mod api;
pub mod broker;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod fetch_memory;
pub mod frame_buf;
#[doc(hidden)]
pub mod fuzzing;
pub mod groups;
pub mod http;
pub mod offsets;
pub mod producers;
pub mod record_batch;
pub mod retention;
mod server;
pub mod telemetry;
pub mod topic_config;
pub mod topics;
pub mod wal_tool;

pub use api::{parse as parse_request, ParsedRequest, RequestError};
pub use server::run;
