//! The raw baseline: one file per partition written by `pwrite` at the end of its data and made durable by
//! `fdatasync`; with several writers per partition, a textbook leader/follower group commit over it.
//!
//! The file either grows with every write, or is prepared before the timed run: zero-filled and fsynced
//! for `prepared_bytes`, so that a write lands in allocated, initialised blocks and its fdatasync has no
//! file metadata to commit (the WAL's `preallocate_bytes` does this in the background). A prepared file
//! refuses appends past its prepared space (`append_durable` returns `false`), so that a run measures only
//! prepared writes.

use std::{
    fs::{File, OpenOptions},
    io, mem,
    os::unix::fs::FileExt,
    path::Path,
};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// Zeros written per call while preparing a file.
const ZERO_CHUNK: usize = 4 << 20;

/// Creates the file, zero-filled and synced for `prepared_bytes` (rounded up to a chunk).
fn create_file(path: &Path, prepared_bytes: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create a raw baseline file");
    if prepared_bytes > 0 {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut pos = 0;
        while pos < prepared_bytes {
            file.write_all_at(&zeros, pos)
                .expect("zero-fill a raw baseline file");
            pos += ZERO_CHUNK as u64;
        }
        file.sync_all().expect("sync a prepared raw baseline file");
    }
    file
}

/// The append limit of a file prepared for `prepared_bytes` (0: a growing file, no limit).
fn limit(prepared_bytes: u64) -> u64 {
    if prepared_bytes == 0 {
        u64::MAX
    } else {
        prepared_bytes
    }
}

/// A file written by `pwrite` at the end of its data, each append made durable by `fdatasync`.
pub struct RawFile {
    file: File,
    len: u64,
    /// Appends that would end past this are refused.
    limit: u64,
}

impl RawFile {
    pub fn create(path: &Path, prepared_bytes: u64) -> Self {
        Self {
            file: create_file(path, prepared_bytes),
            len: 0,
            limit: limit(prepared_bytes),
        }
    }

    /// Bytes appended.
    pub fn appended_bytes(&self) -> u64 {
        self.len
    }

    /// Returns once `buf` is durable (`true`), or at once if it does not fit the prepared space (`false`).
    pub fn append_durable(&mut self, buf: &[u8]) -> io::Result<bool> {
        if self.len + buf.len() as u64 > self.limit {
            return Ok(false);
        }
        self.file.write_all_at(buf, self.len)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        Ok(true)
    }
}

/// Leader/follower group commit over one file, the textbook version. Appenders copy into the pending
/// buffer under the lock; one that finds no flush in flight takes the whole buffer, writes it at the end of
/// the file and syncs without the lock, then marks its group done and wakes the others. It uses the same
/// `parking_lot` primitives as the WAL so that the comparison is about the work done, not the mutex.
pub struct RawGroupCommit {
    file: File,
    /// Appends that would end past this are refused.
    limit: u64,
    state: Mutex<GroupState>,
    flushed: Condvar,
}

struct GroupState {
    /// Bytes written and synced so far; the next group goes there.
    len: u64,
    /// Bytes accepted: written, in flight or pending.
    accepted: u64,
    pending: Vec<u8>,
    /// A drained buffer kept for reuse, so steady-state appends do not allocate.
    spare: Vec<u8>,
    /// The group the pending buffer belongs to; groups are numbered from 1 and flushed in order.
    pending_group: u64,
    /// The last group written and synced.
    done_group: u64,
    /// A leader is writing; at most one group is in flight.
    flushing: bool,
}

impl RawGroupCommit {
    pub fn create(path: &Path, prepared_bytes: u64) -> Self {
        Self {
            file: create_file(path, prepared_bytes),
            limit: limit(prepared_bytes),
            state: Mutex::new(GroupState {
                len: 0,
                accepted: 0,
                pending: Vec::new(),
                spare: Vec::new(),
                pending_group: 1,
                done_group: 0,
                flushing: false,
            }),
            flushed: Condvar::new(),
        }
    }

    /// Bytes appended.
    pub fn appended_bytes(&self) -> u64 {
        self.state.lock().len
    }

    /// Returns once `payload` is durable (`true`), or at once if it does not fit the prepared space
    /// (`false`). An I/O error is returned to the leader only; the bench stops on it, so its followers need
    /// not learn of it.
    pub fn append_durable(&self, payload: &[u8]) -> io::Result<bool> {
        let mut st = self.state.lock();
        if st.accepted + payload.len() as u64 > self.limit {
            return Ok(false);
        }
        st.accepted += payload.len() as u64;
        st.pending.extend_from_slice(payload);
        let group = st.pending_group;
        while st.done_group < group {
            if st.flushing {
                self.flushed.wait(&mut st);
            } else {
                // No flush in flight and our group not done: it is the pending one.
                self.lead(&mut st)?;
            }
        }
        Ok(true)
    }

    fn lead(&self, st: &mut MutexGuard<'_, GroupState>) -> io::Result<()> {
        let spare = mem::take(&mut st.spare);
        let mut buf = mem::replace(&mut st.pending, spare);
        let group = st.pending_group;
        st.pending_group += 1;
        st.flushing = true;
        let pos = st.len;
        let result = MutexGuard::unlocked(st, || {
            self.file.write_all_at(&buf, pos)?;
            self.file.sync_data()
        });
        st.len += buf.len() as u64;
        st.done_group = group;
        st.flushing = false;
        buf.clear();
        st.spare = buf;
        self.flushed.notify_all();
        result
    }
}
