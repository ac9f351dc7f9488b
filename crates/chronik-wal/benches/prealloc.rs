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
//! Preparation (fallocate, zero fill, fsync) is not timed: it happens in the background in the WAL.
//!
//! Then the WAL itself, `preallocate_bytes` 0 against 16 MiB, one writer appending with fdatasync, the two
//! alternating in adjacent runs; each run first writes a few MiB unsynced and waits until the preparer is
//! ahead, so it measures the steady state, not the first stretch of a fresh segment.
//! `CHRONIK_BENCH_SKIP_RAW=1` runs only this part.

use std::{
    env,
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
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
}

const METHODS: [Method; 4] = [Method::Grow, Method::Sparse, Method::Fallocate, Method::ZeroFill];

struct Workload {
    name: &'static str,
    write_bytes: usize,
    appends_per_write: u64,
    payload_per_append: u64,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "1 KiB x 1 writer",
        write_bytes: 1024,
        appends_per_write: 1,
        payload_per_append: 1024,
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
        Method::ZeroFill => {
            let zeros = vec![0u8; 4 << 20];
            let mut pos = 0;
            while pos < prepared {
                file.write_all_at(&zeros, pos).expect("zero fill");
                pos += zeros.len() as u64;
            }
        }
    }
    file.sync_all().expect("sync prepared file");
    // The directory entry too, so the timed loop pays nothing for the file's creation.
    File::open(path.parent().expect("parent"))
        .and_then(|d| d.sync_all())
        .expect("sync dir");
    file
}

/// Appends per second and MB/s of payload.
fn run(dir: &Path, method: Method, w: &Workload, run_for: Duration, prepared: u64) -> (f64, f64) {
    let path = dir.join(format!("{method:?}.log"));
    let file = prepare(&path, method, prepared);
    let buf = vec![0xa5u8; w.write_bytes];
    let started = Instant::now();
    let mut pos = 0u64;
    let mut writes = 0u64;
    while started.elapsed() < run_for && pos + w.write_bytes as u64 <= prepared {
        file.write_all_at(&buf, pos).expect("pwrite");
        file.sync_data().expect("fdatasync");
        pos += w.write_bytes as u64;
        writes += 1;
    }
    let secs = started.elapsed().as_secs_f64();
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
    if preallocate_bytes > 0 {
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
                "  {:<10} {:>10.0} appends/s {:>8.1} MB/s  x{:.2} vs grow   rounds: {:?}",
                format!("{m:?}"),
                median(aps.clone()),
                median(mbs),
                median(ratios),
                aps.iter().map(|x| x.round() as u64).collect::<Vec<_>>()
            );
        }
    }
    for batch_bytes in [1 << 10, 64 << 10] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                off.push(run_wal(&dir, 0, batch_bytes, run_for));
                on.push(run_wal(&dir, 16 << 20, batch_bytes, run_for));
            } else {
                on.push(run_wal(&dir, 16 << 20, batch_bytes, run_for));
                off.push(run_wal(&dir, 0, batch_bytes, run_for));
            }
        }
        let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        println!(
            "\nchronik-wal, {} KiB x 1 writer, durable appends/s: preallocate_bytes=0 {:.0}, =16 MiB {:.0}, \
             x{:.2} (median of per-round ratios)\n  rounds off {:?}\n  rounds on  {:?}",
            batch_bytes >> 10,
            median(off.clone()),
            median(on.clone()),
            median(ratios),
            off.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            on.iter().map(|x| x.round() as u64).collect::<Vec<_>>()
        );
    }
}
