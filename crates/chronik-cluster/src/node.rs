//! A controller node: Raft over the WAL-backed stores and the TCP network, the bootstrap of a new
//! cluster, and proposals of metadata changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use chronik_wal::{io::WalIo, TopicPartition, WalManager};
use openraft::{
    error::{ClientWriteError, InitializeError, RaftError},
    BasicNode, Config, RaftMetrics, SnapshotPolicy,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::info;

use crate::{
    network::{self, TcpNetwork},
    types::{Command, CommandResult, Raft},
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
}

impl NodeConfig {
    /// `node_id` among `voters`, with Chronik's default timings: a heartbeat every 250 ms (an fdatasync on
    /// a busy disk can take tens of milliseconds, and the append RPC must answer within it) and an
    /// election after 1 to 2 s without a leader.
    pub fn new(node_id: u64, voters: BTreeMap<u64, String>) -> Self {
        Self {
            node_id,
            voters,
            heartbeat_interval: Duration::from_millis(250),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
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
}

/// A running controller node.
pub struct MetaNode {
    id: u64,
    raft: Raft,
    state_machine: StateMachineStore,
    server: Option<JoinHandle<()>>,
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
        let state_machine = StateMachineStore::open(io, dir.join("raft-snapshot"))?;
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
        let raft = Raft::new(id, Arc::new(raft_config), TcpNetwork, log, state_machine.clone())
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
        let server = listener.map(|l| tokio::spawn(network::serve(l, id, raft.clone())));
        let node = Self {
            id,
            raft,
            state_machine,
            server,
        };
        node.bootstrap(&config.voters).await?;
        Ok(node)
    }

    /// Initializes a new cluster of `voters`, from the voter with the lowest id only: two nodes
    /// initializing with different voter lists would make two clusters.
    async fn bootstrap(&self, voters: &BTreeMap<u64, String>) -> Result<(), StartError> {
        if voters.keys().next() != Some(&self.id) {
            return Ok(());
        }
        let initialized = self
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
        match self.raft.initialize(members).await {
            Ok(()) => {
                info!(node_id = self.id, voters = ?voters.keys().collect::<BTreeSet<_>>(),
                    "controller quorum initialized");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes `command` (on the leader) and returns once it is committed and applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ProposeError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// The metadata as applied on this node.
    pub fn state(&self) -> MetadataState {
        self.state_machine.state()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Waits until this node has applied the log up to `index` (a change committed through another
    /// node is visible here only then).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(drop)
            .map_err(|e| ProposeError::Raft(e.to_string()))
    }

    /// Stops Raft and the listener. What was acknowledged is in the WAL already.
    pub async fn shutdown(self) {
        if let Some(server) = self.server {
            server.abort();
        }
        let _ = self.raft.shutdown().await;
    }
}
