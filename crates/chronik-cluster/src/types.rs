//! The Raft type configuration and the metadata commands the log carries.

use std::{collections::BTreeMap, io::Cursor};

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

/// A broker as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: u64,
    /// Where Kafka clients reach it (advertised `HOST:PORT`).
    pub kafka_address: String,
    /// Where other brokers reach its controller listener.
    pub controller_address: String,
    /// Random at each start of the process: a registration with a new one is a restart, which may have
    /// cost the broker appends it had not made durable (see [`Command::RegisterBroker`]).
    #[serde(default)]
    pub incarnation: u64,
}

/// A change to the cluster metadata: the payload of a Raft log entry. Applied in log order by every node;
/// whatever the proposer computed (placement, ids) is in the command, so applying needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Names the cluster, once: refused if it already has another id.
    SetClusterId {
        cluster_id: String,
    },
    /// A broker (re)registers: its addresses are replaced and it is no longer fenced. It leads the
    /// partitions left without a leader whose ISR it is in. If it restarted (a new
    /// incarnation), the partitions it leads get a new leader epoch: it may have lost appends, and must
    /// not write other records at the same offsets in the same epoch.
    RegisterBroker(BrokerInfo),
    /// A broker stopped heartbeating: it leaves every ISR it is not the last member of, and every
    /// partition it led gets a new leader from the rest of its ISR (none if no one is left: offline),
    /// with the leader epoch bumped.
    FenceBroker {
        id: u64,
    },
    /// A partition's leader changes its ISR (a follower fell behind, or caught up). Refused unless
    /// `leader` leads the partition in `leader_epoch` and the partition is still at `partition_epoch`
    /// (so a change based on stale state never lands), and every member is a live replica.
    AlterPartition {
        topic: String,
        partition: u32,
        leader: u64,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<u64>,
    },
    /// Creates a topic; `replicas[p]` lists the brokers holding partition `p`, preferred leader first.
    CreateTopic {
        name: String,
        topic_id: [u8; 16],
        replicas: Vec<Vec<u64>>,
        configs: BTreeMap<String, String>,
    },
    /// Adds partitions (with these replica lists) after a topic's last one. Refused unless the topic has
    /// `from` partitions (when given): a proposal retried after its answer was lost is not applied twice.
    AddPartitions {
        name: String,
        replicas: Vec<Vec<u64>>,
        #[serde(default)]
        from: Option<u32>,
    },
    /// Replaces a topic's configs.
    SetConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Reserves the next `count` producer ids.
    AllocateProducerIds {
        count: i64,
    },
}

/// What applying a command did. A refusal is a result, not a failure: the entry stays in the log and every
/// node refuses it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Applied,
    Refused(String),
    /// The producer ids `start..end` are reserved for the proposer.
    ProducerIds {
        start: i64,
        end: i64,
    },
}

openraft::declare_raft_types!(
    /// Chronik's Raft types: node ids are broker ids, a node's address is its controller listener.
    pub MetaRaft:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<MetaRaft>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Entry = openraft::Entry<MetaRaft>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;

pub type Raft = openraft::Raft<MetaRaft>;
