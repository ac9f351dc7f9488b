//! The allocations of the WAL's read path (`PartitionWal::read`), measured once after the scenarios.

use chronik_wal::{Batch, IoBackend, SyncPolicy, TopicPartition, WalConfig, WalManager};

use crate::{common::AllocCount, random_payload, Settings, BATCH_TIMESTAMP_MS};

/// Allocations of `PartitionWal::read` over a log of 1 KiB batches, one reading pattern.
pub struct ReadAllocations {
    pub pattern: &'static str,
    pub max_bytes: u64,
    pub calls: u64,
    pub batches: u64,
    pub allocs_per_call: f64,
    pub alloc_bytes_per_call: f64,
}

impl ReadAllocations {
    pub fn allocs_per_batch(&self) -> f64 {
        self.allocs_per_call * self.calls as f64 / self.batches as f64
    }
}

/// Appends a log of 1 KiB batches (page cache only: durability does not change the read path), then
/// reads it all back, one batch per call and 1 MiB per call, counting the allocations of the reads.
pub fn read_path_allocations(settings: &Settings) -> Vec<ReadAllocations> {
    let batches: i64 = if settings.quick { 1_000 } else { 20_000 };
    let dir = tempfile::Builder::new()
        .prefix("append-reads-")
        .tempdir_in(&settings.tmp_root)
        .expect("create a run directory");
    let config = WalConfig {
        sync_policy: SyncPolicy::Never,
        io_backend: IoBackend::Std,
        ..WalConfig::default()
    };
    let wal = WalManager::open(dir.path(), config).expect("open the WAL");
    let partition = wal
        .create_partition(&TopicPartition::new("reads", 0))
        .expect("create a WAL partition");
    let payload = random_payload(1 << 10);
    for _ in 0..batches {
        let batch = Batch::new(payload.clone(), 1, BATCH_TIMESTAMP_MS);
        partition.append(batch).expect("WAL append");
    }
    let patterns = [("one batch per call", 1u64), ("1 MiB per call", 1 << 20)];
    let results = patterns
        .into_iter()
        .map(|(pattern, max_bytes)| {
            let (mut calls, mut read) = (0u64, 0u64);
            let mut next = 0i64;
            let before = AllocCount::now();
            while next < batches {
                let got = partition.read(next, max_bytes).expect("WAL read");
                let last = got
                    .last()
                    .expect("a read below the high watermark returns a batch");
                next = last.last_offset() + 1;
                read += got.len() as u64;
                calls += 1;
            }
            let (allocs_per_call, alloc_bytes_per_call) = AllocCount::now().per_op_since(before, calls);
            assert_eq!(read, batches as u64, "the reads returned every batch once");
            ReadAllocations {
                pattern,
                max_bytes,
                calls,
                batches: read,
                allocs_per_call,
                alloc_bytes_per_call,
            }
        })
        .collect();
    drop(partition);
    wal.close().expect("close the WAL");
    results
}
