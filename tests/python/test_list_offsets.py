"""ListOffsets through confluent-kafka: watermarks and lookup by timestamp.

What must hold: an empty partition has watermarks (0, 0); after N records, (0, N). `offsets_for_times(T)`
answers the earliest offset whose record timestamp is >= T, also when T falls between records of one batch
(not only at batch starts); T before the first record gives 0; T after the last record gives -1 (no such
offset). kafka-python's `offsets_for_times` agrees.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTopicPartition

from harness import consumer_config, create_topic, producer_config

BASE_TIMESTAMP_MS = 1_750_000_000_000
RECORDS = 100
BATCH = 10
STEP_MS = 10


def timestamp_of(i: int) -> int:
    return BASE_TIMESTAMP_MS + i * STEP_MS


def expected_offset_for(t_ms: int) -> int:
    for i in range(RECORDS):
        if timestamp_of(i) >= t_ms:
            return i
    return -1


def produce_in_batches(bootstrap: str, topic: str) -> None:
    """RECORDS records, BATCH per produce request (flushed between), timestamps STEP_MS apart."""
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 50}))
    errors = []
    offsets = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    for start in range(0, RECORDS, BATCH):
        for i in range(start, start + BATCH):
            producer.produce(
                topic, value=f"v{i}".encode(), partition=0, timestamp=timestamp_of(i), on_delivery=cb
            )
        assert producer.flush(30) == 0
    assert not errors, errors
    assert sorted(offsets) == list(range(RECORDS))


def test_watermarks_and_offsets_for_times(broker):
    topic = "offsets"
    create_topic(broker.bootstrap, topic, 1)
    tp = TopicPartition(topic, 0)
    consumer = Consumer(consumer_config(broker.bootstrap))
    try:
        assert consumer.get_watermark_offsets(tp, timeout=10, cached=False) == (0, 0), "empty partition"

        produce_in_batches(broker.bootstrap, topic)
        assert consumer.get_watermark_offsets(tp, timeout=10, cached=False) == (0, RECORDS)

        probes = [
            BASE_TIMESTAMP_MS - 1_000_000,  # before everything
            timestamp_of(0),  # exactly the first record
            timestamp_of(0) + 1,  # between records 0 and 1, inside the first batch
            timestamp_of(5) - 1,  # inside a batch
            timestamp_of(5),
            timestamp_of(10),  # first record of the second batch
            timestamp_of(10) - 3,  # between the last record of batch 0 and the first of batch 1
            timestamp_of(57) + 4,  # inside a middle batch
            timestamp_of(RECORDS - 1),  # exactly the last record
            timestamp_of(RECORDS - 1) + 1,  # after everything
        ]
        # One call per probe: librdkafka sends one timestamp per partition per request.
        got = []
        for t in probes:
            [answer] = consumer.offsets_for_times([TopicPartition(topic, 0, t)], timeout=10)
            got.append((t, answer.offset, answer.error))
        expected = [(t, expected_offset_for(t), None) for t in probes]
        assert got == expected, "offsets_for_times (timestamp, offset, error)"
    finally:
        consumer.close()

    kp = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        ktp = KpTopicPartition(topic, 0)
        assert kp.beginning_offsets([ktp]) == {ktp: 0}
        assert kp.end_offsets([ktp]) == {ktp: RECORDS}
        target = timestamp_of(33) - 2
        found = kp.offsets_for_times({ktp: target})[ktp]
        assert found is not None and found.offset == 33 and found.timestamp == timestamp_of(33)
        assert kp.offsets_for_times({ktp: timestamp_of(RECORDS - 1) + 1})[ktp] is None
    finally:
        kp.close()
