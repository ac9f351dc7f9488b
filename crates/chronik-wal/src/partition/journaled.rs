//! Group commit through the shared journal (`crate::journal`): a group is written to its segment without
//! an fdatasync and becomes durable with its journal round.
use super::*;
use crate::journal::format::encode_record;

/// A group written to its segment (page cache only), waiting for its journal round.
#[derive(Debug)]
pub(crate) struct JournalEntry {
    partition: Arc<PartitionWal>,
    segment: Arc<Segment>,
    pos: u64,
    group: Pending,
}

impl JournalEntry {
    pub fn tp(&self) -> &TopicPartition {
        &self.partition.tp
    }

    pub fn partition(&self) -> &Arc<PartitionWal> {
        &self.partition
    }

    /// Appends the journal record of this group to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_record(
            out,
            &self.partition.tp,
            self.segment.base_offset,
            self.pos,
            &self.group.buf,
        );
    }

    /// Makes the group durable by an fdatasync of its segment instead of the journal, and completes it.
    /// The sync covers every earlier write to the segment too (journaled groups included), so the
    /// segment is clean after it; a failure poisons the partition, as a failed round does.
    pub fn sync_segment_and_complete(self) {
        let started = Instant::now();
        let synced = self.segment.file.sync_data();
        metrics::fsync(started.elapsed());
        let outcome = synced.map_err(|e| {
            metrics::error("fsync");
            format!("fdatasync of {} failed: {e}", self.segment.path.display())
        });
        self.finish(outcome, true);
    }

    /// Completes the group with its round's outcome. A failed round poisons the partition: what it wrote
    /// to its segment was never made durable, and is cut.
    pub fn complete(self, outcome: std::result::Result<(), String>) {
        self.finish(outcome, false);
    }

    /// `segment_synced`: the outcome is an fdatasync of the segment itself.
    fn finish(self, outcome: std::result::Result<(), String>, segment_synced: bool) {
        let JournalEntry {
            partition,
            segment,
            pos,
            group,
        } = self;
        let mut w = partition.writer.lock();
        if segment_synced && outcome.is_ok() && Arc::ptr_eq(&w.active, &segment) {
            // Every write to it came before (only this round writes, and it is this group's).
            w.file_dirty = false;
        }
        let result = match outcome {
            // The preparer syncs the same file without the lock: a writeback error it took covers
            // this group's bytes too (see `confirm_sync`).
            Ok(()) if segment_synced => partition.confirm_sync(&mut w).map(|()| true),
            Ok(()) => Ok(true),
            Err(cause) => Err(Failure::Poisoned { cause }),
        };
        partition.finish_group(&mut w, group, &segment, pos, result);
        // Whatever queued meanwhile goes into the next round.
        partition.kick_pending(&mut w);
    }
}

impl PartitionWal {
    /// After its journal round: if the file cache holds more files than its limit, fdatasyncs this
    /// partition's segment so that the cache may close it. Unsynced files are never closed, and with the
    /// journal nothing else syncs a segment before the next trim: under a small file limit the
    /// partitions written between trims would otherwise run the process out of descriptors. A failed
    /// sync poisons the partition, as any.
    pub(crate) fn sync_if_files_over_limit(&self) {
        let files = &self.ctx.files;
        if files.open_count() <= files.limit() {
            return;
        }
        // Never `sync()`: it may wait for this partition's next round, which this leader would lead.
        // Anything in flight, or a failure, and this partition is left to the next trim.
        let mut w = self.writer.lock();
        if w.flushing || w.rotating || w.failure.is_some() || !w.file_dirty {
            return;
        }
        if let Err(e) = self.sync_locked(&mut w) {
            warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                "syncing a segment to stay within the file limit failed");
        }
        self.kick_pending(&mut w);
    }

    /// Queues this partition for the next journal round.
    pub(super) fn kick(&self, w: &mut Writer) {
        if w.kicked {
            return;
        }
        let (Some(journal), Some(me)) = (&self.ctx.journal, self.me.get().and_then(Weak::upgrade)) else {
            return;
        };
        w.kicked = true;
        w.journal_round = Some(journal.kick(me));
    }

    /// Kicks the pending group if nothing else will: with the journal, after a group or a sync completes.
    pub(super) fn kick_pending(&self, w: &mut Writer) {
        if self.ctx.journal.is_some()
            && !w.flushing
            && !w.kicked
            && !w.rotating
            && w.sync_waiting == 0
            && !w.pending.frames.is_empty()
        {
            self.kick(w);
        }
    }

    /// Run by the leader of journal round `round`: takes this partition's pending group and writes it to
    /// its segment. `None` if there is nothing to write now (the group in flight, a rotation or a sync
    /// comes first; whoever waits kicks again) or the write failed (the group is failed here).
    pub(crate) fn journal_lead(self: &Arc<Self>, round: u64) -> Option<JournalEntry> {
        let mut w = self.writer.lock();
        w.kicked = false;
        if w.flushing || w.rotating || w.sync_waiting > 0 || w.pending.frames.is_empty() {
            // Passed by: whoever waits kicks it again (a group in flight can only be a sync's here,
            // this being the one round running).
            debug_assert!(!w.flushing || w.syncing, "a group in flight outside its round");
            w.journal_round = None;
            self.flushed.notify_all();
            return None;
        }
        let (group, segment, pos) = self.begin_group(&mut w);
        w.journal_round = Some(round);
        let failed = match &w.failure {
            Some(f @ (Failure::Poisoned { .. } | Failure::Deleted)) => Some(f.clone()),
            _ => MutexGuard::unlocked(&mut w, || {
                let started = Instant::now();
                let written = self
                    .ctx
                    .retry_transient(|| segment.file.write_all_at(&group.buf, pos));
                metrics::group_written(group.frames.len(), group.buf.len(), started.elapsed());
                written.err().map(|e| Failure::Write {
                    path: segment.path.to_path_buf(),
                    kind: e.kind(),
                    message: e.to_string(),
                })
            }),
        };
        if let Some(failure) = failed {
            self.finish_group(&mut w, group, &segment, pos, Err(failure));
            return None;
        }
        w.file_dirty = true;
        drop(w);
        Some(JournalEntry {
            partition: Arc::clone(self),
            segment,
            pos,
            group,
        })
    }
}
