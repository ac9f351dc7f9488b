"""The broker-wide partition limit, with real clients.

Scenario: a broker started with a small `--max-partitions`; clients ask for more partitions than it
allows, through CreateTopics, CreatePartitions and auto-creation. And a broker whose process has a small
open-file limit (256, soft and hard, so the broker cannot raise it) given ten times as many partitions.
What must hold:
- Requests over the limit are refused whole before anything is made: CreateTopics with POLICY_VIOLATION,
  CreatePartitions with INVALID_PARTITIONS, both with a message stating the limit; `validate_only` gets the
  same answer; auto-creation creates nothing. No partition directory of a refused topic is on disk and
  Metadata does not list it.
- Descriptors do not bound partitions: with 256 descriptors the broker creates 2,560 partitions, takes a
  record on each, returns them all, restarts, and does it again, never holding more segment files open than
  its cache limit and never running out of descriptors ("Too many open files"). After the restart the
  registry (Metadata) and the disk agree.
"""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewPartitions, NewTopic

from harness import admin_for, admin_refusal, create_topic, produce_acked, producer_config, read_all

#: Internal partitions a broker holds before any consumer group: the metadata (Raft) log. They count against
#: the limit (the offsets topic's partitions come with the first FindCoordinator).
INTERNAL_PARTITIONS = 1


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


def open_segment_files(broker) -> int:
    """Segment files the broker process has open now, counted in /proc."""
    fd_dir = Path(f"/proc/{broker.proc.pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).endswith((".wal", "next-segment.tmp")):
                count += 1
        except FileNotFoundError:
            pass  # closed while listed
    return count


def produce_to_every_partition(bootstrap: str, topics: dict[str, int], round_: int) -> None:
    """One acks=all record per partition, `topic/partition/round` as its value; fails unless every one is
    acknowledged."""
    producer = Producer(producer_config(bootstrap, **{"message.timeout.ms": 120000}))
    failures: list[str] = []
    acked = 0

    def on_delivery(err, msg):
        nonlocal acked
        if err is not None:
            failures.append(f"{msg.topic()}/{msg.partition()}: {err}")
        else:
            acked += 1

    for name, partitions in topics.items():
        for p in range(partitions):
            producer.produce(name, f"{name}/{p}/{round_}".encode(), partition=p, on_delivery=on_delivery)
            producer.poll(0)
    assert producer.flush(120) == 0, "undelivered records"
    assert not failures, failures[:10]
    assert acked == sum(topics.values())


def assert_every_partition_holds(bootstrap: str, topics: dict[str, int], rounds: int) -> None:
    for name, partitions in topics.items():
        records = read_all(bootstrap, name, partitions)
        expected = {(p, r): f"{name}/{p}/{r}".encode() for p in range(partitions) for r in range(rounds)}
        assert records == expected, f"{name}: {len(records)} records, {len(expected)} expected"


def test_a_small_file_limit_holds_many_times_as_many_partitions(broker_factory):
    open_files = 256
    broker = broker_factory(preexec_fn=limit_open_files(open_files))
    log = broker.stderr_text()
    raised = re.search(r"open-file limit raised.* soft=(\d+) hard=(\d+)", log)
    assert raised and raised.groups() == (str(open_files), str(open_files)), "the limit cannot escape"
    cache = int(re.search(r"max_open_segment_files=(\d+)", log).group(1))
    assert 0 < cache < open_files, cache

    # Ten times as many partitions as the process has descriptors, in topics of 320.
    topics = {f"many{i}": 320 for i in range(8)}
    for name, partitions in topics.items():
        create_topic(broker.bootstrap, name, partitions, timeout_s=120)
    assert_registry_and_disk_agree(broker, topics)
    assert open_segment_files(broker) <= cache

    # Every partition takes records and gives them back, before and after a restart.
    produce_to_every_partition(broker.bootstrap, topics, 0)
    assert_every_partition_holds(broker.bootstrap, topics, 1)
    assert open_segment_files(broker) <= cache
    broker.stop()
    broker.restart()
    assert_registry_and_disk_agree(broker, topics)
    produce_to_every_partition(broker.bootstrap, topics, 1)
    assert_every_partition_holds(broker.bootstrap, topics, 2)
    assert open_segment_files(broker) <= cache
    metrics = broker.metrics_text()
    closes = re.search(r"^chronik_wal_file_closes_total (\d+)", metrics, re.M)
    assert closes and int(closes.group(1)) > 0, "the cache closed files"
    assert "Too many open files" not in broker.stderr_text()
