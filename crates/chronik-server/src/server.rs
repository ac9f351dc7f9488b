//! Accepting connections and serving them: framing, limits, request order, graceful shutdown.
//!
//! # Order
//! Kafka processes a connection's requests one after another, in the order they were sent, and answers
//! them in that order; clients rely on it (async commits, join/sync/heartbeat, create-then-produce,
//! idempotent sequences, admin operations). Here a connection reads requests ahead (bounded), but their
//! *effects* happen in arrival order, by one rule (`api::sequencing`):
//! - a request starts only once every earlier request of its connection has been answered, and later ones
//!   wait for it (`Sequencing::Alone`: every API but two);
//! - except that a Produce may start while earlier Produces of the connection wait for their fdatasync,
//!   and an OffsetCommit while earlier OffsetCommits do (`Sequencing::Queued`): each queues its writes in
//!   arrival order when it starts, so only the waits for the disk overlap, never the effects. A request of
//!   another API after them waits until they are answered.
//!
//! Responses leave in arrival order. The audit of every API (effect; what it must see):
//! - Produce: appends and idempotent-producer sequences; queued in order when it starts (`produce.rs`),
//!   fdatasyncs shared across the connection's pipelined produces and all connections (group commit).
//! - OffsetCommit: a committed offset; queued in order to the offsets writer when it starts, stored and
//!   made visible in that order once durable (`offsets.rs`), fdatasyncs shared with every group's commits.
//! - Fetch, ListOffsets, OffsetFetch, Metadata, DescribeConfigs, DescribeGroups, ListGroups,
//!   FindCoordinator, ApiVersions: no effect, but each must see the effects of the requests before it and
//!   none after it (a Fetch after an acknowledged Produce sees its records; OffsetFetch after a commit sees
//!   it). A long-polling Fetch therefore holds the connection's later requests, as in Kafka.
//! - CreateTopics, DeleteTopics, CreatePartitions, AlterConfigs, IncrementalAlterConfigs: registry changes
//!   that later requests depend on (create, then produce).
//! - InitProducerId: a new producer id or epoch, which the producer's next Produce must find.
//! - JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DeleteGroups: group membership and generations; a
//!   JoinGroup waiting for its rebalance holds the connection's later requests, as in Kafka.
//!
//! A request that cannot be framed or decoded (absurd length, unknown API key, unsupported version,
//! malformed body) closes only its own connection, with a logged reason.
//!
//! # Memory
//! Request bodies are read only under the broker-wide request budget, and must arrive within the request
//! body timeout once their length is known (else the connection is closed and its budget freed: a client
//! cannot hold it by announcing a large request and sending nothing). Fetch record data is held only under
//! the response budget and its connection's share of it (`fetch_memory::FetchMemory`); a Fetch runs alone on
//! its connection (above), which is what keeps waiting for that memory free of deadlock.

use std::{collections::VecDeque, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use chronik_wal::WalManager;
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::{
    messages::{ApiKey, ResponseHeader, ResponseKind},
    protocol::Encodable,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch, Semaphore},
    task::JoinSet,
};
use tracing::{debug, error, info, warn};

use crate::{
    api,
    broker::{blocking, Broker},
    config::ServerConfig,
    fetch_memory::FetchMemory,
    frame_buf::{ChunkedBuf, Frame},
    groups::Coordinator,
    producers::Producers,
    registry::Registry,
    telemetry,
};

/// How long a rebalance of an empty group waits for more members to join (Kafka's
/// group.initial.rebalance.delay.ms defaults to 3 s; shorter here so that a lone consumer starts quickly).
const GROUP_INITIAL_REBALANCE_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often group sessions and rebalance deadlines are checked.
const GROUP_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// How soon a reconciliation that could not do everything (a partition not made, an offsets store not
/// loaded) is tried again without waiting for a metadata change.
const RECONCILE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Smallest possible request: api key, api version, correlation id, client id length.
const MIN_REQUEST_BYTES: usize = 10;

/// Runs the broker on `listener` until `shutdown` resolves, then finishes in-flight requests, syncs and
/// checkpoints the WAL, and returns.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    let wal_config = config.wal_config();
    let max_partitions = config.partition_limit();
    info!(
        max_open_segment_files = wal_config.max_open_files,
        "segment files kept open at most"
    );
    let local = listener.local_addr().context("listener address")?;
    // Without an explicit advertised listener, clients are sent where we actually listen (port 0 resolved).
    let advertised = config
        .advertised
        .clone()
        .unwrap_or_else(|| (local.ip().to_string(), i32::from(local.port())));
    let wal = blocking(move || -> anyhow::Result<_> {
        let wal = Arc::new(open_wal(&data_dir, wal_config).context("opening the WAL")?);
        check_offline(&wal)?;
        Ok(wal)
    })
    .await??;
    // A node waiting for a quorum stops on SIGTERM too (nothing was served yet).
    let registry = tokio::select! {
        opened = open_registry(&config, &wal, &advertised, max_partitions) => opened?,
        () = &mut shutdown => {
            info!("stopped while waiting for the controller quorum");
            blocking(move || wal.shutdown()).await?.context("final sync and checkpoint")?;
            return Ok(());
        }
    };
    let (registry, producers) = {
        let wal = Arc::clone(&wal);
        blocking(move || -> anyhow::Result<_> {
            let done = registry.reconcile();
            if let Some((tp, e)) = done.failed.first() {
                warn!(failed = done.failed.len(), first = %tp, error = %e,
                    "partitions assigned to this broker could not be made; retried at the next metadata change");
            }
            // Offline partitions are not among the WAL's partitions: nothing of them is read.
            let partitions: Vec<_> = wal
                .partitions()
                .iter()
                .filter(|tp| !tp.topic.starts_with(crate::registry::RESERVED_PREFIX))
                .filter_map(|tp| wal.partition(tp))
                .collect();
            for p in &partitions {
                let tp = p.topic_partition();
                telemetry::high_watermark(&tp.topic, tp.partition, p.synced_offset());
            }
            let producers = Producers::default();
            producers
                .rebuild(&partitions)
                .context("rebuilding producer state")?;
            Ok((registry, producers))
        })
        .await??
    };
    let report = wal.recovery_report().clone();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %local,
        advertised = %format!("{}:{}", advertised.0, advertised.1),
        metrics_listen = %config.metrics_listen,
        data_dir = %config.data_dir.display(),
        io_backend = wal.io_backend(),
        topics = registry.all().len(),
        partitions = report.partitions,
        segments = report.stats.segments,
        recovered_bytes = report.stats.bytes_scanned,
        truncated_bytes = report.stats.truncated_bytes,
        corrupt_partitions = report.corrupt.len(),
        offline_partitions = report.offline.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "chronik started"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker = Arc::new(Broker::new(
        config,
        Arc::clone(&wal),
        registry,
        producers,
        Coordinator::new(GROUP_INITIAL_REBALANCE_DELAY),
        advertised,
        stop_rx.clone(),
    ));

    // Expires silent group members and ends rebalance rounds whose deadline passed.
    let ticker = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(GROUP_TICK);
            loop {
                every.tick().await;
                broker.groups.tick();
                let (by_state, members) = broker.groups.counts();
                telemetry::groups(&by_state, members);
            }
        })
    };
    {
        // Roles before the first request: a partition is served once this broker took office for it.
        let b = Arc::clone(&broker);
        blocking(move || b.sync_replicas()).await?;
    }
    broker.sync_coordination().await?;
    // Each change of the quorum or of the metadata applied here: metrics, logs of controller and
    // leadership changes, and the WAL made to hold what the metadata assigns this broker.
    let reconciler = {
        let broker = Arc::clone(&broker);
        let mut changes = broker.registry.node().changes();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut reconciled = None;
            let mut controller = None;
            let mut leading = broker.registry.leading();
            // Set while something could not be done: tried again at RECONCILE_RETRY, not only at the
            // next metadata change (which may be long in coming).
            let mut retry = false;
            loop {
                let status = broker.registry.node().status();
                telemetry::controller(&status);
                if status.leader != controller {
                    info!(controller = ?status.leader, term = status.term, this_node = status.active,
                        "controller (Raft leader) changed");
                    controller = status.leader;
                }
                let applied = changes.borrow_and_update().last_applied;
                if applied != reconciled || retry {
                    reconciled = applied;
                    let now = broker.registry.leading();
                    if now != leading {
                        let gained = now.difference(&leading).count();
                        let lost = leading.difference(&now).count();
                        info!(
                            gained,
                            lost,
                            leading = now.len(),
                            "partition leadership of this broker changed"
                        );
                        leading = now;
                    }
                    retry = match broker.reconcile().await {
                        Ok(done) => !done.failed.is_empty(),
                        Err(e) => {
                            warn!(error = %e, "reconciling partitions with the metadata failed");
                            true
                        }
                    };
                    match broker.sync_coordination().await {
                        Ok(all_loaded) => retry |= !all_loaded,
                        Err(e) => {
                            warn!(error = %e, "loading or dropping offsets stores failed");
                            retry = true;
                        }
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(RECONCILE_RETRY), if retry => {}
                    _ = stop.changed() => break,
                }
            }
        })
    };
    let retention = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::topic_config::check_interval(&broker.config));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let b = Arc::clone(&broker);
                if let Err(e) = blocking(move || crate::housekeeping::run_once(&b)).await {
                    warn!(error = %e, "retention pass failed");
                }
            }
        })
    };
    broker.publish_offline();
    crate::http::READY.store(true, std::sync::atomic::Ordering::Release);
    let mut connections = JoinSet::new();
    let limits = Arc::new(Limits::new(&broker.config));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = limits.connection_slot() else {
                        telemetry::request_failed("too_many_connections");
                        warn!(%peer, max = broker.config.max_connections, "connection limit reached; closing new connection");
                        drop(stream);
                        continue;
                    };
                    let broker = Arc::clone(&broker);
                    let stop = stop_rx.clone();
                    let limits = Arc::clone(&limits);
                    connections.spawn(serve_connection(stream, peer, broker, limits, stop, slot));
                }
                Err(e) => warn!(error = %e, "accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    crate::http::READY.store(false, std::sync::atomic::Ordering::Release);
    info!(
        connections = connections.len(),
        "stopping: finishing in-flight requests"
    );
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    ticker.abort();
    retention.abort();
    // Awaited, not aborted: a reconciliation running in the blocking pool must end before the WAL does.
    if let Err(e) = reconciler.await {
        warn!(error = %e, "the reconciler ended abnormally");
    }
    broker.registry.shutdown().await;
    drop(broker);
    blocking(move || wal.shutdown())
        .await?
        .context("final sync and checkpoint")?;
    Ok(())
}

/// Starts this node's metadata (opening the controller listener unless it is the only voter) and waits
/// until it has caught up with the cluster's.
async fn open_registry(
    config: &ServerConfig,
    wal: &Arc<WalManager>,
    advertised: &(String, i32),
    max_partitions: usize,
) -> anyhow::Result<Registry> {
    let voters = config.voters()?;
    let controller = if voters.len() > 1 {
        let listener = TcpListener::bind(config.controller_listen)
            .await
            .with_context(|| format!("controller listener on {}", config.controller_listen))?;
        info!(address = %config.controller_listen, voters = %config.controller_voters, "controller listening");
        Some(listener)
    } else {
        None
    };
    let mut node = chronik_cluster::NodeConfig::new(
        config.node_id,
        voters,
        format!("{}:{}", advertised.0, advertised.1),
    );
    node.session_timeout = std::time::Duration::from_millis(config.broker_session_timeout_ms);
    let settings = crate::registry::ClusterSettings {
        node,
        default_replication_factor: config.default_replication_factor as usize,
    };
    Registry::open(Arc::clone(wal), settings, controller, max_partitions)
        .await
        .context("starting the cluster metadata")
}

/// Logs each partition the WAL could not open, and refuses to start if one is the broker's own.
///
/// A client partition that is offline is served as unavailable (KAFKA_STORAGE_ERROR) while the others
/// serve. An internal one (`__chronik_metadata`, `__chronik_offsets*`) holds the broker's own state: without
/// it the broker would answer wrongly (topics unknown, committed offsets lost), so it does not start, and
/// says which partition and why.
fn check_offline(wal: &WalManager) -> anyhow::Result<()> {
    let offline = wal.offline_partitions();
    if let Some(internal) = offline
        .iter()
        .find(|o| o.tp.topic.starts_with(crate::registry::RESERVED_PREFIX))
    {
        anyhow::bail!(
            "the broker's internal partition {} could not be opened ({}); it cannot serve without it. \
             Remove the cause (open file limit, permissions, what is in its directory under partitions/) \
             and start again",
            internal.tp,
            internal.cause
        );
    }
    for o in &offline {
        error!(topic = %o.tp.topic, partition = o.tp.partition, cause = %o.cause,
            "partition offline: its files could not be opened; its requests are answered KAFKA_STORAGE_ERROR \
             until the cause is removed and the broker restarted");
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn open_wal(dir: &std::path::Path, config: chronik_wal::WalConfig) -> chronik_wal::Result<WalManager> {
    WalManager::open(dir, config)
}

/// Test builds: a control file named by `CHRONIK_FAULT_CONTROL` injects disk faults (see `faults.rs`).
#[cfg(feature = "fault-injection")]
fn open_wal(dir: &std::path::Path, config: chronik_wal::WalConfig) -> chronik_wal::Result<WalManager> {
    match std::env::var_os("CHRONIK_FAULT_CONTROL") {
        Some(control) => {
            warn!(control = ?control, "disk fault injection is on");
            WalManager::open_with_io(dir, config, crate::faults::io(control.into()))
        }
        None => WalManager::open(dir, config),
    }
}

impl ConnectionError {
    /// Short label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            ConnectionError::BadLength(..) => "bad_length",
            ConnectionError::Request(api::RequestError::UnknownApiKey(_)) => "unknown_api_key",
            ConnectionError::Request(api::RequestError::UnsupportedVersion(..)) => "unsupported_version",
            ConnectionError::Request(api::RequestError::Malformed(..) | api::RequestError::TooShort(_)) => {
                "malformed"
            }
            ConnectionError::Io(_) => "io",
            ConnectionError::Idle(_) => "idle_timeout",
            ConnectionError::BodyTimeout(..) => "request_body_timeout",
            ConnectionError::WriteStalled(_) => "write_timeout",
            ConnectionError::Internal(_) => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("request length {0} is outside 10..={1}")]
    BadLength(i64, u32),
    #[error(transparent)]
    Request(#[from] api::RequestError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("no request for {0:?} with nothing in flight")]
    Idle(std::time::Duration),
    #[error("the body of a {0}-byte request did not arrive within {1:?}")]
    BodyTimeout(u32, std::time::Duration),
    #[error("the client took no response bytes for {0:?}")]
    WriteStalled(std::time::Duration),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

/// What bounds memory across connections.
#[derive(Debug)]
struct Limits {
    /// One permit per request byte held (read and not yet answered), over all connections.
    request_bytes: Arc<Semaphore>,
    /// Time a request body may take to arrive once its length has been read.
    body_timeout: std::time::Duration,
    /// One permit per byte of Fetch record data held (read from the WAL, not yet written), over all
    /// connections.
    response_bytes: Arc<Semaphore>,
    response_bytes_max: u32,
    /// Each connection's share of `response_bytes`: one full-size Fetch response.
    connection_response_bytes: u32,
    idle: std::time::Duration,
    /// How long a response may wait for its client to take a byte.
    write_timeout: std::time::Duration,
    /// One permit per connection allowed.
    connections: Arc<Semaphore>,
}

impl Limits {
    fn new(config: &ServerConfig) -> Self {
        Self {
            request_bytes: Arc::new(Semaphore::new(config.queued_max_request_bytes as usize)),
            body_timeout: std::time::Duration::from_millis(config.request_body_timeout_ms),
            response_bytes: Arc::new(Semaphore::new(config.queued_max_response_bytes as usize)),
            response_bytes_max: config.queued_max_response_bytes,
            connection_response_bytes: config.fetch_max_bytes,
            idle: std::time::Duration::from_millis(config.connections_max_idle_ms),
            write_timeout: std::time::Duration::from_millis(config.response_write_timeout_ms),
            connections: Arc::new(Semaphore::new(config.max_connections as usize)),
        }
    }

    /// The response memory of one new connection.
    fn fetch_memory(&self) -> FetchMemory {
        FetchMemory::new(
            Arc::clone(&self.response_bytes),
            self.response_bytes_max,
            Arc::new(Semaphore::new(self.connection_response_bytes as usize)),
            self.connection_response_bytes,
        )
    }

    /// A place for one more connection, held for its life; `None` at the limit.
    fn connection_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }
}

/// A request body and the share of the request-memory budget it holds until its response is written.
type Request = (Bytes, tokio::sync::OwnedSemaphorePermit);

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    debug!(%peer, "connection opened");
    telemetry::connection_opened();
    let (reader, mut writer) = stream.into_split();
    // Reading runs in its own task so that a half-read request is never lost to a `select!`.
    let (requests_tx, mut requests) = mpsc::channel(READ_AHEAD);
    let max = broker.config.max_request_bytes;
    let read_task = tokio::spawn(read_requests(
        reader,
        max,
        Arc::clone(&limits.request_bytes),
        limits.body_timeout,
        requests_tx,
    ));
    let fetch_memory = limits.fetch_memory();
    // Started and not yet answered, oldest first, with the API of each.
    let mut in_flight = FuturesOrdered::new();
    let mut in_flight_apis: VecDeque<ApiKey> = VecDeque::new();
    // Read, and waiting for the requests before it (see the module doc).
    let mut next: Option<ReadRequest> = None;
    let (idle, write_timeout) = (limits.idle, limits.write_timeout);
    let mut last_request = tokio::time::Instant::now();
    let result: Result<(), ConnectionError> = async {
        loop {
            if next.as_ref().is_some_and(|r| may_start(r.parsed.key, &in_flight_apis)) {
                if let Some(ReadRequest { parsed, permit, arrived }) = next.take() {
                    let key = parsed.key;
                    let response = start_request(&broker, parsed, arrived, &fetch_memory).await?;
                    in_flight_apis.push_back(key);
                    // The budget share is given back once the response has been written.
                    in_flight.push_back(Box::pin(async move { (response.await, permit) }));
                }
            }
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    in_flight_apis.pop_front();
                    write_response(&mut writer, done, write_timeout, &mut stop).await?;
                }
                request = requests.recv(), if next.is_none() && in_flight.len() < MAX_IN_FLIGHT => match request {
                    Some(Ok((body, permit))) => {
                        last_request = tokio::time::Instant::now();
                        let arrived = Instant::now();
                        next = Some(ReadRequest { parsed: api::parse(body)?, permit, arrived });
                    }
                    Some(Err(e)) => return Err(e),
                    // The client closed its side: finish answering what it sent.
                    None => break,
                },
                () = tokio::time::sleep_until(last_request + idle), if in_flight.is_empty() && next.is_none() => {
                    return Err(ConnectionError::Idle(idle));
                }
                // A request read but not started is dropped unanswered: it has had no effect.
                _ = stop.changed() => break,
            }
        }
        while let Some(done) = in_flight.next().await {
            write_response(&mut writer, done, write_timeout, &mut stop).await?;
        }
        Ok(())
    }
    .await;
    read_task.abort();
    // The slot is free before the gauge says so: a client that saw the count drop can connect.
    drop(slot);
    telemetry::connection_closed();
    match result {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(ConnectionError::Io(e)) => debug!(%peer, error = %e, "connection ended"),
        Err(e @ ConnectionError::Idle(_)) => {
            telemetry::request_failed(e.reason());
            debug!(%peer, reason = %e, "closing idle connection");
        }
        Err(e) => {
            telemetry::request_failed(e.reason());
            warn!(%peer, reason = %e, "closing connection");
        }
    }
}

/// A request read from the connection, not yet started.
struct ReadRequest {
    parsed: api::ParsedRequest,
    /// Its share of the request-memory budget, held until its response is written.
    permit: tokio::sync::OwnedSemaphorePermit,
    arrived: Instant,
}

/// Whether a request of `key` may start while the requests of `in_flight` (oldest first) are unanswered.
fn may_start(key: ApiKey, in_flight: &VecDeque<ApiKey>) -> bool {
    in_flight.is_empty()
        || (api::sequencing(key) == api::Sequencing::Queued && in_flight.iter().all(|k| *k == key))
}

/// Writes one response frame (if any), giving up when the client takes nothing for `limit` or the broker
/// stops: a client that never reads cannot hold a connection's memory forever.
async fn write_response(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    done: (
        Result<Option<Frame>, ConnectionError>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    limit: std::time::Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let (frame, _permit) = done;
    let Some(frame) = frame? else { return Ok(()) };
    let total: usize = frame.chunks.iter().map(Bytes::len).sum();
    let mut written = 0;
    while written < total {
        let slices = unwritten(&frame.chunks, written);
        // A dropped sender counts as stopping (and would make `changed()` return at once forever).
        let stopping = *stop.borrow() || stop.has_changed().is_err();
        let n = if stopping {
            // Stopping: still give the client its answers, but do not wait long on a stalled one.
            let limit = limit.min(SHUTDOWN_WRITE_LIMIT);
            tokio::time::timeout(limit, writer.write_vectored(&slices))
                .await
                .map_err(|_| ConnectionError::WriteStalled(limit))??
        } else {
            let step = tokio::time::timeout(limit, writer.write_vectored(&slices));
            tokio::select! {
                r = step => r.map_err(|_| ConnectionError::WriteStalled(limit))??,
                _ = stop.changed() => continue,
            }
        };
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        written += n;
    }
    Ok(())
}

/// The parts of `frame` after its first `written` bytes, at most `IOV_MAX`-ish many per call.
fn unwritten(frame: &[Bytes], mut written: usize) -> Vec<std::io::IoSlice<'_>> {
    const MAX_SLICES: usize = 512;
    let mut out = Vec::with_capacity(frame.len().min(MAX_SLICES));
    for chunk in frame {
        if out.len() == MAX_SLICES {
            break;
        }
        if written >= chunk.len() {
            written -= chunk.len();
            continue;
        }
        out.push(std::io::IoSlice::new(&chunk[written..]));
        written = 0;
    }
    out
}

/// How long a stopping broker waits for a client to take each piece of a response.
const SHUTDOWN_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Requests a connection reads ahead of the one being answered.
const READ_AHEAD: usize = 8;
/// Requests a connection may have started but not yet answered. librdkafka keeps up to a million in
/// flight without idempotence (5 with it) and sends one partition per Produce: a producer writing 1,000
/// partitions at 20,000 records/s sends some 15,000 requests/s on one connection, and with 16 in flight
/// they queued for hundreds of ms (README, "Many partitions"). Their memory is bounded by the request
/// budget (`queued_max_request_bytes`), not by this.
const MAX_IN_FLIGHT: usize = 128;

/// Reads length-prefixed requests until the peer closes or sends something unframeable. Each body's bytes
/// are taken from the shared request budget before it is allocated, and must then arrive within
/// `body_timeout`.
async fn read_requests(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    max: u32,
    budget: Arc<Semaphore>,
    body_timeout: std::time::Duration,
    out: mpsc::Sender<Result<Request, ConnectionError>>,
) {
    loop {
        let len = match reader.read_i32().await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
        };
        if len < MIN_REQUEST_BYTES as i32 || len as u32 > max {
            let _ = out
                .send(Err(ConnectionError::BadLength(i64::from(len), max)))
                .await;
            return;
        }
        let Ok(permit) = Arc::clone(&budget).acquire_many_owned(len as u32).await else {
            return;
        };
        let mut body = BytesMut::zeroed(len as usize);
        // Timed from when the budget is granted: a body that waited for it may have been sent long ago.
        match tokio::time::timeout(body_timeout, reader.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                // The budget is given back now, not once the connection has noticed.
                drop((body, permit));
                let _ = out
                    .send(Err(ConnectionError::BodyTimeout(len as u32, body_timeout)))
                    .await;
                return;
            }
        }
        if out.send(Ok((body.freeze(), permit))).await.is_err() {
            return;
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Option<Frame>, ConnectionError>> + Send>>;

/// Runs a decoded request's ordered part; returns the future of its response frame (`None` when the
/// request takes no answer). Its duration is counted from `arrived`, so it includes the wait for the
/// requests before it. A Fetch reads under `fetch_memory`.
pub(crate) async fn start_request(
    broker: &Arc<Broker>,
    request: api::ParsedRequest,
    arrived: Instant,
    fetch_memory: &FetchMemory,
) -> Result<ResponseFuture, ConnectionError> {
    let api::ParsedRequest {
        key,
        version,
        response_version,
        header,
        body,
    } = request;
    telemetry::request_started(key);
    let api_error = move |e| match e {
        api::ApiError::Internal(e) => ConnectionError::Internal(e),
    };
    let prepared = api::prepare(broker, version, body, fetch_memory)
        .await
        .map_err(api_error)?;
    let correlation_id = header.correlation_id;
    Ok(Box::pin(async move {
        let response = match prepared {
            api::Prepared::NoResponse => None,
            api::Prepared::Later(f) => f.await.map_err(api_error)?,
        };
        telemetry::request_finished(key, arrived.elapsed());
        let Some(response) = response else { return Ok(None) };
        let mut frame = ChunkedBuf::new(response.records);
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, key.response_header_version(response_version))
            .map_err(ConnectionError::Internal)?;
        match &response.kind {
            // Fetch carries record data: encode into chunks that keep it uncopied.
            ResponseKind::Fetch(fetch) => fetch.encode(&mut frame, response_version),
            // Everything else is small and has no record sets: one contiguous part.
            other => other.encode(frame.current_mut(), response_version),
        }
        .map_err(ConnectionError::Internal)?;
        let size = i32::try_from(frame.len() - 4)
            .map_err(|_| ConnectionError::Internal(anyhow::anyhow!("response of {} bytes", frame.len())))?;
        frame.set_prefix(size.to_be_bytes());
        Ok(Some(frame.finish()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_waits_for_its_connection_unless_it_queues_behind_the_same_api() {
        use ApiKey::*;
        let rows: &[(ApiKey, &[ApiKey], bool)] = &[
            // Nothing in flight: anything starts.
            (Fetch, &[], true),
            (Produce, &[], true),
            // Produces and commits queue behind their own kind only.
            (Produce, &[Produce, Produce], true),
            (OffsetCommit, &[OffsetCommit], true),
            (Produce, &[OffsetCommit], false),
            (OffsetCommit, &[Produce], false),
            // Everything else waits for what is in flight, and nothing queues behind it.
            (Fetch, &[Produce], false),
            (OffsetFetch, &[OffsetCommit], false),
            (Heartbeat, &[JoinGroup], false),
            (Produce, &[CreateTopics], false),
            (Produce, &[Fetch], false),
            (Metadata, &[Metadata], false),
        ];
        for (key, in_flight, starts) in rows {
            let in_flight: VecDeque<ApiKey> = in_flight.iter().copied().collect();
            assert_eq!(
                may_start(*key, &in_flight),
                *starts,
                "{key:?} behind {in_flight:?}"
            );
        }
    }

    #[test]
    fn every_connection_error_reason_is_a_registered_metric_label() {
        use api::RequestError as R;
        let errors = [
            ConnectionError::BadLength(0, 1),
            R::UnknownApiKey(-1).into(),
            R::UnsupportedVersion(ApiKey::Produce, 99).into(),
            R::Malformed(ApiKey::Produce, 3, String::new()).into(),
            R::TooShort(0).into(),
            ConnectionError::Idle(std::time::Duration::ZERO),
            ConnectionError::BodyTimeout(0, std::time::Duration::ZERO),
            ConnectionError::WriteStalled(std::time::Duration::ZERO),
            ConnectionError::Internal(anyhow::anyhow!("x")),
        ];
        for e in &errors {
            assert!(
                telemetry::REQUEST_ERROR_REASONS.contains(&e.reason()),
                "{} is not registered",
                e.reason()
            );
        }
    }
}
