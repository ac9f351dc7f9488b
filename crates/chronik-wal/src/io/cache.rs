//! A bounded set of open segment files, so that idle partitions hold no descriptor.
//!
//! Every segment file is reached through a [`CachedFile`]. It opens its file on first use; the
//! [`FileCache`] closes files again, least recently used first, whenever more than its limit are open,
//! down to seven eighths of it (so that the sweep, which sorts the open files, runs once per many opens).
//!
//! Invariants:
//! - **A file is closed only clean**: every write through it (data, length, times) was followed by a
//!   successful `sync_data` on the same descriptor. Linux reports a writeback error to the descriptors
//!   open when it happened; one opened later may never see it (fsyncgate). So an fdatasync is never
//!   skipped, nor made on a descriptor other than the one the writes it covers went through. A file whose
//!   sync failed stays open until a later sync succeeds (the partition cuts what was never synced).
//! - **`sync_data` of a closed file does nothing**: it was closed clean, so all it holds is durable.
//! - **A rename happens under the file's lock** ([`CachedFile::rename`]), so a reopen never looks for the
//!   old name.
//! - **The limit is soft**: a file written and not yet synced, or in use while the sweep runs, stays open,
//!   and an operation in flight keeps its descriptor until it returns. The `chronik_wal_open_files` gauge
//!   shows how many are open.
//! - Opening again uses the mode the file was opened with (read-write after a creation), through the same
//!   [`WalIo`], so the simulated disk and fault injection see every reopen.

use std::{
    collections::HashMap,
    fmt, io,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;

use super::{OpenMode, WalFile, WalIo, WriteSyncError};
use crate::metrics;

/// Opens segment files and keeps at most `limit` of them open (see the module doc).
#[derive(Debug, Clone)]
pub struct FileCache(Arc<Shared>);

struct Shared {
    io: Arc<dyn WalIo>,
    limit: usize,
    /// Files open now, by slot id. Weak: a slot dropped by its owner closes its file and leaves.
    open: Mutex<HashMap<u64, Weak<Slot>>>,
    next_id: AtomicU64,
    /// Ticks of use; a slot's `last_used` is the tick of its latest operation.
    clock: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCache")
            .field("limit", &self.limit)
            .field("open", &self.open.lock().len())
            .finish()
    }
}

impl FileCache {
    /// A cache over `io` keeping at most `limit` files open (at least one).
    pub fn new(io: Arc<dyn WalIo>, limit: usize) -> Self {
        FileCache(Arc::new(Shared {
            io,
            limit: limit.max(1),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            clock: AtomicU64::new(0),
        }))
    }

    /// The file system the files are opened on.
    pub fn io(&self) -> &dyn WalIo {
        &*self.0.io
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Files open now.
    pub fn open_count(&self) -> usize {
        self.0.open.lock().len()
    }

    /// Opens `path` now (so that a missing file or a creation fails here, as a plain open would) and
    /// returns a handle that reopens it on demand once the cache has closed it.
    ///
    /// A file opened [`OpenMode::ReadWrite`] may hold writes an earlier handle or process made and never
    /// synced (recovery after a kill, a partition reopened): it counts as written until its first
    /// successful `sync_data`, or until the owner vouches for it with [`CachedFile::assume_durable`].
    pub fn open(&self, path: &Path, mode: OpenMode) -> io::Result<CachedFile> {
        let file = self.0.io.open(path, mode)?;
        let (reopen_mode, written) = match mode {
            OpenMode::CreateNew => (OpenMode::ReadWrite, 0),
            OpenMode::ReadWrite => (OpenMode::ReadWrite, 1),
            OpenMode::ReadOnly => (OpenMode::ReadOnly, 0),
        };
        let slot = Arc::new(Slot {
            id: self.0.next_id.fetch_add(1, Ordering::Relaxed),
            last_used: AtomicU64::new(self.0.clock.fetch_add(1, Ordering::Relaxed)),
            shared: Arc::clone(&self.0),
            state: Mutex::new(SlotState {
                path: Arc::from(path),
                mode: reopen_mode,
                file: Some(file),
                written,
                synced: 0,
                pinned: false,
            }),
        });
        self.0.opened(&slot);
        Ok(CachedFile(slot))
    }
}

impl Shared {
    /// Records that `slot` holds an open file, and closes the least recently used clean ones if more
    /// than `limit` are open.
    fn opened(&self, slot: &Arc<Slot>) {
        metrics::file_opened();
        let mut closed = Vec::new();
        let mut seen = Vec::new();
        {
            let mut open = self.open.lock();
            open.insert(slot.id, Arc::downgrade(slot));
            if open.len() > self.limit {
                self.sweep(&mut open, slot.id, &mut closed, &mut seen);
            }
        }
        // Dropped outside the lock: a slot dropped here (its owner let go meanwhile) takes the lock in
        // its `Drop`, which under it would deadlock (found by the threaded crash simulation in CI).
        drop(closed);
        drop(seen);
    }

    /// Closes the least recently used clean files but `opening` (the one whose opening called this: it is
    /// about to be used).
    /// Every slot it upgrades ends in `closed` or `seen`, for the caller to drop once `open` is unlocked:
    /// an upgraded slot may be the last reference by then.
    fn sweep(
        &self,
        open: &mut HashMap<u64, Weak<Slot>>,
        opening: u64,
        closed: &mut Vec<(Arc<Slot>, Arc<dyn WalFile>)>,
        seen: &mut Vec<Arc<Slot>>,
    ) {
        let target = self.limit - self.limit / 8;
        let mut by_age: Vec<(u64, u64)> = Vec::with_capacity(open.len());
        for (&id, w) in open.iter() {
            if let Some(s) = w.upgrade() {
                by_age.push((s.last_used.load(Ordering::Relaxed), id));
                seen.push(s);
            }
        }
        by_age.sort_unstable();
        for (_, id) in by_age {
            if open.len() <= target {
                break;
            }
            if id == opening {
                continue;
            }
            let Some(slot) = open.get(&id).and_then(Weak::upgrade) else {
                continue;
            };
            // A slot in use is not waited for: it is the most recently used anyway.
            let file = slot.state.try_lock().and_then(|mut state| {
                let clean = state.written == state.synced && !state.pinned;
                clean.then(|| state.file.take()).flatten()
            });
            match file {
                Some(file) => {
                    open.remove(&id);
                    metrics::file_closed();
                    closed.push((slot, file));
                }
                None => seen.push(slot),
            }
        }
    }
}

/// What a [`CachedFile`] operation does with the file it acquires.
#[derive(Debug, Clone, Copy)]
enum Use {
    Read,
    /// Changes the file: it stays open until a sync covers the change.
    Write,
    /// Keeps it open for good ([`CachedFile::pin`]).
    Pin,
}

/// One segment file, open or closed by the cache; see the module doc.
#[derive(Debug)]
pub struct CachedFile(Arc<Slot>);

struct Slot {
    id: u64,
    last_used: AtomicU64,
    shared: Arc<Shared>,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// Shared with the [`crate::segment::Segment`] that owns the file.
    path: Arc<Path>,
    /// How to open the file again.
    mode: OpenMode,
    file: Option<Arc<dyn WalFile>>,
    /// Writes started through this handle, and how many of them a successful sync covered: the file is
    /// clean (may be closed) when they are equal.
    written: u64,
    synced: u64,
    /// Never closed by the cache: the file is about to be unlinked and must stay readable.
    pinned: bool,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("CachedFile")
            .field("path", &state.path)
            .field("open", &state.file.is_some())
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.state.get_mut().file.is_some() {
            metrics::file_closed();
        }
        self.shared.open.lock().remove(&self.id);
    }
}

impl CachedFile {
    /// The file's name now.
    pub fn path(&self) -> Arc<Path> {
        Arc::clone(&self.0.state.lock().path)
    }

    /// Whether the file is open now (for tests and metrics).
    pub fn is_open(&self) -> bool {
        self.0.state.lock().file.is_some()
    }

    /// Declares everything in the file durable without a sync: for a sealed segment found by recovery,
    /// which was fdatasynced before the segment after it was created.
    pub fn assume_durable(&self) {
        let mut state = self.0.state.lock();
        state.synced = state.written;
    }

    /// Keeps the file open (opening it now if the cache closed it) until the handle is dropped: for a file
    /// about to be unlinked that readers may still use, as they could with a descriptor of their own.
    pub fn pin(&self) -> io::Result<()> {
        self.acquire(Use::Pin).map(drop)
    }

    /// Renames the file to `to`; reopens use the new name.
    pub fn rename(&self, to: &Path) -> io::Result<()> {
        let mut state = self.0.state.lock();
        self.0.shared.io.rename(&state.path, to)?;
        state.path = Arc::from(to);
        Ok(())
    }

    /// The open file (opening it if the cache closed it), and for a write the count it will be once the
    /// write is covered by a sync.
    fn acquire(&self, usage: Use) -> io::Result<(Arc<dyn WalFile>, u64)> {
        let slot = &self.0;
        let shared = &slot.shared;
        slot.last_used
            .store(shared.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let mut state = slot.state.lock();
        let (file, reopened) = match &state.file {
            Some(file) => (Arc::clone(file), false),
            None => {
                let file = shared.io.open(&state.path, state.mode)?;
                state.file = Some(Arc::clone(&file));
                (file, true)
            }
        };
        // Counted (or pinned) before the lock is let go, under the lock the sweep takes: a file being
        // written is never closed between the write and its sync.
        match usage {
            Use::Read => {}
            Use::Write => state.written += 1,
            Use::Pin => state.pinned = true,
        }
        let written = state.written;
        drop(state);
        if reopened {
            shared.opened(slot);
        }
        Ok((file, written))
    }

    fn write<T>(&self, op: impl FnOnce(&dyn WalFile) -> io::Result<T>) -> io::Result<T> {
        let (file, _) = self.acquire(Use::Write)?;
        op(&*file)
    }

    fn read<T>(&self, op: impl FnOnce(&dyn WalFile) -> io::Result<T>) -> io::Result<T> {
        let (file, _) = self.acquire(Use::Read)?;
        op(&*file)
    }

    /// Marks the writes up to `written` as covered by a successful sync.
    fn synced(&self, written: u64) {
        let mut state = self.0.state.lock();
        state.synced = state.synced.max(written);
    }
}

impl WalFile for CachedFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.write(|f| f.write_all_at(buf, pos))
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.read(|f| f.read_at(buf, pos))
    }

    fn sync_data(&self) -> io::Result<()> {
        let (file, written) = {
            let state = self.0.state.lock();
            match &state.file {
                Some(file) => (Arc::clone(file), state.written),
                // Closed only when clean: nothing to sync.
                None => return Ok(()),
            }
        };
        file.sync_data()?;
        self.synced(written);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.write(|f| f.set_len(len))
    }

    fn size(&self) -> io::Result<u64> {
        self.read(|f| f.size())
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.read(|f| f.modified())
    }

    fn set_modified(&self, time: SystemTime) -> io::Result<()> {
        self.write(|f| f.set_modified(time))
    }

    fn write_all_and_sync_at(&self, buf: &[u8], pos: u64) -> Result<Duration, WriteSyncError> {
        let (file, written) = self.acquire(Use::Write).map_err(WriteSyncError::Write)?;
        let wrote = file.write_all_and_sync_at(buf, pos)?;
        self.synced(written);
        Ok(wrote)
    }

    fn zero_fill(&self, pos: u64, len: u64) -> io::Result<()> {
        self.write(|f| f.zero_fill(pos, len))
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.read(|f| f.read_exact_at(buf, pos))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    use crate::io::SimIo;

    fn cache(limit: usize) -> (SimIo, FileCache) {
        let io = SimIo::new(1);
        io.create_dir_all(Path::new("/d")).unwrap();
        let cache = FileCache::new(Arc::new(io.clone()), limit);
        (io, cache)
    }

    fn name(i: usize) -> PathBuf {
        PathBuf::from(format!("/d/{i}"))
    }

    /// Found by the threaded crash simulation in CI: a sweep upgraded a slot whose owner let go at that
    /// moment, and dropping the last reference under the map's lock took the lock again in the slot's
    /// `Drop`: a deadlock. Threads open files over the limit and drop them at once, so that slots die
    /// during other threads' sweeps.
    #[test]
    fn files_dropped_while_others_sweep_do_not_deadlock() {
        let (_io, cache) = cache(2);
        for i in 0..8 {
            cache.open(&name(i), OpenMode::CreateNew).unwrap();
        }
        std::thread::scope(|s| {
            for t in 0..4 {
                let cache = &cache;
                s.spawn(move || {
                    // Each thread holds a few files and lets go of the oldest as it opens the next.
                    let mut held = std::collections::VecDeque::new();
                    for round in 0..20_000 {
                        held.push_back(cache.open(&name((t + round) % 8), OpenMode::ReadWrite).unwrap());
                        if held.len() > 3 {
                            held.pop_front();
                        }
                    }
                });
            }
        });
        assert!(cache.open_count() <= 2);
    }

    #[test]
    fn clean_files_beyond_the_limit_are_closed_least_recently_used_first_and_reopen_on_use() {
        let (_io, cache) = cache(8);
        let files: Vec<CachedFile> = (0..8)
            .map(|i| {
                let f = cache.open(&name(i), OpenMode::CreateNew).unwrap();
                f.write_all_at(&[i as u8; 10], 0).unwrap();
                f.sync_data().unwrap();
                f
            })
            .collect();
        assert_eq!(cache.open_count(), 8);
        // Use file 0 again: 1 is now the least recently used.
        let mut b = [0u8; 10];
        files[0].read_exact_at(&mut b, 0).unwrap();
        let ninth = cache.open(&name(8), OpenMode::CreateNew).unwrap();
        // Over the limit: swept down to 7, closing 1 and 2 (the two least recently used).
        assert_eq!(cache.open_count(), 7);
        assert!(files[0].is_open() && !files[1].is_open() && !files[2].is_open() && files[3].is_open());
        assert!(ninth.is_open());
        files[1].read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 10], "a closed file reopens with its contents");
        assert!(files[1].is_open());
        assert_eq!(cache.open_count(), 8);
        drop(files);
        assert_eq!(cache.open_count(), 1, "a dropped handle closes its file");
    }

    #[test]
    fn a_file_written_and_not_synced_stays_open_until_its_sync() {
        let (_io, cache) = cache(2);
        let dirty = cache.open(&name(0), OpenMode::CreateNew).unwrap();
        dirty.write_all_at(b"unsynced", 0).unwrap();
        let others: Vec<CachedFile> = (1..6)
            .map(|i| cache.open(&name(i), OpenMode::CreateNew).unwrap())
            .collect();
        assert!(dirty.is_open(), "never closed while a write awaits its sync");
        dirty.sync_data().unwrap();
        let _more = cache.open(&name(9), OpenMode::CreateNew).unwrap();
        assert!(!dirty.is_open(), "closed once clean and least recently used");
        assert!(cache.open_count() <= 2);
        dirty.sync_data().unwrap();
        assert!(
            !dirty.is_open(),
            "syncing a closed, clean file needs no descriptor"
        );
        drop(others);
    }

    /// Another handle (or a process killed before its fdatasync) may have left the file's pages dirty:
    /// skipping the sync of a closed file would leave them unsynced.
    #[test]
    fn an_existing_file_opened_for_writing_is_kept_open_until_synced() {
        let (_io, cache) = cache(1);
        let earlier = cache.open(&name(0), OpenMode::CreateNew).unwrap();
        earlier
            .write_all_at(b"unsynced by the earlier handle", 0)
            .unwrap();
        let reopened = cache.open(&name(0), OpenMode::ReadWrite).unwrap();
        let sealed = cache.open(&name(0), OpenMode::ReadWrite).unwrap();
        sealed.assume_durable();
        drop(earlier);
        let _other = cache.open(&name(1), OpenMode::CreateNew).unwrap();
        assert!(reopened.is_open(), "kept until its first sync");
        assert!(!sealed.is_open(), "vouched for, so closed");
        reopened.sync_data().unwrap();
        let _another = cache.open(&name(2), OpenMode::CreateNew).unwrap();
        assert!(!reopened.is_open());
    }

    #[test]
    fn a_file_whose_sync_failed_is_never_closed() {
        let (io, cache) = cache(1);
        let f = cache.open(&name(0), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        io.fail_once_after(0);
        assert!(f.sync_data().is_err());
        let _g = cache.open(&name(1), OpenMode::CreateNew).unwrap();
        assert!(f.is_open(), "the descriptor that saw the error is kept");
    }

    #[test]
    fn a_pinned_file_stays_open_and_readable_after_its_removal() {
        let (io, cache) = cache(1);
        let f = cache.open(&name(0), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.sync_data().unwrap();
        let _g = cache.open(&name(1), OpenMode::CreateNew).unwrap();
        assert!(!f.is_open());
        f.pin().unwrap();
        io.remove_file(&name(0)).unwrap();
        let _h = cache.open(&name(2), OpenMode::CreateNew).unwrap();
        let mut b = [0u8; 3];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"abc");
    }

    /// With every other open file dirty, the sweep a reopen starts must not close the file being opened:
    /// a pin would then hold nothing (crash simulation seed 30508).
    #[test]
    fn a_file_reopened_to_be_pinned_stays_open_when_the_others_cannot_close() {
        let (io, cache) = cache(1);
        let f = cache.open(&name(0), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.sync_data().unwrap();
        let dirty = cache.open(&name(1), OpenMode::CreateNew).unwrap();
        dirty.write_all_at(b"unsynced", 0).unwrap();
        assert!(!f.is_open());
        f.pin().unwrap();
        assert!(f.is_open() && dirty.is_open());
        io.remove_file(&name(0)).unwrap();
        let mut b = [0u8; 3];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn a_renamed_file_reopens_under_its_new_name() {
        let (io, cache) = cache(1);
        let f = cache.open(&name(0), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.sync_data().unwrap();
        f.rename(&name(5)).unwrap();
        let _g = cache.open(&name(1), OpenMode::CreateNew).unwrap();
        assert!(!f.is_open());
        assert!(!io.exists(&name(0)).unwrap());
        let mut b = [0u8; 3];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(*f.path(), *name(5));
    }
}
