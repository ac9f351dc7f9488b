"""Prometheus metrics on --metrics-listen move by exactly the work done.

What must hold: after N single-record produce requests (acks=all, each its own request and WAL write),
the partition's high-watermark gauge reads N+1 (with the warm-up record),
`chronik_wal_writes_total` and `chronik_requests_total{api="Produce"}` grew by N, the WAL's bytes and fsync
histogram moved, a malformed request is counted in `chronik_request_errors_total`, an error code in a
response is counted in `chronik_api_errors_total{api,error}`, and the connection gauge
and WAL segment gauge are present.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request

from kafka import KafkaProducer

from harness import create_topic

N = 25


def scrape(broker) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def get(values: dict[str, float], name: str) -> float:
    return values.get(name, 0.0)


def test_counters_move_by_the_work_done(broker):
    create_topic(broker.bootstrap, "metered", 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    try:
        producer.send("metered", b"warm-up", partition=0).get(timeout=30)  # producer id, metadata: done now
        before = scrape(broker)
        for i in range(N):
            producer.send("metered", f"r{i}".encode(), partition=0).get(timeout=30)
        after = scrape(broker)
    finally:
        producer.close()
    produce = 'chronik_requests_total{api="Produce"}'
    assert get(after, produce) - get(before, produce) == N, (get(before, produce), get(after, produce))
    assert get(after, "chronik_wal_writes_total") - get(before, "chronik_wal_writes_total") == N
    assert get(after, "chronik_wal_bytes_written_total") > get(before, "chronik_wal_bytes_written_total")
    fsyncs = "chronik_wal_fsync_duration_seconds_count"
    assert get(after, fsyncs) - get(before, fsyncs) >= 1
    assert get(after, "chronik_connections") >= 1
    assert get(after, 'chronik_wal_segments_total{state="active"}') >= 2, "the topic's and the internal ones"
    hw = 'chronik_partition_high_watermark{topic="metered",partition="0"}'
    assert get(after, hw) == N + 1, "the warm-up record and N more"
    assert 'chronik_consumer_group_members' in after

    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall((0x7FFFFFFF).to_bytes(4, "big"))
        s.settimeout(10)
        assert s.recv(1) == b"", "the broker closes the connection"
    deadline = time.monotonic() + 30
    bad = 'chronik_request_errors_total{reason="bad_length"}'
    while get(scrape(broker), bad) < 1:
        assert time.monotonic() < deadline, "malformed request not counted"
        time.sleep(0.05)


def test_error_codes_in_responses_are_counted_per_api(broker):
    """A fetch past the end gets OFFSET_OUT_OF_RANGE: counted under the Fetch API and the error's name."""
    from confluent_kafka import Consumer, TopicPartition

    from harness import consumer_config

    create_topic(broker.bootstrap, "errs", 1)
    counted = 'chronik_api_errors_total{api="Fetch",error="OffsetOutOfRange"}'
    assert get(scrape(broker), counted) == 0
    consumer = Consumer(consumer_config(broker.bootstrap))
    try:
        consumer.assign([TopicPartition("errs", 0, 1000)])
        deadline = time.monotonic() + 30
        while True:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is not None:
                break  # auto.offset.reset=error surfaces the broker's answer
            assert time.monotonic() < deadline, "no out-of-range error"
    finally:
        consumer.close()
    assert get(scrape(broker), counted) >= 1


def test_health_and_ready_endpoints(broker):
    """/health answers at once; /ready answers 503 until recovery finished and 200 after (the Kafka port is
    bound before recovery, so a client may connect a moment before the broker is ready)."""
    base = f"http://127.0.0.1:{broker.metrics_port}"
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        assert (r.status, r.read()) == (200, b"ok\n")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/ready", timeout=10) as r:
                assert (r.status, r.read()) == (200, b"ready\n")
                break
        except urllib.error.HTTPError as e:
            assert e.code == 503, e.code
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.02)
    try:
        urllib.request.urlopen(base + "/nope", timeout=10)
        raise AssertionError("unknown path answered 200")
    except urllib.error.HTTPError as e:
        assert e.code == 404
