#!/usr/bin/env python3
"""What a partition costs a `chronik serve` broker: descriptors, memory, creation and start-up time.

One command starts its own broker (release build, fresh data directory under `target/bench-tmp/`) and:

1. creates `--partitions` partitions in topics of at most `--topic-partitions` each (CreateTopics through
   confluent-kafka's AdminClient), timing each CreateTopics request;
2. reads the broker's open descriptors (`/proc/PID/fd`) and resident memory (`VmRSS`) before and after, so
   the cost of an idle partition is (after - before) / partitions;
3. writes one record to every `--sample`th partition and reads it back (the partitions work);
4. stops the broker (SIGTERM: final sync and checkpoint), starts it again on the same directory and reports
   the start-up time the broker logs (`startup_ms`: recovery with the checkpoint) and the time until /ready,
   then descriptors and memory of the restarted, idle broker.

Nothing here is judged: it prints a table and writes JSON (`target/bench-results/partitions.json`) for the
README. The broker runs with the machine's file limit, which bounds only the segment files it keeps open
(`--max-open-segment-files`), not the partitions; a creation the broker refuses (`--max-partitions`) or that
fails is reported as the result.

    python bench/partitions_bench.py                        # 5,000 partitions
    python bench/partitions_bench.py --partitions 100000    # the issue's 100,000 (about 2.5 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = REPO_ROOT / "target"
DEFAULT_BIN = TARGET / "release" / "chronik"
DEFAULT_OUT = TARGET / "bench-results" / "partitions.json"
TMP_ROOT = TARGET / "bench-tmp"

sys.path.insert(0, str(REPO_ROOT / "tests" / "python"))
import broker_process  # noqa: E402 - the tests' process wrapper, found through the path just added

#: How long one CreateTopics may take (under librdkafka's largest socket timeout, 300 s).
CREATE_TIMEOUT_S = 290.0


def log(msg: str) -> None:
    print(f"[partitions_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def snapshot(broker: broker_process.Broker) -> dict:
    assert broker.proc is not None
    return {"descriptors": descriptors(broker.proc.pid), "rss_bytes": rss_bytes(broker.proc.pid)}


def startup_ms(broker: broker_process.Broker) -> int | None:
    """The `startup_ms` field of the last run's "chronik started" line."""
    for line in broker.stderr_files[-1].read_text(errors="replace").splitlines():
        if "chronik started" in line:
            try:
                return int(json.loads(line)["fields"]["startup_ms"])
            except (ValueError, KeyError):
                return None
    return None


def create_all(bootstrap: str, partitions: int, per_topic: int) -> list[dict]:
    """Creates the partitions in topics of `per_topic`; returns one row per CreateTopics."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 300000})
    rows = []
    left, n = partitions, 0
    while left > 0:
        count = min(per_topic, left)
        name = f"bench-p{n}"
        t0 = time.monotonic()
        error = None
        try:
            admin.create_topics([NewTopic(name, num_partitions=count, replication_factor=1)],
                                request_timeout=CREATE_TIMEOUT_S)[name].result(CREATE_TIMEOUT_S)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - a refused or failed creation is a result here
            error = str(e)
        rows.append({"topic": name, "partitions": count, "seconds": time.monotonic() - t0, "error": error})
        log(f"  {name}: {count} partitions in {rows[-1]['seconds']:.2f} s{' FAILED: ' + error if error else ''}")
        if error:
            break
        left -= count
        n += 1
    return rows


def sample_roundtrip(bootstrap: str, topics: list[dict], every: int) -> dict:
    """One record to every `every`th partition, then each read back."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    targets = [(t["topic"], p) for t in topics if not t["error"] for p in range(0, t["partitions"], every)]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for topic, p in targets:
        producer.produce(topic, value=f"{topic}/{p}".encode(), partition=p)
    undelivered = producer.flush(120)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "partitions-bench",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.assign([TopicPartition(t, p, 0) for t, p in targets])
    seen = set()
    deadline = time.monotonic() + 120
    while len(seen) < len(targets) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is None:
                seen.add((msg.topic(), msg.partition()))
    consumer.close()
    return {"partitions": len(targets), "undelivered": undelivered, "read_back": len(seen)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=5000)
    ap.add_argument("--topic-partitions", type=int, default=10000, help="most partitions per topic")
    ap.add_argument("--sample", type=int, default=10, help="round-trip one record through every Nth partition")
    ap.add_argument("--chronik-bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if not args.chronik_bin.is_file():
        sys.exit(f"{args.chronik_bin}: no such file (cargo build --release -p chronik-server)")
    workdir = TMP_ROOT / f"partitions-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    workdir.mkdir(parents=True)
    broker = broker_process.Broker(args.chronik_bin, workdir, ["--log-format", "json"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    report: dict = {"bench": "partitions", "partitions": args.partitions, "file_limit": [soft, hard],
                    "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}}  # fmt: skip
    try:
        broker.start()
        idle = snapshot(broker)
        log(f"broker up: {idle['descriptors']} descriptors, {idle['rss_bytes'] / 2**20:.1f} MiB")
        t0 = time.monotonic()
        topics = create_all(broker.bootstrap, args.partitions, args.topic_partitions)
        created = sum(t["partitions"] for t in topics if not t["error"])
        report["create"] = {"topics": topics, "partitions": created, "seconds": time.monotonic() - t0}
        loaded = snapshot(broker)
        per = max(created, 1)
        report["after_create"] = {
            **loaded,
            "descriptors_per_partition": (loaded["descriptors"] - idle["descriptors"]) / per,
            "rss_bytes_per_partition": (loaded["rss_bytes"] - idle["rss_bytes"]) / per,
        }
        report["roundtrip"] = sample_roundtrip(broker.bootstrap, topics, args.sample)
        code = broker.stop()
        report["stop_exit_code"] = code
        t1 = time.monotonic()
        broker.restart()
        report["restart"] = {"until_ready_s": time.monotonic() - t1, "startup_ms": startup_ms(broker), **snapshot(broker)}
        report["restart"]["rss_bytes_per_partition"] = (report["restart"]["rss_bytes"] - idle["rss_bytes"]) / per
        broker.stop()
    finally:
        if broker.is_alive():
            broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    c, a, r = report["create"], report["after_create"], report["restart"]
    print(f"partitions created: {c['partitions']:,} in {c['seconds']:.1f} s "
          f"(largest CreateTopics: {max((t['seconds'] for t in c['topics']), default=0):.2f} s)")  # fmt: skip
    print(f"descriptors per idle partition: {a['descriptors_per_partition']:.2f}; "
          f"memory per idle partition: {a['rss_bytes_per_partition'] / 1024:.1f} KiB after creation, "
          f"{r['rss_bytes_per_partition'] / 1024:.1f} KiB after a restart")  # fmt: skip
    print(f"restart: startup_ms {r['startup_ms']}, ready after {r['until_ready_s']:.2f} s; "
          f"{r['descriptors']:,} descriptors, {r['rss_bytes'] / 2**20:.1f} MiB")  # fmt: skip
    rt = report["roundtrip"]
    print(f"round trip: {rt['read_back']}/{rt['partitions']} partitions read back, {rt['undelivered']} undelivered")
    print(f"file limit (soft, hard): {soft}, {hard}; JSON in {args.out}")
    failed = any(t["error"] for t in c["topics"]) or rt["read_back"] != rt["partitions"] or rt["undelivered"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
