"""A real worker process with its HTTP face: metrics, health, readiness, the status page in a
real headless browser, JSON logs and the rate limit on refused-record lines."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stream_replica.contract import encode_key
from stream_replica.publisher import Publisher
from stream_replica.workload import sample_workload
from tests.helpers import TopicFactory, finish, read_until, wait_until, worker_command

pytestmark = pytest.mark.broker


def get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def start_worker(
    bootstrap: str, topic: str, db: Path, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    command = worker_command(bootstrap, topic, f"{topic}-node", db, "--http", "127.0.0.1:0", *extra)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"HTTP on 127\.0\.0\.1:(\d+)", line)
        if found:
            return process, f"http://127.0.0.1:{found.group(1)}"
    raise AssertionError("worker exited before serving HTTP")


async def publish_load(bootstrap: str, topic: str, grains: int) -> int:
    sent = 0
    async with Publisher(bootstrap, topic) as publisher:
        for op in sample_workload(grains, seed=3):
            await publisher.publish_raw(op.key, op.value)
            sent += 1
    return sent


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def test_metrics_health_readiness_and_status(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = await make_topic(partitions=3)
    process, base = start_worker(kafka_bootstrap, topic, tmp_path / "db")
    try:
        await wait_until(lambda: get(base, "/healthz")[0] == 200, 30, what="/healthz")
        sent = await publish_load(kafka_bootstrap, topic, 300)

        def caught_up() -> bool:
            status = json.loads(get(base, "/status.json")[1])
            rows = status["partitions"].values()
            return status["counts"]["records"] == sent and all(r["lag"] == 0 for r in rows)

        await wait_until(caught_up, 60, what="the worker to read everything")
        assert get(base, "/readyz")[0] == 200
        status = json.loads(get(base, "/status.json")[1])
        assert sorted(status["partitions"]) == ["0", "1", "2"]
        assert {r["role"] for r in status["partitions"].values()} == {"active"}
        text = get(base, "/metrics")[1]
        counts = status["counts"]
        assert metric(text, "stream_replica_records_read_total") == sent
        assert metric(text, "stream_replica_records_applied_total") == counts["applied"]
        refused = 'stream_replica_records_refused_total{kind="invalid"}'
        assert metric(text, refused) == counts["invalid"] > 0
        assert metric(text, "stream_replica_rebalances_total") >= 1
        assert metric(text, "stream_replica_store_reads_on_thread") in (0, 1)
        assert metric(text, "stream_replica_store_wal_on") == 1  # caught up: through the WAL
        for partition in range(3):
            lag = f'stream_replica_partition_lag_records{{partition="{partition}",role="active"}}'
            assert metric(text, lag) == 0
        assert "stream_replica_poll_duration_seconds_bucket" in text
        assert "_created" not in text
        page = get(base, "/")[1]
        assert "status.json" in page

        if shutil.which("chromium") is None:
            pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
        dom = subprocess.run(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                "--virtual-time-budget=5000", "--dump-dom", base + "/",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert dom.returncode == 0, dom.stderr[-2000:]
        # The page's script fetched status.json and drew one row per partition.
        assert dom.stdout.count('<td class="role">active</td>') == 3, dom.stdout[-3000:]
        assert "caught up" in dom.stdout
        screenshot = tmp_path / "status.png"
        shot = subprocess.run(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--virtual-time-budget=5000", "--window-size=1100,640",
                f"--screenshot={screenshot}", base + "/",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0


async def test_json_logs_and_rate_limited_refusals(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = await make_topic(partitions=1)
    bad = 60
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for index in range(bad):
            await publisher.publish_raw(encode_key("acct", f"bad{index}"), b"\xc1")
    command = [
        *worker_command(kafka_bootstrap, topic, "json-group", tmp_path / "db"),
    ]
    command.insert(command.index("run"), "--log-format")
    command.insert(command.index("run"), "json")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        read_until(process, "refused invalid record")
        await wait_until(
            lambda: (tmp_path / "db" / "CURRENT").exists(), 30, what="the store to exist"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        rest = finish(process, 60)
    lines: list[dict[str, Any]] = [json.loads(line) for line in rest.splitlines() if line.strip()]
    refused = [line for line in lines if line["message"].startswith("refused invalid record")]
    summary = [line for line in lines if "suppressed" in line["message"]]
    # One line was consumed by read_until. At most the burst (20) per 10 s window, and every
    # record is either logged or counted in a summary (a re-read after a rebalance may add).
    shown = 1 + len(refused)
    held_back = sum(line["suppressed"]["invalid"] for line in summary)
    assert summary, "no summary of the suppressed lines"
    assert shown <= 20 * (len(summary) + 1)  # a last window may hold nothing back
    assert shown + held_back >= bad
    assert refused and {"partition", "offset", "grain_type", "grain_key"} <= refused[0].keys()


async def test_a_taken_http_port_is_one_line(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    import socket

    topic = await make_topic(partitions=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *worker_command(kafka_bootstrap, topic, "g", tmp_path / "db"),
                "--http", f"127.0.0.1:{port}",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"stream-replica: --http 127.0.0.1:{port}: cannot listen")
    )
