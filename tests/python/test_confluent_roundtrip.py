"""confluent-kafka (librdkafka) produces to and consumes from chronik, uncompressed and with every codec.

What must hold: every record produced with acks=all gets a successful delivery report; reading the topic back
from offset 0 of every partition (assign(), no consumer group) yields exactly the records produced, each at
the offset its delivery report gave, with the same key (including null keys), value (including null values),
headers (order, duplicates, binary and null values) and CreateTime timestamp; the partitions' offsets are
dense from 0 and the high watermarks equal the record counts.
"""

from __future__ import annotations

import random

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Producer, TopicPartition

from harness import consume_exact, consumer_config, create_topic, producer_config

BASE_TIMESTAMP_MS = 1_700_000_000_000
PARTITIONS = 3


def make_record(i: int, rng: random.Random) -> dict:
    """Record i, with a mix of shapes: mostly keyed, some null keys, a few null values (tombstones)."""
    key = None if i % 97 == 5 else f"key-{i}".encode()
    value = None if i % 501 == 3 else f"value-{i}-".encode() + rng.randbytes(rng.randrange(0, 200))
    headers = [
        ("idx", str(i).encode()),
        ("bin", bytes([i % 256, 0, 255])),
        ("dup", b"first"),
        ("dup", b"second"),
    ]
    if i % 10 == 0:
        headers.append(("null", None))
    if i % 7 == 0:
        headers = []
    return {
        "key": key,
        "value": value,
        "headers": headers,
        # Not monotonic across records, so the broker cannot get away with deriving them.
        "timestamp": BASE_TIMESTAMP_MS + i * 3 + (i % 5) * 1000,
    }


def produce_and_verify(bootstrap: str, topic: str, count: int, compression: str) -> None:
    rng = random.Random(count)
    records = [make_record(i, rng) for i in range(count)]
    create_topic(bootstrap, topic, PARTITIONS)

    producer = Producer(producer_config(bootstrap, **{"compression.type": compression, "linger.ms": 20}))
    acked: list[tuple[int, int] | None] = [None] * count
    errors: list[str] = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append(f"record {i}: {err}")
            else:
                acked[i] = (msg.partition(), msg.offset())

        return cb

    for i, r in enumerate(records):
        while True:
            try:
                producer.produce(topic, on_delivery=on_delivery(i), **r)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0, f"{left} records undelivered after 60 s"
    assert not errors, f"{len(errors)} of {count} deliveries failed; first: {errors[:5]}"
    assert all(a is not None for a in acked)
    assert len(set(acked)) == count, "two records were acknowledged at the same (partition, offset)"

    per_partition = {p: sorted(o for (pp, o) in acked if pp == p) for p in range(PARTITIONS)}
    for p, offsets in per_partition.items():
        assert offsets == list(range(len(offsets))), f"partition {p}: acked offsets are not dense from 0"
    assert sum(1 for offs in per_partition.values() if offs) >= 2, "the partitioner used only one partition"

    consumed = consume_exact(bootstrap, [(topic, p, 0) for p in range(PARTITIONS)], count, timeout_s=90)
    by_position = {(c.partition, c.offset): c for c in consumed}
    assert len(by_position) == count, "the same (partition, offset) was read twice"

    mismatches = []
    for i, r in enumerate(records):
        got = by_position.get(acked[i])
        if got is None:
            mismatches.append(f"record {i}: nothing read at acked position {acked[i]}")
            continue
        expected = (r["key"], r["value"], tuple(r["headers"]) or None, TIMESTAMP_CREATE_TIME, r["timestamp"])
        actual = (got.key, got.value, got.headers or None, got.timestamp_type, got.timestamp_ms)
        if actual != expected:
            mismatches.append(f"record {i} at {acked[i]}: expected {expected!r}, read {actual!r}")
    assert not mismatches, f"{len(mismatches)} records differ; first: " + "\n".join(mismatches[:5])

    assert {c.topic for c in consumed} == {topic}
    # Within a partition, records arrive in offset order.
    for p in range(PARTITIONS):
        offsets = [c.offset for c in consumed if c.partition == p]
        assert offsets == sorted(offsets), f"partition {p}: records arrived out of offset order"

    watcher = Consumer(consumer_config(bootstrap))
    try:
        for p in range(PARTITIONS):
            low, high = watcher.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            assert (low, high) == (0, len(per_partition[p])), f"partition {p} watermarks"
    finally:
        watcher.close()


def test_produce_consume_10k_records_acks_all(broker):
    produce_and_verify(broker.bootstrap, "roundtrip", 10_000, "none")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_compressed(broker, codec):
    produce_and_verify(broker.bootstrap, f"roundtrip-{codec}", 2_000, codec)


@pytest.mark.parametrize("acks", ["1", "0"])
def test_produce_with_acks_1_and_0(broker, acks):
    """acks=1 reports offsets like acks=all; acks=0 gets no response at all (a response would desynchronise
    the client's correlation ids), yet every record is stored, in order."""
    topic = f"acks-{acks}"
    count = 3_000
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer(producer_config(broker.bootstrap, acks=acks, **{"enable.idempotence": False}))
    reported: list[int] = []
    errors: list[str] = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            reported.append(msg.offset())

    for i in range(count):
        producer.produce(topic, value=f"{acks}-{i}".encode(), partition=0, on_delivery=cb)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    assert len(reported) == count
    if acks == "1":
        assert sorted(reported) == list(range(count))

    records = consume_exact(broker.bootstrap, [(topic, 0, 0)], count, timeout_s=60)
    assert [(r.offset, r.value) for r in records] == [(i, f"{acks}-{i}".encode()) for i in range(count)]


def test_records_larger_than_the_fetch_budget_are_still_returned(broker):
    """As in Kafka (KIP-74), a fetch returns the first batch even when it alone exceeds the partition and
    request byte budgets, so a consumer with small budgets makes progress; small records come back whole."""
    topic = "large"
    create_topic(broker.bootstrap, topic, 1)
    rng = random.Random(74)
    values = [rng.randbytes(900_000) if i % 3 == 0 else rng.randbytes(100) for i in range(12)]
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 0, "batch.num.messages": 1}))
    offsets = []
    for v in values:
        producer.produce(
            topic,
            value=v,
            partition=0,
            on_delivery=lambda err, msg: offsets.append(msg.offset() if err is None else str(err)),
        )
        assert producer.flush(30) == 0
    assert offsets == list(range(len(values)))
    records = consume_exact(
        broker.bootstrap,
        [(topic, 0, 0)],
        len(values),
        timeout_s=60,
        **{"max.partition.fetch.bytes": 65_536, "fetch.max.bytes": 65_536, "message.max.bytes": 65_536},
    )
    assert [r.offset for r in records] == list(range(len(values)))
    assert [r.value for r in records] == values
