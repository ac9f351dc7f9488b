"""Hand-built Kafka wire bytes for tests that must send what no real client would.

Only what the raw-socket tests need: request framing (header v1 and v2), a few request bodies, a v2 record
batch with a real CRC-32C, and a blocking read of one response frame.
"""

from __future__ import annotations

import socket
import struct
import time

API_PRODUCE = 0
API_METADATA = 3
API_FIND_COORDINATOR = 10
API_VERSIONS = 18


def string(s: str | None) -> bytes:
    """Kafka STRING / NULLABLE_STRING: int16 length, then UTF-8 bytes (-1 for null)."""
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(n: int) -> bytes:
    """Zig-zag signed varint, as used inside records."""
    return uvarint((n << 1) ^ (n >> 63))


def header_v1(api_key: int, api_version: int, correlation_id: int, client_id: str = "raw-test") -> bytes:
    return struct.pack(">hhi", api_key, api_version, correlation_id) + string(client_id)


def header_v2(api_key: int, api_version: int, correlation_id: int, client_id: str = "raw-test") -> bytes:
    """Header of flexible versions: v1 plus an empty tagged-field section."""
    return header_v1(api_key, api_version, correlation_id, client_id) + uvarint(0)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def record_batch(values: list[bytes], timestamp_ms: int) -> bytes:
    """An uncompressed magic-2 record batch at base offset 0, no producer id, no keys or headers."""
    records = b""
    for i, v in enumerate(values):
        body = (
            b"\x00"  # attributes
            + varint(0)  # timestamp delta
            + varint(i)  # offset delta
            + varint(-1)  # null key
            + varint(len(v))
            + v
            + varint(0)  # no headers
        )
        records += varint(len(body)) + body
    after_crc = (
        struct.pack(">hiqqqhi", 0, len(values) - 1, timestamp_ms, timestamp_ms, -1, -1, -1)
        + struct.pack(">i", len(values))
        + records
    )
    crc = crc32c(after_crc)
    # batchLength counts from partitionLeaderEpoch to the end.
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", 0, batch_length, -1, 2, crc) + after_crc


def produce_v3(correlation_id: int, topic: str, partition: int, records: bytes, acks: int = -1) -> bytes:
    body = (
        string(None)  # transactional id
        + struct.pack(">hi", acks, 10_000)
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">i", partition)
        + struct.pack(">i", len(records))
        + records
    )
    return frame(header_v1(API_PRODUCE, 3, correlation_id) + body)


def parse_produce_v3_response(payload: bytes) -> tuple[int, list[tuple[str, int, int, int]]]:
    """(correlation id, [(topic, partition, error code, base offset)])."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, payload, pos)
        pos += struct.calcsize(fmt)
        return values

    (correlation_id,) = take(">i")
    out = []
    (n_topics,) = take(">i")
    for _ in range(n_topics):
        (name_len,) = take(">h")
        name = payload[pos : pos + name_len].decode()
        pos += name_len
        (n_parts,) = take(">i")
        for _ in range(n_parts):
            partition, error_code, base_offset, _log_append_time = take(">ihqq")
            out.append((name, partition, error_code, base_offset))
    return correlation_id, out


def read_frame(sock: socket.socket, timeout_s: float) -> bytes | None:
    """One response payload (without its length prefix), or None if the peer closed the connection first."""
    deadline = time.monotonic() + timeout_s

    def read_exact(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete response within {timeout_s}s")
            sock.settimeout(remaining)
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    size = read_exact(4)
    if size is None:
        return None
    (n,) = struct.unpack(">i", size)
    return read_exact(n)


def wait_closed(sock: socket.socket, timeout_s: float) -> bool:
    """Reads and discards until the peer closes (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


API_FETCH = 1


def fetch_v4(
    correlation_id: int, topic: str, partition: int, offset: int, max_wait_ms: int, min_bytes: int
) -> bytes:
    body = (
        struct.pack(">iiiib", -1, max_wait_ms, min_bytes, 1 << 20, 0)  # replica, wait, min, max, isolation
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">iqi", partition, offset, 1 << 20)
    )
    return frame(header_v1(API_FETCH, 4, correlation_id) + body)


def parse_fetch_v4_response(payload: bytes) -> tuple[int, list[tuple[str, int, int, int, int]]]:
    """(correlation id, [(topic, partition, error code, high watermark, record bytes length)])."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, payload, pos)
        pos += struct.calcsize(fmt)
        return values

    (correlation_id,) = take(">i")
    take(">i")  # throttle time
    out = []
    (n_topics,) = take(">i")
    for _ in range(n_topics):
        (name_len,) = take(">h")
        name = payload[pos : pos + name_len].decode()
        pos += name_len
        (n_parts,) = take(">i")
        for _ in range(n_parts):
            partition, error_code, high_watermark, _last_stable = take(">ihqq")
            (n_aborted,) = take(">i")
            pos += max(n_aborted, 0) * 16
            (records_len,) = take(">i")
            pos += max(records_len, 0)
            out.append((name, partition, error_code, high_watermark, max(records_len, 0)))
    return correlation_id, out


def find_coordinator_v0(correlation_id: int, group: str) -> bytes:
    return frame(header_v1(API_FIND_COORDINATOR, 0, correlation_id) + string(group))


def parse_find_coordinator_v0_response(payload: bytes) -> tuple[int, int, int]:
    """(correlation id, error code, coordinator node id)."""
    correlation_id, error_code, node_id = struct.unpack_from(">ihi", payload, 0)
    return correlation_id, error_code, node_id
