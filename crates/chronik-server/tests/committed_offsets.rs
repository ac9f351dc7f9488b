//! OffsetCommit outside group membership: simple consumers (generation -1) are stored; a commit that claims
//! a generation, which can only be stale while this broker runs no group protocol, gets UNKNOWN_MEMBER_ID
//! and stores nothing, instead of silently succeeding.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, create_topic, in_process::InProcessBroker};
use kafka_protocol::{
    messages::{
        offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
        offset_fetch_request::OffsetFetchRequestTopic,
        GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName,
    },
    protocol::StrBytes,
};

const UNKNOWN_MEMBER_ID: i16 = 25;

/// Commits `offset` for partition t-0 in group g as `member` of `generation` (-1 and "": no membership).
fn commit(s: &mut std::net::TcpStream, member: &str, generation: i32, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member.to_string()))
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

/// Looks up group g's coordinator, as clients do first: the first lookup creates the offsets topic.
fn find_coordinator(s: &mut std::net::TcpStream) {
    use kafka_protocol::messages::FindCoordinatorRequest;
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
    let response = call(s, &request, 3);
    assert_eq!(response.error_code, 0, "{response:?}");
}

#[test]
fn commits_claiming_a_generation_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    create_topic(&mut s, "t", 1);
    const NOT_COORDINATOR: i16 = 16;
    assert_eq!(
        commit(&mut s, "", -1, 12),
        NOT_COORDINATOR,
        "no coordinator before the offsets topic exists"
    );
    find_coordinator(&mut s);
    assert_eq!(fetch(&mut s), -1, "nothing committed yet");
    assert_eq!(
        commit(&mut s, "", -1, 12),
        0,
        "a simple consumer's commit is stored"
    );
    assert_eq!(fetch(&mut s), 12);
    assert_eq!(commit(&mut s, "", 3, 99), UNKNOWN_MEMBER_ID);
    assert_eq!(fetch(&mut s), 12, "the refused commit stored nothing");
    broker.stop();
}

/// Joins `group` as a consumer (JoinGroup v4: first call gets a member id, second joins) and returns
/// (member id, generation).
fn join(broker: &InProcessBroker, member_id: &str) -> (String, i32) {
    use kafka_protocol::messages::{join_group_request::JoinGroupRequestProtocol, JoinGroupRequest};
    let mut s = broker.connect();
    let mut member = member_id.to_string();
    loop {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(StrBytes::from_string(member.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(bytes::Bytes::new())]);
        let response = call(&mut s, &request, 4);
        const MEMBER_ID_REQUIRED: i16 = 79;
        if response.error_code == MEMBER_ID_REQUIRED {
            member = response.member_id.to_string();
            continue;
        }
        assert_eq!(response.error_code, 0);
        return (response.member_id.to_string(), response.generation_id);
    }
}

#[test]
fn a_member_of_an_old_generation_cannot_commit() {
    const ILLEGAL_GENERATION: i16 = 22;
    let dir = tempfile::tempdir().unwrap();
    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    create_topic(&mut s, "t", 1);
    find_coordinator(&mut s);

    let (a, first_generation) = join(&broker, "");
    // Alone, `a` leads: its SyncGroup ends the round.
    let sync = kafka_protocol::messages::SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id(first_generation)
        .with_member_id(StrBytes::from_string(a.clone()));
    assert_eq!(call(&mut s, &sync, 3).error_code, 0);
    assert_eq!(
        commit(&mut s, &a, first_generation, 5),
        0,
        "a current member commits"
    );
    // A second member starts a new round; the first learns of it from its heartbeat and rejoins, as a
    // client does (both joins wait for the round to complete).
    std::thread::scope(|scope| {
        let b = scope.spawn(|| join(&broker, ""));
        const REBALANCE_IN_PROGRESS: i16 = 27;
        let heartbeat = kafka_protocol::messages::HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id(first_generation)
            .with_member_id(StrBytes::from_string(a.clone()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while call(&mut s, &heartbeat, 3).error_code != REBALANCE_IN_PROGRESS {
            assert!(std::time::Instant::now() < deadline, "no rebalance announced");
            std::thread::yield_now();
        }
        let (a_again, generation) = join(&broker, &a);
        let (_, b_generation) = b.join().unwrap();
        assert_eq!((a_again.as_str(), generation), (a.as_str(), b_generation));
        assert!(generation > first_generation);
    });
    assert_eq!(
        commit(&mut s, &a, first_generation, 5),
        ILLEGAL_GENERATION,
        "a stale commit is refused"
    );
    assert_eq!(fetch(&mut s), 5, "and stored nothing over the earlier commit");
    broker.stop();
}
