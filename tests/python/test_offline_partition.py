"""A broker always starts: one partition whose files cannot be opened does not keep it down.

The scenario: a broker with two topics is stopped; in one partition's directory the segment file is moved
aside and a directory of the same name put in its place (an honest way to make a partition unopenable that
works as root, where permission bits do not stop anyone). What must hold: the broker starts and is ready;
it logs the partition as offline with the cause; `chronik_partitions_offline` reads 1 and `/ready` names
the partition; Metadata still lists the partition with its leader; the other partitions (of both topics)
take produces and serve fetches with confluent-kafka; the broken one answers Produce and Fetch with
KAFKA_STORAGE_ERROR (raw requests, and kafka-python with retries=0), and nothing is created over its
directory; the broker stops cleanly. Once the segment is put back and the broker restarted, every record
acknowledged before is there at its offset, the partition takes produces again at its old high watermark,
and nothing is reported offline.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
import urllib.request

from confluent_kafka.admin import AdminClient
from kafka import KafkaProducer
from kafka.errors import KafkaStorageError

import wire
from harness import create_topic, metric, produce_acked, read_all

KAFKA_STORAGE_ERROR = 56
RECORDS = 50
OFFLINE_GAUGE = "chronik_partitions_offline"


def ready_body(broker) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/ready", timeout=10) as r:
        assert r.status == 200, r.status
        return r.read().decode()


def raw_roundtrip(broker, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall(request)
        payload = wire.read_frame(s, 10)
    assert payload is not None, "the broker closed the connection instead of answering"
    return payload


def test_a_partition_that_cannot_be_opened_is_offline_and_the_others_serve(broker):
    create_topic(broker.bootstrap, "healthy", 2)
    create_topic(broker.bootstrap, "damaged", 2)
    acked: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
    for topic in ("healthy", "damaged"):
        for p in range(2):
            values = [f"{topic}-{p}-{i}".encode() for i in range(RECORDS)]
            offsets = produce_acked(broker.bootstrap, topic, values, partition=p)
            acked[(topic, p)] = [(off, v) for (_, off), v in zip(offsets, values, strict=True)]
    assert broker.stop(signal.SIGTERM) == 0

    # A directory where the partition's first segment file should be: opening it fails (EISDIR).
    partition_dir = broker.data_dir / "partitions" / "damaged-1"
    segment = partition_dir / "00000000000000000000.wal"
    assert segment.is_file(), sorted(p.name for p in partition_dir.iterdir())
    aside = broker.workdir / "segment-aside"
    shutil.move(segment, aside)
    segment.mkdir()

    broker.restart()
    log = broker.stderr_text().split(f"--- chronik run {broker.starts} ")[-1]
    offline_lines = [line for line in log.splitlines() if "partition offline: its files" in line]
    assert len(offline_lines) == 1, f"one log line per offline partition, got:\n{offline_lines}"
    assert "damaged" in offline_lines[0] and "partition=1" in offline_lines[0], offline_lines[0]
    assert "00000000000000000000.wal" in offline_lines[0], f"the cause is named: {offline_lines[0]}"
    assert metric(broker, OFFLINE_GAUGE) == 1
    body = ready_body(broker)
    assert body.startswith("ready\n") and "offline damaged-1: " in body, body

    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(topic="damaged", timeout=10)
    listed = md.topics["damaged"].partitions
    assert sorted(listed) == [0, 1] and listed[1].leader == 0, f"offline partition listed with its leader: {listed}"

    # The others serve: new records go in, and everything reads back at its offset.
    for topic, p in [("healthy", 0), ("healthy", 1), ("damaged", 0)]:
        value = f"{topic}-{p}-after".encode()
        [(_, off)] = produce_acked(broker.bootstrap, topic, [value], partition=p)
        assert off == RECORDS
        acked[(topic, p)].append((off, value))
    stored = read_all(broker.bootstrap, "healthy", 2)
    for p in range(2):
        for off, v in acked[("healthy", p)]:
            assert stored[(p, off)] == v

    # The offline one is refused with KAFKA_STORAGE_ERROR, and its directory is left alone.
    batch = wire.record_batch([b"refused"], int(time.time() * 1000))
    _, produced = wire.parse_produce_v3_response(raw_roundtrip(broker, wire.produce_v3(7, "damaged", 1, batch)))
    assert [(t, p, code) for t, p, code, _ in produced] == [("damaged", 1, KAFKA_STORAGE_ERROR)], produced
    _, fetched = wire.parse_fetch_v4_response(raw_roundtrip(broker, wire.fetch_v4(8, "damaged", 1, 0, 0, 0)))
    assert [(t, p, code) for t, p, code, _, _ in fetched] == [("damaged", 1, KAFKA_STORAGE_ERROR)], fetched
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0, linger_ms=0)
    try:
        try:
            kp.send("damaged", value=b"refused", partition=1).get(timeout=30)
            raise AssertionError("a produce to the offline partition was acknowledged")
        except KafkaStorageError:
            pass
    finally:
        kp.close()
    assert segment.is_dir(), "nothing was created over the offline partition"
    assert broker.stop(signal.SIGTERM) == 0, "a broker with an offline partition stops cleanly"

    # Repaired: everything acknowledged before is there, and the partition takes produces again.
    segment.rmdir()
    shutil.move(aside, segment)
    broker.restart()
    assert metric(broker, OFFLINE_GAUGE) == 0
    assert ready_body(broker) == "ready\n"
    stored = read_all(broker.bootstrap, "damaged", 2)
    for p in range(2):
        for off, v in acked[("damaged", p)]:
            assert stored[(p, off)] == v, f"damaged-{p} at {off}"
    assert sum(1 for (p, _) in stored if p == 1) == RECORDS
    [(_, off)] = produce_acked(broker.bootstrap, "damaged", [b"repaired"], partition=1)
    assert off == RECORDS, "offsets continue at the old high watermark"
