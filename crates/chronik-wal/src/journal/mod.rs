//! The shared journal: one fdatasync makes the appends of many partitions durable.
//!
//! Without it every partition's group commit ends in an fdatasync of that partition's segment, so a
//! broker writing to a thousand partitions at once pays a thousand fdatasyncs. With it
//! ([`crate::WalConfig::journal`]), a group is written to its segment (page cache only) and its bytes,
//! with where they went, are appended to `journal/<seq>.journal`; one *round* writes the groups of every
//! partition waiting and fdatasyncs the journal once. The segments are fdatasynced later, in the
//! background, by a *trim*, after which the journal files before it are deleted.
//!
//! # Rounds
//! A partition with a group to write is *kicked* (queued here); whoever waits on a round first leads it
//! (leader/follower, as group commit within a partition): it takes every kicked partition's pending
//! group, writes each to its segment, writes them all as one round to the journal with one fdatasync, then
//! completes each group. A writer thread leads rounds whenever a partition is kicked; without it (the
//! crash simulation) whoever waits leads. A round with fewer groups than `journal_min_groups` (a lone
//! partition, by default) fdatasyncs each group's segment instead and writes no record: one partition
//! written alone pays one fdatasync either way, and the journal would write its bytes twice.
//!
//! # Invariants
//! - A record in a valid round describes bytes that are, and stay, part of its partition's log: a group
//!   is acknowledged only once its round is durable, a partition's durable mark (`synced`) covers every
//!   record of it in a successful round, and a partition cuts only what is past that mark. So replaying
//!   records (rewriting those bytes at their positions) is idempotent, in any number.
//! - Replay applies files in sequence order and rounds in file order. A round is valid only if it names its
//!   file and the next round number and its CRC matches; the first invalid one ends the file.
//! - A round that fails (write or fdatasync) may still be on disk. Before anything else is written, a new
//!   file is made durable whose header bounds the failed file at the end of its last good round, so no
//!   replay ever applies the failed round. A bound is believed in memory only once it is durable: the set
//!   of records a replay applies only ever shrinks, never grows back.
//! - A journal file is deleted only after every partition with records in it has fdatasynced its segments
//!   since (a trim), and only oldest first (a file's bound lives in the next one's header). A partition
//!   that cannot sync (poisoned, offline) keeps the files: its reopen replays them.
//! - A partition of a deleted one's name is created only once no journal file holds the deleted one's
//!   records (a trim runs first), or a replay would write them into the new partition. For the same
//!   reason a partition's log is cut back (`WalManager::truncate_to`) only once no file holds its records.
//! - At open, every file is replayed into the segments and those are fdatasynced before recovery reads
//!   them; the files are deleted only if all of that succeeded.

pub(crate) mod format;

/// A journal file a trim kept to be the next one (see [`Journal::create_file`]); replay ignores it.
const RECYCLED_FILE: &str = "recycled.journal.tmp";

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    mem,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::{info, warn};

use crate::{
    io::{OpenMode, WalFile, WalIo, WriteSyncError},
    metrics,
    partition::{JournalEntry, PartitionWal},
    segment::segment_file_name,
    Error, Result, TopicPartition,
};
use format::{FileHeader, FILE_HEADER_LEN, NO_BOUND};

/// A journal file that may still be needed.
#[derive(Debug)]
struct LiveFile {
    seq: u64,
    path: PathBuf,
    /// Durable bound from the next file's header: rounds past it are not replayed.
    bound: Option<u64>,
    /// End of the last round written successfully.
    end: u64,
    /// Partitions with records in it.
    tps: HashSet<TopicPartition>,
}

/// The file rounds go to.
#[derive(Debug)]
struct Current {
    file: Arc<dyn WalFile>,
    seq: u64,
    /// Where the next round goes.
    end: u64,
    rounds: u64,
    /// Not yet written: goes out with the next round.
    header: Option<FileHeader>,
}

#[derive(Debug, Default)]
struct State {
    kicked: Vec<Arc<PartitionWal>>,
    started: u64,
    done: u64,
    in_flight: bool,
    /// Oldest first; the last one is `current`'s, if there is a current file.
    files: Vec<LiveFile>,
    current: Option<Current>,
    /// A file prepared by a trim; the next round switches to it.
    next: Option<(u64, Arc<dyn WalFile>)>,
    next_seq: u64,
    /// Why there is no current file (a failed round whose replacement could not be made).
    broken: Option<String>,
    /// The writer thread is asked to stop.
    stopping: bool,
}

/// A segment a replay writes into, and whose partition it is.
type Replaying = (TopicPartition, Arc<dyn WalFile>);

/// What a replay at open did.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub files: usize,
    pub records: u64,
    pub bytes: u64,
    /// Partitions whose records could not be written back or synced: they must not be recovered without
    /// them.
    pub failed: HashMap<TopicPartition, Error>,
}

/// The shared journal of a WAL (see the module docs).
#[derive(Debug)]
pub(crate) struct Journal {
    io: Arc<dyn WalIo>,
    dir: PathBuf,
    partitions_dir: PathBuf,
    preallocate: u64,
    /// Threads a trim syncs partitions on (1 in the deterministic mode: same order every run).
    trim_threads: usize,
    /// Rounds with fewer groups fdatasync their segments instead (`WalConfig::journal_min_groups`).
    min_groups: usize,
    state: Mutex<State>,
    round_done: Condvar,
    /// Wakes the writer thread when a partition is kicked.
    kicked: Condvar,
    /// A writer thread leads rounds (see [`Journal::run_writer`]).
    writer_thread: AtomicBool,
    /// Serialises trims and replays of one partition against file deletion.
    trim_lock: Mutex<()>,
}

impl Journal {
    /// Replays every journal file under `dir` into the segments under `partitions_dir`; with `enabled`,
    /// then opens the journal for writing (a new file). The files replayed are deleted if the replay fully
    /// succeeded, else kept for the next open (their partitions must not be recovered without them).
    pub fn open(
        io: Arc<dyn WalIo>,
        dir: PathBuf,
        partitions_dir: PathBuf,
        preallocate: u64,
        enabled: bool,
        trim_threads: usize,
        min_groups: usize,
    ) -> Result<(Option<Self>, Replayed)> {
        if !enabled && !io.exists(&dir).map_err(|e| Error::io("checking", &dir, e))? {
            return Ok((None, Replayed::default()));
        }
        io.create_dir_all(&dir)
            .map_err(|e| Error::io("creating", &dir, e))?;
        sync_dir(&*io, crate::io::parent(&dir))?;
        let mut seqs: Vec<u64> = io
            .list_dir(&dir)
            .map_err(|e| Error::io("listing", &dir, e))?
            .into_iter()
            .filter_map(|e| format::parse_file_name(&e.name))
            .collect();
        seqs.sort_unstable();
        let mut files = Vec::new();
        let mut bounds = Vec::new();
        for &seq in &seqs {
            let path = dir.join(format::file_name(seq));
            let file = io
                .open(&path, OpenMode::ReadOnly)
                .map_err(|e| Error::io("opening", &path, e))?;
            let size = file
                .size()
                .map_err(|e| Error::io("reading length of", &path, e))?;
            if size >= FILE_HEADER_LEN {
                let mut header = [0u8; FILE_HEADER_LEN as usize];
                file.read_exact_at(&mut header, 0)
                    .map_err(|e| Error::io("reading", &path, e))?;
                if let Some(h) = FileHeader::decode(&header).filter(|h| h.seq == seq) {
                    if h.prev_valid_len != NO_BOUND {
                        bounds.push((h.prev_seq, h.prev_valid_len));
                    }
                }
            }
            files.push(LiveFile {
                seq,
                path,
                bound: None,
                end: 0,
                tps: HashSet::new(),
            });
        }
        for (seq, bound) in bounds {
            if let Some(f) = files.iter_mut().find(|f| f.seq == seq) {
                f.bound = Some(f.bound.map_or(bound, |b| b.min(bound)));
            }
        }
        let first_free = after_recycled(&*io, &dir)?;
        let journal = Self {
            io,
            dir,
            partitions_dir,
            preallocate,
            trim_threads,
            min_groups,
            state: Mutex::new(State {
                next_seq: seqs.last().map_or(1, |s| s + 1).max(first_free),
                ..Default::default()
            }),
            round_done: Condvar::new(),
            kicked: Condvar::new(),
            writer_thread: AtomicBool::new(false),
            trim_lock: Mutex::new(()),
        };
        let replayed = journal.replay(&mut files, None)?;
        if !files.is_empty() {
            info!(
                files = replayed.files,
                records = replayed.records,
                bytes = replayed.bytes,
                failed_partitions = replayed.failed.len(),
                "WAL journal replayed"
            );
        }
        if replayed.failed.is_empty() {
            let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
            journal.delete_files(&paths, false)?;
            files.clear();
        }
        if !enabled {
            return Ok((None, replayed));
        }
        {
            let mut s = journal.state.lock();
            s.files = files;
            let seq = s.next_seq;
            let file = journal.create_file(seq)?;
            s.next_seq += 1;
            journal.switch_to(&mut s, seq, file);
            journal.write_header_now(&mut s)?;
        }
        Ok((Some(journal), replayed))
    }

    /// Queues a partition whose pending group goes into the next round; returns that round.
    pub fn kick(&self, p: Arc<PartitionWal>) -> u64 {
        let mut s = self.state.lock();
        s.kicked.push(p);
        if s.kicked.len() == 1 {
            self.kicked.notify_one();
        }
        s.started + 1
    }

    /// Whether a writer thread leads the rounds: waiters need not (and may wait without a thread).
    pub fn has_writer_thread(&self) -> bool {
        self.writer_thread.load(Ordering::Acquire)
    }

    /// The writer thread: leads a round whenever a partition is kicked and none is in flight, until
    /// [`Journal::stop_writer`]. Waiters may still lead rounds themselves (the crash simulation runs
    /// without this thread).
    pub fn run_writer(&self) {
        let mut s = self.state.lock();
        loop {
            if s.stopping {
                break;
            }
            if s.kicked.is_empty() {
                self.kicked.wait(&mut s);
            } else if s.in_flight {
                self.round_done.wait(&mut s);
            } else {
                self.lead_round(&mut s);
            }
        }
        // From here waiters lead rounds themselves; what was kicked before may have waiters that do not
        // (asynchronous ones).
        self.writer_thread.store(false, Ordering::Release);
        while s.in_flight || !s.kicked.is_empty() {
            if s.in_flight {
                self.round_done.wait(&mut s);
            } else {
                self.lead_round(&mut s);
            }
        }
        drop(s);
        self.round_done.notify_all();
    }

    /// Declares that a writer thread is about to run [`Journal::run_writer`].
    pub fn mark_writer_thread(&self) {
        self.writer_thread.store(true, Ordering::Release);
    }

    /// Stops the writer thread (it returns from [`Journal::run_writer`]).
    pub fn stop_writer(&self) {
        self.state.lock().stopping = true;
        self.kicked.notify_all();
        self.round_done.notify_all();
    }

    /// Returns once round `round` is done, leading rounds while none is in flight.
    pub fn wait_round(&self, round: u64) {
        let mut s = self.state.lock();
        while s.done < round {
            if s.in_flight {
                self.round_done.wait(&mut s);
            } else {
                self.lead_round(&mut s);
            }
        }
    }

    fn lead_round(&self, s: &mut MutexGuard<'_, State>) {
        s.in_flight = true;
        s.started += 1;
        let round = s.started;
        let kicked = mem::take(&mut s.kicked);
        if let Some((seq, file)) = s.next.take() {
            if s.current.is_none() {
                // Its header is the failed file's only bound: durable before any round, as a
                // replacement's (else a failed round in it as well would leave that file unbounded).
                if let Err(e) = self.switch_durably(s, seq, file) {
                    broken(s, &e);
                }
            } else {
                self.switch_to(s, seq, file);
            }
        }
        if s.current.is_none() {
            // A failed round's file must be bounded before anything else is written.
            self.replace_file(s);
        }
        let target = s
            .current
            .as_ref()
            .map(|c| (Arc::clone(&c.file), c.seq, c.end, c.rounds + 1, c.header));
        let broken = s.broken.clone().unwrap_or_default();
        let written = MutexGuard::unlocked(s, || {
            let entries: Vec<JournalEntry> = kicked.iter().filter_map(|p| p.journal_lead(round)).collect();
            let Some((file, seq, end, round_no, header)) = target else {
                let cause = format!("the journal has no file to write to: {broken}");
                for entry in entries {
                    entry.complete(Err(cause.clone()));
                }
                return None;
            };
            if entries.is_empty() && header.is_none() {
                return None;
            }
            if header.is_none() && !entries.is_empty() && entries.len() < self.min_groups {
                // Too few groups for the journal to pay: each is made durable by an fdatasync of its
                // own segment, and writes no record (so a replay has nothing of it to apply).
                for entry in entries {
                    entry.sync_segment_and_complete();
                }
                return None;
            }
            let mut buf = Vec::new();
            let pos = match header {
                Some(h) => {
                    buf.extend_from_slice(&h.encode());
                    0
                }
                None => end,
            };
            // A switch with nothing to write writes only the new file's header.
            if !entries.is_empty() {
                let at = format::begin_round(&mut buf);
                for entry in &entries {
                    entry.encode(&mut buf);
                }
                format::finish_round(&mut buf, at, seq, round_no, entries.len() as u32);
            }
            let started = Instant::now();
            let result = match file.write_all_and_sync_at(&buf, pos) {
                Ok(_) => Ok(pos + buf.len() as u64),
                Err(WriteSyncError::Write(e) | WriteSyncError::Sync(e)) => {
                    Err(format!("writing journal file {seq} failed: {e}"))
                }
            };
            metrics::journal_round(entries.len(), buf.len(), started.elapsed());
            Some((result, entries, seq, round_no))
        });
        let Some((result, entries, seq, round_no)) = written else {
            s.done = round;
            s.in_flight = false;
            self.round_done.notify_all();
            return;
        };
        // What the round did is recorded before any of its groups completes: a waiter told its group is
        // durable may at once delete and recreate its partition (`has_records_of`) or reopen it
        // (`replay_partition`, which reads up to `end`), and both must see this round.
        if let Some(f) = s.files.last_mut().filter(|f| f.seq == seq) {
            // After a failure too: the records may be on disk, and their partitions reopen from them.
            f.tps.extend(entries.iter().map(|e| e.tp().clone()));
        }
        match &result {
            Ok(new_end) => {
                let c = s
                    .current
                    .as_mut()
                    .filter(|c| c.seq == seq)
                    .expect("the round's file");
                c.end = *new_end;
                if !entries.is_empty() {
                    c.rounds = round_no;
                }
                let header = c.header.take();
                if let Some(f) = s.files.last_mut() {
                    f.end = *new_end;
                }
                if let Some(h) = header {
                    // Durable now, and with it the bound on the file before.
                    set_bound(&mut s.files, &h);
                }
            }
            Err(cause) => {
                metrics::error("journal");
                warn!(%cause, "WAL journal round failed; its partitions are poisoned");
                s.current = None;
                // Bounded before the failed groups complete (and their partitions may be reopened).
                self.replace_file(s);
            }
        }
        let outcome = result.map(|_| ());
        MutexGuard::unlocked(s, || {
            let partitions: Vec<Arc<PartitionWal>> =
                entries.iter().map(|e| Arc::clone(e.partition())).collect();
            for entry in entries {
                entry.complete(outcome.clone());
            }
            for p in partitions {
                p.sync_if_files_over_limit();
            }
        });
        s.done = round;
        s.in_flight = false;
        self.round_done.notify_all();
    }

    /// After a failed round: a new current file whose durable header bounds the failed one at its last
    /// good round. If that fails the journal is broken until a later round manages it. I/O under the
    /// state lock: rare, and no round may run meanwhile anyway.
    fn replace_file(&self, s: &mut State) {
        let seq = s.next_seq;
        let made = self.create_file(seq).and_then(|file| {
            s.next_seq += 1;
            self.switch_durably(s, seq, file)
        });
        match made {
            Ok(()) => s.broken = None,
            Err(e) => broken(s, &e),
        }
    }

    /// [`Journal::switch_to`] with the new file's header made durable at once. If that fails the file is
    /// forgotten: not durably a bound, so the next try must bound the failed file again, not this one.
    fn switch_durably(&self, s: &mut State, seq: u64, file: Arc<dyn WalFile>) -> Result<()> {
        self.switch_to(s, seq, file);
        self.write_header_now(s).inspect_err(|_| {
            if s.files.last().is_some_and(|f| f.seq == seq) {
                s.files.pop();
            }
        })
    }

    /// Writes and syncs the current file's header now.
    fn write_header_now(&self, s: &mut State) -> Result<()> {
        let Some(c) = s.current.as_mut() else {
            return Ok(());
        };
        let Some(h) = c.header else {
            return Ok(());
        };
        let path = self.dir.join(format::file_name(c.seq));
        c.file
            .write_all_at(&h.encode(), 0)
            .and_then(|()| c.file.sync_data())
            .map_err(|e| Error::io("writing the header of", &path, e))?;
        c.header = None;
        c.end = FILE_HEADER_LEN;
        if let Some(f) = s.files.last_mut() {
            f.end = FILE_HEADER_LEN;
        }
        set_bound(&mut s.files, &h);
        Ok(())
    }

    /// Makes `file` (numbered `seq`) the current one; its header bounds the last live file at its last
    /// good round. A file a trim prepared before a failed round made a newer one is dropped.
    fn switch_to(&self, s: &mut State, seq: u64, file: Arc<dyn WalFile>) {
        let prev = s.files.last().map(|f| (f.seq, f.end.max(FILE_HEADER_LEN)));
        if prev.is_some_and(|(prev_seq, _)| prev_seq >= seq) {
            drop(file);
            let path = self.dir.join(format::file_name(seq));
            if let Err(e) = self.io.remove_file(&path) {
                warn!(path = %path.display(), error = %e, "could not remove an unused journal file");
            }
            return;
        }
        let (prev_seq, prev_valid_len) = prev.unwrap_or((0, NO_BOUND));
        s.current = Some(Current {
            file,
            seq,
            end: 0,
            rounds: 0,
            header: Some(FileHeader {
                seq,
                prev_seq,
                prev_valid_len,
            }),
        });
        s.files.push(LiveFile {
            seq,
            path: self.dir.join(format::file_name(seq)),
            bound: None,
            end: 0,
            tps: HashSet::new(),
        });
    }

    /// Creates journal file `seq`, durably named, with at least `preallocate` bytes written (so that a
    /// round's fdatasync has no file size to persist): the file a trim recycled if there is one (its old
    /// rounds name their old file, so no replay takes them for this one's), else a new one zero-filled.
    fn create_file(&self, seq: u64) -> Result<Arc<dyn WalFile>> {
        let path = self.dir.join(format::file_name(seq));
        let io = &*self.io;
        // A leftover of an earlier try at this number, never used (its header was never durable).
        if io.exists(&path).map_err(|e| Error::io("checking", &path, e))? {
            io.remove_file(&path)
                .map_err(|e| Error::io("removing", &path, e))?;
        }
        let recycled = self.dir.join(RECYCLED_FILE);
        let file = if io
            .exists(&recycled)
            .map_err(|e| Error::io("checking", &recycled, e))?
        {
            io.rename(&recycled, &path)
                .map_err(|e| Error::io("renaming", &recycled, e))?;
            io.open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("opening", &path, e))?
        } else {
            io.open(&path, OpenMode::CreateNew)
                .map_err(|e| Error::io("creating", &path, e))?
        };
        let len = file
            .size()
            .map_err(|e| Error::io("reading length of", &path, e))?;
        if len < self.preallocate {
            file.zero_fill(len, self.preallocate - len)
                .map_err(|e| Error::io("zero-filling", &path, e))?;
        }
        file.sync_data().map_err(|e| Error::io("syncing", &path, e))?;
        sync_dir(io, &self.dir)?;
        Ok(file)
    }

    /// Bytes of journal written since the last trim.
    pub fn live_bytes(&self) -> u64 {
        let s = self.state.lock();
        s.files.iter().map(|f| f.end).sum()
    }

    /// Whether a live journal file holds records of `tp`.
    pub fn has_records_of(&self, tp: &TopicPartition) -> bool {
        self.state.lock().files.iter().any(|f| f.tps.contains(tp))
    }

    /// Switches to a new file, fdatasyncs (through `flush`) every partition with records in the files
    /// before it, and deletes those files if all of them succeeded. Returns the files deleted.
    pub fn trim(&self, flush: &(dyn Fn(&TopicPartition) -> Result<()> + Sync)) -> Result<usize> {
        let _serial = self.trim_lock.lock();
        let seq = {
            let mut s = self.state.lock();
            let unused = |f: &LiveFile| f.end <= FILE_HEADER_LEN && f.tps.is_empty();
            if s.files.len() == 1 && s.files.iter().all(unused) {
                return Ok(0);
            }
            s.next_seq += 1;
            s.next_seq - 1
        };
        let file = self.create_file(seq)?;
        let round = {
            let mut s = self.state.lock();
            s.next = Some((seq, file));
            s.started + 1
        };
        self.wait_round(round);
        let (retired, tps) = {
            let s = self.state.lock();
            let n = s.files.len().saturating_sub(1);
            let tps: BTreeSet<TopicPartition> =
                s.files[..n].iter().flat_map(|f| f.tps.iter().cloned()).collect();
            (n, tps)
        };
        if retired == 0 {
            return Ok(0);
        }
        // Side by side: the file system serves concurrent fdatasyncs of different files together, and a
        // trim over many partitions is what keeps the journal short.
        let tps: Vec<TopicPartition> = tps.into_iter().collect();
        let failed = AtomicUsize::new(0);
        let next = AtomicUsize::new(0);
        let sync_one = || {
            while let Some(tp) = tps.get(next.fetch_add(1, Ordering::Relaxed)) {
                if let Err(e) = flush(tp) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    warn!(topic = %tp.topic, partition = tp.partition, error = %e,
                        "journal trim: partition not synced; its journal files are kept");
                }
            }
        };
        let threads = self.trim_threads.clamp(1, tps.len().max(1));
        if threads == 1 {
            sync_one();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(sync_one);
                }
            });
        }
        if failed.load(Ordering::Relaxed) > 0 {
            return Ok(0);
        }
        let doomed: Vec<PathBuf> = {
            let s = self.state.lock();
            s.files[..retired].iter().map(|f| f.path.clone()).collect()
        };
        // Forgotten only once gone durably: a creation checks the live files for a deleted partition's
        // records, and a file that could come back after a power cut is still live.
        self.delete_files(&doomed, true)?;
        self.state.lock().files.drain(..retired);
        Ok(doomed.len())
    }

    /// Deletes journal files, oldest first; with `recycle`, the newest is kept (renamed) for the next
    /// trim's new file, if none is kept yet.
    fn delete_files(&self, files: &[PathBuf], recycle: bool) -> Result<()> {
        let io = &*self.io;
        let recycled = self.dir.join(RECYCLED_FILE);
        for (i, path) in files.iter().enumerate() {
            let keep = recycle
                && self.preallocate > 0
                && i + 1 == files.len()
                && !io
                    .exists(&recycled)
                    .map_err(|e| Error::io("checking", &recycled, e))?;
            if keep {
                io.rename(path, &recycled)
                    .map_err(|e| Error::io("renaming", path, e))?;
            } else {
                match io.remove_file(path) {
                    Ok(()) => {}
                    // Deleted by an earlier trim whose directory sync failed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("removing", path, e)),
                }
            }
        }
        if !files.is_empty() {
            sync_dir(io, &self.dir)?;
        }
        Ok(())
    }

    /// Writes the records of `tp` in the live files back into its segments and syncs them: before its
    /// recovery from disk by a reopen.
    pub fn replay_partition(&self, tp: &TopicPartition) -> Result<()> {
        let _serial = self.trim_lock.lock();
        let mut files: Vec<LiveFile> = {
            let s = self.state.lock();
            s.files
                .iter()
                .map(|f| LiveFile {
                    seq: f.seq,
                    path: f.path.clone(),
                    bound: Some(f.bound.unwrap_or(f.end)),
                    end: 0,
                    tps: HashSet::new(),
                })
                .collect()
        };
        let mut replayed = self.replay(&mut files, Some(tp))?;
        match replayed.failed.remove(tp) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Replays `files` (all partitions, or only `only`): rewrites each valid record's bytes into its
    /// segment, then fdatasyncs every segment written. Sets each file's `end` and `tps`.
    fn replay(&self, files: &mut [LiveFile], only: Option<&TopicPartition>) -> Result<Replayed> {
        let mut out = Replayed::default();
        let mut open: HashMap<PathBuf, Replaying> = HashMap::new();
        for f in files.iter_mut() {
            let file = match self.io.open(&f.path, OpenMode::ReadOnly) {
                Ok(file) => file,
                // Deleted by a trim whose directory sync then failed: its partitions were synced.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("opening", &f.path, e)),
            };
            let mut keep = |tp: &TopicPartition| only.is_none_or(|o| o == tp);
            let rounds = format::read_file(&*file, &f.path, f.seq, f.bound.unwrap_or(u64::MAX), &mut keep)
                .map_err(|e| Error::io("reading", &f.path, e))?;
            if let Some(why) = &rounds.stopped {
                warn!(reason = %why, "journal file ends early (the torn tail of an unacknowledged round, or damage)");
            }
            out.files += 1;
            f.end = rounds.valid_len;
            for r in rounds.records {
                f.tps.insert(r.tp.clone());
                if out.failed.contains_key(&r.tp) {
                    continue;
                }
                out.records += 1;
                out.bytes += r.bytes.len() as u64;
                let path = self
                    .partitions_dir
                    .join(r.tp.dir_name())
                    .join(segment_file_name(r.segment_base));
                let target = match open.get(&path) {
                    Some((_, file)) => Some(Arc::clone(file)),
                    None => match self.io.exists(&path) {
                        // A deleted segment (retention, or a deleted partition): synced before deletion.
                        Ok(false) => None,
                        Ok(true) => match self.io.open(&path, OpenMode::ReadWrite) {
                            Ok(file) => {
                                open.insert(path.clone(), (r.tp.clone(), Arc::clone(&file)));
                                Some(file)
                            }
                            Err(e) => {
                                out.failed.insert(r.tp.clone(), Error::io("opening", &path, e));
                                None
                            }
                        },
                        Err(e) => {
                            out.failed.insert(r.tp.clone(), Error::io("checking", &path, e));
                            None
                        }
                    },
                };
                if let Some(file) = target {
                    if let Err(e) = file.write_all_at(&r.bytes, r.position) {
                        out.failed
                            .insert(r.tp.clone(), Error::io("replaying the journal into", &path, e));
                    }
                }
            }
        }
        let mut synced: Vec<(PathBuf, Replaying)> = open.into_iter().collect();
        // In path order: the same file operations every run (the crash simulation replays them).
        synced.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, (tp, file)) in synced {
            if out.failed.contains_key(&tp) {
                continue;
            }
            if let Err(e) = file.sync_data() {
                out.failed
                    .insert(tp, Error::io("syncing replayed journal records into", &path, e));
            }
        }
        Ok(out)
    }
}

/// A header is durable: the bound it sets on the file it names.
fn set_bound(files: &mut [LiveFile], h: &FileHeader) {
    if h.prev_valid_len == NO_BOUND {
        return;
    }
    if let Some(f) = files.iter_mut().find(|f| f.seq == h.prev_seq) {
        f.bound = Some(f.bound.map_or(h.prev_valid_len, |b| b.min(h.prev_valid_len)));
    }
}

/// No file to write rounds to, because of `e`, until a later round manages to make one.
fn broken(s: &mut State, e: &Error) {
    warn!(error = %e, "WAL journal has no file to write to");
    s.current = None;
    s.broken = Some(e.to_string());
}

/// The lowest number a new file may take given the recycled file, if there is one: above the number it
/// last had. It still holds that file's rounds, which name that number (and older ones), and would be
/// valid again in a file of the same number; so numbers are never reused, even after every file was
/// deleted. A recycled file whose header cannot be read is removed instead of reused.
fn after_recycled(io: &dyn WalIo, dir: &Path) -> Result<u64> {
    let path = dir.join(RECYCLED_FILE);
    if !io.exists(&path).map_err(|e| Error::io("checking", &path, e))? {
        return Ok(1);
    }
    let file = io
        .open(&path, OpenMode::ReadOnly)
        .map_err(|e| Error::io("opening", &path, e))?;
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    let read = file
        .size()
        .and_then(|len| {
            if len >= FILE_HEADER_LEN {
                file.read_exact_at(&mut header, 0).map(|()| true)
            } else {
                Ok(false)
            }
        })
        .map_err(|e| Error::io("reading", &path, e))?;
    match FileHeader::decode(&header).filter(|_| read) {
        Some(h) => Ok(h.seq + 1),
        None => {
            drop(file);
            io.remove_file(&path)
                .map_err(|e| Error::io("removing", &path, e))?;
            sync_dir(io, dir)?;
            Ok(1)
        }
    }
}

fn sync_dir(io: &dyn WalIo, dir: &Path) -> Result<()> {
    io.sync_dir(dir)
        .map_err(|e| Error::io("syncing directory", dir, e))
}
