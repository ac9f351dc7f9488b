"""kcat (the command-line client most operators reach for first) against chronik.

What must hold: `kcat -L` lists a topic with its partition count and the broker at its listen address;
`kcat -P` produces lines; `kcat -C -o beginning -e` reads back exactly the values produced, in order, and
exits 0. kcat must be installed (test.sh installs it): a missing kcat fails this test rather than skipping it.
"""

from __future__ import annotations

import shutil
import subprocess

from harness import create_topic, produce_acked

KCAT_TIMEOUT_S = 30


def kcat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    path = shutil.which("kcat")
    assert path is not None, "kcat is not installed (test.sh installs it with apt-get install kcat)"
    return subprocess.run(
        [path, *args], input=stdin, capture_output=True, text=True, timeout=KCAT_TIMEOUT_S, check=False
    )


def test_kcat_lists_produces_and_consumes(broker):
    topic = "kcat-topic"
    create_topic(broker.bootstrap, topic, 2)
    values = [f"value-{i}" for i in range(20)]
    produce_acked(broker.bootstrap, topic, [v.encode() for v in values], partition=0)

    listing = kcat("-L", "-b", broker.bootstrap)
    assert listing.returncode == 0, listing.stderr
    assert f'topic "{topic}" with 2 partitions:' in listing.stdout, listing.stdout
    assert f"broker 0 at {broker.bootstrap}" in listing.stdout, listing.stdout

    consumed = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q")
    assert consumed.returncode == 0, f"kcat -C exited {consumed.returncode}: {consumed.stderr}"
    assert consumed.stdout.splitlines() == values

    more = [f"from-kcat-{i}" for i in range(5)]
    produced = kcat("-P", "-b", broker.bootstrap, "-t", topic, "-p", "1", stdin="\n".join(more) + "\n")
    assert produced.returncode == 0, produced.stderr
    consumed = kcat(
        "-C", "-b", broker.bootstrap, "-t", topic, "-p", "1", "-o", "beginning", "-e", "-q", "-f", "%o %s\\n"
    )
    assert consumed.returncode == 0, f"kcat -C exited {consumed.returncode}: {consumed.stderr}"
    assert consumed.stdout.splitlines() == [f"{i} {v}" for i, v in enumerate(more)]
