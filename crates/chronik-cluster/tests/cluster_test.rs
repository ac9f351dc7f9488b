//! Controller nodes in one process, talking Raft over real TCP on 127.0.0.1, each on a WAL of its own.
//!
//! Must hold: three voters elect one leader, every broker registers itself by heartbeating it, and all
//! apply the same metadata whichever node a change goes through (a follower forwards it to the leader
//! and answers once it has applied it too); a broker that stops heartbeating is fenced (the partitions
//! it led lose their leader, epoch bumped) and leads them again when it returns; when the leader stops,
//! the other two elect a new one and keep taking changes; a stopped node, restarted on its own files,
//! catches up; a cluster restarted as a whole comes back with everything it had applied; a node that is
//! not among the voters, or whose data belongs to a quorum other than the one configured, refuses to
//! start.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use chronik_cluster::{place, Command, CommandResult, MetaNode, MetadataState, NodeConfig, StartError};
use chronik_wal::{
    io::{StdIo, WalIo},
    WalConfig, WalManager,
};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(30);

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    voters: BTreeMap<u64, String>,
    /// Bound before any node starts, so that every node knows all the addresses; a node restarted later
    /// binds its address again.
    listeners: BTreeMap<u64, std::net::TcpListener>,
    nodes: BTreeMap<u64, MetaNode>,
}

fn kafka_address(id: u64) -> String {
    format!("broker-{id}.example:9092")
}

fn config(id: u64, voters: &BTreeMap<u64, String>) -> NodeConfig {
    NodeConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
        session_timeout: Duration::from_millis(1000),
        ..NodeConfig::new(id, voters.clone(), kafka_address(id))
    }
}

async fn start_node(
    id: u64,
    dir: &Path,
    voters: &BTreeMap<u64, String>,
    bound: Option<std::net::TcpListener>,
) -> Result<MetaNode, StartError> {
    let listener = match bound {
        Some(l) => {
            l.set_nonblocking(true).unwrap();
            TcpListener::from_std(l).unwrap()
        }
        None => TcpListener::bind(&voters[&id]).await.unwrap(),
    };
    let wal = Arc::new(WalManager::open(dir.join("wal"), WalConfig::default()).unwrap());
    let io: Arc<dyn WalIo> = Arc::new(StdIo);
    MetaNode::start(config(id, voters), wal, io, dir, Some(listener)).await
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        let mut voters = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            voters.insert(id, l.local_addr().unwrap().to_string());
            listeners.insert(id, l);
        }
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = Cluster {
            dirs,
            voters,
            listeners,
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.restart(id).await;
        }
        cluster
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.dirs[(id - 1) as usize].path().to_path_buf()
    }

    async fn restart(&mut self, id: u64) {
        let bound = self.listeners.remove(&id);
        let node = start_node(id, &self.dir(id), &self.voters, bound).await.unwrap();
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// The leader every running node agrees on.
    async fn leader(&self) -> u64 {
        let started = Instant::now();
        loop {
            let seen: Vec<Option<u64>> = self.nodes.values().map(MetaNode::leader).collect();
            if let Some(Some(l)) = seen.first() {
                if self.nodes.contains_key(l) && seen.iter().all(|s| s == &Some(*l)) {
                    return *l;
                }
            }
            assert!(started.elapsed() < DEADLINE, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits through `via` (forwarded to the leader if `via` is not it).
    async fn submit(&self, via: u64, command: Command) -> CommandResult {
        self.nodes[&via].submit(command, DEADLINE).await.unwrap()
    }

    /// Waits until every running node holds the same metadata, and `what` holds of it; returns it.
    async fn until(&self, what: &str, holds: impl Fn(&MetadataState) -> bool) -> MetadataState {
        let started = Instant::now();
        loop {
            let states: Vec<_> = self.nodes.values().map(MetaNode::state).collect();
            if states.windows(2).all(|w| w[0] == w[1]) && holds(&states[0]) {
                return states[0].clone();
            }
            assert!(started.elapsed() < DEADLINE, "never {what}: {states:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn topic(name: &str, replicas: Vec<Vec<u64>>) -> Command {
    Command::CreateTopic {
        name: name.into(),
        topic_id: [7; 16],
        replicas,
        configs: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_agree_fence_fail_over_and_catch_up() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    // Every broker registers itself by heartbeating the leader.
    let state = cluster
        .until("all registered", |s| s.brokers.len() == 3 && s.fenced.is_empty())
        .await;
    assert_eq!(state.brokers[&follower].kafka_address, kafka_address(follower));

    // Through a follower: forwarded to the leader, and applied on the follower before it answers.
    let replicas = place(&state, 3, 1).unwrap();
    assert_eq!(
        cluster.submit(follower, topic("a", replicas)).await,
        CommandResult::Applied
    );
    assert!(cluster.nodes[&follower].state().topics.contains_key("a"));
    // Refused the same way everywhere: it is in the log.
    assert!(matches!(
        cluster.submit(leader, topic("a", vec![vec![1]])).await,
        CommandResult::Refused(_)
    ));
    let state = cluster.until("a created", |s| s.topics.contains_key("a")).await;
    let led: Vec<usize> = (0..3)
        .filter(|&p| state.topics["a"].partitions[p].leader == Some(follower))
        .collect();
    assert_eq!(led.len(), 1, "one partition each: {state:#?}");

    // A broker that stops heartbeating is fenced: the partition it led has no leader (replication
    // factor 1), with the epoch bumped; back, it registers again and leads it again.
    cluster.stop(follower).await;
    let fenced = cluster.until("fenced", |s| s.fenced.contains(&follower)).await;
    let p = &fenced.topics["a"].partitions[led[0]];
    assert_eq!((p.leader, p.leader_epoch), (None, 1));
    let status = cluster.nodes[&leader].status();
    assert!(status.active && status.leader == Some(leader), "{status:?}");
    assert_eq!(
        (
            status.live_brokers,
            status.fenced_brokers,
            status.offline_partitions
        ),
        (2, 1, 1)
    );
    let other = (1..=3).find(|&id| id != leader && id != follower).unwrap();
    assert!(!cluster.nodes[&other].status().active);
    cluster.restart(follower).await;
    let back = cluster
        .until("back", |s| {
            !s.fenced.contains(&follower) && s.topics["a"].partitions[led[0]].leader == Some(follower)
        })
        .await;
    assert_eq!(back.topics["a"].partitions[led[0]].leader_epoch, 2);

    // The leader stops: the others elect a new one and take changes through any node.
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let other = (1..=3).find(|&id| id != leader && id != new_leader).unwrap();
    assert_eq!(
        cluster.submit(other, topic("b", vec![vec![other]])).await,
        CommandResult::Applied
    );
    cluster.restart(leader).await;
    let state = cluster
        .until("caught up", |s| s.topics.contains_key("b") && s.fenced.is_empty())
        .await;

    // The whole cluster down and up again: everything applied is back.
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    cluster.leader().await;
    let after = cluster.until("restarted", |s| s.topics.len() == 2).await;
    assert_eq!(
        after.topics.keys().collect::<Vec<_>>(),
        state.topics.keys().collect::<Vec<_>>()
    );
    // The same brokers, at the same addresses; each process start is a new incarnation, which a broker's
    // re-registration may already have brought in.
    let addresses = |s: &chronik_cluster::MetadataState| {
        s.brokers
            .values()
            .map(|b| (b.id, b.kafka_address.clone(), b.controller_address.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(addresses(&after), addresses(&state));
    for (name, t) in &state.topics {
        let replicas = |t: &chronik_cluster::state_machine::TopicInfo| {
            t.partitions
                .iter()
                .map(|p| p.replicas.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(replicas(&after.topics[name]), replicas(t), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_not_among_the_voters_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let voters: BTreeMap<u64, String> = [(1, "127.0.0.1:1".to_string())].into();
    let wal = Arc::new(WalManager::open(dir.path().join("wal"), WalConfig::default()).unwrap());
    let io: Arc<dyn WalIo> = Arc::new(StdIo);
    let err = MetaNode::start(config(2, &voters), wal, io, dir.path(), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StartError::NotAVoter { node_id: 2, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_leads_itself_without_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let voters: BTreeMap<u64, String> = [(0, "127.0.0.1:9093".to_string())].into();
    let open = || {
        let wal = Arc::new(WalManager::open(dir.path().join("wal"), WalConfig::default()).unwrap());
        let io: Arc<dyn WalIo> = Arc::new(StdIo);
        (wal, io)
    };
    let (wal, io) = open();
    let node = MetaNode::start(config(0, &voters), wal, io, dir.path(), None)
        .await
        .unwrap();
    let started = Instant::now();
    while node.leader() != Some(0) {
        assert!(
            started.elapsed() < DEADLINE,
            "a single voter did not elect itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It registers its own broker.
    while node.state().brokers.is_empty() {
        assert!(
            started.elapsed() < DEADLINE,
            "a single voter did not register its broker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.propose(topic("t", vec![vec![0]])).await.unwrap(),
        CommandResult::Applied
    );
    node.shutdown().await;
    // The same data with another voter list: refused, and the data is left as it was.
    for other in [
        BTreeMap::from([
            (0, "127.0.0.1:9093".to_string()),
            (1, "127.0.0.1:9193".to_string()),
        ]),
        BTreeMap::from([(0, "127.0.0.1:9999".to_string())]),
    ] {
        let (wal, io) = open();
        let err = MetaNode::start(config(0, &other), wal, io, dir.path(), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StartError::VotersDiffer { .. }), "{err}");
        assert!(err.to_string().contains("0@127.0.0.1:9093"), "{err}");
    }
    let (wal, io) = open();
    let node = MetaNode::start(config(0, &voters), wal, io, dir.path(), None)
        .await
        .unwrap();
    let started = Instant::now();
    while node.state().topics.is_empty() {
        assert!(
            started.elapsed() < DEADLINE,
            "the topic did not come back after a restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
}
