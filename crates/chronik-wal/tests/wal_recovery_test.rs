//! Crash recovery over damaged segment files. A partition is written (some batches synced, the last few
//! only written to the page cache), the process "crashes" (the manager is dropped without closing), and the
//! segment file is then cut or bit-flipped before reopening.
//!
//! Must hold: a cut or damaged *tail* (frames no later frame proves durable) is truncated so the log is
//! exactly the longest valid prefix, and appends continue from there; damage to a frame that later frames
//! prove was synced is refused with an error naming the file and byte, never silently dropped; zeroed
//! tails are not frames; missing or corrupt index files are rebuilt.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use chronik_wal::{
    frame::FRAME_HEADER_LEN, segment::SEGMENT_HEADER_LEN, Batch, CheckpointConfig, Durability, Error,
    RotationConfig, TopicPartition, WalConfig, WalManager,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn config() -> WalConfig {
    WalConfig {
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        index_interval_bytes: 256,
        // The fixture damages segment files at byte positions it derives from their length: no
        // preallocated space. `wal_prealloc_test.rs` covers recovery of preallocated segments.
        preallocate_bytes: 0,
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
struct Written {
    pos: u64,
    len: u64,
    base_offset: i64,
    payload: Bytes,
}

struct Fixture {
    dir: tempfile::TempDir,
    tp: TopicPartition,
    segment: PathBuf,
    original: Vec<u8>,
    frames: Vec<Written>,
}

fn payload(i: usize) -> Bytes {
    Bytes::from(
        (0..20 + (i * 7) % 50)
            .map(|j| (i * 13 + j) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// `synced` batches appended with fdatasync, then `unsynced` written to the page cache only, then a crash.
fn build(synced: usize, unsynced: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("r", 0);
    let wal = common::open_wal(dir.path(), config()).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN as u64;
    for i in 0..synced + unsynced {
        let durability = if i < synced {
            Durability::Sync
        } else {
            Durability::Written
        };
        let at = p
            .append_with(Batch::new(payload(i), (i % 3 + 1) as u32, i as i64), durability)
            .unwrap();
        let len = (FRAME_HEADER_LEN + payload(i).len()) as u64;
        frames.push(Written {
            pos,
            len,
            base_offset: at.base_offset,
            payload: payload(i),
        });
        pos += len;
    }
    drop(p);
    drop(wal);
    let segment = dir
        .path()
        .join("partitions")
        .join(tp.dir_name())
        .join(format!("{:020}.wal", 0));
    let original = fs::read(&segment).unwrap();
    assert_eq!(
        original.len() as u64,
        pos,
        "the fixture knows where every frame is"
    );
    Fixture {
        dir,
        tp,
        segment,
        original,
        frames,
    }
}

impl Fixture {
    /// Replaces the segment with `bytes`, drops derived files, and reopens.
    fn reopen_with(&self, bytes: &[u8]) -> WalManager {
        let part = self.segment.parent().unwrap();
        for entry in fs::read_dir(part).unwrap() {
            let path = entry.unwrap().path();
            if path != self.segment {
                fs::remove_file(path).unwrap();
            }
        }
        fs::write(&self.segment, bytes).unwrap();
        common::open_wal(self.dir.path(), config()).unwrap()
    }

    fn next_offset_after(&self, kept: usize) -> i64 {
        self.frames.get(kept).map_or_else(
            || {
                let last = self.frames.last().unwrap();
                last.base_offset + (self.frames.len() as i64 - 1) % 3 + 1
            },
            |f| f.base_offset,
        )
    }

    /// The log holds exactly the first `kept` frames, and a new append lands right after them.
    fn assert_prefix(&self, wal: &WalManager, kept: usize, context: &str) {
        let hw = self.next_offset_after(kept);
        assert_eq!(
            wal.high_watermark(&self.tp).unwrap(),
            hw,
            "{context}: high watermark"
        );
        let got = wal.read(&self.tp, 0, u64::MAX).unwrap();
        assert_eq!(got.len(), kept, "{context}: batches kept");
        for (g, w) in got.iter().zip(&self.frames) {
            assert_eq!(
                (g.base_offset, &g.payload),
                (w.base_offset, &w.payload),
                "{context}: batch content"
            );
        }
        let at = wal.append(&self.tp, Batch::new(&b"after"[..], 1, 0)).unwrap();
        assert_eq!(
            at.base_offset, hw,
            "{context}: appends continue from the valid prefix"
        );
        let back = wal.read(&self.tp, hw, 100).unwrap();
        assert_eq!(
            &back[0].payload[..],
            b"after",
            "{context}: the new append reads back"
        );
    }
}

fn frames_below(frames: &[Written], cut: u64) -> usize {
    frames.iter().take_while(|f| f.pos + f.len <= cut).count()
}

#[test]
fn cut_at_every_byte_of_the_last_frames_keeps_the_longest_valid_prefix() {
    let fx = build(6, 3);
    let from = fx.frames[fx.frames.len() - 4].pos;
    for cut in from..=fx.original.len() as u64 {
        let wal = fx.reopen_with(&fx.original[..cut as usize]);
        let kept = frames_below(&fx.frames, cut);
        let end_of_kept = fx.frames[..kept]
            .last()
            .map_or(SEGMENT_HEADER_LEN as u64, |f| f.pos + f.len);
        assert_eq!(
            wal.recovery_report().stats.truncated_bytes,
            cut - end_of_kept,
            "cut at {cut}"
        );
        fx.assert_prefix(&wal, kept, &format!("cut at {cut}"));
    }
}

#[test]
fn bit_flips_in_unsynced_tail_frames_truncate_at_the_damaged_frame() {
    let fx = build(5, 4);
    let seed: u64 = std::env::var("CHRONIK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    println!("seed {seed} (set CHRONIK_TEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let first_unsynced = 5;
    let from = fx.frames[first_unsynced].pos;
    for round in 0..150 {
        let mut bytes = fx.original.clone();
        let at = rng.gen_range(from..bytes.len() as u64);
        bytes[at as usize] ^= 1 << rng.gen_range(0..8);
        let wal = fx.reopen_with(&bytes);
        let damaged = fx
            .frames
            .iter()
            .position(|f| at >= f.pos && at < f.pos + f.len)
            .unwrap();
        let broken_copy = fx
            .segment
            .parent()
            .unwrap()
            .join(format!("{:020}.wal.{}.broken", 0, fx.frames[damaged].pos));
        assert!(
            broken_copy.exists(),
            "seed {seed} round {round}: the cut bytes are kept for post-mortem"
        );
        fx.assert_prefix(
            &wal,
            damaged,
            &format!("seed {seed} round {round}: flip at byte {at}"),
        );
    }
}

#[test]
fn damage_to_a_frame_later_frames_prove_synced_is_refused_not_truncated() {
    let fx = build(8, 0);
    let victim = &fx.frames[5];
    for at in [victim.pos, victim.pos + 20, victim.pos + victim.len - 1] {
        let mut bytes = fx.original.clone();
        bytes[at as usize] ^= 0x04;
        let wal = fx.reopen_with(&bytes);
        let report = wal.recovery_report();
        assert_eq!(report.corrupt.len(), 1, "flip at {at}: damage is reported");
        assert!(
            report.corrupt[0].1.contains(&format!("at byte {}", victim.pos)),
            "{}",
            report.corrupt[0].1
        );
        assert_eq!(report.stats.truncated_bytes, 0, "nothing acknowledged is cut");
        assert_eq!(
            fs::read(&fx.segment).unwrap().len(),
            fx.original.len(),
            "file left as found"
        );
        // Served up to the damage, refused past it.
        assert_eq!(wal.read(&fx.tp, 0, u64::MAX).unwrap().len(), 5);
        let err = wal.read(&fx.tp, victim.base_offset, 100).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { position, .. } if *position == victim.pos),
            "{err}"
        );
        assert!(
            err.to_string().contains(&fx.segment.display().to_string()),
            "error names the file: {err}"
        );
        assert!(matches!(
            wal.append(&fx.tp, Batch::new(&b"x"[..], 1, 0)),
            Err(Error::Corrupt { .. })
        ));
    }
}

#[test]
fn damage_in_a_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("sealed", 0);
    let cfg = WalConfig {
        rotation: RotationConfig {
            max_segment_size: 4096,
            ..Default::default()
        },
        ..config()
    };
    {
        let wal = common::open_wal(dir.path(), cfg.clone()).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..100 {
            wal.append(&tp, Batch::new(payload(i), 1, 0)).unwrap();
        }
    }
    let part = dir.path().join("partitions").join(tp.dir_name());
    let first = part.join(format!("{:020}.wal", 0));
    let mut bytes = fs::read(&first).unwrap();
    let last_byte = bytes.len() - 1;
    bytes[last_byte] ^= 0x80; // the last frame of a sealed segment: no later frame in it, still refused
    fs::write(&first, &bytes).unwrap();
    let wal = common::open_wal(dir.path(), cfg).unwrap();
    assert_eq!(wal.recovery_report().corrupt.len(), 1);
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 0);
    assert_eq!(fs::read(&first).unwrap(), bytes, "sealed segment untouched");
    assert!(matches!(
        wal.append(&tp, Batch::new(&b"x"[..], 1, 0)),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn zeroed_tail_is_not_a_frame() {
    let fx = build(4, 0);
    let mut bytes = fx.original.clone();
    bytes.extend(std::iter::repeat_n(0u8, 8192));
    let wal = fx.reopen_with(&bytes);
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 8192);
    fx.assert_prefix(&wal, 4, "zeroed tail");
}

#[test]
fn garbage_after_the_last_frame_is_cut() {
    let fx = build(4, 0);
    let mut bytes = fx.original.clone();
    bytes.extend_from_slice(b"CKWF this is not a frame at all, just noise with the right magic");
    let wal = fx.reopen_with(&bytes);
    fx.assert_prefix(&wal, 4, "garbage tail");
}

fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    v.sort();
    v
}

#[test]
fn missing_and_corrupt_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("idx", 0);
    let cfg = WalConfig {
        rotation: RotationConfig {
            max_segment_size: 4096,
            ..Default::default()
        },
        checkpoint: CheckpointConfig {
            enabled: true,
            interval_ms: 3_600_000,
        },
        index_interval_bytes: 200,
        ..Default::default()
    };
    let expected: Vec<_> = {
        let wal = common::open_wal(dir.path(), cfg.clone()).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..200 {
            wal.append(&tp, Batch::new(payload(i), 2, i as i64)).unwrap();
        }
        let all = wal.read(&tp, 0, u64::MAX).unwrap();
        wal.close().unwrap();
        all
    };
    let part = dir.path().join("partitions").join(tp.dir_name());
    let indexes = index_files(&part);
    assert!(indexes.len() >= 4, "sealed segments have index files");
    let original_index = fs::read(&indexes[1]).unwrap();
    fs::remove_file(&indexes[0]).unwrap();
    let mut damaged = original_index.clone();
    damaged[60] ^= 0xff;
    fs::write(&indexes[1], &damaged).unwrap();

    let wal = common::open_wal(dir.path(), cfg).unwrap();
    assert!(wal.recovery_report().stats.indexes_rebuilt >= 1);
    assert_eq!(
        wal.read(&tp, 0, u64::MAX).unwrap(),
        expected,
        "reads are exact after rebuilding"
    );
    for b in &expected {
        assert_eq!(
            wal.read(&tp, b.base_offset + 1, 1).unwrap()[0],
            *b,
            "seek into batch {}",
            b.base_offset
        );
    }
    assert!(indexes[0].exists(), "missing index rewritten");
    assert_eq!(
        fs::read(&indexes[1]).unwrap(),
        original_index,
        "corrupt index rewritten identically"
    );
}
