//! Deleting the oldest sealed segments under a [`RetentionPolicy`](crate::RetentionPolicy), or below an
//! offset.
use super::*;

impl PartitionWal {
    /// The segments, oldest first; the last one is the active segment.
    pub fn segment_infos(&self) -> Vec<SegmentInfo> {
        let segments = Arc::clone(&self.segments.read());
        let last = segments.len().saturating_sub(1);
        segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let index = s.index.read();
                // A metadata call only for the rare segment whose records carry no timestamps.
                let modified_ms = (index.max_timestamp < 0)
                    .then(|| s.file.modified().ok())
                    .flatten()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .and_then(|d| i64::try_from(d.as_millis()).ok());
                SegmentInfo {
                    base_offset: s.base_offset,
                    next_offset: index.next_offset,
                    bytes: index.covered_len,
                    max_timestamp: index.max_timestamp,
                    modified_ms,
                    sealed: i < last,
                }
            })
            .collect()
    }

    /// Seals the active segment when every record in it is older than `policy`'s age at `now_ms`, so that
    /// retention can then delete it (the active segment itself never is): without this, a partition that
    /// stops receiving data keeps its last segment forever. Kafka rolls an expired active segment the same
    /// way. Returns whether it sealed one.
    pub fn roll_expired(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<bool> {
        let Some(age) = policy.max_age else {
            return Ok(false);
        };
        let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let expired = self
            .segment_infos()
            .last()
            .is_some_and(|s| s.next_offset > s.base_offset && s.age_timestamp() < cutoff);
        // A damaged or poisoned partition is left as it is until it is recovered.
        if expired && !self.is_closed() && self.corrupt.is_none() {
            self.rotate()?;
            info!(topic = %self.tp.topic, partition = self.tp.partition,
                "sealed the active segment: all its records are past retention");
        }
        Ok(expired && !self.is_closed() && self.corrupt.is_none())
    }

    /// Deletes the oldest sealed segments that `policy` lets go at wall-clock time `now_ms` (milliseconds
    /// since the epoch, compared with record timestamps), and advances the log start offset past them.
    /// With checkpoints on, only segments a durable checkpoint has moved past are eligible. Each deletion is
    /// durable before the next starts, so a crash leaves a suffix of the log.
    pub fn apply_retention(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<RetentionOutcome> {
        let _serial = self.retention.lock();
        if policy.is_unlimited() || self.is_closed() {
            return Ok(self.nothing_deleted());
        }
        let infos = self.segment_infos();
        let deletable = self.deletable_by_checkpoint(&infos);
        let count = segments_to_delete(&infos, deletable, policy, now_ms);
        let awaiting_checkpoint = segments_to_delete(&infos, infos.len(), policy, now_ms) - count;
        self.delete_oldest_segments(&infos[..count], awaiting_checkpoint, "retention deleted segments")
    }

    /// Deletes the oldest sealed segments whose every offset is below `offset` (their next offset is at
    /// most `offset`), and advances the log start offset past them: for an owner that knows which
    /// offsets it no longer needs, such as a compacted internal log. Never the active segment, so the log
    /// start may stay below `offset`. As for [`PartitionWal::apply_retention`], with checkpoints on only
    /// segments a durable checkpoint has moved past are deleted (the others are counted in
    /// `awaiting_checkpoint`), each deletion is durable before the next starts, and a closed or poisoned
    /// partition deletes nothing.
    pub fn delete_segments_below(&self, offset: i64) -> Result<RetentionOutcome> {
        let _serial = self.retention.lock();
        if self.is_closed() {
            return Ok(self.nothing_deleted());
        }
        let infos = self.segment_infos();
        let below = infos
            .iter()
            .take_while(|s| s.sealed && s.next_offset <= offset)
            .count();
        let count = below.min(self.deletable_by_checkpoint(&infos));
        self.delete_oldest_segments(&infos[..count], below - count, "deleted segments below an offset")
    }

    fn nothing_deleted(&self) -> RetentionOutcome {
        RetentionOutcome {
            log_start_offset: self.log_start_offset(),
            ..Default::default()
        }
    }

    /// How many of the oldest segments (`infos`, oldest first) a deletion may remove at all: with
    /// checkpoints on, those below the segment the last durable checkpoint points into.
    fn deletable_by_checkpoint(&self, infos: &[SegmentInfo]) -> usize {
        if self.ctx.config.checkpoint.enabled {
            let covered_below = self.checkpointed_segment.load(Ordering::Acquire);
            infos.iter().take_while(|s| s.base_offset < covered_below).count()
        } else {
            infos.len()
        }
    }

    /// Deletes `doomed`, the oldest segments in order, each durably before the next; `what` is logged.
    fn delete_oldest_segments(
        &self,
        doomed: &[SegmentInfo],
        awaiting_checkpoint: usize,
        what: &str,
    ) -> Result<RetentionOutcome> {
        let mut outcome = RetentionOutcome {
            awaiting_checkpoint,
            ..self.nothing_deleted()
        };
        for info in doomed {
            self.delete_oldest_segment(info)?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += info.bytes;
        }
        outcome.log_start_offset = self.log_start_offset();
        if !doomed.is_empty() {
            self.trim_terms(outcome.log_start_offset);
            info!(topic = %self.tp.topic, partition = self.tp.partition, segments = doomed.len(),
                bytes = outcome.bytes_deleted, log_start_offset = outcome.log_start_offset, "{what}");
        }
        Ok(outcome)
    }

    /// Drops the terms that ended below the new log start, so the map does not grow with the partition's
    /// age. A failure is only logged: recovery trims the map again.
    fn trim_terms(&self, log_start: i64) {
        if let Err(e) = self.update_terms(|t| Ok(t.trim_before(log_start))) {
            warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                "trimming the term map failed; the next recovery trims it");
        }
    }

    /// Removes the oldest segment (which `info` describes) from disk, durably, then from the list.
    pub(super) fn delete_oldest_segment(&self, info: &SegmentInfo) -> Result<()> {
        let segment = {
            let segments = self.segments.read();
            match segments.first() {
                Some(s) if s.base_offset == info.base_offset && segments.len() > 1 => Arc::clone(s),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "segment {} of {} is not the oldest sealed segment",
                        info.base_offset, self.tp
                    )))
                }
            }
        };
        let io = &*self.ctx.io;
        let index_path = self.dir.join(index_file_name(segment.base_offset));
        // Segment first: an index left by a crash is removed by recovery, a segment left without its index
        // would only cost a rebuild.
        // Absent already is fine: an earlier pass may have removed the file and then failed to sync the
        // directory (the segment stayed listed, as a crash could still bring it back); this pass finishes.
        let remove = |path: &Path| match io.remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", path, e)),
            _ => Ok(()),
        };
        // Until the directory sync succeeds the segment stays listed, and readers may still be in it: its
        // file stays open, as if they held a descriptor, whatever the file cache would close.
        let removed = segment
            .file
            .pin()
            .map_err(|e| Error::io("opening", &segment.path, e))
            .and_then(|()| remove(&segment.path))
            .and_then(|()| remove(&index_path))
            .and_then(|()| {
                io.sync_dir(&self.dir)
                    .map_err(|e| Error::io("syncing directory", &self.dir, e))
            });
        if let Err(e) = removed {
            metrics::error(e.kind_label());
            return Err(e);
        }
        {
            let mut segments = self.segments.write();
            let list: Vec<Arc<Segment>> = segments[1..].to_vec();
            self.log_start_offset.store(
                list.first().map_or(info.next_offset, |s| s.base_offset),
                Ordering::Release,
            );
            *segments = Arc::new(list);
        }
        metrics::segments("sealed", -1.0);
        metrics::retention_deleted(info.bytes);
        Ok(())
    }
}
