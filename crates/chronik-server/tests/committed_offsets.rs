//! OffsetCommit outside group membership: simple consumers (generation -1) are stored; a commit that claims
//! a generation, which can only be stale while this broker runs no group protocol, gets UNKNOWN_MEMBER_ID
//! and stores nothing, instead of silently succeeding.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, Broker};
use kafka_protocol::{
    messages::{
        create_topics_request::CreatableTopic,
        offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
        offset_fetch_request::OffsetFetchRequestTopic,
        CreateTopicsRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName,
    },
    protocol::StrBytes,
};

const UNKNOWN_MEMBER_ID: i16 = 25;

fn commit(s: &mut std::net::TcpStream, generation: i32, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(generation)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    call(s, &request, 8).topics[0].partitions[0].error_code
}

fn fetch(s: &mut std::net::TcpStream) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_indexes(vec![0])]));
    call(s, &request, 7).topics[0].partitions[0].committed_offset
}

#[test]
fn commits_claiming_a_generation_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[], &[]);
    let mut s = broker.connect();
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("t")))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    assert_eq!(call(&mut s, &create, 5).topics[0].error_code, 0);
    assert_eq!(fetch(&mut s), -1, "nothing committed yet");
    assert_eq!(commit(&mut s, -1, 12), 0, "a simple consumer's commit is stored");
    assert_eq!(fetch(&mut s), 12);
    assert_eq!(commit(&mut s, 3, 99), UNKNOWN_MEMBER_ID);
    assert_eq!(fetch(&mut s), 12, "the refused commit stored nothing");
    broker.stop();
}
