"""Pieces of the read benchmark (benchmarks/read_bench.py): its result types and their tables,
the child worker process, the Python-client load child, and waiting for the group to settle."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from stream_replica.client import AsyncReplicaClient


@dataclass
class ReadCase:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # wrk: non-2xx + socket errors; the client: reads that found nothing
    requests: int
    delay_p50_ms: float  # worker A's consume delay (produce timestamp -> applied) meanwhile
    delay_p99_ms: float
    delay_samples: int


@dataclass
class ReadFigures:
    records: int
    grains: int
    seconds: float
    connections: int
    client_concurrency: int
    rate: int
    load_at_start: str
    load_at_end: str = ""
    fetch_runs: int = 0
    fetch_without: float = 0.0
    fetch_with_idle_http: float = 0.0
    wrk: str = ""
    read_grains: int = 0
    cases: list[ReadCase] = field(default_factory=list)
    failed: str | None = None

    def fetch_line(self) -> str:
        if not self.fetch_without:
            return "fetch loop: not measured"
        change = self.fetch_with_idle_http / self.fetch_without - 1
        return (
            f"fetch loop, records/s (median of {self.fetch_runs} interleaved runs): "
            f"without --http {self.fetch_without:,.0f}; with --http, server idle "
            f"{self.fetch_with_idle_http:,.0f} ({change:+.1%})"
        )

    def table(self) -> str:
        head = (
            "| reads | requests/s | p50 ms | p99 ms | non-2xx | consume delay p50 ms "
            "| consume delay p99 ms | states timed |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        rows = [
            f"| {c.name} | {c.rps:,.0f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.non_2xx} "
            f"| {c.delay_p50_ms:.1f} | {c.delay_p99_ms:.1f} | {c.delay_samples:,} |"
            for c in self.cases
        ]
        lines = [self.fetch_line(), head, *rows]
        if self.failed:
            lines.append(f"read benchmark failed: {self.failed}")
        lines.append(f"load average (1/5/15 min): {self.load_at_start} -> {self.load_at_end}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The ``## Reads over HTTP`` section of bench.md."""
        return "\n\n".join(
            [
                "## Reads over HTTP",
                f"`python -m benchmarks.read_bench` (here: {self.records:,} records, "
                f"{self.grains:,} grains, {self.seconds:g} s per case). Two workers on one "
                "6-partition topic while a producer publishes "
                f"{self.rate:,} records/s to it; worker A runs in the bench process (its "
                "consume delay is timed for every state written), worker B in a child "
                f"process. {self.wrk or 'wrk'} (1 thread, {self.connections} keep-alive "
                f"connections, closed loop) reads {self.read_grains:,} grains A owns: from A "
                "(local hits) and from B (forwarded to A). The Python client case is "
                f"`AsyncReplicaClient` with {self.client_concurrency} tasks in a child "
                "process (it sends each read to the owner). Everything shares 2 cores with "
                "the broker and the producer.",
                self.table().replace("\n", "\n\n", 1),
            ]
        )


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


class Worker:
    """``stream-replica run --http 127.0.0.1:0`` in a child process; ``endpoint`` from its log.

    Its stderr goes to a file, not a pipe: a thread draining a pipe would take the GIL for
    every line the child logs, away from the in-process worker's event loop being measured."""

    def __init__(self, bootstrap: str, topic: str, group: str, db: Path) -> None:
        command = [
            sys.executable, "-m", "stream_replica", "run", "--bootstrap-servers", bootstrap,
            "--topic", topic, "--group", group, "--db", str(db), "--http", "127.0.0.1:0",
        ]  # fmt: skip
        self.log = db.with_name(db.name + ".log")
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(command, stderr=stderr)
        self.endpoint = ""
        deadline = time.monotonic() + 60
        while not self.endpoint:
            match = re.search(r"advertised as (\S+)", self.log.read_text(errors="replace"))
            if match:
                self.endpoint = match.group(1)
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"worker for {topic} did not start (exit {self.process.poll()}; log {self.log})"
                )
            else:
                time.sleep(0.05)  # polling the child's log until the line appears

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def wait_for_owners(
    base: str, partitions: int, endpoints: list[str], node: asyncio.Task[None]
) -> dict[int, str]:
    """partition -> active endpoint, once every partition has a caught-up owner and every
    endpoint owns one."""
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while True:
            if node.done():
                node.result()
                raise RuntimeError("the in-process worker stopped")
            owners: dict[int, str] = {}
            try:
                async with session.get(base + "/partitions") as response:
                    found = await response.json()
                owners = {
                    int(p): e["replicas"][0]["endpoint"]
                    for p, e in found["partitions"].items()
                    if e["replicas"] and e["replicas"][0].get("caught_up")
                }
            except (aiohttp.ClientError, ValueError, KeyError):
                pass
            if len(owners) == partitions and set(endpoints) <= set(owners.values()):
                return owners
            if time.monotonic() > deadline:
                raise RuntimeError(f"the 2 workers did not settle within 120 s: {owners}")
            await asyncio.sleep(0.5)


async def client_child(argv: Sequence[str]) -> int:
    """``read_bench _client``: AsyncReplicaClient reads over the grains for ``--seconds``;
    prints one JSON line."""
    parser = argparse.ArgumentParser(prog="read_bench _client")
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--grains-file", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    grains: list[Any] = json.loads(args.grains_file.read_text())
    latencies: list[float] = []
    errors = 0
    refreshes = 0
    async with AsyncReplicaClient(args.endpoints.split(",")) as client:
        learn = client.refresh

        async def counted(deadline: float | None = None) -> None:  # one per read: a bug
            nonlocal refreshes
            refreshes += 1
            await learn(deadline)

        client.refresh = counted  # type: ignore[method-assign]
        await client.get(*grains[0])  # learn the map
        index = 0
        started_at = time.time()
        deadline = time.perf_counter() + args.seconds

        async def one() -> None:
            nonlocal index, errors
            while time.perf_counter() < deadline:
                grain = grains[index % len(grains)]
                index += 1
                began = time.perf_counter()
                if await client.get(*grain) is None:
                    errors += 1
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
        ended_at = time.time()
    latencies.sort()
    print(
        json.dumps(
            {
                "rps": len(latencies) / elapsed,
                "p50_ms": quantile(latencies, 0.5) * 1000,
                "p99_ms": quantile(latencies, 0.99) * 1000,
                "errors": errors,
                "requests": len(latencies),
                "map_refreshes": refreshes,
                "started_at": started_at,
                "ended_at": ended_at,
            }
        ),
        flush=True,
    )
    return 0
