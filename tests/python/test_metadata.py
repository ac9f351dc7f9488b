"""Metadata, topic auto-creation and the admin edge cases of CreateTopics / DeleteTopics.

What must hold: Metadata advertises one broker at the listen address, leading every partition; producing to
an unknown topic auto-creates it with the default partition count (1, or `--default-partitions N`);
creating an existing topic fails with TOPIC_ALREADY_EXISTS and leaves it as it was; deleting an unknown
topic fails with UNKNOWN_TOPIC_OR_PARTITION; a topic name that is not a legal Kafka name (path separators,
`..`, too long, empty) is refused with INVALID_TOPIC_EXCEPTION (17) and creates nothing on disk, inside or
outside the data directory.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import NewTopic

from harness import admin_for, admin_refusal, create_topic, producer_config, wait_for_partitions


def test_metadata_advertises_listen_address(broker):
    create_topic(broker.bootstrap, "md", 3)
    md = admin_for(broker).list_topics(timeout=10)
    assert [(b.id, f"{b.host}:{b.port}") for b in md.brokers.values()] == [
        (md.controller_id, broker.bootstrap)
    ]
    partitions = md.topics["md"].partitions
    assert sorted(partitions) == [0, 1, 2]
    for p in partitions.values():
        assert (p.leader, list(p.replicas), list(p.isrs)) == (
            md.controller_id,
            [md.controller_id],
            [md.controller_id],
        )


@pytest.mark.parametrize("default_partitions", [None, 4])
def test_produce_auto_creates_topic_with_default_partitions(broker_factory, default_partitions):
    args = [] if default_partitions is None else ["--default-partitions", str(default_partitions)]
    broker = broker_factory(*args)
    expected = default_partitions or 1
    producer = Producer(producer_config(broker.bootstrap))
    errors = []
    producer.produce("auto-created", value=b"x", on_delivery=lambda err, msg: err and errors.append(err))
    assert producer.flush(30) == 0
    assert not errors, errors
    wait_for_partitions(admin_for(broker), "auto-created", expected)
    dirs = sorted(
        p.name for p in (broker.data_dir / "partitions").iterdir() if p.name.startswith("auto-created-")
    )
    assert dirs == [f"auto-created-{p}" for p in range(expected)]


def test_create_existing_topic_fails(broker):
    create_topic(broker.bootstrap, "twice", 2)
    admin = admin_for(broker)
    futures = admin.create_topics([NewTopic("twice", num_partitions=5, replication_factor=1)])
    assert admin_refusal(futures["twice"]).code() == KafkaError.TOPIC_ALREADY_EXISTS
    wait_for_partitions(admin, "twice", 2)


def test_delete_unknown_topic_fails(broker):
    admin = admin_for(broker)  # kept referenced: a destroyed client fails its futures with _DESTROY
    futures = admin.delete_topics(["never-created"], operation_timeout=10)
    assert admin_refusal(futures["never-created"]).code() == KafkaError.UNKNOWN_TOPIC_OR_PART


@pytest.mark.parametrize(
    "name",
    ["../escape", "a/b", "..", ".", "x" * 250, "bad name", "tab\tname"],
    ids=["dotdot-slash", "slash", "dotdot", "dot", "250-chars", "space", "tab"],
)
def test_illegal_topic_names_are_refused(broker, tmp_path, name):
    admin = admin_for(broker)
    before_outside = sorted(p.name for p in broker.workdir.iterdir())
    futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    assert admin_refusal(futures[name]).code() == KafkaError.TOPIC_EXCEPTION
    assert sorted(p.name for p in broker.workdir.iterdir()) == before_outside, (
        "something was created beside data/"
    )
    # Only the broker's internal partitions (topic registry, committed offsets) exist.
    created = [p.name for p in (broker.data_dir / "partitions").iterdir() if not p.name.startswith("__chronik")]
    assert created == []
    assert name not in admin.list_topics(timeout=10).topics
