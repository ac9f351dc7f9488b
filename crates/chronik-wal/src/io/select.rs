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

/// Builds the backend `wanted` names. `Auto` probes io_uring and falls back to std, logging why; an
/// explicit `IoUring` that the kernel refuses is an error rather than a silent fallback.
pub fn select(wanted: IoBackend) -> Result<Arc<dyn WalIo>, BackendUnavailable> {
    let io: Arc<dyn WalIo> = match wanted {
        IoBackend::Std => Arc::new(StdIo),
        IoBackend::IoUring => probe_uring()?,
        IoBackend::Auto => match probe_uring() {
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
        assert_eq!(select(IoBackend::Std).map(|io| io.name()).ok(), Some("std"));
        let auto = select(IoBackend::Auto).map(|io| io.name()).ok();
        match select(IoBackend::IoUring) {
            Ok(io) => {
                assert_eq!(io.name(), "io_uring");
                assert_eq!(auto, Some("io_uring"), "auto prefers io_uring where it works");
            }
            Err(e) => {
                assert_eq!(e.backend, IoBackend::IoUring);
                assert_eq!(auto, Some("std"), "auto falls back to std: {e}");
            }
        }
    }
}
