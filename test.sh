#!/usr/bin/env bash
# Runs every check and test of the workspace. CI (.ci/run) calls exactly this.
# Needs the Rust toolchain and python3; the last section installs its Python packages into target/venv
# (and kcat with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p chronik-server --all-targets --locked --features fault-injection -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

# Containers often refuse io_uring (a sysctl, or a seccomp filter): there the second run cannot happen and
# this says so loudly. Where it runs, a refused ring fails the tests (no silent fallback to std).
uring_refused=""
if [ "$(uname -s)" != Linux ]; then
    uring_refused="not Linux"
elif [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" != 0 ]; then
    uring_refused="kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled)"
elif grep -q '^Seccomp:[[:space:]]*2' /proc/self/status; then
    uring_refused="a seccomp filter is active (container runtimes block io_uring this way)"
fi
if [ -z "$uring_refused" ]; then
    echo "== chronik-wal tests again over the io_uring backend (they fail if the kernel refuses io_uring)"
    CHRONIK_TEST_IO_BACKEND=io_uring cargo test -p chronik-wal --locked
else
    echo "!! NOT RUN: chronik-wal tests over io_uring: $uring_refused" >&2
fi

echo "== benchmark smoke run (one short round; numbers are not judged here)"
CHRONIK_BENCH_QUICK=1 cargo bench --locked -p chronik-wal --bench append
CHRONIK_BENCH_QUICK=1 cargo bench --locked -p chronik-wal --bench recovery

echo "== real Kafka clients against the broker (tests/python)"
# Python clients (confluent-kafka/librdkafka, kafka-python) and kcat talk to a `chronik serve` process.
source tests/python/venv.sh
# The fault-injection build (disk faults switched on by a control file) is a separate binary used only by
# test_faults.py; the plain build is what every other test runs.
cargo build -p chronik-server --locked --features fault-injection
cp target/debug/chronik target/debug/chronik-faults
cargo build -p chronik-server --locked
target/venv/bin/python -m pytest -q tests/python
