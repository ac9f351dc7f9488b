//! A wrapper that injects I/O faults under the WAL, for tests of the WAL and of programs built on it
//! (the broker's fault-injection build). What to inject is decided per operation by a [`FaultPlan`];
//! everything else goes straight to the wrapped backend.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{DirEntry, OpenMode, WalFile, WalIo, WriteSyncError};

/// How a write fails.
#[derive(Debug)]
pub enum WriteFault {
    /// Nothing is written.
    Fail(io::Error),
    /// The first half of the buffer lands, then the error (a disk that fills up mid-write).
    Partial(io::Error),
}

/// Decides which operations fail. Every method defaults to "no fault".
pub trait FaultPlan: Send + Sync + fmt::Debug + 'static {
    /// Before a write of `len` bytes to `path`.
    fn on_write(&self, _path: &Path, _len: usize) -> Option<WriteFault> {
        None
    }
    /// Before a file at `path` is opened (a full descriptor table, a permission refused).
    fn on_open(&self, _path: &Path, _mode: OpenMode) -> Option<io::Error> {
        None
    }
    /// Before an fdatasync of `path`.
    fn on_sync(&self, _path: &Path) -> Option<io::Error> {
        None
    }
    /// False when no fault can be injected right now: the chained write+sync then goes to the backend as
    /// is (io_uring links the two), instead of as two faultable steps.
    fn armed(&self) -> bool {
        true
    }
}

/// A [`WalIo`] that consults a [`FaultPlan`] before each open, write and fdatasync of a file.
#[derive(Debug)]
pub struct FaultyIo {
    inner: Arc<dyn WalIo>,
    plan: Arc<dyn FaultPlan>,
}

impl FaultyIo {
    pub fn new(inner: Arc<dyn WalIo>, plan: Arc<dyn FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

impl WalIo for FaultyIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        if let Some(e) = self.plan.on_open(path, mode) {
            return Err(e);
        }
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            plan: Arc::clone(&self.plan),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner.list_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        self.inner.lock_dir(path)
    }
}

struct FaultyFile {
    inner: Arc<dyn WalFile>,
    path: PathBuf,
    plan: Arc<dyn FaultPlan>,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile").field("path", &self.path).finish()
    }
}

impl WalFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        match self.plan.on_write(&self.path, buf.len()) {
            None => self.inner.write_all_at(buf, pos),
            Some(WriteFault::Fail(e)) => Err(e),
            Some(WriteFault::Partial(e)) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
                Err(e)
            }
        }
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        match self.plan.on_sync(&self.path) {
            Some(e) => Err(e),
            None => self.inner.sync_data(),
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn modified(&self) -> io::Result<SystemTime> {
        self.inner.modified()
    }
    fn set_modified(&self, time: SystemTime) -> io::Result<()> {
        self.inner.set_modified(time)
    }
    fn write_all_and_sync_at(&self, buf: &[u8], pos: u64) -> Result<Duration, WriteSyncError> {
        if !self.plan.armed() {
            return self.inner.write_all_and_sync_at(buf, pos);
        }
        // The two steps through the faultable methods above, as a backend without a chained call runs them.
        let started = Instant::now();
        self.write_all_at(buf, pos).map_err(WriteSyncError::Write)?;
        let wrote = started.elapsed();
        self.sync_data().map_err(WriteSyncError::Sync)?;
        Ok(wrote)
    }
}
