//! The WAL fuzz targets' inputs, replayed on every test run through the same harnesses the fuzzer runs
//! (`chronik_wal::fuzzing`): the committed seed corpus (`fuzz/corpus/<target>/`) and every input that once
//! made a target fail (`fuzz/regressions/<target>/`). Each must pass the harness: no panic, every property
//! of `fuzzing::decoders` and `fuzzing::recovery` holds.
//!
//! The seeds named `seed-*` are generated from a real WAL on the simulated disk by `generated_seeds_pass`,
//! which checks them and, with `CHRONIK_WRITE_FUZZ_CORPUS=1`, writes them:
//! `CHRONIK_WRITE_FUZZ_CORPUS=1 cargo test -p chronik-wal --test fuzz_corpus generated_seeds_pass`.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use chronik_wal::{
    frame::FRAME_HEADER_LEN,
    fuzzing::{
        self, chunks_of, partition, Chunk, ChunkKind, Layout, PREALLOCATE, ROOT, SMALL_BATCHES,
        SMALL_INDEX_INTERVAL,
    },
    index::SparseIndex,
    io::SimIo,
    segment::SEGMENT_HEADER_LEN,
    Batch, PartitionWal, WalManager,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file of `fuzz/<kind>/<target>/`, sorted; none if the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    out
}

fn replay(target: &str, harness: impl Fn(&[u8])) {
    let corpus = inputs("corpus", target);
    assert!(!corpus.is_empty(), "no committed corpus for {target}");
    for (path, bytes) in corpus.iter().chain(&inputs("regressions", target)) {
        eprintln!("{}", path.display());
        harness(bytes);
    }
}

#[test]
fn wal_frame_corpus_and_regressions_pass() {
    replay("wal_frame", fuzzing::decoders);
}

#[test]
fn wal_recovery_corpus_and_regressions_pass() {
    replay("wal_recovery", |bytes| fuzzing::recovery(bytes).unwrap());
}

// -------------------------------------------------------------------------------------------------
// Seed corpus

const TS: i64 = 1_700_000_000_000;

/// A WAL written on the simulated disk by `script`, closed cleanly (a final checkpoint) or dropped as
/// in a crash, as layout chunks.
fn written(flags: u8, start: i64, close: bool, script: impl FnOnce(&PartitionWal)) -> Vec<Chunk> {
    let sim = SimIo::new(0);
    let config = Layout {
        flags,
        chunks: Vec::new(),
    }
    .config();
    let wal = WalManager::open_with_io(ROOT, config, Arc::new(sim.clone())).unwrap();
    let p = wal.create_partition_at(&partition(), start).unwrap();
    script(&p);
    drop(p);
    if close {
        wal.close().unwrap();
    } else {
        drop(wal);
    }
    chunks_of(&sim).unwrap()
}

fn append(p: &PartitionWal, from: u32, to: u32) {
    for i in from..to {
        let payload = format!("batch {i}: ").repeat(1 + i as usize % 5);
        p.append(Batch::new(payload.into_bytes(), 1 + i % 3, TS + i64::from(i)))
            .unwrap();
    }
}

fn three_segments(p: &PartitionWal) {
    append(p, 0, 4);
    p.rotate().unwrap();
    append(p, 4, 9);
    p.rotate().unwrap();
    append(p, 9, 12);
}

/// `chunks` with each of the kinds in `from` turned into `to` (raw bytes become fields, or a resealed
/// segment a plain one whose bytes are kept as they are).
fn converted(chunks: &[Chunk], from: ChunkKind, to: ChunkKind) -> Vec<Chunk> {
    chunks
        .iter()
        .map(|c| {
            if c.kind != from {
                return c.clone();
            }
            let content = match (from, to) {
                (ChunkKind::RawCheckpoint, ChunkKind::Checkpoint) => {
                    let entries = chronik_wal::checkpoint::decode(&c.content).unwrap();
                    entries
                        .iter()
                        .flat_map(|e| {
                            [
                                e.segment_base.to_le_bytes(),
                                e.position.to_le_bytes(),
                                e.next_offset.to_le_bytes(),
                                e.max_timestamp.to_le_bytes(),
                            ]
                        })
                        .flatten()
                        .collect()
                }
                (ChunkKind::RawIndex, ChunkKind::Index) => {
                    let index = SparseIndex::decode(&c.content, c.base_offset, 1).unwrap();
                    let mut fields = Vec::new();
                    fields.extend_from_slice(&index.covered_len.to_le_bytes());
                    fields.extend_from_slice(&index.next_offset.to_le_bytes());
                    fields.extend_from_slice(&index.max_timestamp.to_le_bytes());
                    for e in &index.entries {
                        fields.extend_from_slice(&e.relative_offset.to_le_bytes());
                        fields.extend_from_slice(&e.position.to_le_bytes());
                        fields.extend_from_slice(&e.max_ts_before.to_le_bytes());
                    }
                    fields
                }
                (ChunkKind::ResealedSegment, ChunkKind::Segment) => c.content.clone(),
                other => panic!("no conversion {other:?}"),
            };
            Chunk {
                kind: to,
                base_offset: c.base_offset,
                content,
            }
        })
        .collect()
}

fn without_checkpoint(chunks: &[Chunk]) -> Vec<Chunk> {
    chunks
        .iter()
        .filter(|c| c.kind != ChunkKind::RawCheckpoint)
        .cloned()
        .collect()
}

fn last_segment(chunks: &mut [Chunk]) -> &mut Chunk {
    chunks
        .iter_mut()
        .rev()
        .find(|c| matches!(c.kind, ChunkKind::Segment | ChunkKind::ResealedSegment))
        .unwrap()
}

type Named = (&'static str, Layout);

/// (seeds, open findings): layouts that pass the harness, and layouts that show a WAL bug not fixed yet.
fn recovery_seeds() -> (Vec<Named>, Vec<Named>) {
    let layout = |flags, chunks| Layout { flags, chunks };
    let one = written(0, 0, true, |p| append(p, 0, 5));
    let three = written(SMALL_INDEX_INTERVAL, 0, true, three_segments);

    let crashed = {
        let mut c = written(SMALL_INDEX_INTERVAL, 0, false, three_segments);
        c = converted(&c, ChunkKind::ResealedSegment, ChunkKind::Segment);
        // A torn last frame: its header and part of its payload reached the disk.
        let last = last_segment(&mut c);
        last.content.truncate(last.content.len() - 7);
        c
    };
    let preallocated = written(PREALLOCATE, 0, true, |p| {
        append(p, 0, 3);
        assert!(p.wait_prepared(4096, std::time::Duration::from_secs(10)));
    });
    // Without a checkpoint recovery validates every frame: a damaged frame in a sealed segment is refused.
    let sealed_damage = {
        let mut c = without_checkpoint(&converted(&three, ChunkKind::ResealedSegment, ChunkKind::Segment));
        let first = c.iter_mut().find(|c| c.kind == ChunkKind::Segment).unwrap();
        first.content[FRAME_HEADER_LEN + 3] ^= 0x01; // in the first frame's payload
        c
    };
    // A checkpoint vouching for bytes of the last segment past its torn tail: acknowledged data was lost.
    let torn_below_checkpoint = {
        let mut c = crashed.clone();
        let last = last_segment(&mut c);
        let (base, len) = (last.base_offset, last.content.len() as u64);
        let mut fields = Vec::new();
        for v in [base as u64, SEGMENT_HEADER_LEN as u64 + len + 5, 0, 0] {
            fields.extend_from_slice(&v.to_le_bytes());
        }
        c.push(Chunk {
            kind: ChunkKind::Checkpoint,
            base_offset: 0,
            content: fields,
        });
        c
    };
    let debris = {
        let mut c = written(0, 100, true, |p| append(p, 0, 4));
        let next = log_end(&c);
        // An index left by retention below the first segment, an empty segment a failed rotation left,
        // an unfinished atomic write and a half-created partition.
        c.push(Chunk {
            kind: ChunkKind::RawIndex,
            base_offset: 50,
            content: SparseIndex::new(50, 4096).encode(),
        });
        c.push(Chunk {
            kind: ChunkKind::Segment,
            base_offset: next,
            content: Vec::new(),
        });
        c.push(Chunk {
            kind: ChunkKind::TempFile,
            base_offset: 0,
            content: vec![0; 64],
        });
        c.push(Chunk {
            kind: ChunkKind::Staging,
            base_offset: 0,
            content: chronik_wal::segment::encode_segment_header(0).to_vec(),
        });
        c
    };
    let raw = {
        let mut c = one.clone();
        let seg = &mut c[0];
        let mut bytes = chronik_wal::segment::encode_segment_header(seg.base_offset).to_vec();
        bytes.extend_from_slice(&seg.content);
        *seg = Chunk {
            kind: ChunkKind::RawSegment,
            base_offset: seg.base_offset,
            content: bytes,
        };
        c
    };
    let findings = vec![(
        "checkpoint-claim-forgotten-after-restart",
        layout(SMALL_INDEX_INTERVAL, torn_below_checkpoint),
    )];
    let seeds = vec![
        ("one-segment", layout(0, one.clone())),
        ("one-segment-no-checkpoint", layout(0, without_checkpoint(&one))),
        (
            "three-segments-no-checkpoint",
            layout(SMALL_INDEX_INTERVAL, without_checkpoint(&three)),
        ),
        ("three-segments", layout(SMALL_INDEX_INTERVAL, three.clone())),
        (
            "three-segments-fields",
            layout(
                SMALL_INDEX_INTERVAL,
                converted(
                    &converted(&three, ChunkKind::RawCheckpoint, ChunkKind::Checkpoint),
                    ChunkKind::RawIndex,
                    ChunkKind::Index,
                ),
            ),
        ),
        ("crashed-torn-tail", layout(SMALL_INDEX_INTERVAL, crashed)),
        ("preallocated", layout(PREALLOCATE, preallocated)),
        (
            "sealed-segment-damage",
            layout(SMALL_INDEX_INTERVAL, sealed_damage),
        ),
        ("debris", layout(0, debris)),
        ("raw-segment", layout(0, raw)),
        // Written with 16 MiB batches allowed, recovered with 1 KiB.
        (
            "batch-too-large",
            layout(
                SMALL_BATCHES,
                written(0, 0, true, |p| {
                    append(p, 0, 2);
                    p.append(Batch::new(vec![7u8; 2000], 1, TS)).unwrap();
                }),
            ),
        ),
        ("empty-directory", layout(0, Vec::new())),
    ];
    (seeds, findings)
}

/// The offset after the last frame of the last segment in `chunks` (from the checkpoint they hold).
fn log_end(chunks: &[Chunk]) -> i64 {
    let c = chunks
        .iter()
        .find(|c| c.kind == ChunkKind::RawCheckpoint)
        .unwrap();
    chronik_wal::checkpoint::decode(&c.content).unwrap()[0].next_offset
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let three = written(SMALL_INDEX_INTERVAL, 0, true, three_segments);
    let segment = three
        .iter()
        .find(|c| c.kind == ChunkKind::ResealedSegment)
        .unwrap();
    let index = three.iter().find(|c| c.kind == ChunkKind::RawIndex).unwrap();
    let checkpoint = three.iter().find(|c| c.kind == ChunkKind::RawCheckpoint).unwrap();
    let first_frame_len =
        FRAME_HEADER_LEN + u32::from_le_bytes(segment.content[8..12].try_into().unwrap()) as usize;
    vec![
        ("frame", segment.content[..first_frame_len].to_vec()),
        (
            "segment-header",
            chronik_wal::segment::encode_segment_header(4).to_vec(),
        ),
        ("index", index.content.clone()),
        ("empty-index", SparseIndex::new(9, 4096).encode()),
        ("checkpoint", checkpoint.content.clone()),
        ("empty-checkpoint", chronik_wal::checkpoint::encode(&[])),
    ]
}

/// Writes `seeds` as `fuzz/corpus/<target>/seed-<name>`, replacing the old `seed-*` files.
fn write_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

/// The generated seeds (and the layouts of the findings) pass the harnesses; with
/// `CHRONIK_WRITE_FUZZ_CORPUS=1` they are also written into `fuzz/`.
#[test]
fn generated_seeds_pass() {
    let (seeds, findings) = recovery_seeds();
    let encoded = |layouts: Vec<Named>| -> Vec<_> {
        layouts
            .into_iter()
            .map(|(name, layout)| (name, layout.encode()))
            .collect()
    };
    let recovery = encoded(seeds);
    let findings = encoded(findings);
    for (name, bytes) in recovery.iter().chain(&findings) {
        eprintln!("checking {name}");
        fuzzing::recovery(bytes).unwrap();
    }
    let frames = frame_seeds();
    for (_, bytes) in &frames {
        fuzzing::decoders(bytes);
    }
    if std::env::var_os("CHRONIK_WRITE_FUZZ_CORPUS").is_some() {
        write_seeds("wal_recovery", &recovery);
        let regressions = fuzz_dir().join("regressions/wal_recovery");
        std::fs::create_dir_all(&regressions).unwrap();
        for (name, bytes) in &findings {
            std::fs::write(regressions.join(name), bytes).unwrap();
        }
        write_seeds("wal_frame", &frames);
    }
}
