"""Writes the committed seed corpus: valid request frames (from tests/python/wire.py) and WAL bytes
(a frame header + payload taken from a segment written by the WAL). Run from the repo root:
`target/venv/bin/python fuzz/make_corpus.py path/to/some/segment.wal`."""

import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import wire  # noqa: E402

out = Path(__file__).resolve().parent / "corpus"
now = int(time.time() * 1000)


def strip_len(frame: bytes) -> bytes:
    return frame[4:]


requests = {
    "api_versions_v0": wire.frame(wire.header_v1(wire.API_VERSIONS, 0, 1)),
    "metadata_v1_one_topic": wire.frame(
        wire.header_v1(wire.API_METADATA, 1, 2) + struct.pack(">i", 1) + wire.string("t")
    ),
    "metadata_v1_all": wire.frame(wire.header_v1(wire.API_METADATA, 1, 3) + struct.pack(">i", -1)),
    "produce_v3": wire.produce_v3(4, "t", 0, wire.record_batch([b"a", b"bb", b"ccc"], now)),
    "fetch_v4": wire.fetch_v4(5, "t", 0, 0, max_wait_ms=100, min_bytes=1),
}
for name, frame in requests.items():
    (out / "kafka_request" / name).write_bytes(strip_len(frame))

if len(sys.argv) > 1:
    segment = Path(sys.argv[1]).read_bytes()
    (out / "wal_recovery" / "full_segment").write_bytes(b"\x01" + segment)
    (out / "wal_recovery" / "frames_after_generated_header").write_bytes(b"\x00" + segment[32:])
    (out / "wal_frame" / "first_frame").write_bytes(segment[32:])
