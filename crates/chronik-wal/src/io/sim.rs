//! A simulated, in-memory file system that can lose power, for deterministic crash tests.
//!
//! # Model
//! Like a page cache over a disk, every file has a *current* image (what reads see) and a *durable* one
//! (what survives a power cut), plus the list of writes and truncations made since its last `sync_data`.
//! Every directory likewise has current entries, durable entries and the creations, renames and removals
//! made since its last `sync_dir`. [`SimIo::power_cut`] returns the machine as it boots again:
//! - a directory keeps its durable entries plus a random *prefix* of its pending operations, as a
//!   journaling file system commits metadata in order (a rename is one atomic operation). A file or
//!   directory that is no longer reachable from the root is gone;
//! - a file keeps its durable image plus a random subset of its unsynced operations, applied in order
//!   (pages written back out of order show up as skipped writes and zero-filled holes); of some kept
//!   writes only a random subset of their 4 KiB pages lands; the last write applied may be torn at any
//!   byte or at a 512-byte sector boundary, with the file either ending at the tear or keeping the length
//!   the whole write gave it (the rest old bytes or zeros).
//!
//! A failed `fsync` (injected EIO) makes nothing durable. Half the time it leaves the writes pending, as
//! if the dirty pages were kept; otherwise it drops them as Linux does ("fsyncgate"): reads still see
//! the data, but the disk never gets it, and the next `fsync` succeeds without writing it.
//!
//! All randomness comes from [`SimRng`] seeds, so a scenario replays exactly from its seed. The simulator
//! can also be armed to cut power after the Nth mutating operation ([`SimIo::crash_after`]): that
//! operation and every later one fail, as if the machine stopped there, and the test then takes
//! [`SimIo::power_cut`]. After a power cut the old `SimIo` and its open files only return errors, so
//! threads still holding them cannot touch the new state.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    path::{Component, Path, PathBuf},
    sync::{Arc, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;

use super::{DirEntry, OpenMode, WalFile, WalIo};

/// Granularity of a sector-aligned tear.
pub const SECTOR_BYTES: u64 = 512;
/// Granularity of writeback: one page of a write may reach the disk without its neighbours.
pub const PAGE_BYTES: u64 = 4096;

/// A small seeded generator (SplitMix64): enough for choosing faults, not for cryptography.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }

    /// An independent generator seeded from this one.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

/// Faults injected into live operations, drawn from the simulator's seeded generator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// Chance per mille that `sync_data` or `sync_dir` fails with EIO, making nothing durable.
    pub sync_eio_per_mille: u32,
    /// Chance per mille that a write fails with ENOSPC after writing a random prefix of its bytes.
    pub write_enospc_per_mille: u32,
}

type Ino = u64;
const ROOT: Ino = 0;
const EBADF: i32 = 9;
const EIO: i32 = 5;

#[derive(Debug, Clone)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct FileNode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<FileOp>,
    /// The simulated clock at the last write or length change (see [`SimIo::set_clock`]).
    modified_ms: u64,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, Ino),
    Unlink(String),
    Rename { from: String, to: String },
}

#[derive(Debug, Clone, Default)]
struct DirNode {
    entries: BTreeMap<String, Ino>,
    durable: BTreeMap<String, Ino>,
    pending: Vec<DirOp>,
}

#[derive(Debug, Clone)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug)]
struct State {
    /// Unlinked nodes stay until the next power cut: open handles may still use them.
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    /// Mutating operations performed (successful or not) since this state booted.
    mutations: u64,
    /// The mutation with this number and all later ones fail and power the machine off.
    crash_at: Option<u64>,
    powered_off: bool,
    /// The mutation with this number fails with EIO, once, and the machine runs on.
    eio_at: Option<u64>,
    /// Milliseconds since the epoch, as files' modification times show it.
    clock_ms: u64,
    /// If that mutation is an fdatasync, it drops the file's pending writes (as Linux may).
    eio_drops_writes: bool,
    faults: SimFaults,
    rng: SimRng,
    locked: BTreeSet<PathBuf>,
    /// Handles open now (descriptors, on a real disk).
    open_files: usize,
}

/// The simulated file system. Cheap to share: clones see the same state.
#[derive(Clone)]
pub struct SimIo {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SimIo")
            .field("mutations", &s.mutations)
            .field("powered_off", &s.powered_off)
            .finish_non_exhaustive()
    }
}

impl Default for SimIo {
    fn default() -> Self {
        Self::new(0)
    }
}

fn power_off_error() -> io::Error {
    io::Error::other("simulated power cut: the machine is off")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

fn components(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 path"))?
                    .to_owned(),
            ),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the simulator takes plain paths, not {}", path.display()),
                ))
            }
        }
    }
    Ok(out)
}

impl State {
    fn alive(&self) -> io::Result<()> {
        if self.powered_off {
            Err(power_off_error())
        } else {
            Ok(())
        }
    }

    /// Counts one mutating operation; fails if power is (or now goes) off.
    fn mutation(&mut self) -> io::Result<()> {
        self.alive()?;
        self.mutations += 1;
        if self.crash_at.is_some_and(|n| self.mutations >= n) {
            self.powered_off = true;
            return Err(power_off_error());
        }
        if self.eio_at == Some(self.mutations) {
            self.eio_at = None;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(())
    }

    fn dir(&self, ino: Ino) -> Option<&DirNode> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> io::Result<&mut DirNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            _ => Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> io::Result<&mut FileNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            _ => Err(io::Error::new(io::ErrorKind::IsADirectory, "not a file")),
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<Ino> {
        let mut ino = ROOT;
        for name in components(path)? {
            let dir = self
                .dir(ino)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))?;
            ino = *dir.entries.get(&name).ok_or_else(|| not_found(path))?;
        }
        Ok(ino)
    }

    /// The directory holding `path` and the last component's name.
    fn lookup_parent(&self, path: &Path) -> io::Result<(Ino, String)> {
        let mut comps = components(path)?;
        let name = comps
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the root has no parent"))?;
        let parent: PathBuf = comps.iter().collect();
        let ino = self.lookup(&Path::new("/").join(parent))?;
        if self.dir(ino).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        Ok((ino, name))
    }

    fn new_node(&mut self, node: Node) -> Ino {
        self.next_ino += 1;
        self.nodes.insert(self.next_ino, node);
        self.next_ino
    }

    fn link(&mut self, dir: Ino, name: String, ino: Ino) -> io::Result<()> {
        let d = self.dir_mut(dir)?;
        d.entries.insert(name.clone(), ino);
        d.pending.push(DirOp::Link(name, ino));
        Ok(())
    }

    fn unlink(&mut self, dir: Ino, name: &str) -> io::Result<()> {
        let d = self.dir_mut(dir)?;
        d.entries.remove(name);
        d.pending.push(DirOp::Unlink(name.to_owned()));
        Ok(())
    }

    /// An injected fsync failure of `ino`, if one is drawn; for a file, half of them lose its pending
    /// writes for good (marked clean, never written).
    fn inject_sync_fault(&mut self, ino: Ino) -> io::Result<()> {
        if self.faults.sync_eio_per_mille > 0 && self.rng.chance(self.faults.sync_eio_per_mille) {
            if self.rng.chance(500) {
                if let Some(Node::File(f)) = self.nodes.get_mut(&ino) {
                    f.unsynced.clear();
                }
            }
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(())
    }
}

impl SimIo {
    /// An empty file system (only `/`); `seed` drives injected faults.
    pub fn new(seed: u64) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::default()));
        Self::from_state(nodes, ROOT, SimFaults::default(), SimRng::new(seed))
    }

    fn from_state(nodes: BTreeMap<Ino, Node>, next_ino: Ino, faults: SimFaults, rng: SimRng) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                nodes,
                next_ino,
                mutations: 0,
                crash_at: None,
                powered_off: false,
                eio_at: None,
                clock_ms: 0,
                eio_drops_writes: false,
                faults,
                rng,
                locked: BTreeSet::new(),
                open_files: 0,
            })),
        }
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.state.lock().faults = faults;
    }

    /// Lets `ops` more mutating operations succeed; the next one fails and the power goes off.
    pub fn crash_after(&self, ops: u64) {
        let mut s = self.state.lock();
        s.crash_at = Some(s.mutations + ops + 1);
    }

    /// Lets `ops` more mutating operations succeed and fails the next one with EIO, without effect; later
    /// ones succeed again. For tests that need one particular operation to fail.
    pub fn fail_once_after(&self, ops: u64) {
        let mut s = self.state.lock();
        s.eio_at = Some(s.mutations + ops + 1);
        s.eio_drops_writes = false;
    }

    /// As [`SimIo::fail_once_after`], but if the failing operation is an fdatasync, the file's pending
    /// writes are dropped as well: reads still see them, the disk never gets them (Linux after a
    /// writeback error).
    pub fn fail_once_after_dropping_writes(&self, ops: u64) {
        self.fail_once_after(ops);
        self.state.lock().eio_drops_writes = true;
    }

    /// Sets the clock files' modification times are taken from (milliseconds since the epoch).
    pub fn set_clock(&self, ms: u64) {
        self.state.lock().clock_ms = ms;
    }

    /// Cancels [`SimIo::crash_after`] if it has not fired yet.
    pub fn disarm(&self) {
        self.state.lock().crash_at = None;
    }

    /// Files open now through this file system (what would be descriptors on a real one).
    pub fn open_files(&self) -> usize {
        self.state.lock().open_files
    }

    pub fn is_powered_off(&self) -> bool {
        self.state.lock().powered_off
    }

    /// Mutating operations (writes, syncs, truncations, creations, renames, removals) since boot.
    pub fn mutations(&self) -> u64 {
        self.state.lock().mutations
    }

    /// Makes `path` and all its ancestors exist durably, as a directory prepared before the test.
    pub fn create_dir_all_durable(&self, path: &Path) -> io::Result<()> {
        self.create_dir_all(path)?;
        let mut dir = Some(path);
        while let Some(d) = dir {
            self.sync_dir(d)?;
            dir = d.parent();
        }
        Ok(())
    }

    /// Cuts the power: this `SimIo` and its files fail from now on, and the returned one is the machine
    /// after reboot (see the module docs for what survives), sharing nothing with this one.
    pub fn power_cut(&self, rng: &mut SimRng) -> SimIo {
        self.reboot(Some(rng))
    }

    /// The worst power cut: nothing unsynced survives (no write, truncation or directory change).
    pub fn power_cut_durable_only(&self) -> SimIo {
        self.reboot(None)
    }

    fn reboot(&self, mut rng: Option<&mut SimRng>) -> SimIo {
        let mut old = self.state.lock();
        old.powered_off = true;
        let mut nodes = BTreeMap::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if nodes.contains_key(&ino) {
                continue;
            }
            let node = match old.nodes.get(&ino) {
                Some(Node::Dir(d)) => {
                    let entries = replay_dir(d, rng.as_deref_mut());
                    // Reverse so that the walk (and so the use of `rng`) goes in name order.
                    stack.extend(entries.values().rev().copied());
                    Node::Dir(DirNode {
                        durable: entries.clone(),
                        entries,
                        pending: Vec::new(),
                    })
                }
                Some(Node::File(f)) => {
                    let keep = match rng.as_deref_mut() {
                        Some(rng) => KeepUnsynced::Some(rng),
                        None => KeepUnsynced::None,
                    };
                    let content = replay_file(f, keep);
                    Node::File(FileNode {
                        durable: content.clone(),
                        current: content,
                        unsynced: Vec::new(),
                        modified_ms: f.modified_ms,
                    })
                }
                None => continue,
            };
            nodes.insert(ino, node);
        }
        let rng = match rng {
            Some(rng) => rng.fork(),
            None => old.rng.fork(),
        };
        Self::from_state(nodes, old.next_ino, old.faults, rng)
    }

    /// [`SimIo::power_cut`] with a fresh generator from `seed`.
    pub fn crash(&self, seed: u64) -> SimIo {
        self.power_cut(&mut SimRng::new(seed))
    }
}

/// Durable entries plus a random prefix of the pending operations.
fn replay_dir(d: &DirNode, rng: Option<&mut SimRng>) -> BTreeMap<String, Ino> {
    let mut entries = d.durable.clone();
    let Some(rng) = rng else { return entries };
    let n = d.pending.len() as u64;
    let keep = match rng.below(3) {
        0 => 0,
        1 => n,
        _ => rng.below(n + 1),
    };
    for op in d.pending.iter().take(keep as usize) {
        match op {
            DirOp::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Unlink(name) => {
                entries.remove(name);
            }
            DirOp::Rename { from, to } => {
                if let Some(ino) = entries.remove(from) {
                    entries.insert(to.clone(), ino);
                }
            }
        }
    }
    entries
}

/// Which unsynced operations [`replay_file`] applies.
enum KeepUnsynced<'a> {
    /// None: the worst power cut.
    None,
    /// All, untorn: what a successful sync makes durable.
    All,
    /// A random subset, the last write possibly torn: a power cut.
    Some(&'a mut SimRng),
}

/// The durable image plus the unsynced operations `keep` says.
fn replay_file(f: &FileNode, keep: KeepUnsynced<'_>) -> Vec<u8> {
    let mut content = f.durable.clone();
    let n = f.unsynced.len();
    let rng = match keep {
        _ if n == 0 => return content,
        KeepUnsynced::None => return content,
        KeepUnsynced::All => {
            for op in &f.unsynced {
                match op {
                    FileOp::SetLen(len) => content.resize(*len as usize, 0),
                    FileOp::Write { pos, data } => apply_write(&mut content, *pos, data),
                }
            }
            return content;
        }
        KeepUnsynced::Some(rng) => rng,
    };
    let kept: Vec<bool> = match rng.below(4) {
        0 => vec![false; n],
        1 => vec![true; n],
        2 => {
            let k = rng.below(n as u64 + 1) as usize;
            (0..n).map(|i| i < k).collect()
        }
        _ => (0..n).map(|_| rng.chance(500)).collect(),
    };
    let last_write = (0..n)
        .rev()
        .find(|&i| kept[i] && matches!(f.unsynced[i], FileOp::Write { .. }));
    let tear = rng.chance(500);
    for (i, op) in f.unsynced.iter().enumerate() {
        if !kept[i] {
            continue;
        }
        match op {
            FileOp::SetLen(len) => content.resize(*len as usize, 0),
            FileOp::Write { pos, data } if Some(i) != last_write && rng.chance(125) => {
                apply_some_pages(&mut content, *pos, data, rng);
            }
            FileOp::Write { pos, data } => {
                let (cut, keep_len) = if tear && Some(i) == last_write {
                    (tear_point(*pos, data.len() as u64, rng), rng.chance(500))
                } else {
                    (data.len(), true)
                };
                apply_write(&mut content, *pos, &data[..cut]);
                if keep_len {
                    let end = *pos as usize + data.len();
                    if content.len() < end {
                        content.resize(end, 0);
                    }
                }
            }
        }
    }
    content
}

/// Pages of one write reach the disk independently (writeback goes page by page, in any order): a random
/// subset of the write's pages lands, and the file may or may not have taken its new length.
fn apply_some_pages(content: &mut Vec<u8>, pos: u64, data: &[u8], rng: &mut SimRng) {
    let end = pos + data.len() as u64;
    let mut at = pos;
    while at < end {
        let page_end = ((at / PAGE_BYTES + 1) * PAGE_BYTES).min(end);
        if rng.chance(500) {
            apply_write(content, at, &data[(at - pos) as usize..(page_end - pos) as usize]);
        }
        at = page_end;
    }
    if rng.chance(500) && (content.len() as u64) < end {
        content.resize(end as usize, 0);
    }
}

/// How many bytes of a `len`-byte write at `pos` reach the disk when it is torn.
fn tear_point(pos: u64, len: u64, rng: &mut SimRng) -> usize {
    let first_boundary = (pos / SECTOR_BYTES + 1) * SECTOR_BYTES;
    let end = pos + len;
    if rng.chance(500) && first_boundary < end {
        let boundaries = (end - 1 - first_boundary) / SECTOR_BYTES + 1;
        (first_boundary + rng.below(boundaries) * SECTOR_BYTES - pos) as usize
    } else {
        rng.below(len) as usize
    }
}

fn apply_write(content: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = pos as usize;
    let end = pos + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[pos..end].copy_from_slice(data);
}

impl WalIo for SimIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        let mut s = self.state.lock();
        let ino = match mode {
            OpenMode::CreateNew => {
                s.mutation()?;
                let (dir, name) = s.lookup_parent(path)?;
                if s.dir(dir).is_some_and(|d| d.entries.contains_key(&name)) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists", path.display()),
                    ));
                }
                let ino = s.new_node(Node::File(FileNode::default()));
                s.link(dir, name, ino)?;
                ino
            }
            OpenMode::ReadWrite | OpenMode::ReadOnly => {
                s.alive()?;
                let ino = s.lookup(path)?;
                s.file_mut(ino)?;
                ino
            }
        };
        s.open_files += 1;
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            ino,
            writable: mode != OpenMode::ReadOnly,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.alive()?;
        let mut ino = ROOT;
        let mut counted = false;
        for name in components(path)? {
            let existing = s
                .dir(ino)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))?
                .entries
                .get(&name)
                .copied();
            ino = match existing {
                Some(child) => child,
                None => {
                    if !counted {
                        s.mutation()?;
                        counted = true;
                    }
                    let child = s.new_node(Node::Dir(DirNode::default()));
                    s.link(ino, name, child)?;
                    child
                }
            };
        }
        match s.dir(ino) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a file", path.display()),
            )),
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let s = self.state.lock();
        s.alive()?;
        let dir = s
            .dir(s.lookup(path)?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))?;
        Ok(dir
            .entries
            .iter()
            .map(|(name, ino)| DirEntry {
                name: name.clone(),
                is_dir: matches!(s.nodes.get(ino), Some(Node::Dir(_))),
            })
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutation()?;
        let (from_dir, from_name) = s.lookup_parent(from)?;
        let (to_dir, to_name) = s.lookup_parent(to)?;
        let ino = s.lookup(from)?;
        let moving_dir = s.dir(ino).is_some();
        if let Ok(target) = s.lookup(to) {
            if target == ino {
                return Ok(());
            }
            match (moving_dir, s.dir(target)) {
                (true, Some(d)) if !d.entries.is_empty() => {
                    return Err(io::Error::new(
                        io::ErrorKind::DirectoryNotEmpty,
                        format!("{} is not empty", to.display()),
                    ))
                }
                (true, None) => return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")),
                (false, Some(_)) => {
                    return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"))
                }
                _ => {}
            }
        }
        if moving_dir && components(to)?.starts_with(&components(from)?) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot move a directory into itself",
            ));
        }
        if from_dir == to_dir {
            let d = s.dir_mut(from_dir)?;
            d.entries.remove(&from_name);
            d.entries.insert(to_name.clone(), ino);
            d.pending.push(DirOp::Rename {
                from: from_name,
                to: to_name,
            });
        } else {
            // Two directories, two independent journal records: after a crash the node may have both
            // names or neither.
            s.unlink(from_dir, &from_name)?;
            s.link(to_dir, to_name, ino)?;
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutation()?;
        let (dir, name) = s.lookup_parent(path)?;
        let ino = s.lookup(path)?;
        s.file_mut(ino)?;
        s.unlink(dir, &name)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutation()?;
        let (dir, name) = s.lookup_parent(path)?;
        let ino = s.lookup(path)?;
        if !s.dir_mut(ino)?.entries.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{} is not empty", path.display()),
            ));
        }
        s.unlink(dir, &name)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutation()?;
        let ino = s.lookup(path)?;
        s.dir_mut(ino)?;
        s.inject_sync_fault(ino)?;
        let d = s.dir_mut(ino)?;
        d.durable = d.entries.clone();
        d.pending.clear();
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = self.state.lock();
        s.alive()?;
        match s.lookup(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn name(&self) -> &'static str {
        "sim"
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let mut s = self.state.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        s.dir_mut(ino)?;
        let path = Path::new("/").join(components(path)?.iter().collect::<PathBuf>());
        if !s.locked.insert(path.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            ));
        }
        Ok(Box::new(SimLock {
            state: Arc::downgrade(&self.state),
            path,
        }))
    }
}

/// Holds a [`SimIo::lock_dir`] lock until dropped.
#[derive(Debug)]
struct SimLock {
    state: Weak<Mutex<State>>,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            state.lock().locked.remove(&self.path);
        }
    }
}

/// An open simulated file. Unlinking the file does not affect the handle, as with POSIX.
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: Ino,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        self.state.lock().open_files -= 1;
    }
}

impl SimFile {
    fn writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(EBADF))
        }
    }
}

impl WalFile for SimFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutation()?;
        self.writable()?;
        s.file_mut(self.ino)?;
        let mut len = buf.len();
        let enospc = s.faults.write_enospc_per_mille;
        let full = enospc > 0 && s.rng.chance(enospc);
        if full {
            len = s.rng.below(buf.len() as u64) as usize;
        }
        let now = s.clock_ms;
        let f = s.file_mut(self.ino)?;
        if len > 0 {
            f.modified_ms = now;
            apply_write(&mut f.current, pos, &buf[..len]);
            f.unsynced.push(FileOp::Write {
                pos,
                data: buf[..len].to_vec(),
            });
        }
        if full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated ENOSPC: no space left on device",
            ));
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut s = self.state.lock();
        s.alive()?;
        let f = s.file_mut(self.ino)?;
        let start = (pos as usize).min(f.current.len());
        let n = buf.len().min(f.current.len() - start);
        buf[..n].copy_from_slice(&f.current[start..start + n]);
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        let injected = !s.powered_off && s.eio_at == Some(s.mutations + 1);
        if let Err(e) = s.mutation() {
            if injected && s.eio_drops_writes {
                s.file_mut(self.ino)?.unsynced.clear();
            }
            return Err(e);
        }
        s.file_mut(self.ino)?;
        s.inject_sync_fault(self.ino)?;
        let f = s.file_mut(self.ino)?;
        // Not `current`: writes an earlier failed sync dropped are in it, but never reach the disk.
        f.durable = replay_file(f, KeepUnsynced::All);
        f.unsynced.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutation()?;
        self.writable()?;
        let now = s.clock_ms;
        let f = s.file_mut(self.ino)?;
        f.modified_ms = now;
        f.current.resize(len as usize, 0);
        f.unsynced.push(FileOp::SetLen(len));
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut s = self.state.lock();
        s.alive()?;
        Ok(s.file_mut(self.ino)?.current.len() as u64)
    }

    fn modified(&self) -> io::Result<SystemTime> {
        let mut s = self.state.lock();
        s.alive()?;
        Ok(UNIX_EPOCH + Duration::from_millis(s.file_mut(self.ino)?.modified_ms))
    }

    fn set_modified(&self, time: SystemTime) -> io::Result<()> {
        let mut s = self.state.lock();
        s.alive()?;
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        s.file_mut(self.ino)?.modified_ms = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        Ok(())
    }
}
