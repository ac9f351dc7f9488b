//! A broker whose data directory holds a partition it cannot open.
//!
//! The partition is made unopenable honestly, on disk: its first segment file is moved aside and a
//! directory of the same name put in its place (opening it fails with EISDIR, as root too).
//! What must hold:
//! - a client partition that cannot be opened does not stop the broker: it starts, and that partition's
//!   Produce, Fetch and ListOffsets are answered KAFKA_STORAGE_ERROR while an OffsetCommit naming it is
//!   accepted; nothing is created over its directory;
//! - one of the broker's own partitions (`__chronik_raft-0`) that cannot be opened stops the start, with
//!   an error that names it; once repaired, the broker starts.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chronik_server::config::ServerConfig;
use common::{call, create_topic, in_process::InProcessBroker};
use kafka_protocol::{
    messages::{
        fetch_request, list_offsets_request, offset_commit_request, produce_request, BrokerId, FetchRequest,
        GroupId, ListOffsetsRequest, OffsetCommitRequest, ProduceRequest, TopicName,
    },
    protocol::StrBytes,
};

const KAFKA_STORAGE_ERROR: i16 = 56;
const INVALID_RECORD: i16 = 87;

/// Puts a directory where `partition`'s first segment file is; returns where the file went.
fn break_partition(data_dir: &Path, partition: &str) -> PathBuf {
    let segment = segment(data_dir, partition);
    let aside = data_dir.join(format!("{partition}-segment-aside"));
    std::fs::rename(&segment, &aside).unwrap();
    std::fs::create_dir(&segment).unwrap();
    aside
}

fn repair_partition(data_dir: &Path, partition: &str, aside: &Path) {
    let segment = segment(data_dir, partition);
    std::fs::remove_dir(&segment).unwrap();
    std::fs::rename(aside, &segment).unwrap();
}

fn segment(data_dir: &Path, partition: &str) -> PathBuf {
    data_dir
        .join("partitions")
        .join(partition)
        .join("00000000000000000000.wal")
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("t"))
}

#[test]
fn an_offline_client_partition_is_answered_with_a_storage_error_and_the_broker_serves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = InProcessBroker::start(dir.path());
    create_topic(&mut broker.connect(), "t", 2);
    broker.stop();
    let aside = break_partition(dir.path(), "t-1");

    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    let produce = |s: &mut std::net::TcpStream, partition: i32| {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(Bytes::new()))])]);
        call(s, &request, 8).responses[0].partition_responses[0].error_code
    };
    assert_eq!(
        produce(&mut s, 1),
        KAFKA_STORAGE_ERROR,
        "Produce to the offline partition"
    );
    assert_eq!(
        produce(&mut s, 0),
        INVALID_RECORD,
        "the other partition is served: its records are looked at (an empty set is invalid)"
    );

    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let fetched = call(&mut s, &fetch, 11);
    assert_eq!(
        fetched.responses[0].partitions[0].error_code, KAFKA_STORAGE_ERROR,
        "Fetch"
    );

    let list = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(topic())
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(1)
                    .with_timestamp(-1),
            ])]);
    let listed = call(&mut s, &list, 5);
    assert_eq!(
        listed.topics[0].partitions[0].error_code, KAFKA_STORAGE_ERROR,
        "ListOffsets"
    );

    // Clients look the group's coordinator up first (which creates the offsets topic).
    let coordinator = call(
        &mut s,
        &kafka_protocol::messages::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")),
        3,
    );
    assert_eq!(coordinator.error_code, 0);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(topic())
            .with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(3),
            ])]);
    let committed = call(&mut s, &commit, 8);
    assert_eq!(
        committed.topics[0].partitions[0].error_code, 0,
        "OffsetCommit is accepted"
    );
    drop(s);
    broker.stop();
    assert!(segment(dir.path(), "t-1").is_dir(), "nothing was created over it");

    repair_partition(dir.path(), "t-1", &aside);
    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    let listed = call(&mut s, &list, 5);
    assert_eq!(
        listed.topics[0].partitions[0].error_code, 0,
        "served once repaired"
    );
    drop(s);
    broker.stop();
}

#[test]
fn an_internal_partition_that_cannot_be_opened_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    // Served once (so it has started, not been stopped while starting): its metadata log exists.
    let broker = InProcessBroker::start(dir.path());
    create_topic(&mut broker.connect(), "t", 1);
    broker.stop();
    let aside = break_partition(dir.path(), "__chronik_raft-0");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            chronik_server::run(
                listener,
                ServerConfig::with_data_dir(dir.path()),
                std::future::ready(()),
            )
            .await
        })
        .expect_err("the broker cannot serve without its metadata log");
    let message = format!("{error:#}");
    assert!(
        message.contains("__chronik_raft-0") && message.contains("could not be opened"),
        "the error names the partition: {message}"
    );

    repair_partition(dir.path(), "__chronik_raft-0", &aside);
    let broker = InProcessBroker::start(dir.path());
    create_topic(&mut broker.connect(), "u", 1);
    broker.stop();
}
