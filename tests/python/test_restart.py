"""Durability of acknowledged records across a graceful restart and across kill -9 under load.

What must hold: SIGTERM ends the broker with exit code 0; after a restart on the same data directory every
record acknowledged with acks=all is read back at exactly its acknowledged offset with the same value, and
new records continue at the old high watermark. After kill -9 in the middle of a continuous acks=all produce
load, three times over (the producer keeps running across the restarts), every acknowledged record is read
back at exactly its acknowledged (partition, offset) with an identical value; no two acknowledgements share a
position; every offset below the high watermark is dense and holds a record this test produced (no garbage).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from harness import consume_exact, consumer_config, create_topic, produce_acked, producer_config

PARTITIONS = 2
#: kill -9 / restart cycles under one continuous load.
CRASH_CYCLES = 3


def high_watermarks(bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer(consumer_config(bootstrap))
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(PARTITIONS)
        ]
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    """Every record of the topic, by (partition, offset); asserts offsets are dense from 0."""
    highs = high_watermarks(bootstrap, topic)
    records = consume_exact(bootstrap, [(topic, p, 0) for p in range(PARTITIONS)], sum(highs), timeout_s=90)
    by_position = {(r.partition, r.offset): r.value for r in records}
    assert len(by_position) == len(records), "a position was read twice"
    for p, high in enumerate(highs):
        assert sorted(o for (pp, o) in by_position if pp == p) == list(range(high)), (
            f"partition {p}: offsets below the high watermark {high} are not dense from 0"
        )
    return by_position


def test_graceful_restart_keeps_acked_records(broker):
    topic = "restart"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    values = [f"before-{i}".encode() for i in range(2_000)]
    acked = []
    for p in range(PARTITIONS):
        mine = values[p::PARTITIONS]
        acked += list(zip(produce_acked(broker.bootstrap, topic, mine, partition=p), mine, strict=True))
    assert len(acked) == len(values)

    assert broker.stop(signal.SIGTERM) == 0, "SIGTERM must end the broker with exit code 0"
    broker.restart()

    stored = read_all(broker.bootstrap, topic)
    assert len(stored) == len(values)
    for (p, off), v in acked:
        assert stored.get((p, off)) == v, f"acked record at {(p, off)}"

    highs_before = [sum(1 for (pp, _), _ in acked if pp == p) for p in range(PARTITIONS)]
    after = produce_acked(broker.bootstrap, topic, [b"after-0", b"after-1"], partition=1)
    assert after == [(1, highs_before[1]), (1, highs_before[1] + 1)], (
        "offsets continue at the old high watermark"
    )


class LoadProducer(threading.Thread):
    """Produces `seq:<padding>` values with acks=all as fast as the broker takes them, recording every
    acknowledged (partition, offset, value) and every failure."""

    def __init__(self, bootstrap: str, topic: str, rng: random.Random):
        super().__init__(daemon=True)
        self.topic = topic
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
            try:
                self.producer.produce(
                    self.topic, value=value, partition=seq % PARTITIONS, on_delivery=self._on_delivery
                )
                self.produced.add(value)
                seq += 1
            except BufferError:
                self.producer.poll(0.01)
            self.producer.poll(0)

    def finish(self, timeout_s: float) -> int:
        self.stop_event.set()
        self.join(timeout=10)
        assert not self.is_alive()
        return self.producer.flush(timeout_s)


def test_kill9_under_load_keeps_acked_records(broker):
    seed = int(os.environ.get("CHRONIK_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (replay with CHRONIK_TEST_SEED={seed})")
    rng = random.Random(seed)
    topic = "crash"
    create_topic(broker.bootstrap, topic, PARTITIONS)

    load = LoadProducer(broker.bootstrap, topic, random.Random(rng.random()))
    load.start()
    acked_at_kills = []
    for cycle in range(CRASH_CYCLES):
        # Let the load reach full speed (and, after a restart, reconnect) before each kill.
        mark = load.acked_count()
        deadline = time.monotonic() + 30
        while load.acked_count() < mark + 2_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert load.acked_count() >= mark + 2_000, f"cycle {cycle}: fewer than 2000 new acks in 30 s"
        time.sleep(rng.uniform(0.0, 0.5))
        acked_at_kills.append(load.acked_count())
        broker.kill9()
        time.sleep(rng.uniform(0.05, 0.5))
        broker.restart()

    # The producer kept going across every restart; its retried and new sends must land and be acked too.
    mark = load.acked_count()
    deadline = time.monotonic() + 30
    while load.acked_count() < mark + 1_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    left = load.finish(timeout_s=30)
    assert left == 0, f"{left} records neither acked nor failed 30 s after the load stopped"

    acked = load.acked
    print(
        f"acked {len(acked)} (at each kill -9: {acked_at_kills}), failed {load.failed}, "
        f"produced {len(load.produced)}"
    )
    assert len(acked) > acked_at_kills[-1], "no record was acknowledged after the last restart"
    positions = [(p, off) for p, off, _ in acked]
    assert len(set(positions)) == len(positions), "two acknowledgements share a (partition, offset)"

    stored = read_all(broker.bootstrap, topic)
    wrong = [
        (p, off, v[:20], stored.get((p, off), b"<missing>")[:20])
        for p, off, v in acked
        if stored.get((p, off)) != v
    ]
    assert not wrong, f"{len(wrong)} acked records not found at their offset; first: {wrong[:5]}"
    garbage = [(pos, v[:40]) for pos, v in stored.items() if v not in load.produced]
    assert not garbage, f"{len(garbage)} stored records were never produced; first: {garbage[:5]}"
