"""One connection's requests take effect in the order they were sent, as Kafka promises.

Clients pipeline requests on a connection (librdkafka keeps several OffsetCommits in flight on its
coordinator connection when a consumer commits asynchronously) and rely on the broker applying them one
after another: a later commit must never be stored before an earlier one and then be overwritten by it.

What must hold:
- 50 OffsetCommits with increasing offsets, written to one socket at once: every one is answered, in order,
  without error, and OffsetFetch then returns the last (repeated over several rounds);
- a confluent-kafka consumer committing asynchronously after every message in a tight loop: once every
  commit callback has arrived, `committed()` equals the offset of the last acknowledged commit.
"""

from __future__ import annotations

import socket
import struct
import time

from confluent_kafka import Consumer, Producer, TopicPartition

import wire
from harness import consumer_config, create_topic, producer_config

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9

TOPIC = "ordered"


def offset_commit_v2(correlation_id: int, group: str, topic: str, partition: int, offset: int) -> bytes:
    """OffsetCommit v2 outside any generation (a simple consumer): one partition."""
    body = (
        wire.string(group)
        + struct.pack(">i", -1)  # generation id
        + wire.string("")  # member id
        + struct.pack(">q", -1)  # retention time: the broker's default
        + struct.pack(">i", 1)
        + wire.string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">iq", partition, offset)
        + wire.string(f"m{offset}")
    )
    return wire.frame(wire.header_v1(API_OFFSET_COMMIT, 2, correlation_id) + body)


def offset_fetch_v1(correlation_id: int, group: str, topic: str, partition: int) -> bytes:
    body = wire.string(group) + struct.pack(">i", 1) + wire.string(topic) + struct.pack(">ii", 1, partition)
    return wire.frame(wire.header_v1(API_OFFSET_FETCH, 1, correlation_id) + body)


class Reader:
    """Sequential decoding of a response payload."""

    def __init__(self, payload: bytes):
        self.buf = payload
        self.pos = 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.buf[self.pos : self.pos + n].decode()
        self.pos += n
        return s


def commit_errors(payload: bytes) -> tuple[int, list[int]]:
    """(correlation id, every partition's error code) of an OffsetCommit v2 response."""
    r = Reader(payload)
    correlation_id = r.take(">i")
    codes = []
    for _ in range(r.take(">i")):
        r.string()
        for _ in range(r.take(">i")):
            r.take(">i")
            codes.append(r.take(">h"))
    return correlation_id, codes


def fetched_offset(payload: bytes) -> tuple[int, int, str | None, int]:
    """(correlation id, offset, metadata, error code) of a one-partition OffsetFetch v1 response."""
    r = Reader(payload)
    correlation_id = r.take(">i")
    assert r.take(">i") == 1
    r.string()
    assert r.take(">i") == 1
    r.take(">i")
    offset = r.take(">q")
    metadata = r.string()
    return correlation_id, offset, metadata, r.take(">h")


def test_pipelined_offset_commits_take_effect_in_order(broker):
    create_topic(broker.bootstrap, TOPIC, 1)
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
    try:
        # As clients do: find the group's coordinator first (the first lookup creates the offsets topic).
        sock.sendall(wire.find_coordinator_v0(10_000, "pipelined"))
        payload = wire.read_frame(sock, 30)
        assert payload is not None
        assert wire.parse_find_coordinator_v0_response(payload)[:2] == (10_000, 0)
        correlation_id = 0
        for round_ in range(5):
            offsets = [round_ * 1000 + i for i in range(1, 51)]
            first = correlation_id
            sock.sendall(b"".join(offset_commit_v2(first + i, "pipelined", TOPIC, 0, o) for i, o in enumerate(offsets)))
            correlation_id += len(offsets)
            for i in range(len(offsets)):
                payload = wire.read_frame(sock, 30)
                assert payload is not None, f"round {round_}: no answer to commit {i}"
                cid, codes = commit_errors(payload)
                assert cid == first + i, f"round {round_}: answers out of order ({cid} where {first + i} was due)"
                assert codes == [0], f"round {round_}: commit {i} failed with {codes}"
            sock.sendall(offset_fetch_v1(correlation_id, "pipelined", TOPIC, 0))
            payload = wire.read_frame(sock, 30)
            assert payload is not None
            cid, offset, metadata, code = fetched_offset(payload)
            correlation_id += 1
            assert code == 0
            assert (offset, metadata) == (offsets[-1], f"m{offsets[-1]}"), (
                f"round {round_}: the last of 50 pipelined commits was {offsets[-1]}, the broker kept {offset}"
            )
    finally:
        sock.close()


def test_async_commits_in_a_tight_loop_leave_the_last_acknowledged(broker):
    messages = 300
    create_topic(broker.bootstrap, TOPIC, 1)
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(messages):
        producer.produce(TOPIC, value=b"v%d" % i, partition=0)
    assert producer.flush(30) == 0

    acknowledged: list[int] = []
    failures: list[str] = []

    def on_commit(err, partitions):
        if err is not None:
            failures.append(str(err))
            return
        for tp in partitions:
            if tp.error is not None:
                failures.append(str(tp.error))
            else:
                acknowledged.append(tp.offset)

    group = "async-committer"
    consumer = Consumer(consumer_config(broker.bootstrap, **{"group.id": group, "on_commit": on_commit}))
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        seen = 0
        commits = 0
        deadline = time.monotonic() + 60
        while seen < messages and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            seen += 1
            consumer.commit(offsets=[TopicPartition(TOPIC, 0, msg.offset() + 1)], asynchronous=True)
            commits += 1
        assert seen == messages, f"read {seen} of {messages}"
        while len(acknowledged) + len(failures) < commits and time.monotonic() < deadline:
            consumer.poll(0.1)
        assert not failures, failures[:5]
        assert len(acknowledged) == commits, f"{len(acknowledged)} of {commits} commit callbacks arrived"
        assert acknowledged[-1] == messages
        committed = consumer.committed([TopicPartition(TOPIC, 0)], timeout=30)[0].offset
        assert committed == acknowledged[-1], (
            f"the last acknowledged commit was {acknowledged[-1]}, the broker keeps {committed}"
        )
    finally:
        consumer.close()
