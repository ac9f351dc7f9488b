//! How the state of the file under a durable append changes its cost: raw `pwrite` + `fdatasync` loops
//! (no WAL) into a file that grows with every write, a sparse file (`set_len`), a file `fallocate`d ahead,
//! and a file zero-filled and fsynced ahead. This is the measurement behind the WAL's preallocation
//! choice (see `WalConfig::preallocate_bytes`).
//!
//! Workloads: 1 KiB appends from one writer; 16 x 1 KiB per write (what group commit does for 16
//! writers at saturation: one write and one fdatasync serve 16 appends); 64 KiB appends written in 4 KiB
//! aligned sizes (65,536 bytes) and as the WAL frames them (65,592 bytes, with the 56-byte frame header).
//! Each (workload, method) runs `CHRONIK_BENCH_ROUNDS` times (default 3), for `CHRONIK_BENCH_SECS` (default
//! 2) or until the prepared space runs out; methods alternate order between rounds. Printed: the median
//! appends/s and the median of per-round ratios to the growing file (each round's runs are adjacent in
//! time, so the ratios resist drift from a shared disk better than the absolute numbers).
//! Preparation (fallocate, zero fill, fsync) is not timed for those four, the best case a preallocating log
//! could hope for; a fifth method, `ZeroFillAtPace`, pays for it as a log that keeps its data must: a second
//! thread zero-fills and syncs 256 KiB steps while the writer runs, keeping 2 MiB ahead of it (what the
//! WAL's preparer does by default), and the writer waits if it ever catches up.
//!
//! Then the WAL itself, `preallocate_bytes` 0 against its default, one writer appending with fdatasync, the
//! two alternating in adjacent runs; each run first writes a few MiB unsynced and waits until the preparer
//! is ahead (where it prepares at all), so it measures the steady state, not a fresh segment's first stretch.
//! `CHRONIK_BENCH_SKIP_RAW=1` runs only this part.

use std::{
    env,
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use chronik_wal::{Batch, Durability, TopicPartition, WalConfig, WalManager};
use rustix::fs::{fallocate, FallocateFlags};

/// Size of each prepared file (a quick run uses less).
const PREPARED_BYTES: u64 = 256 << 20;
const QUICK_PREPARED_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Grow,
    Sparse,
    Fallocate,
    ZeroFill,
    ZeroFillAtPace,
}

const METHODS: [Method; 5] = [
    Method::Grow,
    Method::Sparse,
    Method::Fallocate,
    Method::ZeroFill,
    Method::ZeroFillAtPace,
];

/// `ZeroFillAtPace`: zeros kept ahead of the writer, and the size of each synced step (the WAL's defaults).
const PACE_WINDOW: u64 = 2 << 20;
const PACE_STEP: u64 = 256 << 10;

struct Workload {
    name: &'static str,
    write_bytes: usize,
    appends_per_write: u64,
    payload_per_append: u64,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "1 KiB x 1 writer",
        write_bytes: 1024,
        appends_per_write: 1,
        payload_per_append: 1024,
    },
    Workload {
        name: "16 KiB x 1 writer",
        write_bytes: 16 << 10,
        appends_per_write: 1,
        payload_per_append: 16 << 10,
    },
    Workload {
        name: "16 x 1 KiB per write (16 writers, grouped)",
        write_bytes: 16 * 1024,
        appends_per_write: 16,
        payload_per_append: 1024,
    },
    Workload {
        name: "64 KiB, aligned writes (65536 B)",
        write_bytes: 64 << 10,
        appends_per_write: 1,
        payload_per_append: 64 << 10,
    },
    Workload {
        name: "64 KiB, framed writes (65592 B)",
        write_bytes: (64 << 10) + 56,
        appends_per_write: 1,
        payload_per_append: 64 << 10,
    },
];

fn prepare(path: &Path, method: Method, prepared: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create bench file");
    match method {
        Method::Grow => {}
        Method::Sparse => file.set_len(prepared).expect("set_len"),
        Method::Fallocate => fallocate(&file, FallocateFlags::empty(), 0, prepared).expect("fallocate"),
        Method::ZeroFill => zero_fill(&file, 0, prepared),
        Method::ZeroFillAtPace => zero_fill(&file, 0, PACE_WINDOW.min(prepared)),
    }
    file.sync_all().expect("sync prepared file");
    // The directory entry too, so the timed loop pays nothing for the file's creation.
    File::open(path.parent().expect("parent"))
        .and_then(|d| d.sync_all())
        .expect("sync dir");
    file
}

fn zero_fill(file: &File, from: u64, to: u64) {
    let zeros = vec![0u8; 4 << 20];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos).expect("zero fill");
        pos += n as u64;
    }
}

/// What the writer and the `ZeroFillAtPace` filler share: the writer's position, how far zeros are
/// synced, and whether the run is over.
#[derive(Default)]
struct Pace {
    state: Mutex<(u64, u64, bool)>,
    changed: Condvar,
}

impl Pace {
    /// The filler: keeps `PACE_WINDOW` of synced zeros ahead of the writer, one `PACE_STEP` at a time.
    fn fill(&self, file: &File, limit: u64) {
        loop {
            let from = {
                let mut s = self.state.lock().expect("pace lock");
                while !s.2 && (s.1 >= s.0 + PACE_WINDOW || s.1 >= limit) {
                    s = self.changed.wait(s).expect("pace lock");
                }
                if s.2 {
                    return;
                }
                s.1
            };
            let to = (from + PACE_STEP).min(limit);
            zero_fill(file, from, to);
            file.sync_data().expect("fdatasync of zeros");
            self.state.lock().expect("pace lock").1 = to;
            self.changed.notify_all();
        }
    }

    /// The writer: waits until `end` is prepared (timed: a real stall).
    fn wait_prepared(&self, end: u64) {
        let mut s = self.state.lock().expect("pace lock");
        while s.1 < end {
            s = self.changed.wait(s).expect("pace lock");
        }
    }

    fn update(&self, f: impl FnOnce(&mut (u64, u64, bool))) {
        f(&mut self.state.lock().expect("pace lock"));
        self.changed.notify_all();
    }
}

/// Appends per second and MB/s of payload.
fn run(dir: &Path, method: Method, w: &Workload, run_for: Duration, prepared: u64) -> (f64, f64) {
    let path = dir.join(format!("{method:?}.log"));
    let file = prepare(&path, method, prepared);
    let buf = vec![0xa5u8; w.write_bytes];
    let at_pace = method == Method::ZeroFillAtPace;
    let pace = Pace::default();
    pace.update(|s| s.1 = PACE_WINDOW.min(prepared));
    let (writes, secs) = thread::scope(|scope| {
        if at_pace {
            scope.spawn(|| pace.fill(&file, prepared));
        }
        let started = Instant::now();
        let mut pos = 0u64;
        let mut writes = 0u64;
        while started.elapsed() < run_for && pos + w.write_bytes as u64 <= prepared {
            if at_pace {
                pace.wait_prepared(pos + w.write_bytes as u64);
            }
            file.write_all_at(&buf, pos).expect("pwrite");
            file.sync_data().expect("fdatasync");
            pos += w.write_bytes as u64;
            writes += 1;
            if at_pace {
                pace.update(|s| s.0 = pos);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        pace.update(|s| s.2 = true);
        (writes, secs)
    });
    drop(file);
    fs::remove_file(&path).expect("remove bench file");
    let appends = (writes * w.appends_per_write) as f64 / secs;
    (appends, appends * w.payload_per_append as f64 / 1e6)
}

/// Durable appends per second of one writer into a fresh WAL with the given preallocation.
fn run_wal(dir: &Path, preallocate_bytes: u64, batch_bytes: usize, run_for: Duration) -> f64 {
    let root = dir.join(format!("wal-{preallocate_bytes}"));
    let config = WalConfig {
        preallocate_bytes,
        ..WalConfig::default()
    };
    let wal = WalManager::open(&root, config).expect("open WAL");
    let p = wal
        .create_partition(&TopicPartition::new("bench", 0))
        .expect("create partition");
    let payload = bytes::Bytes::from(vec![0xa5u8; batch_bytes]);
    let batch = || Batch::new(payload.clone(), 1, 1_700_000_000_000);
    // Past the stretch a fresh segment grows into before its first prepared range.
    let mut written = 0;
    while written < 8 << 20 {
        p.append_with(batch(), Durability::Written)
            .expect("warm-up append");
        written += batch_bytes;
    }
    p.sync().expect("sync");
    if p.preallocating() {
        let want = (written as u64) + preallocate_bytes / 2;
        assert!(p.wait_prepared(want, Duration::from_secs(60)), "preparer stuck");
    }
    let started = Instant::now();
    let mut appends = 0u64;
    while started.elapsed() < run_for {
        p.append(batch()).expect("append");
        appends += 1;
    }
    let rate = appends as f64 / started.elapsed().as_secs_f64();
    drop(p);
    wal.close().expect("close WAL");
    fs::remove_dir_all(&root).expect("remove WAL dir");
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !env::args().any(|a| a == "--bench");
    let rounds: usize = env::var("CHRONIK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let secs: f64 = env::var("CHRONIK_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 2.0 });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root");
    let dir: PathBuf = env::var_os("CHRONIK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/bench-tmp/prealloc"));
    fs::create_dir_all(&dir).expect("bench dir");
    let run_for = Duration::from_secs_f64(secs);
    let prepared = if quick {
        QUICK_PREPARED_BYTES
    } else {
        PREPARED_BYTES
    };
    println!(
        "prealloc bench: {rounds} round(s) x {secs} s, files of up to {} MiB",
        prepared >> 20
    );
    let skip_raw = env::var("CHRONIK_BENCH_SKIP_RAW").is_ok_and(|v| v == "1");
    for w in WORKLOADS.iter().filter(|_| !skip_raw) {
        let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); METHODS.len()];
        for round in 0..rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..METHODS.len()).collect()
            } else {
                (0..METHODS.len()).rev().collect()
            };
            for i in order {
                let (aps, mbs) = run(&dir, METHODS[i], w, run_for, prepared);
                results[i].0.push(aps);
                results[i].1.push(mbs);
            }
        }
        println!("\n{}", w.name);
        let grow = results[0].0.clone();
        for (m, (aps, mbs)) in METHODS.iter().zip(results) {
            let ratios: Vec<f64> = aps.iter().zip(&grow).map(|(a, g)| a / g).collect();
            println!(
                "  {:<14} {:>10.0} appends/s {:>8.1} MB/s  x{:.2} vs grow   rounds: {:?}",
                format!("{m:?}"),
                median(aps.clone()),
                median(mbs),
                median(ratios),
                aps.iter().map(|x| x.round() as u64).collect::<Vec<_>>()
            );
        }
    }
    let default_bytes = WalConfig::default().preallocate_bytes;
    for batch_bytes in [1 << 10, 64 << 10] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                off.push(run_wal(&dir, 0, batch_bytes, run_for));
                on.push(run_wal(&dir, default_bytes, batch_bytes, run_for));
            } else {
                on.push(run_wal(&dir, default_bytes, batch_bytes, run_for));
                off.push(run_wal(&dir, 0, batch_bytes, run_for));
            }
        }
        let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        println!(
            "\nchronik-wal, {} KiB x 1 writer, durable appends/s: preallocate_bytes=0 {:.0}, ={} KiB (default) \
             {:.0}, x{:.2} (median of per-round ratios)\n  rounds off {:?}\n  rounds on  {:?}",
            batch_bytes >> 10,
            median(off.clone()),
            default_bytes >> 10,
            median(on.clone()),
            median(ratios),
            off.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            on.iter().map(|x| x.round() as u64).collect::<Vec<_>>()
        );
    }
}
