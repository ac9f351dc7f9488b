//! The durable append path does not allocate per append in steady state: a counting allocator (per
//! thread, so only the appending thread's own allocations count) sees almost none over a run of synced
//! appends from one writer once buffers and the group are recycled. What is left is the segment's
//! in-memory index growing by doubling (an entry per `index_interval_bytes`): a few reallocations per
//! segment, not one per append.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::Arc,
};

use bytes::Bytes;
use chronik_wal::{AppendResult, Batch, Durability, PartitionWal, TopicPartition, WalConfig, WalManager};

struct ThreadCountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the slot is gone while the thread tears down; such allocations are not ours to count.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

#[allow(
    unsafe_code,
    reason = "a GlobalAlloc impl is unsafe by definition; it only forwards to System"
)]
// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counter is a const-initialized thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for ThreadCountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` through this allocator; the caller guarantees `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: ThreadCountingAlloc = ThreadCountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A WAL with one partition; the directory and manager must outlive the partition's use.
fn one_partition() -> (tempfile::TempDir, WalManager, Arc<PartitionWal>) {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), WalConfig::default()).unwrap();
    let partition = wal.create_partition(&TopicPartition::new("t", 0)).unwrap();
    (dir, wal, partition)
}

/// One synced append of `payload` (a clone of `Bytes`, which does not allocate).
fn synced_append(partition: &PartitionWal, payload: &Bytes) -> AppendResult {
    partition
        .append_with(
            Batch::new(payload.clone(), 1, 1_700_000_000_000),
            Durability::Sync,
        )
        .unwrap()
}

#[test]
fn synced_appends_from_one_writer_do_not_allocate_in_steady_state() {
    let (_dir, _wal, partition) = one_partition();
    let payload = Bytes::from(vec![7u8; 1024]);
    let append = || synced_append(&partition, &payload);
    // Warm up: buffers grow to size, the index reserves room, metrics register their handles.
    for _ in 0..200 {
        append();
    }
    const APPENDS: u64 = 1000;
    let before = allocations();
    let mut last = 0;
    for _ in 0..APPENDS {
        last = append().last_offset;
    }
    let allocated = allocations() - before;
    assert_eq!(last, 1199, "every append landed");
    // One per group commit (the group's `Arc`) would be 1000; the index's doublings are about log2(250).
    assert!(
        allocated <= APPENDS / 100,
        "{allocated} allocations over {APPENDS} synced appends ({:.3} per append)",
        allocated as f64 / APPENDS as f64
    );
}

#[test]
fn synced_appends_from_many_writers_do_not_allocate_in_steady_state() {
    const WRITERS: u64 = 8;
    const WARM_UP: u64 = 200;
    const APPENDS: u64 = 500;
    let (_dir, _wal, partition) = one_partition();
    let payload = Bytes::from(vec![7u8; 1024]);
    let warmed_up = std::sync::Barrier::new(WRITERS as usize);
    // Each writer counts its own thread's allocations, which include the group commits it led.
    let allocated: u64 = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| {
                    let append = || synced_append(&partition, &payload);
                    for _ in 0..WARM_UP {
                        append();
                    }
                    warmed_up.wait();
                    let before = allocations();
                    for _ in 0..APPENDS {
                        append();
                    }
                    allocations() - before
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let appends = WRITERS * APPENDS;
    assert_eq!(partition.high_watermark() as u64, WRITERS * (WARM_UP + APPENDS));
    // A fresh group per group commit would be at least one allocation per 8 appends (a group holds at
    // most one append per writer): 500 here. A group's waiters may still be waking when the next one is
    // led, which idle groups absorb; on an oversubscribed machine (2 cores, other tests running) more
    // groups are in flight at once and a few dozen get made.
    assert!(
        allocated <= appends / 50,
        "{allocated} allocations over {appends} synced appends from {WRITERS} writers ({:.3} per append)",
        allocated as f64 / appends as f64
    );
}
