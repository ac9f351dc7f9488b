#!/usr/bin/env bash
# Runs every check and test of the workspace. CI (.ci/run) calls exactly this.
# Needs only the Rust toolchain; installs nothing else yet.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== benchmark smoke run (one short round; numbers are not judged here)"
CHRONIK_BENCH_QUICK=1 cargo bench --locked -p chronik-wal --bench append
