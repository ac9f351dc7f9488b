"""A data directory written by the last release before the cluster (`fixtures/pre-cluster-release.*`,
made by `fixtures/make_pre_cluster_fixture.py` with that release's binary) opens as a one-node cluster
with nothing lost: cluster id, topics and their configs, every record, committed offsets, and producer
ids (a new idempotent producer is not mistaken for an old one)."""

from __future__ import annotations

import json
import signal
import tarfile
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from harness import Broker, consume_exact, producer_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def check(b: Broker, expected: dict, extra: dict[str, list[str]]) -> None:
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    md = admin.list_topics(timeout=10)
    assert md.cluster_id == expected["cluster_id"], "the cluster keeps its id"
    assert {t: len(md.topics[t].partitions) for t in md.topics} == expected["topics"]
    configs = list(admin.describe_configs([ConfigResource("topic", "events")]).values())[0].result(30)
    assert configs["retention.ms"].value == expected["configs"]["events"]["retention.ms"]
    for tp, values in expected["records"].items():
        topic, p = tp.rsplit("-", 1)
        wanted = values + extra.get(tp, [])
        records = consume_exact(b.bootstrap, [(topic, int(p), 0)], len(wanted))
        assert [r.value.decode() for r in records] == wanted, tp
        assert [r.offset for r in records] == list(range(len(wanted)))
    group = ConsumerGroupTopicPartitions("billing")
    committed = admin.list_consumer_group_offsets([group])["billing"].result(30)
    got = {f"{tp.topic}-{tp.partition}": tp.offset for tp in committed.topic_partitions}
    assert got == expected["committed"]["billing"]


def test_a_data_directory_of_the_release_before_the_cluster_opens_with_nothing_lost(tmp_path):
    expected = json.loads((FIXTURES / "pre-cluster-release.json").read_text())
    workdir = tmp_path / "upgraded"
    workdir.mkdir()
    with tarfile.open(FIXTURES / "pre-cluster-release.tar.gz") as tar:
        tar.extractall(workdir, filter="data")
    assert (workdir / "data" / "partitions" / "__chronik_metadata-0").is_dir()
    b = Broker(workdir, [])
    b.start()
    try:
        check(b, expected, {})
        # The old metadata log has been taken over and removed.
        assert not (workdir / "data" / "partitions" / "__chronik_metadata-0").exists()
        # A new idempotent producer gets an id the old release never handed out: its first batch is
        # appended, not taken for a duplicate of an old producer's.
        producer = Producer(producer_config(b.bootstrap))
        errors = []
        producer.produce("orders", value=b"after-upgrade", partition=0, on_delivery=lambda e, m: e and errors.append(e))
        assert producer.flush(30) == 0 and not errors, errors
        assert b.stop(signal.SIGTERM) == 0
        b.restart()
        check(b, expected, {"orders-0": ["after-upgrade"]})
    finally:
        if b.is_alive():
            assert b.stop(signal.SIGTERM) == 0
