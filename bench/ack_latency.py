#!/usr/bin/env python3
"""Produce acknowledgement latency at a fixed rate, spread over N partitions: one librdkafka producer
(confluent-kafka, acks=all, linger.ms 5, librdkafka's defaults otherwise), no consumer.

For each broker configuration (`--config`, repeatable: extra `chronik serve` arguments, e.g.
`--config "" --config "--wal-journal true"`) and each partition count, a fresh broker (release build, data
under `target/bench-tmp/`) gets a topic, one warm-up record per partition, then `--rate` records/s
round-robin over the partitions for `--seconds`; the latency of each record is librdkafka's, from
produce() to its delivery report. It prints p50/p99/max and the broker's Produce requests per second
(librdkafka sends one partition per request, so spreading a producer over many partitions multiplies
its requests), and writes JSON (`target/bench-results/ack_latency.json`). Nothing here is judged.

    python bench/ack_latency.py --partitions 1,100,1000 --config "" --config "--wal-journal true"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = REPO_ROOT / "target"
sys.path.insert(0, str(REPO_ROOT / "tests" / "python"))
import broker_process  # noqa: E402 - the tests' process wrapper, found through the path just added


def log(msg: str) -> None:
    print(f"[ack_latency {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def produce_requests(broker) -> float:
    """The broker's Produce request count, from its metrics endpoint."""
    url = f"http://127.0.0.1:{broker.metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith('chronik_requests_total{api="Produce"}'):
            return float(line.split()[-1])
    return 0.0


def run(broker, partitions: int, rate: int, seconds: float, value_bytes: int) -> dict:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 120000})
    topic = f"ack-{partitions}"
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(120)
    latencies: list[float] = []
    failed = 0

    def on_delivery(err, msg):
        nonlocal failed
        if err is not None:
            failed += 1
        else:
            latencies.append(msg.latency())

    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": False, "on_delivery": on_delivery})  # fmt: skip
    for p in range(partitions):
        producer.produce(topic, b"warm-up", partition=p)
    assert producer.flush(60) == 0, "warm-up records not acknowledged"
    latencies.clear()
    requests_before = produce_requests(broker)
    value = b"x" * value_bytes
    total = int(rate * seconds)
    t0 = time.monotonic()
    for seq in range(total):
        due = t0 + seq / rate
        while time.monotonic() < due:
            producer.poll(0.0005)
        producer.produce(topic, value, partition=seq % partitions)
        producer.poll(0)
    sent_s = time.monotonic() - t0
    left = producer.flush(60)
    requests = produce_requests(broker) - requests_before
    latencies.sort()

    def q(f: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(f * len(latencies)))] if latencies else float("nan")

    return {"partitions": partitions, "rate": rate, "sent": total, "acked": len(latencies), "failed": failed,
            "undelivered": left, "send_seconds": sent_s, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "max_ms": q(1.0), "produce_requests_per_s": requests / sent_s}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", default="1,100,1000")
    ap.add_argument("--rate", type=int, default=20000, help="records/s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--config", action="append", help="extra `chronik serve` arguments (repeatable)")
    ap.add_argument("--chronik-bin", type=Path, default=TARGET / "release" / "chronik")
    ap.add_argument("--out", type=Path, default=TARGET / "bench-results" / "ack_latency.json")
    args = ap.parse_args(argv)
    if not args.chronik_bin.is_file():
        sys.exit(f"{args.chronik_bin}: no such file (cargo build --release -p chronik-server)")
    configs = args.config or [""]
    results = []
    for config in configs:
        for partitions in [int(p) for p in args.partitions.split(",")]:
            workdir = TARGET / "bench-tmp" / f"ack-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            workdir.mkdir(parents=True)
            broker = broker_process.Broker(args.chronik_bin, workdir, shlex.split(config))
            try:
                broker.start()
                log(f"{config or '(defaults)'}: {partitions} partitions, {args.rate}/s for {args.seconds:g} s")
                r = run(broker, partitions, args.rate, args.seconds, args.value_bytes)
                r["config"] = config
                results.append(r)
            finally:
                broker.stop()
                shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "ack_latency", "cpus": os.cpu_count(), "results": results}, indent=2))
    print(f"{'config':<24} {'parts':>6} {'acked':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'requests/s':>11}")
    for r in results:
        print(f"{r['config'] or '(defaults)':<24} {r['partitions']:>6} {r['acked']:>9} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['produce_requests_per_s']:>11,.0f}")  # fmt: skip
    bad = [r for r in results if r["failed"] or r["undelivered"] or r["acked"] != r["sent"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
