//! The WAL's only door to the file system. Every byte the WAL reads or writes, every fsync, rename and
//! removal goes through [`WalIo`] and [`WalFile`], so that an io_uring backend or a simulated disk that
//! loses unsynced writes can stand in for the real one without the WAL noticing.
//!
//! Writes and reads are positional (`pwrite`/`pread` style) and take `&self`: readers and the single
//! writer of a segment share one handle with no lock between them.
//!
//! Backends: [`StdIo`] (portable `std::fs`) and, on Linux, [`UringIo`] (io_uring, which submits a group's
//! write and its fdatasync as one linked chain). [`select`] picks one at run time from
//! [`IoBackend`](crate::config::IoBackend). With the `testkit` feature, `sim` (a simulated disk) and
//! `fault` (an error-injecting wrapper) stand in for them in tests.

mod cache;
#[cfg(feature = "testkit")]
pub mod fault;
mod select;
#[cfg(feature = "testkit")]
pub mod sim;
mod std_fs;
#[cfg(target_os = "linux")]
mod uring;

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

pub use cache::{CachedFile, FileCache};
pub use select::{select, BackendUnavailable, AUTO_PREFERS};
#[cfg(feature = "testkit")]
pub use sim::SimIo;
pub use std_fs::StdIo;
#[cfg(target_os = "linux")]
pub use uring::UringIo;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create; fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading.
    ReadOnly,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
}

/// File-system operations on paths.
pub trait WalIo: Send + Sync + fmt::Debug + 'static {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Entries of a directory whose names are valid UTF-8 (the WAL names all its files in ASCII).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// A short name for logs: "std", "io_uring", "sim".
    fn name(&self) -> &'static str;
    /// Takes an exclusive lock on the WAL root for as long as the returned guard lives, so that two
    /// processes never write the same log.
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>>;
}

/// An open file.
pub trait WalFile: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `pos`, or fails; a failure may leave any prefix written.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Reads up to `buf.size()` bytes at `pos`; returns how many (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// `fdatasync`: data and the metadata needed to read it back are durable when this returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current file size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// When the file's data last changed (its mtime): retention's age of a segment without record
    /// timestamps, as in Kafka.
    fn modified(&self) -> io::Result<SystemTime>;
    /// Sets the modification time: trimming a sealed segment's preallocated zeros changes no data.
    fn set_modified(&self, time: SystemTime) -> io::Result<()>;

    /// [`write_all_at`](WalFile::write_all_at) then [`sync_data`](WalFile::sync_data): the group-commit
    /// hot path. A backend that can chain the two (io_uring) overrides it. On success returns how long the
    /// write step took (for metrics; the sync took the rest). The error says which step failed, because
    /// the WAL treats them differently: a failed write is rolled back, a failed sync poisons the partition.
    fn write_all_and_sync_at(&self, buf: &[u8], pos: u64) -> Result<Duration, WriteSyncError> {
        let started = Instant::now();
        self.write_all_at(buf, pos).map_err(WriteSyncError::Write)?;
        let wrote = started.elapsed();
        self.sync_data().map_err(WriteSyncError::Sync)?;
        Ok(wrote)
    }

    /// Writes zeros over `len` bytes at `pos` (extending the file if needed), so that later writes there
    /// overwrite allocated, initialised blocks. Not durable until `sync_data`. A bare `fallocate` is not
    /// used by default: it leaves unwritten extents whose conversion on first write costs the fdatasync
    /// about as much as growing the file does (measured in `benches/prealloc.rs`).
    fn zero_fill(&self, mut pos: u64, len: u64) -> io::Result<()> {
        static ZEROS: [u8; ZERO_FILL_CHUNK] = [0u8; ZERO_FILL_CHUNK];
        let end = pos.saturating_add(len);
        while pos < end {
            let n = (end - pos).min(ZERO_FILL_CHUNK as u64) as usize;
            self.write_all_at(&ZEROS[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Fills `buf` from `pos`, failing with `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early")),
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Which step of [`WalFile::write_all_and_sync_at`] failed.
#[derive(Debug)]
pub enum WriteSyncError {
    /// The write failed (any prefix may have landed); the sync did not run.
    Write(io::Error),
    /// The whole buffer was written but the sync failed: its pages may be lost from the page cache.
    Sync(io::Error),
}

/// Bytes written per call by the default [`WalFile::zero_fill`].
const ZERO_FILL_CHUNK: usize = 256 * 1024;

/// Writes `bytes` to `path` so that after a crash either the old file or the complete new one is there:
/// temp file, fsync, rename, fsync the directory.
pub fn write_file_atomic(io: &dyn WalIo, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    if io.exists(&tmp)? {
        io.remove_file(&tmp)?;
    }
    let file = io.open(&tmp, OpenMode::CreateNew)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    io.rename(&tmp, path)?;
    io.sync_dir(parent(path))
}

/// Reads a whole (small) file.
pub fn read_file(io: &dyn WalIo, path: &Path, max_len: u64) -> io::Result<Vec<u8>> {
    let file = io.open(path, OpenMode::ReadOnly)?;
    let len = file.size()?;
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, more than the {max_len} expected",
                path.display()
            ),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The directory holding `path`: `.` for a bare name (whose `parent()` is the empty path).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
