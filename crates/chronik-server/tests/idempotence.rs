//! Idempotent produce at the wire level, against a broker started in-process: a retried batch is answered
//! with its original offset and not written twice, a batch that skips sequence numbers gets
//! OUT_OF_ORDER_SEQUENCE_NUMBER, a fenced epoch gets INVALID_PRODUCER_EPOCH, producer ids are not reused,
//! and all of it holds across a graceful restart (the state is rebuilt from the log).
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{call, create_topic, in_process::InProcessBroker};
use kafka_protocol::{
    messages::{
        list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
        produce_request::{PartitionProduceData, TopicProduceData},
        InitProducerIdRequest, ListOffsetsRequest, ProduceRequest, ProducerId, TopicName,
    },
    protocol::StrBytes,
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};

const TOPIC: &str = "idem";
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;

fn batch(producer_id: i64, epoch: i16, first_sequence: i32, count: i32) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first_sequence + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("seq-{}", first_sequence + i))),
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

/// Produces `records` and returns (error code, base offset).
fn produce(stream: &mut std::net::TcpStream, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response = call(stream, &request, 9);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn log_end(stream: &mut std::net::TcpStream) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    call(stream, &request, 5).topics[0].partitions[0].offset
}

fn init_producer(stream: &mut std::net::TcpStream, id: i64, epoch: i16) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch);
    let response = call(stream, &request, 4);
    assert_eq!(response.error_code, 0);
    (response.producer_id.0, response.producer_epoch)
}

#[test]
fn retries_are_deduplicated_and_gaps_refused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    create_topic(&mut s, TOPIC, 1);

    let (pid, epoch) = init_producer(&mut s, -1, -1);
    assert_eq!(epoch, 0);
    let first = batch(pid, 0, 0, 3);
    assert_eq!(produce(&mut s, first.clone()), (0, 0));
    assert_eq!(
        produce(&mut s, first.clone()),
        (0, 0),
        "a retry gets the original offset"
    );
    assert_eq!(log_end(&mut s), 3, "and is not written again");
    assert_eq!(
        produce(&mut s, batch(pid, 0, 5, 1)).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "sequences 3-4 skipped"
    );
    let second = batch(pid, 0, 3, 2);
    assert_eq!(produce(&mut s, second.clone()), (0, 3));
    // Plain (non-idempotent) batches interleave freely.
    assert_eq!(produce(&mut s, batch(-1, -1, -1, 1)), (0, 5));
    drop(s);
    broker.stop();

    let broker = InProcessBroker::start(dir.path());
    let mut s = broker.connect();
    assert_eq!(
        produce(&mut s, second),
        (0, 3),
        "the state was rebuilt from the log: still a duplicate"
    );
    assert_eq!(produce(&mut s, first), (0, 0));
    assert_eq!(log_end(&mut s), 6);
    assert_eq!(
        produce(&mut s, batch(pid, 0, 5, 1)),
        (0, 6),
        "and the sequence continues where it was"
    );

    let (same, bumped) = init_producer(&mut s, pid, 0);
    assert_eq!(
        (same, bumped),
        (pid, 1),
        "a known producer re-initialising gets its epoch bumped"
    );
    assert_eq!(
        produce(&mut s, batch(pid, 1, 0, 1)),
        (0, 7),
        "a new epoch starts at sequence 0"
    );
    assert_eq!(
        produce(&mut s, batch(pid, 0, 6, 1)).0,
        INVALID_PRODUCER_EPOCH,
        "the old epoch is fenced"
    );
    let (other, _) = init_producer(&mut s, -1, -1);
    assert!(
        other > pid,
        "producer ids are not reused after a restart: {other} vs {pid}"
    );
    broker.stop();
}
