//! Disk-fault injection for tests of the whole broker (compiled only with the `fault-injection` feature).
//!
//! With `CHRONIK_FAULT_CONTROL=FILE`, the WAL runs over the WAL's fault wrapper (`chronik_wal::io::fault`)
//! around the std backend, with a plan that reads FILE before each segment write and fdatasync. FILE holds
//! `MODE PATH_PART` (or nothing): the fault applies to `.wal` files whose path contains PATH_PART (e.g.
//! `faulty-0/`).
//! - `enospc`: every write stores half its bytes, then fails with ENOSPC (a disk that filled mid-write).
//! - `eio-fsync-once`: the next fdatasync fails with EIO; the file is then emptied, which tells the test
//!   the fault fired.

use std::{io, path::Path, path::PathBuf, sync::Arc};

use chronik_wal::io::{
    fault::{FaultPlan, FaultyIo, WriteFault},
    StdIo, WalIo,
};

/// The WAL's I/O for a fault-injection run controlled by `control`.
pub fn io(control: PathBuf) -> Arc<dyn WalIo> {
    Arc::new(FaultyIo::new(Arc::new(StdIo), Arc::new(ControlFile(control))))
}

#[derive(Debug)]
struct ControlFile(PathBuf);

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    None,
    Enospc,
    EioFsyncOnce,
}

impl ControlFile {
    fn mode_for(&self, file: &Path) -> Mode {
        if file.extension().is_none_or(|e| e != "wal") {
            return Mode::None;
        }
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
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
}

impl FaultPlan for ControlFile {
    fn on_write(&self, path: &Path, _len: usize) -> Option<WriteFault> {
        (self.mode_for(path) == Mode::Enospc)
            .then(|| WriteFault::Partial(io::Error::from_raw_os_error(libc::ENOSPC)))
    }

    fn on_sync(&self, path: &Path) -> Option<io::Error> {
        if self.mode_for(path) != Mode::EioFsyncOnce {
            return None;
        }
        if let Err(e) = std::fs::write(&self.0, b"") {
            return Some(e);
        }
        Some(io::Error::from_raw_os_error(libc::EIO))
    }
}
