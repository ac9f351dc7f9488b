//! `chronik wal inspect` and `chronik wal verify` on a WAL written by the engine: a clean directory
//! verifies with exit 0 and inspect lists its segments; a flipped byte makes verify exit 1 naming the file,
//! the byte position and the problem. Neither command modifies the directory.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use chronik_wal::{Batch, RotationConfig, TopicPartition, WalConfig, WalManager};

fn chronik(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn verify_and_inspect_report_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("tool", 0);
    {
        let config = WalConfig {
            rotation: RotationConfig {
                max_segment_size: 8192,
                ..Default::default()
            },
            ..Default::default()
        };
        let wal = WalManager::open(dir.path(), config).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..40 {
            wal.append(&tp, Batch::new(vec![i as u8; 700], 2, i64::from(i)))
                .unwrap();
        }
        wal.close().unwrap();
    }
    let (code, out) = chronik(&["wal", "verify"], dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 partitions") && out.contains("40 frames: clean"),
        "{out}"
    );

    let (code, out) = chronik(&["wal", "inspect", "--json"], dir.path());
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 4, "several segments: {out}");
    assert!(
        lines[0].contains("\"first_offset\":0") && lines[0].contains("\"problem\":null"),
        "{}",
        lines[0]
    );
    assert!(
        lines.last().unwrap().contains("\"next_offset\":80"),
        "80 offsets in all: {out}"
    );

    // Flip a byte in the payload of the second frame of the first segment.
    let segment = dir.path().join("partitions/tool-0/00000000000000000000.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    let second_frame = 32 + 56 + 700;
    bytes[second_frame + 56 + 10] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (code, out) = chronik(&["wal", "verify"], dir.path());
    assert_eq!(code, 1, "{out}");
    let expected = format!("{}: {second_frame}: payload checksum mismatch", segment.display());
    assert!(out.contains(&expected), "expected {expected:?} in {out}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "verify changed nothing");
}
