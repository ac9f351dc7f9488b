//! Leader epochs at the wire level, against a broker started in-process: every stored batch carries
//! the leader epoch it was appended under (whatever the producer wrote there), and OffsetForLeaderEpoch
//! answers from the partition's term map as Kafka does, fencing stale and future current epochs.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{call, create_topic, in_process::InProcessBroker};
use kafka_protocol::{
    messages::{
        fetch_request::{FetchPartition, FetchTopic},
        offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic},
        produce_request::{PartitionProduceData, TopicProduceData},
        BrokerId, FetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, TopicName,
    },
    protocol::StrBytes,
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};

const TOPIC: &str = "epochs";
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// A batch of `count` records whose partition leader epoch field says 77, as a confused producer might.
fn batch(count: i32) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 77,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

fn produce(stream: &mut std::net::TcpStream, records: Bytes) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response = call(stream, &request, 9);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
}

/// The (base offset, partition leader epoch) of every batch fetched from offset 0.
fn stored_epochs(stream: &mut std::net::TcpStream) -> Vec<(i64, i32)> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default().with_topic(name()).with_partitions(
            vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)],
        )]);
    let response = call(stream, &request, 12);
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let mut records = p.records.clone().unwrap();
    let mut out = Vec::new();
    while records.len() >= 61 {
        let base = i64::from_be_bytes(records[..8].try_into().unwrap());
        let len = i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize;
        let epoch = i32::from_be_bytes(records[12..16].try_into().unwrap());
        out.push((base, epoch));
        let _ = records.split_to(12 + len);
    }
    out
}

/// OffsetForLeaderEpoch v4 for partition 0 of `topic`: (error, epoch, end offset).
fn end_for(
    stream: &mut std::net::TcpStream,
    topic: &'static str,
    current: i32,
    epoch: i32,
) -> (i16, i32, i64) {
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)])]);
    let response = call(stream, &request, 4);
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

#[test]
fn batches_carry_the_leader_epoch_and_offset_for_leader_epoch_answers_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    create_topic(&mut s, TOPIC, 1);
    // Before any batch: the leader's epoch began, durably, where the log ends.
    assert_eq!(end_for(&mut s, TOPIC, -1, 0), (0, 0, 0));
    produce(&mut s, batch(3));
    produce(&mut s, batch(2));
    // A single broker leads its partitions in epoch 0; the producer's 77 is overwritten.
    let stored = stored_epochs(&mut s);
    assert_eq!(stored.last().map(|b| b.0), Some(4), "{stored:?}");
    assert!(stored.iter().all(|&(_, epoch)| epoch == 0), "{stored:?}");
    assert_eq!(end_for(&mut s, TOPIC, 0, 0), (0, 0, 5));
    assert_eq!(end_for(&mut s, TOPIC, -1, 0), (0, 0, 5));
    // An epoch newer than the log knows cannot be placed.
    assert_eq!(end_for(&mut s, TOPIC, -1, 3), (0, -1, -1));
    // The current epoch the client names is checked as for Fetch.
    assert_eq!(end_for(&mut s, TOPIC, 1, 0).0, UNKNOWN_LEADER_EPOCH);
    assert_eq!(
        end_for(&mut s, "no-such-topic", -1, 0).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    drop(s);
    broker.stop();

    // The epochs and the map survive a restart.
    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    assert_eq!(stored_epochs(&mut s), stored);
    assert_eq!(end_for(&mut s, TOPIC, -1, 0), (0, 0, 5));
    drop(s);
    broker.stop();
}
