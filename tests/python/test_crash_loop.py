"""kill -9 in a loop under acks=all load, with a consumer group reading and committing.

Rounds: `CHRONIK_CRASH_ROUNDS` (default 3 here; the long run is 20 or more:
`CHRONIK_CRASH_ROUNDS=20 target/venv/bin/python -m pytest -q tests/python/test_crash_loop.py -s`).
Seed: `CHRONIK_TEST_SEED` replays the random timings.

What must hold, over every round: every record acknowledged with acks=all is read back at exactly its
acknowledged (partition, offset) with identical bytes; no two acknowledgements share a position; offsets are
dense and hold only records this test produced; the group consumer never reads a record that was not
produced (no corrupt or invented reads); and a group's committed offset for a partition never goes below an
offset whose commit the broker acknowledged before the kill.
"""

from __future__ import annotations

import os
import random
import threading
import time

from confluent_kafka import Consumer, TopicPartition

from harness import LoadProducer, consumer_config, create_topic, read_all

PARTITIONS = 4
ROUNDS = int(os.environ.get("CHRONIK_CRASH_ROUNDS", "3"))
GROUP = "crash-loop-group"


class GroupReader(threading.Thread):
    """A subscribed group consumer that checks every record against what was produced and commits
    synchronously every few hundred records, remembering the highest acknowledged commit per partition."""

    def __init__(self, bootstrap: str, topic: str, produced: set[bytes]):
        super().__init__(daemon=True)
        self.topic = topic
        self.produced = produced
        self.consumer = Consumer(
            consumer_config(
                bootstrap,
                **{
                    "group.id": GROUP,
                    "auto.offset.reset": "earliest",
                    "enable.auto.offset.store": True,
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 500,
                    "reconnect.backoff.ms": 50,
                    "reconnect.backoff.max.ms": 200,
                },
            )
        )
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.read = 0
        self.invented: list[tuple[int, int, bytes]] = []
        self.committed: dict[int, int] = {}
        self.commit_failures = 0

    def run(self) -> None:
        self.consumer.subscribe([self.topic])
        since_commit = 0
        while not self.stop_event.is_set():
            for msg in self.consumer.consume(num_messages=500, timeout=0.2):
                if msg.error() is not None:
                    continue  # transport errors while the broker is down; the client reconnects
                with self.lock:
                    self.read += 1
                    if msg.value() not in self.produced:
                        self.invented.append((msg.partition(), msg.offset(), msg.value()[:40]))
                since_commit += 1
            if since_commit >= 300:
                since_commit = 0
                try:
                    done = self.consumer.commit(asynchronous=False)
                except Exception:  # noqa: BLE001 - the broker may be down or the group rebalancing
                    with self.lock:
                        self.commit_failures += 1
                    continue
                with self.lock:
                    for tp in done or []:
                        if tp.error is None and tp.offset >= 0:
                            self.committed[tp.partition] = max(self.committed.get(tp.partition, -1), tp.offset)

    def snapshot(self) -> tuple[int, dict[int, int]]:
        with self.lock:
            return self.read, dict(self.committed)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive()
        self.consumer.close()


def committed_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer(consumer_config(bootstrap, **{"group.id": GROUP}))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        return {tp.partition: tp.offset for tp in got if tp.error is None}
    finally:
        c.close()


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def test_kill9_loop_with_producers_consumers_and_commits(broker):
    seed = int(os.environ.get("CHRONIK_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (replay with CHRONIK_TEST_SEED={seed}), rounds {ROUNDS}")
    rng = random.Random(seed)
    topic = "crash-loop"
    create_topic(broker.bootstrap, topic, PARTITIONS)

    load = LoadProducer(broker.bootstrap, topic, PARTITIONS, random.Random(rng.random()))
    load.start()
    reader = GroupReader(broker.bootstrap, topic, load.produced)
    reader.start()
    commits_before_kills: list[dict[int, int]] = []
    for round_ in range(ROUNDS):
        acked, (read, committed) = load.acked_count(), reader.snapshot()
        wait_for(lambda: load.acked_count() >= acked + 1_500, f"round {round_}: 1500 new acks")
        wait_for(lambda: reader.snapshot()[0] >= read + 500, f"round {round_}: 500 new group reads")
        time.sleep(rng.uniform(0.0, 0.3))
        commits_before_kills.append(reader.snapshot()[1])
        broker.kill9()
        time.sleep(rng.uniform(0.05, 0.3))
        broker.restart()
        # Committed offsets never go backwards: at least what was acknowledged before the kill.
        now = committed_offsets(broker.bootstrap, topic)
        for p, off in commits_before_kills[-1].items():
            assert now.get(p, -1) >= off, f"round {round_}: partition {p} committed {now.get(p)} < acked {off}"

    mark = load.acked_count()
    wait_for(lambda: load.acked_count() >= mark + 1_000, "acks after the last restart")
    left = load.finish(timeout_s=30)
    assert left == 0, f"{left} records neither acked nor failed 30 s after the load stopped"
    reader.finish()

    acked = load.acked
    read, committed = reader.snapshot()
    print(
        f"rounds {ROUNDS}: acked {len(acked)}, failed {load.failed}, group reads {read}, "
        f"commit failures {reader.commit_failures}, last commits {committed}"
    )
    assert not reader.invented, f"the group read records never produced: {reader.invented[:5]}"
    positions = [(p, off) for p, off, _ in acked]
    assert len(set(positions)) == len(positions), "two acknowledgements share a (partition, offset)"
    stored = read_all(broker.bootstrap, topic, PARTITIONS)
    lost = [(p, off) for p, off, v in acked if stored.get((p, off)) != v]
    assert not lost, f"{len(lost)} acknowledged records lost or changed; first: {lost[:5]}"
    garbage = [pos for pos, v in stored.items() if v not in load.produced]
    assert not garbage, f"{len(garbage)} stored records were never produced; first: {garbage[:5]}"
    assert committed, "no commit was acknowledged: the commit check proved nothing"
    final = committed_offsets(broker.bootstrap, topic)
    for p, off in committed.items():
        assert final.get(p, -1) >= off, f"partition {p}: committed {final.get(p)} < acked commit {off}"
