"""Smoke test of the benchmark script: a CI-sized run against the test broker completes, prints
the ratio line last, and writes the markdown report. No timing is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.broker


@pytest.mark.timeout(300)
def test_small_bench_run(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench",
            "--small",
            "--skip-quix",
            "--skip-growth",
            "--steady-seconds",
            "5",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    report = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-3000:]}"
    assert completed.returncode == 0, report

    lines = completed.stdout.strip().splitlines()
    assert lines[-2].startswith("ours(100)/raw-aiokafka = "), report
    assert lines[-1].startswith("ours(100)/quix = "), report
    match = re.fullmatch(r"ours\(100\)/raw-aiokafka = (\S+)", lines[-2])
    assert match is not None, report
    assert float(match.group(1)) > 0, report

    markdown = out / "bench.md"
    assert markdown.is_file(), report
    text = markdown.read_text()
    assert "stream-replica run (max_records 100)" in text
    assert "raw aiokafka" in text
    # the unreported warm-up read ran, read the whole topic, and is named as such
    assert re.search(
        r"^warm-up read, not reported: raw aiokafka getmany\(100\), [\d,]+ records, "
        r"[\d,]+ records/s after join$",
        completed.stdout,
        re.M,
    ), report
    assert "one unreported read of the whole topic warmed the broker" in text, report
    assert "## The floor of this stack" in text and "head lookup" in text
    # Steady state: the delay is timed for the states written, whichever path wrote them (it
    # once timed only the reference path's: a handful of states a minute)
    steady = re.search(r"^\| [\d,]+/s for \d+ s \| ([\d,]+) \| [^|]+ \| ([\d,]+) \|", text, re.M)
    assert steady is not None, report
    produced, timed = (int(group.replace(",", "")) for group in steady.groups())
    assert produced > 0 and timed >= produced // 2, report
    # Scale-out: the three cases ran to the end and every record was read at least once.
    scale = text.split("## Scale-out: one worker vs. two", 1)[1]
    rows = [
        line
        for line in scale.splitlines()
        if line.startswith(("| 1 worker", "| 2 together", "| 1 -> 2"))
    ]
    assert len(rows) == 3 and all("TIMED OUT" not in row for row in rows), report
    assert all(float(row.split("|")[7]) >= 1.0 for row in rows), report  # read / topic
    assert any(line.startswith("ours(100) ") and "floor/ours = " in line for line in lines)
    # the read benchmark (wrk, local/forwarded/client under a 5,000 records/s producer)
    assert "## Reads over HTTP" in text, report
    for case in ("| local hits (wrk) |", "| forwarded (wrk) |", "| Python client (async"):
        assert case in text, report
    assert "read benchmark failed" not in text, report
