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
}

/// A change to the cluster metadata: the payload of a Raft log entry. Applied in log order by every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker (re)registers; a later registration of the same id replaces its addresses.
    RegisterBroker(BrokerInfo),
    /// Creates a topic; `replicas[p]` lists the brokers holding partition `p`, preferred leader first.
    CreateTopic {
        name: String,
        topic_id: [u8; 16],
        replicas: Vec<Vec<u64>>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
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
