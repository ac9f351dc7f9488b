//! Raft's RPCs between controller listeners, over TCP.
//!
//! A frame is the magic `CRFT`, a big-endian `u32` length, then the message as JSON. A connection carries
//! one request at a time from one node to another and its response; the client opens it when first
//! needed and again after any failure. Every request names the node it is for: a listener that is not
//! that node answers with an error instead of letting Raft talk to the wrong node (openraft's leader
//! cannot recover from a follower that is not who it thinks). Every request also carries the cluster id
//! the sender's data belongs to (once it has one): a node of another cluster (a data directory from
//! elsewhere, a voter list pointing at the wrong machines) is answered with an error, never with Raft,
//! so neither side's log is touched, and the sender learns why ([`ClusterIdentity::refused_by`]).

use std::{collections::BTreeMap, future::Future, io, sync::Arc, time::Duration};

use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::{RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
        VoteRequest, VoteResponse,
    },
    BasicNode,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info, warn};

use crate::types::{BrokerInfo, Command, CommandResult, MetaRaft, Raft};

const MAGIC: [u8; 4] = *b"CRFT";
/// Largest frame accepted: snapshots travel in chunks of `snapshot_max_chunk_size` (a few MiB).
const MAX_FRAME_BYTES: u32 = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    AppendEntries(AppendEntriesRequest<MetaRaft>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<MetaRaft>),
    /// A metadata change proposed through another node, for the leader to apply.
    Forward(Command),
    /// A broker saying it is alive, to the leader.
    Heartbeat(BrokerInfo),
}

/// A forwarded command once applied on the leader: its result and log index (the forwarding node
/// waits until it has applied that index too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub result: CommandResult,
    pub index: u64,
}

/// Why the leader did not take a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardError {
    /// Not the leader (any more): `leader` if known.
    NotLeader {
        leader: Option<u64>,
    },
    Failed(String),
}

/// What a controller listener answers besides Raft: what brokers send the controller leader.
pub trait ControllerService: Send + Sync + 'static {
    fn forward(&self, command: Command) -> impl Future<Output = Result<Applied, ForwardError>> + Send;
    fn heartbeat(&self, broker: BrokerInfo) -> impl Future<Output = Result<(), ForwardError>> + Send;
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The node the sender means to reach.
    target: u64,
    /// The cluster the sender's data belongs to; `None` for a node that has not joined one yet.
    #[serde(default)]
    cluster: Option<String>,
    request: Request,
}

/// The cluster this node's data belongs to, and whether a node of another cluster refused it.
#[derive(Debug, Default)]
pub struct ClusterIdentity {
    ours: parking_lot::RwLock<Option<String>>,
    /// Per node, the last refusal it answered with.
    refused: parking_lot::Mutex<BTreeMap<u64, Refusal>>,
}

/// A node that belongs to another cluster than this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub node: u64,
    pub theirs: String,
    pub ours: String,
}

impl ClusterIdentity {
    pub fn new(ours: Option<String>) -> Self {
        Self {
            ours: parking_lot::RwLock::new(ours),
            refused: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    pub fn ours(&self) -> Option<String> {
        self.ours.read().clone()
    }

    pub fn set(&self, cluster_id: String) {
        *self.ours.write() = Some(cluster_id);
    }

    /// The nodes that answered they belong to another cluster (one stray node among the voters is not
    /// a reason for this node to stop; most of them are).
    pub fn refused_by(&self) -> Vec<Refusal> {
        self.refused.lock().values().cloned().collect()
    }

    /// Whether a request from a node of cluster `theirs` is refused here.
    fn differs(&self, theirs: Option<&str>) -> Option<String> {
        let ours = self.ours.read();
        match (ours.as_deref(), theirs) {
            (Some(a), Some(b)) if a != b => Some(a.to_string()),
            _ => None,
        }
    }

    fn record_refusal(&self, node: u64, theirs: String) -> io::Error {
        let ours = self.ours().unwrap_or_default();
        warn!(node, theirs = %theirs, ours = %ours, "a controller voter belongs to another cluster");
        self.refused.lock().insert(
            node,
            Refusal {
                node,
                theirs: theirs.clone(),
                ours: ours.clone(),
            },
        );
        io::Error::other(format!(
            "node {node} belongs to cluster {theirs}, this node's data to cluster {ours}"
        ))
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Forwarded(Result<Applied, ForwardError>),
    HeartbeatAck(Result<(), ForwardError>),
    /// The listener is not the node the request was for.
    WrongNode {
        listener: u64,
    },
    /// The listener's data belongs to another cluster than the sender's.
    OtherCluster {
        cluster: String,
    },
}

async fn write_frame(stream: &mut TcpStream, message: &impl Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME_BYTES)
        .ok_or_else(|| io::Error::other(format!("a {}-byte Raft message is too large", body.len())))?;
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> io::Result<T> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    if head[..4] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Raft frame (is this a controller listener?)",
        ));
    }
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte Raft frame is over the {MAX_FRAME_BYTES}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Answers Raft RPCs and `service`'s requests arriving at `listener` for node `node_id` until the task is
/// dropped (which closes its connections too).
pub async fn serve<S: ControllerService>(
    listener: TcpListener,
    node_id: u64,
    identity: Arc<ClusterIdentity>,
    raft: Raft,
    service: Arc<S>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "controller listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (raft, service, identity) = (raft.clone(), Arc::clone(&service), Arc::clone(&identity));
        connections.spawn(async move {
            if let Err(e) = serve_connection(stream, node_id, &identity, raft, service).await {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    debug!(%peer, error = %e, "controller connection closed");
                }
            }
        });
    }
}

async fn serve_connection<S: ControllerService>(
    mut stream: TcpStream,
    node_id: u64,
    identity: &ClusterIdentity,
    raft: Raft,
    service: Arc<S>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let envelope: Envelope = read_frame(&mut stream).await?;
        let response = if envelope.target != node_id {
            warn!(
                listener = node_id,
                target = envelope.target,
                "Raft request for another node: check --controller-voters on every node"
            );
            Response::WrongNode { listener: node_id }
        } else if let Some(cluster) = identity.differs(envelope.cluster.as_deref()) {
            warn!(
                theirs = ?envelope.cluster,
                ours = %cluster,
                "refused a controller request from a node of another cluster"
            );
            Response::OtherCluster { cluster }
        } else {
            match envelope.request {
                Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
                Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
                Request::InstallSnapshot(rpc) => Response::InstallSnapshot(raft.install_snapshot(rpc).await),
                Request::Forward(command) => Response::Forwarded(service.forward(command).await),
                Request::Heartbeat(broker) => Response::HeartbeatAck(service.heartbeat(broker).await),
            }
        };
        write_frame(&mut stream, &response).await?;
    }
}

/// Sends `request` to node `target` at `address` on a connection of its own and returns the answer.
async fn call_once(
    identity: &ClusterIdentity,
    address: &str,
    target: u64,
    request: Request,
    ttl: Duration,
) -> io::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let cluster = identity.ours();
        write_frame(
            &mut stream,
            &Envelope {
                target,
                cluster,
                request,
            },
        )
        .await?;
        read_frame(&mut stream).await
    };
    match tokio::time::timeout(ttl, exchange).await {
        Ok(Ok(Response::WrongNode { listener })) => Err(io::Error::other(format!(
            "{address} is node {listener}, not node {target}: the voter lists differ"
        ))),
        Ok(Ok(Response::OtherCluster { cluster })) => Err(identity.record_refusal(target, cluster)),
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from node {target} at {address} within {ttl:?}"),
        )),
    }
}

/// Forwards `command` to the leader `target` at `address`.
pub async fn forward(
    identity: &ClusterIdentity,
    address: &str,
    target: u64,
    command: Command,
    ttl: Duration,
) -> io::Result<Result<Applied, ForwardError>> {
    match call_once(identity, address, target, Request::Forward(command), ttl).await? {
        Response::Forwarded(r) => Ok(r),
        other => Err(io::Error::other(format!("node {target} answered with {other:?}"))),
    }
}

/// Sends `broker`'s heartbeat to the leader `target` at `address`.
pub async fn heartbeat(
    identity: &ClusterIdentity,
    address: &str,
    target: u64,
    broker: BrokerInfo,
    ttl: Duration,
) -> io::Result<Result<(), ForwardError>> {
    match call_once(identity, address, target, Request::Heartbeat(broker), ttl).await? {
        Response::HeartbeatAck(r) => Ok(r),
        other => Err(io::Error::other(format!("node {target} answered with {other:?}"))),
    }
}

/// Opens connections to the other voters at their controller addresses.
#[derive(Debug, Clone, Default)]
pub struct TcpNetwork {
    identity: Arc<ClusterIdentity>,
    /// Voters the last call to failed: logged once when one goes, once when it is back (openraft's own
    /// lines for every retry are off by default).
    down: Arc<parking_lot::Mutex<std::collections::BTreeSet<u64>>>,
}

impl TcpNetwork {
    pub fn new(identity: Arc<ClusterIdentity>) -> Self {
        Self {
            identity,
            down: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<MetaRaft> for TcpNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        Connection {
            target,
            address: node.addr.clone(),
            identity: Arc::clone(&self.identity),
            down: Arc::clone(&self.down),
            stream: None,
        }
    }
}

/// One node's connection to another.
#[derive(Debug)]
pub struct Connection {
    target: u64,
    address: String,
    identity: Arc<ClusterIdentity>,
    down: Arc<parking_lot::Mutex<std::collections::BTreeSet<u64>>>,
    stream: Option<TcpStream>,
}

/// Why a call failed, before it is mapped to the error type of its RPC.
enum CallError {
    Unreachable(io::Error),
    Network(io::Error),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<u64, BasicNode, E> {
        match self {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl Connection {
    async fn call(&mut self, request: Request, ttl: Duration) -> Result<Response, CallError> {
        let outcome = tokio::time::timeout(ttl, self.exchange(request)).await;
        self.note_reachability(matches!(outcome, Ok(Ok(_))), &outcome);
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(CallError::Network(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer from node {} at {} within {ttl:?}",
                    self.target, self.address
                ),
            ))),
        };
        match result? {
            Response::WrongNode { listener } => {
                self.stream = None;
                Err(CallError::Unreachable(io::Error::other(format!(
                    "{} is node {listener}, not node {}: the voter lists differ",
                    self.address, self.target
                ))))
            }
            Response::OtherCluster { cluster } => {
                self.stream = None;
                Err(CallError::Unreachable(
                    self.identity.record_refusal(self.target, cluster),
                ))
            }
            response => Ok(response),
        }
    }

    /// Sends `request` and reads its answer. The connection is held out of `self` meanwhile and put back
    /// only once the whole answer is read: if this future is dropped half-way (openraft times RPCs out
    /// from outside too), the connection is closed, so a late answer is never read as the next
    /// request's (a stale "success" would make the leader count entries the follower has not stored).
    async fn exchange(&mut self, request: Request) -> Result<Response, CallError> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(&self.address)
                    .await
                    .map_err(CallError::Unreachable)?;
                stream.set_nodelay(true).map_err(CallError::Unreachable)?;
                stream
            }
        };
        let envelope = Envelope {
            target: self.target,
            cluster: self.identity.ours(),
            request,
        };
        write_frame(&mut stream, &envelope)
            .await
            .map_err(CallError::Network)?;
        let response = read_frame(&mut stream).await.map_err(CallError::Network)?;
        self.stream = Some(stream);
        Ok(response)
    }

    /// Logs a voter going unreachable, and coming back, once each.
    fn note_reachability<T>(
        &self,
        reached: bool,
        outcome: &Result<Result<T, CallError>, tokio::time::error::Elapsed>,
    ) {
        let mut down = self.down.lock();
        if reached {
            if down.remove(&self.target) {
                info!(node = self.target, address = %self.address, "controller voter reachable again");
            }
        } else if down.insert(self.target) {
            let why = match outcome {
                Ok(Err(CallError::Unreachable(e) | CallError::Network(e))) => e.to_string(),
                _ => "no answer in time".to_string(),
            };
            warn!(node = self.target, address = %self.address, error = %why, "controller voter unreachable");
        }
    }

    fn unexpected<E: std::error::Error>(&self, response: &Response) -> RPCError<u64, BasicNode, E> {
        let e = io::Error::other(format!("node {} answered with {response:?}", self.target));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<MetaRaft> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(Request::AppendEntries(rpc), option.hard_ttl()).await {
            Ok(Response::AppendEntries(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(&other)),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>>
    {
        match self.call(Request::InstallSnapshot(rpc), option.hard_ttl()).await {
            Ok(Response::InstallSnapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(&other)),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Response::Vote(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(self.unexpected(&other)),
            Err(e) => Err(e.into_rpc()),
        }
    }
}
