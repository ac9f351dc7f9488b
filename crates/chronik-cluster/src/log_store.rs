//! The Raft log in a WAL partition (entry `i` at offset `i`), and the vote, purge point and committed
//! index in a state file beside it.

use std::{
    fmt::Debug,
    io,
    ops::{Bound, RangeBounds},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use chronik_wal::{
    io::{read_file, write_file_atomic, WalIo},
    AppendOptions, Batch, Durability, TopicPartition, WalManager,
};
use openraft::{
    storage::{LogFlushed, LogState, RaftLogStorage},
    ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, MetaRaft, StorageError, Vote};

/// Largest state file read back: it holds three small values.
const MAX_STATE_BYTES: u64 = 1 << 20;
/// How much one WAL read returns while collecting entries.
const READ_CHUNK_BYTES: u64 = 4 << 20;

/// What Raft asks to keep beside its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RaftState {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

#[derive(Debug)]
struct Inner {
    wal: Arc<WalManager>,
    tp: TopicPartition,
    io: Arc<dyn WalIo>,
    state_path: PathBuf,
    state: Mutex<RaftState>,
    /// The last entry's id, or the purge point if there is no entry after it.
    last_log_id: Mutex<Option<LogId>>,
}

/// openraft's log storage over one WAL partition. Cheap to clone: clones share the log (and are the log
/// readers Raft's replication tasks use concurrently).
#[derive(Debug, Clone)]
pub struct WalLogStore {
    inner: Arc<Inner>,
}

fn io_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}

fn read_logs_error(e: &(impl std::error::Error + 'static)) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs_error(e: &(impl std::error::Error + 'static)) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl WalLogStore {
    /// Opens the log in partition `tp` of `wal` (created if missing) with its state file at `state_path`
    /// (on `io`, the WAL's disk). Finishes a purge a crash interrupted: a log that ends at or before the
    /// durable purge point starts again right after it.
    pub fn open(
        wal: Arc<WalManager>,
        tp: TopicPartition,
        io: Arc<dyn WalIo>,
        state_path: impl Into<PathBuf>,
    ) -> Result<Self, StorageError> {
        let state_path = state_path.into();
        let state = read_state(&*io, &state_path)?;
        let store = Self {
            inner: Arc::new(Inner {
                wal,
                tp,
                io,
                state_path,
                state: Mutex::new(state),
                last_log_id: Mutex::new(None),
            }),
        };
        store.ensure_starts_after_purge()?;
        let last = store.read_last_log_id()?;
        *store.inner.last_log_id.lock() = last;
        Ok(store)
    }

    fn purged(&self) -> Option<LogId> {
        self.inner.state.lock().last_purged
    }

    /// The first index the log may hold: right after the purge point.
    fn first_index(&self) -> u64 {
        self.purged().map_or(0, |p| p.index + 1)
    }

    /// Makes the WAL partition exist and end no earlier than the purge point (see [`WalLogStore::open`]).
    fn ensure_starts_after_purge(&self) -> Result<(), StorageError> {
        let (wal, tp) = (&self.inner.wal, &self.inner.tp);
        let first = self.first_index() as i64;
        match wal.partition(tp) {
            Some(p) if p.high_watermark() >= first => Ok(()),
            Some(_) => {
                // Every entry is purged: the log restarts after the purge point.
                wal.delete_partition(tp).map_err(|e| write_logs_error(&e))?;
                wal.create_partition_at(tp, first)
                    .map(drop)
                    .map_err(|e| write_logs_error(&e))
            }
            None => wal
                .create_partition_at(tp, first)
                .map(drop)
                .map_err(|e| write_logs_error(&e)),
        }
    }

    fn read_last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let hw = self
            .inner
            .wal
            .high_watermark(&self.inner.tp)
            .map_err(|e| read_logs_error(&e))?;
        let first = self.first_index();
        if hw as u64 > first {
            let last = self.read_range(hw as u64 - 1, hw as u64)?;
            if let Some(e) = last.last() {
                return Ok(Some(e.log_id));
            }
        }
        Ok(self.purged())
    }

    /// The entries at indexes `start..end` the log holds (none below the purge point).
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let (wal, tp) = (&self.inner.wal, &self.inner.tp);
        let log_start = wal.log_start_offset(tp).map_err(|e| read_logs_error(&e))? as u64;
        let hw = wal.high_watermark(tp).map_err(|e| read_logs_error(&e))? as u64;
        let mut next = start.max(self.first_index()).max(log_start);
        let end = end.min(hw);
        let mut out = Vec::new();
        while next < end {
            let batches = wal
                .read(tp, next as i64, READ_CHUNK_BYTES)
                .map_err(|e| read_logs_error(&e))?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                let index = b.base_offset as u64;
                if index >= end {
                    break;
                }
                let entry: Entry = serde_json::from_slice(&b.payload).map_err(|e| read_logs_error(&e))?;
                if entry.log_id.index != index {
                    let e = io::Error::other(format!(
                        "entry at offset {index} of {tp} names index {}",
                        entry.log_id.index
                    ));
                    return Err(read_logs_error(&e));
                }
                out.push(entry);
                next = index + 1;
            }
        }
        Ok(out)
    }

    /// Writes the state file with `change` applied; in memory only once it is durable.
    fn save_state(&self, change: impl FnOnce(&mut RaftState)) -> Result<(), StorageError> {
        // Serialised: two saves racing could otherwise leave the older one on disk.
        let mut state = self.inner.state.lock();
        let mut next = *state;
        change(&mut next);
        let bytes =
            serde_json::to_vec(&next).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        write_file_atomic(&*self.inner.io, &self.inner.state_path, &bytes)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        *state = next;
        Ok(())
    }

    /// Appends `entries` (consecutive indexes continuing the log) and waits until they are durable.
    fn append_blocking(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let (wal, tp) = (&self.inner.wal, &self.inner.tp);
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut p = wal
            .partition(tp)
            .ok_or_else(|| write_logs_error(&chronik_wal::Error::UnknownPartition(tp.clone())))?;
        let mut hw = p.high_watermark() as u64;
        if first.log_id.index > hw && hw == p.log_start_offset() as u64 {
            // An empty log may begin at any index: it starts there.
            wal.delete_partition(tp).map_err(|e| write_logs_error(&e))?;
            p = wal
                .create_partition_at(tp, first.log_id.index as i64)
                .map_err(|e| write_logs_error(&e))?;
            hw = first.log_id.index;
        }
        if first.log_id.index != hw {
            let e = io::Error::other(format!(
                "append of index {} to {tp}, whose log ends at {hw}",
                first.log_id.index
            ));
            return Err(write_logs_error(&e));
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut tickets = Vec::with_capacity(entries.len());
        for entry in entries {
            let payload = serde_json::to_vec(entry).map_err(|e| write_logs_error(&e))?;
            let ticket = p
                .submit(
                    Batch::new(payload, 1, now_ms),
                    // Synced whatever the WAL's sync policy: Raft is told it is durable after this.
                    AppendOptions {
                        durability: Durability::Sync,
                        ..AppendOptions::default()
                    },
                )
                .map_err(|e| write_logs_error(&e))?;
            tickets.push(ticket);
        }
        for ticket in tickets {
            ticket.wait().map_err(|e| write_logs_error(&e))?;
        }
        if let Some(last) = entries.last() {
            *self.inner.last_log_id.lock() = Some(last.log_id);
        }
        Ok(())
    }

    fn truncate_blocking(&self, log_id: LogId) -> Result<(), StorageError> {
        let (wal, tp) = (&self.inner.wal, &self.inner.tp);
        let hw = wal.high_watermark(tp).map_err(|e| write_logs_error(&e))? as u64;
        if log_id.index < hw {
            wal.truncate_to(tp, log_id.index as i64)
                .map_err(|e| write_logs_error(&e))?;
        }
        let last = self.read_last_log_id()?;
        *self.inner.last_log_id.lock() = last;
        Ok(())
    }

    fn purge_blocking(&self, log_id: LogId) -> Result<(), StorageError> {
        // Durable first: from here on the entries up to it are gone, whatever the files still hold.
        self.save_state(|s| s.last_purged = Some(log_id))?;
        let (wal, tp) = (&self.inner.wal, &self.inner.tp);
        let hw = wal.high_watermark(tp).map_err(|e| write_logs_error(&e))? as u64;
        if log_id.index + 1 > hw {
            self.ensure_starts_after_purge()?;
        } else if let Some(p) = wal.partition(tp) {
            // Whole segments only; the rest goes as later purges pass their ends.
            p.delete_segments_below(log_id.index as i64 + 1)
                .map_err(|e| write_logs_error(&e))?;
        }
        let mut last = self.inner.last_log_id.lock();
        if last.is_none_or(|l| l.index < log_id.index) {
            *last = Some(log_id);
        }
        Ok(())
    }
}

fn read_state(io: &dyn WalIo, path: &Path) -> Result<RaftState, StorageError> {
    match io.exists(path) {
        Ok(false) => return Ok(RaftState::default()),
        Ok(true) => {}
        Err(e) => return Err(io_error(ErrorSubject::Store, ErrorVerb::Read, &e)),
    }
    let bytes = read_file(io, path, MAX_STATE_BYTES)
        .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))
}

/// Runs blocking WAL work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| write_logs_error(&io::Error::other(e.to_string())))?
}

fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<MetaRaft> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_bounds(&range);
        let store = self.clone();
        blocking(move || store.read_range(start, end)).await
    }
}

impl RaftLogStorage<MetaRaft> for WalLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<MetaRaft>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.purged(),
            last_log_id: *self.inner.last_log_id.lock(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (store, vote) = (self.clone(), *vote);
        blocking(move || store.save_state(|s| s.vote = Some(vote))).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.state.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.save_state(|s| s.committed = committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.state.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaRaft>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.clone();
        let result = blocking(move || store.append_blocking(&entries)).await;
        // Only now durable (the WAL's fdatasync returned), or failed.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.truncate_blocking(log_id)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.purge_blocking(log_id)).await
    }
}
