"""Hostile or broken bytes on raw sockets do not hurt the broker or other clients.

What must hold, for each case (garbage, absurd or negative length prefixes, a truncated request, an unknown
API key, unsupported versions, bodies claiming 2^31-1 array elements or over-long strings): the broker process
stays alive with bounded memory, and a real client on another connection still produces (acks=all) and
consumes, both while the bad connection is open and after it is closed. Requests that cannot be framed or
decoded close their connection (as Kafka does). A produce of a record batch with a wrong CRC is refused with
CORRUPT_MESSAGE and stores nothing; the same batch with the right CRC is stored.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

import pytest

import wire
from harness import assert_roundtrip, consume_exact, create_topic

#: The broker's resident memory after a hostile request stays below this (it idles at a few tens of MiB).
MAX_RSS_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    #: The broker must close the connection (the request cannot be framed or decoded). None: either way.
    expect_close: bool | None


def _cases() -> list[Case]:
    rng = random.Random(20261125)
    metadata_v1 = wire.header_v1(wire.API_METADATA, 1, 7)
    return [
        Case("http-request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", True),
        Case("random-bytes", rng.randbytes(4096), None),
        Case("length-0x7fffffff", struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 16, True),
        Case("length-negative", struct.pack(">i", -1) + b"\x00" * 16, True),
        Case("length-zero", struct.pack(">i", 0) * 8, True),
        Case(
            "truncated-request",
            struct.pack(">i", 100) + wire.header_v1(wire.API_VERSIONS, 0, 1) + b"\x00" * 4,
            None,
        ),
        Case("unknown-api-key", wire.frame(wire.header_v1(9999, 0, 2)), True),
        Case("metadata-unsupported-version", wire.frame(wire.header_v1(wire.API_METADATA, 999, 3)), True),
        Case(
            "metadata-v1-2^31-1-topics",
            wire.frame(metadata_v1 + struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 8),
            True,
        ),
        Case(
            "metadata-v1-long-topic-name",
            wire.frame(metadata_v1 + struct.pack(">i", 1) + struct.pack(">h", 0x7FFF) + b"abc"),
            True,
        ),
        Case(
            "metadata-v9-compact-array-2^32",
            wire.frame(wire.header_v2(wire.API_METADATA, 9, 4) + wire.uvarint(0xFFFFFFFF) + b"\x00" * 8),
            True,
        ),
        Case(
            "produce-v3-records-length-0x7fffffff",
            wire.frame(
                wire.header_v1(wire.API_PRODUCE, 3, 5)
                + wire.string(None)
                + struct.pack(">hi", -1, 1000)
                + struct.pack(">i", 1)
                + wire.string("health")
                + struct.pack(">ii", 1, 0)
                + struct.pack(">i", 0x7FFFFFFF)
                + b"\x00" * 8
            ),
            True,
        ),
    ]


CASES = _cases()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_bytes_leave_broker_serving(broker, case):
    create_topic(broker.bootstrap, "health", 1)
    assert_roundtrip(broker.bootstrap)

    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as bad:
        try:
            bad.sendall(case.payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the broker may close before reading everything
        closed = wire.wait_closed(bad, timeout_s=3)
        assert broker.is_alive(), f"broker died after {case.name}:\n{broker.stderr_tail(50)}"
        if case.expect_close is not None:
            assert closed == case.expect_close, (
                f"{case.name}: the broker should {'close' if case.expect_close else 'keep'} the connection"
            )
        # Other clients are served while the bad connection is still open.
        assert_roundtrip(broker.bootstrap)
    assert_roundtrip(broker.bootstrap)
    assert broker.is_alive()
    rss = rss_bytes(broker.proc.pid)
    assert rss < MAX_RSS_BYTES, f"broker RSS is {rss >> 20} MiB after {case.name}"


def test_produce_with_bad_crc_is_refused(broker):
    topic = "crc"
    create_topic(broker.bootstrap, topic, 1)
    good = wire.record_batch([b"one", b"two"], timestamp_ms=1_700_000_000_000)
    bad = bytearray(good)
    bad[-1] ^= 0x01  # flip a bit in the last record's payload: the CRC no longer matches

    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall(wire.produce_v3(41, topic, 0, bytes(bad)))
        response = wire.read_frame(s, timeout_s=10)
        assert response is not None, "the broker closed the connection instead of answering"
        corr, partitions = wire.parse_produce_v3_response(response)
        assert corr == 41
        assert [(t, p, err) for t, p, err, _ in partitions] == [(topic, 0, 2)], (
            "a batch with a wrong CRC must be refused with CORRUPT_MESSAGE (2)"
        )

        s.sendall(wire.produce_v3(42, topic, 0, good))
        response = wire.read_frame(s, timeout_s=10)
        assert response is not None
        corr, partitions = wire.parse_produce_v3_response(response)
        assert (corr, partitions) == (42, [(topic, 0, 0, 0)]), "the intact batch is stored at offset 0"

    records = consume_exact(broker.bootstrap, [(topic, 0, 0)], 2, timeout_s=30)
    assert [(r.offset, r.value) for r in records] == [(0, b"one"), (1, b"two")]
