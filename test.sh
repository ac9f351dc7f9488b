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

if [ "$(uname -s)" = Linux ]; then
    echo "== chronik-wal tests again over the io_uring backend (they fail if the kernel refuses io_uring)"
    CHRONIK_TEST_IO_BACKEND=io_uring cargo test -p chronik-wal --locked
fi

echo "== benchmark smoke run (one short round; numbers are not judged here)"
CHRONIK_BENCH_QUICK=1 cargo bench --locked -p chronik-wal --bench append
CHRONIK_BENCH_QUICK=1 cargo bench --locked -p chronik-wal --bench recovery

echo "== real Kafka clients against the broker (tests/python)"
# Python clients (confluent-kafka/librdkafka, kafka-python) and kcat talk to a `chronik serve` process.
if [ ! -x target/venv/bin/python ]; then
    python3 -m venv target/venv
fi
target/venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
if ! command -v kcat >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        # If this fails, test_kcat.py fails (it does not skip): kcat is part of the suite.
        (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq kcat >/dev/null) || echo "warning: installing kcat failed"
    else
        echo "warning: kcat is not installed and this is not root; test_kcat.py will fail"
    fi
fi
# The fault-injection build (disk faults switched on by a control file) is a separate binary used only by
# test_faults.py; the plain build is what every other test runs.
cargo build -p chronik-server --locked --features fault-injection
cp target/debug/chronik target/debug/chronik-faults
cargo build -p chronik-server --locked
target/venv/bin/python -m pytest -q tests/python
