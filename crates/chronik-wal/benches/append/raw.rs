//! The raw baseline: one file per partition grown by `pwrite` at its end and made durable by `fdatasync`;
//! with several writers per partition, a textbook leader/follower group commit over it.

use std::{
    fs::{File, OpenOptions},
    io, mem,
    os::unix::fs::FileExt,
    path::Path,
};

use parking_lot::{Condvar, Mutex, MutexGuard};

fn create_file(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create a raw baseline file")
}

/// A file grown by `pwrite` at its end, each append made durable by `fdatasync`.
pub struct RawFile {
    file: File,
    len: u64,
}

impl RawFile {
    pub fn create(path: &Path) -> Self {
        Self {
            file: create_file(path),
            len: 0,
        }
    }

    pub fn append_durable(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.len)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// Leader/follower group commit over one file, the textbook version. Appenders copy into the pending
/// buffer under the lock; one that finds no flush in flight takes the whole buffer, writes it at the end of
/// the file and syncs without the lock, then marks its group done and wakes the others. It uses the same
/// `parking_lot` primitives as the WAL so that the comparison is about the work done, not the mutex.
pub struct RawGroupCommit {
    file: File,
    state: Mutex<GroupState>,
    flushed: Condvar,
}

struct GroupState {
    /// Bytes written and synced so far; the next group goes there.
    len: u64,
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
    pub fn create(path: &Path) -> Self {
        Self {
            file: create_file(path),
            state: Mutex::new(GroupState {
                len: 0,
                pending: Vec::new(),
                spare: Vec::new(),
                pending_group: 1,
                done_group: 0,
                flushing: false,
            }),
            flushed: Condvar::new(),
        }
    }

    /// Returns once `payload` is durable. An I/O error is returned to the leader only; the bench stops on
    /// it, so its followers need not learn of it.
    pub fn append_durable(&self, payload: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
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
        Ok(())
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
