//! The peer: `okaywal`, an embeddable Rust WAL with group commit, used the way its docs show.
//!
//! Each append is one entry (`begin_entry`, one `write_chunk`, `commit`); `commit` returns once the entry
//! is fdatasynced, and concurrent committers share one fdatasync (its `LogFile::synchronize_locked`), so
//! several writers on one instance get okaywal's group commit. Its configuration is the default one
//! (1 MiB segments preallocated with zeroes, a checkpoint after 768 KiB) with the `LogVoid` manager, which
//! drops checkpointed entries: okaywal then recycles its checkpointed, already allocated segment files,
//! so in steady state it overwrites allocated blocks and never grows a file. That is how okaywal is meant to
//! run (in front of a store that takes the checkpointed data), and it favours okaywal over a log that keeps
//! what it writes.

use std::{
    io,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use okaywal::{LogVoid, WriteAheadLog};

/// One okaywal instance (one "partition"), and the highest entry id it acknowledged.
pub struct OkayWal {
    log: WriteAheadLog,
    last_entry_id: AtomicU64,
    /// Entries committed by [`OkayWal::warm_up`], not part of the timed run.
    warm_up_entries: u64,
}

impl OkayWal {
    pub fn open(dir: &Path) -> Self {
        Self {
            log: WriteAheadLog::recover(dir, LogVoid).expect("open okaywal"),
            last_entry_id: AtomicU64::new(0),
            warm_up_entries: 0,
        }
    }

    /// Returns once `payload` is committed and fdatasynced.
    pub fn append_durable(&self, payload: &[u8]) -> io::Result<()> {
        let mut entry = self.log.begin_entry()?;
        entry.write_chunk(payload)?;
        let id = entry.commit()?;
        self.last_entry_id.fetch_max(id.0, Ordering::Relaxed);
        Ok(())
    }

    /// Commits `bytes` in entries of `payload`, untimed, so that the timed run finds okaywal recycling its
    /// checkpointed segment files (its steady state) rather than creating its first ones.
    pub fn warm_up(&mut self, payload: &[u8], bytes: u64) {
        let entries = bytes.div_ceil(payload.len() as u64);
        for _ in 0..entries {
            self.append_durable(payload).expect("okaywal warm-up commit");
        }
        self.warm_up_entries += entries;
    }

    /// Entries committed in the timed run. Entry ids are handed out one by one from 1 in a fresh directory,
    /// so the highest one acknowledged is the number of entries begun; every one of them was committed,
    /// since an error stops the bench.
    pub fn timed_entries(&self) -> u64 {
        self.last_entry_id.load(Ordering::Relaxed) - self.warm_up_entries
    }

    pub fn shutdown(self) {
        self.log.shutdown().expect("shut okaywal down");
    }
}
