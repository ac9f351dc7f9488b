"""Connection limits and hostile clients.

What must hold:
- A connection with nothing in flight closes after `--connections-max-idle-ms`; one that keeps sending
  requests stays open.
- A client that pipelines many Fetch requests and never reads a response cannot make the broker buffer them:
  the broker reads only a bounded number ahead, its memory stays flat while the client has sent far more
  than it could hold, other clients are served meanwhile, and the stalled connection is closed once no
  response byte could be written for `--response-write-timeout-ms`.
- Beyond `--max-connections`, new connections are closed on accept; the existing ones keep working.
- With the global request-memory budget equal to the largest request, concurrent large produce requests
  all succeed (they wait for the budget, they do not fail or deadlock).
- Fetch record data is held under a budget: clients that pipeline large Fetch requests and never read hold
  at most `--fetch-max-bytes` each, and at most `--queued-max-response-bytes` together (the broker's memory
  stays under a bound derived from them, where without the bounds it would grow by every response); other
  clients are served meanwhile, and fetch again once the stalled connections are gone. A consumer waiting
  for that memory is served once the stalled connections are closed for their write timeout, long before
  the idle limit.
- A client that sends a request's length and never its body holds the request budget only for
  `--request-body-timeout-ms`: its connection is then closed, and a client waiting for that budget is served.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import wire
from harness import assert_roundtrip, consume_exact, create_topic, metric, produce_acked

IDLE_MS = 1000
MiB = 1 << 20
#: Requests a connection has started but not answered (MAX_IN_FLIGHT in server.rs).
MAX_IN_FLIGHT = 128


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")




def connect(broker) -> socket.socket:
    return socket.create_connection(("127.0.0.1", broker.port), timeout=10)


def api_versions(correlation_id: int) -> bytes:
    return wire.frame(wire.header_v1(wire.API_VERSIONS, 0, correlation_id))


def test_idle_connections_close_and_busy_ones_stay(broker_factory):
    broker = broker_factory("--connections-max-idle-ms", str(IDLE_MS))
    idle = connect(broker)
    busy = connect(broker)
    started = time.monotonic()
    # The busy connection sends a request every IDLE_MS/4 for three idle periods and is answered each time.
    n = 0
    while time.monotonic() - started < 3 * IDLE_MS / 1000:
        n += 1
        busy.sendall(api_versions(n))
        payload = wire.read_frame(busy, 10)
        assert payload is not None, f"busy connection closed after {n} requests"
        assert int.from_bytes(payload[:4], "big") == n
        time.sleep(IDLE_MS / 4000)
    assert wire.wait_closed(idle, 10), "idle connection was not closed"
    closed_after = time.monotonic() - started
    assert closed_after >= IDLE_MS / 1000 * 0.9, f"closed after {closed_after:.2f}s, before the idle limit"
    busy.close()
    idle.close()


def test_a_client_that_never_reads_cannot_make_the_broker_buffer(broker_factory):
    broker = broker_factory("--response-write-timeout-ms", "3000")
    create_topic(broker.bootstrap, "big", 1)
    produce_acked(broker.bootstrap, "big", [b"x" * 100_000] * 60, partition=0)  # ~6 MB
    rss_before = rss_bytes(broker.proc.pid)

    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", broker.port))
    stalled.setblocking(False)
    # Each fetch asks for up to 1 MiB from offset 0: 2,000 of them would be ~2 GB of responses.
    request = wire.fetch_v4(1, "big", 0, 0, max_wait_ms=0, min_bytes=1)
    sent_requests = 0
    deadline = time.monotonic() + 20
    while sent_requests < 2000 and time.monotonic() < deadline:
        try:
            stalled.send(request)
            sent_requests += 1
        except BlockingIOError:
            # The broker stopped reading: its read-ahead is full. That is the point.
            break
    # Other clients are served while the stalled connection is open.
    assert_roundtrip(broker.bootstrap, "other")
    rss_during = rss_bytes(broker.proc.pid)
    assert rss_during - rss_before < 100 * 1024 * 1024, (
        f"broker grew by {(rss_during - rss_before) >> 20} MiB while a client sent {sent_requests} fetches "
        "and read nothing"
    )
    # It is closed once nothing could be written for the write timeout (seen in the metric: reading the
    # socket here would unblock the broker's writes).
    deadline = time.monotonic() + 30
    while metric(broker, 'chronik_request_errors_total{reason="write_timeout"}') < 1:
        assert time.monotonic() < deadline, "the stalled connection was not closed for its write timeout"
        time.sleep(0.1)
    stalled.setblocking(True)
    assert wire.wait_closed(stalled, 30), "stalled connection still open"
    stalled.close()
    assert_roundtrip(broker.bootstrap, "after")


def test_connections_beyond_the_limit_are_closed(broker_factory):
    broker = broker_factory("--max-connections", "2")
    # The harness's readiness probe is a connection too: wait until the broker has accepted it and seen it
    # close.
    deadline = time.monotonic() + 10
    while metric(broker, "chronik_connections_total") < 1 or metric(broker, "chronik_connections") != 0:
        assert time.monotonic() < deadline, "readiness probe connection still counted"
        time.sleep(0.02)
    first, second = connect(broker), connect(broker)
    for n, s in enumerate((first, second)):
        s.sendall(api_versions(n))
        assert wire.read_frame(s, 10) is not None
    third = connect(broker)
    assert wire.wait_closed(third, 10), "the third connection was not closed"
    second.sendall(api_versions(2))
    assert wire.read_frame(second, 10) is not None, "an existing connection stopped working"
    assert metric(broker, 'chronik_request_errors_total{reason="too_many_connections"}') >= 1
    for s in (first, second, third):
        s.close()


def test_requests_wait_for_the_memory_budget_instead_of_failing(broker_factory):
    limit = 1 << 20
    broker = broker_factory("--max-request-bytes", str(limit), "--queued-max-request-bytes", str(limit))
    create_topic(broker.bootstrap, "budget", 4)
    # Four producers (one per partition) with ~900 KB requests at once: each needs most of the budget.
    errors: list[BaseException] = []

    def run(p: int) -> None:
        try:
            produce_acked(
                broker.bootstrap,
                "budget",
                [b"b" * 9000] * 300,
                partition=p,
                **{"batch.size": 900_000, "linger.ms": 50, "message.max.bytes": 1_000_000},
            )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    assert_roundtrip(broker.bootstrap, "budget-after")


def fetch_everything(correlation_id: int, topic: str, max_bytes: int) -> bytes:
    """Fetch v4 of partition 0 from offset 0, answered at once, asking for up to `max_bytes` in all and for
    the partition."""
    body = (
        struct.pack(">iiiib", -1, 0, 1, max_bytes, 0)  # replica, max wait, min bytes, max bytes, isolation
        + struct.pack(">i", 1)
        + wire.string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">iqi", 0, 0, max_bytes)
    )
    return wire.frame(wire.header_v1(wire.API_FETCH, 4, correlation_id) + body)


def fetches_started(broker) -> float:
    return metric(broker, 'chronik_requests_total{api="Fetch"}')


def stall_fetchers(broker, topic: str, clients: int) -> list[socket.socket]:
    """Connections that each pipeline twice as many large Fetch requests as a connection may have in flight
    and never read; returns once the broker has started the first of them on every connection. (A Fetch
    runs alone on its connection, server.rs: the others wait behind a response the client never takes.)"""
    started_before = fetches_started(broker)
    requests = b"".join(fetch_everything(n, topic, 64 * MiB) for n in range(2 * MAX_IN_FLIGHT))
    sockets = []
    for _ in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", broker.port))
        s.sendall(requests)  # ~15 KB: fits in the socket buffers whatever the broker does
        sockets.append(s)
    deadline = time.monotonic() + 30
    while fetches_started(broker) < started_before + clients:
        assert time.monotonic() < deadline, "the broker did not start the stalled clients' fetches"
        time.sleep(0.02)
    return sockets


def peak_rss_growth(pid: int, before: int, seconds: float) -> int:
    """The largest RSS growth over `before` seen in `seconds` of samples: the broker's reads of the started
    fetches complete within this window, and what they hold stays held while nobody reads."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_bytes(pid) - before)
        time.sleep(0.02)
    return peak


def test_stalled_fetchers_hold_at_most_a_response_each(broker_factory):
    fetch_max = 4 * MiB
    clients = 4
    broker = broker_factory("--fetch-max-bytes", str(fetch_max), "--connections-max-idle-ms", "120000")
    create_topic(broker.bootstrap, "big", 1)
    produce_acked(broker.bootstrap, "big", [b"x" * 100_000] * 60, partition=0)  # ~6 MB: a full response
    rss_before = rss_bytes(broker.proc.pid)
    started_before = fetches_started(broker)

    stalled = stall_fetchers(broker, "big", clients)
    growth = peak_rss_growth(broker.proc.pid, rss_before, 3)
    assert fetches_started(broker) == started_before + clients, (
        "a connection started a Fetch before its previous response was written"
    )
    # Other clients produce and fetch meanwhile.
    assert_roundtrip(broker.bootstrap, "other")
    # Each connection holds one response's record data (kernel socket buffers are not in RSS); were its
    # fetches run side by side, each would hold up to MAX_IN_FLIGHT of them.
    bound = clients * fetch_max + 32 * MiB
    assert growth < bound, (
        f"broker grew by {growth / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB) while {clients} clients "
        f"pipelined {fetch_max / MiB:.0f} MiB fetches and read nothing"
    )
    for s in stalled:
        s.close()
    assert_roundtrip(broker.bootstrap, "after")


def budgeted_broker(broker_factory, fetch_max: int, budget: int, *extra: str):
    """A broker with a small Fetch memory budget (`fetch_max` per response, `budget` in total)."""
    return broker_factory("--fetch-max-bytes", str(fetch_max), "--queued-max-response-bytes", str(budget), *extra)


def test_fetch_memory_is_bounded_over_all_connections(broker_factory):
    fetch_max = 4 * MiB
    budget = 8 * MiB
    clients = 12
    broker = budgeted_broker(broker_factory, fetch_max, budget, "--connections-max-idle-ms", "120000")
    create_topic(broker.bootstrap, "big", 1)
    produce_acked(broker.bootstrap, "big", [b"x" * 100_000] * 60, partition=0)
    rss_before = rss_bytes(broker.proc.pid)

    stalled = stall_fetchers(broker, "big", clients)
    growth = peak_rss_growth(broker.proc.pid, rss_before, 3)
    # Requests that hold no record data are served while the stalled clients hold all of the budget.
    produce_acked(broker.bootstrap, "other", [b"meanwhile"], partition=0, timeout_s=30)
    # The stalled clients' shares together would be 48 MiB; without any bound 768 MiB.
    bound = budget + 20 * MiB
    assert growth < bound, (
        f"broker grew by {growth / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB) while {clients} clients "
        f"pipelined {fetch_max / MiB:.0f} MiB fetches and read nothing"
    )
    # Closing the stalled connections gives their memory back: fetches are served again.
    for s in stalled:
        s.close()
    assert_roundtrip(broker.bootstrap, "after")


def test_a_consumer_waiting_for_fetch_memory_is_served_once_stalled_clients_time_out(broker_factory):
    clients = 12
    broker = budgeted_broker(
        broker_factory, 4 * MiB, 8 * MiB, "--response-write-timeout-ms", "3000", "--connections-max-idle-ms", "600000"
    )
    create_topic(broker.bootstrap, "big", 1)
    values = [bytes([i]) * 100_000 for i in range(60)]
    produce_acked(broker.bootstrap, "big", values, partition=0)
    stalled = stall_fetchers(broker, "big", clients)
    try:
        # The stalled clients hold the whole budget; this consumer's fetches wait for it. They are served
        # once the stalled connections are closed for taking nothing (3 s), not after the idle limit.
        records = consume_exact(broker.bootstrap, [("big", 0, 0)], len(values), timeout_s=60)
        assert [r.value for r in records] == values
        assert metric(broker, 'chronik_request_errors_total{reason="write_timeout"}') >= 1
    finally:
        for s in stalled:
            s.close()


def test_a_request_body_that_never_comes_releases_its_budget(broker_factory):
    request_max = 32 * MiB
    body_timeout_ms = 1000
    broker = broker_factory(
        "--max-request-bytes",
        str(request_max),
        "--queued-max-request-bytes",
        str(2 * request_max),
        "--request-body-timeout-ms",
        str(body_timeout_ms),
        "--connections-max-idle-ms",
        "120000",
    )
    # Three lengths of the largest request and no body: two take all of the request budget, the third
    # waits for it, and a normal request waits behind them.
    accepted_before = metric(broker, "chronik_connections_total")
    silent = [connect(broker) for _ in range(3)]
    for s in silent:
        s.sendall(struct.pack(">i", request_max))
    sent = time.monotonic()
    deadline = sent + 10
    while metric(broker, "chronik_connections_total") < accepted_before + 3:
        assert time.monotonic() < deadline, "the broker did not accept the silent connections"
        time.sleep(0.02)
    normal = connect(broker)
    normal.sendall(api_versions(7))
    # Closed once their bodies are overdue (without the timeout: only after the 2-minute idle limit).
    for s in silent:
        assert wire.wait_closed(s, 20), "a connection that sent no body was not closed"
        closed_after = time.monotonic() - sent
        assert closed_after >= body_timeout_ms / 1000 * 0.9, f"closed after {closed_after:.2f}s: too early"
    # The normal request got the budget they held.
    payload = wire.read_frame(normal, 20)
    assert payload is not None and int.from_bytes(payload[:4], "big") == 7
    assert metric(broker, 'chronik_request_errors_total{reason="request_body_timeout"}') == 3
    for s in (*silent, normal):
        s.close()
