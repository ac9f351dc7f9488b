"""Fixtures for the real-client tests: a `chronik serve` process per test.

Each test gets its own broker on a fresh data directory and free loopback ports. The fixture stops it at
teardown with SIGTERM and asserts a clean exit (code 0), unless the test itself killed it. When a test
fails, the tail of the broker's stderr is attached to the failure report.
"""

from __future__ import annotations

import gc
import signal

import pytest

from harness import Broker


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the broker's stderr to the report of a test that failed (in setup, call or teardown)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        brokers = getattr(item, "_chronik_brokers", [])
        for i, b in enumerate(brokers):
            report.sections.append((f"chronik stderr (broker {i}, {report.when})", b.stderr_tail()))


@pytest.fixture
def broker_factory(request, tmp_path):
    """Starts brokers with extra command-line arguments; each is stopped and checked at teardown."""
    started: list[Broker] = []
    request.node._chronik_brokers = started

    def start(*extra_args: str, binary=None, env=None, preexec_fn=None) -> Broker:
        workdir = tmp_path / f"broker{len(started)}"
        workdir.mkdir()
        b = Broker(workdir, list(extra_args), binary=binary, env=env, preexec_fn=preexec_fn)
        started.append(b)
        b.start()
        return b

    yield start

    # Clients the test left for the garbage collector disconnect now, while their broker is still up,
    # instead of logging connection failures into a later test's output.
    gc.collect()
    problems = []
    for b in started:
        if b.proc is None:
            continue
        if b.proc.poll() is None:
            try:
                code = b.stop(signal.SIGTERM)
            except AssertionError as e:
                problems.append(f"broker on {b.bootstrap}: {e}")
                continue
            if code != 0:
                problems.append(f"broker on {b.bootstrap} exited with code {code} after SIGTERM at teardown")
        elif not b.killed_by_test and b.proc.returncode != 0:
            problems.append(f"broker on {b.bootstrap} died during the test with code {b.proc.returncode}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()
