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

#[test]
fn dump_lists_frames_and_decodes_kafka_batches() {
    use chronik_wal::AppendOptions;
    use kafka_protocol::{
        protocol::StrBytes,
        records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
    };
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("dumped", 0);
    {
        // The file must end at the last frame, so that cutting its end tears that frame.
        let config = WalConfig {
            preallocate_bytes: 0,
            ..Default::default()
        };
        let wal = WalManager::open(dir.path(), config).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        for batch_no in 0..3i64 {
            let records: Vec<Record> = (0..2i64)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i,
                    // Consecutive sequences keep the encoder from cutting the records into two batches.
                    sequence: i as i32,
                    timestamp: 1_000 + batch_no,
                    key: Some(bytes::Bytes::from(format!("k{batch_no}-{i}"))),
                    value: Some(bytes::Bytes::from(format!("v{batch_no}-{i}"))),
                    headers: [(
                        StrBytes::from_static_str("h"),
                        Some(bytes::Bytes::from_static(b"x")),
                    )]
                    .into_iter()
                    .collect(),
                })
                .collect();
            let mut buf = bytes::BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::Gzip,
            };
            RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
            let batch = Batch {
                payload: buf.freeze(),
                record_count: 2,
                first_timestamp: 1_000,
                max_timestamp: 1_000,
            };
            p.append_with_options(
                batch,
                AppendOptions {
                    base_offset_at: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        wal.close().unwrap();
    }
    let segment = dir.path().join("partitions/dumped-0/00000000000000000000.wal");
    let (code, out) = chronik(&["wal", "dump", "--payload", "--from-offset", "2"], &segment);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("offsets 0..=1"),
        "frames before --from-offset are skipped: {out}"
    );
    assert!(
        out.contains("offsets 2..=3 records 2") && out.contains("offsets 4..=5"),
        "{out}"
    );
    assert!(
        out.contains("| offset 5 ts 1002 key k2-1 value v2-1 headers [h=x]"),
        "records decoded with their offsets: {out}"
    );
    assert!(out.trim_end().ends_with("2 frames"), "{out}");

    let mut bytes = std::fs::read(&segment).unwrap();
    let len = bytes.len();
    bytes.truncate(len - 3);
    std::fs::write(&segment, &bytes).unwrap();
    let (code, out) = chronik(&["wal", "dump"], &segment);
    assert_eq!(code, 1, "a torn last frame is reported: {out}");
    assert!(
        out.contains("frame needs") && out.contains("(after 2 valid frames)"),
        "{out}"
    );
}

#[test]
fn dump_shows_the_json_of_internal_logs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = WalManager::open(dir.path(), WalConfig::default()).unwrap();
        let tp = TopicPartition::new("__chronik_raft", 0);
        wal.create_partition(&tp).unwrap();
        let entry = br#"{"log_id":{"leader_id":{"term":1,"node_id":0},"index":0},"payload":"Blank"}"#;
        wal.append(&tp, Batch::new(&entry[..], 1, 7)).unwrap();
        wal.close().unwrap();
    }
    let segment = dir
        .path()
        .join("partitions/__chronik_raft-0/00000000000000000000.wal");
    let (code, out) = chronik(&["wal", "dump", "--payload"], &segment);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#"| json {"log_id":{"index":0,"leader_id":{"node_id":0,"term":1}},"payload":"Blank"}"#),
        "{out}"
    );
}

/// `chronik wal compare`: two copies written with different segment sizes agree batch by batch; a
/// batch that differs is named with its offsets, and exits 1; `--up-to` below it agrees, past it not.
#[test]
fn compare_finds_where_two_copies_differ() {
    let write = |dir: &std::path::Path, segment: u64, last: &[u8]| {
        let config = WalConfig {
            rotation: RotationConfig {
                max_segment_size: segment,
                ..Default::default()
            },
            ..Default::default()
        };
        let wal = WalManager::open(dir, config).unwrap();
        let tp = TopicPartition::new("orders", 0);
        wal.create_partition(&tp).unwrap();
        for i in 0..40 {
            let payload = format!("batch {i} {}", "y".repeat(300)).into_bytes();
            wal.append(&tp, Batch::new(payload, 2, 1_000 + i)).unwrap();
        }
        wal.append(&tp, Batch::new(last.to_vec(), 2, 2_000)).unwrap();
        wal.close().unwrap();
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), 4096, b"last");
    write(b.path(), 64 << 10, b"other");
    let compare = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args(["wal", "compare"])
            .arg(a.path())
            .arg(b.path())
            .arg("orders-0")
            .args(extra)
            .output()
            .unwrap();
        (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = compare(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("copies agree on offsets 0..80 (40 batches)"),
        "{out}"
    );
    assert!(
        out.contains("copies differ after 80: A has offsets 80..82"),
        "{out}"
    );
    let (code, out) = compare(&["--up-to", "80"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = compare(&["--up-to", "100"]);
    assert_eq!(code, 1, "{out}");
}
