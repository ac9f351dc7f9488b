"""Durability of acknowledged records across a graceful restart (kill -9 under load: test_crash_loop.py).

What must hold: SIGTERM ends the broker with exit code 0; after a restart on the same data directory every
record acknowledged with acks=all is read back at exactly its acknowledged offset with the same value, and
new records continue at the old high watermark.
"""

from __future__ import annotations

import os
import random
import signal
import time

from harness import LoadProducer, create_topic, produce_acked, read_all

PARTITIONS = 2
#: kill -9 / restart cycles under one continuous load.
CRASH_CYCLES = 3


def test_graceful_restart_keeps_acked_records(broker):
    topic = "restart"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    values = [f"before-{i}".encode() for i in range(2_000)]
    acked = []
    for p in range(PARTITIONS):
        mine = values[p::PARTITIONS]
        acked += list(zip(produce_acked(broker.bootstrap, topic, mine, partition=p), mine, strict=True))
    assert len(acked) == len(values)

    assert broker.stop(signal.SIGTERM) == 0, "SIGTERM must end the broker with exit code 0"
    broker.restart()

    stored = read_all(broker.bootstrap, topic, PARTITIONS)
    assert len(stored) == len(values)
    for (p, off), v in acked:
        assert stored.get((p, off)) == v, f"acked record at {(p, off)}"

    highs_before = [sum(1 for (pp, _), _ in acked if pp == p) for p in range(PARTITIONS)]
    after = produce_acked(broker.bootstrap, topic, [b"after-0", b"after-1"], partition=1)
    assert after == [(1, highs_before[1]), (1, highs_before[1] + 1)], (
        "offsets continue at the old high watermark"
    )
