//! Cluster metadata: brokers, topics and their partition assignments, replicated by Raft (openraft) among
//! the controller voters and stored through chronik-wal.
//!
//! This crate knows Kafka's metadata model (topics, partitions, replicas), not its wire protocol.
//!
//! # Invariants
//! - **Raft log = one WAL partition.** Entry `i` of the Raft log is the batch at offset `i` of an internal
//!   WAL partition, one entry per batch. An append is reported durable to Raft (`LogFlushed`) only after
//!   the WAL's fdatasync of it; a conflicting suffix is cut with the WAL's crash-safe `truncate_to`.
//! - **Vote, purge point and committed index** live in one small file written atomically (temp file,
//!   fdatasync, rename, directory fsync) and are durable before the call that saved them returns. The
//!   purge point is durable before any entry below it is deleted, so a restart never finds a log that
//!   starts later than the purge point says.
//! - **The state machine is rebuilt, never trusted from memory:** at start it loads the last snapshot
//!   (written atomically, with the log id it covers) and Raft re-applies the committed entries after it.
//!   Applying is deterministic: every node that applies the same entries holds the same state.
//! - A snapshot is written before the log entries it covers may be purged.
//! - **Liveness is the leader's alone:** brokers heartbeat the controller leader; only the leader fences,
//!   and only a broker silent for a whole session timeout since that leader took office (a new leader
//!   gives every broker a fresh session). Fencing and re-registration are log entries, so every node
//!   moves leadership the same way.
//! - **Any node takes a change:** a follower forwards it to the leader and answers only once it has
//!   applied the change itself, so what a client was told is visible on the node it asked.

// openraft's traits return its `StorageError` (224 bytes); the helpers behind them return it as is.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod node;
pub mod placement;
pub mod state_machine;
pub mod types;
pub mod voters;

pub use log_store::WalLogStore;
pub use node::{ControllerStatus, MetaNode, NodeConfig, ProposeError, StartError};
pub use placement::{place, PlacementError};
pub use state_machine::{MetadataState, StateMachineStore};
pub use types::{Command, CommandResult, MetaRaft};
pub use voters::{parse_voters, VotersError};
