"""The harness behind the real-client tests: a `chronik serve` process (`Broker`) and client helpers.

The binary is `target/debug/chronik` (built by test.sh), or whatever `CHRONIK_BIN` names; the process
itself is run by `broker_process.py` (shared with bench/kafka_bench.py). Fixtures that start and check
brokers live in conftest.py.
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import broker_process
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "chronik"

def chronik_bin() -> Path:
    path = Path(os.environ.get("CHRONIK_BIN", DEFAULT_BIN))
    if not path.is_file():
        pytest.fail(
            f"chronik binary not found at {path}; run `cargo build -p chronik-server` or set CHRONIK_BIN",
            pytrace=False,
        )
    return path


class Broker(broker_process.Broker):
    """A broker process of the binary under test (`CHRONIK_BIN`, else the debug build)."""

    def __init__(
        self, workdir: Path, extra_args: list[str], binary: Path | None = None, env=None, preexec_fn=None
    ):
        super().__init__(binary or chronik_bin(), workdir, extra_args, env=env, preexec_fn=preexec_fn)


# -- client helpers ---------------------------------------------------------------------------------------


def metric(broker, name: str) -> float:
    """One sample from the broker's /metrics, by its full name with labels (e.g.
    `chronik_request_errors_total{reason="idle_timeout"}`); 0 when absent."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def producer_config(bootstrap: str, **overrides) -> dict:
    """A confluent-kafka producer for this broker: acks=all, idempotent (sequence-checked by the broker)."""
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "socket.timeout.ms": 10000,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, **overrides) -> dict:
    """A confluent-kafka consumer used only with assign(): the group id is required by the client but no
    group API is used (no subscribe, no commits). `auto.offset.reset=error` makes an out-of-range answer
    from the broker an error instead of a silent jump."""
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"chronik-tests-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
    }
    config.update(overrides)
    return config


def create_topic(bootstrap: str, name: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Creates a topic with the admin client and waits until metadata shows every partition with a leader."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=timeout_s
    )
    futures[name].result(timeout=timeout_s)
    wait_for_partitions(admin, name, partitions, timeout_s)


def admin_for(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def admin_refusal(future) -> KafkaError:
    """The error an admin request's future fails with; the test fails if it succeeds."""
    with pytest.raises(KafkaException) as info:
        future.result(timeout=30)
    error = info.value.args[0]
    print(f"admin error: {error}")
    return error


def wait_for_partitions(admin: AdminClient, name: str, partitions: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=name, timeout=10)
        t = md.topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            if all(p.leader >= 0 for p in t.partitions.values()):
                return
        last = t
        time.sleep(0.1)
    raise AssertionError(f"topic {name} did not show {partitions} partitions with leaders: {last!r}")


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple | None
    timestamp_type: int
    timestamp_ms: int


def _record(msg) -> Record:
    ts_type, ts = msg.timestamp()
    headers = msg.headers()
    return Record(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=tuple(headers) if headers is not None else None,
        timestamp_type=ts_type,
        timestamp_ms=ts,
    )


def consume_exact(
    bootstrap: str,
    assignments: list[tuple[str, int, int]],
    count: int,
    timeout_s: float = 60.0,
    **config_overrides,
) -> list[Record]:
    """Reads `count` records from the (topic, partition, start offset) assignments, by assign() (no consumer
    group). Fails on any consumer error or on the deadline. Callers that must rule out extra records compare
    against the high watermarks. Records are returned in arrival order (offset order within a partition)."""
    consumer = Consumer(consumer_config(bootstrap, **config_overrides))
    try:
        consumer.assign([TopicPartition(t, p, o) for t, p, o in assignments])
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                by_partition: dict[tuple[str, int], int] = {}
                for r in records:
                    by_partition[(r.topic, r.partition)] = by_partition.get((r.topic, r.partition), 0) + 1
                raise AssertionError(
                    f"consumed {len(records)} of {count} records within {timeout_s}s "
                    f"(per partition: {by_partition})"
                )
            # Never ask for more than is missing: consume() waits for the full timeout otherwise.
            wanted = min(1000, count - len(records))
            for msg in consumer.consume(num_messages=wanted, timeout=min(remaining, 1.0)):
                if msg.error() is not None:
                    raise AssertionError(f"consumer error: {msg.error()}")
                records.append(_record(msg))
        assert len(records) == count
        return records
    finally:
        consumer.close()


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    """Polls `condition` until it holds; fails with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


#: The broker built with disk-fault injection (`--features fault-injection`); test.sh builds it.
FAULTS_BIN = Path(os.environ.get("CHRONIK_FAULTS_BIN", REPO_ROOT / "target" / "debug" / "chronik-faults"))


def start_faulty_broker(broker_factory, control: Path, *extra_args: str) -> "Broker":
    """Starts `chronik-faults` with its faults switched by writing `control` (crates/chronik-server/src/faults.rs)."""
    if not FAULTS_BIN.is_file():
        pytest.fail(
            f"{FAULTS_BIN} is missing: test.sh builds it (cargo build -p chronik-server --features fault-injection)",
            pytrace=False,
        )
    control.write_text("")
    return broker_factory(*extra_args, binary=FAULTS_BIN, env={"CHRONIK_FAULT_CONTROL": str(control)})


def produce_acked(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    partition: int | None = None,
    timeout_s: float = 60.0,
    **config_overrides,
) -> list[tuple[int, int]]:
    """Produces `values` with acks=all and returns the (partition, offset) of each from its delivery
    report. Fails if any delivery fails."""
    producer = Producer(producer_config(bootstrap, **config_overrides))
    results: list[tuple[int, int] | None] = [None] * len(values)
    errors: list[str] = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append(f"record {i}: {err}")
            else:
                results[i] = (msg.partition(), msg.offset())

        return cb

    for i, v in enumerate(values):
        kwargs = {"value": v, "on_delivery": on_delivery(i)}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
    left = producer.flush(timeout_s)
    assert left == 0, f"{left} records still undelivered after {timeout_s}s"
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[:5]}"
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def assert_roundtrip(bootstrap: str, topic: str = "health") -> None:
    """A real client can still produce (acks=all) and read back a record at its acknowledged offset."""
    value = f"health-{uuid.uuid4().hex}".encode()
    [(partition, offset)] = produce_acked(bootstrap, topic, [value], partition=0, timeout_s=30)
    [record] = consume_exact(bootstrap, [(topic, partition, offset)], 1, timeout_s=30)
    assert (record.offset, record.value) == (offset, value)


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(consumer_config(bootstrap))
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, partitions: int, **config_overrides) -> dict[tuple[int, int], bytes]:
    """Every record of the topic, by (partition, offset); asserts offsets are dense from 0. Overrides go to
    the consumer's configuration (e.g. `check.crcs`)."""
    highs = high_watermarks(bootstrap, topic, partitions)
    records = consume_exact(
        bootstrap, [(topic, p, 0) for p in range(partitions)], sum(highs), timeout_s=90, **config_overrides
    )
    by_position = {(r.partition, r.offset): r.value for r in records}
    assert len(by_position) == len(records), "a position was read twice"
    for p, high in enumerate(highs):
        assert sorted(o for (pp, o) in by_position if pp == p) == list(range(high)), (
            f"partition {p}: offsets below the high watermark {high} are not dense from 0"
        )
    return by_position


class LoadProducer(threading.Thread):
    """Produces `seq:<padding>` values with acks=all as fast as the broker takes them, recording every
    acknowledged (partition, offset, value) and every failure."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rng: random.Random):
        super().__init__(daemon=True)
        self.topic = topic
        self.partitions = partitions
        self.rng = rng
        self.producer = Producer(
            producer_config(
                bootstrap,
                **{
                    "linger.ms": 2,
                    "queue.buffering.max.messages": 20_000,
                    # Failed sends are retried across the restart, but not forever.
                    "message.timeout.ms": 20_000,
                    "reconnect.backoff.ms": 50,
                    "reconnect.backoff.max.ms": 200,
                },
            )
        )
        self.produced: set[bytes] = set()
        self.acked: list[tuple[int, int, bytes]] = []
        self.failed = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def _on_delivery(self, err, msg):
        with self.lock:
            if err is not None:
                self.failed += 1
            else:
                self.acked.append((msg.partition(), msg.offset(), msg.value()))

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self) -> None:
        seq = 0
        while not self.stop_event.is_set():
            value = f"{seq}:".encode() + self.rng.randbytes(self.rng.randrange(10, 300))
            # Recorded before it is sent, so a consumer can never read it before it is known.
            self.produced.add(value)
            try:
                self.producer.produce(
                    self.topic, value=value, partition=seq % self.partitions, on_delivery=self._on_delivery
                )
                seq += 1
            except BufferError:
                self.producer.poll(0.01)
            self.producer.poll(0)

    def finish(self, timeout_s: float) -> int:
        self.stop_event.set()
        self.join(timeout=10)
        assert not self.is_alive()
        return self.producer.flush(timeout_s)
