//! Durable appends: chronik-wal against a raw `pwrite` + `fdatasync` baseline, in the same run.
//!
//! Each scenario (batch size, writer threads, partitions) runs every contender for several rounds of a
//! fixed duration. Every run gets a fresh directory, removed afterwards, and the order of the contenders
//! rotates between rounds so that drift (page cache, disk firmware, a noisy neighbour) falls on all.
//! The WAL runs twice, over the std I/O backend and over io_uring (skipped where the kernel refuses it);
//! the io_uring/std ratios say which backend `io_backend = auto` should prefer.
//! The tables report the median of the rounds; the chronik/raw ratios are medians of the per-round ratios,
//! each round's two runs being adjacent in time.
//!
//! The baseline is the floor a durable log on this disk can reach: one file per partition, grown by
//! `pwrite` at its end and made durable by `fdatasync`. With one writer per partition it is exactly that;
//! with several it groups concurrent appends behind one leader, as the WAL does, so that both pay one
//! fdatasync per group. Throughput counts payload bytes only (MB = 10^6 bytes), so the WAL's frame headers
//! are part of its cost, not of its credit. After each run the bench checks that the log holds exactly the
//! appends it acknowledged (the WAL's high watermarks, the baseline's file lengths) and panics if not: a
//! fast log that loses appends is a bug, not a result.
//!
//! Knobs (environment):
//! - `CHRONIK_BENCH_QUICK=1`: one round of 0.3 s per contender, a smoke run for CI.
//! - `CHRONIK_BENCH_ROUNDS` (default 3), `CHRONIK_BENCH_SECS` (per contender per round, default 3).
//! - `CHRONIK_BENCH_DIR`: where the runs' directories go (default `target/bench-tmp` in the workspace).
//! - `CHRONIK_BENCH_PREALLOC_BYTES`: the WAL's `preallocate_bytes` (default: the WAL's default; 0 is off).
//!
//! Without `--bench` on the command line (as under `cargo test --benches`) it runs in quick mode, the way
//! criterion benches do. Results also go to `target/bench-results/append.json`.

use std::{
    env,
    fs::{self, File, OpenOptions},
    io, mem,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chronik_wal::{Batch, IoBackend, SyncPolicy, TopicPartition, WalConfig, WalManager};
use parking_lot::{Condvar, Mutex, MutexGuard};
use rand::{rngs::StdRng, RngCore, SeedableRng};

const BATCH_TIMESTAMP_MS: i64 = 1_700_000_000_000;
const PAYLOAD_SEED: u64 = 0x0c4e_0b1c;
/// Latency samples reserved per writer thread up front, so the timed loop rarely reallocates.
const LATENCY_SAMPLES_RESERVED: usize = 1 << 16;

/// One workload.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    batch_bytes: usize,
    writers: usize,
    partitions: usize,
    /// The chronik/raw appends/s ratio the WAL must reach, if this scenario has a target.
    target_ratio: Option<f64>,
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
        target_ratio: Some(0.9),
    },
    Scenario {
        name: "1 KiB x 16 writers, 1 partition",
        batch_bytes: 1 << 10,
        writers: 16,
        partitions: 1,
        target_ratio: Some(0.9),
    },
    Scenario {
        name: "1 KiB x 16 writers, 8 partitions",
        batch_bytes: 1 << 10,
        writers: 16,
        partitions: 8,
        target_ratio: None,
    },
    Scenario {
        name: "64 KiB x 1 writer, 1 partition",
        batch_bytes: 64 << 10,
        writers: 1,
        partitions: 1,
        target_ratio: Some(0.9),
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// The WAL over the std backend.
    Chronik,
    /// The WAL over the io_uring backend.
    ChronikUring,
    Raw,
}

impl Contender {
    fn label(self, scenario: &Scenario) -> &'static str {
        match self {
            Contender::Chronik => "chronik-wal (std)",
            Contender::ChronikUring => "chronik-wal (io_uring)",
            Contender::Raw if scenario.writers_per_partition() > 1 => "raw group commit",
            Contender::Raw => "raw pwrite+fdatasync",
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
        .map(|(i, scenario)| {
            let result = run_scenario(&settings, i + 1, scenario);
            print_table(i + 1, &settings, &result);
            result
        })
        .collect();
    print_summary(&results);
    write_json(&settings, &results);
}

// ---------------------------------------------------------------------------------------------------------
// Settings

struct Settings {
    rounds: usize,
    run_for: Duration,
    quick: bool,
    tmp_root: PathBuf,
    results_path: PathBuf,
}

impl Settings {
    fn from_env() -> Self {
        let quick = env_flag("CHRONIK_BENCH_QUICK") || !env::args().any(|a| a == "--bench");
        let (default_rounds, default_secs) = if quick { (1, 0.3) } else { (3, 3.0) };
        let rounds = env_parse("CHRONIK_BENCH_ROUNDS").unwrap_or(default_rounds);
        let secs: f64 = env_parse("CHRONIK_BENCH_SECS").unwrap_or(default_secs);
        assert!(rounds >= 1, "CHRONIK_BENCH_ROUNDS must be at least 1");
        assert!(
            secs.is_finite() && secs > 0.0,
            "CHRONIK_BENCH_SECS must be positive"
        );
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("the crate lives two levels below the workspace root");
        let tmp_root = env::var_os("CHRONIK_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/bench-tmp"));
        Self {
            rounds,
            run_for: Duration::from_secs_f64(secs),
            quick,
            tmp_root,
            results_path: workspace.join("target/bench-results/append.json"),
        }
    }
}

fn env_flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = env::var(name).ok()?;
    let parsed = value.trim().parse();
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")))
}

// ---------------------------------------------------------------------------------------------------------
// Running

/// What one contender achieved in one run.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    appends_per_s: f64,
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

struct ScenarioResult {
    scenario: Scenario,
    /// Indexed by round.
    chronik: Vec<Measurement>,
    /// Empty where io_uring is unavailable.
    uring: Vec<Measurement>,
    raw: Vec<Measurement>,
}

fn run_scenario(settings: &Settings, number: usize, scenario: &Scenario) -> ScenarioResult {
    let payload = random_payload(scenario.batch_bytes);
    let mut result = ScenarioResult {
        scenario: *scenario,
        chronik: Vec::new(),
        uring: Vec::new(),
        raw: Vec::new(),
    };
    let with_uring = chronik_wal::io::select(IoBackend::IoUring).is_ok();
    for round in 0..settings.rounds {
        let mut order = [Contender::Chronik, Contender::ChronikUring, Contender::Raw];
        let contenders = order.len();
        order.rotate_left(round % contenders);
        for contender in order {
            if contender == Contender::ChronikUring && !with_uring {
                continue;
            }
            let dir = tempfile::Builder::new()
                .prefix(&format!("append-s{number}-r{round}-"))
                .tempdir_in(&settings.tmp_root)
                .expect("create a run directory");
            let m = match contender {
                Contender::Chronik => {
                    run_chronik(scenario, &payload, dir.path(), settings.run_for, IoBackend::Std)
                }
                Contender::ChronikUring => run_chronik(
                    scenario,
                    &payload,
                    dir.path(),
                    settings.run_for,
                    IoBackend::IoUring,
                ),
                Contender::Raw => run_raw(scenario, &payload, dir.path(), settings.run_for),
            };
            eprintln!(
                "[{number}/{} {}] round {}/{} {:<20} {:>9.0} appends/s {:>8.1} MB/s  p50 {:>6.0} us  p99 {:>6.0} us",
                SCENARIOS.len(),
                scenario.name,
                round + 1,
                settings.rounds,
                contender.label(scenario),
                m.appends_per_s,
                m.mb_per_s,
                m.p50_us,
                m.p99_us
            );
            match contender {
                Contender::Chronik => result.chronik.push(m),
                Contender::ChronikUring => result.uring.push(m),
                Contender::Raw => result.raw.push(m),
            }
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
    let config = WalConfig {
        sync_policy: SyncPolicy::Always,
        io_backend,
        preallocate_bytes: env_parse("CHRONIK_BENCH_PREALLOC_BYTES")
            .unwrap_or(WalConfig::default().preallocate_bytes),
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
    let writers = (0..scenario.writers).map(|writer| {
        let partition = Arc::clone(&partitions[writer % scenario.partitions]);
        let payload = payload.clone();
        move || {
            let batch = Batch::new(payload.clone(), 1, BATCH_TIMESTAMP_MS);
            partition.append(batch).expect("durable WAL append");
        }
    });
    let run = drive(scenario, run_for, writers.collect());
    // Every acknowledged append took one offset: anything else is a WAL bug, not a slow run.
    let offsets: i64 = partitions.iter().map(|p| p.high_watermark()).sum();
    assert_eq!(
        u64::try_from(offsets).ok(),
        Some(run.appends),
        "chronik-wal: the high watermarks do not add up to the acknowledged appends"
    );
    drop(partitions);
    wal.close().expect("close the WAL");
    run.measurement
}

fn run_raw(scenario: &Scenario, payload: &[u8], dir: &Path, run_for: Duration) -> Measurement {
    let path = |p: usize| dir.join(format!("partition-{p}.log"));
    let run = if scenario.writers_per_partition() == 1 {
        // Each writer owns its partition's file: no lock at all.
        let writers = (0..scenario.writers).map(|writer| {
            let mut file = RawFile::create(&path(writer));
            move || file.append_durable(payload).expect("raw pwrite + fdatasync")
        });
        drive(scenario, run_for, writers.collect())
    } else {
        let logs: Vec<_> = (0..scenario.partitions)
            .map(|p| RawGroupCommit::create(&path(p)))
            .collect();
        let writers = (0..scenario.writers).map(|writer| {
            let log = &logs[writer % scenario.partitions];
            move || log.append_durable(payload).expect("raw group commit")
        });
        drive(scenario, run_for, writers.collect())
    };
    assert_eq!(
        bytes_in(dir),
        run.appends * scenario.batch_bytes as u64,
        "raw baseline: the files do not hold every acknowledged append"
    );
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
    measurement: Measurement,
}

/// Runs each writer on its own thread for `run_for`, calling it in a loop and timing every call. The
/// writers are built beforehand, so that setup (opening files, cloning handles) is not timed.
fn drive<W: FnMut() + Send>(scenario: &Scenario, run_for: Duration, writers: Vec<W>) -> Run {
    let stop = AtomicBool::new(false);
    let start_line = Barrier::new(writers.len() + 1);
    let (mut latencies_us, elapsed) = thread::scope(|s| {
        let handles: Vec<_> = writers
            .into_iter()
            .map(|mut append| {
                let (stop, start_line) = (&stop, &start_line);
                s.spawn(move || {
                    let mut latencies_us = Vec::with_capacity(LATENCY_SAMPLES_RESERVED);
                    start_line.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        append();
                        latencies_us.push(micros(started.elapsed()));
                    }
                    latencies_us
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
        let latencies_us: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a writer thread panicked"))
            .collect();
        // Appends in flight at the stop signal are counted, so the clock runs until they finish.
        (latencies_us, started.elapsed())
    });
    latencies_us.sort_unstable();
    let appends = latencies_us.len() as f64;
    let secs = elapsed.as_secs_f64();
    Run {
        appends: latencies_us.len() as u64,
        measurement: Measurement {
            appends_per_s: appends / secs,
            mb_per_s: appends * scenario.batch_bytes as f64 / secs / 1e6,
            p50_us: f64::from(percentile(&latencies_us, 50.0)),
            p99_us: f64::from(percentile(&latencies_us, 99.0)),
        },
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------------------
// The raw baseline

fn create_file(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create a raw baseline file")
}

/// A file grown by `pwrite` at its end, each append made durable by `fdatasync`.
struct RawFile {
    file: File,
    len: u64,
}

impl RawFile {
    fn create(path: &Path) -> Self {
        Self {
            file: create_file(path),
            len: 0,
        }
    }

    fn append_durable(&mut self, buf: &[u8]) -> io::Result<()> {
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
struct RawGroupCommit {
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
    fn create(path: &Path) -> Self {
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
    fn append_durable(&self, payload: &[u8]) -> io::Result<()> {
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

// ---------------------------------------------------------------------------------------------------------
// Statistics

/// Nearest-rank percentile of sorted samples (0 when there are none).
fn percentile(sorted: &[u32], pct: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of each metric over the rounds.
fn median_of(rounds: &[Measurement]) -> Measurement {
    let metric = |f: fn(&Measurement) -> f64| median(rounds.iter().map(f).collect());
    Measurement {
        appends_per_s: metric(|m| m.appends_per_s),
        mb_per_s: metric(|m| m.mb_per_s),
        p50_us: metric(|m| m.p50_us),
        p99_us: metric(|m| m.p99_us),
    }
}

/// The median over rounds of chronik/raw for each metric, pairing the runs of each round.
fn ratio_of(result: &ScenarioResult) -> Measurement {
    ratio_between(&result.chronik, &result.raw)
}

/// The median over rounds of io_uring/std for the WAL (NaN where io_uring did not run).
fn uring_ratio_of(result: &ScenarioResult) -> Measurement {
    ratio_between(&result.uring, &result.chronik)
}

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
    }
}

impl ScenarioResult {
    fn target_met(&self) -> Option<bool> {
        let target = self.scenario.target_ratio?;
        Some(ratio_of(self).appends_per_s >= target)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

fn print_table(number: usize, settings: &Settings, result: &ScenarioResult) {
    let s = &result.scenario;
    println!();
    println!(
        "scenario {number}: {} (median of {} round(s) x {:.1} s; ratios are medians of per-round ratios)",
        s.name,
        settings.rounds,
        settings.run_for.as_secs_f64()
    );
    println!(
        "  {:<22} {:>11} {:>9} {:>9} {:>9}",
        "contender", "appends/s", "MB/s", "p50 us", "p99 us"
    );
    let mut rows = vec![(Contender::Chronik.label(s), median_of(&result.chronik))];
    if !result.uring.is_empty() {
        rows.push((Contender::ChronikUring.label(s), median_of(&result.uring)));
    }
    rows.push((Contender::Raw.label(s), median_of(&result.raw)));
    for (label, m) in rows {
        println!(
            "  {label:<22} {:>11.0} {:>9.1} {:>9.0} {:>9.0}",
            m.appends_per_s, m.mb_per_s, m.p50_us, m.p99_us
        );
    }
    let mut ratios = vec![("chronik/raw", ratio_of(result))];
    if !result.uring.is_empty() {
        ratios.push(("io_uring/std", uring_ratio_of(result)));
    }
    for (label, r) in ratios {
        println!(
            "  {label:<22} {:>10.2}x {:>8.2}x {:>8.2}x {:>8.2}x",
            r.appends_per_s, r.mb_per_s, r.p50_us, r.p99_us
        );
    }
}

fn print_summary(results: &[ScenarioResult]) {
    println!();
    println!("summary: chronik/raw appends/s (median of per-round ratios)");
    for result in results {
        let ratio = ratio_of(result).appends_per_s;
        let verdict = match (result.scenario.target_ratio, result.target_met()) {
            (Some(target), Some(met)) => {
                format!("target >= {target:.2}x  {}", if met { "MET" } else { "MISSED" })
            }
            _ => "no target".to_owned(),
        };
        println!("  {:<34} {ratio:>6.2}x   {verdict}", result.scenario.name);
    }
    if results.iter().any(|r| !r.uring.is_empty()) {
        println!();
        println!("summary: chronik-wal io_uring/std appends/s (median of per-round ratios)");
        for result in results {
            let ratio = uring_ratio_of(result).appends_per_s;
            println!("  {:<34} {ratio:>6.2}x", result.scenario.name);
        }
    }
}

fn write_json(settings: &Settings, results: &[ScenarioResult]) {
    let scenarios: Vec<String> = results.iter().map(scenario_json).collect();
    let json = format!(
        "{{\n  \"bench\": \"append\",\n  \"quick\": {},\n  \"rounds\": {},\n  \"secs_per_run\": {},\n  \
         \"scenarios\": [\n{}\n  ]\n}}\n",
        settings.quick,
        settings.rounds,
        json_number(settings.run_for.as_secs_f64()),
        scenarios.join(",\n")
    );
    let path = &settings.results_path;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create the results directory");
    }
    fs::write(path, json).expect("write the JSON results");
    println!();
    println!("results written to {}", path.display());
}

fn scenario_json(result: &ScenarioResult) -> String {
    let s = &result.scenario;
    let rounds: Vec<String> = result
        .chronik
        .iter()
        .zip(&result.raw)
        .enumerate()
        .map(|(i, (c, r))| {
            let uring = result.uring.get(i).map_or("null".to_owned(), measurement_json);
            format!(
                "        {{ \"chronik\": {}, \"chronik_io_uring\": {uring}, \"raw\": {} }}",
                measurement_json(c),
                measurement_json(r)
            )
        })
        .collect();
    let uring_median = if result.uring.is_empty() {
        "null".to_owned()
    } else {
        measurement_json(&median_of(&result.uring))
    };
    // Scenario names are fixed ASCII without quotes or backslashes, so they need no escaping.
    format!(
        "    {{\n      \"name\": \"{}\",\n      \"batch_bytes\": {},\n      \"writers\": {},\n      \
         \"partitions\": {},\n      \"raw_kind\": \"{}\",\n      \"chronik\": {},\n      \
         \"chronik_io_uring\": {uring_median},\n      \"raw\": {},\n      \"ratio\": {},\n      \
         \"io_uring_vs_std\": {},\n      \"target_ratio\": {},\n      \"target_met\": {},\n      \
         \"rounds\": [\n{}\n      ]\n    }}",
        s.name,
        s.batch_bytes,
        s.writers,
        s.partitions,
        Contender::Raw.label(s),
        measurement_json(&median_of(&result.chronik)),
        measurement_json(&median_of(&result.raw)),
        measurement_json(&ratio_of(result)),
        measurement_json(&uring_ratio_of(result)),
        s.target_ratio.map_or("null".to_owned(), json_number),
        result.target_met().map_or("null".to_owned(), |m| m.to_string()),
        rounds.join(",\n")
    )
}

fn measurement_json(m: &Measurement) -> String {
    format!(
        "{{ \"appends_per_s\": {}, \"mb_per_s\": {}, \"p50_us\": {}, \"p99_us\": {} }}",
        json_number(m.appends_per_s),
        json_number(m.mb_per_s),
        json_number(m.p50_us),
        json_number(m.p99_us)
    )
}

/// JSON has no NaN or infinity (a ratio over a run with no appends): those become `null`.
fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{:.4}", x)
    } else {
        "null".to_owned()
    }
}
