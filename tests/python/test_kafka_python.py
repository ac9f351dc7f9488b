"""kafka-python (a pure-Python client, independent of librdkafka) against chronik.

What must hold: records produced with acks=all to one partition (uncompressed and gzip) come back through
assign() in produce order, each at the offset its send() future reported, with the same key and value; the
admin client creates a topic with N partitions (metadata then lists N partitions, each with a partition
directory under `<data_dir>/partitions/`), and deleting it removes it from metadata and removes its
partition directories.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from harness import create_topic

RECORDS = 1_000
DEADLINE_S = 60


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_produce_consume_in_order(broker, compression):
    topic = "kp-order"
    create_topic(broker.bootstrap, topic, 1)

    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        linger_ms=5,
        compression_type=compression,
    )
    try:
        futures = [
            producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
            for i in range(RECORDS)
        ]
        producer.flush(timeout=DEADLINE_S)
        metadata = [f.get(timeout=DEADLINE_S) for f in futures]
    finally:
        producer.close(timeout=10)
    assert [m.offset for m in metadata] == list(range(RECORDS)), "offsets are not dense and in send order"
    assert {m.partition for m in metadata} == {0}

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < RECORDS and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
        assert len(got) == RECORDS, f"read {len(got)} of {RECORDS} records within {DEADLINE_S}s"
        assert [r.offset for r in got] == list(range(RECORDS))
        assert [(r.key, r.value) for r in got] == [
            (f"k{i}".encode(), f"v{i}".encode()) for i in range(RECORDS)
        ]
        assert consumer.end_offsets([tp])[tp] == RECORDS
        assert consumer.beginning_offsets([tp])[tp] == 0
    finally:
        consumer.close()


def partition_dirs(data_dir, topic: str) -> list[str]:
    root = data_dir / "partitions"
    return sorted(
        p.name
        for p in root.iterdir()
        if p.name.rsplit("-", 1)[0] == topic and p.name.rsplit("-", 1)[1].isdigit()
    )


def test_admin_create_and_delete_topic(broker):
    topic = "kp-admin"
    partitions = 5
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])

        [described] = admin.describe_topics([topic])
        assert described["error_code"] == 0, described
        assert sorted(p["partition_index"] for p in described["partitions"]) == list(range(partitions))
        assert topic in admin.list_topics()
        assert partition_dirs(broker.data_dir, topic) == sorted(f"{topic}-{p}" for p in range(partitions))

        # Some data, so deletion has files to remove.
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        try:
            for p in range(partitions):
                producer.send(topic, value=b"x", partition=p).get(timeout=DEADLINE_S)
        finally:
            producer.close(timeout=10)

        admin.delete_topics([topic])

        deadline = time.monotonic() + 10
        while topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert topic not in admin.list_topics(), "deleted topic still listed in metadata"
        while partition_dirs(broker.data_dir, topic) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partition_dirs(broker.data_dir, topic) == [], "deleted topic's partition directories remain"
    finally:
        admin.close()
