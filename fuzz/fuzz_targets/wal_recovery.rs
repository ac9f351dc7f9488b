//! Recovery over arbitrary segment bytes: the input (after a valid segment header, when its first byte is
//! even) is the only segment of one partition. Opening must not panic; whatever recovery keeps must read
//! back densely; and recovering the recovered directory again must keep exactly the same log.
#![no_main]

use std::{path::Path, sync::Arc};

use chronik_wal::{
    io::{OpenMode, SimIo, WalIo},
    segment::{encode_segment_header, segment_file_name},
    CheckpointConfig, TopicPartition, WalConfig, WalManager,
};
use libfuzzer_sys::fuzz_target;

fn config() -> WalConfig {
    WalConfig {
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

const ROOT: &str = "/fuzz";

/// (high watermark, every batch as (base offset, payload)) or None if the partition was refused.
fn snapshot(sim: &SimIo, tp: &TopicPartition) -> Option<(i64, Vec<(i64, Vec<u8>)>)> {
    let wal = WalManager::open_with_io(ROOT, config(), Arc::new(sim.clone())).ok()?;
    let p = wal.partition(tp)?;
    let hw = p.high_watermark();
    let mut out = Vec::new();
    let mut next = p.log_start_offset();
    while next < hw {
        let Ok(batches) = p.read(next, 1 << 20) else { break };
        let Some(last) = batches.last() else { break };
        let end = last.next_offset();
        for b in batches {
            assert!(b.base_offset >= next || out.is_empty(), "offsets go backwards");
            out.push((b.base_offset, b.payload.to_vec()));
        }
        assert!(end > next, "read made no progress");
        next = end;
    }
    drop(p);
    wal.close().ok()?;
    Some((hw, out))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    // In memory (the simulated disk, with nothing to lose: every write is synced), so runs are fast.
    let sim = SimIo::new(0);
    let tp = TopicPartition::new("fuzz", 0);
    let pdir = Path::new(ROOT).join("partitions").join(tp.dir_name());
    sim.create_dir_all_durable(&pdir).expect("mkdir");
    let mut segment = Vec::new();
    if mode % 2 == 0 {
        segment.extend_from_slice(&encode_segment_header(0));
    }
    segment.extend_from_slice(body);
    let file = sim
        .open(&pdir.join(segment_file_name(0)), OpenMode::CreateNew)
        .expect("create");
    file.write_all_at(&segment, 0).expect("write");
    file.sync_data().expect("sync");
    sim.sync_dir(&pdir).expect("sync dir");
    drop(file);

    let first = snapshot(&sim, &tp);
    let second = snapshot(&sim, &tp);
    assert_eq!(first, second, "recovering a recovered log changed it");
});
