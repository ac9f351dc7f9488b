//! Durable appends: chronik-wal against the `okaywal` crate and a raw `pwrite` + `fdatasync` baseline, in
//! the same run.
//!
//! Each scenario (batch size, writer threads, partitions) runs every contender for several rounds of a
//! fixed duration. Every run gets a fresh directory, removed afterwards, and the order of the contenders
//! rotates between rounds so that drift (page cache, disk firmware, a noisy neighbour) falls on all.
//! The WAL runs twice, over the std I/O backend and over io_uring (skipped where the kernel refuses it);
//! the io_uring/std ratios say which backend `io_backend = auto` should prefer.
//! The tables report the median of the rounds; the ratios are medians of the per-round ratios, the runs of
//! one round being close in time.
//!
//! Contenders:
//! - chronik-wal, `SyncPolicy::Always`: every append returns after the fdatasync of its group. It runs with
//!   the WAL's default `preallocate_bytes` (`CHRONIK_BENCH_PREALLOC_BYTES` overrides it). Before the timed
//!   run each partition gets half that much of unsynced appends and the preparer gets ahead (untimed), so
//!   the run sees the steady state of a WAL that has been running, not a fresh segment's first stretch.
//! - okaywal (see `append/okaywal.rs`): each append is one entry committed (fdatasynced) before it returns;
//!   concurrent writers share its group commit. One instance per partition, as a log per partition is what
//!   chronik keeps; with 16 writers over 8 partitions that is 8 instances of 2 writers each. Each instance
//!   first commits 4 MiB untimed, so that the run finds it recycling checkpointed segments, its steady
//!   state.
//! - The raw baseline, the floor a durable log on this disk can reach: one file per partition, written by
//!   `pwrite` at the end of its data and made durable by `fdatasync`. With one writer per partition it is
//!   exactly that; with several it groups concurrent appends behind one leader, as the WAL does, so that
//!   both pay one fdatasync per group. It runs twice: into a file that grows with every write, and into a
//!   file zero-filled and fsynced ahead before the timed run ("prealloc"), which is what the WAL's
//!   `preallocate_bytes` prepares in the background. A prealloc run stops when its prepared space is full
//!   (it says so) and its rate is over the time it ran.
//!
//! Throughput counts payload bytes only (MB = 10^6 bytes), so each log's own headers are part of its cost,
//! not of its credit. After each run the bench checks that the log holds exactly the appends it
//! acknowledged (the WAL's high watermarks, okaywal's entry ids, the baseline's byte counts and file
//! lengths) and panics if not: a fast log that loses appends is a bug, not a result.
//!
//! Allocations: a counting global allocator counts every allocation of the process during the timed part
//! of each run (all threads, including each log's background threads and the bench's latency buffers,
//! reserved up front) and divides by the appends. A last section measures the allocations of the WAL's read
//! path (`PartitionWal::read`).
//!
//! Knobs (environment):
//! - `CHRONIK_BENCH_QUICK=1`: one round of 0.3 s per contender, a smoke run for CI.
//! - `CHRONIK_BENCH_ROUNDS` (default 3), `CHRONIK_BENCH_SECS` (per contender per round, default 3).
//! - `CHRONIK_BENCH_DIR`: where the runs' directories go (default `target/bench-tmp` in the workspace).
//! - `CHRONIK_BENCH_SCENARIOS`: only these scenarios, by number from 1 (e.g. `2,4`).
//! - `CHRONIK_BENCH_PREALLOC_BYTES`: the WAL's `preallocate_bytes` (default: the WAL's default; 0 is off).
//!
//! Without `--bench` on the command line (as under `cargo test --benches`) it runs in quick mode, the way
//! criterion benches do. Results also go to `target/bench-results/append.json`.

mod common;
#[path = "append/okaywal.rs"]
mod okaywal;
#[path = "append/raw.rs"]
mod raw;
#[path = "append/reads.rs"]
mod reads;
#[path = "append/report.rs"]
mod report;

use std::{
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chronik_wal::{Batch, Durability, IoBackend, SyncPolicy, TopicPartition, WalConfig, WalManager};
use common::{median, percentile, AllocCount, CountingAlloc};
use rand::{rngs::StdRng, RngCore, SeedableRng};

use crate::{
    okaywal::OkayWal,
    raw::{RawFile, RawGroupCommit},
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const BATCH_TIMESTAMP_MS: i64 = 1_700_000_000_000;
const PAYLOAD_SEED: u64 = 0x0c4e_0b1c;
/// Warm-up appends (to reach a steady state before a timed run) are this large.
const WARM_UP_BATCH_BYTES: usize = 64 << 10;
/// okaywal's warm-up: a few of its default segments (a checkpoint every 768 KiB).
const OKAYWAL_WARM_UP_BYTES: u64 = 4 << 20;
/// How often the timer checks whether every writer has stopped early.
const STOP_POLL: Duration = Duration::from_millis(10);
/// How long a run waits, untimed, for the WAL's preparer to get ahead before it starts.
const PREPARER_TIMEOUT: Duration = Duration::from_secs(60);
/// Latency samples reserved per writer thread up front, so the timed loop rarely reallocates.
const LATENCY_SAMPLES_RESERVED: usize = 1 << 16;

/// One workload.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    batch_bytes: usize,
    writers: usize,
    partitions: usize,
    /// The appends/s ratios chronik-wal (std) must reach against other contenders.
    targets: &'static [Target],
}

/// chronik-wal (std) appends/s >= `min_ratio` x those of `against`.
#[derive(Debug, Clone, Copy)]
struct Target {
    against: Contender,
    min_ratio: f64,
}

impl Scenario {
    fn writers_per_partition(&self) -> usize {
        self.writers / self.partitions
    }
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "1 KiB x 1 writer, 1 partition",
        batch_bytes: 1 << 10,
        writers: 1,
        partitions: 1,
        targets: &[
            Target {
                against: Contender::OkayWal,
                min_ratio: 1.0,
            },
            Target {
                against: Contender::Raw,
                min_ratio: 0.9,
            },
        ],
    },
    Scenario {
        name: "1 KiB x 16 writers, 1 partition",
        batch_bytes: 1 << 10,
        writers: 16,
        partitions: 1,
        targets: &[
            Target {
                against: Contender::OkayWal,
                min_ratio: 1.2,
            },
            Target {
                against: Contender::Raw,
                min_ratio: 0.9,
            },
        ],
    },
    Scenario {
        name: "1 KiB x 16 writers, 8 partitions",
        batch_bytes: 1 << 10,
        writers: 16,
        partitions: 8,
        targets: &[],
    },
    Scenario {
        name: "64 KiB x 1 writer, 1 partition",
        batch_bytes: 64 << 10,
        writers: 1,
        partitions: 1,
        targets: &[
            Target {
                against: Contender::OkayWal,
                min_ratio: 1.2,
            },
            Target {
                against: Contender::Raw,
                min_ratio: 0.9,
            },
            Target {
                against: Contender::RawPrealloc,
                min_ratio: 0.9,
            },
        ],
    },
];

/// Space prepared for the raw baseline per second of a run, over all its files: at least this much, and
/// room for this many appends per second: about the fastest runs seen on the disk here (1 KiB x 16
/// writers: 35,000 appends/s; 64 KiB: 2,500-4,600 appends/s). A run that fills it stops early and says so.
const RAW_PREPARED_BYTES_PER_S: u64 = 48 << 20;
const RAW_PREPARED_APPENDS_PER_S: u64 = 4096;
const RAW_PREPARED_BYTES_MIN: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// The WAL over the std backend.
    Chronik,
    /// The WAL over the io_uring backend.
    ChronikUring,
    OkayWal,
    /// Raw `pwrite` + `fdatasync` into a growing file.
    Raw,
    /// The same into a file zero-filled and synced ahead.
    RawPrealloc,
}

impl Contender {
    /// In table order; also the order of the first round, rotated in later ones.
    const ALL: [Contender; 5] = [
        Contender::Chronik,
        Contender::ChronikUring,
        Contender::OkayWal,
        Contender::Raw,
        Contender::RawPrealloc,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self, scenario: &Scenario) -> &'static str {
        match self {
            Contender::Chronik => "chronik-wal (std)",
            Contender::ChronikUring => "chronik-wal (io_uring)",
            Contender::OkayWal => "okaywal",
            Contender::Raw if scenario.writers_per_partition() > 1 => "raw group commit",
            Contender::Raw => "raw pwrite+fdatasync",
            Contender::RawPrealloc if scenario.writers_per_partition() > 1 => "raw group (prealloc)",
            Contender::RawPrealloc => "raw pwrite (prealloc)",
        }
    }

    fn json_key(self) -> &'static str {
        match self {
            Contender::Chronik => "chronik",
            Contender::ChronikUring => "chronik_io_uring",
            Contender::OkayWal => "okaywal",
            Contender::Raw => "raw",
            Contender::RawPrealloc => "raw_prealloc",
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    fs::create_dir_all(&settings.tmp_root).expect("create the bench directory");
    if let Err(e) = chronik_wal::io::select(IoBackend::IoUring) {
        eprintln!("append bench: skipping the io_uring contender: {e}");
    }
    eprintln!(
        "append bench: {} round(s) x {:.1} s per contender, runs under {}",
        settings.rounds,
        settings.run_for.as_secs_f64(),
        settings.tmp_root.display()
    );
    let results: Vec<ScenarioResult> = SCENARIOS
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            settings
                .scenarios
                .as_ref()
                .is_none_or(|only| only.contains(&(i + 1)))
        })
        .map(|(i, scenario)| {
            let result = run_scenario(&settings, i + 1, scenario);
            report::print_table(i + 1, &settings, &result);
            result
        })
        .collect();
    let reads = reads::read_path_allocations(&settings);
    report::print_summary(&results);
    report::print_read_allocations(&reads);
    report::write_json(&settings, &results, &reads);
}

// ---------------------------------------------------------------------------------------------------------
// Settings

struct Settings {
    rounds: usize,
    run_for: Duration,
    quick: bool,
    tmp_root: std::path::PathBuf,
    /// Scenario numbers to run (from 1), or all.
    scenarios: Option<Vec<usize>>,
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick_mode();
        let (default_rounds, default_secs) = if quick { (1, 0.3) } else { (3, 3.0) };
        let rounds = common::env_parse("CHRONIK_BENCH_ROUNDS").unwrap_or(default_rounds);
        let secs: f64 = common::env_parse("CHRONIK_BENCH_SECS").unwrap_or(default_secs);
        assert!(rounds >= 1, "CHRONIK_BENCH_ROUNDS must be at least 1");
        assert!(
            secs.is_finite() && secs > 0.0,
            "CHRONIK_BENCH_SECS must be positive"
        );
        Self {
            rounds,
            run_for: Duration::from_secs_f64(secs),
            quick,
            tmp_root: common::tmp_root(),
            scenarios: std::env::var("CHRONIK_BENCH_SCENARIOS").ok().map(|list| {
                list.split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .expect("CHRONIK_BENCH_SCENARIOS: scenario numbers, e.g. 2,4")
                    })
                    .collect()
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Running

/// What one contender achieved in one run (or a median, or a ratio, of such).
#[derive(Debug, Clone, Copy)]
struct Measurement {
    appends_per_s: f64,
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    allocs_per_append: f64,
    alloc_bytes_per_append: f64,
}

struct ScenarioResult {
    scenario: Scenario,
    /// Indexed by [`Contender::index`], then by round; empty for a contender that did not run.
    runs: [Vec<Measurement>; Contender::ALL.len()],
}

impl ScenarioResult {
    fn of(&self, contender: Contender) -> &[Measurement] {
        &self.runs[contender.index()]
    }
}

fn run_scenario(settings: &Settings, number: usize, scenario: &Scenario) -> ScenarioResult {
    let payload = random_payload(scenario.batch_bytes);
    let mut result = ScenarioResult {
        scenario: *scenario,
        runs: Default::default(),
    };
    let with_uring = chronik_wal::io::select(IoBackend::IoUring).is_ok();
    for round in 0..settings.rounds {
        let mut order = Contender::ALL;
        order.rotate_left(round % Contender::ALL.len());
        for contender in order {
            if contender == Contender::ChronikUring && !with_uring {
                continue;
            }
            let dir = tempfile::Builder::new()
                .prefix(&format!("append-s{number}-r{round}-"))
                .tempdir_in(&settings.tmp_root)
                .expect("create a run directory");
            let (dir, run_for) = (dir.path(), settings.run_for);
            let m = match contender {
                Contender::Chronik => run_chronik(scenario, &payload, dir, run_for, IoBackend::Std),
                Contender::ChronikUring => run_chronik(scenario, &payload, dir, run_for, IoBackend::IoUring),
                Contender::OkayWal => run_okaywal(scenario, &payload, dir, run_for),
                Contender::Raw => run_raw(scenario, &payload, dir, run_for, 0),
                Contender::RawPrealloc => {
                    let per_s = RAW_PREPARED_BYTES_PER_S
                        .max(RAW_PREPARED_APPENDS_PER_S * scenario.batch_bytes as u64);
                    let prepared = (per_s as f64 * run_for.as_secs_f64()) as u64 / scenario.partitions as u64;
                    let prepared = prepared.max(RAW_PREPARED_BYTES_MIN);
                    run_raw(scenario, &payload, dir, run_for, prepared)
                }
            };
            eprintln!(
                "[{number}/{} {}] round {}/{} {:<22} {:>8.0} appends/s {:>7.1} MB/s  p50 {:>6.0} us  \
                 p99 {:>6.0} us  p99.9 {:>6.0} us  {:>5.2} allocs/append",
                SCENARIOS.len(),
                scenario.name,
                round + 1,
                settings.rounds,
                contender.label(scenario),
                m.appends_per_s,
                m.mb_per_s,
                m.p50_us,
                m.p99_us,
                m.p999_us,
                m.allocs_per_append
            );
            result.runs[contender.index()].push(m);
        }
    }
    result
}

/// Bytes that do not compress to nothing, the same for every run of a batch size.
fn random_payload(len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    StdRng::seed_from_u64(PAYLOAD_SEED).fill_bytes(&mut buf);
    Bytes::from(buf)
}

fn run_chronik(
    scenario: &Scenario,
    payload: &Bytes,
    dir: &Path,
    run_for: Duration,
    io_backend: IoBackend,
) -> Measurement {
    let preallocate_bytes =
        common::env_parse("CHRONIK_BENCH_PREALLOC_BYTES").unwrap_or(WalConfig::default().preallocate_bytes);
    let config = WalConfig {
        sync_policy: SyncPolicy::Always,
        io_backend,
        preallocate_bytes,
        ..WalConfig::default()
    };
    let wal = WalManager::open(dir, config).expect("open the WAL");
    assert_eq!(
        wal.io_backend(),
        io_backend.as_str(),
        "the WAL runs the backend asked for"
    );
    let partitions: Vec<_> = (0..scenario.partitions)
        .map(|p| {
            let tp = TopicPartition::new("bench", i32::try_from(p).expect("few partitions"));
            wal.create_partition(&tp).expect("create a WAL partition")
        })
        .collect();
    // Steady state, as prepared space is for a WAL that has been running: past the stretch a fresh
    // segment grows into before its first prepared range, with the preparer ahead (untimed).
    // The warm-up appends the scenario's own batches: the WAL prepares space only for small groups.
    let warm_up_batch = Batch::new(payload.clone(), 1, BATCH_TIMESTAMP_MS);
    let warm_up_batches = (preallocate_bytes / 2).div_ceil(payload.len() as u64);
    for p in &partitions {
        for _ in 0..warm_up_batches {
            p.append_with(warm_up_batch.clone(), Durability::Written)
                .expect("warm-up append");
        }
        p.sync().expect("sync the warm-up appends");
    }
    for p in &partitions {
        if p.preallocating() {
            let want = warm_up_batches * payload.len() as u64 + preallocate_bytes / 2;
            assert!(
                p.wait_prepared(want, PREPARER_TIMEOUT),
                "the WAL's preparer did not prepare {want} bytes within {PREPARER_TIMEOUT:?}"
            );
        }
    }
    let warm_up_offsets: i64 = partitions.iter().map(|p| p.high_watermark()).sum();
    let writers = (0..scenario.writers).map(|writer| {
        let partition = Arc::clone(&partitions[writer % scenario.partitions]);
        let payload = payload.clone();
        move || {
            let batch = Batch::new(payload.clone(), 1, BATCH_TIMESTAMP_MS);
            partition.append(batch).expect("durable WAL append");
            true
        }
    });
    let run = drive(scenario, run_for, writers.collect());
    // Every acknowledged append took one offset: anything else is a WAL bug, not a slow run.
    let offsets: i64 = partitions.iter().map(|p| p.high_watermark()).sum::<i64>() - warm_up_offsets;
    assert_eq!(
        u64::try_from(offsets).ok(),
        Some(run.appends),
        "chronik-wal: the high watermarks do not add up to the acknowledged appends"
    );
    drop(partitions);
    wal.close().expect("close the WAL");
    run.measurement
}

fn run_okaywal(scenario: &Scenario, payload: &[u8], dir: &Path, run_for: Duration) -> Measurement {
    let mut logs: Vec<_> = (0..scenario.partitions)
        .map(|p| OkayWal::open(&dir.join(format!("partition-{p}"))))
        .collect();
    // Steady state, untimed: several segments written, so that checkpointed files are being recycled.
    let warm_up = random_payload(WARM_UP_BATCH_BYTES);
    thread::scope(|s| {
        for log in &mut logs {
            let warm_up = &warm_up;
            s.spawn(move || log.warm_up(warm_up, OKAYWAL_WARM_UP_BYTES));
        }
    });
    let writers = (0..scenario.writers).map(|writer| {
        let log = &logs[writer % scenario.partitions];
        move || {
            log.append_durable(payload).expect("okaywal commit");
            true
        }
    });
    let run = drive(scenario, run_for, writers.collect());
    let entries: u64 = logs.iter().map(OkayWal::timed_entries).sum();
    assert_eq!(
        entries, run.appends,
        "okaywal: the entry ids do not add up to the acknowledged appends"
    );
    for log in logs {
        log.shutdown();
    }
    run.measurement
}

/// The raw baseline, into files prepared for `prepared_bytes` each (0: growing files).
fn run_raw(
    scenario: &Scenario,
    payload: &[u8],
    dir: &Path,
    run_for: Duration,
    prepared_bytes: u64,
) -> Measurement {
    let path = |p: usize| dir.join(format!("partition-{p}.log"));
    let (run, appended): (Run, Vec<u64>) = if scenario.writers_per_partition() == 1 {
        // Each writer owns its partition's file: no lock at all.
        let mut files: Vec<_> = (0..scenario.partitions)
            .map(|p| RawFile::create(&path(p), prepared_bytes))
            .collect();
        let writers = files
            .iter_mut()
            .map(|file| move || file.append_durable(payload).expect("raw pwrite + fdatasync"));
        let run = drive(scenario, run_for, writers.collect());
        (run, files.iter().map(RawFile::appended_bytes).collect())
    } else {
        let logs: Vec<_> = (0..scenario.partitions)
            .map(|p| RawGroupCommit::create(&path(p), prepared_bytes))
            .collect();
        let writers = (0..scenario.writers).map(|writer| {
            let log = &logs[writer % scenario.partitions];
            move || log.append_durable(payload).expect("raw group commit")
        });
        let run = drive(scenario, run_for, writers.collect());
        (run, logs.iter().map(RawGroupCommit::appended_bytes).collect())
    };
    let total: u64 = appended.iter().sum();
    assert_eq!(
        total,
        run.appends * scenario.batch_bytes as u64,
        "raw baseline: the bytes written are not the acknowledged appends"
    );
    if prepared_bytes == 0 {
        assert_eq!(
            bytes_in(dir),
            total,
            "raw baseline: the files do not hold every append"
        );
    } else {
        assert!(
            bytes_in(dir) >= total,
            "raw baseline: the files do not hold every append"
        );
        if run.ran_out {
            eprintln!(
                "note: the prealloc raw run filled its {} MiB of prepared space per file in {:.1} s; \
                 its rate is over that time",
                prepared_bytes >> 20,
                run.elapsed.as_secs_f64()
            );
        }
    }
    run.measurement
}

/// Total length of the files in `dir`.
fn bytes_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("list a run directory")
        .map(|entry| entry.and_then(|e| e.metadata()).expect("stat a file").len())
        .sum()
}

/// What the writer threads of one run did.
struct Run {
    appends: u64,
    /// Some writer stopped because its prepared space ran out.
    ran_out: bool,
    elapsed: Duration,
    measurement: Measurement,
}

/// Runs each writer on its own thread for `run_for`, calling it in a loop and timing every call. The
/// writers are built beforehand, so that setup (opening files, cloning handles) is not timed. A writer
/// returns whether it appended; one that did not (out of prepared space) stops, and the run ends when the
/// time is up or every writer has stopped.
fn drive<W: FnMut() -> bool + Send>(scenario: &Scenario, run_for: Duration, writers: Vec<W>) -> Run {
    let stop = AtomicBool::new(false);
    let stopped_early = AtomicUsize::new(0);
    let writer_count = writers.len();
    let start_line = Barrier::new(writer_count + 1);
    let (per_thread, elapsed, allocs) = thread::scope(|s| {
        let handles: Vec<_> = writers
            .into_iter()
            .map(|mut append| {
                let (stop, stopped_early, start_line) = (&stop, &stopped_early, &start_line);
                s.spawn(move || {
                    let mut latencies_us = Vec::with_capacity(LATENCY_SAMPLES_RESERVED);
                    start_line.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        if !append() {
                            stopped_early.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        latencies_us.push(micros(started.elapsed()));
                    }
                    (latencies_us, Instant::now())
                })
            })
            .collect();
        let mut per_thread = Vec::with_capacity(handles.len());
        start_line.wait();
        let allocs_before = AllocCount::now();
        let started = Instant::now();
        // A timer, not synchronisation: it only decides when to raise the stop flag.
        while started.elapsed() < run_for && stopped_early.load(Ordering::Relaxed) < writer_count {
            thread::sleep(STOP_POLL.min(run_for.saturating_sub(started.elapsed())));
        }
        stop.store(true, Ordering::Relaxed);
        for handle in handles {
            per_thread.push(handle.join().expect("a writer thread panicked"));
        }
        let allocs_after = AllocCount::now();
        // Appends in flight at the stop signal are counted, so the clock runs until the last one ends.
        let last_end = per_thread.iter().map(|(_, end)| *end).max().unwrap_or(started);
        let latencies: Vec<Vec<u32>> = per_thread.into_iter().map(|(l, _)| l).collect();
        (latencies, last_end - started, (allocs_before, allocs_after))
    });
    let mut latencies_us: Vec<u32> = per_thread.into_iter().flatten().collect();
    latencies_us.sort_unstable();
    let appends = latencies_us.len() as u64;
    let (allocs_per_append, alloc_bytes_per_append) = allocs.1.per_op_since(allocs.0, appends);
    let secs = elapsed.as_secs_f64();
    let rate = appends as f64 / secs;
    Run {
        appends,
        ran_out: stopped_early.load(Ordering::Relaxed) > 0,
        elapsed,
        measurement: Measurement {
            appends_per_s: rate,
            mb_per_s: rate * scenario.batch_bytes as f64 / 1e6,
            p50_us: f64::from(percentile(&latencies_us, 50.0)),
            p99_us: f64::from(percentile(&latencies_us, 99.0)),
            p999_us: f64::from(percentile(&latencies_us, 99.9)),
            allocs_per_append,
            alloc_bytes_per_append,
        },
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------------------
// Statistics

/// The median of each metric over the rounds.
fn median_of(rounds: &[Measurement]) -> Measurement {
    let metric = |f: fn(&Measurement) -> f64| median(rounds.iter().map(f).collect());
    Measurement {
        appends_per_s: metric(|m| m.appends_per_s),
        mb_per_s: metric(|m| m.mb_per_s),
        p50_us: metric(|m| m.p50_us),
        p99_us: metric(|m| m.p99_us),
        p999_us: metric(|m| m.p999_us),
        allocs_per_append: metric(|m| m.allocs_per_append),
        alloc_bytes_per_append: metric(|m| m.alloc_bytes_per_append),
    }
}

/// The median over rounds of a/b for each metric, pairing the runs of each round (NaN where either did
/// not run).
fn ratio_between(a: &[Measurement], b: &[Measurement]) -> Measurement {
    let ratio = |f: fn(&Measurement) -> f64| {
        let per_round = a.iter().zip(b).map(|(x, y)| f(x) / f(y));
        median(per_round.collect())
    };
    Measurement {
        appends_per_s: ratio(|m| m.appends_per_s),
        mb_per_s: ratio(|m| m.mb_per_s),
        p50_us: ratio(|m| m.p50_us),
        p99_us: ratio(|m| m.p99_us),
        p999_us: ratio(|m| m.p999_us),
        allocs_per_append: f64::NAN,
        alloc_bytes_per_append: f64::NAN,
    }
}

/// The ratio rows of a scenario: (label, JSON key, numerator, denominator).
const RATIOS: [(&str, &str, Contender, Contender); 4] = [
    (
        "chronik/okaywal",
        "chronik_vs_okaywal",
        Contender::Chronik,
        Contender::OkayWal,
    ),
    (
        "chronik/raw",
        "chronik_vs_raw",
        Contender::Chronik,
        Contender::Raw,
    ),
    (
        "chronik/raw prealloc",
        "chronik_vs_raw_prealloc",
        Contender::Chronik,
        Contender::RawPrealloc,
    ),
    (
        "io_uring/std",
        "io_uring_vs_std",
        Contender::ChronikUring,
        Contender::Chronik,
    ),
];

impl ScenarioResult {
    fn ratio(&self, a: Contender, b: Contender) -> Measurement {
        ratio_between(self.of(a), self.of(b))
    }

    /// Each target with the measured appends/s ratio and whether it is met.
    fn targets(&self) -> Vec<(Target, f64, bool)> {
        self.scenario
            .targets
            .iter()
            .map(|t| {
                let r = self.ratio(Contender::Chronik, t.against).appends_per_s;
                (*t, r, r >= t.min_ratio)
            })
            .collect()
    }
}
