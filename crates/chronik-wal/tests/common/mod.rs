//! What every integration test shares: the I/O backend the suite runs over. The whole suite runs over
//! either backend, chosen by `CHRONIK_TEST_IO_BACKEND` = `std` (the default) or `io_uring`. A backend asked
//! for explicitly must run: if the kernel refuses io_uring, opening a WAL fails and so does the test,
//! rather than quietly testing std again.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "each test binary uses part of this module; a test helper may panic"
)]

use std::{path::PathBuf, sync::Arc};

use chronik_wal::{io::WalIo, IoBackend, WalConfig, WalManager};

pub const BACKEND_ENV: &str = "CHRONIK_TEST_IO_BACKEND";

/// The backend named by `CHRONIK_TEST_IO_BACKEND`; std when unset.
pub fn io_backend() -> IoBackend {
    match std::env::var(BACKEND_ENV).as_deref() {
        Err(_) | Ok("") | Ok("std") => IoBackend::Std,
        Ok("io_uring") => IoBackend::IoUring,
        Ok(other) => panic!("{BACKEND_ENV}={other:?}: expected std or io_uring"),
    }
}

/// The selected backend, for tests that wrap it (fault injection).
pub fn test_io() -> Arc<dyn WalIo> {
    let io = chronik_wal::io::select(io_backend()).unwrap();
    assert_eq!(io.name(), io_backend().as_str());
    io
}

/// [`WalManager::open`] over the selected backend (whatever `config.io_backend` says).
pub fn open_wal(root: impl Into<PathBuf>, config: WalConfig) -> chronik_wal::Result<WalManager> {
    let wal = WalManager::open(
        root,
        WalConfig {
            io_backend: io_backend(),
            ..config
        },
    )?;
    assert_eq!(
        wal.io_backend(),
        io_backend().as_str(),
        "the WAL runs the backend the suite asked for"
    );
    Ok(wal)
}
