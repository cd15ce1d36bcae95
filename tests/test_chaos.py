"""The small chaos run (tests/chaos.py --small) as part of the suite: kills, SIGTERMs, a scale
change and a broker bounce on a dedicated broker, then the oracle checks."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def free_port_pair() -> int:
    """A port p with p+1 also free (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return int(port)
    raise RuntimeError("no free port pair")


def test_small_chaos_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.chaos",
            "--small",
            "--port",
            str(free_port_pair()),
            "--workdir",
            str(tmp_path / "chaos"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = result.stdout
    assert result.returncode == 0, report + result.stderr[-3000:]
    lines = dict(line.rsplit(None, 1) for line in report.splitlines() if line.strip())
    assert lines["mismatches"] == "0"
    assert lines["Deltas applied"] == "0"
    assert int(lines["SIGKILLs"]) >= 4 and int(lines["broker bounces"]) >= 1
