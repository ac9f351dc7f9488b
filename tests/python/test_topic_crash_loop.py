"""kill -9 while large topics are being created and deleted: the registry and the disk agree afterwards.

Rounds: `CHRONIK_TOPIC_CRASH_ROUNDS` (default 3 here; `./test-long.sh` runs 20). Seed: `CHRONIK_TEST_SEED`
replays the random timings.

Each round asks for one topic of `PARTITIONS` partitions to be created and the oldest existing one to be
deleted, kills the broker with SIGKILL at a random moment while that work is under way, and restarts it.
What must hold after every restart:
- every topic Metadata lists has exactly its partitions on disk (`<data_dir>/partitions/<topic>-<p>`),
  and every partition directory on disk belongs to a listed topic or to the broker's own internal ones:
  a topic exists whole or not at all, and a deletion a crash interrupted is completed;
- no leftovers of an interrupted creation or deletion (`*.creating`, `*.deleting`);
- every listed topic takes a record at its last partition and gives it back.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 1500
ROUNDS = int(os.environ.get("CHRONIK_TOPIC_CRASH_ROUNDS", "3"))
#: Creating 1,500 partitions takes a few seconds in a debug build; a round is about 10 s.
TIMEOUT_S = 120 + 40 * ROUNDS
INTERNAL_PREFIX = "__chronik"


def on_disk(data_dir) -> tuple[dict[str, set[int]], list[str]]:
    """Partition numbers per topic found under `partitions/`, and leftover directories."""
    topics: dict[str, set[int]] = {}
    leftovers = []
    for entry in (data_dir / "partitions").iterdir():
        name = entry.name
        if name.endswith(".creating") or name.endswith(".deleting"):
            leftovers.append(name)
            continue
        topic, _, partition = name.rpartition("-")
        topics.setdefault(topic, set()).add(int(partition))
    return topics, leftovers


def listed(admin: AdminClient) -> dict[str, int]:
    md = admin.list_topics(timeout=30)
    assert all(t.error is None for t in md.topics.values()), {n: t.error for n, t in md.topics.items() if t.error}
    return {name: len(t.partitions) for name, t in md.topics.items()}


def assert_registry_and_disk_agree(broker, round_: int) -> dict[str, int]:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topics = listed(admin)
    disk, leftovers = on_disk(broker.data_dir)
    client_disk = {t: ps for t, ps in disk.items() if not t.startswith(INTERNAL_PREFIX)}
    assert not leftovers, f"round {round_}: leftovers of an interrupted creation or deletion: {leftovers}"
    assert set(client_disk) == set(topics), (
        f"round {round_}: topics listed {sorted(topics)} but on disk {sorted(client_disk)}"
    )
    for name, count in topics.items():
        assert client_disk[name] == set(range(count)), (
            f"round {round_}: {name} is listed with {count} partitions, the disk holds {len(client_disk[name])}"
        )
    return topics


def assert_usable(bootstrap: str, topics: dict[str, int], round_: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 30000})
    for name, count in topics.items():
        producer.produce(name, value=f"round {round_}".encode(), partition=count - 1)
    assert producer.flush(60) == 0, f"round {round_}: records not acknowledged"
    for name, count in topics.items():
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"check-{round_}", "enable.auto.commit": False}
        )
        try:
            consumer.assign([TopicPartition(name, count - 1, 0)])
            deadline = time.monotonic() + 30
            values = []
            while f"round {round_}".encode() not in values and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    values.append(msg.value())
            assert f"round {round_}".encode() in values, f"round {round_}: {name} did not give the record back"
        finally:
            consumer.close()


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("journal", [False, True], ids=["segment-fdatasync", "shared-journal"])
def test_kill9_during_topic_creation_and_deletion_leaves_registry_and_disk_in_agreement(broker_factory, journal):
    # With the shared journal, a deleted topic's records may still be in it when the next round creates
    # topics, and a restart replays it.
    broker = broker_factory("--wal-journal", "true") if journal else broker_factory()
    seed = int(os.environ.get("CHRONIK_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (replay with CHRONIK_TEST_SEED={seed}), rounds {ROUNDS}")
    rng = random.Random(seed)
    # One creation without a kill: how long the work takes here, so that kills land before, during and
    # after it. Its topic is what the first round deletes.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 60000})
    t0 = time.monotonic()
    admin.create_topics([NewTopic("big-first", num_partitions=PARTITIONS, replication_factor=1)])[
        "big-first"
    ].result(60)
    took = time.monotonic() - t0
    print(f"creating {PARTITIONS} partitions took {took:.2f} s")
    previous = "big-first"
    outcomes = {"created": 0, "absent": 0}
    for round_ in range(ROUNDS):
        name = f"big-{round_}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 60000})

        def admin_work(admin=admin, name=name, previous=previous):
            # Errors are expected: the broker dies under these requests.
            futures = admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
            if previous is not None:
                futures.update(admin.delete_topics([previous]))
            for f in futures.values():
                try:
                    f.result(60)
                except Exception:  # noqa: BLE001 - a request cut by the kill
                    pass

        worker = threading.Thread(target=admin_work, daemon=True)
        worker.start()
        # Somewhere inside the creation and the deletion (or just before or after them).
        time.sleep(rng.uniform(0.0, 1.5 * took))
        broker.kill9()
        worker.join(90)
        broker.restart()
        topics = assert_registry_and_disk_agree(broker, round_)
        outcomes["created" if name in topics else "absent"] += 1
        assert_usable(broker.bootstrap, topics, round_)
        # The next round deletes the oldest topic there is.
        previous = min(topics, default=None)
    print(f"rounds {ROUNDS}: the killed creation survived whole in {outcomes['created']}, "
          f"left nothing in {outcomes['absent']}")  # fmt: skip
