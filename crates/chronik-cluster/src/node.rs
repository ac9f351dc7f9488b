//! A controller node: Raft over the WAL-backed stores and the TCP network, the bootstrap of a new
//! cluster, and proposals of metadata changes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use chronik_wal::{io::WalIo, TopicPartition, WalManager};
use openraft::{
    error::{ClientWriteError, InitializeError, RaftError},
    BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy,
};
use parking_lot::Mutex;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    network::{self, Applied, ClusterIdentity, ControllerService, ForwardError, Refusal, TcpNetwork},
    types::{BrokerInfo, Command, CommandResult, Raft},
    MetadataState, StateMachineStore, WalLogStore,
};

/// The internal WAL partition holding the Raft log.
pub const RAFT_LOG_TOPIC: &str = "__chronik_raft";

/// How a node takes part in the quorum.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Every voter's controller address (`HOST:PORT`), this node's included.
    pub voters: BTreeMap<u64, String>,
    /// How often the leader heartbeats; an RPC (with the follower's fdatasync) must answer within it.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// Where Kafka clients reach this node's broker (advertised `HOST:PORT`), as it registers.
    pub kafka_address: String,
    /// A broker that has not heartbeated the controller leader for this long is fenced: the partitions
    /// it led go to other in-sync replicas (or offline). It heartbeats six times per timeout.
    pub session_timeout: Duration,
}

impl NodeConfig {
    /// `node_id` among `voters`, with Chronik's default timings: a heartbeat every 150 ms (the append RPC,
    /// with the follower's fdatasync, must answer within it, or is retried) and an election timeout of
    /// 500 to 1,000 ms. openraft waits out a leader lease (the maximum election timeout) on top, so
    /// followers elect 1.5 to 2 s after the last heartbeat (`examples/failover.rs` measures the whole
    /// failover; with 1 to 2 s its median was 7.6 to 9 s).
    /// The broker session timeout is 6 s: long enough that a broker stalled by a slow disk or a
    /// garbage-collecting client host is not fenced (which would take its partitions offline with
    /// replication factor 1), short enough that failover starts within seconds; Kafka's is 9 s.
    pub fn new(node_id: u64, voters: BTreeMap<u64, String>, kafka_address: impl Into<String>) -> Self {
        Self {
            node_id,
            voters,
            heartbeat_interval: Duration::from_millis(150),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            kafka_address: kafka_address.into(),
            session_timeout: Duration::from_secs(6),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {node_id} is not among the controller voters {voters:?}")]
    NotAVoter { node_id: u64, voters: Vec<u64> },
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("Raft storage: {0}")]
    Storage(#[from] openraft::StorageError<u64>),
    #[error("Raft could not start: {0}")]
    Raft(String),
    #[error("the cluster id file: {0}")]
    ClusterIdFile(String),
    /// The quorum this node's log knows is not the one configured: every node must be given the same
    /// voter list (changing the voters of a running cluster is a membership change, not a restart).
    #[error(
        "the controller voters configured ({configured}) differ from the quorum this node's data \
         belongs to ({stored}): give every node the same --controller-voters"
    )]
    VotersDiffer { configured: String, stored: String },
}

/// `id@address` pairs, as the voter list is written.
fn describe(voters: &BTreeMap<u64, String>) -> String {
    let items: Vec<String> = voters.iter().map(|(id, a)| format!("{id}@{a}")).collect();
    items.join(",")
}

/// Why a proposal was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals: send it there (`leader` if one is known).
    #[error("not the controller leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("Raft: {0}")]
    Raft(String),
    #[error("no controller leader answered within {0:?}")]
    Timeout(Duration),
}

/// A node's view of the controller quorum and the cluster, for metrics and `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerStatus {
    pub node_id: u64,
    /// This node is the controller (the Raft leader).
    pub active: bool,
    pub leader: Option<u64>,
    pub term: u64,
    /// The last log index this node holds, and the last it has applied.
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub live_brokers: usize,
    pub fenced_brokers: usize,
    /// Partitions without a leader (no in-sync replica available).
    pub offline_partitions: usize,
    /// Times a partition's leader changed, over the cluster's life.
    pub leader_changes: u64,
}

/// What the controller leader knows of brokers' liveness (in memory: a new leader starts afresh).
#[derive(Debug, Default)]
struct Liveness {
    /// The term this node last led in: a new term gives every broker a full session to heartbeat.
    term: Option<u64>,
    last_seen: HashMap<u64, Instant>,
}

/// What the node's tasks and its listener share.
struct Inner {
    id: u64,
    raft: Raft,
    state_machine: StateMachineStore,
    voters: BTreeMap<u64, String>,
    me: BrokerInfo,
    session_timeout: Duration,
    liveness: Mutex<Liveness>,
    /// The cluster this node's data belongs to, sent with and checked on every controller request.
    identity: Arc<ClusterIdentity>,
}

/// A running controller node.
pub struct MetaNode {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl MetaNode {
    /// Starts the node on `wal` (its Raft log is the internal partition [`RAFT_LOG_TOPIC`]-0), with its
    /// vote and snapshot files in `dir` on `io`, answering other voters on `listener` (none for a
    /// cluster of one). The voter with the lowest id bootstraps a cluster that was never initialized.
    pub async fn start(
        config: NodeConfig,
        wal: Arc<WalManager>,
        io: Arc<dyn WalIo>,
        dir: &Path,
        listener: Option<TcpListener>,
    ) -> Result<Self, StartError> {
        let id = config.node_id;
        if !config.voters.contains_key(&id) {
            return Err(StartError::NotAVoter {
                node_id: id,
                voters: config.voters.keys().copied().collect(),
            });
        }
        let log = WalLogStore::open(
            wal,
            TopicPartition::new(RAFT_LOG_TOPIC, 0),
            Arc::clone(&io),
            dir.join("raft-state"),
        )?;
        let cluster_id_path = dir.join(CLUSTER_ID_FILE);
        let identity = Arc::new(ClusterIdentity::new(read_cluster_id(&*io, &cluster_id_path)?));
        let state_machine = StateMachineStore::open(Arc::clone(&io), dir.join("raft-snapshot"))?;
        let raft_config = Config {
            cluster_name: "chronik".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 4 * config.heartbeat_interval.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let network = TcpNetwork::new(Arc::clone(&identity));
        let raft = Raft::new(id, Arc::new(raft_config), network, log, state_machine.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // Checked before this node answers anyone: a node with another idea of the quorum must not vote.
        let stored: BTreeMap<u64, String> = raft
            .with_raft_state(|st| {
                st.membership_state
                    .effective()
                    .nodes()
                    .map(|(id, node)| (*id, node.addr.clone()))
                    .collect()
            })
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !stored.is_empty() && stored != config.voters {
            let _ = raft.shutdown().await;
            return Err(StartError::VotersDiffer {
                configured: describe(&config.voters),
                stored: describe(&stored),
            });
        }
        let inner = Arc::new(Inner {
            id,
            raft,
            state_machine,
            me: BrokerInfo {
                id,
                kafka_address: config.kafka_address.clone(),
                controller_address: config.voters[&id].clone(),
                incarnation: new_incarnation(),
            },
            voters: config.voters.clone(),
            session_timeout: config.session_timeout,
            liveness: Mutex::new(Liveness::default()),
            identity,
        });
        let mut tasks = Vec::new();
        if let Some(l) = listener {
            let raft = inner.raft.clone();
            let identity = Arc::clone(&inner.identity);
            tasks.push(tokio::spawn(network::serve(
                l,
                id,
                identity,
                raft,
                Arc::clone(&inner),
            )));
        }
        tasks.push(tokio::spawn(remember_cluster_id(
            Arc::clone(&inner),
            io,
            cluster_id_path,
        )));
        tasks.push(tokio::spawn(heartbeats(Arc::clone(&inner))));
        tasks.push(tokio::spawn(fence_silent_brokers(Arc::clone(&inner))));
        let node = Self {
            inner,
            tasks: Mutex::new(tasks),
        };
        if let Err(e) = node.begin(&config.voters).await {
            // Nothing of this node keeps running after a failed start.
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    async fn begin(&self, voters: &BTreeMap<u64, String>) -> Result<(), StartError> {
        self.bootstrap(voters).await?;
        if voters.len() == 1 {
            // A lone voter needs no one's vote: elect now rather than after an election timeout (and
            // openraft's leader lease), so a single broker restarts in milliseconds, not seconds.
            self.inner
                .raft
                .trigger()
                .elect()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Initializes a new cluster of `voters`, from the voter with the lowest id only: two nodes
    /// initializing with different voter lists would make two clusters.
    async fn bootstrap(&self, voters: &BTreeMap<u64, String>) -> Result<(), StartError> {
        if voters.keys().next() != Some(&self.inner.id) {
            return Ok(());
        }
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<u64, BasicNode> = voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                info!(node_id = self.inner.id, voters = ?voters.keys().collect::<BTreeSet<_>>(),
                    "controller quorum initialized");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether this node is the voter that creates a new cluster (the lowest id).
    pub fn is_bootstrap_voter(&self) -> bool {
        self.inner.voters.keys().next() == Some(&self.inner.id)
    }

    /// How many voters there are.
    pub fn voter_count(&self) -> usize {
        self.inner.voters.len()
    }

    /// Proposes `command` on this node, which must be the leader; returns once it is committed and
    /// applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ProposeError> {
        self.inner.propose(command).await.map(|a| a.result)
    }

    /// Proposes `command` through whichever node leads (forwarded there over the controller listener)
    /// and returns once it is applied on this node too, waiting up to `timeout` for a leader. A retry
    /// after a lost answer may apply a command twice: commands are written so that a second
    /// application is refused or changes nothing.
    pub async fn submit(&self, command: Command, timeout: Duration) -> Result<CommandResult, ProposeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.leader() {
                // Bounded too: a leader cut off from the others (openraft 0.9 does not step down on
                // its own) would wait for a quorum that does not answer.
                Some(l) if l == self.inner.id => {
                    match tokio::time::timeout(left, self.inner.propose(command.clone())).await {
                        Ok(Ok(applied)) => return Ok(applied.result),
                        Ok(Err(ProposeError::NotLeader { .. })) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(ProposeError::Timeout(timeout)),
                    }
                }
                Some(l) => {
                    let address = self.inner.voters.get(&l).cloned().unwrap_or_default();
                    // Bounded, so that a leader that stopped answering (paused, cut off) is given up
                    // for the one elected meanwhile.
                    let ttl = left.clamp(Duration::from_millis(100), FORWARD_ATTEMPT);
                    let identity = &self.inner.identity;
                    match network::forward(identity, &address, l, command.clone(), ttl).await {
                        Ok(Ok(applied)) => {
                            self.wait_applied(applied.index, left).await?;
                            return Ok(applied.result);
                        }
                        Ok(Err(ForwardError::Failed(why))) => return Err(ProposeError::Raft(why)),
                        Ok(Err(ForwardError::NotLeader { .. })) | Err(_) => {}
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::Timeout(timeout));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The metadata as applied on this node.
    pub fn state(&self) -> MetadataState {
        self.inner.state_machine.state()
    }

    /// Runs `f` on the metadata as applied on this node, without copying it (under its lock: keep `f`
    /// short).
    pub fn read<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        self.inner.state_machine.read(f)
    }

    /// Changes whenever Raft's metrics do, among them every entry applied on this node.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<RaftMetrics<u64, BasicNode>> {
        self.inner.raft.metrics()
    }

    /// The voters that answered they belong to another cluster than this node's data (see [`network`]).
    pub fn refused_by(&self) -> Vec<Refusal> {
        self.inner.identity.refused_by()
    }

    /// This node's broker as it registers.
    pub fn broker(&self) -> &BrokerInfo {
        &self.inner.me
    }

    /// Registers this node's broker through the leader (again, if it was) and waits until this node has
    /// applied the registration: everything committed before it is then applied here too, so the
    /// metadata this node serves afterwards is at least as new as the cluster's when it started.
    pub async fn register(&self, timeout: Duration) -> Result<(), ProposeError> {
        let me = self.inner.me.clone();
        match self.submit(Command::RegisterBroker(me), timeout).await? {
            CommandResult::Refused(why) => Err(ProposeError::Raft(why)),
            _ => Ok(()),
        }
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// The quorum and the cluster as this node sees them now.
    pub fn status(&self) -> ControllerStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let (brokers, fenced, offline_partitions, leader_changes) = self.inner.state_machine.read(|state| {
            let offline = state.topics.values().flat_map(|t| &t.partitions);
            (
                state.brokers.len(),
                state.brokers.keys().filter(|b| state.fenced.contains(b)).count(),
                offline.filter(|p| p.leader.is_none()).count(),
                state.leader_changes,
            )
        });
        ControllerStatus {
            node_id: self.inner.id,
            active: m.state == ServerState::Leader && m.current_leader == Some(self.inner.id),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            live_brokers: brokers - fenced,
            fenced_brokers: fenced,
            offline_partitions,
            leader_changes,
        }
    }

    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Waits until this node has applied the log up to `index` (a change committed through another
    /// node is visible here only then).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(drop)
            .map_err(|e| ProposeError::Raft(e.to_string()))
    }

    /// Stops Raft, the listener and the heartbeats. What was acknowledged is in the WAL already.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }
}

impl Drop for MetaNode {
    /// A node dropped without `shutdown` (a start cancelled half-way) leaves no task behind: with them
    /// gone, the last Raft handle goes too and openraft's core stops.
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// The file holding the id of the cluster this node's data belongs to, once it has joined one.
const CLUSTER_ID_FILE: &str = "cluster-id";

fn read_cluster_id(io: &dyn WalIo, path: &Path) -> Result<Option<String>, StartError> {
    let failed = |e: &dyn std::fmt::Display| StartError::ClusterIdFile(format!("{}: {e}", path.display()));
    if !io.exists(path).map_err(|e| failed(&e))? {
        return Ok(None);
    }
    let bytes = chronik_wal::io::read_file(io, path, 4096).map_err(|e| failed(&e))?;
    let id = String::from_utf8(bytes).map_err(|e| failed(&e))?;
    Ok(Some(id.trim().to_string()).filter(|id| !id.is_empty()))
}

/// Writes the cluster id to `path` once the applied metadata names the cluster, so that from then on this
/// node refuses, and is refused by, nodes of other clusters even before it has applied anything.
async fn remember_cluster_id(inner: Arc<Inner>, io: Arc<dyn WalIo>, path: std::path::PathBuf) {
    let mut changes = inner.raft.metrics();
    loop {
        let named = inner.state_machine.read(|s| s.cluster_id.clone());
        match (named, inner.identity.ours()) {
            (Some(id), None) => {
                let (io, p, bytes) = (Arc::clone(&io), path.clone(), id.clone().into_bytes());
                let written =
                    tokio::task::spawn_blocking(move || chronik_wal::io::write_file_atomic(&*io, &p, &bytes))
                        .await;
                match written {
                    Ok(Ok(())) => {
                        info!(cluster_id = %id, "this node's data now belongs to the cluster");
                        inner.identity.set(id);
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, path = %path.display(), "writing the cluster id failed; retried")
                    }
                    Err(e) => warn!(error = %e, "writing the cluster id failed; retried"),
                }
            }
            (Some(id), Some(known)) if id != known => {
                warn!(applied = %id, file = %known, "the metadata names another cluster than the cluster-id file");
            }
            _ => {}
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// How long a retry waits for a leader to be elected or known.
const RETRY: Duration = Duration::from_millis(50);
/// How long one forwarded proposal may take before the leader is looked up again.
const FORWARD_ATTEMPT: Duration = Duration::from_secs(5);

impl Inner {
    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(Applied {
                result: response.data,
                index: response.log_id.index,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// The current term if this node leads in it.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }
}

impl ControllerService for Inner {
    async fn forward(&self, command: Command) -> Result<Applied, ForwardError> {
        self.propose(command).await.map_err(|e| match e {
            ProposeError::NotLeader { leader } => ForwardError::NotLeader { leader },
            e => ForwardError::Failed(e.to_string()),
        })
    }

    async fn heartbeat(&self, broker: BrokerInfo) -> Result<(), ForwardError> {
        if self.leading_term().is_none() {
            return Err(ForwardError::NotLeader {
                leader: self.leader(),
            });
        }
        self.liveness.lock().last_seen.insert(broker.id, Instant::now());
        let known = self.state_machine.read(|state| {
            state.brokers.get(&broker.id) == Some(&broker) && !state.fenced.contains(&broker.id)
        });
        if !known {
            info!(broker = broker.id, address = %broker.kafka_address, "broker registered");
            self.forward(Command::RegisterBroker(broker)).await?;
        }
        Ok(())
    }
}

/// This node's broker heartbeats the leader, six times per session timeout, for as long as it runs.
async fn heartbeats(inner: Arc<Inner>) {
    let every = (inner.session_timeout / 6).max(Duration::from_millis(20));
    loop {
        match inner.leader() {
            Some(l) if l == inner.id => {
                let _ = inner.heartbeat(inner.me.clone()).await;
            }
            Some(l) => {
                if let Some(address) = inner.voters.get(&l) {
                    let sent = network::heartbeat(&inner.identity, address, l, inner.me.clone(), every).await;
                    if let Err(e) = sent {
                        debug!(leader = l, error = %e, "heartbeat to the controller failed");
                    }
                }
            }
            None => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// On the leader: fences each registered broker that has not heartbeated for the session timeout. A node
/// that has just become leader first gives every broker a full session.
async fn fence_silent_brokers(inner: Arc<Inner>) {
    let every = (inner.session_timeout / 4).max(Duration::from_millis(20));
    loop {
        tokio::time::sleep(every).await;
        let Some(term) = inner.leading_term() else {
            continue;
        };
        let (registered, unfenced): (Vec<u64>, Vec<u64>) = inner.state_machine.read(|state| {
            let all = state.brokers.keys().copied();
            (
                all.clone().collect(),
                all.filter(|b| !state.fenced.contains(b)).collect(),
            )
        });
        let now = Instant::now();
        let silent: Vec<u64> = {
            let mut liveness = inner.liveness.lock();
            if liveness.term != Some(term) {
                liveness.term = Some(term);
                liveness.last_seen = registered.iter().map(|&b| (b, now)).collect();
            }
            unfenced
                .into_iter()
                .filter(|b| {
                    let seen = *liveness.last_seen.entry(*b).or_insert(now);
                    now.duration_since(seen) > inner.session_timeout
                })
                .collect()
        };
        for broker in silent {
            warn!(broker, timeout = ?inner.session_timeout, "broker fenced: no heartbeat");
            if let Err(e) = inner.propose(Command::FenceBroker { id: broker }).await {
                debug!(broker, error = %e, "fencing a broker failed; the next round retries");
            }
        }
    }
}

/// A number that differs at each start of the process (see [`BrokerInfo::incarnation`]): std's hasher
/// keys are drawn from the OS's randomness once per process.
fn new_incarnation() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new()
        .hash_one((std::time::SystemTime::now(), std::process::id()))
}
