"""The read API's costs on loopback (``python -m benchmarks.read_bench``):

1. Fetch-loop throughput with the HTTP server idle vs without ``--http`` (in-process
   ``run_node``, a fresh group and store per run, runs interleaved): the server must cost
   < 5 %.
2. Reads on 2 worker processes: requests/s and p50/p99 latency for local hits (sent to the
   owner), forwarded reads (sent to the other worker) and the Python client
   (AsyncReplicaClient), from an asyncio load generator with ``--concurrency`` connections.

Needs a broker (``make broker``); KAFKA_BOOTSTRAP_SERVERS overrides 127.0.0.1:$KAFKA_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import aiohttp

from benchmarks.common import Workload, delete_topics, prefill
from stream_replica.client import AsyncReplicaClient
from stream_replica.node import run_node
from stream_replica.routing import partition_for
from stream_replica.settings import WorkerSettings
from stream_replica.store import ReplicaStore

PARTITIONS = 6


async def fetch_rate(bootstrap: str, topic: str, ends: dict[int, int], http: bool) -> float:
    """Records/s from the first applied record to the last (join time excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = WorkerSettings(
            bootstrap_servers=bootstrap,
            topic=topic,
            group=f"rb-{uuid.uuid4().hex[:8]}",
            db=Path(tmp) / "db",
            http="127.0.0.1:0" if http else None,
        )
        store = ReplicaStore(settings.db, topic)
        stop = asyncio.Event()
        task = asyncio.create_task(run_node(settings, store, stop))
        first = last = None
        total = sum(ends.values())
        try:
            while True:
                await asyncio.sleep(0.02)
                if task.done():
                    task.result()
                done = sum(c.next_offset for c in store.checkpoints().values())
                if first is None and done > 0:
                    first, at_first = time.perf_counter(), done
                if done >= total:
                    last = time.perf_counter()
                    break
        finally:
            stop.set()
            await task
            store.close()
        assert first is not None and last is not None
        return (total - at_first) / (last - first)


class Worker:
    def __init__(self, bootstrap: str, topic: str, group: str, db: Path) -> None:
        command = [
            sys.executable, "-m", "stream_replica", "run", "--bootstrap-servers", bootstrap,
            "--topic", topic, "--group", group, "--db", str(db), "--http", "127.0.0.1:0",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.endpoint = ""
        found = threading.Event()
        stderr = self.process.stderr
        assert stderr is not None

        def drain() -> None:
            for line in stderr:
                match = re.search(r"advertised as (\S+)", line)
                if match:
                    self.endpoint = match.group(1)
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        found.wait(60)
        assert self.endpoint, "worker did not start"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def load(
    urls: list[str], seconds: float, concurrency: int, session: aiohttp.ClientSession
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) of GETs over ``urls`` round robin."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    index = 0

    async def one() -> None:
        nonlocal index, errors
        while time.perf_counter() < deadline:
            target = urls[index % len(urls)]
            index += 1
            started = time.perf_counter()
            async with session.get(target) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return (
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
    )


async def client_load(
    endpoints: list[str], grains: list[tuple[str, str]], seconds: float, concurrency: int
) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with AsyncReplicaClient(endpoints) as client:
        await client.get(*grains[0])  # learn the map
        index = 0

        async def one() -> None:
            nonlocal index, errors
            while time.perf_counter() < deadline:
                grain = grains[index % len(grains)]
                index += 1
                started = time.perf_counter()
                if await client.get(*grain) is None:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return (
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
    )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--grains", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="fetch-rate runs per variant")
    parser.add_argument("--seconds", type=float, default=10.0, help="per read scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the in-process workers' progress lines
    bootstrap = os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    )
    topic = f"read-bench-{uuid.uuid4().hex[:8]}"
    filled = await prefill(
        bootstrap, topic, PARTITIONS, Workload(records=args.records, grains=args.grains)
    )
    ends = dict(filled.end_offsets)
    try:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for http in (False, True):
                rates[http].append(await fetch_rate(bootstrap, topic, ends, http))
        without, with_http = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"fetch loop, records/s (median of {args.runs}): without --http {without:,.0f}; "
              f"with --http, server idle {with_http:,.0f} ({with_http / without - 1:+.1%})")  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            group = f"rb-{uuid.uuid4().hex[:8]}"
            workers = [Worker(bootstrap, topic, group, Path(tmp) / f"db{i}") for i in range(2)]
            try:
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=args.concurrency)
                ) as session:
                    base = [f"http://{w.endpoint}" for w in workers]
                    owners: dict[int, str] = {}
                    while len(owners) < PARTITIONS or any(
                        w.endpoint not in owners.values() for w in workers
                    ):
                        await asyncio.sleep(0.5)
                        async with session.get(base[0] + "/partitions") as response:
                            found = await response.json()
                        owners = {
                            int(p): e["replicas"][0]["endpoint"]
                            for p, e in found["partitions"].items()
                            if e["replicas"] and e["replicas"][0].get("caught_up")
                        }
                    grains = [
                        (t, k)
                        for t in ("account", "cart", "session")
                        for k in (f"g-{i:07d}" for i in range(0, args.grains, 7))
                    ]
                    async with session.get(
                        f"{base[0]}/grains/{grains[0][0]}?limit=1000"
                    ) as response:
                        page = await response.json()
                    grains = [(i["grain_type"], i["grain_key"]) for i in page["items"]]
                    local, forwarded = [], []
                    for grain in grains:
                        owner = owners[partition_for(grain, PARTITIONS)]
                        other = next(w.endpoint for w in workers if w.endpoint != owner)
                        path = f"/grains/{quote(grain[0], safe='')}/{quote(grain[1], safe='')}"
                        local.append(f"http://{owner}{path}")
                        forwarded.append(f"http://{other}{path}")
                    for name, urls in (("local hits", local), ("forwarded", forwarded)):
                        rps, p50, p99, errors = await load(
                            urls, args.seconds, args.concurrency, session
                        )
                        print(f"{name:>16}: {rps:8,.0f} req/s  p50 {p50:6.2f} ms  "
                              f"p99 {p99:6.2f} ms  non-200 {errors}")  # fmt: skip
                rps, p50, p99, errors = await client_load(
                    base, grains, args.seconds, args.concurrency
                )
                print(f"{'Python client':>16}: {rps:8,.0f} req/s  p50 {p50:6.2f} ms  "
                      f"p99 {p99:6.2f} ms  not found {errors}")  # fmt: skip
            finally:
                for worker in workers:
                    worker.stop()
    finally:
        await delete_topics(bootstrap, [topic])
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
