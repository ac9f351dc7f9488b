"""Committed offsets of simple consumers (assign() + commit with a group id), stored durably by the broker.

What must hold: a commit is answered only once durable, so after SIGTERM and after kill -9 the broker
answers OffsetFetch exactly as before (offsets and metadata); partitions never committed read as "no
offset"; confluent-kafka and kafka-python see each other's commits. (A commit claiming a group generation is
refused: crates/chronik-server/tests/committed_offsets.rs.)

Under disk faults (the fault-injection build, `target/debug/chronik-faults`, built by test.sh): a failed
fdatasync of the offsets log is recovered from by the broker itself (the partition reopened from disk, the
commit retried), so the commit and later ones succeed; a disk that refuses writes makes commits fail with
NOT_COORDINATOR, which clients retry, so a synchronous commit goes through once the disk recovers.
"""

from __future__ import annotations

import signal
import threading

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from kafka import KafkaConsumer, OffsetAndMetadata
from kafka import TopicPartition as KTopicPartition

from harness import consumer_config, create_topic, metric, start_faulty_broker, wait_until

# Faults apply to the offsets log's segment files only (not to `__chronik_offsets_snapshot-0`).
OFFSETS_LOG = "__chronik_offsets-0/"
NOT_COORDINATOR = 'chronik_api_errors_total{api="OffsetCommit",error="NotCoordinator"}'

TOPIC = "committed"
PARTITIONS = 3


def committed(bootstrap: str, group: str) -> dict[int, int]:
    consumer = Consumer(consumer_config(bootstrap, **{"group.id": group}))
    try:
        tps = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def commit(bootstrap: str, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer(consumer_config(bootstrap, **{"group.id": group}))
    try:
        result = consumer.commit(offsets=[TopicPartition(TOPIC, p, o) for p, o in offsets.items()], asynchronous=False)
        assert all(tp.error is None for tp in result), result
    finally:
        consumer.close()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_commits_survive_restart(broker, how):
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    commit(broker.bootstrap, "g1", {0: 5, 1: 17})
    commit(broker.bootstrap, "g1", {0: 9})
    commit(broker.bootstrap, "g2", {2: 3})
    before = {g: committed(broker.bootstrap, g) for g in ("g1", "g2")}
    assert before["g1"] == {0: 9, 1: 17, 2: -1001}, before
    assert before["g2"] == {0: -1001, 1: -1001, 2: 3}, before

    if how == signal.SIGKILL:
        broker.kill9()
    else:
        assert broker.stop(how) == 0
    broker.restart()

    after = {g: committed(broker.bootstrap, g) for g in ("g1", "g2")}
    assert after == before, "committed offsets identical before and after the restart"


def test_clients_see_each_others_commits_with_metadata(broker):
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="kp", enable_auto_commit=False)
    try:
        consumer.assign([KTopicPartition(TOPIC, 1)])
        consumer.commit({KTopicPartition(TOPIC, 1): OffsetAndMetadata(42, "hello", -1)})
        assert consumer.committed(KTopicPartition(TOPIC, 1), metadata=True).metadata == "hello"
    finally:
        consumer.close()
    assert committed(broker.bootstrap, "kp")[1] == 42


@pytest.fixture
def faulty(broker_factory, tmp_path):
    control = tmp_path / "fault-control"
    # One offsets partition: every group's commits go to the log the faults are aimed at.
    broker = start_faulty_broker(broker_factory, control, "--offsets-topic-partitions", "1")
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    return broker, control


def test_failed_fdatasync_on_the_offsets_log_does_not_fail_commits(faulty):
    broker, control = faulty
    commit(broker.bootstrap, "g", {0: 1})

    control.write_text(f"eio-fsync-once {OFFSETS_LOG}")
    # Two commits: the fault fires at the latest in the first one's fdatasync (or earlier, in the
    # background preallocation's); either way both must be acknowledged.
    commit(broker.bootstrap, "g", {0: 2})
    commit(broker.bootstrap, "g", {1: 3})
    assert control.read_text() == "", "the injected fdatasync failure fired"
    assert "committed offsets recovered from disk after a failed write" in broker.stderr_text()
    assert committed(broker.bootstrap, "g") == {0: 2, 1: 3, 2: -1001}

    assert broker.stop(signal.SIGTERM) == 0
    broker.restart()
    assert committed(broker.bootstrap, "g") == {0: 2, 1: 3, 2: -1001}


def test_commit_refused_by_the_disk_is_retried_by_the_client(faulty):
    broker, control = faulty
    before = metric(broker, NOT_COORDINATOR)
    control.write_text(f"enospc {OFFSETS_LOG}")
    outcome: dict[str, object] = {}

    def commit_sync() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id="kp", enable_auto_commit=False, retry_backoff_ms=50
        )
        try:
            consumer.assign([KTopicPartition(TOPIC, 0)])
            consumer.commit({KTopicPartition(TOPIC, 0): OffsetAndMetadata(7, "", -1)}, timeout_ms=60000)
            outcome["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e
        finally:
            consumer.close()

    committer = threading.Thread(target=commit_sync)
    committer.start()
    wait_until(lambda: metric(broker, NOT_COORDINATOR) > before, "the broker to answer a commit NOT_COORDINATOR")
    control.write_text("")
    committer.join(90)
    assert not committer.is_alive(), "the commit did not finish after the disk recovered"
    assert outcome == {"ok": True}, outcome
    assert committed(broker.bootstrap, "kp")[0] == 7
