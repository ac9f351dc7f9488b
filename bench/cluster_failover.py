#!/usr/bin/env python3
"""Controller failover of a real three-broker cluster: time from kill -9 of the controller to the next
successful CreateTopics.

Starts three `chronik serve` processes (release build, loopback, fresh data directories under
`target/bench-tmp/`), then `--rounds` times (default 10):
1. finds the node that is the controller (the Raft leader: its `chronik_controller_active` metric is 1);
2. kills it with SIGKILL and starts the clock;
3. sends CreateTopics through a survivor (confluent-kafka AdminClient) until one succeeds; a failed attempt
   (no controller yet, a timeout) is retried at once. The clock stops at the success;
4. restarts the killed node and waits until it is ready (it has caught up with the metadata).

Prints each round and the median and max on stdout, progress on stderr. Every topic created must then be
listed by every node, and every node must exit 0 on SIGTERM at the end; otherwise the exit code is 1.

    python bench/cluster_failover.py [--rounds 10] [--binary target/release/chronik]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = REPO_ROOT / "target"
sys.path.insert(0, str(REPO_ROOT / "tests" / "python"))
import broker_process  # noqa: E402 - the tests' process wrapper, found through the path just added

VENV_CANDIDATES = (TARGET / "bench-venv" / "bin" / "python", TARGET / "venv" / "bin" / "python")
REEXEC_ENV = "CHRONIK_FAILOVER_REEXEC"
#: Bound on one round's wait for a successful CreateTopics.
ROUND_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(f"[cluster_failover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_client() -> None:
    """Re-runs under a venv with confluent_kafka if this interpreter has none."""
    try:
        import confluent_kafka  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get(REEXEC_ENV) != "1":
        for py in VENV_CANDIDATES:
            if py.is_file() and Path(sys.prefix).resolve() != py.parent.parent.resolve():
                os.environ[REEXEC_ENV] = "1"
                os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit("confluent_kafka is not importable; run ./test.sh once (it makes target/venv) or pip install it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--binary", type=Path, default=TARGET / "release" / "chronik")
    args = parser.parse_args()
    ensure_client()
    from confluent_kafka.admin import AdminClient, NewTopic

    if not args.binary.is_file():
        sys.exit(f"{args.binary} not found: cargo build --release")
    (TARGET / "bench-tmp").mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="failover-", dir=TARGET / "bench-tmp"))
    cluster = broker_process.Cluster(
        lambda workdir, extra: broker_process.Broker(args.binary, workdir, extra), root, 3
    )
    log(f"starting 3 nodes under {root}")
    cluster.start()
    failures = 0
    took: list[float] = []
    topics: list[str] = []
    try:
        for round_no in range(1, args.rounds + 1):
            victim = cluster.controller()
            if victim is None:
                log(f"round {round_no}: no node reports itself the controller; skipping the round")
                failures += 1
                continue
            controller = cluster.nodes.index(victim)
            survivor = next(n for n in cluster.nodes if n is not victim)
            admin = AdminClient({"bootstrap.servers": survivor.bootstrap})
            topic = f"failover-{round_no}"
            victim.kill9()
            start = time.monotonic()
            attempts = 0
            while True:
                attempts += 1
                try:
                    admin.create_topics([NewTopic(topic, num_partitions=1)], operation_timeout=30)[topic].result(60)
                    break
                except Exception as e:  # noqa: BLE001 - retriable while the election runs
                    # An attempt the client gave up on may have gone through: its retry finds the topic.
                    if "TOPIC_ALREADY_EXISTS" in str(e) and attempts > 1:
                        break
                    if time.monotonic() - start > ROUND_TIMEOUT_S:
                        log(f"round {round_no}: no CreateTopics succeeded in {ROUND_TIMEOUT_S}s: {e}")
                        failures += 1
                        break
            else:
                pass
            elapsed = time.monotonic() - start
            if elapsed <= ROUND_TIMEOUT_S:
                took.append(elapsed)
                topics.append(topic)
                print(f"round {round_no}: killed node {controller}; CreateTopics succeeded after {elapsed:.2f} s "
                      f"({attempts} attempts)", flush=True)
            victim.restart()
        for node in cluster.nodes:
            listed = AdminClient({"bootstrap.servers": node.bootstrap}).list_topics(timeout=10).topics
            missing = [t for t in topics if t not in listed]
            if missing:
                log(f"node at {node.bootstrap} does not list {missing}")
                failures += 1
    finally:
        for i, node in enumerate(cluster.nodes):
            if node.is_alive():
                code = node.stop(signal.SIGTERM)
                if code != 0:
                    log(f"node {i} exited with {code}")
                    failures += 1
    if took:
        print(f"controller kill -> next successful CreateTopics over {len(took)} kills: "
              f"median {statistics.median(took):.2f} s, max {max(took):.2f} s, min {min(took):.2f} s")
    if failures == 0:
        shutil.rmtree(root, ignore_errors=True)
    else:
        log(f"{failures} failures; logs kept under {root}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
