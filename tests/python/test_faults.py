"""Disk faults under the broker, seen by real clients.

The broker here is the test build (`target/debug/chronik-faults`, feature `fault-injection`, built by
test.sh) whose WAL runs over a wrapper that a control file switches into a fault mode for one partition.

What must hold:
- ENOSPC mid-append (a full disk: writes into space the segment already has succeed, writes that need new
  blocks fail; see crates/chronik-server/src/faults.rs): the WAL's preallocated space fills up first, then
  the producer gets KAFKA_STORAGE_ERROR (kafka-python with retries=0 sees KafkaStorageError); the failed
  write is rolled back in place, so the partition is not poisoned (not reopened), and `chronik wal verify`
  finds the data directory clean right then, before anything more is appended; once space returns a
  retrying idempotent producer delivers everything: every record acknowledged exactly once at its offset,
  offsets dense.
- A failed fdatasync (EIO): the batch is not acknowledged, the partition is recovered from disk (the
  unsynced bytes cut), the error is counted, and a retrying idempotent producer delivers everything exactly
  once.
- A consumer sees only durable records: an acks=0 record written to the segment but whose fdatasync is
  held is neither fetched nor counted in the high watermark, and when that fdatasync fails the record is
  gone without any consumer having seen it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaProducer
from kafka.errors import KafkaStorageError

from harness import (
    chronik_bin,
    consume_exact,
    consumer_config,
    create_topic,
    high_watermarks,
    metric,
    produce_acked,
    producer_config,
    start_faulty_broker,
    wait_until,
)

TOPIC = "faulty"

STORAGE_ERRORS = 'chronik_api_errors_total{api="Produce",error="KafkaStorageError"}'
POISONED = 'chronik_wal_errors_total{kind="poisoned"}'
FAILED_FSYNCS = 'chronik_wal_errors_total{kind="fsync"}'
#: Records that fill the preallocated space: one per produce request, each group well under the WAL's
#: 32 KiB "large group" mark (`LARGE_GROUP_BYTES`), above which it stops preparing space ahead.
BIG_VALUE_LEN = 16 << 10
#: More than a record batch and WAL frame add around one record's value.
FRAME_OVERHEAD = 512
#: Written before the disk fills: past the stretch that the WAL's preparer leaves unwritten where it starts
#: (a quarter of the 2 MiB it keeps ahead), at a new segment or once a partition has taken its first 64
#: appends (`PREALLOCATE_AFTER_APPENDS`). That stretch is a sparse hole, which a full disk cannot write into
#: (see `test_disk_full_in_the_unwritten_start_of_a_segment_rolls_back_in_place`).
PREFILL_BYTES = 2 << 20
#: Zero-filled space wanted ahead of the last record before the disk fills.
PREPARED_AHEAD_BYTES = 1 << 20


@pytest.fixture
def faulty(broker_factory, tmp_path):
    control = tmp_path / "fault-control"
    broker = start_faulty_broker(broker_factory, control)
    create_topic(broker.bootstrap, TOPIC, 1)
    return broker, control


def value(i: int, length: int = 0) -> bytes:
    """Record `i`'s value, padded to `length` bytes."""
    return f"v{i}:".encode().ljust(length, b".")


def produce_through_fault(broker, values: list[bytes], fault_active, clear) -> None:
    """Produces `values` with a retrying idempotent producer while a fault is active, clears the fault once
    the broker has refused something, and requires every record delivered."""
    producer = Producer(producer_config(broker.bootstrap, **{"message.timeout.ms": 120000, "retry.backoff.ms": 50}))
    errors: list[str] = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))

    for v in values:
        producer.produce(TOPIC, value=v, partition=0, on_delivery=cb)
        producer.poll(0)
    wait_until(fault_active, "the broker to refuse a produce")
    clear()
    assert producer.flush(120) == 0, "records undelivered after the fault cleared"
    assert not errors, errors[:5]


def assert_exactly_once(broker, expected: list[bytes]) -> None:
    """The partition holds exactly `expected`, in order, at offsets 0, 1, 2, ..."""
    records = consume_exact(broker.bootstrap, [(TOPIC, 0, 0)], len(expected))
    assert [r.offset for r in records] == list(range(len(expected)))
    bad = [r.offset for r, v in zip(records, expected) if r.value != v]
    assert not bad, f"{len(bad)} records differ from what was acknowledged there; first offsets {bad[:5]}"


def wal_verify(broker) -> subprocess.CompletedProcess:
    """`chronik wal verify` of the broker's data directory (a read-only scan; the broker may be running)."""
    return subprocess.run(
        [str(chronik_bin()), "wal", "verify", str(broker.data_dir)], capture_output=True, text=True, timeout=120
    )


def wal_next_offset(broker) -> int:
    """The offset after the last frame on disk for the faulty partition, from `chronik wal inspect`."""
    out = subprocess.run(
        [str(chronik_bin()), "wal", "inspect", "--json", str(broker.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    segments = [s for s in map(json.loads, out.splitlines()) if s["partition"] == f"{TOPIC}-0"]
    assert segments, f"no segment of {TOPIC}-0 in:\n{out}"
    return segments[-1]["next_offset"]


def active_segment(broker) -> Path:
    segments = sorted((broker.data_dir / "partitions" / f"{TOPIC}-0").glob("*.wal"))
    assert len(segments) == 1, f"expected one segment (no rotation in this test), found {segments}"
    return segments[0]


def zero_tail(segment: Path) -> tuple[int, int]:
    """(end of the last non-zero byte, file size): the zeros past that point are the WAL's preallocated
    space (plus at most a few zero bytes that end the last frame)."""
    data = segment.read_bytes()
    return len(data.rstrip(b"\0")), len(data)


def first_hole(segment: Path, pos: int) -> int:
    """Where the first unallocated range (hole) at or after `pos` starts; the file size if none."""
    fd = os.open(segment, os.O_RDONLY)
    try:
        return os.lseek(fd, pos, os.SEEK_HOLE)
    finally:
        os.close(fd)


def assert_not_poisoned(broker) -> None:
    """The broker's log shows no poisoned (and so reopened) partition. The poisoned-error counter misses a
    poisoning by a failed rollback: the broker reopens the partition before any append sees it."""
    signs = [
        line
        for line in broker.stderr_text().splitlines()
        if "partition poisoned" in line or "WAL partition reopened" in line
    ]
    assert not signs, f"the failed write was not rolled back in place: {signs[0]}"


def produce_one_per_request(broker, values: list[bytes]) -> None:
    """Each value in its own acks=all request, so that each is one WAL append: the broker prepares space
    only for a partition past its first 64 appends."""
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0, linger_ms=0)
    try:
        for v in values:
            kp.send(TOPIC, value=v, partition=0).get(timeout=30)
    finally:
        kp.close()


def test_disk_full_refuses_cleanly_and_service_resumes(faulty):
    broker, control = faulty
    expected = [value(i) for i in range(100)]
    produce_one_per_request(broker, expected)
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0, linger_ms=0)
    try:
        for _ in range(PREFILL_BYTES // BIG_VALUE_LEN):
            v = value(len(expected), BIG_VALUE_LEN)
            assert kp.send(TOPIC, value=v, partition=0).get(timeout=30).offset == len(expected)
            expected.append(v)
        segment = active_segment(broker)
        wait_until(
            lambda: zero_tail(segment)[1] - zero_tail(segment)[0] >= PREPARED_AHEAD_BYTES,
            f"{PREPARED_AHEAD_BYTES} bytes zero-filled ahead of the last record",
        )
        data_end, size = zero_tail(segment)
        # The scenario: everything past the last record is blocks the file already has, so a full disk takes
        # writes there; only the write that runs past the end of the file needs a new block.
        assert first_hole(segment, data_end) == size, f"{segment}: a hole in its preallocated space"
        poisoned_before = metric(broker, POISONED)

        control.write_text(f"enospc {TOPIC}-0/")
        taken_before_full = len(expected)
        refused = False
        for _ in range((size - data_end) // BIG_VALUE_LEN + 2):
            v = value(len(expected), BIG_VALUE_LEN)
            try:
                assert kp.send(TOPIC, value=v, partition=0).get(timeout=30).offset == len(expected)
            except KafkaStorageError:
                refused = True
                break
            expected.append(v)
        assert refused, f"the disk was full but the broker took {size - data_end} bytes more than its space"
    finally:
        kp.close()

    # Rolled back in place: the partial frame zeroed inside the file's own space, nothing poisoned or reopened.
    assert metric(broker, POISONED) == poisoned_before, "the failed write poisoned the partition"
    assert_not_poisoned(broker)
    verify = wal_verify(broker)
    assert verify.returncode == 0, f"partial frame left on disk:\n{verify.stdout}\n{verify.stderr}"
    assert wal_next_offset(broker) == len(expected), "the log on disk does not end at the last acknowledged record"
    # The refusal came only at the end of the file's space: the writer filled what was preallocated.
    data_end_after, size_after = zero_tail(segment)
    print(
        f"disk full: {len(expected) - taken_before_full} records taken into {size - data_end} preallocated bytes, "
        f"{size_after - data_end_after} left when refused; file {size} -> {size_after} bytes"
    )
    assert size_after - data_end_after < BIG_VALUE_LEN + FRAME_OVERHEAD, (
        f"{size_after - data_end_after} bytes of preallocated space left unused when the disk refused"
    )

    # Space returns: a retrying idempotent producer, refused at first, delivers everything exactly once.
    before = metric(broker, STORAGE_ERRORS)
    more = [value(i, 1024) for i in range(len(expected), len(expected) + 200)]
    produce_through_fault(
        broker, more, lambda: metric(broker, STORAGE_ERRORS) > before, lambda: control.write_text("")
    )
    expected += more
    assert_exactly_once(broker, expected)
    assert metric(broker, POISONED) == poisoned_before
    assert_not_poisoned(broker)

    broker.stop()
    verify = wal_verify(broker)
    assert verify.returncode == 0, f"partial frame left on disk:\n{verify.stdout}\n{verify.stderr}"
    broker.restart()
    assert_exactly_once(broker, expected)


def test_disk_full_in_the_unwritten_start_of_a_segment_rolls_back_in_place(faulty):
    broker, control = faulty
    expected = [value(i) for i in range(100)]
    produce_one_per_request(broker, expected)
    segment = active_segment(broker)
    wait_until(
        lambda: zero_tail(segment)[1] - zero_tail(segment)[0] >= PREPARED_AHEAD_BYTES,
        f"{PREPARED_AHEAD_BYTES} bytes prepared ahead of the last record",
    )
    data_end, size = zero_tail(segment)
    assert first_hole(segment, data_end) < size, "the scenario needs a hole in the prepared space"

    control.write_text(f"enospc {TOPIC}-0/")
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0, linger_ms=0)
    try:
        with pytest.raises(KafkaStorageError):
            kp.send(TOPIC, value=value(100, BIG_VALUE_LEN), partition=0).get(timeout=30)
    finally:
        kp.close()
    assert_not_poisoned(broker)

    # The WAL cut the file at the failed write; with space back, appends go on from there.
    control.write_text("")
    produce_acked(broker.bootstrap, TOPIC, [value(101)], partition=0)
    assert_exactly_once(broker, expected + [value(101)])


def test_failed_fdatasync_is_never_acknowledged_and_the_partition_recovers(faulty):
    broker, control = faulty
    expected = [value(i) for i in range(100)]
    produce_acked(broker.bootstrap, TOPIC, expected, partition=0)
    poisoned_before = metric(broker, POISONED)
    fsyncs_before = metric(broker, FAILED_FSYNCS)

    control.write_text(f"eio-fsync-once {TOPIC}-0/")
    # The control file empties when the fault fires; the producer's batches in that group get a retriable
    # error, the partition is recovered from disk, and the retries land once each.
    more = [value(i) for i in range(100, 400)]
    produce_through_fault(broker, more, lambda: control.read_text() == "", lambda: None)
    assert_exactly_once(broker, expected + more)
    # One failed fdatasync (the append's or the preparer's), one poisoning, however many requests it failed.
    assert metric(broker, FAILED_FSYNCS) == fsyncs_before + 1
    assert metric(broker, POISONED) == poisoned_before + 1
    log = broker.stderr_text()
    assert "partition recovered from disk after a failed fdatasync" in log


def test_a_consumer_never_sees_a_record_that_was_not_durable(faulty):
    broker, control = faulty
    durable = [value(i) for i in range(10)]
    produce_acked(broker.bootstrap, TOPIC, durable, partition=0)
    consumer = Consumer(consumer_config(broker.bootstrap, **{"fetch.wait.max.ms": 100}))
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    seen: list[bytes] = []

    def read(seconds: float) -> None:
        for msg in consumer.consume(num_messages=1000, timeout=seconds):
            assert msg.error() is None, msg.error()
            seen.append(msg.value())

    try:
        while len(seen) < len(durable):
            read(1.0)
        # An acks=0 record reaches the segment file, and its fdatasync is held.
        control.write_text(f"stall-fsync {TOPIC}-0/")
        kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=0, linger_ms=0)
        kp.send(TOPIC, value=b"never-durable", partition=0)
        kp.flush()
        kp.close()
        wait_until(lambda: wal_next_offset(broker) == len(durable) + 1, "the acks=0 record on disk, unsynced")
        assert high_watermarks(broker.bootstrap, TOPIC, 1) == [len(durable)]
        read(2.0)
        assert seen == durable, "a record not yet durable was served"
        # The held fdatasync fails: the record is cut, never having been served.
        control.write_text(f"eio-fsync-once {TOPIC}-0/")
        wait_until(lambda: control.read_text() == "", "the fdatasync to fail")
        more = [value(i) for i in range(10, 20)]
        produce_through_fault(broker, more, lambda: True, lambda: None)
        while len(seen) < len(durable) + len(more):
            read(1.0)
        assert seen == durable + more
        assert_exactly_once(broker, durable + more)
    finally:
        consumer.close()
