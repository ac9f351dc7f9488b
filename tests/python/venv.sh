#!/usr/bin/env bash
# Creates target/venv with the Python Kafka clients the tests use, and installs kcat when missing (as root,
# with apt-get). Sourced by test.sh and test-long.sh from the repository root.
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
