"""One `chronik serve` process: start on free loopback ports, wait until ready, stop, kill, read its log.

Shared by the real-client tests (`harness.py`, which adds the pytest fixtures' conventions) and the Kafka
benchmark (`bench/kafka_bench.py`). Needs only the standard library.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

#: How long a broker may take to accept connections after start (a debug build recovering a WAL).
READY_TIMEOUT_S = 30.0
#: How long SIGTERM may take to end the broker.
STOP_TIMEOUT_S = 30.0
#: Lines of broker stderr attached to a failure report.
STDERR_TAIL_LINES = 300

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerStartError(AssertionError):
    pass


class Broker:
    """One `chronik serve` process of `binary`. Restarts keep the data directory and both ports."""

    def __init__(self, binary: Path, workdir: Path, extra_args: list[str], env=None, preexec_fn=None):
        self.binary = binary
        #: Run in the child before exec (e.g. to set a resource limit for the broker only).
        self.preexec_fn = preexec_fn
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.data_dir = workdir / "data"
        self.extra_args = list(extra_args)
        self.port = 0
        self.metrics_port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        #: Set when the caller ends the process itself (kill -9, or a signal other than SIGTERM).
        self.killed_by_test = False
        self._stderr_files: list[Path] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """First start: picks free ports, retrying if another process grabbed one in between. With
        `wait=False` returns once the process is running (a cluster node is ready only once a quorum
        is up: start them all, then `wait_ready()` each)."""
        last_error = None
        for _ in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            try:
                self._spawn(wait)
                return
            except BrokerStartError as e:
                last_error = e
                if "listening on" not in str(e) and "metrics" not in str(e):
                    raise
        raise last_error  # type: ignore[misc]

    def restart(self, wait: bool = True) -> None:
        """Starts again on the same data directory and ports. The previous process must have ended."""
        assert self.proc is not None and self.proc.poll() is not None, "restart() needs a stopped broker"
        self._spawn(wait)

    def _spawn(self, wait: bool = True) -> None:
        self.starts += 1
        stderr_path = self.workdir / f"chronik-stderr-{self.starts}.log"
        self._stderr_files.append(stderr_path)
        cmd = [
            str(self.binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.bootstrap,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]
        env = dict(os.environ, NO_COLOR="1", **self.extra_env)
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                cwd=self.workdir,
                preexec_fn=self.preexec_fn,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until the Kafka port accepts and /ready says recovery finished: the port is bound before
        recovery, so a connection alone does not mean the data directory is open yet."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise BrokerStartError(
                    f"chronik exited with code {code} before accepting connections:\n{self.stderr_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                ready = f"http://127.0.0.1:{self.metrics_port}/ready"
                with urllib.request.urlopen(ready, timeout=0.5) as r:
                    if r.status == 200:
                        return
            except OSError:  # refused, or /ready still 503 (HTTPError is an OSError)
                pass
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"chronik was not ready on {self.bootstrap} within {READY_TIMEOUT_S}s:\n"
                    f"{self.stderr_tail()}"
                )
            time.sleep(0.02)

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Sends `sig` and waits for the process to end; returns its exit code (negative: the signal that
        killed it)."""
        assert self.proc is not None
        if sig != signal.SIGTERM:
            self.killed_by_test = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            # Reported here; teardown need not report the kill again.
            self.killed_by_test = True
            raise AssertionError(
                f"chronik did not exit within {timeout_s}s of signal {sig}; last log lines:\n"
                f"{self.stderr_tail(20)}"
            ) from None

    def pause(self) -> None:
        """SIGSTOP: the process stays, frozen (no heartbeats, no answers) until `resume()`."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill9(self) -> None:
        code = self.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL, f"expected death by SIGKILL, got exit code {code}"

    # -- diagnostics ------------------------------------------------------------------------------------

    @property
    def stderr_files(self) -> list[Path]:
        """The log of every run, oldest first."""
        return list(self._stderr_files)

    def stderr_text(self) -> str:
        parts = []
        for i, path in enumerate(self._stderr_files, start=1):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            parts.append(f"--- chronik run {i} ({path}) ---\n{ANSI_ESCAPE.sub('', text)}")
        return "\n".join(parts)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        all_lines = self.stderr_text().splitlines()
        cut = len(all_lines) - lines
        head = [f"... ({cut} earlier lines cut)"] if cut > 0 else []
        return "\n".join(head + all_lines[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (all its threads); NaN once it is gone."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics_text(self, timeout_s: float = 10) -> str:
        """The Prometheus text of /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.read().decode()


class Cluster:
    """`n` `chronik serve` processes forming one cluster on loopback: node ids 0..n-1, each with its own
    data directory, Kafka, metrics and controller ports, all of them voters. `make_broker(workdir,
    extra_args)` builds each node's `Broker` (so callers choose the binary and the Broker class)."""

    def __init__(self, make_broker, root: Path, n: int, extra_args: list[str] = (), controller_ports=None):
        self.controller_ports = list(controller_ports or [free_port() for _ in range(n)])
        voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in enumerate(self.controller_ports))
        self.nodes = []
        for i in range(n):
            workdir = root / f"node{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            args = [
                "--node-id",
                str(i),
                "--controller-listen",
                f"127.0.0.1:{self.controller_ports[i]}",
                "--controller-voters",
                voters,
                *extra_args,
            ]
            self.nodes.append(make_broker(workdir, args))

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()

    @property
    def bootstrap(self) -> str:
        """Every live node, as a client's bootstrap list."""
        return ",".join(n.bootstrap for n in self.nodes if n.is_alive())

    def node_of(self, kafka_port: int):
        return next(n for n in self.nodes if n.port == kafka_port)

    def controller(self):
        """The node that is the Raft leader now (its `chronik_controller_active` is 1), or None. Clients are
        told the broker they ask is the controller (every broker forwards admin requests): only the
        metrics say which node leads the quorum."""
        for node in self.nodes:
            if not node.is_alive():
                continue
            try:
                text = node.metrics_text(timeout_s=5)
            except OSError:
                continue
            if "\nchronik_controller_active 1" in text:
                return node
        return None
