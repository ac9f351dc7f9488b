"""Fetch long-polling: a fetch waiting on an empty partition is woken by the append, not by its timeout.

What must hold: a consumer caught up on a partition, fetching with fetch.wait.max.ms=5000, receives a record
produced with acks=all well within a second of the producer's delivery report (median and worst case of 20
trials), so the waiting fetch was answered by the append. The measured figures are printed. A fetch parked
for a long time does not hold up shutdown: SIGTERM ends the broker with code 0 within a few seconds while a
consumer waits with fetch.wait.max.ms=60000. On the wire (raw Fetch v4): an empty fetch is held for its
max_wait_ms, not answered at once; a held fetch is answered soon after an append; a fetch whose min_bytes is
not reached by one small append is held until max_wait_ms, and then returns that record.
"""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

import wire
from harness import consumer_config, create_topic, produce_acked, producer_config

FETCH_WAIT_MAX_MS = 5000
TRIALS = 20
#: Well below FETCH_WAIT_MAX_MS; a broker that answers waiting fetches only at their timeout misses it.
MAX_WAKE_LATENCY_S = 1.0


def test_waiting_fetch_is_woken_by_append(broker, capsys):
    topic = "longpoll"
    create_topic(broker.bootstrap, topic, 1)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)

    consumer = Consumer(
        consumer_config(
            broker.bootstrap,
            **{"fetch.wait.max.ms": FETCH_WAIT_MAX_MS, "fetch.min.bytes": 1, "fetch.error.backoff.ms": 0},
        )
    )
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 0}))
    acked_at: dict[int, float] = {}
    received_at: dict[int, float] = {}
    errors: list[str] = []
    go = threading.Event()
    done = threading.Event()

    def produce_trials():
        try:
            for i in range(TRIALS):
                if not go.wait(timeout=30):
                    errors.append(f"trial {i}: consumer not ready")
                    return
                go.clear()
                # Random phase relative to the consumer's outstanding fetch.
                time.sleep(rng.uniform(0.15, 0.4))

                def cb(err, msg, i=i):
                    if err is not None:
                        errors.append(f"trial {i}: {err}")
                    else:
                        acked_at[i] = time.monotonic()

                producer.produce(topic, value=str(i).encode(), partition=0, on_delivery=cb)
                if producer.flush(10) != 0:
                    errors.append(f"trial {i}: not delivered within 10 s")
                    return
        finally:
            done.set()

    consumer.assign([TopicPartition(topic, 0, 0)])
    # Let the consumer connect and start its first (empty, waiting) fetch.
    assert consumer.poll(1.0) is None
    thread = threading.Thread(target=produce_trials, daemon=True)
    thread.start()
    try:
        go.set()
        deadline = time.monotonic() + 60
        expected = 0
        while expected < TRIALS and time.monotonic() < deadline and not errors:
            msg = consumer.poll(0.05)
            if msg is None:
                if done.is_set():
                    break
                continue
            now = time.monotonic()
            assert msg.error() is None, f"consumer error: {msg.error()}"
            assert (msg.offset(), msg.value()) == (expected, str(expected).encode())
            received_at[expected] = now
            expected += 1
            go.set()
        thread.join(timeout=15)
    finally:
        consumer.close()

    assert not errors, errors
    assert sorted(received_at) == list(range(TRIALS)), f"received {len(received_at)} of {TRIALS} records"
    assert sorted(acked_at) == list(range(TRIALS))
    # The consumer may see the record before the producer's callback runs: negative latency is fine.
    latencies_ms = [(received_at[i] - acked_at[i]) * 1000 for i in range(TRIALS)]
    median_ms = statistics.median(latencies_ms)
    worst_ms = max(latencies_ms)
    with capsys.disabled():
        print(
            f"\n[long-poll] delivery report -> consumer receipt, fetch.wait.max.ms={FETCH_WAIT_MAX_MS}: "
            f"median {median_ms:.1f} ms, max {worst_ms:.1f} ms over {TRIALS} trials (seed {seed})"
        )
    assert median_ms < MAX_WAKE_LATENCY_S * 1000, latencies_ms
    assert worst_ms < MAX_WAKE_LATENCY_S * 1000, latencies_ms


def test_sigterm_does_not_wait_for_parked_fetches(broker):
    topic = "parked"
    create_topic(broker.bootstrap, topic, 1)
    consumer = Consumer(
        consumer_config(broker.bootstrap, **{"fetch.wait.max.ms": 60_000, "socket.timeout.ms": 90_000})
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        # Long enough for the consumer to connect and park a fetch on the empty partition.
        assert consumer.poll(1.5) is None
        started = time.monotonic()
        code = broker.stop(timeout_s=15)
        took_s = time.monotonic() - started
    finally:
        consumer.close()
    assert code == 0
    assert took_s < 5.0, f"SIGTERM took {took_s:.1f} s with a fetch parked for up to 60 s"


def timed_fetch(broker, topic: str, offset: int, max_wait_ms: int, min_bytes: int, during=None):
    """Sends one raw Fetch v4 at `offset`, runs `during()` (if any) while it is outstanding, and returns
    (seconds until the response, error code, high watermark, record bytes)."""
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(wire.fetch_v4(7, topic, 0, offset, max_wait_ms, min_bytes))
        if during is not None:
            during()
        payload = wire.read_frame(s, timeout_s=max_wait_ms / 1000 + 10)
        took_s = time.monotonic() - started
    assert payload is not None, "the broker closed the connection instead of answering the fetch"
    corr, [(name, partition, error, high, records_len)] = wire.parse_fetch_v4_response(payload)
    assert (corr, name, partition) == (7, topic, 0)
    return took_s, error, high, records_len


def produce_after(broker, topic: str, delay_s: float, acked_at: list[float]):
    def run():
        time.sleep(delay_s)
        produce_acked(broker.bootstrap, topic, [b"wake"], partition=0)
        acked_at.append(time.monotonic())

    return run


def test_raw_empty_fetch_is_held_for_max_wait(broker):
    topic = "rawfetch"
    create_topic(broker.bootstrap, topic, 1)
    took_s, error, high, records_len = timed_fetch(broker, topic, 0, max_wait_ms=1000, min_bytes=1)
    assert (error, high, records_len) == (0, 0, 0)
    assert 0.9 <= took_s < 3.0, f"an empty fetch with max_wait_ms=1000 was answered after {took_s:.3f} s"


def test_raw_held_fetch_is_answered_by_append(broker):
    topic = "rawfetch"
    create_topic(broker.bootstrap, topic, 1)
    acked_at: list[float] = []
    started = time.monotonic()
    took_s, error, high, records_len = timed_fetch(
        broker, topic, 0, max_wait_ms=10_000, min_bytes=1, during=produce_after(broker, topic, 0.3, acked_at)
    )
    assert (error, high) == (0, 1) and records_len > 0
    assert took_s < 3.0, f"the held fetch was answered {took_s:.3f} s after it was sent (append at ~0.3 s)"
    print(f"raw fetch answered {(started + took_s - acked_at[0]) * 1000:.1f} ms after the acknowledgement")


def test_raw_fetch_is_held_until_min_bytes_or_max_wait(broker):
    """At the end of the log, with min_bytes far above one small record: Kafka holds the fetch until
    max_wait_ms, then returns the record that arrived meanwhile."""
    topic = "rawfetch"
    create_topic(broker.bootstrap, topic, 1)
    acked_at: list[float] = []
    took_s, error, high, records_len = timed_fetch(
        broker,
        topic,
        0,
        max_wait_ms=1500,
        min_bytes=1 << 20,
        during=produce_after(broker, topic, 0.2, acked_at),
    )
    assert (error, high) == (0, 1), f"answered after {took_s:.3f} s with error {error}, high watermark {high}"
    assert records_len > 0
    assert 1.3 <= took_s < 4.0, f"a fetch with unmet min_bytes was answered after {took_s:.3f} s, not ~1.5 s"
