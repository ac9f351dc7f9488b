//! The `kafka_request` fuzz target's inputs, replayed on every test run through the same harness the
//! fuzzer runs (`chronik_server::fuzzing::RequestHarness`: the broker's whole request path against a
//! real broker): the committed seed corpus (`fuzz/corpus/kafka_request/`) and every input that once made
//! the target fail (`fuzz/regressions/kafka_request/`). None may panic or abort; errors are fine.
//!
//! The seeds named `seed-*` (one request per API the broker serves, at its lowest and highest version,
//! encoded with `kafka-protocol`) are generated and checked by `generated_seeds_are_served`, which writes
//! them with `CHRONIK_WRITE_FUZZ_CORPUS=1`:
//! `CHRONIK_WRITE_FUZZ_CORPUS=1 cargo test -p chronik-server --test fuzz_corpus generated_seeds_are_served`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use chronik_server::{
    alloc_guard::HugeAllocGuard,
    fuzzing::{RequestHarness, Unserved, SUPPORTED},
};
use kafka_protocol::{
    messages::*,
    protocol::{Encodable, StrBytes},
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};

/// As in the broker: requests claiming absurd array lengths make the decoder reserve gigabytes.
#[global_allocator]
static ALLOCATOR: HugeAllocGuard = HugeAllocGuard;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file of `fuzz/<kind>/kafka_request/`, sorted; none if the directory does not exist.
fn inputs(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join("kafka_request");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn kafka_request_corpus_and_regressions_pass() {
    let corpus = inputs("corpus");
    assert!(!corpus.is_empty(), "no committed corpus for kafka_request");
    let mut harness = RequestHarness::new().unwrap();
    let (mut answered, mut unserved) = (0, 0);
    for (path, bytes) in corpus.iter().chain(&inputs("regressions")) {
        match harness.serve(bytes) {
            Ok(()) => answered += 1,
            Err(e @ Unserved::Harness(_)) => panic!("{}: {e}", path.display()),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                unserved += 1;
            }
        }
    }
    eprintln!("{answered} answered, {unserved} not");
}

// -------------------------------------------------------------------------------------------------
// Seed corpus

const TOPIC: &str = "fuzz-topic";
const DOOMED: &str = "fuzz-doomed";
const GROUP: &str = "fuzz-group";

fn s(v: &'static str) -> StrBytes {
    StrBytes::from_static_str(v)
}

fn topic(v: &'static str) -> TopicName {
    TopicName(s(v))
}

fn records() -> Bytes {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A typical request of `key` that `version` can carry.
fn request(key: ApiKey, v: i16) -> RequestKind {
    match key {
        ApiKey::Produce => ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(topic(TOPIC))
                .with_partition_data(vec![produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records()))])])
            .into(),
        ApiKey::Fetch => {
            let t = fetch_request::FetchTopic::default().with_partitions(vec![
                fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20),
            ]);
            let t = if v >= 13 { t } else { t.with_topic(topic(TOPIC)) };
            // The lowest version long-polls from the end of the log (the harness's stop signal answers it).
            let (offset_wait, min_bytes) = if v < 13 { (500, 1 << 20) } else { (0, 1) };
            FetchRequest::default()
                .with_max_wait_ms(offset_wait)
                .with_min_bytes(min_bytes)
                .with_max_bytes(1 << 20)
                .with_topics(vec![t])
                .into()
        }
        ApiKey::ListOffsets => ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic(TOPIC))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])])
            .into(),
        ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(topic(TOPIC))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(-1)
                            .with_leader_epoch(0),
                    ]),
            ])
            .into(),
        ApiKey::Metadata => MetadataRequest::default()
            .with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(topic(TOPIC)))
            ]))
            .with_allow_auto_topic_creation(true)
            .into(),
        ApiKey::ApiVersions => {
            let r = ApiVersionsRequest::default();
            if v >= 3 {
                r.with_client_software_name(s("chronik-fuzz"))
                    .with_client_software_version(s("1"))
                    .into()
            } else {
                r.into()
            }
        }
        ApiKey::CreateTopics => CreateTopicsRequest::default()
            .with_timeout_ms(1000)
            .with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(topic(TOPIC))
                    .with_num_partitions(2)
                    .with_replication_factor(1)
                    .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("3600000")))]),
                create_topics_request::CreatableTopic::default()
                    .with_name(topic(DOOMED))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            ])
            .into(),
        ApiKey::DeleteTopics => {
            let r = DeleteTopicsRequest::default().with_timeout_ms(1000);
            if v >= 6 {
                r.with_topics(vec![
                    delete_topics_request::DeleteTopicState::default().with_name(Some(topic(DOOMED)))
                ])
                .into()
            } else {
                r.with_topic_names(vec![topic(DOOMED)]).into()
            }
        }
        ApiKey::InitProducerId => InitProducerIdRequest::default()
            .with_transaction_timeout_ms(60_000)
            .into(),
        ApiKey::CreatePartitions => CreatePartitionsRequest::default()
            .with_timeout_ms(1000)
            .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default()
                .with_name(topic(TOPIC))
                .with_count(3)])
            .into(),
        ApiKey::DescribeConfigs => DescribeConfigsRequest::default()
            .with_resources(vec![describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC))])
            .with_include_synonyms(true)
            .with_include_documentation(v >= 3)
            .into(),
        ApiKey::AlterConfigs => AlterConfigsRequest::default()
            .with_resources(vec![alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC))
                .with_configs(vec![alter_configs_request::AlterableConfig::default()
                    .with_name(s("retention.ms"))
                    .with_value(Some(s("7200000")))])])
            .into(),
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::default()
            .with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(TOPIC))
                    .with_configs(vec![incremental_alter_configs_request::AlterableConfig::default(
                    )
                    .with_name(s("retention.bytes"))
                    .with_config_operation(0)
                    .with_value(Some(s("1048576")))]),
            ])
            .into(),
        ApiKey::FindCoordinator => {
            let r = FindCoordinatorRequest::default();
            if v >= 4 {
                r.with_coordinator_keys(vec![s(GROUP)]).into()
            } else {
                r.with_key(s(GROUP)).into()
            }
        }
        ApiKey::OffsetCommit => OffsetCommitRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic(TOPIC))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)
                        .with_committed_metadata(Some(s("seed"))),
                ])])
            .into(),
        ApiKey::OffsetFetch => {
            if v >= 8 {
                OffsetFetchRequest::default()
                    .with_groups(vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(GROUP)))
                        .with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopics::default()
                                .with_name(topic(TOPIC))
                                .with_partition_indexes(vec![0]),
                        ]))])
                    .into()
            } else {
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(GROUP)))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(topic(TOPIC))
                            .with_partition_indexes(vec![0]),
                    ]))
                    .into()
            }
        }
        ApiKey::JoinGroup => JoinGroupRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(if v >= 1 { 10_000 } else { -1 })
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(
                    b"\x00\x01\x00\x00\x00\x01\x00\x0afuzz-topic",
                ))])
            .into(),
        ApiKey::SyncGroup => SyncGroupRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_generation_id(1)
            .with_member_id(s("member"))
            .with_assignments(vec![sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(s("member"))
                .with_assignment(Bytes::from_static(b"\x00\x01"))])
            .into(),
        ApiKey::Heartbeat => HeartbeatRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_generation_id(1)
            .with_member_id(s("member"))
            .into(),
        ApiKey::LeaveGroup => {
            let r = LeaveGroupRequest::default().with_group_id(GroupId(s(GROUP)));
            if v >= 3 {
                r.with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("member"))
                ])
                .into()
            } else {
                r.with_member_id(s("member")).into()
            }
        }
        ApiKey::ListGroups => ListGroupsRequest::default().into(),
        ApiKey::DescribeGroups => DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(s(GROUP))])
            .into(),
        ApiKey::DeleteGroups => DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(s(GROUP))])
            .into(),
        ApiKey::DescribeCluster => DescribeClusterRequest::default()
            .with_include_cluster_authorized_operations(true)
            .with_endpoint_type(1)
            .with_include_fenced_brokers(v >= 2)
            .into(),
        other => panic!("no seed for {other:?}"),
    }
}

/// A request frame as the harness takes it (no length prefix): a header naming `version`, and `body`
/// encoded at `body_version` (the same, but for a version `kafka-protocol` does not know).
fn frame(key: ApiKey, version: i16, body: &RequestKind, body_version: i16) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(s("chronik-fuzz")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, body_version)
        .unwrap_or_else(|e| panic!("{key:?} v{body_version}: {e:#}"));
    buf.to_vec()
}

/// Names and frames of the seeds, in an order that makes sense to a stateful broker (the replay runs
/// them sorted by name): topics first, then data, then groups, deletions last.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let order = [
        ApiKey::ApiVersions,
        ApiKey::CreateTopics,
        ApiKey::Metadata,
        ApiKey::CreatePartitions,
        ApiKey::DescribeConfigs,
        ApiKey::AlterConfigs,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::InitProducerId,
        ApiKey::Produce,
        ApiKey::ListOffsets,
        ApiKey::Fetch,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::LeaveGroup,
        ApiKey::DeleteGroups,
        ApiKey::DeleteTopics,
        ApiKey::DescribeCluster,
        ApiKey::OffsetForLeaderEpoch,
    ];
    assert_eq!(order.len(), SUPPORTED.len(), "a seed for every supported API");
    let mut out = Vec::new();
    for (n, key) in order.into_iter().enumerate() {
        let &(_, lo, hi) = SUPPORTED.iter().find(|(k, _, _)| *k == key).unwrap();
        for v in [lo, hi] {
            let name = format!("seed-{n:02}-{key:?}-v{v}");
            out.push((name, frame(key, v, &request(key, v), v)));
        }
    }
    // ApiVersions of a version the broker does not know is answered (in v0), so clients can negotiate.
    let &(_, _, hi) = SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == ApiKey::ApiVersions)
        .unwrap();
    out.push((
        format!("seed-00-ApiVersions-v{}", hi + 1),
        frame(ApiKey::ApiVersions, hi + 1, &request(ApiKey::ApiVersions, hi), hi),
    ));
    out
}

/// Every generated seed is a request the broker serves, not one it refuses; with
/// `CHRONIK_WRITE_FUZZ_CORPUS=1` the seeds are also written into `fuzz/corpus/kafka_request/`.
#[test]
fn generated_seeds_are_served() {
    let seeds = seeds();
    let mut harness = RequestHarness::new().unwrap();
    for (name, bytes) in &seeds {
        if let Err(e) = harness.serve(bytes) {
            panic!("seed {name}: {e}");
        }
    }
    if std::env::var_os("CHRONIK_WRITE_FUZZ_CORPUS").is_none() {
        return;
    }
    let dir = fuzz_dir().join("corpus/kafka_request");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
