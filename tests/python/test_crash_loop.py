"""kill -9 in a loop under acks=all load, with a consumer group reading and committing; with each partition's
segment fdatasynced, and with the shared journal (`--wal-journal`).

Rounds: `CHRONIK_CRASH_ROUNDS` (default 3 here; the long run is 20 or more:
`CHRONIK_CRASH_ROUNDS=20 target/venv/bin/python -m pytest -q tests/python/test_crash_loop.py -s`); the
test's timeout grows with it. Seed: `CHRONIK_TEST_SEED` replays the random timings.

What must hold, over every round: every record acknowledged with acks=all is read back at exactly its
acknowledged (partition, offset) with identical bytes; no two acknowledgements share a position; offsets are
dense and hold only records this test produced; and a group's committed offset for a partition never goes
below an offset whose commit the broker acknowledged before the kill (every round has at least one).

The group consumer is checked while it reads, across the kills: it verifies CRCs, may see only the
connection errors of a broker that is down or restarting (any other error fails the test: a bad message, an
out-of-range offset, which with `auto.offset.reset=error` cannot turn into a silent jump), never reads a
record that was not produced, never reads two different records at one position, and every record it read
is the one acknowledged at that position and the one stored there at the end (a consumer sees only what
the broker keeps).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from harness import LoadProducer, consumer_config, create_topic, read_all

PARTITIONS = 4
ROUNDS = int(os.environ.get("CHRONIK_CRASH_ROUNDS", "3"))
GROUP = "crash-loop-group"
#: A round takes about 3 s on 2 shared cores (debug build); pytest.ini's 150 s would cap the long runs.
TIMEOUT_S = 120 + 30 * ROUNDS

#: What a consumer reports while the broker is killed and restarted: connections refused or cut, requests
#: that timed out. Nothing else is expected.
TRANSPORT_ERRORS = frozenset(
    {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT}
)


class GroupReader(threading.Thread):
    """A subscribed group consumer that checks every record as it reads it and commits synchronously every
    few hundred records, remembering the highest acknowledged commit per partition."""

    def __init__(self, bootstrap: str, topic: str, produced: set[bytes]):
        super().__init__(daemon=True)
        self.topic = topic
        self.produced = produced
        self.consumer = Consumer(
            consumer_config(
                bootstrap,
                **{
                    "group.id": GROUP,
                    # The group starts from committed offsets (see `commit_start_offsets`): an offset out of
                    # range is an error, never a reset.
                    "auto.offset.reset": "error",
                    "check.crcs": True,
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
        #: Every position read, with the bytes read there.
        self.seen: dict[tuple[int, int], bytes] = {}
        self.invented: list[tuple[int, int, bytes]] = []
        self.reread_differently: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.transport_errors = 0
        self.committed: dict[int, int] = {}
        self.commit_acks = 0
        self.commit_failures = 0

    def run(self) -> None:
        try:
            self._read_and_commit()
        except Exception as e:  # noqa: BLE001 - reported to the test thread, which asserts
            with self.lock:
                self.errors.append(f"reader thread failed: {e!r}")

    def _read_and_commit(self) -> None:
        self.consumer.subscribe([self.topic])
        since_commit = 0
        while not self.stop_event.is_set():
            for msg in self.consumer.consume(num_messages=500, timeout=0.2):
                self._check(msg)
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
                            self.commit_acks += 1

    def _check(self, msg) -> None:
        err = msg.error()
        with self.lock:
            if err is not None:
                if err.code() in TRANSPORT_ERRORS and not err.fatal():
                    self.transport_errors += 1
                else:
                    self.errors.append(
                        f"{err.name()} at partition {msg.partition()} offset {msg.offset()}: {err.str()}"
                    )
                return
            self.read += 1
            position, value = (msg.partition(), msg.offset()), msg.value()
            if value not in self.produced:
                self.invented.append((*position, value[:40]))
            if self.seen.setdefault(position, value) != value:
                self.reread_differently.append(position)

    def assert_healthy(self) -> None:
        with self.lock:
            assert not self.errors, f"{len(self.errors)} group consumer errors; first: {self.errors[:5]}"
            assert not self.invented, f"the group read records never produced: {self.invented[:5]}"
            assert not self.reread_differently, (
                f"the group read different records at one position: {self.reread_differently[:5]}"
            )

    def progress(self) -> tuple[int, int, dict[int, int]]:
        """(records read, commits acknowledged, highest acknowledged commit per partition)."""
        with self.lock:
            return self.read, self.commit_acks, dict(self.committed)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive()
        self.consumer.close()


def commit_start_offsets(bootstrap: str, topic: str) -> None:
    """Commits offset 0 for every partition, so that the group starts at the beginning through a committed
    offset rather than the offset-reset policy, which the reader sets to `error`."""
    c = Consumer(consumer_config(bootstrap, **{"group.id": GROUP}))
    try:
        done = c.commit(offsets=[TopicPartition(topic, p, 0) for p in range(PARTITIONS)], asynchronous=False)
        assert done is not None and all(tp.error is None for tp in done), f"initial commit failed: {done}"
    finally:
        c.close()


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


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("journal", [False, True], ids=["segment-fdatasync", "shared-journal"])
def test_kill9_loop_with_producers_consumers_and_commits(broker_factory, journal):
    # With the shared journal (--wal-journal) an acknowledgement rests on the journal alone until a trim
    # syncs the segments: every restart replays it.
    broker = broker_factory("--wal-journal", "true") if journal else broker_factory()
    seed = int(os.environ.get("CHRONIK_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (replay with CHRONIK_TEST_SEED={seed}), rounds {ROUNDS}")
    rng = random.Random(seed)
    topic = "crash-loop"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    commit_start_offsets(broker.bootstrap, topic)

    load = LoadProducer(broker.bootstrap, topic, PARTITIONS, random.Random(rng.random()))
    load.start()
    reader = GroupReader(broker.bootstrap, topic, load.produced)
    reader.start()

    def healthy_and(condition):
        def check():
            reader.assert_healthy()
            return condition()

        return check

    for round_ in range(ROUNDS):
        acked = load.acked_count()
        read, commit_acks, _ = reader.progress()
        wait_for(healthy_and(lambda: load.acked_count() >= acked + 1_500), f"round {round_}: 1500 new acks")
        wait_for(healthy_and(lambda: reader.progress()[0] >= read + 500), f"round {round_}: 500 new group reads")
        wait_for(
            healthy_and(lambda: reader.progress()[1] > commit_acks), f"round {round_}: a new acknowledged commit"
        )
        # Random timing of the kill (replayable from the seed), not a wait for anything.
        time.sleep(rng.uniform(0.0, 0.3))
        commits_before_kill = reader.progress()[2]
        broker.kill9()
        time.sleep(rng.uniform(0.05, 0.3))
        broker.restart()
        # Committed offsets never go backwards: at least what was acknowledged before the kill.
        now = committed_offsets(broker.bootstrap, topic)
        for p, off in commits_before_kill.items():
            assert now.get(p, -1) >= off, f"round {round_}: partition {p} committed {now.get(p)} < acked {off}"

    mark = load.acked_count()
    wait_for(healthy_and(lambda: load.acked_count() >= mark + 1_000), "acks after the last restart")
    left = load.finish(timeout_s=30)
    assert left == 0, f"{left} records neither acked nor failed 30 s after the load stopped"
    reader.finish()
    reader.assert_healthy()

    acked = load.acked
    read, commit_acks, committed = reader.progress()
    positions = [(p, off) for p, off, _ in acked]
    assert len(set(positions)) == len(positions), "two acknowledgements share a (partition, offset)"
    stored = read_all(broker.bootstrap, topic, PARTITIONS, **{"check.crcs": True})
    lost = [(p, off) for p, off, v in acked if stored.get((p, off)) != v]
    acked_at = {(p, off): v for p, off, v in acked}
    seen = reader.seen
    print(
        f"rounds {ROUNDS}: acked {len(acked)}, lost {len(lost)}, failed {load.failed}; group reads {read} "
        f"({len(seen)} positions, {sum(pos in acked_at for pos in seen)} of them acked), "
        f"{reader.transport_errors} connection errors, {commit_acks} commits acked, "
        f"{reader.commit_failures} failed; last commits {committed}"
    )
    assert not lost, f"{len(lost)} acknowledged records lost or changed; first: {lost[:5]}"
    garbage = [pos for pos, v in stored.items() if v not in load.produced]
    assert not garbage, f"{len(garbage)} stored records were never produced; first: {garbage[:5]}"
    not_as_acked = [pos for pos, v in seen.items() if pos in acked_at and acked_at[pos] != v]
    assert not not_as_acked, f"the group read records other than those acked there: {not_as_acked[:5]}"
    not_as_stored = [pos for pos, v in seen.items() if stored.get(pos) != v]
    assert not not_as_stored, f"the group read records the broker does not hold there now: {not_as_stored[:5]}"
    final = committed_offsets(broker.bootstrap, topic)
    for p, off in committed.items():
        assert final.get(p, -1) >= off, f"partition {p}: committed {final.get(p)} < acked commit {off}"
