//! Idempotent producers: per (partition, producer id), the epoch, the last sequence written and the
//! last few batches, so that a retried batch is answered with its original offset instead of being
//! written twice, and a batch that skips sequences is refused (OUT_OF_ORDER_SEQUENCE_NUMBER).
//!
//! The state is rebuilt on start from the stored batches themselves (each keeps its producer id, epoch and
//! base sequence), so it survives restarts and crashes with the log it describes.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use chronik_wal::{PartitionWal, TopicPartition};
use dashmap::{DashMap, DashSet};
use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;

use crate::record_batch::{seq_add, stored_header, ProducedBatch};

/// Batches remembered per producer and partition: librdkafka and the Java client keep at most five in
/// flight, so a retry is always among them.
const RECENT_BATCHES: usize = 5;

#[derive(Debug, Default)]
pub struct ProducerEntry {
    epoch: i16,
    last_sequence: i32,
    /// (first sequence, last sequence, base offset) of the latest batches.
    recent: VecDeque<(i32, i32, i64)>,
    known: bool,
    /// The partition's write-failure count when this state was last recorded. Batches are recorded when
    /// queued, before they are durable; if a group write failed since, some may never have been written.
    failures_seen: u64,
    /// When a batch was last recorded: entries idle for `producer_id_expiration_ms` are dropped.
    last_used: Option<Instant>,
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Already written at this base offset: answer with it, write nothing.
    Duplicate(i64),
    Reject(ResponseError),
}

impl ProducerEntry {
    /// `write_failures` is the partition's current count (see `PartitionWal::write_failures`).
    pub fn check(&self, batch: &ProducedBatch, write_failures: u64) -> Verdict {
        if !self.known {
            return Verdict::Append;
        }
        if write_failures != self.failures_seen {
            // Recorded batches may have failed to reach the log: the state cannot be trusted. The client
            // answers UNKNOWN_PRODUCER_ID by bumping its epoch and resending from sequence 0.
            return Verdict::Reject(ResponseError::UnknownProducerId);
        }
        if batch.producer_epoch < self.epoch {
            return Verdict::Reject(ResponseError::InvalidProducerEpoch);
        }
        if batch.producer_epoch > self.epoch {
            return if batch.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
            };
        }
        let last = batch.last_sequence();
        if let Some(&(_, _, offset)) = self
            .recent
            .iter()
            .find(|(f, l, _)| *f == batch.base_sequence && *l == last)
        {
            return Verdict::Duplicate(offset);
        }
        if batch.base_sequence == seq_add(self.last_sequence, 1) {
            Verdict::Append
        } else {
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        }
    }

    /// Records a stored batch found while rebuilding, unless a later one is recorded already: after a
    /// reopen the partition takes appends while the rebuild is still reading older batches.
    pub fn replay(&mut self, batch: &ProducedBatch, base_offset: i64, write_failures: u64) {
        if self.recent.back().is_none_or(|&(_, _, at)| at < base_offset) {
            self.record(batch, base_offset, write_failures);
        }
    }

    /// Records a batch written at `base_offset`.
    pub fn record(&mut self, batch: &ProducedBatch, base_offset: i64, write_failures: u64) {
        self.failures_seen = write_failures;
        self.last_used = Some(Instant::now());
        if !self.known || batch.producer_epoch != self.epoch {
            self.recent.clear();
        }
        self.known = true;
        self.epoch = batch.producer_epoch;
        self.last_sequence = batch.last_sequence();
        if self.recent.len() == RECENT_BATCHES {
            self.recent.pop_front();
        }
        self.recent
            .push_back((batch.base_sequence, self.last_sequence, base_offset));
    }
}

/// All producer entries of the broker.
#[derive(Debug, Default)]
pub struct Producers {
    entries: DashMap<(TopicPartition, i64), Arc<Mutex<ProducerEntry>>>,
    /// Partitions whose state is being rebuilt after a heal (see [`Producers::hold_for_rebuild`]).
    rebuilding: DashSet<TopicPartition>,
}

/// Holds a partition's idempotent batches off until dropped (see [`Producers::hold_for_rebuild`]).
#[must_use = "the hold ends when this is dropped"]
pub struct RebuildHold<'a> {
    producers: &'a Producers,
    tp: TopicPartition,
}

impl RebuildHold<'_> {
    /// The rebuild failed: the partition's idempotent batches stay refused (retriably) for as long as
    /// the broker runs, since its state is partial; a restart rebuilds it or fails to start.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for RebuildHold<'_> {
    fn drop(&mut self) {
        self.producers.rebuilding.remove(&self.tp);
    }
}

impl Producers {
    /// What to do with `batch` of the producer whose (locked) entry on `tp` is `entry`.
    pub fn check(
        &self,
        tp: &TopicPartition,
        entry: &ProducerEntry,
        batch: &ProducedBatch,
        write_failures: u64,
    ) -> Verdict {
        if self.rebuilding.contains(tp) {
            // Retriable, as while the partition was failed: a retry of a batch already in the log could
            // not be recognised before the rebuild has read it.
            return Verdict::Reject(ResponseError::KafkaStorageError);
        }
        entry.check(batch, write_failures)
    }

    /// Forgets `tp`'s state for a rebuild from its log (after a heal): until the returned hold is dropped,
    /// [`Producers::check`] refuses its idempotent batches. Call while the partition still refuses
    /// appends, so that nothing recorded against the healed partition is forgotten.
    pub fn hold_for_rebuild(&self, tp: &TopicPartition) -> RebuildHold<'_> {
        self.forget_partition(tp);
        self.rebuilding.insert(tp.clone());
        RebuildHold {
            producers: self,
            tp: tp.clone(),
        }
    }

    /// The entry to lock while checking and appending a batch of `producer_id` to `tp`: batches of one
    /// producer to one partition are serialised, other producers append concurrently.
    pub fn entry(&self, tp: &TopicPartition, producer_id: i64) -> Arc<Mutex<ProducerEntry>> {
        Arc::clone(&self.entries.entry((tp.clone(), producer_id)).or_default())
    }

    /// Drops one producer's state on a partition after one of its appends failed, if `entry` (what the
    /// append was recorded in) is still that state: a heal may have rebuilt it from the log meanwhile, and
    /// forgetting the rebuilt one would let a retry of a batch in the log be appended again.
    pub fn forget(&self, tp: &TopicPartition, producer_id: i64, entry: &Arc<Mutex<ProducerEntry>>) {
        self.entries.remove_if(&(tp.clone(), producer_id), |_, current| {
            Arc::ptr_eq(current, entry)
        });
    }

    /// Drops a partition's state (it is deleted), including a hold a failed rebuild kept.
    pub fn forget_partition(&self, tp: &TopicPartition) {
        self.entries.retain(|(t, _), _| t != tp);
        self.rebuilding.remove(tp);
    }

    /// Drops the state of producers that wrote nothing to a partition for `idle` (Kafka's
    /// `producer.id.expiration.ms`), so the map stays bounded by recent activity. A producer that comes back
    /// later starts afresh there (its next batch is accepted without a sequence check, as after an expiry in
    /// Kafka). Returns how many entries went.
    pub fn expire(&self, idle: Duration) -> usize {
        let before = self.entries.len();
        let now = Instant::now();
        self.entries.retain(|_, entry| match entry.try_lock() {
            // In use right now: keep.
            None => true,
            Some(e) => e.last_used.is_some_and(|t| now.duration_since(t) < idle),
        });
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Rebuilds the state of every idempotent producer from the stored batches of `partitions`.
    /// Reads each log once, front to back; returns the number of batches seen.
    pub fn rebuild(&self, partitions: &[Arc<PartitionWal>]) -> Result<u64, chronik_wal::Error> {
        let mut seen = 0;
        for p in partitions {
            let tp = p.topic_partition();
            let mut next = p.log_start_offset();
            loop {
                let batches = p.read(next, REBUILD_READ_BYTES)?;
                let Some(last) = batches.last() else { break };
                next = last.next_offset();
                for b in &batches {
                    seen += 1;
                    if let Some(h) = stored_header(&b.payload).filter(|h| h.producer_id >= 0) {
                        self.entry(tp, h.producer_id)
                            .lock()
                            .replay(&h, b.base_offset, p.write_failures());
                    }
                }
            }
        }
        Ok(seen)
    }
}

/// Bytes per read while rebuilding.
const REBUILD_READ_BYTES: u64 = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, seq: i32, count: u32) -> ProducedBatch {
        ProducedBatch {
            bytes: bytes::Bytes::new(),
            offset_count: count,
            first_timestamp: 0,
            max_timestamp: 0,
            record_count: count as i32,
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence: seq,
        }
    }

    #[test]
    fn a_rebuild_never_takes_the_state_back_past_a_live_append() {
        let mut e = ProducerEntry::default();
        // Appended after the reopen, before the rebuild read the older batches.
        e.record(&batch(0, 10, 2), 200, 0);
        e.replay(&batch(0, 0, 5), 100, 0);
        e.replay(&batch(0, 5, 5), 105, 0);
        assert_eq!(
            e.check(&batch(0, 12, 1), 0),
            Verdict::Append,
            "still after the live batch"
        );
        assert_eq!(e.check(&batch(0, 10, 2), 0), Verdict::Duplicate(200));
        // On a fresh entry (a plain rebuild) replay records in log order.
        let mut fresh = ProducerEntry::default();
        fresh.replay(&batch(0, 0, 5), 100, 0);
        fresh.replay(&batch(0, 5, 5), 105, 0);
        assert_eq!(fresh.check(&batch(0, 10, 1), 0), Verdict::Append);
    }

    #[test]
    fn retries_are_recognised_and_gaps_refused() {
        let mut e = ProducerEntry::default();
        assert_eq!(e.check(&batch(0, 0, 3), 0), Verdict::Append);
        e.record(&batch(0, 0, 3), 100, 0);
        assert_eq!(e.check(&batch(0, 3, 2), 0), Verdict::Append);
        e.record(&batch(0, 3, 2), 103, 0);
        assert_eq!(
            e.check(&batch(0, 0, 3), 0),
            Verdict::Duplicate(100),
            "a retry gets its first offset"
        );
        assert_eq!(e.check(&batch(0, 3, 2), 0), Verdict::Duplicate(103));
        assert_eq!(
            e.check(&batch(0, 6, 1), 0),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(e.check(&batch(0, 5, 1), 0), Verdict::Append);
        assert_eq!(
            e.check(&batch(1, 3, 1), 0),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(
            e.check(&batch(1, 0, 1), 0),
            Verdict::Append,
            "a new epoch starts at sequence 0"
        );
        e.record(&batch(1, 0, 1), 110, 0);
        assert_eq!(
            e.check(&batch(0, 5, 1), 0),
            Verdict::Reject(ResponseError::InvalidProducerEpoch)
        );
    }

    #[test]
    fn a_failed_write_since_recording_makes_the_state_untrusted() {
        let mut e = ProducerEntry::default();
        e.record(&batch(0, 0, 1), 0, 3);
        assert_eq!(e.check(&batch(0, 1, 1), 3), Verdict::Append);
        assert_eq!(
            e.check(&batch(0, 1, 1), 4),
            Verdict::Reject(ResponseError::UnknownProducerId)
        );
    }

    #[test]
    fn idle_producers_expire_and_active_ones_stay() {
        let producers = Producers::default();
        let tp = TopicPartition::new("t", 0);
        producers.entry(&tp, 1).lock().record(&batch(0, 0, 1), 0, 0);
        producers.entry(&tp, 2).lock().record(&batch(0, 0, 1), 1, 0);
        assert_eq!(producers.expire(Duration::from_secs(3600)), 0);
        assert_eq!(producers.len(), 2);
        let held = producers.entry(&tp, 1);
        let _in_use = held.lock();
        assert_eq!(
            producers.expire(Duration::ZERO),
            1,
            "the idle one goes, the locked one stays"
        );
        assert_eq!(producers.len(), 1);
    }

    #[test]
    fn batches_wait_while_the_state_is_rebuilt() {
        let producers = Producers::default();
        let tp = TopicPartition::new("t", 0);
        let other = TopicPartition::new("t", 1);
        producers.entry(&tp, 7).lock().record(&batch(0, 0, 5), 100, 0);
        let hold = producers.hold_for_rebuild(&tp);
        let fresh = producers.entry(&tp, 7);
        assert_eq!(
            producers.check(&tp, &fresh.lock(), &batch(0, 0, 5), 0),
            Verdict::Reject(ResponseError::KafkaStorageError),
            "a retry of a batch in the log is not appended while the state is unknown"
        );
        assert_eq!(
            producers.check(&other, &producers.entry(&other, 7).lock(), &batch(0, 0, 1), 0),
            Verdict::Append,
            "other partitions go on"
        );
        fresh.lock().replay(&batch(0, 0, 5), 100, 0);
        // A request whose append failed before the heal forgets the entry it recorded into, not this one.
        producers.forget(&tp, 7, &Arc::new(Mutex::default()));
        drop(hold);
        assert_eq!(
            producers.check(&tp, &producers.entry(&tp, 7).lock(), &batch(0, 0, 5), 0),
            Verdict::Duplicate(100)
        );
        // A failed rebuild keeps the batches waiting.
        producers.hold_for_rebuild(&tp).keep();
        assert_eq!(
            producers.check(&tp, &producers.entry(&tp, 7).lock(), &batch(0, 0, 1), 0),
            Verdict::Reject(ResponseError::KafkaStorageError)
        );
    }

    #[test]
    fn sequences_wrap() {
        let mut e = ProducerEntry::default();
        e.record(&batch(0, i32::MAX - 1, 2), 0, 0);
        assert_eq!(e.check(&batch(0, 0, 1), 0), Verdict::Append);
    }
}
