"""Prometheus metrics on --metrics-listen: all there from the first scrape, and moving by exactly the work
done.

What must hold: a fresh broker, before any client request, exports every metric in the README's table with
a `# HELP` line and the documented type, every documented label value (at 0 for counters), and nothing
undocumented; a partition's high-watermark gauge exists from the partition's creation and again right after
a restart. After N single-record produce requests (acks=all, each its own request and WAL write), the
partition's high-watermark gauge reads N+1 (with the warm-up record), `chronik_wal_writes_total` and
`chronik_requests_total{api="Produce"}` grew by N, the WAL's bytes and fsync histogram moved, a malformed
request is counted in `chronik_request_errors_total`, an error code in a response is counted in
`chronik_api_errors_total{api,error}`, and the connection gauge and WAL segment gauge are present.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaProducer

from harness import REPO_ROOT, create_topic, produce_acked

N = 25

README = REPO_ROOT / "README.md"


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


@dataclass
class Documented:
    """One row of the README's metric table."""

    name: str
    kind: str  # counter, gauge or summary
    #: Label name -> every value it takes from start-up.
    label_values: dict[str, list[str]] = field(default_factory=dict)
    #: Whole label sets present from start-up, e.g. `{api="Fetch",error="OffsetOutOfRange"}`.
    series: list[str] = field(default_factory=list)
    #: One series per partition: none on a broker without topics.
    per_partition: bool = False


def served_apis(readme: str) -> list[str]:
    """The API names of the README's "Kafka APIs served" paragraph (`ApiVersions 0-4, Metadata 0-12, ...`)."""
    start = readme.index("Kafka APIs served")
    paragraph = readme[start : readme.index("\n\n", start)]
    apis = re.findall(r"\b([A-Z][A-Za-z]+) \d+-\d+", paragraph)
    assert len(apis) >= 20, apis
    return apis


def documented_metrics(readme_path: Path = README) -> list[Documented]:
    """Parses the README's metric table (rows `| `name` | type | labels |`)."""
    readme = readme_path.read_text()
    rows = re.findall(r"^\s*\| `(chronik_[a-z_]+)` \| (counter|gauge|summary) \|(.*)\|\s*$", readme, re.M)
    assert len(rows) >= 20, f"the README's metric table was not found or is short: {rows}"
    out = []
    for name, kind, labels in rows:
        d = Documented(name, kind)
        d.series = re.findall(r"`(\{[^`]*\})`", labels)
        for m in re.finditer(r"`([a-z_]+)`: ((?:`\w+`(?:, )?)+)", labels):
            d.label_values[m.group(1)] = re.findall(r"`(\w+)`", m.group(2))
        if "each API served" in labels:
            d.label_values[re.search(r"`([a-z_]+)`: each API served", labels).group(1)] = served_apis(readme)
        d.per_partition = "one series per partition" in labels
        assert d.label_values or d.series or d.per_partition or not labels.strip(), f"unparsed labels: {labels}"
        out.append(d)
    assert len({d.name for d in out}) == len(out), "a metric is listed twice"
    return out


@dataclass
class Exposition:
    """A parsed /metrics page."""

    help: dict[str, str]
    types: dict[str, str]
    #: Sample name -> {label text ("" or `{a="b",...}`): value}.
    samples: dict[str, dict[str, float]]

    def series(self, sample: str) -> dict[str, float]:
        return self.samples.get(sample, {})


def expose(broker) -> Exposition:
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10).read().decode()
    e = Exposition({}, {}, {})
    for line in text.splitlines():
        if m := re.match(r"^# HELP (\S+) (.+)$", line):
            e.help[m.group(1)] = m.group(2)
        elif m := re.match(r"^# TYPE (\S+) (\S+)$", line):
            e.types[m.group(1)] = m.group(2)
        elif m := re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line):
            e.samples.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return e


def label_sets(series: dict[str, float], drop: str | None = None) -> dict[frozenset, float]:
    """Series keyed by their labels as a set of (name, value), without the label `drop` (e.g. quantile)."""
    out = {}
    for text, value in series.items():
        pairs = frozenset((k, v) for k, v in re.findall(r'(\w+)="([^"]*)"', text) if k != drop)
        if drop is None or pairs not in out:
            out[pairs] = value
    return out


def test_every_documented_metric_is_exported_by_a_fresh_broker(broker):
    """Before any client request (the harness only connected to see the port open), every metric of the
    README's table is there, with help text, its type and every documented label value."""
    documented = documented_metrics()
    e = expose(broker)
    problems = []
    for d in documented:
        if d.per_partition:
            continue  # no topics yet; see the high-watermark test
        if not e.help.get(d.name):
            problems.append(f"{d.name}: no # HELP line")
        if e.types.get(d.name) != d.kind:
            problems.append(f"{d.name}: type {e.types.get(d.name)!r}, documented {d.kind}")
        # A summary that never recorded has `_count 0`; its `_count` series carry its labels.
        sample = d.name + "_count" if d.kind == "summary" else d.name
        have = label_sets(e.series(sample))
        if not have:
            problems.append(f"{d.name}: no sample")
            continue
        wanted: set[frozenset] = set()
        if d.label_values:
            [(label, values)] = d.label_values.items()
            wanted = {frozenset([(label, v)]) for v in values}
        for s in d.series:
            wanted.add(frozenset(re.findall(r'(\w+)="([^"]*)"', s)))
        if wanted:
            if set(have) != wanted:
                problems.append(
                    f"{d.name}: label sets missing {sorted(map(sorted, wanted - set(have)))}, "
                    f"undocumented {sorted(map(sorted, set(have) - wanted))}"
                )
            # Nothing happened yet, except the internal partitions' segments the WAL opened.
            if d.kind != "gauge" or d.name == "chronik_consumer_groups":
                nonzero = {tuple(sorted(k)): v for k, v in have.items() if v != 0}
                if nonzero:
                    problems.append(f"{d.name}: not 0 before any request: {nonzero}")
    names = {d.name for d in documented}
    undocumented = sorted(n for n in e.types if n.startswith("chronik_") and n not in names)
    if undocumented:
        problems.append(f"exported but not in the README's table: {undocumented}")
    assert not problems, "\n".join(problems)


def test_partition_high_watermark_exists_from_creation_and_after_restart(broker):
    """A new partition's gauge reads 0 before any record; after a restart every partition's gauge reads its
    high watermark before any produce."""
    hw = 'chronik_partition_high_watermark'
    create_topic(broker.bootstrap, "fresh", 2)
    e = expose(broker)
    assert e.help.get(hw), "no # HELP line"
    assert e.series(hw).get('{topic="fresh",partition="0"}') == 0.0, e.series(hw)
    assert e.series(hw).get('{topic="fresh",partition="1"}') == 0.0, e.series(hw)
    produce_acked(broker.bootstrap, "fresh", [b"a", b"b", b"c"], partition=1)
    assert broker.stop() == 0
    broker.restart()
    after = expose(broker).series(hw)
    assert (after.get('{topic="fresh",partition="0"}'), after.get('{topic="fresh",partition="1"}')) == (0.0, 3.0)


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
