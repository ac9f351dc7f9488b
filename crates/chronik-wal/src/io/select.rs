//! Run-time choice of the I/O backend: `std` always works; `io_uring` only where the kernel (and any
//! seccomp profile around the process) allows it, which is found out by probing, never assumed.

use std::{fmt, io, sync::Arc};

use tracing::{info, warn};

use super::{StdIo, WalIo};
use crate::config::IoBackend;

/// A backend that was asked for explicitly cannot run on this machine.
#[derive(Debug, thiserror::Error)]
#[error("the {backend} I/O backend is unavailable: {step} failed: {source}")]
pub struct BackendUnavailable {
    pub backend: IoBackend,
    /// What the probe was doing when the kernel said no.
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

/// What `Auto` runs, decided by measurement: `cargo bench -p chronik-wal --bench append`, io_uring/std
/// appends/s, medians of per-round ratios, three runs of 5 to 9 rounds on a shared 2-core VM with a noisy
/// disk (the range, then the median of the three): 1 KiB x 1 writer 0.89-2.07 (0.91), 16 writers on 1
/// partition 0.49-0.91 (0.76), 16 writers on 8 partitions 0.84-0.95 (0.92), 64 KiB x 1 writer 0.90-1.21
/// (1.02). io_uring cannot run an fdatasync inline: the kernel hands it to a worker thread, so a chain costs
/// two more context switches than a direct `fdatasync` (on tmpfs, where the sync itself is free, a linked
/// write + fdatasync took ~23 us against ~3 us for `pwrite` + `fdatasync`), and the WAL submits one chain
/// at a time per partition, so nothing is batched to pay for it. io_uring was never clearly faster (at
/// best at parity, for 64 KiB batches), so std it is; set this to `IoUring` if a re-measurement says so.
pub const AUTO_PREFERS: IoBackend = IoBackend::Std;

/// Builds the backend `wanted` names. `Auto` runs [`AUTO_PREFERS`]; an explicit `IoUring` that the kernel
/// refuses is an error rather than a silent fallback.
pub fn select(wanted: IoBackend) -> Result<Arc<dyn WalIo>, BackendUnavailable> {
    select_with(wanted, AUTO_PREFERS)
}

/// [`select`] with `Auto` preferring `auto_prefers`: io_uring is then probed and, if the kernel refuses it,
/// std runs instead, with a warning saying why.
fn select_with(wanted: IoBackend, auto_prefers: IoBackend) -> Result<Arc<dyn WalIo>, BackendUnavailable> {
    let io: Arc<dyn WalIo> = match (wanted, auto_prefers) {
        (IoBackend::Std, _) | (IoBackend::Auto, IoBackend::Std | IoBackend::Auto) => Arc::new(StdIo),
        (IoBackend::IoUring, _) => probe_uring()?,
        (IoBackend::Auto, IoBackend::IoUring) => match probe_uring() {
            Ok(io) => io,
            Err(e) => {
                warn!(reason = %Reason(&e), "io_uring is unavailable; the WAL uses the std I/O backend");
                Arc::new(StdIo)
            }
        },
    };
    info!(configured = %wanted, io_backend = io.name(), "WAL I/O backend selected");
    Ok(io)
}

#[cfg(target_os = "linux")]
fn probe_uring() -> Result<Arc<dyn WalIo>, BackendUnavailable> {
    Ok(Arc::new(super::UringIo::probe()?))
}

#[cfg(not(target_os = "linux"))]
fn probe_uring() -> Result<Arc<dyn WalIo>, BackendUnavailable> {
    Err(BackendUnavailable {
        backend: IoBackend::IoUring,
        step: "looking for io_uring",
        source: io::Error::new(io::ErrorKind::Unsupported, "io_uring exists only on Linux"),
    })
}

/// The probe's failure without the "backend unavailable" preamble, for the fallback log line.
struct Reason<'a>(&'a BackendUnavailable);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.0.step, self.0.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_choice_names_the_backend_that_runs() {
        let name = |wanted, prefers| select_with(wanted, prefers).map(|io| io.name()).ok();
        assert_eq!(name(IoBackend::Std, IoBackend::IoUring), Some("std"));
        assert_eq!(name(IoBackend::Auto, IoBackend::Std), Some("std"));
        assert_eq!(
            select(IoBackend::Auto).map(|io| io.name()).ok(),
            Some(AUTO_PREFERS.as_str())
        );
        let auto_uring = name(IoBackend::Auto, IoBackend::IoUring);
        match select(IoBackend::IoUring) {
            Ok(io) => {
                assert_eq!(io.name(), "io_uring");
                assert_eq!(auto_uring, Some("io_uring"), "auto runs io_uring where it works");
            }
            Err(e) => {
                assert_eq!(e.backend, IoBackend::IoUring);
                assert_eq!(auto_uring, Some("std"), "auto falls back to std: {e}");
            }
        }
    }
}
