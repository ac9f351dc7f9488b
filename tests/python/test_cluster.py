"""Several `chronik serve` processes as one cluster: shared metadata on Raft, partitions divided among
the brokers, admin requests through any broker, liveness, routing, kill -9 and restart.

Every broker is a real process; clients are confluent-kafka (librdkafka) and kafka-python.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
import uuid

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition

import wire
from broker_process import Cluster
from harness import Broker, consume_exact, producer_config, wait_until

#: A fenced broker is noticed within this (the default is 6 s; tests need not wait that long).
SESSION_TIMEOUT_MS = 2000
#: Bounds every wait for the cluster to converge (an election, a fencing, a catch-up).
CONVERGE_S = 60.0


@pytest.fixture
def cluster_factory(request, tmp_path):
    """Starts clusters; at teardown every node still running is stopped with SIGTERM and must exit 0."""
    made: list[Cluster] = []
    request.node._chronik_brokers = []

    def start(n: int = 3, *extra_args: str, controller_ports=None) -> Cluster:
        c = Cluster(
            lambda workdir, args: Broker(workdir, args),
            tmp_path / f"cluster{len(made)}",
            n,
            ["--broker-session-timeout-ms", str(SESSION_TIMEOUT_MS), *extra_args],
            controller_ports=controller_ports,
        )
        made.append(c)
        request.node._chronik_brokers.extend(c.nodes)
        c.start()
        return c

    yield start

    problems = []
    for c in made:
        for i, node in enumerate(c.nodes):
            if node.proc is None or node.proc.poll() is not None:
                continue
            code = node.stop(signal.SIGTERM)
            if code != 0:
                problems.append(f"node {i} exited with code {code} after SIGTERM at teardown")
    assert not problems, "\n".join(problems)


def metadata(bootstrap: str, topic: str | None = None):
    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=10)


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> leader id (-1: none), as the broker at `bootstrap` reports it."""
    t = metadata(bootstrap, topic).topics[topic]
    return {p.id: p.leader for p in t.partitions.values()}


def create(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions)], operation_timeout=30)
    futures[name].result(timeout=60)


def produce(bootstrap: str, topic: str, per_partition: dict[int, int], tag: str) -> None:
    """Sends `per_partition[p]` records to each partition p, acks=all, and fails on any delivery error."""
    errors = []
    producer = Producer(producer_config(bootstrap))
    for p, n in per_partition.items():
        for i in range(n):
            producer.produce(
                topic,
                value=f"{tag}-{p}-{i}".encode(),
                partition=p,
                on_delivery=lambda err, _msg: err is not None and errors.append(err),
            )
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not errors, errors


def test_three_brokers_share_topics_and_divide_leadership(cluster_factory):
    c = cluster_factory(3)
    broker2 = c.nodes[2]
    topic = f"shared-{uuid.uuid4().hex[:6]}"
    create(broker2.bootstrap, topic, 6)
    # Every broker answers the same metadata: three live brokers, the topic, its leaders.
    seen = []
    for node in c.nodes:
        wait_until(lambda node=node: topic in metadata(node.bootstrap).topics, f"{topic} on {node.bootstrap}")
        md = metadata(node.bootstrap, topic)
        assert sorted(md.brokers) == [0, 1, 2], md.brokers
        # Any broker takes admin requests: the one answering names itself (librdkafka asks any broker).
        assert md.controller_id in md.brokers
        parts = md.topics[topic].partitions
        assert sorted(parts) == list(range(6))
        for p in parts.values():
            assert p.error is None, p.error
            assert p.replicas == [p.leader] and p.isrs == [p.leader], (p.replicas, p.isrs)
        seen.append({p.id: p.leader for p in parts.values()})
    assert seen[0] == seen[1] == seen[2], seen
    assert sorted(set(seen[0].values())) == [0, 1, 2], f"leaders spread over the brokers: {seen[0]}"
    # DescribeCluster: the same cluster id and brokers from each.
    admins = [AdminClient({"bootstrap.servers": n.bootstrap}) for n in c.nodes]
    described = [a.describe_cluster().result(30) for a in admins]
    assert len({d.cluster_id for d in described}) == 1 and described[0].cluster_id
    assert md.cluster_id == described[0].cluster_id
    for d in described:
        assert sorted(b.id for b in d.nodes) == [0, 1, 2]
        assert d.controller.id in (0, 1, 2)

    # confluent-kafka through one bootstrap broker: the client routes each partition to its leader.
    produce(c.nodes[0].bootstrap, topic, {p: 20 for p in range(6)}, "ck")
    records = consume_exact(c.nodes[1].bootstrap, [(topic, p, 0) for p in range(6)], 120)
    assert sorted(r.value for r in records) == sorted(f"ck-{p}-{i}".encode() for p in range(6) for i in range(20))
    for r in records:
        assert r.value.startswith(f"ck-{r.partition}-".encode())

    # kafka-python, bootstrapped through another broker.
    producer = KafkaProducer(bootstrap_servers=c.nodes[2].bootstrap, acks="all")
    for p in range(6):
        producer.send(topic, value=f"kp-{p}".encode(), partition=p).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=c.nodes[1].bootstrap, consumer_timeout_ms=20000)
    tps = [KpTopicPartition(topic, p) for p in range(6)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 20)
    got = sorted(m.value for m in consumer)
    consumer.close()
    assert got == sorted(f"kp-{p}".encode() for p in range(6))


def test_a_partition_asked_of_a_broker_that_does_not_lead_it_is_refused(cluster_factory):
    """Clients route by metadata, so none sends to the wrong broker on purpose: this one is sent by hand.
    A broker that does not lead the partition answers NOT_LEADER_OR_FOLLOWER (6), which real clients
    handle by refreshing their metadata, and stores nothing."""
    c = cluster_factory(3)
    topic = f"routed-{uuid.uuid4().hex[:6]}"
    create(c.nodes[0].bootstrap, topic, 3)
    p, leader = next(iter(leaders(c.nodes[0].bootstrap, topic).items()))
    other = next(n for i, n in enumerate(c.nodes) if i != leader)
    batch = wire.record_batch([b"misrouted"], int(time.time() * 1000))
    with socket.create_connection(("127.0.0.1", other.port), timeout=10) as sock:
        sock.sendall(wire.produce_v3(7, topic, p, batch))
        payload = wire.read_frame(sock, 10)
    assert payload is not None, "no response"
    correlation, results = wire.parse_produce_v3_response(payload)
    assert correlation == 7
    assert [(t, part, error) for t, part, error, _ in results] == [(topic, p, 6)], results
    consumer = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "watermarks"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) == (0, 0)
    finally:
        consumer.close()


def test_killing_the_controller_elects_another_and_admin_keeps_working(cluster_factory):
    c = cluster_factory(3)
    victim = c.controller()
    assert victim is not None, "no node reports itself the controller"
    victim.kill9()
    survivors = [n for n in c.nodes if n.is_alive()]
    topic = f"after-{uuid.uuid4().hex[:6]}"
    # Through a survivor: the request waits for (or is retried until) a new controller.
    deadline = time.monotonic() + CONVERGE_S
    while True:
        try:
            create(survivors[0].bootstrap, topic, 2)
            break
        except KafkaException as e:
            # An attempt the client gave up on may have gone through: its retry then finds the topic.
            if e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                break
            assert time.monotonic() < deadline, f"no CreateTopics succeeded within {CONVERGE_S}s: {e}"
        except Exception as e:  # noqa: BLE001 - a client-side timeout while the election runs
            assert time.monotonic() < deadline, f"no CreateTopics succeeded within {CONVERGE_S}s: {e}"
    wait_until(lambda: c.controller() is not None, "a new controller", CONVERGE_S)
    assert c.controller() in survivors
    # The killed node restarts and catches up: it serves the topic created while it was down.
    victim.restart()
    wait_until(lambda: topic in metadata(victim.bootstrap).topics, "restarted node sees the new topic", CONVERGE_S)
    t = metadata(victim.bootstrap, topic).topics[topic]
    assert len(t.partitions) == 2


def test_a_killed_broker_takes_its_partitions_offline_and_back_with_every_record(cluster_factory):
    c = cluster_factory(3)
    topic = f"fence-{uuid.uuid4().hex[:6]}"
    create(c.nodes[0].bootstrap, topic, 6)
    by_leader = leaders(c.nodes[0].bootstrap, topic)
    produce(c.bootstrap, topic, {p: 25 for p in range(6)}, "before")
    # Not the controller: this test is about the data broker (the controller's loss is above).
    controller = c.controller()
    victim_id = next(i for i in range(3) if c.nodes[i] is not controller)
    victim = c.nodes[victim_id]
    theirs = sorted(p for p, l in by_leader.items() if l == victim_id)
    ours = sorted(p for p, l in by_leader.items() if l != victim_id)
    assert theirs and ours, by_leader
    victim.kill9()
    survivor = next(n for n in c.nodes if n.is_alive())
    wait_until(
        lambda: all(leaders(survivor.bootstrap, topic)[p] == -1 for p in theirs),
        "the killed broker's partitions report no leader",
        CONVERGE_S,
    )
    md = metadata(survivor.bootstrap, topic)
    assert victim_id not in md.brokers, "a fenced broker is not listed"
    for p in theirs:
        assert md.topics[topic].partitions[p].error is not None
    # The others keep serving.
    alive = ",".join(n.bootstrap for n in c.nodes if n.is_alive())
    produce(alive, topic, {p: 5 for p in ours}, "during")
    # Restarted, it leads its partitions again with every acknowledged record.
    victim.restart()
    wait_until(
        lambda: leaders(survivor.bootstrap, topic) == by_leader,
        "the restarted broker leads its partitions again",
        CONVERGE_S,
    )
    records = consume_exact(c.bootstrap, [(topic, p, 0) for p in range(6)], 6 * 25 + 5 * len(ours))
    values = sorted(r.value for r in records)
    expected = [f"before-{p}-{i}".encode() for p in range(6) for i in range(25)]
    expected += [f"during-{p}-{i}".encode() for p in ours for i in range(5)]
    assert values == sorted(expected)


def test_a_paused_broker_is_fenced_and_leads_again_once_resumed(cluster_factory):
    """SIGSTOP for longer than the session timeout: the controller fences the broker (its partitions have
    no leader); SIGCONT: it heartbeats again, registers, and leads its partitions with their records.
    (That each change of leader bumps the epoch is checked on the state machine, seeded.)"""
    c = cluster_factory(3)
    topic = f"paused-{uuid.uuid4().hex[:6]}"
    create(c.nodes[0].bootstrap, topic, 3)
    before = leaders(c.nodes[0].bootstrap, topic)
    produce(c.bootstrap, topic, {p: 10 for p in range(3)}, "p")
    controller = c.controller()
    victim_id = next(i for i in range(3) if c.nodes[i] is not controller)
    theirs = [p for p, l in before.items() if l == victim_id]
    assert theirs, before
    observer = controller
    c.nodes[victim_id].pause()
    try:
        wait_until(
            lambda: all(leaders(observer.bootstrap, topic)[p] == -1 for p in theirs),
            "the paused broker's partitions lose their leader",
            CONVERGE_S,
        )
    finally:
        c.nodes[victim_id].resume()
    wait_until(lambda: leaders(observer.bootstrap, topic) == before, "leadership restored", CONVERGE_S)
    records = consume_exact(c.bootstrap, [(topic, p, 0) for p in range(3)], 30)
    assert sorted(r.value for r in records) == sorted(f"p-{p}-{i}".encode() for p in range(3) for i in range(10))


def test_consumer_group_survives_a_restart_of_its_coordinator(cluster_factory):
    c = cluster_factory(3)
    topic = f"group-{uuid.uuid4().hex[:6]}"
    create(c.nodes[1].bootstrap, topic, 3)
    produce(c.bootstrap, topic, {p: 10 for p in range(3)}, "g")
    group = f"g-{uuid.uuid4().hex[:6]}"

    def consume(n: int) -> list[bytes]:
        consumer = Consumer(
            {
                "bootstrap.servers": c.bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + CONVERGE_S
        while len(got) < n:
            assert time.monotonic() < deadline, f"consumed {len(got)} of {n}"
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            got.append(msg.value())
            consumer.commit(message=msg, asynchronous=False)
        consumer.close()
        return got

    first = consume(30)
    assert len(set(first)) == 30
    # The group's coordinator (the leader of its offsets partition) restarts (kill -9): its committed
    # offsets are durable, and it coordinates the group again.
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    described = admin.describe_consumer_groups([group])[group].result(30)
    coordinator = described.coordinator.id
    assert coordinator in (0, 1, 2), described.coordinator
    c.nodes[coordinator].kill9()
    c.nodes[coordinator].restart()
    produce(c.bootstrap, topic, {p: 2 for p in range(3)}, "g2")
    second = consume(6)
    assert sorted(second) == sorted(f"g2-{p}-{i}".encode() for p in range(3) for i in range(2))
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    assert sum(tp.offset for tp in committed.topic_partitions) == 36
    assert admin.describe_consumer_groups([group])[group].result(30).coordinator.id == coordinator


def test_misconfigured_nodes_refuse_to_start_and_change_nothing(tmp_path):
    voters = "0@127.0.0.1:1,1@127.0.0.1:2"
    cases = [
        (["--node-id", "5", "--controller-voters", voters], "node 5 is not among the controller voters"),
        # Node 1 listening on node 0's controller address: a second node given id 0's place, or a typo.
        (
            ["--node-id", "1", "--controller-voters", voters, "--controller-listen", "127.0.0.1:1"],
            "is another node running with --node-id 1?",
        ),
        (["--node-id", "0", "--controller-voters", "0@127.0.0.1:1,0@127.0.0.1:2"], "listed twice"),
    ]
    for i, (args, message) in enumerate(cases):
        workdir = tmp_path / f"case{i}"
        workdir.mkdir()
        b = Broker(workdir, args)
        with pytest.raises(AssertionError) as info:
            b.start()
        assert message in str(info.value), str(info.value)[-2000:]
        assert not (workdir / "data").exists(), "nothing written"


def listing(root) -> dict[str, int]:
    """Every file under `root` with its size."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_data_directory_of_another_cluster_is_refused_and_left_as_it_was(cluster_factory):
    """Cluster A and cluster B on the same controller addresses (the same voter list): a node of B started
    on a data directory of A must not join B (B's log would overwrite A's metadata, and reconciling would
    delete A's partitions). The voters tell each other their cluster ids and refuse."""
    a = cluster_factory(3)
    create(a.nodes[0].bootstrap, "of-a", 3)
    produce(a.bootstrap, "of-a", {p: 3 for p in range(3)}, "a")
    for node in a.nodes:
        assert node.stop(signal.SIGTERM) == 0
    b = cluster_factory(3, controller_ports=a.controller_ports)
    create(b.nodes[0].bootstrap, "of-b", 1)
    stray = b.nodes[2]
    assert stray.stop(signal.SIGTERM) == 0
    shutil.rmtree(stray.data_dir)
    shutil.copytree(a.nodes[2].data_dir, stray.data_dir)
    before = listing(stray.data_dir / "partitions")
    with pytest.raises(AssertionError) as info:
        stray.restart()
    assert "belongs to cluster" in str(info.value), str(info.value)[-3000:]
    assert listing(stray.data_dir / "partitions") == before, "the stray node's data is untouched"
    # B carries on without it.
    assert "of-b" in metadata(b.nodes[0].bootstrap).topics


def test_a_node_given_another_voter_list_than_its_data_refuses_to_start(cluster_factory):
    c = cluster_factory(3)
    node = c.nodes[2]
    node.stop(signal.SIGTERM)
    # The same node, told of a different quorum.
    ports = list(c.controller_ports)
    ports[0] = 1
    voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in enumerate(ports))
    node.extra_args[node.extra_args.index("--controller-voters") + 1] = voters
    with pytest.raises(AssertionError) as info:
        node.restart()
    assert "give every node the same --controller-voters" in str(info.value)


def test_kill9_rounds_under_load_lose_no_acknowledged_record(cluster_factory):
    """An idempotent acks=all producer writes to every partition while, round after round, a random node
    (controller or not) is killed with SIGKILL and restarted. Every acknowledged record is then read back
    at the offset it was acknowledged at, once. `CHRONIK_CLUSTER_KILL_ROUNDS` (2 here; test-long.sh runs
    more) sets the rounds, `CHRONIK_CLUSTER_KILL_SEED` the choice of victims."""
    import os
    import random
    import threading

    rounds = int(os.environ.get("CHRONIK_CLUSTER_KILL_ROUNDS", "2"))
    seed = int(os.environ.get("CHRONIK_CLUSTER_KILL_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    print(f"[cluster kill loop] {rounds} rounds, seed {seed}")
    c = cluster_factory(3)
    topic = f"loop-{uuid.uuid4().hex[:6]}"
    create(c.nodes[0].bootstrap, topic, 6)
    acked: dict[tuple[int, int], bytes] = {}
    failed = []
    lock = threading.Lock()
    stop = threading.Event()

    def on_delivery(err, msg):
        with lock:
            if err is not None:
                failed.append(err)
            else:
                acked[(msg.partition(), msg.offset())] = msg.value()

    def produce_loop():
        producer = Producer(producer_config(c.bootstrap, **{"message.timeout.ms": 120000}))
        i = 0
        while not stop.is_set():
            try:
                producer.produce(topic, value=f"v{i}".encode(), partition=i % 6, on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            producer.poll(0.005)
        assert producer.flush(150) == 0, "records unacknowledged at the end"

    thread = threading.Thread(target=produce_loop)
    thread.start()
    try:
        for round_no in range(rounds):
            victim = c.nodes[rng.randrange(3)]
            with lock:
                before = len(acked)
            wait_until(lambda: len(acked) > before + 50, f"round {round_no}: progress before the kill", CONVERGE_S)
            victim.kill9()
            with lock:
                at_kill = len(acked)
            # The other brokers' partitions keep taking records.
            wait_until(lambda: len(acked) > at_kill + 50, f"round {round_no}: progress without the victim", CONVERGE_S)
            victim.restart()
            served = {p for p, l in leaders(victim.bootstrap, topic).items() if l == c.nodes.index(victim)}
            with lock:
                high = {p: max((off for (pp, off) in acked if pp == p), default=-1) for p in served}

            def its_partitions_progress():
                with lock:
                    return all(any(pp == p and off > high[p] for (pp, off) in acked) for p in served)

            wait_until(its_partitions_progress, f"round {round_no}: the restarted node's partitions", CONVERGE_S)
    finally:
        stop.set()
        thread.join(200)
    assert not thread.is_alive()
    assert not failed, failed[:5]
    by_partition: dict[int, int] = {}
    for (p, off) in acked:
        by_partition[p] = max(by_partition.get(p, -1), off + 1)
    total = sum(by_partition.values())
    records = consume_exact(c.bootstrap, [(topic, p, 0) for p in range(6)], total, timeout_s=120)
    stored = {(r.partition, r.offset): r.value for r in records}
    for key, value in acked.items():
        assert stored.get(key) == value, f"acknowledged record {key} = {value!r} reads back as {stored.get(key)!r}"
    values = [r.value for r in records]
    assert len(values) == len(set(values)), "a record was stored twice"
