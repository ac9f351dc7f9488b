#!/usr/bin/env bash
# The long versions of the reliability checks; ./test.sh runs the short ones. Takes about half an hour on
# 2 cores with the defaults. Knobs (environment):
#   CHRONIK_SIM_SEEDS     crash-simulation scenarios            (default 100000)
#   CHRONIK_CRASH_ROUNDS  kill -9 rounds under client load      (default 20)
#   CHRONIK_TOPIC_CRASH_ROUNDS  kill -9 rounds during topic creation/deletion (default 20)
#   CHRONIK_FUZZ_SECS     seconds of fuzzing per cargo-fuzz target (default 60)
#   CHRONIK_CLUSTER_KILL_ROUNDS  kill -9 rounds of a random node of a 3-broker cluster (default 20)
#   CHRONIK_REPLICATION_SEEDS  seeded runs of the replication simulation (default 50000; ./test.sh 300)
# Fuzzing uses nightly with AddressSanitizer when a nightly toolchain is installed, else stable without a
# sanitizer (`-s none`); crashes land in fuzz/artifacts/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")"
SIM_SEEDS=${CHRONIK_SIM_SEEDS:-100000}
CRASH_ROUNDS=${CHRONIK_CRASH_ROUNDS:-20}
TOPIC_CRASH_ROUNDS=${CHRONIK_TOPIC_CRASH_ROUNDS:-20}
FUZZ_SECS=${CHRONIK_FUZZ_SECS:-60}
CLUSTER_KILL_ROUNDS=${CHRONIK_CLUSTER_KILL_ROUNDS:-20}
REPLICATION_SEEDS=${CHRONIK_REPLICATION_SEEDS:-50000}

echo "== crash simulation: $SIM_SEEDS seeded scenarios (release build)"
CHRONIK_SIM_SEEDS=$SIM_SEEDS cargo test --release --locked -p chronik-wal --test wal_sim_test -- --nocapture

echo "== replication simulation: $REPLICATION_SEEDS seeded runs (release build)"
CHRONIK_REPLICATION_SEEDS=$REPLICATION_SEEDS cargo test --release --locked -p chronik-server --lib \
    replication::sim_tests -- --nocapture

echo "== kill -9 loop: $CRASH_ROUNDS rounds under acks=all load with a committing consumer group"
source tests/python/venv.sh
cargo build -p chronik-server --locked
CHRONIK_CRASH_ROUNDS=$CRASH_ROUNDS target/venv/bin/python -m pytest -q -s tests/python/test_crash_loop.py

echo "== kill -9 loop: $TOPIC_CRASH_ROUNDS rounds during the creation and deletion of large topics"
CHRONIK_TOPIC_CRASH_ROUNDS=$TOPIC_CRASH_ROUNDS target/venv/bin/python -m pytest -q -s tests/python/test_topic_crash_loop.py

echo "== cluster: $CLUSTER_KILL_ROUNDS kill -9 rounds of random nodes of three, under acks=all load"
CHRONIK_CLUSTER_KILL_ROUNDS=$CLUSTER_KILL_ROUNDS target/venv/bin/python -m pytest -q -s tests/python/test_cluster.py \
    -k kill9_rounds_under_load

echo "== fuzzing: $FUZZ_SECS s per target"
# Pinned: cargo-fuzz's flags and output are what this section relies on.
CARGO_FUZZ_VERSION=0.13.2
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz run -O)
else
    fuzz=(cargo fuzz run -O -s none)
fi
mkdir -p target/fuzz-logs
for target in wal_frame wal_recovery kafka_request; do
    echo "-- $target"
    # New inputs go to target/fuzz-corpus; the committed seeds in fuzz/corpus are only read. The whole
    # output (build included) goes to the log, printed in full if the build or the run fails; a crash
    # leaves its input in fuzz/artifacts/$target/ ("Test unit written to" in the log).
    log="target/fuzz-logs/$target.log"
    mkdir -p "target/fuzz-corpus/$target"
    if ! (cd fuzz && "${fuzz[@]}" "$target" "../target/fuzz-corpus/$target" "corpus/$target" -- \
        -max_total_time="$FUZZ_SECS" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1) >"$log" 2>&1; then
        cat "$log"
        echo "FUZZING $target FAILED (full log: $log)"
        exit 1
    fi
    grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log"
done
echo "== long checks passed"
