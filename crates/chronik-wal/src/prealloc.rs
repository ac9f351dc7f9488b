//! Segment preallocation: a background thread keeps zero-filled, fsynced space ahead of each active
//! segment's write position (`WalConfig::preallocate_bytes`), in the manner of etcd's file pipeline.
//!
//! Why: a durable append that overwrites allocated, initialised blocks needs its fdatasync to persist only
//! data; one that grows the file also persists the new size and block allocation. Zero-filling wins over
//! `fallocate` (whose unwritten extents must be converted on first write) and over a sparse `set_len`;
//! `benches/prealloc.rs` measures the three. The zeros are a second write of every byte, though, so only
//! partitions whose group commits are small get prepared space (`partition::space::LARGE_GROUP_BYTES`):
//! there the fdatasync's fixed cost dominates; with large groups bandwidth does, and they grow the file.
//!
//! Division of work: a partition asks for space (under its writer lock, no I/O) by queueing its name here;
//! the preparer thread calls [`crate::PartitionWal`]'s `prepare_ahead`, which reserves a range past
//! everything written or queued, zero-fills and syncs it without the lock, then publishes it. The writer
//! never writes into a range being prepared (a group that would reach it waits), and the preparer only
//! writes into space no frame was ever written to, so a segment always ends in zeros past its last frame.
//! Once the active segment is prepared up to `rotation.max_segment_size`, the preparer creates the next
//! segment's file (`next-segment.tmp`, zero-filled over its first `preallocate_bytes`), so that a rotation
//! writes a header and renames it instead of creating a file and starting from nothing prepared.
//!
//! Invariants:
//! - A partition is queued at most once at a time (the writer's `prep_requested` flag), so the queue is
//!   bounded by the number of partitions.
//! - The thread exits when the manager stops it; a request for a partition that is gone is dropped.

use std::collections::VecDeque;

use parking_lot::{Condvar, Mutex};

use crate::TopicPartition;

/// Requests for preallocation, served by one thread per manager.
#[derive(Debug, Default)]
pub(crate) struct PreallocQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    requests: VecDeque<TopicPartition>,
    stopped: bool,
}

impl PreallocQueue {
    /// Asks the preparer to extend `tp`'s prepared space. The caller makes sure a partition is queued once.
    pub fn request(&self, tp: TopicPartition) {
        let mut state = self.state.lock();
        if !state.stopped {
            state.requests.push_back(tp);
            self.ready.notify_one();
        }
    }

    /// The next request, waiting for one; `None` once stopped.
    pub fn next(&self) -> Option<TopicPartition> {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                return None;
            }
            if let Some(tp) = state.requests.pop_front() {
                return Some(tp);
            }
            self.ready.wait(&mut state);
        }
    }

    /// The next request if there is one, without waiting (manual preallocation).
    #[cfg(feature = "testkit")]
    pub fn try_next(&self) -> Option<TopicPartition> {
        let mut state = self.state.lock();
        if state.stopped {
            return None;
        }
        state.requests.pop_front()
    }

    /// Stops the preparer: pending requests are dropped (prepared space is an optimisation only).
    pub fn stop(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        state.requests.clear();
        self.ready.notify_all();
    }
}
