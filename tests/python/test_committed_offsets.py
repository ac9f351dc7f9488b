"""Committed offsets of simple consumers (assign() + commit with a group id), stored durably by the broker.

What must hold: a commit is answered only once durable, so after SIGTERM and after kill -9 the broker
answers OffsetFetch exactly as before (offsets and metadata); partitions never committed read as "no
offset"; confluent-kafka and kafka-python see each other's commits. (A commit claiming a group generation is
refused: crates/chronik-server/tests/committed_offsets.rs.)
"""

from __future__ import annotations

import signal

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from kafka import KafkaConsumer, OffsetAndMetadata
from kafka import TopicPartition as KTopicPartition

from harness import consumer_config, create_topic

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

