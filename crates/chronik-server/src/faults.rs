//! Disk-fault injection for tests of the whole broker (compiled only with the `fault-injection` feature).
//!
//! With `CHRONIK_FAULT_CONTROL=FILE`, the WAL runs over a wrapper of the std backend that reads FILE before
//! each segment write and fdatasync. FILE holds `MODE PATH_PART` (or nothing): the fault applies to `.wal`
//! files whose path contains PATH_PART (e.g. `faulty-0/`).
//! - `enospc`: every write stores half its bytes, then fails with ENOSPC (a disk that filled mid-write).
//! - `eio-fsync-once`: the next fdatasync fails with EIO; the file is then emptied, which tells the test
//!   the fault fired.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use chronik_wal::io::{DirEntry, OpenMode, StdIo, WalFile, WalIo};

#[derive(Debug)]
pub struct FaultIo {
    inner: StdIo,
    control: Arc<PathBuf>,
}

impl FaultIo {
    pub fn new(control: PathBuf) -> Self {
        Self {
            inner: StdIo,
            control: Arc::new(control),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    None,
    Enospc,
    EioFsyncOnce,
}

fn mode_for(control: &Path, file: &Path) -> Mode {
    let text = std::fs::read_to_string(control).unwrap_or_default();
    let mut words = text.split_whitespace();
    let mode = match words.next() {
        Some("enospc") => Mode::Enospc,
        Some("eio-fsync-once") => Mode::EioFsyncOnce,
        _ => return Mode::None,
    };
    let applies = words
        .next()
        .is_none_or(|part| file.to_string_lossy().contains(part));
    if applies {
        mode
    } else {
        Mode::None
    }
}

impl WalIo for FaultIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        let file = self.inner.open(path, mode)?;
        if path.extension().is_some_and(|e| e == "wal") {
            return Ok(Arc::new(FaultFile {
                inner: file,
                path: path.to_path_buf(),
                control: Arc::clone(&self.control),
            }));
        }
        Ok(file)
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
        "std+faults"
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        self.inner.lock_dir(path)
    }
}

struct FaultFile {
    inner: Arc<dyn WalFile>,
    path: PathBuf,
    control: Arc<PathBuf>,
}

impl fmt::Debug for FaultFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFile").field("path", &self.path).finish()
    }
}

impl WalFile for FaultFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if mode_for(&self.control, &self.path) == Mode::Enospc {
            self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.write_all_at(buf, pos)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        if mode_for(&self.control, &self.path) == Mode::EioFsyncOnce {
            std::fs::write(&*self.control, b"")?;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}
