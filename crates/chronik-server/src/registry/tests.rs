use std::{collections::BTreeMap, io, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use chronik_wal::{
    io::{
        fault::{FaultPlan, FaultyIo},
        OpenMode, StdIo,
    },
    Batch, TopicPartition, WalConfig, WalManager,
};
use uuid::Uuid;

use super::{local, ClusterSettings, MetadataRecord, Registry, TopicError, METADATA_TOPIC};
use crate::{broker::Broker, config::ServerConfig, groups::Coordinator, producers::Producers};

async fn open_on(wal: Arc<WalManager>, max_partitions: usize) -> Registry {
    Registry::open(
        wal,
        ClusterSettings::alone("127.0.0.1:9092"),
        None,
        max_partitions,
    )
    .await
    .expect("registry")
}

async fn open(dir: &Path) -> (Arc<WalManager>, Registry) {
    let wal = Arc::new(WalManager::open(dir, WalConfig::default()).expect("wal"));
    let registry = open_on(Arc::clone(&wal), usize::MAX).await;
    registry.reconcile();
    (wal, registry)
}

/// Names of the entries of the WAL's partition directory that belong to `topic`, leftovers included.
fn dirs_of(dir: &Path, topic: &str) -> Vec<String> {
    let prefix = format!("{topic}-");
    let mut names: Vec<String> = std::fs::read_dir(dir.join("partitions"))
        .expect("list partitions")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_survive_restart_and_deletes_remove_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, id) = {
        let (wal, registry) = open(dir.path()).await;
        let a = registry
            .create("a", 3, -1, BTreeMap::new(), false)
            .await
            .expect("create a");
        registry
            .create("b", 1, -1, BTreeMap::new(), false)
            .await
            .expect("create b");
        assert!(matches!(
            registry.create("a", 1, -1, BTreeMap::new(), false).await,
            Err(TopicError::AlreadyExists(_))
        ));
        assert!(matches!(
            registry
                .create("__chronik_x", 1, -1, BTreeMap::new(), false)
                .await,
            Err(TopicError::InvalidName(..))
        ));
        assert!(matches!(
            registry.create("c", 0, -1, BTreeMap::new(), false).await,
            Err(TopicError::InvalidPartitions(0))
        ));
        assert!(matches!(
            registry.create("c", 1, 2, BTreeMap::new(), false).await,
            Err(TopicError::ReplicationUnsupported(2))
        ));
        registry.reconcile();
        assert_eq!(dirs_of(dir.path(), "a"), vec!["a-0", "a-1", "a-2"]);
        registry.delete("b").await.expect("delete b");
        registry.reconcile();
        assert!(wal.partition(&TopicPartition::new("b", 0)).is_none());
        let route = registry.route("a", 2).expect("route");
        assert_eq!(route.leader, Some(0));
        assert!(registry.route("a", 3).is_none());
        registry.shutdown().await;
        (registry.cluster_id(), a.topic_id)
    };
    let (wal, registry) = open(dir.path()).await;
    assert_eq!(registry.cluster_id(), cluster, "cluster id is stable");
    assert_eq!(
        registry.all().iter().map(|t| &*t.name).collect::<Vec<_>>(),
        vec!["a"]
    );
    assert_eq!(registry.get_by_id(id).map(|t| t.partitions), Some(3));
    assert_eq!(dirs_of(dir.path(), "a").len(), 3);
    assert!(wal.partition(&TopicPartition::new("b", 0)).is_none());
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_never_reused_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = Vec::new();
    {
        let (_wal, registry) = open(dir.path()).await;
        for _ in 0..3 {
            first.push(registry.allocate_producer_id().await.expect("id"));
        }
        registry.shutdown().await;
    }
    assert_eq!(first, vec![0, 1, 2]);
    let (_wal, registry) = open(dir.path()).await;
    let next = registry.allocate_producer_id().await.expect("id");
    assert!(
        next > 2,
        "ids of the reserved block are skipped after a restart: {next}"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_partitions_persist_and_counts_never_shrink() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (_wal, registry) = open(dir.path()).await;
        registry
            .create("grow", 2, -1, BTreeMap::new(), false)
            .await
            .expect("create");
        assert!(matches!(
            registry.add_partitions("grow", 2, false).await,
            Err(TopicError::InvalidPartitions(2))
        ));
        let checked = registry.add_partitions("grow", 4, true).await.expect("validate");
        assert_eq!(checked.partitions, 4);
        assert_eq!(
            registry.get("grow").map(|t| t.partitions),
            Some(2),
            "validate_only changes nothing"
        );
        registry.add_partitions("grow", 4, false).await.expect("grow");
        registry.reconcile();
        registry.shutdown().await;
    }
    let (wal, registry) = open(dir.path()).await;
    assert_eq!(registry.get("grow").map(|t| t.partitions), Some(4));
    assert!(wal.partition(&TopicPartition::new("grow", 3)).is_some());
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_over_the_partition_limit_are_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
    // The Raft log is one of the five.
    let registry = open_on(Arc::clone(&wal), 5).await;
    registry
        .create("a", 3, -1, BTreeMap::new(), false)
        .await
        .expect("fits");
    registry.reconcile();
    for validate_only in [false, true] {
        let refused = registry.create("b", 2, -1, BTreeMap::new(), validate_only).await;
        assert!(
            matches!(
                refused,
                Err(TopicError::PartitionLimit {
                    limit: 5,
                    current: 4,
                    requested: 2
                })
            ),
            "{refused:?}"
        );
        let refused = registry.add_partitions("a", 5, validate_only).await;
        assert!(
            matches!(refused, Err(TopicError::PartitionLimit { .. })),
            "{refused:?}"
        );
    }
    assert!(registry.get("b").is_none());
    assert_eq!(registry.get("a").map(|t| t.partitions), Some(3));
    registry
        .create("b", 1, -1, BTreeMap::new(), false)
        .await
        .expect("the last one fits");
    registry.reconcile();
    let message = registry
        .create("c", 1, -1, BTreeMap::new(), false)
        .await
        .expect_err("full")
        .to_string();
    assert!(
        message.contains("at most 5") && message.contains("holds 5"),
        "{message}"
    );
    registry.shutdown().await;
}

/// What a previous release left: its metadata log and the partitions it names, with records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_previous_release_keeps_its_topics_data_and_producer_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = Uuid::new_v4();
    {
        let wal = WalManager::open(dir.path(), WalConfig::default()).expect("wal");
        super::write_old_log(
            &wal,
            &[
                MetadataRecord::Cluster {
                    cluster_id: "old-cluster".into(),
                },
                MetadataRecord::CreateTopic {
                    name: "kept".into(),
                    topic_id: kept,
                    partitions: 2,
                    configs: BTreeMap::from([("retention.ms".into(), "-1".into())]),
                },
                MetadataRecord::ProducerIds { end: 1000 },
            ],
        )
        .expect("old log");
        for p in 0..2 {
            let tp = TopicPartition::new("kept", p);
            wal.create_partition(&tp).expect("partition");
            wal.append(&tp, Batch::new(Bytes::from_static(b"acknowledged"), 1, 0))
                .expect("append");
        }
        wal.shutdown().expect("shutdown");
    }
    for start in 0..2 {
        let (wal, registry) = open(dir.path()).await;
        assert_eq!(registry.cluster_id(), "old-cluster", "start {start}");
        let info = registry.get("kept").expect("kept");
        assert_eq!((info.topic_id, info.partitions), (kept, 2));
        assert_eq!(info.configs.get("retention.ms").map(String::as_str), Some("-1"));
        for p in 0..2 {
            let tp = TopicPartition::new("kept", p);
            assert_eq!(
                wal.high_watermark(&tp).expect("hw"),
                1,
                "start {start}: the record is kept"
            );
        }
        assert!(
            wal.partition(&TopicPartition::new(METADATA_TOPIC, 0)).is_none(),
            "the old log is removed once taken over"
        );
        let id = registry.allocate_producer_id().await.expect("id");
        assert!(
            id >= 1000,
            "ids the old release may have handed out are skipped: {id}"
        );
        registry.shutdown().await;
    }
}

#[test]
fn a_topic_created_again_while_the_broker_was_away_starts_empty_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
    let assigned = |topic_id| {
        BTreeMap::from([(
            "again".to_string(),
            local::Assigned {
                topic_id,
                partitions: [0].into(),
                configs: BTreeMap::new(),
            },
        )])
    };
    let tp = TopicPartition::new("again", 0);
    {
        let local = local::Local::open(Arc::clone(&wal)).expect("local");
        let done = local.reconcile(|| assigned(Uuid::new_v4()));
        assert_eq!(done.created, vec![tp.clone()]);
        wal.append(&tp, Batch::new(Bytes::from_static(b"old"), 1, 0))
            .expect("append");
    }
    // A restart: the ids file says which topic the partition belongs to.
    let local = local::Local::open(Arc::clone(&wal)).expect("local");
    let done = local.reconcile(|| assigned(Uuid::new_v4()));
    assert_eq!((done.deleted, done.created), (vec![tp.clone()], vec![tp.clone()]));
    assert_eq!(
        wal.high_watermark(&tp).expect("hw"),
        0,
        "the old topic's records are gone"
    );
    // Reconciling again changes nothing.
    let again = local.reconcile(BTreeMap::new);
    assert_eq!(again.deleted, vec![tp.clone()], "unassigned: removed");
    assert!(local.reconcile(BTreeMap::new).deleted.is_empty());
}

#[test]
fn partitions_no_topic_claims_are_removed_and_missing_ones_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
    // What a crash may leave: an orphan, and a topic's partition not made yet.
    wal.create_partition(&TopicPartition::new("orphan", 0))
        .expect("orphan");
    let local = local::Local::open(Arc::clone(&wal)).expect("local");
    let wanted = BTreeMap::from([(
        "kept".to_string(),
        local::Assigned {
            topic_id: Uuid::new_v4(),
            partitions: [0, 1].into(),
            configs: BTreeMap::new(),
        },
    )]);
    local.reconcile(|| wanted);
    assert_eq!(dirs_of(dir.path(), "kept"), vec!["kept-0", "kept-1"]);
    assert_eq!(dirs_of(dir.path(), "orphan"), Vec::<String>::new());
}

/// The real file system, except that opening a file in the directory named `failing` fails with
/// "Too many open files", as it did half-way through the creation of a large topic.
#[derive(Debug)]
struct OutOfDescriptorsIn {
    failing: String,
}

impl FaultPlan for OutOfDescriptorsIn {
    fn on_open(&self, path: &Path, _mode: OpenMode) -> Option<io::Error> {
        let dir = path.parent().and_then(Path::file_name);
        dir.is_some_and(|d| d.to_str() == Some(self.failing.as_str()))
            .then(|| io::Error::from_raw_os_error(libc::EMFILE))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_this_broker_cannot_hold_leaves_no_topic_and_no_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = Arc::new(OutOfDescriptorsIn {
        failing: "big-5.creating".into(),
    });
    let io = Arc::new(FaultyIo::new(Arc::new(StdIo), plan));
    let wal = Arc::new(WalManager::open_with_io(dir.path(), WalConfig::default(), io).expect("wal"));
    let registry = open_on(Arc::clone(&wal), usize::MAX).await;
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let broker = Arc::new(Broker::new(
        ServerConfig::with_data_dir(dir.path()),
        Arc::clone(&wal),
        registry,
        Producers::default(),
        Coordinator::new(Duration::ZERO),
        ("127.0.0.1".into(), 9092),
        stop,
    ));
    let err = broker
        .create_topic("big", 10, -1, BTreeMap::new(), false)
        .await
        .expect_err("partition 5 cannot be created");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    assert!(
        broker.registry.get("big").is_none(),
        "the topic was deleted again"
    );
    assert_eq!(
        dirs_of(dir.path(), "big"),
        Vec::<String>::new(),
        "nothing left on disk"
    );
    broker.registry.shutdown().await;
}
