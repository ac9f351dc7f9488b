//! Controller failover time, in one process over real TCP: three voters on their own WALs (temporary
//! directories); ten times, the leader is stopped and the time until a metadata change submitted through
//! a survivor is applied is measured, then the stopped node is restarted. Prints each time, the median
//! and the maximum. Default timings (see `NodeConfig::new`) unless
//! `--election-ms MIN,MAX` is given.
//!
//!     cargo run --release -p chronik-cluster --example failover [-- --rounds 10]
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chronik_cluster::{Command, MetaNode, NodeConfig};
use chronik_wal::{
    io::{StdIo, WalIo},
    WalConfig, WalManager,
};
use tokio::net::TcpListener;

async fn start(
    id: u64,
    dir: &std::path::Path,
    voters: &BTreeMap<u64, String>,
    election: Option<(u64, u64)>,
) -> MetaNode {
    let listener = TcpListener::bind(&voters[&id]).await.unwrap();
    let wal = Arc::new(WalManager::open(dir.join("wal"), WalConfig::default()).unwrap());
    let io: Arc<dyn WalIo> = Arc::new(StdIo);
    let mut config = NodeConfig::new(id, voters.clone(), format!("127.0.0.1:{}", 9092 + id));
    if let Some((lo, hi)) = election {
        config.election_timeout = (Duration::from_millis(lo), Duration::from_millis(hi));
        config.heartbeat_interval = Duration::from_millis(lo / 4);
    }
    MetaNode::start(config, wal, io, dir, Some(listener))
        .await
        .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = value("--rounds").map_or(10, |v| v.parse().unwrap());
    let election = value("--election-ms").map(|v| {
        let (lo, hi) = v.split_once(',').unwrap();
        (lo.parse().unwrap(), hi.parse().unwrap())
    });
    let mut voters = BTreeMap::new();
    for id in 1..=3u64 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        voters.insert(id, l.local_addr().unwrap().to_string());
    }
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(
            id,
            start(id, dirs[id as usize - 1].path(), &voters, election).await,
        );
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        let leader = loop {
            let seen: Vec<Option<u64>> = nodes.values().map(MetaNode::leader).collect();
            if let Some(Some(l)) = seen.first().copied() {
                if seen.iter().all(|s| *s == Some(l)) {
                    break l;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // A healthy cluster first: every node has applied what the leader has (a node restarted in the
        // round before may still be catching up, and a node behind cannot win an election).
        loop {
            let applied: Vec<Option<u64>> = nodes.values().map(|n| n.status().last_applied_index).collect();
            let logs: Vec<Option<u64>> = nodes.values().map(|n| n.status().last_log_index).collect();
            if applied.windows(2).all(|w| w[0] == w[1]) && logs.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let survivor = (1..=3).find(|&id| id != leader).unwrap();
        nodes.remove(&leader).unwrap().shutdown().await;
        let stopped = Instant::now();
        let command = Command::SetConfigs {
            name: "none".into(),
            configs: BTreeMap::new(),
        };
        nodes[&survivor]
            .submit(command, Duration::from_secs(60))
            .await
            .unwrap();
        let took = stopped.elapsed();
        println!(
            "round {:>2}: leader {leader} stopped, a change applied through node {survivor} after {:>5} ms",
            round + 1,
            took.as_millis()
        );
        times.push(took);
        nodes.insert(
            leader,
            start(leader, dirs[leader as usize - 1].path(), &voters, election).await,
        );
    }
    times.sort();
    println!(
        "controller failover over {rounds} leader stops: median {} ms, max {} ms",
        times[times.len() / 2].as_millis(),
        times.last().unwrap().as_millis()
    );
    for (_, node) in nodes {
        node.shutdown().await;
    }
}
