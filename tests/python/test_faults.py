"""Disk faults under the broker, seen by real clients.

The broker here is the test build (`target/debug/chronik-faults`, feature `fault-injection`, built by
test.sh) whose WAL runs over a wrapper that a control file switches into a fault mode for one partition.

What must hold:
- ENOSPC mid-append: the producer gets KAFKA_STORAGE_ERROR (kafka-python with retries=0 sees
  KafkaStorageError), nothing partial is left on disk (`chronik wal verify` passes), and once space returns a
  retrying idempotent producer delivers everything: every record acknowledged exactly once, offsets dense.
- A failed fdatasync (EIO): the batch is not acknowledged, the partition is recovered from disk (the
  unsynced bytes cut), the error is counted, and a retrying idempotent producer delivers everything exactly
  once.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kafka import KafkaProducer
from kafka.errors import KafkaStorageError

from harness import REPO_ROOT, chronik_bin, consume_exact, create_topic, metric, produce_acked, producer_config

FAULTS_BIN = Path(os.environ.get("CHRONIK_FAULTS_BIN", REPO_ROOT / "target" / "debug" / "chronik-faults"))
TOPIC = "faulty"


@pytest.fixture
def faulty(broker_factory, tmp_path):
    if not FAULTS_BIN.is_file():
        pytest.fail(
            f"{FAULTS_BIN} is missing: test.sh builds it (cargo build -p chronik-server --features fault-injection)",
            pytrace=False,
        )
    control = tmp_path / "fault-control"
    control.write_text("")
    broker = broker_factory(binary=FAULTS_BIN, env={"CHRONIK_FAULT_CONTROL": str(control)})
    create_topic(broker.bootstrap, TOPIC, 1)
    return broker, control




STORAGE_ERRORS = 'chronik_api_errors_total{api="Produce",error="KafkaStorageError"}'


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def produce_through_fault(broker, first: int, count: int, fault_active, clear) -> None:
    """Produces records `first..first+count` with a retrying idempotent producer while a fault is active,
    clears the fault once the broker has refused something, and requires every record delivered."""
    producer = Producer(producer_config(broker.bootstrap, **{"message.timeout.ms": 120000, "retry.backoff.ms": 50}))
    errors: list[str] = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))

    for i in range(first, first + count):
        producer.produce(TOPIC, value=f"v{i}".encode(), partition=0, on_delivery=cb)
        producer.poll(0)
    wait_until(fault_active, "the broker to refuse a produce")
    clear()
    assert producer.flush(120) == 0, "records undelivered after the fault cleared"
    assert not errors, errors[:5]


def assert_exactly_once(broker, total: int) -> None:
    records = consume_exact(broker.bootstrap, [(TOPIC, 0, 0)], total)
    assert [r.offset for r in records] == list(range(total))
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(total)]


def test_disk_full_refuses_cleanly_and_service_resumes(faulty):
    broker, control = faulty
    produce_acked(broker.bootstrap, TOPIC, [f"v{i}".encode() for i in range(100)], partition=0)

    control.write_text(f"enospc {TOPIC}-0/")
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0)
    try:
        with pytest.raises(KafkaStorageError):
            kp.send(TOPIC, value=b"refused", partition=0).get(timeout=30)
    finally:
        kp.close()

    before = metric(broker, STORAGE_ERRORS)
    produce_through_fault(
        broker, 100, 200, lambda: metric(broker, STORAGE_ERRORS) > before, lambda: control.write_text("")
    )
    assert_exactly_once(broker, 300)

    broker.stop()
    verify = subprocess.run(
        [str(chronik_bin()), "wal", "verify", str(broker.data_dir)], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, f"partial frame left on disk:\n{verify.stdout}\n{verify.stderr}"
    broker.restart()
    assert_exactly_once(broker, 300)


def test_failed_fdatasync_is_never_acknowledged_and_the_partition_recovers(faulty):
    broker, control = faulty
    produce_acked(broker.bootstrap, TOPIC, [f"v{i}".encode() for i in range(100)], partition=0)
    errors_before = metric(broker, 'chronik_wal_errors_total{kind="poisoned"}')

    control.write_text(f"eio-fsync-once {TOPIC}-0/")
    # The control file empties when the fault fires; the producer's batches in that group get a retriable
    # error, the partition is recovered from disk, and the retries land once each.
    produce_through_fault(broker, 100, 300, lambda: control.read_text() == "", lambda: None)
    assert_exactly_once(broker, 400)
    assert metric(broker, 'chronik_wal_errors_total{kind="poisoned"}') > errors_before
    log = broker.stderr_text()
    assert "partition recovered from disk after a failed fdatasync" in log
