"""Consumer groups with subscribe(): the coordinator runs the rounds, the clients' leader assigns.

What must hold: three confluent-kafka consumers in one group on a 6-partition topic split the partitions so
that each is owned by exactly one member, and consume every record exactly once (range and
cooperative-sticky assignors); a member that leaves has its partitions moved to the others; a member that
dies without leaving (kill -9 of its process) is removed after its session timeout and its partitions move;
a member that joins later gets a share; committed positions let a restarted broker's group resume where it
stopped; kafka-python's group consumer with auto-commit works.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka import KafkaConsumer

from harness import create_topic, produce_acked

PARTITIONS = 6
DEADLINE_S = 60.0


def group_config(bootstrap: str, group: str, assignor: str = "range") -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 200,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 300,
        "partition.assignment.strategy": assignor,
    }


class Member:
    """A group consumer polling in a thread, recording what it receives and what it owns."""

    def __init__(self, bootstrap: str, topic: str, group: str, assignor: str = "range"):
        self.consumer = Consumer(group_config(bootstrap, group, assignor))
        self.consumer.subscribe([topic])
        self.records: list[tuple[int, int, bytes]] = []
        self.assignment: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)
            self.assignment = sorted(tp.partition for tp in self.consumer.assignment())
            if msg is None:
                continue
            if msg.error() is not None:
                self.errors.append(str(msg.error()))
                continue
            self.records.append((msg.partition(), msg.offset(), msg.value()))
        self.consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def wait_until(condition, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def owners(members: list[Member]) -> list[int]:
    return sorted(p for m in members for p in m.assignment)


def received(members: list[Member]) -> list[tuple[int, int, bytes]]:
    return sorted(r for m in members for r in m.records)


@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_three_members_share_partitions_and_consume_everything_once(broker, assignor):
    topic = f"grp-{assignor}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    acked = produce_acked(broker.bootstrap, topic, [f"v{i}".encode() for i in range(3000)])
    members = [Member(broker.bootstrap, topic, f"g-{assignor}", assignor) for _ in range(3)]
    try:
        wait_until(lambda: len(received(members)) >= 3000, "all 3000 records consumed")
        wait_until(lambda: owners(members) == list(range(PARTITIONS)) and all(m.assignment for m in members),
                   "every partition owned by exactly one of three members")
        got = received(members)
        assert len(got) == 3000 and len({(p, o) for p, o, _ in got}) == 3000, "each record exactly once"
        assert sorted((p, o) for p, o, _ in got) == sorted(acked)
        assert not any(m.errors for m in members), [m.errors for m in members]
    finally:
        for m in members:
            m.close()


def test_partitions_move_when_members_leave_and_join(broker):
    topic = "grp-churn"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    members = [Member(broker.bootstrap, topic, "churn") for _ in range(3)]
    try:
        wait_until(lambda: owners(members) == list(range(PARTITIONS)) and all(m.assignment for m in members),
                   "three members own everything")
        leaving = members.pop()
        leaving.close()  # LeaveGroup
        wait_until(lambda: owners(members) == list(range(PARTITIONS)), "two members own everything")
        produce_acked(broker.bootstrap, topic, [b"after-leave"] * 60)
        wait_until(lambda: sum(1 for r in received(members) if r[2] == b"after-leave") == 60,
                   "records after the leave consumed by the remaining members")
        members.append(Member(broker.bootstrap, topic, "churn"))
        wait_until(lambda: all(m.assignment for m in members) and owners(members) == list(range(PARTITIONS)),
                   "the new member gets a share")
    finally:
        for m in members:
            m.close()


def _silent_member(bootstrap: str, topic: str, ready) -> None:
    consumer = Consumer(group_config(bootstrap, "crash"))
    consumer.subscribe([topic])
    while True:
        consumer.poll(0.1)
        if consumer.assignment():
            ready.set()


def test_a_dead_member_is_removed_after_its_session_timeout(broker):
    topic = "grp-crash"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    doomed = ctx.Process(target=_silent_member, args=(broker.bootstrap, topic, ready), daemon=True)
    doomed.start()
    survivor = Member(broker.bootstrap, topic, "crash")
    try:
        assert ready.wait(DEADLINE_S), "the doomed member never got partitions"
        wait_until(lambda: 0 < len(survivor.assignment) < PARTITIONS, "partitions split between two members")
        doomed.kill()  # no LeaveGroup: only the session timeout (6 s) can remove it
        doomed.join()
        started = time.monotonic()
        wait_until(lambda: survivor.assignment == list(range(PARTITIONS)), "the survivor owns everything")
        took = time.monotonic() - started
        assert took < 6 + 10, f"reassigned {took:.1f}s after the crash"
    finally:
        survivor.close()


def test_group_resumes_from_committed_positions_after_broker_restart(broker):
    topic = "grp-resume"
    create_topic(broker.bootstrap, topic, 2)
    delivered = produce_acked(broker.bootstrap, topic, [b"first"] * 100)
    # The sticky partitioner may put all 100 in one partition; a partition that got nothing has no commit.
    expected = {p: max((o + 1 for q, o in delivered if q == p), default=-1001) for p in range(2)}
    member = Member(broker.bootstrap, topic, "resume")
    try:
        wait_until(lambda: len(member.records) == 100, "first 100 consumed")
    finally:
        member.close()  # commits on close (auto-commit)
    positions = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "resume"}).committed(
        [TopicPartition(topic, p) for p in range(2)], timeout=30)
    assert {tp.partition: tp.offset for tp in positions} == expected, positions
    assert broker.stop(signal.SIGTERM) == 0
    broker.restart()
    produce_acked(broker.bootstrap, topic, [b"second"] * 50)
    member = Member(broker.bootstrap, topic, "resume")
    try:
        wait_until(lambda: len(member.records) >= 50, "the next 50 consumed")
        assert all(v == b"second" for _, _, v in member.records), "nothing before the committed position again"
    finally:
        member.close()


def test_kafka_python_group_consumer_with_auto_commit(broker):
    topic = "grp-kp"
    create_topic(broker.bootstrap, topic, 3)
    produce_acked(broker.bootstrap, topic, [f"k{i}".encode() for i in range(300)])
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id="kp-group",
                             auto_offset_reset="earliest", enable_auto_commit=True, auto_commit_interval_ms=200,
                             consumer_timeout_ms=5000)
    try:
        values = [m.value for m in consumer]
        assert sorted(values) == sorted(f"k{i}".encode() for i in range(300))
        consumer.commit()
        committed = sum(consumer.committed(tp) or 0 for tp in consumer.assignment())
        assert committed == 300
    finally:
        consumer.close()
