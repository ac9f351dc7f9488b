//! The metadata state machine without Raft or processes, driven by seeded random command sequences.
//!
//! Must hold: applying is deterministic (the same entries give the same state and results, on any node);
//! a snapshot taken at any point, reopened from its file, plus the entries after it gives exactly the
//! state of applying everything (what a restart or a follower installing a snapshot relies on); the
//! refusals (a topic that exists, one that does not, a partition without replicas) are results, the
//! same everywhere; after every command a partition's leader is a live member of its ISR, the ISR is a
//! non-empty subset of the replicas, the leader epoch grows by one exactly when the leader changes or
//! restarts, the partition epoch by one at every change to the partition, an ISR change lands only
//! when proposed by the leader against the current epochs, and producer id blocks never overlap.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chronik_cluster::{types::BrokerInfo, Command, CommandResult, MetadataState, StateMachineStore};
use chronik_wal::io::{StdIo, WalIo};
use openraft::{storage::RaftStateMachine, testing::log_id, Entry, EntryPayload, RaftSnapshotBuilder};
use rand::{rngs::StdRng, Rng, SeedableRng};

const SEEDS: u64 = 200;

fn random_replicas(rng: &mut StdRng, partitions: usize) -> Vec<Vec<u64>> {
    (0..partitions)
        .map(|_| (0..rng.gen_range(0..4)).map(|_| rng.gen_range(0..5)).collect())
        .collect()
}

/// A random command for `state`: mostly plausible (an ISR change from a partition's leader, with its
/// epochs), sometimes stale or absurd.
fn random_command(rng: &mut StdRng, state: &MetadataState) -> Command {
    let name = format!("t{}", rng.gen_range(0..6));
    match rng.gen_range(0..24) {
        0..=3 => {
            let id = rng.gen_range(0..5);
            Command::RegisterBroker(BrokerInfo {
                id,
                kafka_address: format!("10.0.0.{id}:{}", rng.gen_range(9092..9100)),
                controller_address: format!("10.0.0.{id}:9093"),
                // Sometimes a restart.
                incarnation: rng.gen_range(0..2),
            })
        }
        20..=23 => {
            let topic = state
                .topics
                .keys()
                .nth(rng.gen_range(0..state.topics.len().max(1)));
            let topic = topic.cloned().unwrap_or(name);
            let partitions = state.topics.get(&topic).map_or(1, |t| t.partitions.len().max(1));
            let partition = rng.gen_range(0..partitions as u32 + 1);
            let current = state
                .topics
                .get(&topic)
                .and_then(|t| t.partitions.get(partition as usize));
            let (leader, leader_epoch, partition_epoch, replicas) = current.map_or((0, 0, 0, vec![0]), |p| {
                (
                    p.leader.unwrap_or(0),
                    p.leader_epoch,
                    p.partition_epoch,
                    p.replicas.clone(),
                )
            });
            let mut isr: Vec<u64> = replicas.into_iter().filter(|_| rng.gen_bool(0.6)).collect();
            if rng.gen_bool(0.9) && !isr.contains(&leader) {
                isr.push(leader);
            }
            Command::AlterPartition {
                topic,
                partition,
                leader: if rng.gen_bool(0.9) {
                    leader
                } else {
                    rng.gen_range(0..5)
                },
                leader_epoch: leader_epoch - i32::from(rng.gen_bool(0.1)),
                partition_epoch: partition_epoch - i32::from(rng.gen_bool(0.2)),
                isr,
            }
        }
        4..=6 => Command::FenceBroker {
            id: rng.gen_range(0..5),
        },
        7..=10 => {
            let partitions = rng.gen_range(0..4);
            Command::CreateTopic {
                name,
                topic_id: rng.gen(),
                replicas: random_replicas(rng, partitions),
                configs: BTreeMap::from([("retention.ms".to_string(), rng.gen_range(1..100).to_string())]),
            }
        }
        11..=12 => {
            let partitions = rng.gen_range(0..3);
            Command::AddPartitions {
                name,
                replicas: random_replicas(rng, partitions),
                // Sometimes a stale count, as a retried proposal carries: refused.
                from: rng.gen_bool(0.5).then(|| rng.gen_range(0..4)),
            }
        }
        13 => Command::SetConfigs {
            name,
            configs: BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]),
        },
        14..=15 => Command::AllocateProducerIds {
            count: rng.gen_range(-1..2000),
        },
        16 => Command::SetClusterId {
            cluster_id: format!("c{}", rng.gen_range(0..2)),
        },
        _ => Command::DeleteTopic { name },
    }
}

/// The invariants `MetadataState` documents, checked after every command; `before` is the state the
/// command was applied to, `result` what applying it answered.
fn check_invariants(
    before: &MetadataState,
    after: &MetadataState,
    command: &Command,
    result: &CommandResult,
    seed: u64,
    step: usize,
) {
    let at = format!("seed {seed}, step {step}");
    let restarted = match command {
        Command::RegisterBroker(b) => before
            .brokers
            .get(&b.id)
            .is_some_and(|known| known.incarnation != b.incarnation)
            .then_some(b.id),
        _ => None,
    };
    for (name, t) in &after.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let replicas: BTreeSet<u64> = p.replicas.iter().copied().collect();
            assert!(
                !p.replicas.is_empty() && replicas.len() == p.replicas.len(),
                "{at}: {name}-{i} replicas {p:?}"
            );
            assert!(
                !p.isr.is_empty() && p.isr.iter().all(|b| replicas.contains(b)),
                "{at}: {name}-{i} ISR {p:?}"
            );
            if let Some(l) = p.leader {
                assert!(
                    p.isr.contains(&l) && after.is_live(l),
                    "{at}: {name}-{i} leader {l} not a live ISR member"
                );
            }
            let old = before
                .topics
                .get(name)
                .filter(|o| o.topic_id == t.topic_id)
                .and_then(|o| o.partitions.get(i));
            if let Some(old) = old {
                let new_epoch = old.leader != p.leader || (p.leader.is_some() && p.leader == restarted);
                assert_eq!(
                    p.leader_epoch,
                    old.leader_epoch + i32::from(new_epoch),
                    "{at}: {name}-{i} epoch {old:?} -> {p:?}"
                );
                let changed = old != p;
                assert_eq!(
                    p.partition_epoch,
                    old.partition_epoch + i32::from(changed),
                    "{at}: {name}-{i} partition epoch {old:?} -> {p:?}"
                );
                if old.isr != p.isr && !matches!(command, Command::FenceBroker { .. }) {
                    // Only the leader's change, against the epochs it saw, moves the ISR otherwise.
                    let Command::AlterPartition {
                        leader,
                        leader_epoch,
                        partition_epoch,
                        isr,
                        ..
                    } = command
                    else {
                        panic!("{at}: {name}-{i} ISR changed by {command:?}");
                    };
                    assert_eq!(result, &CommandResult::Applied, "{at}");
                    assert_eq!(
                        (Some(*leader), *leader_epoch, *partition_epoch, isr),
                        (old.leader, old.leader_epoch, old.partition_epoch, &p.isr),
                        "{at}"
                    );
                }
            }
        }
    }
    assert!(after.producer_ids_end >= before.producer_ids_end, "{at}");
}

/// `n` commands, each drawn against the state the ones before it make.
fn script(rng: &mut StdRng, n: usize) -> Vec<Command> {
    let mut state = MetadataState::default();
    (0..n)
        .map(|_| {
            let c = random_command(rng, &state);
            state.apply(&c);
            c
        })
        .collect()
}

fn entries(commands: &[Command], from: u64) -> Vec<Entry<chronik_cluster::MetaRaft>> {
    commands
        .iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: log_id(1, 1, from + i as u64),
            payload: EntryPayload::Normal(c.clone()),
        })
        .collect()
}

#[test]
fn applying_is_deterministic_and_refusals_are_results() {
    let mut isr_changes = 0;
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(1..80);
        let commands = script(&mut rng, n);
        let mut a = MetadataState::default();
        let mut b = MetadataState::default();
        let mut handed_out: Vec<(i64, i64)> = Vec::new();
        for (step, c) in commands.iter().enumerate() {
            let before = a.clone();
            let (ra, rb) = (a.apply(c), b.apply(c));
            assert_eq!(ra, rb, "seed {seed}");
            check_invariants(&before, &a, c, &ra, seed, step);
            isr_changes +=
                usize::from(matches!(c, Command::AlterPartition { .. }) && ra == CommandResult::Applied);
            match &ra {
                CommandResult::ProducerIds { start, end } => {
                    assert!(
                        handed_out.last().is_none_or(|&(_, e)| e <= *start) && start < end,
                        "seed {seed}"
                    );
                    handed_out.push((*start, *end));
                }
                // The refusals are exactly these.
                CommandResult::Refused(why) => match c {
                    Command::CreateTopic { .. } | Command::AddPartitions { .. } => assert!(
                        [
                            "exists",
                            "replica",
                            "no partitions",
                            "no topic",
                            "twice",
                            "partitions, not"
                        ]
                        .iter()
                        .any(|w| why.contains(w)),
                        "{why}"
                    ),
                    Command::DeleteTopic { .. } | Command::SetConfigs { .. } => {
                        assert!(why.contains("no topic"), "{why}")
                    }
                    Command::FenceBroker { .. } => assert!(why.contains("no broker"), "{why}"),
                    Command::AllocateProducerIds { count } => assert!(*count <= 0, "{why}"),
                    Command::SetClusterId { .. } => assert!(why.contains("the cluster is"), "{why}"),
                    Command::RegisterBroker(_) => panic!("registration refused: {why}"),
                    Command::AlterPartition { .. } => assert!(
                        [
                            "no partition",
                            "does not lead",
                            "partition epoch",
                            "live replicas"
                        ]
                        .iter()
                        .any(|w| why.contains(w)),
                        "{why}"
                    ),
                },
                _ => {}
            }
        }
        assert_eq!(a, b, "seed {seed}");
    }
    // The ISR checks above mean something only if changes land.
    assert!(isr_changes > 50, "only {isr_changes} ISR changes applied");
}

#[test]
fn a_snapshot_at_any_point_plus_the_rest_of_the_log_gives_the_same_state() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(1..60);
        let commands = script(&mut rng, n);
        let cut = rng.gen_range(0..=commands.len());
        let dir = tempfile::tempdir().unwrap();
        let io: Arc<dyn WalIo> = Arc::new(StdIo);
        let path = dir.path().join("raft-snapshot");
        runtime.block_on(async {
            let mut whole = MetadataState::default();
            for c in &commands {
                whole.apply(c);
            }
            let mut sm = StateMachineStore::open(Arc::clone(&io), &path).unwrap();
            sm.apply(entries(&commands[..cut], 0)).await.unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            // A restart: only the snapshot file is left; Raft re-applies the entries after it.
            let mut reopened = StateMachineStore::open(Arc::clone(&io), &path).unwrap();
            let (applied, _) = reopened.applied_state().await.unwrap();
            assert_eq!(
                applied.map(|l| l.index + 1).unwrap_or(0),
                cut as u64,
                "seed {seed}"
            );
            reopened
                .apply(entries(&commands[cut..], cut as u64))
                .await
                .unwrap();
            assert_eq!(reopened.state(), whole, "seed {seed}, snapshot after {cut}");
            // A follower installing the snapshot gets the same.
            let snapshot = sm.get_current_snapshot().await.unwrap().unwrap();
            let other_dir = tempfile::tempdir().unwrap();
            let mut follower = StateMachineStore::open(Arc::clone(&io), other_dir.path().join("s")).unwrap();
            follower
                .install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            follower
                .apply(entries(&commands[cut..], cut as u64))
                .await
                .unwrap();
            assert_eq!(follower.state(), whole, "seed {seed}, installed after {cut}");
        });
    }
}
