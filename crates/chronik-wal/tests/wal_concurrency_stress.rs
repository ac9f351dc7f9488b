//! Many writers, readers and waiters on one `WalManager` at once: 16 writer threads append batches of
//! varied sizes and durabilities to 4 partitions with small segments (so rotations happen under load, also
//! forced by an explicit `rotate` thread) while background checkpoints run, one reader per partition tails
//! the log with `read`, and one thread follows a partition's high watermark with `wait_past_timeout`. Every
//! payload names its writer and sequence number and is otherwise derived from them, so any batch can be
//! checked on its own. Must hold: an acknowledged append is visible at once (high watermark past it) and
//! later reads return it at exactly the offsets it was given, byte for byte; offsets per partition are dense
//! from 0 with no two appends overlapping; one writer's appends to a partition are in the order it made
//! them; tailing readers see exactly the final log, in order; the high watermark never goes back and ends at
//! the total record count; and all of this still holds after a clean close and reopen.
//!
//! Random choices come from a seed printed at the start; set `CHRONIK_STRESS_SEED` to replay a run's choices
//! (thread scheduling is of course not replayed).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        mpsc::{self, RecvTimeoutError},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use chronik_wal::{
    AppendResult, Batch, CheckpointConfig, Durability, PartitionWal, RotationConfig, StoredBatch, SyncPolicy,
    TopicPartition, WalConfig, WalManager,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const SEED_VAR: &str = "CHRONIK_STRESS_SEED";
const TOPIC: &str = "stress";
const WRITERS: u32 = 16;
const PARTITIONS: usize = 4;
const BATCHES_PER_WRITER: u32 = 250;
/// Explicit rotations requested while the writers run, spread over partition 0's growth.
const EXPLICIT_ROTATIONS: i64 = 8;
/// Bound on any single wait; a wait that reaches it means the WAL stopped making progress.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the whole concurrent phase.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// writer u32, sequence u32, record count u32, payload length u32.
const PAYLOAD_HEADER_LEN: usize = 16;

fn seed() -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={s:?} is not a u64")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    eprintln!("wal_concurrency_stress seed = {seed} (replay with {SEED_VAR}={seed})");
    seed
}

fn config() -> WalConfig {
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: 8192,
            ..Default::default()
        },
        checkpoint: CheckpointConfig {
            enabled: true,
            interval_ms: 5,
        },
        sync_policy: SyncPolicy::Always,
        index_interval_bytes: 512,
        ..Default::default()
    }
}

fn tp(partition: usize) -> TopicPartition {
    TopicPartition::new(TOPIC, partition as i32)
}

/// One append a writer will make.
#[derive(Debug, Clone, Copy)]
struct Planned {
    partition: usize,
    record_count: u32,
    payload_len: usize,
    durability: Durability,
}

/// Every writer's appends, drawn from the seed before any thread starts.
fn plan(seed: u64) -> Vec<Vec<Planned>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..WRITERS)
        .map(|_| {
            (0..BATCHES_PER_WRITER)
                .map(|_| Planned {
                    partition: rng.gen_range(0..PARTITIONS),
                    record_count: rng.gen_range(1..=5),
                    // Mostly small, sometimes larger than a whole segment.
                    payload_len: match rng.gen_range(0..20) {
                        0 => rng.gen_range(8_000..12_000),
                        1..=4 => rng.gen_range(1_000..3_000),
                        _ => rng.gen_range(PAYLOAD_HEADER_LEN..1_000),
                    },
                    durability: match rng.gen_range(0..3) {
                        0 => Durability::Sync,
                        1 => Durability::Written,
                        _ => Durability::Default,
                    },
                })
                .collect()
        })
        .collect()
}

fn first_timestamp(writer: u32, seq: u32) -> i64 {
    i64::from(writer) * 1_000_000 + i64::from(seq)
}

/// The batch writer `writer` appends as its `seq`-th: a header naming it, then bytes derived from it.
fn batch(writer: u32, seq: u32, p: &Planned) -> Batch {
    let mut payload = Vec::with_capacity(p.payload_len);
    payload.extend_from_slice(&writer.to_le_bytes());
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&p.record_count.to_le_bytes());
    payload.extend_from_slice(&(p.payload_len as u32).to_le_bytes());
    let mut x = (u64::from(writer) << 32 | u64::from(seq)) ^ 0x9e37_79b9_7f4a_7c15;
    while payload.len() < p.payload_len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.push(x as u8);
    }
    Batch {
        payload: Bytes::from(payload),
        record_count: p.record_count,
        first_timestamp: first_timestamp(writer, seq),
        max_timestamp: first_timestamp(writer, seq) + i64::from(p.record_count),
    }
}

/// Checks that a batch read back is one some writer appended, intact. Returns (writer, seq).
fn decode(b: &StoredBatch) -> (u32, u32) {
    let field = |i: usize| u32::from_le_bytes(b.payload[i * 4..i * 4 + 4].try_into().unwrap());
    assert!(
        b.payload.len() >= PAYLOAD_HEADER_LEN,
        "batch at {} has a {}-byte payload, too short to be one we wrote",
        b.base_offset,
        b.payload.len()
    );
    let (writer, seq, record_count, len) = (field(0), field(1), field(2), field(3));
    assert!(
        writer < WRITERS && seq < BATCHES_PER_WRITER && len as usize == b.payload.len(),
        "batch at {} names writer {writer} seq {seq} length {len}, but is {} bytes",
        b.base_offset,
        b.payload.len()
    );
    let planned = Planned {
        partition: 0,
        record_count,
        payload_len: len as usize,
        durability: Durability::Default,
    };
    let want = batch(writer, seq, &planned);
    assert_eq!(
        b.record_count, record_count,
        "record count of batch at {}",
        b.base_offset
    );
    assert_eq!(
        (b.first_timestamp, b.max_timestamp),
        (want.first_timestamp, want.max_timestamp),
        "timestamps of batch at {}",
        b.base_offset
    );
    assert!(
        b.payload == want.payload,
        "payload of batch at {} (writer {writer} seq {seq}) differs from what was appended",
        b.base_offset
    );
    (writer, seq)
}

/// An acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    writer: u32,
    seq: u32,
    at: AppendResult,
}

fn write(partitions: &[Arc<PartitionWal>], writer: u32, plan: &[Planned]) -> Vec<(usize, Ack)> {
    let mut acks: Vec<(usize, Ack)> = Vec::with_capacity(plan.len());
    for (seq, p) in (0u32..).zip(plan) {
        let partition = &partitions[p.partition];
        let at = partition
            .append_with(batch(writer, seq, p), p.durability)
            .unwrap_or_else(|e| panic!("writer {writer} seq {seq}: append failed: {e}"));
        assert_eq!(
            at.last_offset - at.base_offset + 1,
            i64::from(p.record_count),
            "writer {writer} seq {seq}: offsets span the record count"
        );
        assert!(
            partition.high_watermark() > at.last_offset,
            "writer {writer} seq {seq}: an acknowledged append is visible (high watermark {} <= {})",
            partition.high_watermark(),
            at.last_offset
        );
        // The configured policy is `Always`, so only `Written` appends may return before fdatasync.
        if p.durability != Durability::Written {
            assert!(
                partition.synced_offset() > at.last_offset,
                "writer {writer} seq {seq}: a synced append is durable (synced offset {} <= {})",
                partition.synced_offset(),
                at.last_offset
            );
        }
        if let Some((_, prev)) = acks.iter().rev().find(|(q, _)| *q == p.partition) {
            assert!(
                at.base_offset > prev.at.last_offset,
                "writer {writer}: seq {seq} at {} landed before its earlier seq {} at {}",
                at.base_offset,
                prev.seq,
                prev.at.base_offset
            );
        }
        acks.push((p.partition, Ack { writer, seq, at }));
    }
    acks
}

/// Tails a partition from offset 0 until `end`, checking every batch. Returns (base offset, writer, seq).
fn tail(partition: &PartitionWal, end: i64, seed: u64) -> Vec<(i64, u32, u32)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = Vec::new();
    let mut next = 0;
    while next < end {
        if partition.high_watermark() <= next {
            assert!(
                partition.wait_past_timeout(next, PROGRESS_TIMEOUT),
                "{}: reader waited {PROGRESS_TIMEOUT:?} for offset {next}",
                partition.topic_partition()
            );
        }
        let max_bytes = [0, 1, 700, 4096, 1 << 16][rng.gen_range(0..5)];
        let batches = partition.read(next, max_bytes).unwrap();
        assert!(
            !batches.is_empty(),
            "{}: read({next}) below the high watermark returned nothing",
            partition.topic_partition()
        );
        for b in &batches {
            assert_eq!(
                b.base_offset,
                next,
                "{}: offsets read are dense and increasing",
                partition.topic_partition()
            );
            let (writer, seq) = decode(b);
            seen.push((b.base_offset, writer, seq));
            next = b.next_offset();
        }
    }
    assert_eq!(
        next,
        end,
        "{}: the reader stopped at the end",
        partition.topic_partition()
    );
    seen
}

/// Follows a partition's high watermark with `wait_past_timeout` until it reaches `end`.
fn follow(partition: &PartitionWal, end: i64) -> usize {
    let mut observed = 0;
    let mut wakeups = 0;
    while observed < end {
        assert!(
            partition.wait_past_timeout(observed, PROGRESS_TIMEOUT),
            "{}: high watermark stuck at {observed} for {PROGRESS_TIMEOUT:?}",
            partition.topic_partition()
        );
        let hw = partition.high_watermark();
        assert!(
            hw > observed && hw <= end,
            "{}: high watermark went from {observed} to {hw} (final {end})",
            partition.topic_partition()
        );
        // The high watermark only ever lands on batch boundaries, and what it covers is readable.
        let first = partition.read(observed, 0).unwrap();
        assert_eq!(
            first.first().map(|b| b.base_offset),
            Some(observed),
            "{}: a batch starts at the old high watermark {observed}",
            partition.topic_partition()
        );
        observed = hw;
        wakeups += 1;
    }
    wakeups
}

/// Rotates partition 0 each time its high watermark passes the next of `EXPLICIT_ROTATIONS` marks.
fn rotate_while_writing(partition: &PartitionWal, end: i64) {
    for k in 1..=EXPLICIT_ROTATIONS {
        let mark = end * k / (EXPLICIT_ROTATIONS + 1);
        assert!(
            partition.wait_past_timeout(mark, PROGRESS_TIMEOUT),
            "{}: high watermark never passed {mark}",
            partition.topic_partition()
        );
        partition.rotate().unwrap();
    }
}

/// Checks the WAL's content against the acknowledged appends: each partition holds exactly them, densely
/// from 0, at the offsets they were given, intact.
fn verify(wal: &WalManager, acks: &[Vec<Ack>]) {
    for (p, acks) in acks.iter().enumerate() {
        let tp = tp(p);
        let mut acks = acks.clone();
        acks.sort_by_key(|a| a.at.base_offset);
        let mut next = 0;
        for a in &acks {
            assert_eq!(
                a.at.base_offset, next,
                "{tp}: acknowledged offsets are dense and do not overlap (writer {} seq {})",
                a.writer, a.seq
            );
            next = a.at.last_offset + 1;
        }
        assert_eq!(wal.high_watermark(&tp).unwrap(), next, "{tp}: high watermark");
        assert_eq!(wal.log_start_offset(&tp).unwrap(), 0, "{tp}: log start offset");

        // Each acknowledged append, read at its own offsets.
        for a in &acks {
            let got = wal.read(&tp, a.at.last_offset, 0).unwrap();
            let b = got.first().unwrap();
            assert_eq!(
                (b.base_offset, b.last_offset()),
                (a.at.base_offset, a.at.last_offset),
                "{tp}: writer {} seq {} is stored at the offsets it was given",
                a.writer,
                a.seq
            );
            assert_eq!(decode(b), (a.writer, a.seq), "{tp}: batch at {}", b.base_offset);
        }

        // The whole log in one sequential pass holds exactly the acknowledged appends, in offset order.
        let mut read = 0;
        let mut offset = 0;
        while offset < next {
            let batches = wal.read(&tp, offset, 1 << 16).unwrap();
            assert!(
                !batches.is_empty(),
                "{tp}: read({offset}) below the high watermark returned nothing"
            );
            for b in batches {
                let a = acks[read];
                assert_eq!(
                    (b.base_offset, decode(&b)),
                    (a.at.base_offset, (a.writer, a.seq)),
                    "{tp}: sequential read"
                );
                read += 1;
                offset = b.next_offset();
            }
        }
        assert_eq!(read, acks.len(), "{tp}: batches read");
    }
}

/// What a worker thread hands back when it finishes.
enum Done {
    Writer(Vec<(usize, Ack)>),
    Reader(usize, Vec<(i64, u32, u32)>),
    Follower(usize),
    Rotator,
}

/// Runs `work` on its own thread and reports its result, or its panic, on `done`.
fn spawn_worker(
    done: &mpsc::Sender<thread::Result<Done>>,
    name: String,
    work: impl FnOnce() -> Done + Send + 'static,
) {
    let done = done.clone();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            // The receiver only goes away once the test has already failed.
            let _ = done.send(panic::catch_unwind(AssertUnwindSafe(work)));
        })
        .unwrap();
}

#[test]
fn concurrent_appends_reads_and_waits_keep_every_acknowledged_batch() {
    let seed = seed();
    let plan = plan(seed);
    let mut totals = [0i64; PARTITIONS];
    for p in plan.iter().flatten() {
        totals[p.partition] += i64::from(p.record_count);
    }
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), config()).unwrap();
    let partitions: Arc<[Arc<PartitionWal>]> = (0..PARTITIONS)
        .map(|p| wal.create_partition(&tp(p)).unwrap())
        .collect();

    // Workers are detached threads reporting on a channel, so that a worker stuck inside the WAL fails the
    // test at the deadline instead of hanging it.
    let (tx, rx) = mpsc::channel();
    for (w, plan) in (0..WRITERS).zip(plan) {
        let partitions = Arc::clone(&partitions);
        spawn_worker(&tx, format!("writer-{w}"), move || {
            Done::Writer(write(&partitions, w, &plan))
        });
    }
    for (p, end) in totals.into_iter().enumerate() {
        let partition = Arc::clone(&partitions[p]);
        spawn_worker(&tx, format!("reader-{p}"), move || {
            Done::Reader(p, tail(&partition, end, seed ^ p as u64))
        });
    }
    let partition = Arc::clone(&partitions[0]);
    spawn_worker(&tx, "follower".into(), move || {
        Done::Follower(follow(&partition, totals[0]))
    });
    let partition = Arc::clone(&partitions[0]);
    spawn_worker(&tx, "rotator".into(), move || {
        rotate_while_writing(&partition, totals[0]);
        Done::Rotator
    });
    drop(tx);

    let deadline = Instant::now() + RUN_DEADLINE;
    let mut acks: Vec<Vec<Ack>> = vec![Vec::new(); PARTITIONS];
    let mut seen: Vec<Vec<(i64, u32, u32)>> = vec![Vec::new(); PARTITIONS];
    let mut wakeups = 0;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(Done::Writer(w))) => {
                for (p, ack) in w {
                    acks[p].push(ack);
                }
            }
            Ok(Ok(Done::Reader(p, s))) => seen[p] = s,
            Ok(Ok(Done::Follower(n))) => wakeups = n,
            Ok(Ok(Done::Rotator)) => {}
            Ok(Err(panic)) => panic::resume_unwind(panic),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!(
                "workers still running after {RUN_DEADLINE:?} (seed {seed}): the WAL stopped making progress"
            ),
        }
    }

    assert!(wakeups > 0, "the follower saw the high watermark move");
    for (p, acks) in acks.iter().enumerate() {
        assert_eq!(
            wal.high_watermark(&tp(p)).unwrap(),
            totals[p],
            "{}: high watermark is the total record count",
            tp(p)
        );
        let mut by_offset = acks.clone();
        by_offset.sort_by_key(|a| a.at.base_offset);
        let acked: Vec<(i64, u32, u32)> = by_offset
            .iter()
            .map(|a| (a.at.base_offset, a.writer, a.seq))
            .collect();
        assert!(
            seen[p] == acked,
            "{}: the tailing reader saw exactly the acknowledged batches, in offset order",
            tp(p)
        );
    }
    let segments_0 = std::fs::read_dir(partitions[0].dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".wal")
        })
        .count();
    assert!(
        segments_0 > EXPLICIT_ROTATIONS as usize,
        "small segments rotated under load ({segments_0} segments)"
    );
    verify(&wal, &acks);

    wal.close().unwrap();
    let wal = common::open_wal(dir.path(), config()).unwrap();
    let report = wal.recovery_report();
    assert!(report.corrupt.is_empty(), "clean reopen: {:?}", report.corrupt);
    assert_eq!(report.stats.truncated_bytes, 0, "clean reopen truncates nothing");
    assert_eq!(report.partitions, PARTITIONS);
    verify(&wal, &acks);
    for (p, total) in totals.iter().enumerate() {
        let synced = wal.partition(&tp(p)).unwrap().synced_offset();
        assert_eq!(
            synced,
            *total,
            "{}: after a clean reopen everything is durable",
            tp(p)
        );
    }

    // Appends continue densely after the reopen.
    for (p, total) in totals.iter().enumerate() {
        let planned = Planned {
            partition: p,
            record_count: 1,
            payload_len: 100,
            durability: Durability::Sync,
        };
        let at = wal.append(&tp(p), batch(WRITERS, 0, &planned)).unwrap();
        assert_eq!(at.base_offset, *total, "{}: first append after reopen", tp(p));
    }
    wal.close().unwrap();
}
