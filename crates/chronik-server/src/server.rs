//! Accepting connections and serving them: framing, limits, ordered responses, graceful shutdown.
//!
//! Each connection reads requests ahead (bounded) and starts them in arrival order; responses leave in
//! that same order, as Kafka requires. A produce queues its appends when it starts, so a client that
//! pipelines produce requests gets its batches in order while their fdatasyncs are shared. A request that
//! cannot be framed or decoded (absurd length, unknown API key, unsupported version, malformed body)
//! closes only its own connection, with a logged reason.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use chronik_wal::{WalConfig, WalManager};
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::{
    messages::{ApiKey, RequestHeader, ResponseHeader},
    protocol::{Decodable, Encodable},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use crate::{
    api,
    broker::{blocking, Broker},
    config::ServerConfig,
    groups::Coordinator,
    offsets::Offsets,
    producers::Producers,
    telemetry,
    topics::Topics,
};

/// How long a rebalance of an empty group waits for more members to join (Kafka's
/// group.initial.rebalance.delay.ms defaults to 3 s; shorter here so that a lone consumer starts quickly).
const GROUP_INITIAL_REBALANCE_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often group sessions and rebalance deadlines are checked.
const GROUP_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Smallest possible request: api key, api version, correlation id, client id length.
const MIN_REQUEST_BYTES: usize = 10;

/// Runs the broker on `listener` until `shutdown` resolves, then finishes in-flight requests, syncs and
/// checkpoints the WAL, and returns.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    let wal_config = WalConfig {
        io_backend: config.io_backend,
        ..WalConfig::default()
    };
    let (wal, topics, producers, offsets) = blocking(move || -> anyhow::Result<_> {
        let wal = Arc::new(WalManager::open(&data_dir, wal_config).context("opening the WAL")?);
        let topics = Topics::open(Arc::clone(&wal)).context("loading topics")?;
        let partitions: Vec<_> = wal
            .partitions()
            .iter()
            .filter(|tp| !tp.topic.starts_with(crate::topics::RESERVED_PREFIX))
            .filter_map(|tp| wal.partition(tp))
            .collect();
        let producers = Producers::default();
        producers
            .rebuild(&partitions)
            .context("rebuilding producer state")?;
        let offsets = Offsets::open(&wal).context("loading committed offsets")?;
        Ok((wal, topics, producers, offsets))
    })
    .await??;
    let report = wal.recovery_report().clone();
    let local = listener.local_addr().context("listener address")?;
    // Without an explicit advertised listener, clients are sent where we actually listen (port 0 resolved).
    let advertised = config
        .advertised
        .clone()
        .unwrap_or_else(|| (local.ip().to_string(), i32::from(local.port())));
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %local,
        advertised = %format!("{}:{}", advertised.0, advertised.1),
        metrics_listen = %config.metrics_listen,
        data_dir = %config.data_dir.display(),
        io_backend = wal.io_backend(),
        topics = topics.all().len(),
        partitions = report.partitions,
        segments = report.stats.segments,
        recovered_bytes = report.stats.bytes_scanned,
        truncated_bytes = report.stats.truncated_bytes,
        corrupt_partitions = report.corrupt.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "chronik started"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker = Arc::new(Broker {
        config,
        wal: Arc::clone(&wal),
        topics,
        producers,
        offsets,
        groups: Coordinator::new(GROUP_INITIAL_REBALANCE_DELAY),
        advertised,
        stop: stop_rx.clone(),
    });

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
    crate::http::READY.store(true, std::sync::atomic::Ordering::Release);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let broker = Arc::clone(&broker);
                    let stop = stop_rx.clone();
                    connections.spawn(async move { serve_connection(stream, peer, broker, stop).await });
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
    drop(broker);
    blocking(move || wal.shutdown())
        .await?
        .context("final sync and checkpoint")?;
    Ok(())
}

impl ConnectionError {
    /// Short label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            ConnectionError::BadLength(..) => "bad_length",
            ConnectionError::UnknownApiKey(_) => "unknown_api_key",
            ConnectionError::UnsupportedVersion(..) => "unsupported_version",
            ConnectionError::Malformed(..) => "malformed",
            ConnectionError::Io(_) => "io",
            ConnectionError::Internal(_) => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("request length {0} is outside 10..={1}")]
    BadLength(i64, u32),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("unsupported version {1} of {0:?}")]
    UnsupportedVersion(ApiKey, i16),
    #[error("malformed {0:?} v{1} request: {2}")]
    Malformed(ApiKey, i16, String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    debug!(%peer, "connection opened");
    telemetry::connection_opened();
    let (reader, mut writer) = stream.into_split();
    // Reading runs in its own task so that a half-read request is never lost to a `select!`.
    let (requests_tx, mut requests) = mpsc::channel(READ_AHEAD);
    let max = broker.config.max_request_bytes;
    let read_task = tokio::spawn(read_requests(reader, max, requests_tx));
    let mut in_flight = FuturesOrdered::new();
    let result: Result<(), ConnectionError> = async {
        loop {
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(frame) = done? {
                        let frame: BytesMut = frame;
                        writer.write_all(&frame).await?;
                    }
                }
                request = requests.recv(), if in_flight.len() < MAX_IN_FLIGHT => match request {
                    Some(Ok(body)) => in_flight.push_back(start_request(&broker, body).await?),
                    Some(Err(e)) => return Err(e),
                    // The client closed its side: finish answering what it sent.
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        while let Some(done) = in_flight.next().await {
            if let Some(frame) = done? {
                writer.write_all(&frame).await?;
            }
        }
        Ok(())
    }
    .await;
    read_task.abort();
    telemetry::connection_closed();
    match result {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(ConnectionError::Io(e)) => debug!(%peer, error = %e, "connection ended"),
        Err(e) => {
            telemetry::request_failed(e.reason());
            warn!(%peer, reason = %e, "closing connection");
        }
    }
}

/// Requests a connection reads ahead of the one being answered.
const READ_AHEAD: usize = 8;
/// Requests a connection may have started but not yet answered (librdkafka pipelines up to 5 per broker).
const MAX_IN_FLIGHT: usize = 16;

/// Reads length-prefixed requests until the peer closes or sends something unframeable.
async fn read_requests(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    max: u32,
    out: mpsc::Sender<Result<Bytes, ConnectionError>>,
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
        let mut body = BytesMut::zeroed(len as usize);
        if let Err(e) = reader.read_exact(&mut body).await {
            let _ = out.send(Err(e.into())).await;
            return;
        }
        if out.send(Ok(body.freeze())).await.is_err() {
            return;
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Option<BytesMut>, ConnectionError>> + Send>>;

/// Decodes a request's header and runs its ordered part; returns the future of its response frame
/// (`None` when the request takes no answer).
async fn start_request(broker: &Arc<Broker>, mut body: Bytes) -> Result<ResponseFuture, ConnectionError> {
    let raw_key = body.slice(0..2).get_i16();
    let version = body.slice(2..4).get_i16();
    let key = ApiKey::try_from(raw_key).map_err(|()| ConnectionError::UnknownApiKey(raw_key))?;
    let started = Instant::now();
    telemetry::request_started(key);
    let header = RequestHeader::decode(&mut body, key.request_header_version(version))
        .map_err(|e| ConnectionError::Malformed(key, version, format!("header: {e:#}")))?;
    // ApiVersions answers any version (with an error for unknown ones) so clients can negotiate.
    let response_version = match api::supported(key) {
        Some(range) if range.contains(&version) => version,
        _ if key == ApiKey::ApiVersions => 0,
        _ => return Err(ConnectionError::UnsupportedVersion(key, version)),
    };
    let api_error = move |e| match e {
        api::ApiError::Malformed(m) => ConnectionError::Malformed(key, version, m),
        api::ApiError::Internal(e) => ConnectionError::Internal(e),
    };
    let prepared = api::prepare(broker, key, version, body)
        .await
        .map_err(api_error)?;
    let correlation_id = header.correlation_id;
    Ok(Box::pin(async move {
        let response = match prepared {
            api::Prepared::NoResponse => None,
            api::Prepared::Later(f) => f.await.map_err(api_error)?,
        };
        telemetry::request_finished(key, started.elapsed());
        let Some(response) = response else { return Ok(None) };
        let mut frame = BytesMut::with_capacity(64);
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, key.response_header_version(response_version))
            .map_err(ConnectionError::Internal)?;
        response
            .encode(&mut frame, response_version)
            .map_err(ConnectionError::Internal)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        Ok(Some(frame))
    }))
}
