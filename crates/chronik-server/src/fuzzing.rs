//! The harness of the `kafka_request` fuzz target (`fuzz/fuzz_targets/kafka_request.rs`): one request
//! frame (without its length prefix) through the broker's whole request path, as a connection serves it:
//! `api::parse`, `api::prepare`, the handler, and the response's encoding (`server::start_request` and
//! the future it returns), against a real [`Broker`] on a scratch directory. It lives in the library so
//! that `tests/fuzz_corpus.rs` replays the committed corpus and every regression through exactly the
//! code the fuzzer runs, on every `cargo test`. Not part of the broker's API.
//!
//! Errors are expected (most inputs are malformed); a panic is a bug. What must hold of every response:
//! its length prefix is right, and it decodes as the response to the request's API and version, with the
//! request's correlation id and no byte left over.
//!
//! # State
//! One broker serves every input of a process, so a Produce in one input can be fetched, a group joined
//! in one can be synced in the next. State stays bounded: after [`REQUESTS_PER_BROKER`] requests, or
//! once the WAL holds more than [`MAX_PARTITIONS`] partitions, the broker is shut down, its directory
//! removed, and a fresh one started.
//!
//! # Time
//! The broker measures its waits (Fetch's `max_wait_ms`, group rounds and sessions) with
//! `std::time::Instant`, so a paused tokio clock would not shorten them (Fetch would spin until the real
//! deadline); and tokio's `test-util` is not a dependency. Instead a request that has not answered
//! within [`ANSWER_WAIT`] is taken to be parked: the harness signals the broker's stop, which makes
//! long-polls answer at once as at shutdown, waits up to [`DRAIN_WAIT`] more, and then drops the
//! request as a closed connection does. Group rounds end quickly: the initial rebalance delay is zero
//! and the group clock ticks every millisecond.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use chronik_wal::{IoBackend, WalManager};
use kafka_protocol::{
    messages::{ResponseHeader, ResponseKind},
    protocol::Decodable,
};
use tokio::{
    runtime::Runtime,
    sync::{watch, Semaphore},
    task::JoinHandle,
};

use crate::{
    broker::Broker,
    config::ServerConfig,
    fetch_memory::FetchMemory,
    groups::Coordinator,
    producers::Producers,
    registry::{ClusterSettings, Registry},
};

/// The APIs and versions the broker serves: the corpus holds a seed for each at its lowest and highest.
pub use crate::api::SUPPORTED;

/// How long a request may take before it is taken to be parked (long-poll, group round).
pub const ANSWER_WAIT: Duration = Duration::from_millis(2);
/// How long a parked request gets, after the stop signal, to answer before it is dropped.
pub const DRAIN_WAIT: Duration = Duration::from_millis(25);
/// Requests one broker serves before a fresh one replaces it.
pub const REQUESTS_PER_BROKER: u64 = 20_000;
/// WAL partitions past which a fresh broker replaces the current one (one CreateTopics may ask for
/// 10 000 per topic).
pub const MAX_PARTITIONS: usize = 2_000;
/// Requests between retention passes (which also expire idle producer state).
const RETENTION_EVERY: u64 = 256;
/// How often group sessions and round deadlines are checked.
const GROUP_TICK: Duration = Duration::from_millis(1);

/// Why a request got no response; each is a normal outcome for arbitrary input except `Harness`.
#[derive(Debug, thiserror::Error)]
pub enum Unserved {
    /// The frame could not be served at all (unknown API or version, malformed): the broker closes the
    /// connection.
    #[error("request refused: {0}")]
    Refused(String),
    /// The handler failed (the broker closes the connection).
    #[error("request failed: {0}")]
    Failed(String),
    /// No answer within [`ANSWER_WAIT`] + [`DRAIN_WAIT`]; dropped as a closed connection would be.
    #[error("no answer in time; dropped")]
    Unanswered,
    /// The harness could not start a broker: not a finding about the input.
    #[error("the harness could not start a broker: {0:#}")]
    Harness(anyhow::Error),
}

/// A broker that serves request frames one at a time (see the module docs).
pub struct RequestHarness {
    running: Option<Running>,
    /// Declared last: dropped after the broker, once blocking work still running has finished.
    runtime: Runtime,
}

struct Running {
    broker: Arc<Broker>,
    /// The response memory of the one connection the harness plays.
    fetch_memory: FetchMemory,
    stop: watch::Sender<bool>,
    ticker: JoinHandle<()>,
    served: u64,
    /// Held for its `Drop`, which removes it; declared last, so after the broker is dropped.
    _dir: ScratchDir,
}

impl RequestHarness {
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            running: None,
            runtime,
        })
    }

    /// Serves one request frame; `Ok` if it was answered (or takes no answer). Panics if the response
    /// breaks the protocol.
    pub fn serve(&mut self, frame: &[u8]) -> Result<(), Unserved> {
        let due = self.running.as_ref().is_none_or(Running::is_full);
        if due {
            self.restart().map_err(Unserved::Harness)?;
        }
        let Self { running, runtime } = self;
        let Some(running) = running.as_mut() else {
            return Err(Unserved::Harness(anyhow::anyhow!("no broker")));
        };
        running.served += 1;
        let result = runtime.block_on(serve(running, frame));
        if running.served.is_multiple_of(RETENTION_EVERY) {
            crate::housekeeping::run_once(&running.broker);
        }
        result
    }

    /// Shuts the current broker down (if any) and starts a fresh one on a new directory.
    fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.running.take() {
            old.shut_down(&self.runtime);
        }
        let dir = ScratchDir::new()?;
        let config = config(dir.path());
        let wal = Arc::new(WalManager::open(&config.data_dir, config.wal_config())?);
        let registry = self.runtime.block_on(Registry::open(
            Arc::clone(&wal),
            ClusterSettings::alone("127.0.0.1:9092"),
            None,
            config.partition_limit(),
        ))?;
        let (stop, stop_rx) = watch::channel(false);
        let broker = Arc::new(Broker::new(
            config,
            wal,
            registry,
            Producers::default(),
            Coordinator::new(Duration::ZERO),
            ("127.0.0.1".into(), 9092),
            stop_rx,
        ));
        let fetch_memory = FetchMemory::new(
            Arc::new(Semaphore::new(broker.config.queued_max_response_bytes as usize)),
            broker.config.queued_max_response_bytes,
            Arc::new(Semaphore::new(broker.config.fetch_max_bytes as usize)),
            broker.config.fetch_max_bytes,
        );
        self.runtime.block_on(broker.sync_coordination())?;
        let ticker = self.runtime.spawn(tick_groups(Arc::clone(&broker)));
        self.running = Some(Running {
            broker,
            fetch_memory,
            stop,
            ticker,
            served: 0,
            _dir: dir,
        });
        Ok(())
    }
}

impl Running {
    fn is_full(&self) -> bool {
        self.served >= REQUESTS_PER_BROKER
            || (self.served.is_multiple_of(16) && self.broker.wal.partitions().len() > MAX_PARTITIONS)
    }

    fn shut_down(self, runtime: &tokio::runtime::Runtime) {
        self.ticker.abort();
        runtime.block_on(self.broker.registry.shutdown());
        self.stop.send_replace(true);
        // Errors are the broker's to log; the directory goes anyway.
        let _ = self.broker.wal.shutdown();
    }
}

/// Broker settings for the harness: small segments (rotation and retention get exercised), no
/// preallocation (a topic of 10 000 partitions would zero-fill 20 GB), the portable I/O backend.
fn config(data_dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        metrics_listen: ([127, 0, 0, 1], 0).into(),
        segment_bytes: 64 << 10,
        preallocate_bytes: 0,
        io_backend: IoBackend::Std,
        ..ServerConfig::with_data_dir(data_dir)
    }
}

async fn tick_groups(broker: Arc<Broker>) {
    let mut every = tokio::time::interval(GROUP_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        broker.groups.tick();
    }
}

/// One request through `parse`, `start_request` and its response future, then the response checked.
/// As a connection does, a Fetch reads under the connection's Fetch memory.
async fn serve(running: &Running, frame: &[u8]) -> Result<(), Unserved> {
    let Running {
        broker,
        stop,
        fetch_memory,
        ..
    } = running;
    let request =
        crate::api::parse(Bytes::copy_from_slice(frame)).map_err(|e| Unserved::Refused(e.to_string()))?;
    // A produce queues its appends here; that may wait for room in the WAL's pending bytes.
    let started = crate::server::start_request(broker, request, std::time::Instant::now(), fetch_memory);
    let response = tokio::time::timeout(DRAIN_WAIT, started)
        .await
        .map_err(|_| Unserved::Unanswered)?
        .map_err(|e| Unserved::Refused(e.to_string()))?;
    let mut response = std::pin::pin!(response);
    let answered = match tokio::time::timeout(ANSWER_WAIT, &mut response).await {
        Ok(answered) => answered,
        Err(_) => {
            stop.send_replace(true);
            let drained = tokio::time::timeout(DRAIN_WAIT, &mut response).await;
            stop.send_replace(false);
            drained.map_err(|_| Unserved::Unanswered)?
        }
    };
    let answer = answered.map_err(|e| Unserved::Failed(e.to_string()))?;
    if let Some(answer) = answer {
        check_response(frame, &answer);
    }
    Ok(())
}

/// Panics unless `chunks` is a well-formed response to the request `frame`.
fn check_response(frame: &[u8], chunks: &[Bytes]) {
    let Ok(request) = crate::api::parse(Bytes::copy_from_slice(frame)) else {
        panic!("a request that does not parse was answered");
    };
    let mut response = BytesMut::new();
    for c in chunks {
        response.extend_from_slice(c);
    }
    let mut response = response.freeze();
    assert!(response.len() >= 4, "response shorter than its length prefix");
    let len = response.get_i32();
    assert_eq!(
        usize::try_from(len).ok(),
        Some(response.len()),
        "response length prefix is wrong"
    );
    let key = request.key;
    let version = request.response_version;
    let header = ResponseHeader::decode(&mut response, key.response_header_version(version));
    let header =
        header.unwrap_or_else(|e| panic!("{key:?} v{version} response header does not decode: {e:#}"));
    assert_eq!(
        header.correlation_id, request.header.correlation_id,
        "{key:?} v{version} response has the wrong correlation id"
    );
    if let Err(e) = ResponseKind::decode(key, &mut response, version) {
        panic!("{key:?} v{version} response does not decode: {e:#}");
    }
    assert!(
        response.is_empty(),
        "{key:?} v{version} response has {} bytes after its body",
        response.len()
    );
}

/// A directory removed when dropped: in `/dev/shm` where there is one (fdatasync there costs nothing,
/// and the fuzzer runs thousands of produces a second), else the system's temp directory. A removal
/// can fail while a dropped request's blocking work (a CreateTopics of thousands of partitions) still
/// writes there: such directories are tried again whenever a new one is made. libFuzzer ends the
/// process with `exit`, so destructors may not run: directories of processes that no longer exist are
/// removed then too.
struct ScratchDir(PathBuf);

/// Scratch directories of this process whose removal failed.
static LEFT_BEHIND: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());

const SCRATCH_PREFIX: &str = "chronik-fuzz-";

impl ScratchDir {
    fn new() -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&parent);
        LEFT_BEHIND
            .lock()
            .retain(|dir| std::fs::remove_dir_all(dir).is_err() && dir.exists());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{SCRATCH_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() && self.0.exists() {
            LEFT_BEHIND.lock().push(self.0.clone());
        }
    }
}

/// Removes scratch directories of processes that have exited (only where `/proc` tells).
fn remove_stale(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
