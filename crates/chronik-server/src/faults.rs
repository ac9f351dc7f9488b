//! Disk-fault injection for tests of the whole broker (compiled only with the `fault-injection` feature).
//!
//! With `CHRONIK_FAULT_CONTROL=FILE`, the WAL runs over two wrappers around the std backend: `DiskFullIo`
//! (a disk that can fill up) under the WAL's fault wrapper (`chronik_wal::io::fault`, for fdatasync
//! faults). Both read FILE before each segment write and fdatasync. FILE holds `MODE PATH_PART` (or
//! nothing): the fault applies to `.wal` files whose path contains PATH_PART (e.g. `faulty-0/`), by the
//! name they were opened under (a segment prepared as `next-segment.tmp` and renamed is not covered).
//! - `enospc`: the disk is full. A write into blocks the file already has (space the WAL zero-filled
//!   ahead of its writes, or old data) succeeds; one that needs new blocks, past the end of the file or in
//!   a hole (a sparse range never written), stores the bytes before that point and then fails with ENOSPC,
//!   as a short write on a full disk does. Shrinking a file still works. This is a file system that
//!   overwrites in place (ext4, xfs); a copy-on-write one (btrfs) refuses overwrites too when full.
//! - `eio-fsync-once`: the next fdatasync fails with EIO; the file is then emptied, which tells the test
//!   the fault fired.
//! - `stall-fsync`: fdatasyncs wait until the file says something else (checked every 10 ms), then
//!   behave as it says: a test holds written records short of durable, looks, then lets the sync succeed
//!   or fail.
//!
//! Why a wrapper of its own for ENOSPC: whether a write needs new blocks depends on where it goes, and
//! `FaultPlan::on_write` is told only the path and length, not the position.

use std::{
    fmt, io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use chronik_wal::{
    io::{
        fault::{FaultPlan, FaultyIo},
        DirEntry, OpenMode, StdIo, WalFile, WalIo,
    },
    segment::NEXT_SEGMENT_FILE,
};

/// The WAL's I/O for a fault-injection run controlled by `control`.
pub fn io(control: PathBuf) -> Arc<dyn WalIo> {
    let control = Arc::new(ControlFile {
        path: control,
        firing: parking_lot::Mutex::new(()),
    });
    let disk = DiskFullIo {
        inner: Arc::new(StdIo),
        control: Arc::clone(&control),
    };
    Arc::new(FaultyIo::new(Arc::new(disk), control))
}

#[derive(Debug)]
struct ControlFile {
    path: PathBuf,
    /// Makes a one-shot fault fire once when two threads sync at the same moment (the log's group commit
    /// and the preallocation thread).
    firing: parking_lot::Mutex<()>,
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    None,
    Enospc,
    EioFsyncOnce,
    StallFsync,
}

impl ControlFile {
    fn mode_for(&self, file: &Path) -> Mode {
        // Segment files, also under the names they are created with before a rename (a wrapped file
        // keeps the name it was opened by).
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let segment = name.ends_with(".wal") || name.ends_with(".wal.tmp") || name == NEXT_SEGMENT_FILE;
        if !segment {
            return Mode::None;
        }
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut words = text.split_whitespace();
        let mode = match words.next() {
            Some("enospc") => Mode::Enospc,
            Some("eio-fsync-once") => Mode::EioFsyncOnce,
            Some("stall-fsync") => Mode::StallFsync,
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
}

impl FaultPlan for ControlFile {
    fn on_sync(&self, path: &Path) -> Option<io::Error> {
        let _firing = self.firing.lock();
        let mut mode = self.mode_for(path);
        while mode == Mode::StallFsync {
            std::thread::sleep(std::time::Duration::from_millis(10));
            mode = self.mode_for(path);
        }
        if mode != Mode::EioFsyncOnce {
            return None;
        }
        if let Err(e) = std::fs::write(&self.path, b"") {
            return Some(e);
        }
        Some(io::Error::from_raw_os_error(libc::EIO))
    }
}

/// A disk that refuses new blocks while the control file says `enospc`; otherwise the wrapped backend.
#[derive(Debug)]
struct DiskFullIo {
    inner: Arc<dyn WalIo>,
    control: Arc<ControlFile>,
}

impl WalIo for DiskFullIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(DiskFullFile {
            inner: self.inner.open(path, mode)?,
            path: path.to_path_buf(),
            control: Arc::clone(&self.control),
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
        "disk-full"
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        self.inner.lock_dir(path)
    }
}

/// The trait's default `zero_fill` and `write_all_and_sync_at` are kept on purpose: both go through
/// `write_all_at` here, so zero-filling and the group-commit path meet the full disk too.
struct DiskFullFile {
    inner: Arc<dyn WalFile>,
    /// The name it was opened under: a file renamed since keeps its old name here.
    path: PathBuf,
    control: Arc<ControlFile>,
}

impl fmt::Debug for DiskFullFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskFullFile").field("path", &self.path).finish()
    }
}

impl DiskFullFile {
    /// Where the blocks this file already has, from `pos` on, end: at the first hole or the end of the
    /// file.
    #[expect(
        unsafe_code,
        reason = "std has no SEEK_HOLE: libc::lseek on a descriptor std owns"
    )]
    fn allocated_end(&self, pos: u64) -> io::Result<u64> {
        let size = self.inner.size()?;
        if pos >= size {
            return Ok(pos);
        }
        let file = std::fs::File::open(&self.path)?;
        let pos = libc::off_t::try_from(pos).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `file` keeps the descriptor open for the whole call, and lseek touches no memory of ours.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), pos, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        // The file ends in an implicit hole, so `hole` is at most the size it had then.
        Ok((hole as u64).min(size))
    }
}

impl WalFile for DiskFullFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.control.mode_for(&self.path) != Mode::Enospc {
            return self.inner.write_all_at(buf, pos);
        }
        let fits = self.allocated_end(pos)?.saturating_sub(pos);
        if fits >= buf.len() as u64 {
            return self.inner.write_all_at(buf, pos);
        }
        // `fits < buf.len()`, so it is a valid index.
        self.inner.write_all_at(&buf[..fits as usize], pos)?;
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn modified(&self) -> io::Result<std::time::SystemTime> {
        self.inner.modified()
    }
    fn set_modified(&self, time: std::time::SystemTime) -> io::Result<()> {
        self.inner.set_modified(time)
    }
}
