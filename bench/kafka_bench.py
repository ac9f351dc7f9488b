#!/usr/bin/env python3
"""Kafka-client benchmark of a `chronik serve` broker, with confluent-kafka (librdkafka).

One command starts its own broker (release build, fresh data directory under `target/bench-tmp/`, loopback
only) and measures, in the same run:

1. Produce throughput with acks=all, for every (record size x partition count) pair (default 1 KiB and
   100 B, 1 and 8 partitions): `--producers` Producer instances (default 4), each in its own process (the
   produce() loop is GIL-bound; librdkafka does its I/O in its own threads), linger.ms 5, default batching.
   Reports msgs/s, MB/s (10^6 bytes of record values per second) and the ack latency p50/p99: librdkafka's
   own `Message.latency()`, the time from produce() to the broker's acknowledgement being received, which
   leaves out how late our loop happens to serve the delivery callback.
2. End-to-end latency, produce -> consume: one producer at a fixed rate (default 2000 msg/s, 1 KiB records,
   round-robin over the partitions) while a consumer, assign()ed to every partition at the end offsets
   (fetch.wait.max.ms 100, fetch.min.bytes 1), reads them. Each record carries its send time
   (CLOCK_MONOTONIC, shared by all processes on the machine); latency is receipt minus that.
3. Committed offsets per second: `--committers` consumers (default 50), each of its own group, commit
   increasing offsets synchronously in a loop; every commit is an fdatasynced record in the offsets log, so
   this shows how well the broker shares fdatasyncs between groups.

Correctness is checked as it goes, and any failure makes the exit code non-zero:
- every delivery report succeeds (failures are counted and the first few errors shown);
- after each produce measurement, per partition: acknowledged records == log end offset, and the highest
  acknowledged offset == log end offset - 1 (catches lost or duplicated offsets);
- the consumer in (2) receives every acknowledged record exactly once;
- the broker stays up and exits 0 on SIGTERM at the end. Its stderr is kept in the run's temp dir, and its
  WARN/ERROR lines are counted and shown.

Every loop is bounded in count and time. Output: a table on stdout, JSON in `target/bench-results/kafka.json`,
progress on stderr.

    python bench/kafka_bench.py            # full run, ~5 s per measurement
    python bench/kafka_bench.py --quick    # smoke run, ~1 s per measurement

If confluent_kafka is not importable, the script re-runs itself with `target/bench-venv/bin/python` (or the
test venv `target/venv/bin/python`) when one exists, and otherwise prints how to create the venv.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import shutil
import struct
import subprocess
import sys
import time
import traceback
from array import array
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = REPO_ROOT / "target"
DEFAULT_BIN = TARGET / "release" / "chronik"
DEFAULT_OUT = TARGET / "bench-results" / "kafka.json"
TMP_ROOT = TARGET / "bench-tmp"
VENV_CANDIDATES = (TARGET / "bench-venv" / "bin" / "python", TARGET / "venv" / "bin" / "python")
CLIENT_PIN = "confluent-kafka==2.16.1"
REEXEC_ENV = "CHRONIK_BENCH_REEXECED"

sys.path.insert(0, str(REPO_ROOT / "tests" / "python"))
import broker_process  # noqa: E402 - the tests' process wrapper, found through the path just added

#: How long SIGTERM may take to end the broker.
BROKER_STOP_TIMEOUT_S = 30.0
#: How long a producer may take to drain its queue after the measured window (bounded by the local queue).
DRAIN_TIMEOUT_S = 60.0
#: How long the consumer waits, after the producer is done, for records still missing.
CONSUMER_GRACE_S = 20.0
#: Deadline for a worker process to come up, connect and report ready.
WORKER_READY_TIMEOUT_S = 60.0
#: Local queue of each throughput producer. librdkafka's default (100 000 messages, 1 GiB) would let a
#: producer run far ahead of the broker and then spend a long, unmeasured time draining. 20 000 queued
#: records are still many full batches per partition, so batching (batch.size, linger.ms) is unaffected.
PRODUCER_QUEUE_MESSAGES = 20_000
#: Hard cap on records one throughput producer sends, whatever the time window.
MAX_RECORDS_PER_PRODUCER = 20_000_000
#: Ack latencies kept per producer (4 bytes each); beyond this, latencies are no longer sampled.
MAX_LATENCY_SAMPLES = 4_000_000
#: Size of the header each end-to-end record starts with: sequence number and send time (ns), big-endian.
E2E_HEADER = struct.Struct(">qq")
#: WARN/ERROR lines of the broker log quoted in the report.
MAX_LOG_LINES_QUOTED = 20
#: Processes the committing consumers of the commit measurement are spread over (threads in each).
COMMITTER_PROCESSES = 5


def log(msg: str) -> None:
    print(f"[kafka_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_client() -> None:
    """Makes confluent_kafka importable, re-running under a venv that has it, or exits with instructions."""
    try:
        import confluent_kafka  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get(REEXEC_ENV) != "1":
        for py in VENV_CANDIDATES:
            # A venv's python is often a symlink to this very interpreter: compare prefixes, not binaries.
            if py.is_file() and Path(sys.prefix).resolve() != py.parent.parent.resolve():
                check = subprocess.run([str(py), "-c", "import confluent_kafka"], capture_output=True)
                if check.returncode == 0:
                    log(f"confluent_kafka not importable here; re-running with {py}")
                    os.environ[REEXEC_ENV] = "1"
                    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    venv = TARGET / "bench-venv"
    print(
        "confluent_kafka is not importable. Create the benchmark venv once:\n"
        f"  python3 -m venv {venv}\n"
        f"  {venv}/bin/pip install {CLIENT_PIN}\n"
        f"then run:  {venv}/bin/python bench/kafka_bench.py  (or plain `python bench/kafka_bench.py`,\n"
        "which finds that venv by itself)",
        file=sys.stderr,
    )
    sys.exit(2)


# -- statistics --------------------------------------------------------------------------------------------


def percentile(sorted_values, q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    return float(sorted_values[rank - 1])


def latency_summary_ms(samples) -> dict:
    s = sorted(samples)
    return {
        "samples": len(s),
        "p50_ms": percentile(s, 0.50),
        "p99_ms": percentile(s, 0.99),
        "p999_ms": percentile(s, 0.999),
        "max_ms": float(s[-1]) if s else None,
    }


# -- the broker --------------------------------------------------------------------------------------------


def find_or_build_binary(path: Path | None) -> Path:
    if path is not None:
        if not path.is_file():
            sys.exit(f"--chronik-bin {path}: no such file")
        return path
    if not DEFAULT_BIN.is_file():
        log(f"{DEFAULT_BIN} missing; running `cargo build --release -p chronik-server`")
        subprocess.run(["cargo", "build", "--release", "-p", "chronik-server"], cwd=REPO_ROOT, check=True)
    return DEFAULT_BIN


class Broker(broker_process.Broker):
    """The broker under test: the tests' process wrapper (tests/python/broker_process.py), logging JSON,
    with what the report needs."""

    def __init__(self, binary: Path, workdir: Path):
        super().__init__(binary, workdir, ["--log-format", "json"])
        #: Broker misbehaviour seen while running it, for the report.
        self.issues: list[str] = []

    @property
    def log_path(self) -> Path:
        files = self.stderr_files
        return files[-1] if files else self.workdir / "chronik-stderr-1.log"

    @property
    def started_line(self) -> dict:
        """The JSON start line ("chronik started": versions, backend, recovery)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "chronik started" in line:
                try:
                    return json.loads(line)
                except ValueError:
                    return {"raw": line}
        return {}

    def alive(self) -> bool:
        return self.is_alive()

    def metrics(self) -> dict[str, float]:
        """The broker's Prometheus samples (name with labels -> value); empty if the endpoint does not
        answer."""
        try:
            body = self.metrics_text(timeout_s=5)
        except OSError:
            return {}
        out = {}
        for line in body.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it had to be killed."""
        if self.proc is None:
            return None
        try:
            return super().stop(timeout_s=BROKER_STOP_TIMEOUT_S)
        except AssertionError:
            return None

    def log_findings(self) -> dict:
        """Counts of WARN and ERROR lines in the broker's log, and the first few of them."""
        counts = {"WARN": 0, "ERROR": 0}
        quoted: list[str] = []
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            level = None
            try:
                obj = json.loads(line)
                level = str(obj.get("level", "")).upper()
            except ValueError:
                for lv in counts:
                    if f" {lv} " in line:
                        level = lv
            if level in counts:
                counts[level] += 1
                if len(quoted) < MAX_LOG_LINES_QUOTED:
                    quoted.append(line[:500])
        return {"warn_lines": counts["WARN"], "error_lines": counts["ERROR"], "first_lines": quoted,
                "total_lines": len(lines)}  # fmt: skip


WAL_WRITES = "chronik_wal_writes_total"
WAL_BYTES = "chronik_wal_bytes_written_total"
WAL_FSYNCS = "chronik_wal_fsync_duration_seconds_count"
WAL_FSYNC_SUM = "chronik_wal_fsync_duration_seconds_sum"


def wal_delta(before: dict, after: dict, seconds: float) -> dict:
    """What the WAL did in between two metric scrapes: group writes, batches, fsyncs."""
    if not before or not after:
        return {}

    def d(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    fsyncs = d(WAL_FSYNCS)
    return {
        "batches_written": int(d(WAL_WRITES)),
        "bytes_written": int(d(WAL_BYTES)),
        "fsyncs": int(fsyncs),
        "fsyncs_per_s": fsyncs / seconds if seconds > 0 else None,
        "batches_per_fsync": d(WAL_WRITES) / fsyncs if fsyncs > 0 else None,
        "fsync_mean_ms": 1000 * d(WAL_FSYNC_SUM) / fsyncs if fsyncs > 0 else None,
    }


# -- clients ----------------------------------------------------------------------------------------------


def base_client_config(bootstrap: str) -> dict:
    return {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, "broker.address.family": "v4"}


def producer_config(bootstrap: str, linger_ms: float, client_id: str) -> dict:
    return {
        **base_client_config(bootstrap),
        "client.id": client_id,
        "acks": "all",
        "linger.ms": linger_ms,
        # librdkafka's default; written out so the JSON says what was measured.
        "enable.idempotence": False,
        "message.timeout.ms": 30000,
    }


def create_topic(bootstrap: str, name: str, partitions: int, timeout_s: float = 30.0) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    # Creating 10,000 partitions durably takes about 10 s here: past librdkafka's socket timeout in
    # base_client_config.
    admin = AdminClient({**base_client_config(bootstrap), "socket.timeout.ms": int(timeout_s * 1000)})
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                              operation_timeout=timeout_s)[name]  # fmt: skip
    fut.result(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            if all(p.leader >= 0 for p in t.partitions.values()):
                return
        time.sleep(0.1)
    raise RuntimeError(f"topic {name} did not show {partitions} partitions with leaders")


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """Log end offset (high watermark) of each partition, asked of the broker (ListOffsets)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**base_client_config(bootstrap), "group.id": "chronik-bench-offsets",
                  "enable.auto.commit": False})  # fmt: skip
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in range(partitions)]  # fmt: skip
    finally:
        c.close()


def cpu_self_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def throughput_producer(idx, bootstrap, topic, partitions, value_bytes, seconds, linger_ms,
                        ready, go, start_at, progress, results):  # fmt: skip
    """One producer process: produce as fast as the local queue allows until the window closes, then flush."""
    from confluent_kafka import KafkaException, Producer

    acked = 0
    failed = 0
    errors: list[str] = []
    lat = array("f")
    part_count = [0] * partitions
    part_max = [-1] * partitions

    def on_delivery(err, msg):
        nonlocal acked, failed
        if err is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(str(err))
            return
        acked += 1
        if len(lat) < MAX_LATENCY_SAMPLES:
            lat.append(msg.latency())
        p, o = msg.partition(), msg.offset()
        part_count[p] += 1
        if o > part_max[p]:
            part_max[p] = o
        if acked & 1023 == 0:
            progress[idx] = acked

    fatal = None
    try:
        conf = producer_config(bootstrap, linger_ms, f"bench-tput-{idx}")
        conf["queue.buffering.max.messages"] = PRODUCER_QUEUE_MESSAGES
        conf["on_delivery"] = on_delivery
        producer = Producer(conf)
        # One acknowledged record before the clock starts, so metadata and the connection exist. It stays
        # in the per-partition counts (checked against the log) but not in the measured ones.
        producer.produce(topic, b"warm-up")
        if producer.flush(30) != 0 or failed:
            raise KafkaException(f"warm-up record not acknowledged: {errors}")
        acked = 0
        lat = array("f")
    except KafkaException as e:
        fatal = f"producer setup failed: {e}"
    value = bytes(i & 0xFF for i in range(value_bytes))
    ready.wait(WORKER_READY_TIMEOUT_S)  # also on failure, so the others are not held up
    if fatal is not None:
        results.put({"idx": idx, "fatal": fatal})
        return
    if not go.wait(WORKER_READY_TIMEOUT_S):
        results.put({"idx": idx, "fatal": "no start signal"})
        return
    while time.monotonic() < start_at.value:
        time.sleep(0.0005)
    cpu0 = cpu_self_s()
    t0 = time.monotonic()
    deadline = t0 + seconds
    sent = 0
    full_waits = 0
    produce = producer.produce
    while sent < MAX_RECORDS_PER_PRODUCER:
        if (sent & 255) == 0 and time.monotonic() >= deadline:
            break
        try:
            produce(topic, value)
        except BufferError:
            full_waits += 1
            producer.poll(0.002)
            if time.monotonic() >= deadline:
                break
            continue
        sent += 1
        if (sent & 127) == 0:
            producer.poll(0)
    t_sent = time.monotonic()
    left = producer.flush(DRAIN_TIMEOUT_S)
    t_end = time.monotonic()
    progress[idx] = acked
    results.put({
        "idx": idx, "sent": sent, "acked": acked, "failed": failed, "undelivered": left, "errors": errors,
        "t0": t0, "t_sent": t_sent, "t_end": t_end, "queue_full_waits": full_waits,
        "latency_s": lat, "part_count": part_count, "part_max": part_max, "cpu_s": cpu_self_s() - cpu0,
    })  # fmt: skip


def commit_worker(idx, bootstrap, topic, threads, seconds, ready, go, start_at, results):
    """One process of committing consumers: `threads` threads, each a Consumer of its own group committing
    increasing offsets synchronously (commit(asynchronous=False)) until the window closes."""
    import threading

    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumers = []
    fatal = None
    try:
        for t in range(threads):
            c = Consumer({**base_client_config(bootstrap), "group.id": f"bench-commit-{idx}-{t}",
                          "enable.auto.commit": False})  # fmt: skip
            # One commit before the clock starts: finds the coordinator and opens its connection.
            c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
            consumers.append(c)
    except KafkaException as e:
        fatal = f"committer setup failed: {e}"
    ready.wait(WORKER_READY_TIMEOUT_S)
    if fatal is not None or not go.wait(WORKER_READY_TIMEOUT_S):
        results.put({"idx": idx, "fatal": fatal or "no start signal"})
        return
    while time.monotonic() < start_at.value:
        time.sleep(0.0005)
    deadline = start_at.value + seconds
    outs = [None] * threads

    def run(t: int) -> None:
        c = consumers[t]
        done, errors, lat, last = 0, [], array("f"), 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                r = c.commit(offsets=[TopicPartition(topic, 0, done + 1)], asynchronous=False)
            except KafkaException as e:
                errors.append(str(e))
                break
            lat.append(time.monotonic() - t0)
            if any(tp.error is not None for tp in r):
                errors.append(str([tp.error for tp in r]))
                break
            done += 1
            last = done
        kept = c.committed([TopicPartition(topic, 0)], timeout=30)[0].offset
        outs[t] = {"commits": done, "errors": errors[:3], "latency_s": lat, "last": last, "kept": kept}

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    t_end = time.monotonic()
    for c in consumers:
        c.close()
    results.put({"idx": idx, "threads": outs, "t_end": t_end})


def e2e_producer(bootstrap, topic, partitions, value_bytes, rate, seconds, linger_ms,
                 consumer_ready, go, expected, results):  # fmt: skip
    """Sends `rate` records/s for `seconds`, round-robin over the partitions, each stamped with its send time."""
    from confluent_kafka import KafkaException, Producer

    acked = 0
    failed = 0
    errors: list[str] = []
    lat = array("f")

    def on_delivery(err, msg):
        nonlocal acked, failed
        if err is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(str(err))
        else:
            acked += 1
            lat.append(msg.latency())

    try:
        conf = producer_config(bootstrap, linger_ms, "bench-e2e-producer")
        conf["on_delivery"] = on_delivery
        producer = Producer(conf)
        # Warm-up: one record per partition, so connections exist before the clock starts. The consumer
        # starts at the end offsets taken after this, so it never sees these.
        for p in range(partitions):
            producer.produce(topic, b"warm-up", partition=p)
        if producer.flush(30) != 0 or failed:
            raise KafkaException(f"warm-up records not acknowledged: {errors}")
    except KafkaException as e:
        results.put({"role": "producer", "fatal": f"producer setup failed: {e}"})
        expected.value = 0
        return
    acked = 0
    lat = array("f")
    go.set()  # lets the parent start the consumer, which takes its end offsets now
    if not consumer_ready.wait(WORKER_READY_TIMEOUT_S):
        results.put({"role": "producer", "fatal": "consumer never became ready"})
        expected.value = 0
        return
    total = int(rate * seconds)
    pad = bytes(max(0, value_bytes - E2E_HEADER.size))
    interval = 1.0 / rate
    max_behind_s = 0.0
    t0 = time.monotonic()
    for seq in range(total):
        due = t0 + seq * interval
        now = time.monotonic()
        # Bounded wait until this record is due; poll() serves delivery reports while it waits.
        while now < due:
            producer.poll(min(due - now, 0.001))
            now = time.monotonic()
        max_behind_s = max(max_behind_s, now - due)
        value = E2E_HEADER.pack(seq, time.monotonic_ns()) + pad
        while True:
            try:
                producer.produce(topic, value, partition=seq % partitions)
                break
            except BufferError:  # cannot persist: the queue holds 100 000 records, 50 s at the default rate
                producer.poll(0.001)
                if time.monotonic() > t0 + seconds + DRAIN_TIMEOUT_S:
                    raise
        producer.poll(0)
    t_sent = time.monotonic()
    left = producer.flush(DRAIN_TIMEOUT_S)
    expected.value = total
    results.put({
        "role": "producer", "sent": total, "acked": acked, "failed": failed, "undelivered": left,
        "errors": errors, "seconds": t_sent - t0, "max_behind_schedule_ms": 1000 * max_behind_s,
        "latency_s": lat,
    })  # fmt: skip


def e2e_consumer(bootstrap, topic, partitions, seconds, fetch_wait_max_ms, consumer_ready, expected,
                 results):  # fmt: skip
    """assign()s every partition at its end offset and reads until every sent record has arrived."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    try:
        c = Consumer({
            **base_client_config(bootstrap),
            "group.id": "chronik-bench-e2e",  # required by the client; no group API is used
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": fetch_wait_max_ms,
            "fetch.min.bytes": 1,
        })  # fmt: skip
        starts = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                  for p in range(partitions)]  # fmt: skip
        c.assign([TopicPartition(topic, p, starts[p]) for p in range(partitions)])
        c.consume(num_messages=1, timeout=0.5)  # let the fetchers start; nothing is produced yet
    except KafkaException as e:
        results.put({"role": "consumer", "fatal": f"consumer setup failed: {e}"})
        return
    seen = bytearray()
    received = 0
    duplicates = 0
    foreign = 0
    errors: list[str] = []
    lat = array("f")
    consumer_ready.set()
    hard_deadline = time.monotonic() + seconds + DRAIN_TIMEOUT_S + CONSUMER_GRACE_S
    done_deadline = None
    while time.monotonic() < hard_deadline:
        want = expected.value
        if want >= 0:
            if received >= want:
                break
            if done_deadline is None:
                done_deadline = time.monotonic() + CONSUMER_GRACE_S
            elif time.monotonic() > done_deadline:
                break
        # poll() returns as soon as one record is there; consume(n, timeout) would hold the records it
        # has until n arrived or the timeout passed, adding that wait to the measured latency.
        first = c.poll(0.05)
        if first is None:
            continue
        for msg in [first, *c.consume(num_messages=1000, timeout=0)]:
            now_ns = time.monotonic_ns()
            if msg.error() is not None:
                if len(errors) < 5:
                    errors.append(str(msg.error()))
                continue
            v = msg.value()
            if v is None or len(v) < E2E_HEADER.size:
                foreign += 1
                continue
            seq, sent_ns = E2E_HEADER.unpack_from(v)
            if seq < 0 or seq > 100_000_000:
                foreign += 1
                continue
            if seq >= len(seen):
                seen.extend(bytes(seq + 1 - len(seen)))
            if seen[seq]:
                duplicates += 1
                continue
            seen[seq] = 1
            received += 1
            lat.append((now_ns - sent_ns) / 1e9)
    want = expected.value
    missing = [s for s in range(max(want, 0)) if s >= len(seen) or not seen[s]]
    c.close()
    results.put({
        "role": "consumer", "received": received, "duplicates": duplicates, "foreign": foreign,
        "missing": len(missing), "first_missing": missing[:10], "errors": errors, "latency_s": lat,
        "start_offsets": starts,
    })  # fmt: skip


# -- measurements -----------------------------------------------------------------------------------------


def collect(results: mp.Queue, n: int, procs: list, what: str, progress=None, timeout_s: float = 600):
    """Gets `n` results, printing progress every second; fails if a worker dies without reporting."""
    out = []
    deadline = time.monotonic() + timeout_s
    last_print = time.monotonic()
    while len(out) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: workers did not report within {timeout_s}s")
        try:
            out.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{what}: worker exited with code {dead[0].exitcode} without reporting")
        if progress is not None and time.monotonic() - last_print >= 1.0:
            last_print = time.monotonic()
            log(f"  {what}: {sum(progress):,} acked so far")
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
            p.join(5)
    return out


def start_workers(ctx, target, name: str, n: int, args_for):
    """Starts `n` processes of `target`, each with `args_for(i, ready, go, start_at, results)`, and returns
    once all are ready: (processes, go, start_at, results). Set `start_at`, then `go`, to start them at one
    moment."""
    ready = ctx.Barrier(n + 1)
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0, lock=False)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=target, name=f"{name}-{i}", daemon=True, args=args_for(i, ready, go, start_at, results))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    ready.wait(WORKER_READY_TIMEOUT_S)
    return procs, go, start_at, results


def run_throughput(ctx, broker: Broker, value_bytes: int, partitions: int, args, failures: list) -> dict:
    name = f"{value_bytes} B x {partitions} partition{'s' if partitions > 1 else ''}"
    topic = f"bench-tput-{value_bytes}b-{partitions}p"
    log(f"produce {name}: {args.producers} producers, linger.ms {args.linger_ms}, {args.seconds:g} s")
    create_topic(broker.bootstrap, topic, partitions)
    n = args.producers
    progress = ctx.Array("q", n, lock=False)
    procs, go, start_at, results = start_workers(
        ctx, throughput_producer, "producer", n,
        lambda i, ready, go, start_at, results: (i, broker.bootstrap, topic, partitions, value_bytes, args.seconds,
                                                 args.linger_ms, ready, go, start_at, progress, results))  # fmt: skip
    m0 = broker.metrics()
    cpu0 = broker.cpu_seconds()
    start_at.value = time.monotonic() + 0.1
    go.set()
    outs = collect(results, n, procs, name, progress, timeout_s=args.seconds + DRAIN_TIMEOUT_S + 120)
    cpu1 = broker.cpu_seconds()
    m1 = broker.metrics()
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        failures.append(f"produce {name}: {fatal[0]}")
        return {"name": name, "fatal": fatal}
    t_start = start_at.value
    elapsed = max(o["t_end"] for o in outs) - t_start
    acked = sum(o["acked"] for o in outs)
    failed = sum(o["failed"] + o["undelivered"] for o in outs)
    lat = []
    for o in outs:
        lat.extend(o["latency_s"])
    lat_ms = [x * 1000 for x in lat]
    errors = [e for o in outs for e in o["errors"]][:5]
    if failed:
        failures.append(f"produce {name}: {failed} deliveries failed or undelivered, first errors: {errors}")

    # The log must hold exactly the acknowledged records: per partition, count == end offset == max + 1.
    ends = end_offsets(broker.bootstrap, topic, partitions)
    counts = [sum(o["part_count"][p] for o in outs) for p in range(partitions)]
    maxes = [max(o["part_max"][p] for o in outs) for p in range(partitions)]
    consistent = all(counts[p] == ends[p] and maxes[p] + 1 == ends[p] for p in range(partitions))
    if not consistent:
        failures.append(f"produce {name}: acks and log end offsets disagree: acked per partition {counts}, "
                        f"highest acked offset {maxes}, end offsets {ends}")  # fmt: skip
    result = {
        "name": name,
        "topic": topic,
        "value_bytes": value_bytes,
        "partitions": partitions,
        "producers": n,
        "linger_ms": args.linger_ms,
        "window_s": args.seconds,
        "elapsed_s": elapsed,
        "sent": sum(o["sent"] for o in outs),
        "acked": acked,
        "failed": failed,
        "errors": errors,
        "msgs_per_s": acked / elapsed,
        "mb_per_s": acked * value_bytes / elapsed / 1e6,
        "ack_latency": latency_summary_ms(lat_ms),
        "drain_s": max(o["t_end"] - o["t_sent"] for o in outs),
        "queue_full_waits": sum(o["queue_full_waits"] for o in outs),
        "offsets_consistent": consistent,
        "acked_per_partition": counts,
        "end_offsets": ends,
        "broker_cpu_s": cpu1 - cpu0,
        "producers_cpu_s": sum(o["cpu_s"] for o in outs),
        "wal": wal_delta(m0, m1, elapsed),
    }
    al = result["ack_latency"]
    log(f"  {name}: {result['msgs_per_s']:,.0f} msg/s, {result['mb_per_s']:.1f} MB/s, ack p50 "
        f"{fmt_ms(al['p50_ms'])} p99 {fmt_ms(al['p99_ms'])} ms, failed {failed}, offsets "
        f"{'ok' if consistent else 'MISMATCH'}")  # fmt: skip
    return result


def run_e2e(ctx, broker: Broker, partitions: int, args, failures: list) -> dict:
    name = f"{args.e2e_rate} msg/s x {args.e2e_bytes} B, {partitions} partition{'s' if partitions > 1 else ''}"
    topic = f"bench-e2e-{partitions}p"
    log(f"end-to-end {name}: fetch.wait.max.ms {args.fetch_wait_max_ms}, {args.seconds:g} s")
    create_topic(broker.bootstrap, topic, partitions)
    consumer_ready = ctx.Event()
    producer_warm = ctx.Event()
    expected = ctx.Value("q", -1, lock=False)
    results = ctx.Queue()
    prod = ctx.Process(target=e2e_producer, name="e2e-producer", daemon=True,
                       args=(broker.bootstrap, topic, partitions, args.e2e_bytes, args.e2e_rate, args.seconds,
                             args.linger_ms, consumer_ready, producer_warm, expected, results))  # fmt: skip
    prod.start()
    if not producer_warm.wait(WORKER_READY_TIMEOUT_S):
        failures.append(f"end-to-end {name}: producer did not warm up")
    cons = ctx.Process(target=e2e_consumer, name="e2e-consumer", daemon=True,
                       args=(broker.bootstrap, topic, partitions, args.seconds, args.fetch_wait_max_ms,
                             consumer_ready, expected, results))  # fmt: skip
    cpu0 = broker.cpu_seconds()
    m0 = broker.metrics()
    cons.start()
    outs = collect(results, 2, [prod, cons], name,
                   timeout_s=args.seconds + DRAIN_TIMEOUT_S + CONSUMER_GRACE_S + 120)  # fmt: skip
    m1 = broker.metrics()
    cpu1 = broker.cpu_seconds()
    by = {o["role"]: o for o in outs}
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        failures.append(f"end-to-end {name}: {fatal}")
        return {"name": name, "fatal": fatal}
    p, c = by["producer"], by["consumer"]
    failed = p["failed"] + p["undelivered"]
    if failed:
        failures.append(f"end-to-end {name}: {failed} deliveries failed, first errors: {p['errors']}")
    problems = []
    if c["missing"]:
        problems.append(f"{c['missing']} records never consumed (first seqs {c['first_missing']})")
    if c["duplicates"]:
        problems.append(f"{c['duplicates']} records consumed twice")
    if c["foreign"]:
        problems.append(f"{c['foreign']} unexpected records consumed")
    if c["errors"]:
        problems.append(f"consumer errors: {c['errors']}")
    for prob in problems:
        failures.append(f"end-to-end {name}: {prob}")
    e2e_ms = [x * 1000 for x in c["latency_s"]]
    result = {
        "name": name,
        "topic": topic,
        "partitions": partitions,
        "rate_msgs_per_s": args.e2e_rate,
        "value_bytes": args.e2e_bytes,
        "linger_ms": args.linger_ms,
        "fetch_wait_max_ms": args.fetch_wait_max_ms,
        "fetch_min_bytes": 1,
        "send_s": p["seconds"],
        "achieved_rate_msgs_per_s": p["sent"] / p["seconds"] if p["seconds"] > 0 else None,
        "max_behind_schedule_ms": p["max_behind_schedule_ms"],
        "sent": p["sent"],
        "acked": p["acked"],
        "failed": failed,
        "received": c["received"],
        "missing": c["missing"],
        "duplicates": c["duplicates"],
        "consumer_errors": c["errors"],
        "e2e_latency": latency_summary_ms(e2e_ms),
        "ack_latency": latency_summary_ms([x * 1000 for x in p["latency_s"]]),
        "broker_cpu_s": cpu1 - cpu0,
        "wal": wal_delta(m0, m1, p["seconds"]),
    }
    el = result["e2e_latency"]
    log(f"  {name}: e2e p50 {fmt_ms(el['p50_ms'])} p99 {fmt_ms(el['p99_ms'])} ms, received "
        f"{c['received']}/{p['sent']}")  # fmt: skip
    return result


def run_commits(ctx, broker: Broker, args, failures: list) -> dict:
    """Committed offsets per second with `--committers` consumers, each of its own group, committing
    synchronously in a loop: every commit is an fdatasynced record in the offsets log, so this measures how
    well the broker shares fdatasyncs between groups."""
    n = args.committers
    name = f"{n} consumers committing synchronously"
    topic = "bench-commits"
    log(f"commits: {name}, {args.seconds:g} s")
    create_topic(broker.bootstrap, topic, 1)
    procs_n = min(n, COMMITTER_PROCESSES)
    per = [n // procs_n + (1 if i < n % procs_n else 0) for i in range(procs_n)]
    procs, go, start_at, results = start_workers(
        ctx, commit_worker, "committers", procs_n,
        lambda i, ready, go, start_at, results: (i, broker.bootstrap, topic, per[i], args.seconds, ready, go,
                                                 start_at, results))  # fmt: skip
    m0 = broker.metrics()
    start_at.value = time.monotonic() + 0.1
    go.set()
    outs = collect(results, procs_n, procs, name, timeout_s=args.seconds + 120)
    m1 = broker.metrics()
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        failures.append(f"commits: {fatal[0]}")
        return {"name": name, "fatal": fatal}
    threads = [t for o in outs for t in o["threads"]]
    elapsed = max(o["t_end"] for o in outs) - start_at.value
    commits = sum(t["commits"] for t in threads)
    errors = [e for t in threads for e in t["errors"]][:5]
    if errors:
        failures.append(f"commits: failed commits, first errors: {errors}")
    backwards = [(t["last"], t["kept"]) for t in threads if t["kept"] != t["last"]]
    if backwards:
        failures.append(f"commits: committed() differs from the last acknowledged commit: {backwards[:5]}")
    lat_ms = [x * 1000 for t in threads for x in t["latency_s"]]
    result = {
        "name": name,
        "committers": n,
        "window_s": args.seconds,
        "elapsed_s": elapsed,
        "commits": commits,
        "commits_per_s": commits / elapsed,
        "commit_latency": latency_summary_ms(lat_ms),
        "wal": wal_delta(m0, m1, elapsed),
    }
    cl = result["commit_latency"]
    log(f"  {name}: {result['commits_per_s']:,.0f} commits/s, p50 {fmt_ms(cl['p50_ms'])} "
        f"p99 {fmt_ms(cl['p99_ms'])} ms")  # fmt: skip
    return result


# -- report -----------------------------------------------------------------------------------------------


def fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def print_table(report: dict) -> None:
    print()
    m = report["machine"]
    print(f"Chronik Kafka benchmark ({'quick' if report['quick'] else 'full'}; {report['seconds']:g} s per "
          f"measurement; {m['cpus']} CPUs, load average {m['loadavg_at_start'][0]:.2f} before; "
          f"librdkafka {report['client']['librdkafka']})")  # fmt: skip
    print()
    print(f"Produce, acks=all, {report['producers']} producer processes, linger.ms {report['linger_ms']:g}")
    head = (f"{'record':>7} {'parts':>5} {'msgs/s':>10} {'MB/s':>7} {'ack p50 ms':>10} {'ack p99 ms':>10} "
            f"{'failed':>6} {'offsets':>7} {'fsyncs/s':>8} {'batch/fsync':>11} {'broker CPU':>10} "
            f"{'client CPU':>10}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in report["produce"]:
        if "fatal" in r:
            print(f"{r['name']}: FAILED {r['fatal']}")
            continue
        w = r["wal"]
        cpu = r["broker_cpu_s"] / r["elapsed_s"] * 100
        client_cpu = r["producers_cpu_s"] / r["elapsed_s"] * 100
        print(f"{r['value_bytes']:>5} B {r['partitions']:>5} {r['msgs_per_s']:>10,.0f} {r['mb_per_s']:>7.2f} "
              f"{fmt_ms(r['ack_latency']['p50_ms']):>10} {fmt_ms(r['ack_latency']['p99_ms']):>10} "
              f"{r['failed']:>6} {'ok' if r['offsets_consistent'] else 'BAD':>7} "
              f"{w.get('fsyncs_per_s') or 0:>8,.0f} {w.get('batches_per_fsync') or 0:>11.1f} {cpu:>9.0f}% "
              f"{client_cpu:>9.0f}%")  # fmt: skip
    print("  msgs/s and MB/s (10^6 B of values) count acked records over the window plus the final flush.")
    print(f"  Closed loop: each producer keeps up to {PRODUCER_QUEUE_MESSAGES:,} records queued, so at saturation "
          "the ack latency")  # fmt: skip
    print("  (librdkafka's produce() -> ack received) is mostly time in that queue. CPU: % of one core, over the "
          "window;")  # fmt: skip
    print("  client CPU sums the producer processes. batch/fsync: producer batches per WAL fdatasync (metrics).")
    print()
    print("End-to-end, produce -> consume (1 producer at a fixed rate, 1 consumer assign()ed at the end)")
    head = (f"{'rate':>9} {'record':>7} {'parts':>5} {'e2e p50 ms':>10} {'e2e p99 ms':>10} {'e2e max ms':>10} "
            f"{'ack p50 ms':>10} {'ack p99 ms':>10} {'received':>15} {'failed':>6}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in report["e2e"]:
        if "fatal" in r:
            print(f"{r['name']}: FAILED {r['fatal']}")
            continue
        el, al = r["e2e_latency"], r["ack_latency"]
        print(f"{r['rate_msgs_per_s']:>5} /s {r['value_bytes']:>5} B {r['partitions']:>5} "
              f"{fmt_ms(el['p50_ms']):>10} {fmt_ms(el['p99_ms']):>10} {fmt_ms(el['max_ms']):>10} "
              f"{fmt_ms(al['p50_ms']):>10} {fmt_ms(al['p99_ms']):>10} "
              f"{str(r['received']) + '/' + str(r['sent']):>15} {r['failed']:>6}")  # fmt: skip
    for r in report["commits"]:
        print()
        if "fatal" in r:
            print(f"{r['name']}: FAILED {r['fatal']}")
            continue
        cl, w = r["commit_latency"], r["wal"]
        print(f"Commits: {r['name']}: {r['commits_per_s']:,.0f} commits/s, latency p50 "
              f"{fmt_ms(cl['p50_ms'])} p99 {fmt_ms(cl['p99_ms'])} ms, {w.get('fsyncs_per_s') or 0:,.0f} "
              f"fdatasyncs/s")  # fmt: skip
    print()
    b = report["broker"]
    logf = b.get("log", {})
    print(f"Broker: exit code {b.get('exit_code')} after SIGTERM; log {b.get('log_path')}: "
          f"{logf.get('warn_lines', '?')} WARN, {logf.get('error_lines', '?')} ERROR lines")  # fmt: skip
    for line in logf.get("first_lines", [])[:10]:
        print(f"  {line}")
    for issue in b.get("issues", []):
        print(f"  ISSUE: {issue}")
    if report["failures"]:
        print(f"FAILED ({len(report['failures'])}):")
        for f in report["failures"]:
            print(f"  - {f}")
    else:
        print("All checks passed: every delivery acknowledged, log end offsets match the acks, every record consumed.")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--seconds", type=float, default=None, help="length of each measurement (default 5, --quick 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s per measurement")
    ap.add_argument("--chronik-bin", type=Path, default=None, help=f"broker binary (default {DEFAULT_BIN}, built if missing)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--producers", type=int, default=4, help="producer processes in the throughput runs")
    ap.add_argument("--linger-ms", type=float, default=5.0)
    ap.add_argument("--sizes", default="1024,100", help="record value sizes in bytes, comma-separated")
    ap.add_argument("--partitions", default="1,8", help="partition counts, comma-separated")
    ap.add_argument("--e2e-rate", type=int, default=2000, help="records/s sent in the end-to-end runs")
    ap.add_argument("--e2e-bytes", type=int, default=1024)
    ap.add_argument("--e2e-partitions", default="1,8", help="partition counts for the end-to-end runs")
    ap.add_argument("--fetch-wait-max-ms", type=int, default=100)
    ap.add_argument("--committers", type=int, default=50,
                    help="consumers (each its own group) in the commit measurement; 0 skips it")  # fmt: skip
    ap.add_argument("--only", choices=["produce", "e2e", "commits"], default=None, help="run one measurement kind")
    ap.add_argument("--keep-data", action="store_true", help="keep the broker's data directory afterwards")
    args = ap.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 5.0
    if not (0 < args.seconds <= 600):
        ap.error("--seconds must be in (0, 600]")
    if not (0 <= args.committers <= 500):
        ap.error("--committers must be in [0, 500]")
    if not (1 <= args.producers <= 64):
        ap.error("--producers must be in [1, 64]")
    if not (1 <= args.e2e_rate <= 100_000) or args.e2e_bytes < E2E_HEADER.size:
        ap.error(f"--e2e-rate must be in [1, 100000] and --e2e-bytes >= {E2E_HEADER.size}")
    args.size_list = [int(s) for s in args.sizes.split(",") if s]
    args.partition_list = [int(s) for s in args.partitions.split(",") if s]
    args.e2e_partition_list = [int(s) for s in args.e2e_partitions.split(",") if s]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_client()
    import confluent_kafka

    binary = find_or_build_binary(args.chronik_bin)
    workdir = TMP_ROOT / f"kafka-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    workdir.mkdir(parents=True)
    broker = Broker(binary, workdir)
    failures: list[str] = []
    report = {
        "bench": "kafka",
        "quick": args.quick,
        "seconds": args.seconds,
        "producers": args.producers,
        "linger_ms": args.linger_ms,
        "client": {"confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0]},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    # Other work on the machine skews every number here; the load average shows whether there was.
                    "loadavg_at_start": os.getloadavg()},
        "broker": {"bin": str(binary), "workdir": str(workdir), "log_path": str(broker.log_path)},
        "produce": [],
        "e2e": [],
        "commits": [],
        "failures": failures,
    }
    # spawn, not fork: the parent holds librdkafka handles (admin client) whose threads a fork would not copy.
    ctx = mp.get_context("spawn")
    t_run = time.monotonic()
    try:
        broker.start()
        log(f"broker {binary} listening on {broker.bootstrap}, data in {broker.data_dir}, log {broker.log_path}")
        report["broker"]["started"] = broker.started_line
        def wanted(kind: str) -> bool:
            return args.only in (None, kind)

        for size in args.size_list if wanted("produce") else []:
            for parts in args.partition_list:
                report["produce"].append(run_throughput(ctx, broker, size, parts, args, failures))
                if not broker.alive():
                    raise RuntimeError(f"broker died (exit code {broker.proc.returncode})")
        for parts in args.e2e_partition_list if wanted("e2e") else []:
            report["e2e"].append(run_e2e(ctx, broker, parts, args, failures))
            if not broker.alive():
                raise RuntimeError(f"broker died (exit code {broker.proc.returncode})")
        if args.committers > 0 and wanted("commits"):
            report["commits"].append(run_commits(ctx, broker, args, failures))
            if not broker.alive():
                raise RuntimeError(f"broker died (exit code {broker.proc.returncode})")
    except Exception as e:  # noqa: BLE001 - anything that ends the run is reported, then the broker stopped
        failures.append(f"aborted: {type(e).__name__}: {e}")
        log(f"aborted: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        if broker.proc is not None and broker.alive():
            du = sum(f.stat().st_size for f in broker.data_dir.rglob("*") if f.is_file())
            report["broker"]["data_bytes"] = du
        code = broker.stop()
        report["broker"]["exit_code"] = code
        if broker.proc is not None and code != 0:
            failures.append(f"broker exit code after SIGTERM: {code} (None = had to be killed)")
        report["broker"]["log"] = broker.log_findings()
        report["broker"]["issues"] = broker.issues
        if not args.keep_data and broker.data_dir.exists():
            shutil.rmtree(broker.data_dir, ignore_errors=True)
    report["total_s"] = time.monotonic() - t_run
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["ok"] = not failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    log(f"results in {args.out}; broker log kept in {broker.log_path}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
