//! A broker started inside the test process through the library's `chronik_server::run`, on a runtime of
//! its own: for tests that only speak the protocol (and restart on the same data directory), which then
//! need no binary, no process start and no log parsing.
//!
//! What the binary adds is absent: no allocator guard, no logging, no metrics endpoint. Tests that need
//! one of these, or a kill -9, use `Broker` (the real binary). `run` sets the process-wide readiness flag
//! `chronik_server::http::READY` that only the metrics endpoint reads; nothing here serves or checks it,
//! so brokers of tests running in parallel threads do not disturb each other.

use std::{net::TcpStream, path::Path, thread::JoinHandle, time::Duration};

use chronik_server::config::ServerConfig;
use tokio::sync::oneshot;

pub struct InProcessBroker {
    pub addr: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessBroker {
    /// Starts a broker on `data_dir` with the declared defaults (what `chronik serve --data-dir` runs
    /// with) and an ephemeral port.
    pub fn start(data_dir: &Path) -> InProcessBroker {
        InProcessBroker::start_with(ServerConfig::with_data_dir(data_dir))
    }

    /// Starts a broker with `config`, listening on an ephemeral port of 127.0.0.1 whatever `config.listen`
    /// says. It is bound before this returns; connections made while the broker still recovers wait in
    /// the listen backlog and are served once it has.
    pub fn start_with(config: ServerConfig) -> InProcessBroker {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("broker {addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    // A dropped sender (the test panicked) stops the broker as a sent signal does.
                    chronik_server::run(listener, config, async move {
                        let _ = stop.await;
                    })
                    .await
                })
            })
            .unwrap();
        InProcessBroker {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// The graceful stop (as SIGTERM to the binary): finishes in-flight requests, syncs and checkpoints
    /// the WAL; `run` must return success.
    pub fn stop(mut self) {
        let result = self.shut_down().expect("stopped once");
        result.expect("the broker thread panicked").unwrap();
    }

    /// Signals shutdown and waits for `run` to return; `None` if that was already done.
    fn shut_down(&mut self) -> Option<std::thread::Result<anyhow::Result<()>>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        Some(self.thread.take()?.join())
    }
}

impl Drop for InProcessBroker {
    /// Also when a test fails: the broker stops before its directory is removed.
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}
