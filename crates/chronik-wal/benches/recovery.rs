//! Recovery: how long reopening a data directory takes, and how much of the log it reads, with a recent
//! checkpoint against without one.
//!
//! The bench builds one data directory holding `CHRONIK_BENCH_RECOVERY_BYTES` of log (default 1 GiB) over
//! 8 partitions of several segments each, writes a checkpoint, appends a tail (1/64 of the log) after it,
//! syncs and drops the WAL without closing it (a crash: no final checkpoint). Each round then reopens the
//! directory twice, with the checkpoint file in place and with it removed (it is kept aside and put back),
//! each time from a cold page cache where the kernel lets us drop it (`/proc/sys/vm/drop_caches`, root
//! only; the output says when it could not; a quick run leaves the cache alone). Reported per reopen: the
//! wall time of `WalManager::open`, the bytes recovery validated (`RecoveryReport::stats.bytes_scanned`),
//! and the bytes the process read: from the disk (`read_bytes` of `/proc/self/io`, meaningful with a cold
//! cache) and through read calls (`rchar`). Recovery must validate exactly the tail's frames with the
//! checkpoint and every frame without it (the bench panics otherwise); whether it also *reads* only the
//! tail is reported as a target, met or missed: with preallocation on, recovery also reads the zero-filled
//! space after the last frame of each active segment, to tell preallocated space from damage.
//!
//! Knobs (environment): `CHRONIK_BENCH_RECOVERY_BYTES` (log size), `CHRONIK_BENCH_ROUNDS` (default 3),
//! `CHRONIK_BENCH_PREALLOC_BYTES` (the WAL's `preallocate_bytes`, default the WAL's default; 0 is off),
//! `CHRONIK_BENCH_QUICK=1` (8 MiB, one round: a smoke run for CI), `CHRONIK_BENCH_DIR` (where the data
//! directory goes, default `target/bench-tmp`). Results go to `target/bench-results/recovery.json`.
//!
//!     cargo bench -p chronik-wal --bench recovery

mod common;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chronik_wal::{
    frame::FRAME_HEADER_LEN, segment::SEGMENT_SUFFIX, Batch, CheckpointConfig, IoBackend, RotationConfig,
    SyncPolicy, TopicPartition, WalConfig, WalManager,
};
use common::{json_number, median, CountingAlloc};
use rand::{rngs::StdRng, RngCore, SeedableRng};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const PARTITIONS: usize = 8;
/// Each partition's share of the log is cut into about this many segments.
const SEGMENTS_PER_PARTITION: u64 = 4;
/// Batches are this large, or smaller in a small log so that every partition still gets a tail.
const MAX_BATCH_BYTES: u64 = 64 << 10;
const MIN_BATCH_BYTES: u64 = 1 << 10;
/// The tail written after the checkpoint is this fraction of the log.
const TAIL_FRACTION: u64 = 64;
const PAYLOAD_SEED: u64 = 0x5eed_0f10;
/// The WAL's recovery scan reads segments in chunks of this size (`SCAN_CHUNK` in `segment.rs`).
const SCAN_CHUNK_BYTES: u64 = 1 << 20;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Checkpoint,
    NoCheckpoint,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Checkpoint => "with checkpoint",
            Mode::NoCheckpoint => "no checkpoint",
        }
    }

    fn json_key(self) -> &'static str {
        match self {
            Mode::Checkpoint => "checkpoint",
            Mode::NoCheckpoint => "no_checkpoint",
        }
    }
}

/// One reopen.
#[derive(Debug, Clone, Copy)]
struct Reopen {
    open_ms: f64,
    bytes_scanned: u64,
    segments: u64,
    frames_scanned: u64,
    disk_read_bytes: u64,
    read_call_bytes: u64,
    cache_dropped: bool,
}

fn main() {
    let quick = common::quick_mode();
    let log_bytes: u64 =
        common::env_parse("CHRONIK_BENCH_RECOVERY_BYTES").unwrap_or(if quick { 8 << 20 } else { 1 << 30 });
    let rounds: usize = common::env_parse("CHRONIK_BENCH_ROUNDS").unwrap_or(if quick { 1 } else { 3 });
    assert!(rounds >= 1, "CHRONIK_BENCH_ROUNDS must be at least 1");
    let min_log_bytes = PARTITIONS as u64 * TAIL_FRACTION * MIN_BATCH_BYTES;
    assert!(
        log_bytes >= min_log_bytes,
        "CHRONIK_BENCH_RECOVERY_BYTES must be at least {min_log_bytes} so that every partition gets a tail"
    );
    let tmp_root = common::tmp_root();
    fs::create_dir_all(&tmp_root).expect("create the bench directory");
    let dir = tempfile::Builder::new()
        .prefix("recovery-")
        .tempdir_in(&tmp_root)
        .expect("create the data directory");
    let config = config_for(log_bytes);
    let built = build(dir.path(), &config, log_bytes);
    let saved_checkpoint = fs::read(dir.path().join("checkpoint")).expect("read the checkpoint file");

    // One unmeasured reopen first, so that a one-time repair of the crash (if any) is not in round 1.
    set_checkpoint(dir.path(), Some(&saved_checkpoint));
    drop(WalManager::open(dir.path(), config.clone()).expect("reopen the WAL"));

    let mut runs: Vec<(Mode, Reopen)> = Vec::new();
    for round in 0..rounds {
        let mut modes = [Mode::Checkpoint, Mode::NoCheckpoint];
        modes.rotate_left(round % 2);
        for mode in modes {
            let checkpoint = (mode == Mode::Checkpoint).then_some(saved_checkpoint.as_slice());
            set_checkpoint(dir.path(), checkpoint);
            let r = reopen(dir.path(), &config, mode, &built, !quick);
            eprintln!(
                "round {}/{rounds} {:<16} open {:>8.1} ms  scanned {:>6.1} MiB  disk reads {:>6.1} MiB  \
                 read calls {:>6.1} MiB{}",
                round + 1,
                mode.label(),
                r.open_ms,
                mib(r.bytes_scanned),
                mib(r.disk_read_bytes),
                mib(r.read_call_bytes),
                if r.cache_dropped {
                    ""
                } else {
                    "  (page cache NOT dropped)"
                }
            );
            runs.push((mode, r));
        }
    }
    report(quick, rounds, &built, &runs);
}

fn config_for(log_bytes: u64) -> WalConfig {
    let per_partition = log_bytes / PARTITIONS as u64;
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: (per_partition / SEGMENTS_PER_PARTITION).max(64 << 10),
            ..Default::default()
        },
        // Checkpoints are written by the bench at a chosen point, not by a timer.
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        // Building the log is not what is measured: the bench syncs it once at the end.
        sync_policy: SyncPolicy::Never,
        io_backend: IoBackend::Std,
        preallocate_bytes: common::env_parse("CHRONIK_BENCH_PREALLOC_BYTES")
            .unwrap_or(WalConfig::default().preallocate_bytes),
        ..WalConfig::default()
    }
}

/// What was built: the log's size on disk and the tail after the checkpoint.
struct Built {
    log_bytes: u64,
    tail_bytes: u64,
    /// The frames (headers and payloads) of the whole log and of the tail: what recovery validates.
    frame_bytes: u64,
    tail_frame_bytes: u64,
    frames: u64,
    tail_frames: u64,
    preallocate_bytes: u64,
    segment_files: usize,
    build_secs: f64,
}

/// Fills the data directory: the log up to the checkpoint, the checkpoint, then the tail; syncs it all and
/// drops the WAL without closing it.
fn build(dir: &Path, config: &WalConfig, log_bytes: u64) -> Built {
    let started = Instant::now();
    let tail_bytes = log_bytes / TAIL_FRACTION;
    let wal = WalManager::open(dir, config.clone()).expect("open the WAL");
    let partitions: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let tp = TopicPartition::new("recovery", i32::try_from(p).expect("few partitions"));
            wal.create_partition(&tp).expect("create a WAL partition")
        })
        .collect();
    let batch_bytes = (log_bytes / (PARTITIONS as u64 * TAIL_FRACTION)).min(MAX_BATCH_BYTES);
    let mut payload = vec![0u8; usize::try_from(batch_bytes).expect("a batch fits in memory")];
    StdRng::seed_from_u64(PAYLOAD_SEED).fill_bytes(&mut payload);
    let payload = Bytes::from(payload);
    let batches = log_bytes / batch_bytes;
    let tail_batches = tail_bytes / batch_bytes;
    let mut progress = Progress::new(batches * batch_bytes);
    for i in 0..batches {
        if i == batches - tail_batches {
            wal.sync_all().expect("sync the log");
            wal.checkpoint().expect("write the checkpoint");
        }
        let partition = &partitions[i as usize % PARTITIONS];
        let batch = Batch::new(payload.clone(), 1, i64::try_from(i).expect("few batches"));
        partition.append(batch).expect("append to the WAL");
        progress.advance(batch_bytes);
    }
    wal.sync_all().expect("sync the log");
    progress.finish();
    drop(partitions);
    // A crash after the tail was synced: no close, so no final checkpoint.
    drop(wal);
    let frame_len = FRAME_HEADER_LEN as u64 + batch_bytes;
    Built {
        log_bytes: batches * batch_bytes,
        tail_bytes: tail_batches * batch_bytes,
        frame_bytes: batches * frame_len,
        tail_frame_bytes: tail_batches * frame_len,
        frames: batches,
        tail_frames: tail_batches,
        preallocate_bytes: config.preallocate_bytes,
        segment_files: segment_files(dir).len(),
        build_secs: started.elapsed().as_secs_f64(),
    }
}

/// Progress of the build on stderr, every few seconds.
struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    last_shown: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        eprintln!(
            "building a log of {:.0} MiB over {PARTITIONS} partitions",
            mib(total)
        );
        let now = Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            last_shown: now,
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.last_shown.elapsed() >= PROGRESS_EVERY {
            self.last_shown = Instant::now();
            self.show();
        }
    }

    fn show(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "  {:>6.0} / {:.0} MiB ({:>3.0}%), {:.0} MB/s",
            mib(self.done),
            mib(self.total),
            self.done as f64 * 100.0 / self.total as f64,
            self.done as f64 / secs / 1e6
        );
    }

    fn finish(&self) {
        self.show();
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let partitions = dir.join("partitions");
    let mut files = Vec::new();
    for partition in fs::read_dir(&partitions).expect("list the partitions") {
        let partition = partition.expect("read a partition entry").path();
        for file in fs::read_dir(&partition).expect("list a partition") {
            let path = file.expect("read a file entry").path();
            if path.to_string_lossy().ends_with(SEGMENT_SUFFIX) {
                files.push(path);
            }
        }
    }
    files
}

fn set_checkpoint(dir: &Path, contents: Option<&[u8]>) {
    let path = dir.join("checkpoint");
    match contents {
        Some(bytes) => fs::write(&path, bytes).expect("put the checkpoint back"),
        None => {
            if path.exists() {
                fs::remove_file(&path).expect("remove the checkpoint");
            }
        }
    }
}

/// Reopens the directory, from a cold page cache if `cold` (and the kernel lets us).
fn reopen(dir: &Path, config: &WalConfig, mode: Mode, built: &Built, cold: bool) -> Reopen {
    let cache_dropped = cold && drop_page_cache();
    let io_before = ProcIo::now();
    let started = Instant::now();
    let wal = WalManager::open(dir, config.clone()).expect("reopen the WAL");
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let io_after = ProcIo::now();
    let report = wal.recovery_report();
    assert_eq!(
        report.used_checkpoint,
        mode == Mode::Checkpoint,
        "recovery used the checkpoint exactly when it was there"
    );
    let stats = &report.stats;
    match mode {
        // The frame counts are exact; the bytes read are not: the scan reads in chunks, re-reads a frame
        // a chunk cut in two, and reads into the zero-filled preallocated space after the last frame of a
        // segment (up to one chunk) to find where the data ends.
        Mode::Checkpoint => {
            assert_eq!(
                stats.frames_scanned, built.tail_frames,
                "with the checkpoint, recovery validates the tail's frames and no others"
            );
            assert!(stats.bytes_scanned >= built.tail_frame_bytes);
        }
        Mode::NoCheckpoint => {
            assert_eq!(
                stats.frames_scanned, built.frames,
                "without the checkpoint, recovery validates every frame"
            );
            assert!(stats.bytes_scanned >= built.frame_bytes);
        }
    }
    let r = Reopen {
        open_ms,
        bytes_scanned: stats.bytes_scanned,
        segments: stats.segments,
        frames_scanned: stats.frames_scanned,
        disk_read_bytes: io_after.read_bytes - io_before.read_bytes,
        read_call_bytes: io_after.rchar - io_before.rchar,
        cache_dropped,
    };
    // No close: a close writes a checkpoint, and each round must find the directory as the build left it.
    drop(wal);
    r
}

/// Writes back dirty pages, then asks the kernel to drop clean ones. Returns whether it could.
fn drop_page_cache() -> bool {
    let synced = Command::new("sync").status().is_ok_and(|s| s.success());
    let dropped = fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .and_then(|mut f| f.write_all(b"3\n"));
    synced && dropped.is_ok()
}

/// This process's I/O counters from `/proc/self/io`.
struct ProcIo {
    /// Bytes passed to read-like system calls, page cache hits included.
    rchar: u64,
    /// Bytes fetched from the storage layer.
    read_bytes: u64,
}

impl ProcIo {
    fn now() -> Self {
        let text = fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            rchar: field("rchar:"),
            read_bytes: field("read_bytes:"),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn report(quick: bool, rounds: usize, built: &Built, runs: &[(Mode, Reopen)]) {
    let of =
        |mode: Mode| -> Vec<Reopen> { runs.iter().filter(|(m, _)| *m == mode).map(|(_, r)| *r).collect() };
    let med = |rs: &[Reopen], f: fn(&Reopen) -> f64| median(rs.iter().map(f).collect());
    let cache_dropped = runs.iter().all(|(_, r)| r.cache_dropped);
    println!();
    println!(
        "recovery: {:.0} MiB of log in {} segment files over {PARTITIONS} partitions, tail after the \
         checkpoint {:.1} MiB (built in {:.1} s)",
        mib(built.log_bytes),
        built.segment_files,
        mib(built.tail_bytes),
        built.build_secs
    );
    println!(
        "median of {rounds} round(s); page cache {}",
        if cache_dropped {
            "dropped before every reopen"
        } else {
            "NOT dropped (a quick run does not; otherwise it needs root): reads may come from memory"
        }
    );
    println!(
        "  {:<16} {:>10} {:>13} {:>9} {:>11} {:>15} {:>16}",
        "reopen", "open ms", "scanned MiB", "segments", "frames", "disk read MiB", "read calls MiB"
    );
    let mut json_modes = Vec::new();
    let mut open_ms = Vec::new();
    for mode in [Mode::Checkpoint, Mode::NoCheckpoint] {
        let rs = of(mode);
        let row = [
            med(&rs, |r| r.open_ms),
            med(&rs, |r| r.bytes_scanned as f64),
            med(&rs, |r| r.segments as f64),
            med(&rs, |r| r.frames_scanned as f64),
            med(&rs, |r| r.disk_read_bytes as f64),
            med(&rs, |r| r.read_call_bytes as f64),
        ];
        println!(
            "  {:<16} {:>10.1} {:>13.1} {:>9.0} {:>11.0} {:>15.1} {:>16.1}",
            mode.label(),
            row[0],
            row[1] / f64::from(1u32 << 20),
            row[2],
            row[3],
            row[4] / f64::from(1u32 << 20),
            row[5] / f64::from(1u32 << 20)
        );
        open_ms.push(row[0]);
        let per_round: Vec<String> = rs.iter().map(reopen_json).collect();
        json_modes.push(format!(
            "  \"{}\": {{ \"open_ms\": {}, \"bytes_scanned\": {}, \"segments\": {}, \"frames_scanned\": {}, \
             \"disk_read_bytes\": {}, \"read_call_bytes\": {},\n    \"rounds\": [\n      {}\n    ] }}",
            mode.json_key(),
            json_number(row[0]),
            json_number(row[1]),
            json_number(row[2]),
            json_number(row[3]),
            json_number(row[4]),
            json_number(row[5]),
            per_round.join(",\n      ")
        ));
    }
    let speedup = open_ms[1] / open_ms[0];
    println!("  no checkpoint / with checkpoint, open time: {speedup:.1}x");
    // "Only the tail": its frames, plus what reading in chunks costs (a chunk's worth per partition and
    // re-reading frames a chunk cut in two).
    let scanned = med(&of(Mode::Checkpoint), |r| r.bytes_scanned as f64);
    let allowance = built.tail_frame_bytes as f64 * 1.1 + (PARTITIONS as u64 * SCAN_CHUNK_BYTES) as f64;
    let tail_only = scanned <= allowance;
    println!(
        "  target: with the checkpoint, recovery reads only the tail: {:.1} MiB read for {:.1} MiB of tail \
         frames (preallocate_bytes {} MiB): {}",
        scanned / f64::from(1u32 << 20),
        mib(built.tail_frame_bytes),
        built.preallocate_bytes >> 20,
        if tail_only { "MET" } else { "MISSED" }
    );
    let json = format!(
        "{{\n  \"bench\": \"recovery\",\n  \"quick\": {quick},\n  \"rounds\": {rounds},\n  \
         \"log_bytes\": {},\n  \"tail_bytes\": {},\n  \"frame_bytes\": {},\n  \
         \"tail_frame_bytes\": {},\n  \"segment_files\": {},\n  \"partitions\": {PARTITIONS},\n  \
         \"preallocate_bytes\": {},\n  \"reads_only_the_tail\": {tail_only},\n  \
         \"page_cache_dropped\": {cache_dropped},\n  \
         \"open_time_ratio_no_checkpoint_vs_checkpoint\": {},\n{}\n}}\n",
        built.log_bytes,
        built.tail_bytes,
        built.frame_bytes,
        built.tail_frame_bytes,
        built.segment_files,
        built.preallocate_bytes,
        json_number(speedup),
        json_modes.join(",\n")
    );
    common::write_results("recovery", &json);
}

fn reopen_json(r: &Reopen) -> String {
    format!(
        "{{ \"open_ms\": {}, \"bytes_scanned\": {}, \"segments\": {}, \"frames_scanned\": {}, \
         \"disk_read_bytes\": {}, \"read_call_bytes\": {}, \"page_cache_dropped\": {} }}",
        json_number(r.open_ms),
        r.bytes_scanned,
        r.segments,
        r.frames_scanned,
        r.disk_read_bytes,
        r.read_call_bytes,
        r.cache_dropped
    )
}
