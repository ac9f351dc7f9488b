//! Structured logs: with `--log-format json` every stderr line is a JSON object, and WAL events carry their
//! fields (topic, partition, offsets, bytes) rather than prose; the startup line names version, addresses,
//! data dir and the recovery summary.
#![allow(clippy::unwrap_used)]

mod common;

use chronik_wal::{Batch, TopicPartition, WalConfig, WalManager};
use common::Broker;

#[test]
fn json_logs_carry_structured_wal_fields() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = WalManager::open(dir.path(), WalConfig::default()).unwrap();
        let tp = TopicPartition::new("logged", 2);
        wal.create_partition(&tp).unwrap();
        for i in 0..7 {
            wal.append(&tp, Batch::new(vec![1u8; 10], 1, i)).unwrap();
        }
        wal.close().unwrap();
    }
    let broker = Broker::start(dir.path(), &[], &[]);
    let lines: Vec<serde_json::Value> = broker
        .startup_lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    drop(broker);
    let fields = |message: &str| {
        lines
            .iter()
            .map(|l| &l["fields"])
            .find(|f| f["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"))
            .clone()
    };
    let recovered = lines
        .iter()
        .map(|l| &l["fields"])
        .find(|f| f["message"] == "WAL recovered partition" && f["topic"] == "logged")
        .unwrap_or_else(|| panic!("no recovery line for the topic in {lines:?}"));
    assert_eq!(recovered["partition"], 2);
    assert_eq!(recovered["next_offset"], 7);
    let started = fields("chronik started");
    for key in [
        "version",
        "listen",
        "advertised",
        "data_dir",
        "partitions",
        "recovered_bytes",
        "truncated_bytes",
    ] {
        assert!(!started[key].is_null(), "startup line lacks {key}: {started}");
    }
    let finished = fields("WAL recovery finished");
    assert_eq!(finished["truncated_bytes"], 0);
}
