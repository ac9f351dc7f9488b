//! Partition replication as Kafka does it: the leader appends, followers fetch its batches and append
//! them byte-identical at the same offsets, and an in-sync replica set (ISR), kept by the controller,
//! says whose copies count. Unlike Kafka, a follower reports the offset it has made *durable*
//! (fdatasynced), so a record below the high watermark is on disk on every ISR member, not only in
//! their memory.
//!
//! This module holds the decisions, free of I/O and clocks (time is passed in), so they are tested
//! deterministically: `leader.rs` what a leader tracks (high watermark, followers' progress, ISR
//! changes to propose, when acks=all may be answered); `follower.rs` how a follower finds where its log
//! stops agreeing with the leader's. `replicas.rs` holds each local partition's role as of the metadata
//! applied here, and the high watermark consumers read up to.
//!
//! # Invariants
//! - **The high watermark never passes what every ISR member has made durable.** It is the smallest
//!   durable end among the leader and the *maximal* ISR: the ISR the controller committed plus every
//!   member of any change proposed since (a refused or timed-out proposal may have a retry, or an
//!   earlier try, still able to commit). A removal counts only once committed, so the HW never depends
//!   on a replica the controller could still elect that lacks the data.
//! - **ISR changes are proposed by the leader, one awaited at a time**, checked by the controller
//!   against the leader epoch and the partition epoch they were based on (a change based on stale state
//!   is refused, so at most one change per partition epoch commits), and adopted by the leader only
//!   when the metadata brings a newer partition epoch.
//! - **A replica joins the ISR only with everything acknowledged:** its durable end has reached the HW
//!   and the offset the leader's epoch began at.
//! - **Leaders come from the ISR only** (no unclean election): a new leader holds every record below any
//!   HW a previous leader exposed. It exposes its own HW only once that reaches the offset its epoch
//!   began at, so a consumer never sees the HW go back across a leader change.
//! - **A follower appends nothing of a new leader's before cutting its divergent tail:** its log agrees
//!   with the leader's up to the point it truncated to (`follower.rs`), found epoch by epoch from both
//!   term maps.

pub mod follower;
pub mod leader;
pub mod replicas;

#[cfg(test)]
mod sim_tests;
