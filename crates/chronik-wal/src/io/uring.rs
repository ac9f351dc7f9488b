//! The io_uring backend (Linux). File data goes through io_uring; directory operations, `set_len` and
//! `size` (rare, administrative) go through std.
//!
//! The point is the group-commit hot path: [`WalFile::write_all_and_sync_at`] submits the group's write
//! and its fdatasync as one linked chain (`IOSQE_IO_LINK`) in one `io_uring_enter` (a second one waits for
//! the sync when the write completes first, so that the write can be timed on its own). The kernel runs
//! the fdatasync on a worker thread, which costs more than it saves here: `Auto` runs std (see
//! `AUTO_PREFERS` in `select.rs` for the measurements).
//!
//! # Ring ownership: one ring per thread
//! The WAL's I/O is synchronous: a group-commit leader, a reader or the recovery thread issues one
//! operation and waits for it. So each thread gets its own small ring, created on its first I/O and closed
//! when the thread exits. Leaders of different partitions run on different threads, so their fdatasyncs
//! are in flight at once, each thread submitting and reaping on its own ring with no lock, and each
//! completion is reaped by the very thread that sleeps on it. A shared ring would need a lock around
//! submission and a thread routing completions to waiters: one more wake-up per fsync for nothing gained.
//!
//! # Invariants
//! - An operation returns only after every one of its completions has been reaped, so the buffer and the
//!   file descriptor it handed the kernel outlive the kernel's use of them. If waiting becomes impossible
//!   the process aborts: returning would let the kernel use freed memory.
//! - A ring holds no submission and no completion between operations.
//! - Errors come back as `io::Error::from_raw_os_error`, as std's would. EINTR on a read or write is
//!   retried here (as std does); EAGAIN is returned for the WAL's bounded retry; an fdatasync is never
//!   retried.
#![allow(
    unsafe_code,
    reason = "submission entries hand the kernel raw pointers to buffers and file descriptors"
)]

use std::{
    cell::RefCell,
    fmt,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use tracing::{error, warn};

use super::{
    select::BackendUnavailable, std_fs::open_file, DirEntry, OpenMode, StdIo, WalFile, WalIo, WriteSyncError,
};
use crate::config::IoBackend;

/// Submission slots per ring: an operation uses at most two (a write linked to an fdatasync).
const RING_ENTRIES: u32 = 8;

/// Largest length one read or write entry carries (the field is 32 bits); longer buffers are split.
const MAX_RW_LEN: usize = 1 << 30;

/// The opcodes this backend submits; the probe checks that the kernel has each.
const OPCODES: [(u8, &str); 4] = [
    (opcode::Nop::CODE, "NOP"),
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
];

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Set once a thread could not get a ring, so that the fallback to std is logged once, not per call.
static RING_REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);

/// File-system access through io_uring. Only [`UringIo::probe`] makes one, so holding one means the
/// kernel accepted io_uring at least once in this process.
#[derive(Debug)]
pub struct UringIo {
    dirs: StdIo,
}

impl UringIo {
    /// Checks that io_uring works here: a ring can be created, the kernel has every opcode this backend
    /// uses, and a NOP makes the round trip. Containers often refuse the first step (seccomp, or
    /// `kernel.io_uring_disabled`).
    pub fn probe() -> Result<Self, BackendUnavailable> {
        let unavailable = |step, source| BackendUnavailable {
            backend: IoBackend::IoUring,
            step,
            source,
        };
        let mut ring = new_ring().map_err(|e| unavailable("creating an io_uring", e))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| unavailable("probing io_uring opcodes", e))?;
        if let Some((_, name)) = OPCODES.iter().find(|(code, _)| !probe.is_supported(*code)) {
            let missing = io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel lacks IORING_OP_{name}"),
            );
            return Err(unavailable("probing io_uring opcodes", missing));
        }
        // SAFETY: a NOP points at no memory.
        let [nop] = unsafe { complete(&mut ring, [opcode::Nop::new().build()]) }
            .map_err(|e| unavailable("submitting a NOP", e))?;
        if nop.result < 0 {
            return Err(unavailable("a NOP round trip", cqe_error(nop.result)));
        }
        Ok(Self { dirs: StdIo })
    }
}

impl WalIo for UringIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(UringFile::new(open_file(path, mode)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.dirs.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.dirs.list_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.dirs.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.dirs.remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.dirs.remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.dirs.sync_dir(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.dirs.exists(path)
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        self.dirs.lock_dir(path)
    }
}

/// An open file whose reads, writes and syncs go through the calling thread's ring.
#[derive(Debug)]
struct UringFile {
    file: File,
    /// Longest read or write one entry carries: [`MAX_RW_LEN`], smaller in tests to exercise splitting.
    max_rw_len: usize,
}

impl UringFile {
    fn new(file: File) -> Self {
        Self {
            file,
            max_rw_len: MAX_RW_LEN,
        }
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    /// One write entry of at most `max_rw_len` bytes; returns how many bytes it wrote.
    fn write_some(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        let buf = &buf[..buf.len().min(self.max_rw_len)];
        let write = opcode::Write::new(self.fd(), buf.as_ptr(), rw_len(buf.len())?)
            .offset(check_pos(pos)?)
            .build();
        loop {
            // SAFETY: `buf` and `self.file` are borrowed for this whole call, and `complete` returns only
            // after the kernel has finished with them.
            let done = with_ring(|ring| unsafe { complete(ring, [write.clone()]) });
            let Some(done) = done else {
                return self.file.write_at(buf, pos);
            };
            let [c] = done?;
            match c.result {
                n if n >= 0 => return Ok(n as usize),
                e if e == -libc::EINTR => continue,
                e => return Err(cqe_error(e)),
            }
        }
    }

    /// Submits the write of `buf` linked to an fdatasync and waits for both.
    fn write_and_sync_chain(&self, buf: &[u8], pos: u64) -> io::Result<Option<[Completion; 2]>> {
        let write = opcode::Write::new(self.fd(), buf.as_ptr(), rw_len(buf.len())?)
            .offset(check_pos(pos)?)
            .build()
            .flags(squeue::Flags::IO_LINK);
        let sync = opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: `buf` and `self.file` are borrowed for this whole call, and `complete` returns only after
        // the kernel has finished with both entries.
        with_ring(|ring| unsafe { complete(ring, [write, sync]) }).transpose()
    }
}

impl WalFile for UringFile {
    fn write_all_at(&self, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write_some(buf, pos)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "a write wrote nothing"));
            }
            buf = &buf[n..];
            pos += n as u64;
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let len = buf.len().min(self.max_rw_len);
        if len == 0 {
            return Ok(0);
        }
        let read = opcode::Read::new(self.fd(), buf.as_mut_ptr(), rw_len(len)?)
            .offset(check_pos(pos)?)
            .build();
        loop {
            // SAFETY: `buf` is exclusively borrowed and `self.file` borrowed for this whole call, and
            // `complete` returns only after the kernel has finished writing into `buf`.
            let done = with_ring(|ring| unsafe { complete(ring, [read.clone()]) });
            let Some(done) = done else {
                return self.file.read_at(&mut buf[..len], pos);
            };
            let [c] = done?;
            match c.result {
                n if n >= 0 => return Ok(n as usize),
                e if e == -libc::EINTR => continue,
                e => return Err(cqe_error(e)),
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let sync = opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: the entry points only at `self.file`'s descriptor, open for this whole call, and
        // `complete` returns only after the kernel has finished with it.
        match with_ring(|ring| unsafe { complete(ring, [sync]) }) {
            None => self.file.sync_data(),
            Some(done) => {
                let [c] = done?;
                // Never retried, whatever the error: after a failed fdatasync the dirty pages may be gone.
                if c.result < 0 {
                    return Err(cqe_error(c.result));
                }
                Ok(())
            }
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.file.metadata()?.modified()
    }

    fn set_modified(&self, time: SystemTime) -> io::Result<()> {
        self.file.set_modified(time)
    }

    fn write_all_and_sync_at(&self, mut buf: &[u8], mut pos: u64) -> Result<Duration, WriteSyncError> {
        let started = Instant::now();
        loop {
            // Only the last piece of an oversized buffer is linked to the sync.
            if buf.len() > self.max_rw_len {
                let n = self.write_some(buf, pos).map_err(WriteSyncError::Write)?;
                if n == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "a write wrote nothing");
                    return Err(WriteSyncError::Write(e));
                }
                buf = &buf[n..];
                pos += n as u64;
                continue;
            }
            let chain = self
                .write_and_sync_chain(buf, pos)
                .map_err(WriteSyncError::Write)?;
            let Some([write, sync]) = chain else {
                // This thread has no ring: the same two steps through std.
                self.file.write_all_at(buf, pos).map_err(WriteSyncError::Write)?;
                let wrote = started.elapsed();
                self.file.sync_data().map_err(WriteSyncError::Sync)?;
                return Ok(wrote);
            };
            match chain_outcome(write.result, sync.result, buf.len()) {
                ChainOutcome::Done => return Ok(write.at.saturating_duration_since(started)),
                ChainOutcome::Retry => {}
                ChainOutcome::Partial(n) => {
                    buf = &buf[n..];
                    pos += n as u64;
                }
                ChainOutcome::WriteFailed(e) => return Err(WriteSyncError::Write(e)),
                ChainOutcome::SyncFailed(e) => return Err(WriteSyncError::Sync(e)),
            }
        }
    }
}

/// What a linked write + fdatasync did, from its two completion results.
#[derive(Debug)]
enum ChainOutcome {
    /// All written and synced.
    Done,
    /// The write was interrupted before writing anything (the sync was cancelled): submit it again.
    Retry,
    /// A short write of this many bytes; the kernel severed the chain, so the sync did not run.
    Partial(usize),
    WriteFailed(io::Error),
    /// The write completed but the sync failed (or, unexpectedly, was cancelled: treated the same, since
    /// durability is then unknown).
    SyncFailed(io::Error),
}

/// The decision table for a chain that asked to write `len` bytes. A failed or short write cancels the
/// linked sync (`-ECANCELED`), which must not be mistaken for a failed sync.
fn chain_outcome(write: i32, sync: i32, len: usize) -> ChainOutcome {
    match write {
        e if e == -libc::EINTR => ChainOutcome::Retry,
        e if e < 0 => ChainOutcome::WriteFailed(cqe_error(e)),
        0 if len > 0 => {
            ChainOutcome::WriteFailed(io::Error::new(io::ErrorKind::WriteZero, "a write wrote nothing"))
        }
        n if (n as usize) < len => match sync {
            // A sync that ran and failed despite the broken link still means lost durability.
            e if e < 0 && e != -libc::ECANCELED => ChainOutcome::SyncFailed(cqe_error(e)),
            _ => ChainOutcome::Partial(n as usize),
        },
        _ if sync < 0 => ChainOutcome::SyncFailed(cqe_error(sync)),
        _ => ChainOutcome::Done,
    }
}

/// One reaped completion: its result (bytes, or a negated errno) and when it was seen.
#[derive(Debug, Clone, Copy)]
struct Completion {
    result: i32,
    at: Instant,
}

/// Runs `op` on this thread's ring, creating the ring on first use. `None` if this thread cannot have one
/// (the kernel refused a new ring, or the thread is exiting): the caller then does the I/O through std.
fn with_ring<T>(op: impl FnOnce(&mut IoUring) -> T) -> Option<T> {
    RING.try_with(|slot| {
        let mut slot = slot.try_borrow_mut().ok()?;
        if slot.is_none() {
            match new_ring() {
                Ok(ring) => *slot = Some(ring),
                Err(e) => {
                    if !RING_REFUSED_LOGGED.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "a thread could not create its io_uring; its WAL I/O uses std");
                    }
                    return None;
                }
            }
        }
        slot.as_mut().map(op)
    })
    .ok()
    .flatten()
}

fn new_ring() -> io::Result<IoUring> {
    IoUring::new(RING_ENTRIES)
}

/// Submits `entries` and returns their completions in submission order, once every one has completed.
/// Fails only if nothing was submitted.
///
/// # Safety
/// Every buffer and file descriptor the entries point to must stay valid until this returns. It returns
/// only after the kernel is done with all of them, and aborts the process rather than return early.
unsafe fn complete<const N: usize>(
    ring: &mut IoUring,
    entries: [squeue::Entry; N],
) -> io::Result<[Completion; N]> {
    let mut tag = 0u64;
    let entries = entries.map(|e| {
        tag += 1;
        e.user_data(tag - 1)
    });
    // SAFETY: forwarded from the caller: what the entries point to outlives their completions, which
    // are all reaped below before returning.
    unsafe { ring.submission().push_multiple(&entries) }.map_err(|_| {
        io::Error::other("the io_uring submission queue is full (a previous operation leaked entries)")
    })?;
    let mut done = [Completion {
        result: 0,
        at: Instant::now(),
    }; N];
    let mut seen = [false; N];
    let mut pending = N;
    loop {
        for cqe in ring.completion() {
            let slot = usize::try_from(cqe.user_data()).ok().filter(|&i| i < N);
            match slot {
                Some(i) if !seen[i] => {
                    seen[i] = true;
                    done[i] = Completion {
                        result: cqe.result(),
                        at: Instant::now(),
                    };
                    pending -= 1;
                }
                _ => lost_track("a completion that no operation of this ring expects", None),
            }
        }
        if pending == 0 {
            return Ok(done);
        }
        // Submits whatever is still queued, then sleeps until at least one more completion.
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::ResourceBusy
                ) =>
            {
                thread::yield_now();
            }
            Err(e) => lost_track("waiting for io_uring completions", Some(e)),
        }
    }
}

/// The kernel may still be reading or writing memory we would free by returning: stop the process.
fn lost_track(what: &str, e: Option<io::Error>) -> ! {
    error!(error = ?e, "io_uring failed while {what} may still be in flight; aborting");
    eprintln!("chronik-wal: io_uring failed ({what}): {e:?}; aborting");
    std::process::abort()
}

fn cqe_error(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

fn rw_len(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))
}

/// An offset of `u64::MAX` would mean "the file position" to io_uring; positions past `i64::MAX` are
/// invalid for `pwrite` as well.
fn check_pos(pos: u64) -> io::Result<u64> {
    if pos > i64::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file position {pos} is out of range"),
        ));
    }
    Ok(pos)
}

#[cfg(test)]
mod tests;
