//! `chronik-server`: the Kafka protocol front of Chronik.
//!
//! # Layout
//! - `main.rs`: the `chronik` binary (`serve`, `wal`); `config/` the broker settings, each declared once
//!   in one table (`config/mod.rs`) from which options, environment, TOML keys and defaults derive.
//! - `server.rs`: the accept loop, one task per connection, framing, request order, limits, graceful
//!   shutdown; `frame_buf.rs` response frames whose record data is written without copying;
//!   `fetch_memory.rs` the memory budget Fetch responses are read under.
//! - `api/`: one file per Kafka API; `api/mod.rs` holds the table of versions advertised, each API's
//!   ordering rule and the dispatch.
//! - `broker.rs`: what every request handler shares: the WAL, the registry, the coordinators, the
//!   configuration; healing a poisoned partition.
//! - `registry/`: the broker's view of the replicated cluster metadata (`chronik-cluster`), and its own
//!   WAL partitions reconciled with it; `topic_config.rs` which topic configs exist and which are enforced.
//! - `replication/`: partition replication's decisions (high watermark, ISR changes, divergence), free of
//!   I/O and tested by a seeded simulation; its module doc states the invariants.
//! - `groups.rs`: the group coordinator (classic rebalance protocol, client-side assignment);
//!   `coordination.rs` which groups this broker coordinates (the offsets topic's partitions it leads).
//! - `offsets.rs`: committed consumer offsets, persisted through an internal WAL partition by one writer
//!   that shares fdatasyncs between commits.
//! - `producers.rs`: idempotent-producer sequence tracking, rebuilt from the log on start.
//! - `record_batch.rs`: validation of produced RecordBatches (stored verbatim).
//! - `housekeeping.rs`: the periodic task: retention, idle producer state, trimming the offsets log.
//! - `http.rs`: the operations endpoint (/metrics, /health, /ready); `telemetry.rs` the broker's metrics.
//! - `wal_tool.rs`: `chronik wal inspect|verify|dump`.
//! - `clock.rs`: wall-clock milliseconds; `open_files.rs` the open-file limit (raised at start) and the
//!   partition limit derived from it.
//! - `alloc_guard.rs`: the allocator that keeps absurd request claims from aborting the process.
//! - `fuzzing.rs` (feature `testkit`), `faults.rs` (feature `fault-injection`): test harnesses, not shipped.
//!
//! Kafka error codes appear only in `api/`; below it errors are the WAL's and the registry's own types.

pub mod alloc_guard;
mod api;
pub mod broker;
pub mod capacity;
pub mod clock;
pub mod config;
pub mod coordination;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod fetch_memory;
pub mod frame_buf;
#[cfg(feature = "testkit")]
pub mod fuzzing;
pub mod groups;
pub mod housekeeping;
pub mod http;
pub mod offsets;
pub mod producers;
pub mod record_batch;
pub mod registry;
pub mod replication;
mod server;
pub mod telemetry;
pub mod topic_config;
pub mod wal_tool;

pub use api::{parse as parse_request, ParsedRequest, RequestError};
pub use server::run;
