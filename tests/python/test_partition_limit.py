"""The broker-wide partition limit, with real clients.

Scenario: a broker started with a small `--max-partitions`, and one whose process has a small open-file
limit (soft and hard, so the broker cannot raise it) and the default limit derived from it. Clients ask for
far more partitions than either allows, through CreateTopics, CreatePartitions and auto-creation.
What must hold:
- Requests over the limit are refused whole before anything is made: CreateTopics with POLICY_VIOLATION,
  CreatePartitions with INVALID_PARTITIONS, both with a message stating the limit; `validate_only` gets the
  same answer; auto-creation creates nothing. No partition directory of a refused topic is on disk and
  Metadata does not list it.
- The broker never runs out of descriptors half-way ("Too many open files"), keeps serving the topics it
  admitted, and after a restart the registry (Metadata) and the disk agree: every admitted topic is there
  with its partitions and its records, and nothing else.
"""

from __future__ import annotations

import re
import resource

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewPartitions, NewTopic

from harness import admin_for, admin_refusal, create_topic, produce_acked, read_all

#: Internal partitions every broker holds (metadata log, committed offsets and their snapshots); they count
#: against the limit.
INTERNAL_PARTITIONS = 3


def client_topics(broker) -> dict[str, int]:
    """Topic name -> partition count, as Metadata lists them."""
    md = admin_for(broker).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def topics_on_disk(broker) -> dict[str, int]:
    """Topic name -> partition directories under the data directory (leftovers such as `*.creating`
    counted under their own names, so that they show up as a difference)."""
    found: dict[str, int] = {}
    for entry in (broker.data_dir / "partitions").iterdir():
        topic, _, _ = entry.name.rpartition("-")
        if not topic.startswith("__chronik"):
            found[topic] = found.get(topic, 0) + 1
    return found


def assert_registry_and_disk_agree(broker, expected: dict[str, int]) -> None:
    assert client_topics(broker) == expected
    assert topics_on_disk(broker) == expected


def test_creations_over_max_partitions_are_refused_whole(broker_factory):
    limit = 12
    broker = broker_factory("--max-partitions", str(limit))
    admin = admin_for(broker)
    create_topic(broker.bootstrap, "fits", 4)
    held = INTERNAL_PARTITIONS + 4

    for validate_only in (True, False):
        futures = admin.create_topics(
            [NewTopic("over", num_partitions=limit, replication_factor=1)], validate_only=validate_only
        )
        error = admin_refusal(futures["over"])
        assert error.code() == KafkaError.POLICY_VIOLATION
        assert f"at most {limit}" in error.str() and f"holds {held}" in error.str(), error.str()

        futures = admin.create_partitions([NewPartitions("fits", limit)], validate_only=validate_only)
        error = admin_refusal(futures["fits"])
        assert error.code() == KafkaError.INVALID_PARTITIONS
        assert f"at most {limit}" in error.str(), error.str()

    assert_registry_and_disk_agree(broker, {"fits": 4})

    # What fits still works, up to the limit exactly.
    create_topic(broker.bootstrap, "small", limit - held)
    produce_acked(broker.bootstrap, "small", [b"within the limit"], partition=limit - held - 1)
    futures = admin.create_topics([NewTopic("one-more", num_partitions=1, replication_factor=1)])
    assert admin_refusal(futures["one-more"]).code() == KafkaError.POLICY_VIOLATION

    # Auto-creation, at the limit: a producer's Metadata request for an unknown topic asks for it.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 3000})
    failures = []
    for _ in range(3):
        producer.produce("auto", b"x", on_delivery=lambda err, _msg: failures.append(err))
    producer.flush(30)
    assert len(failures) == 3 and all(e is not None for e in failures), failures

    assert_registry_and_disk_agree(broker, {"fits": 4, "small": limit - held})

    broker.stop()
    broker.restart()
    assert_registry_and_disk_agree(broker, {"fits": 4, "small": limit - held})
    records = read_all(broker.bootstrap, "small", limit - held)
    assert list(records.values()) == [b"within the limit"]


def limit_open_files(n: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return preexec


def test_a_small_file_limit_refuses_partitions_cleanly_and_keeps_serving(broker_factory):
    open_files = 256
    broker = broker_factory(preexec_fn=limit_open_files(open_files))
    raised = re.search(r"open-file limit raised.* soft=(\d+) hard=(\d+)", broker.stderr_text())
    assert raised and raised.groups() == (str(open_files), str(open_files)), "the limit cannot escape"
    derived = int(re.search(r"partition limit max_partitions=(\d+)", broker.stderr_text()).group(1))
    assert 0 < derived < open_files, derived

    # Ask for four times what the descriptors could hold (a fresh partition holds one), ten at a time.
    admin = admin_for(broker)
    created: dict[str, int] = {}
    refused = 0
    for i in range(open_files * 4 // 10):
        name = f"t{i}"
        futures = admin.create_topics([NewTopic(name, num_partitions=10, replication_factor=1)])
        try:
            futures[name].result(timeout=30)
            created[name] = 10
        except KafkaException as e:
            assert e.args[0].code() == KafkaError.POLICY_VIOLATION, e
            refused += 1
    assert refused > 0 and created, (created, refused)
    assert INTERNAL_PARTITIONS + sum(created.values()) <= derived
    assert "Too many open files" not in broker.stderr_text()
    assert_registry_and_disk_agree(broker, created)

    # Every admitted partition takes records and gives them back, before and after a restart.
    for name, partitions in created.items():
        for p in range(partitions):
            produce_acked(broker.bootstrap, name, [f"{name}/{p}".encode()], partition=p)
    broker.stop()
    broker.restart()
    assert "Too many open files" not in broker.stderr_text()
    assert_registry_and_disk_agree(broker, created)
    for name, partitions in created.items():
        records = read_all(broker.bootstrap, name, partitions)
        assert sorted(records.values()) == sorted(f"{name}/{p}".encode() for p in range(partitions))
