//! The WAL's only door to the file system. Every byte the WAL reads or writes, every fsync, rename and
//! removal goes through [`WalIo`] and [`WalFile`], so that an io_uring backend or a simulated disk that
//! loses unsynced writes can stand in for the real one without the WAL noticing.
//!
//! Writes and reads are positional (`pwrite`/`pread` style) and take `&self`: readers and the single
//! writer of a segment share one handle with no lock between them.

pub mod sim;
mod std_fs;

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use sim::SimIo;
pub use std_fs::StdIo;

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

pub(crate) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
