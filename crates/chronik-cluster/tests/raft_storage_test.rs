//! The Raft log and state machine stores on chronik-wal.
//!
//! Must hold: openraft's own storage conformance suite passes against them (append, read, truncate,
//! purge including past the last entry, vote, committed index, apply, snapshots built and installed);
//! and what openraft's suite never checks, that everything saved survives closing and reopening: the
//! entries, a truncation, a purge (also one past the last entry), the vote, the committed index and the
//! latest snapshot with the state it holds.
#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::Arc};

use chronik_cluster::{
    types::{BrokerInfo, StorageError},
    Command, MetaRaft, StateMachineStore, WalLogStore,
};
use chronik_wal::{
    io::{StdIo, WalIo},
    TopicPartition, WalConfig, WalManager,
};
use openraft::{
    storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine},
    testing::{log_id, StoreBuilder, Suite},
    Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, Vote,
};
use tempfile::TempDir;

fn raft_tp() -> TopicPartition {
    TopicPartition::new("__chronik_raft", 0)
}

/// The stores over a WAL in `dir`, as a broker opens them.
fn open_stores(dir: &Path) -> (Arc<WalManager>, WalLogStore, StateMachineStore) {
    let wal = Arc::new(WalManager::open(dir.join("wal"), WalConfig::default()).unwrap());
    let io: Arc<dyn WalIo> = Arc::new(StdIo);
    let log = WalLogStore::open(
        Arc::clone(&wal),
        raft_tp(),
        Arc::clone(&io),
        dir.join("raft-state"),
    )
    .unwrap();
    let sm = StateMachineStore::open(io, dir.join("raft-snapshot")).unwrap();
    (wal, log, sm)
}

struct Builder;

impl StoreBuilder<MetaRaft, WalLogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, WalLogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let (_wal, log, sm) = open_stores(dir.path());
        Ok((dir, log, sm))
    }
}

type Cases = Suite<MetaRaft, WalLogStore, StateMachineStore, Builder, TempDir>;

/// Runs one case of openraft's suite on fresh stores, in a runtime of its own (as `Suite::test_all`).
macro_rules! suite_cases {
    ($($case:ident),* $(,)?) => {{
        let mut failed = Vec::new();
        $(
            let outcome = tokio::runtime::Runtime::new().unwrap().block_on(async {
                let (_dir, log, sm) = Builder.build().await?;
                Cases::$case(log, sm).await
            });
            if let Err(e) = outcome {
                failed.push(format!("{}: {e}", stringify!($case)));
            }
        )*
        failed
    }};
}

/// openraft's storage suite (the cases of `Suite::test_all`), but for
/// `get_initial_state_membership_from_log_and_sm`, which appends entry 1 over entries 1 to 3 without a
/// truncation first. openraft's core never does (it truncates a conflicting suffix before appending),
/// and this store refuses it: in the WAL entry `i` is the batch at offset `i`, so an append must
/// continue the log.
#[test]
fn openraft_storage_suite() {
    let failed = suite_cases!(
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_membership_from_empty_log_and_sm,
        get_initial_state_without_init,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
        get_initial_state_re_apply_committed,
    );
    assert!(failed.is_empty(), "{failed:#?}");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Cases::transfer_snapshot(&Builder))
        .unwrap();
}

fn command_entry(term: u64, index: u64, broker: u64) -> Entry<MetaRaft> {
    Entry {
        log_id: log_id(term, 0, index),
        payload: EntryPayload::Normal(Command::RegisterBroker(BrokerInfo {
            id: broker,
            kafka_address: format!("127.0.0.1:{}", 9092 + broker),
            controller_address: format!("127.0.0.1:{}", 9093 + broker),
            incarnation: 0,
        })),
    }
}

async fn indexes(log: &mut WalLogStore) -> Vec<(u64, u64)> {
    log.try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_log_store_saved_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, mut log, _sm) = open_stores(dir.path());
        log.blocking_append((0..10).map(|i| command_entry(1, i, i)))
            .await
            .unwrap();
        // A new leader's entries replace the tail from 6 on.
        log.truncate(log_id(1, 0, 6)).await.unwrap();
        log.blocking_append((6..8).map(|i| command_entry(2, i, i)))
            .await
            .unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 0, 7))).await.unwrap();
        log.purge(log_id(1, 0, 2)).await.unwrap();
        if let Some(wal) = Arc::into_inner(wal) {
            wal.close().unwrap();
        }
    }
    let (_wal, mut log, _sm) = open_stores(dir.path());
    let expected: Vec<(u64, u64)> = (3..6).map(|i| (1, i)).chain((6..8).map(|i| (2, i))).collect();
    assert_eq!(indexes(&mut log).await, expected);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 0, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 0, 7)));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 0, 7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_past_the_last_entry_restarts_the_log_after_it_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, mut log, _sm) = open_stores(dir.path());
        log.blocking_append((0..3).map(|i| command_entry(1, i, i)))
            .await
            .unwrap();
        // As after installing a snapshot that covers more than this log holds.
        log.purge(log_id(3, 0, 20)).await.unwrap();
        if let Some(wal) = Arc::into_inner(wal) {
            wal.close().unwrap();
        }
    }
    let (_wal, mut log, _sm) = open_stores(dir.path());
    assert!(indexes(&mut log).await.is_empty());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(3, 0, 20)));
    log.blocking_append([command_entry(3, 21, 1)]).await.unwrap();
    assert_eq!(indexes(&mut log).await, vec![(3, 21)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_reopens_at_its_last_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let built = {
        let (wal, _log, mut sm) = open_stores(dir.path());
        let results = sm.apply((0..3).map(|i| command_entry(1, i, i))).await.unwrap();
        assert_eq!(results.len(), 3);
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        // Applied after the snapshot: not in it, and Raft applies it again after a restart.
        sm.apply([command_entry(1, 3, 3)]).await.unwrap();
        assert_eq!(sm.state().brokers.len(), 4);
        if let Some(wal) = Arc::into_inner(wal) {
            wal.close().unwrap();
        }
        snapshot.meta
    };
    let (_wal, _log, mut sm) = open_stores(dir.path());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 0, 2)));
    assert_eq!(
        sm.state().brokers.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built);
}
