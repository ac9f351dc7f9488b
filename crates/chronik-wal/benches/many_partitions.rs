//! What it costs to make one record durable in each of many partitions at once, by method: the question
//! behind produce with acks=all over many partitions (issue 14). No WAL here, raw files: one per
//! partition, zero-filled and fsynced ahead (as the WAL's preallocation leaves them), 1 KiB per partition
//! per round.
//!
//! Methods, each making a round's N records durable before the next round starts:
//! - `serial`: `pwrite` + `fdatasync` per partition file, one after the other (what one produce request
//!   does today when it waits on its partitions in turn);
//! - `threads-T`: every `pwrite`, then the N `fdatasync`s spread over T threads (the file system and the
//!   block layer may merge their journal commits and cache flushes);
//! - `io_uring`: per partition a linked write -> fdatasync pair, all N submitted at once;
//! - `journal`: every record `pwrite` into its partition file unsynced, and all N appended to one shared
//!   file with a single `fdatasync` (the partition files would be synced later, in the background);
//! - `syncfs`: every `pwrite`, then one `syncfs` of the file system.
//!
//! Printed per (partitions, method): rounds/s, records made durable per second, and the round latency p50
//! and p99 (a round's latency is what an acks=all producer waits, at best). `CHRONIK_BENCH_PARTITIONS`
//! (default `1,100,1000,10000`; the file limit, `ulimit -n`, must exceed the largest), `CHRONIK_BENCH_SECS`
//! (default 3 per run). JSON in `target/bench-results/many_partitions.json`.

#![allow(
    unsafe_code,
    reason = "io_uring submission entries hand the kernel raw pointers to buffers and descriptors"
)]

#[path = "common/mod.rs"]
mod common;

use std::{
    fs::{self, File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Instant,
};

use common::{env_parse, quick_mode, tmp_root, write_results};
use io_uring::{opcode, squeue, types, IoUring};

const RECORD: usize = 1024;
/// Prepared (zero-filled, synced) bytes per partition file; a run stops when any file would go past it.
const PREPARED: u64 = 1 << 20;
/// io_uring submission queue size; larger rounds are submitted in chunks of half of it (two entries each).
const RING_ENTRIES: u32 = 4096;

#[derive(Debug, Clone, Copy)]
enum Method {
    Serial,
    Threads(usize),
    Uring,
    Journal,
    Syncfs,
}

impl Method {
    fn name(self) -> String {
        match self {
            Method::Serial => "serial".into(),
            Method::Threads(t) => format!("threads-{t}"),
            Method::Uring => "io_uring".into(),
            Method::Journal => "journal".into(),
            Method::Syncfs => "syncfs".into(),
        }
    }
}

struct Files {
    parts: Vec<File>,
    journal: File,
}

fn prepare(dir: &Path, n: usize, prepared: u64) -> Files {
    fs::create_dir_all(dir).expect("create the bench directory");
    let zeros = vec![0u8; prepared as usize];
    let open = |name: String| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .expect("create a partition file");
        f.write_all_at(&zeros, 0).expect("zero-fill");
        f
    };
    let parts: Vec<File> = (0..n).map(|i| open(format!("p{i}"))).collect();
    let journal = open("journal".into());
    // One syncfs makes all the zero-filling durable, instead of one fsync per file.
    rustix::fs::syncfs(&journal).expect("syncfs after preparing");
    Files { parts, journal }
}

fn sync_threads(files: &[File], threads: usize) {
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..threads.min(files.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = files.get(i) else { break };
                f.sync_data().expect("fdatasync");
            });
        }
    });
}

fn uring_round(ring: &mut IoUring, files: &[File], record: &[u8], pos: u64) {
    let per_chunk = (RING_ENTRIES / 2) as usize;
    for chunk in files.chunks(per_chunk) {
        {
            let mut sq = ring.submission();
            for (i, f) in chunk.iter().enumerate() {
                let fd = types::Fd(f.as_raw_fd());
                let write = opcode::Write::new(fd, record.as_ptr(), record.len() as u32)
                    .offset(pos)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(2 * i as u64);
                let sync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(2 * i as u64 + 1);
                // SAFETY: `record` outlives the wait below, which reaps every entry submitted here.
                unsafe {
                    sq.push(&write).expect("submission queue has room");
                    sq.push(&sync).expect("submission queue has room");
                }
            }
        }
        let want = 2 * chunk.len();
        ring.submit_and_wait(want).expect("io_uring submit");
        let mut done = 0;
        while done < want {
            for cqe in ring.completion() {
                assert!(cqe.result() >= 0, "io_uring op failed: {}", cqe.result());
                done += 1;
            }
            if done < want {
                ring.submit_and_wait(1).expect("io_uring wait");
            }
        }
    }
}

/// Runs rounds for `secs`; returns each round's latency in microseconds.
fn run(method: Method, files: &Files, secs: f64, ring: &mut Option<IoUring>) -> Vec<u32> {
    let record = vec![0xA5u8; RECORD];
    let journal_record = vec![0x5Au8; RECORD * files.parts.len()];
    let mut lat = Vec::new();
    let started = Instant::now();
    let mut round = 0u64;
    loop {
        let pos = round * RECORD as u64;
        if pos + RECORD as u64 > PREPARED || started.elapsed().as_secs_f64() >= secs {
            break;
        }
        let t = Instant::now();
        match method {
            Method::Serial => {
                for f in &files.parts {
                    f.write_all_at(&record, pos).expect("pwrite");
                    f.sync_data().expect("fdatasync");
                }
            }
            Method::Threads(threads) => {
                for f in &files.parts {
                    f.write_all_at(&record, pos).expect("pwrite");
                }
                sync_threads(&files.parts, threads);
            }
            Method::Uring => {
                let ring = ring.as_mut().expect("io_uring is available");
                uring_round(ring, &files.parts, &record, pos);
            }
            Method::Journal => {
                for f in &files.parts {
                    f.write_all_at(&record, pos).expect("pwrite");
                }
                let jpos = (round * journal_record.len() as u64) % PREPARED;
                let end = (jpos + journal_record.len() as u64).min(PREPARED);
                files
                    .journal
                    .write_all_at(&journal_record[..(end - jpos) as usize], jpos)
                    .expect("journal pwrite");
                files.journal.sync_data().expect("journal fdatasync");
            }
            Method::Syncfs => {
                for f in &files.parts {
                    f.write_all_at(&record, pos).expect("pwrite");
                }
                rustix::fs::syncfs(&files.journal).expect("syncfs");
            }
        }
        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        round += 1;
    }
    lat
}

fn main() {
    let quick = quick_mode();
    let partitions: Vec<usize> = std::env::var("CHRONIK_BENCH_PARTITIONS")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().parse().expect("CHRONIK_BENCH_PARTITIONS: numbers"))
                .collect()
        })
        .unwrap_or_else(|| {
            if quick {
                vec![1, 10]
            } else {
                vec![1, 100, 1000, 10000]
            }
        });
    let secs: f64 = env_parse("CHRONIK_BENCH_SECS").unwrap_or(if quick { 0.2 } else { 3.0 });
    let mut ring = IoUring::new(RING_ENTRIES).ok();
    if ring.is_none() {
        println!("io_uring refused by the kernel: that method is skipped");
    }
    let methods = [
        Method::Serial,
        Method::Threads(4),
        Method::Threads(16),
        Method::Threads(32),
        Method::Threads(64),
        Method::Uring,
        Method::Journal,
        Method::Syncfs,
    ];
    println!(
        "{:>10} {:>11} {:>10} {:>14} {:>10} {:>10}",
        "partitions", "method", "rounds/s", "records/s", "p50 ms", "p99 ms"
    );
    let mut rows = Vec::new();
    for &n in &partitions {
        let dir = tmp_root().join(format!("many-partitions-{}-{n}", std::process::id()));
        eprintln!(
            "preparing {n} files of {} KiB in {}",
            PREPARED >> 10,
            dir.display()
        );
        let files = prepare(&dir, n, PREPARED);
        for method in methods {
            if matches!(method, Method::Uring) && ring.is_none() {
                continue;
            }
            if matches!(method, Method::Threads(t) if t > n) {
                continue;
            }
            let mut lat = run(method, &files, secs, &mut ring);
            let total_s = lat.iter().map(|&us| f64::from(us)).sum::<f64>() / 1e6;
            lat.sort_unstable();
            let rounds = lat.len();
            let rps = rounds as f64 / total_s.max(1e-9);
            let p50 = f64::from(common::percentile(&lat, 50.0)) / 1000.0;
            let p99 = f64::from(common::percentile(&lat, 99.0)) / 1000.0;
            println!(
                "{n:>10} {:>11} {rps:>10.1} {:>14.0} {p50:>10.2} {p99:>10.2}",
                method.name(),
                rps * n as f64
            );
            rows.push(format!(
                "{{\"partitions\":{n},\"method\":\"{}\",\"rounds\":{rounds},\"rounds_per_s\":{rps:.2},\
                 \"records_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3}}}",
                method.name(),
                rps * n as f64
            ));
        }
        drop(files);
        let _ = fs::remove_dir_all(&dir);
    }
    write_results("many_partitions", &format!("[{}]", rows.join(",\n")));
}
