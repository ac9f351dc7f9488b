"""Retention through real clients: retention.bytes / retention.ms set with CreateTopics, AlterConfigs
(kafka-python) and IncrementalAlterConfigs (confluent-kafka) delete old segments; the log start offset
(ListOffsets earliest) advances; a fetch below it gets OFFSET_OUT_OF_RANGE and `auto.offset.reset=earliest`
moves the consumer to the new start; disk use stays bounded while producing; bad configs are refused with
INVALID_CONFIG; everything holds across a restart. Configs Kafka 3 still accepts but that have no effect here
(deprecated ones such as `message.format.version`) are accepted, stored and shown; unknown names are not.

The broker runs with small segments (64 KiB) and a 100 ms retention check so that the effects show within
a few seconds; the tests wait for conditions (watermarks, file sizes), never for fixed times.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType as KpConfigResourceType

from harness import consume_exact, consumer_config, produce_acked, producer_config, wait_for_partitions, wait_until

SEGMENT_BYTES = 64 * 1024
RETAIN_BYTES = 4 * SEGMENT_BYTES
BROKER_ARGS = (
    "--segment-bytes",
    str(SEGMENT_BYTES),
    "--retention-check-interval-ms",
    "100",
    "--retention-ms",
    "-1",
)
VALUE = b"r" * 1000
#: A segment is sealed once it passes segment.bytes, so it can exceed it by one batch: keep batches small.
SMALL_BATCHES = {"batch.size": 16384}


@pytest.fixture
def broker(broker_factory):
    return broker_factory(*BROKER_ARGS)


def create(bootstrap: str, name: str, configs: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1, config=configs or {})])
    fut[name].result(timeout=30)
    wait_for_partitions(admin, name, 1)


def watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    c = Consumer(consumer_config(bootstrap))
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()


def wait_for_log_start_above(bootstrap: str, topic: str, offset: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        low, _ = watermarks(bootstrap, topic)
        if low > offset:
            return low
        if time.monotonic() > deadline:
            raise AssertionError(f"log start of {topic} stayed at {low} (wanted > {offset})")
        time.sleep(0.1)


def partition_bytes(data_dir: Path, topic: str) -> int:
    total = 0
    for f in data_dir.glob(f"partitions/{topic}-0/*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except FileNotFoundError:  # deleted by retention since the listing
            pass
    return total


SEGMENT_HEADER_LEN = 32
FRAME_HEADER_LEN = 56
FRAME_MAGIC = b"CKWF"


def segment_data_len(path: Path) -> int:
    """Bytes of a segment file up to the end of its last frame (crates/chronik-wal/FORMAT.md): the active
    segment may go on in preallocated zeros, which retention does not count."""
    data = path.read_bytes()
    pos = SEGMENT_HEADER_LEN
    while data[pos : pos + 4] == FRAME_MAGIC and pos + FRAME_HEADER_LEN <= len(data):
        pos += FRAME_HEADER_LEN + int.from_bytes(data[pos + 8 : pos + 12], "little")
    return min(pos, len(data))


def retention_by_bytes_settled(bootstrap: str, data_dir: Path, topic: str, retain_bytes: int) -> bool:
    """True once the broker has nothing left to delete under `retention.bytes` (dropping the oldest segment
    would leave less than the limit, the broker's rule, or only the active segment is left) and its log start
    is the oldest segment on disk (the broker moves it just after the file's removal is durable)."""
    files = sorted(data_dir.glob(f"partitions/{topic}-0/*.wal"))
    try:
        sizes = [segment_data_len(f) for f in files]
        sealed_sizes = [f.stat().st_size for f in files[:-1]]
    except FileNotFoundError:  # a segment deleted meanwhile: not settled
        return False
    assert sizes[:-1] == sealed_sizes, "a sealed segment ends at its last frame"
    nothing_to_delete = len(sizes) <= 1 or sum(sizes) - sizes[0] < retain_bytes
    return nothing_to_delete and watermarks(bootstrap, topic)[0] == int(files[0].stem)


def test_retention_bytes_bounds_disk_and_moves_the_log_start(broker):
    topic = "by-bytes"
    create(broker.bootstrap, topic, {"retention.bytes": str(RETAIN_BYTES)})
    # Kept: retention.bytes, plus the active segment and the newest sealed one (a segment is deleted only if
    # what is left still holds retention.bytes), plus index files.
    bound = RETAIN_BYTES + 3 * SEGMENT_BYTES
    for round_ in range(10):
        produce_acked(broker.bootstrap, topic, [VALUE] * 200, partition=0, **SMALL_BATCHES)
        wait_until(
            lambda: partition_bytes(broker.data_dir, topic) <= bound,
            f"partition bytes back under {bound} after round {round_}",
        )
    # The log start must stop moving before it is read: a pass can still be due after the bound holds.
    wait_until(
        lambda: retention_by_bytes_settled(broker.bootstrap, broker.data_dir, topic, RETAIN_BYTES),
        "retention.bytes has nothing left to delete",
    )
    low, high = watermarks(broker.bootstrap, topic)
    assert high == 2000
    assert low > 0

    # Below the start: the broker says OFFSET_OUT_OF_RANGE (surfaced by auto.offset.reset=error).
    c = Consumer(consumer_config(broker.bootstrap))
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        err = None
        while err is None and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is not None:
                assert msg.error() is not None, f"read offset {msg.offset()} below the log start {low}"
                err = msg.error()
        assert err is not None and err.code() == KafkaError._AUTO_OFFSET_RESET, err
        assert "out of range" in err.str().lower(), err.str()
    finally:
        c.close()

    # auto.offset.reset=earliest moves to the log start and reads on from there.
    low, high = watermarks(broker.bootstrap, topic)
    records = consume_exact(broker.bootstrap, [(topic, 0, 0)], high - low, **{"auto.offset.reset": "earliest"})
    assert [r.offset for r in records] == list(range(low, high))

    broker.stop()
    broker.restart()
    assert watermarks(broker.bootstrap, topic) == (low, high)


def test_configs_altered_by_both_admin_apis_take_effect_and_persist(broker):
    a, b = "alter-legacy", "alter-incremental"
    create(broker.bootstrap, a)
    create(broker.bootstrap, b)
    for t in (a, b):
        produce_acked(broker.bootstrap, t, [VALUE] * 600, partition=0, **SMALL_BATCHES)
    # The broker default here keeps everything.
    assert watermarks(broker.bootstrap, a)[0] == 0

    # kafka-python: AlterConfigs (replaces the topic's config set). Records were stamped "now", so a
    # one-second retention lets every sealed segment go once they are a second old.
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        kp.alter_configs([KpConfigResource(KpConfigResourceType.TOPIC, a, configs={"retention.ms": "1000"})])
    finally:
        kp.close()
    # confluent-kafka: IncrementalAlterConfigs SET.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(
        ResourceType.TOPIC,
        b,
        incremental_configs=[
            ConfigEntry("retention.bytes", str(RETAIN_BYTES), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(timeout=30)

    wait_for_log_start_above(broker.bootstrap, a, 0)
    wait_for_log_start_above(broker.bootstrap, b, 0)

    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, b)])
    entries = list(described.values())[0].result(timeout=30)
    assert entries["retention.bytes"].value == str(RETAIN_BYTES)
    assert not entries["retention.bytes"].is_read_only

    broker.stop()
    broker.restart()
    entries = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, b)]).values())[0].result(timeout=30)
    assert entries["retention.bytes"].value == str(RETAIN_BYTES)
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        desc = kp.describe_configs([KpConfigResource(KpConfigResourceType.TOPIC, a)])
        text = repr(desc)
        assert "retention.ms" in text and "1000" in text, text
    finally:
        kp.close()


def test_a_topics_segment_bytes_decides_where_its_segments_end(broker):
    small = 16 * 1024
    create(broker.bootstrap, "small-segments", {"segment.bytes": str(small)})
    create(broker.bootstrap, "default-segments")
    for t in ("small-segments", "default-segments"):
        produce_acked(broker.bootstrap, t, [VALUE] * 300, partition=0, **{"batch.size": 4096})

    def sealed(topic: str) -> list[int]:
        files = sorted(broker.data_dir.glob(f"partitions/{topic}-0/*.wal"))
        return [segment_data_len(f) for f in files[:-1]]

    own, default = sealed("small-segments"), sealed("default-segments")
    assert len(own) >= 300 * len(VALUE) // small - 1, own
    assert all(n <= small for n in own), f"a sealed segment passed segment.bytes: {own}"
    assert any(n > small for n in default), f"the broker's {SEGMENT_BYTES} applies elsewhere: {default}"

    # After a restart too (the setting lives in the topic registry).
    broker.stop()
    broker.restart()
    before = len(sealed("small-segments"))
    produce_acked(broker.bootstrap, "small-segments", [VALUE] * 100, partition=0, **{"batch.size": 4096})
    own = sealed("small-segments")
    assert len(own) >= before + 100 * len(VALUE) // small - 1
    assert all(n <= small for n in own), own


def test_an_idle_partition_empties_once_its_records_expire(broker):
    create(broker.bootstrap, "idle", {"retention.ms": "60000"})
    # Stamped two minutes ago: past retention.ms at once. The active segment holds them all, so only
    # sealing it (as Kafka rolls an expired active segment) lets retention delete them.
    old = int(time.time() * 1000) - 120_000
    producer = Producer(producer_config(broker.bootstrap))
    delivered = []
    for i in range(50):
        producer.produce("idle", value=VALUE, partition=0, timestamp=old + i, on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(30) == 0
    assert delivered == [None] * 50
    wait_until(lambda: watermarks(broker.bootstrap, "idle") == (50, 50), "the expired records deleted")
    produce_acked(broker.bootstrap, "idle", [b"fresh"], partition=0)
    assert watermarks(broker.bootstrap, "idle") == (50, 51)
    records = consume_exact(broker.bootstrap, [("idle", 0, 50)], 1)
    assert [(r.offset, r.value) for r in records] == [(50, b"fresh")]


def topic_configs(admin: AdminClient, topic: str) -> dict:
    return list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values())[0].result(timeout=30)


def test_configs_without_effect_are_stored_shown_and_altered(broker):
    """Tools that set deprecated configs keep working: CreateTopics and IncrementalAlterConfigs take them,
    DescribeConfigs shows the stored values (as set on the topic), across a restart; an unknown name is
    still refused with INVALID_CONFIG, at creation and when altering."""
    from confluent_kafka.admin import ConfigSource

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    legacy = {"message.format.version": "2.8", "message.downconversion.enable": "false"}
    create(broker.bootstrap, "legacy", legacy)
    entries = topic_configs(admin, "legacy")
    for name, value in legacy.items():
        assert entries[name].value == value, (name, entries[name])
        assert entries[name].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, (name, entries[name])

    altered = {"message.format.version": "3.0-IV1", "message.downconversion.enable": "true"}
    res = ConfigResource(
        ResourceType.TOPIC,
        "legacy",
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET) for name, value in altered.items()
        ],
    )
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(timeout=30)
    entries = topic_configs(admin, "legacy")
    assert {n: entries[n].value for n in altered} == altered

    def refused(configs: dict[str, str]) -> int:
        res = ConfigResource(
            ResourceType.TOPIC,
            "legacy",
            incremental_configs=[
                ConfigEntry(n, v, incremental_operation=AlterConfigOpType.SET) for n, v in configs.items()
            ],
        )
        with pytest.raises(KafkaException) as info:
            for fut in admin.incremental_alter_configs([res]).values():
                fut.result(timeout=30)
        return info.value.args[0].code()

    assert refused({"no.such.config": "1"}) == KafkaError.INVALID_CONFIG
    assert refused({"message.downconversion.enable": "sometimes"}) == KafkaError.INVALID_CONFIG
    fut = admin.create_topics([NewTopic("unknown", 1, 1, config={**legacy, "no.such.config": "1"})])
    with pytest.raises(KafkaException) as info:
        fut["unknown"].result(timeout=30)
    assert info.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "no.such.config" not in topic_configs(admin, "legacy")

    broker.stop()
    broker.restart()
    entries = topic_configs(admin, "legacy")
    assert {n: entries[n].value for n in altered} == altered


def test_bad_configs_are_refused(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for configs in (
        {"retention.ms": "soon"},
        {"cleanup.policy": "compact"},
        {"no.such.setting": "1"},
        {"segment.bytes": "100"},
        {"remote.storage.enable": "true"},
        {"message.downconversion.enable": "yes"},
    ):
        fut = admin.create_topics([NewTopic("bad", num_partitions=1, replication_factor=1, config=configs)])
        with pytest.raises(KafkaException) as info:
            fut["bad"].result(timeout=30)
        assert info.value.args[0].code() == KafkaError.INVALID_CONFIG, (configs, info.value)
    create(broker.bootstrap, "good")
    res = ConfigResource(
        ResourceType.TOPIC,
        "good",
        incremental_configs=[ConfigEntry("retention.bytes", "-5", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(KafkaException) as info:
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(timeout=30)
    assert info.value.args[0].code() == KafkaError.INVALID_CONFIG
