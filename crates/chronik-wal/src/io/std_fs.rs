//! The portable backend: `std::fs` with positional I/O.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::Path,
    sync::Arc,
    time::SystemTime,
};

use super::{DirEntry, OpenMode, WalFile, WalIo};

/// File-system access through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

impl WalIo for StdIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(StdFile(open_file(path, mode)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                out.push(DirEntry {
                    name,
                    is_dir: entry.file_type()?.is_dir(),
                });
            }
        }
        Ok(out)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn name(&self) -> &'static str {
        "std"
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            )),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Opens a file the way every backend does.
pub(super) fn open_file(path: &Path, mode: OpenMode) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    match mode {
        OpenMode::CreateNew => opts.read(true).write(true).create_new(true),
        OpenMode::ReadWrite => opts.read(true).write(true),
        OpenMode::ReadOnly => opts.read(true),
    };
    opts.open(path)
}

#[derive(Debug)]
struct StdFile(File);

impl WalFile for StdFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.0.metadata()?.modified()
    }

    fn set_modified(&self, time: SystemTime) -> io::Result<()> {
        self.0.set_modified(time)
    }
}
