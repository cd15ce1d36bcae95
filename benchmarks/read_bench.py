"""The read API's costs on loopback (``python -m benchmarks.read_bench``; ``make bench`` runs a
short version through :func:`measure_reads`):

1. Fetch-loop throughput with the HTTP server idle vs without ``--http`` (in-process
   ``run_node``, a fresh group and store per run, runs interleaved): the server must cost
   < 5 %.
2. Reads on 2 workers while a producer publishes at ``--rate`` records/s (bench.py's
   ``_steady-producer``) to the topic they consume: worker A runs in this process (so every
   state it writes is timed: produce timestamp -> RocksDB write returned), worker B in a child
   process. wrk (installed when missing) reads A's grains from A (local hits) and from B
   (forwarded to A); a child process reads them with ``AsyncReplicaClient``. Each case
   reports requests/s, p50/p99 latency, non-2xx, and A's consume delay p50/p99 meanwhile.

Needs a broker (``make broker``); KAFKA_BOOTSTRAP_SERVERS overrides 127.0.0.1:$KAFKA_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import Workload, delete_topics, prefill, time_states_written
from benchmarks.read_load import (
    ReadCase,
    ReadFigures,
    Worker,
    client_child,
    load_average,
    quantile,
    wait_for_owners,
)
from benchmarks.wrk import ensure_wrk, run_wrk
from stream_replica.node import run_node
from stream_replica.routing import partition_for
from stream_replica.settings import WorkerSettings
from stream_replica.store import ReplicaStore

PARTITIONS = 6
ROOT = Path(__file__).resolve().parent.parent
GRAIN_TYPES = ("account", "cart", "session")  # the order common.Workload and the producer use


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _path(grain: tuple[str, str]) -> str:
    from urllib.parse import quote

    return f"/grains/{quote(grain[0], safe='')}/{quote(grain[1], safe='')}"


async def reads_under_load(
    bootstrap: str, topic: str, grains: int, figures: ReadFigures, workdir: Path
) -> None:
    """Section 2 of the module docstring; fills ``figures.cases``."""
    wrk = ensure_wrk()
    figures.wrk = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    group = f"rb-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    settings = WorkerSettings(
        bootstrap_servers=bootstrap, topic=topic, group=group, db=workdir / "db-a",
        http=f"127.0.0.1:{port}", max_records=100,
    )  # fmt: skip
    store = ReplicaStore(settings.db, topic)
    delays: list[tuple[float, float]] = []  # (applied at, ms) for every state A writes
    time_states_written(
        store, lambda visible_ms, sent_ms: delays.append((visible_ms / 1000, visible_ms - sent_ms))
    )
    stop = asyncio.Event()
    node = asyncio.create_task(run_node(settings, store, stop))
    other = Worker(bootstrap, topic, group, workdir / "db-b")
    producer: asyncio.subprocess.Process | None = None
    try:
        a, b = f"127.0.0.1:{port}", other.endpoint
        owners = await wait_for_owners(f"http://{a}", PARTITIONS, [a, b], node)
        # The producer writes the first half of the grains, the reads go to the second half
        # (all written by the pre-fill, none deleted while we read: every answer is a 200).
        half = grains // 2
        names = [(GRAIN_TYPES[i % 3], f"g-{i:07d}") for i in range(half, grains)]
        mine = [g for g in names if owners[partition_for(g, PARTITIONS)] == a]
        mine = [g for g in mine if store.get(g) is not None]
        paths = [_path(g) for g in mine]
        figures.read_grains = len(paths)
        per_case = figures.seconds
        total = per_case * 4 + 20  # idle, local, forwarded, client, and start-up margins
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.bench", "_steady-producer",
            "--bootstrap-servers", bootstrap, "--topic", topic, "--rate", str(figures.rate),
            "--seconds", str(total), "--grains", str(max(1, half)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        started = time.time()
        while not any(at > started for at, _ in delays[-10:]):  # the producer is flowing
            if time.time() - started > 60:
                raise RuntimeError(f"no record of the producer reached {topic} within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # past the first batches' start-up delay

        def delay_in(begin: float, end: float) -> tuple[float, float, int]:
            window = sorted(ms for at, ms in delays if begin <= at <= end)
            return quantile(window, 0.5), quantile(window, 0.99), len(window)

        begin = time.time()
        await asyncio.sleep(per_case)
        d50, d99, n = delay_in(begin, time.time())
        figures.cases.append(ReadCase("no reads", 0, 0, 0, 0, 0, d50, d99, n))
        for name, target in (("local hits (wrk)", a), ("forwarded (wrk)", b)):
            result = await asyncio.to_thread(
                run_wrk, wrk, f"http://{target}", paths, per_case, figures.connections, workdir
            )
            d50, d99, n = delay_in(result.started_at + 0.2, result.ended_at)
            figures.cases.append(
                ReadCase(name, result.rps, result.p50_ms, result.p99_ms,
                         result.non_2xx + result.socket_errors, result.requests, d50, d99, n)
            )  # fmt: skip
        grains_file = workdir / "grains.json"
        grains_file.write_text(json.dumps(mine))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.read_bench", "_client", "--endpoints",
            f"http://{a},http://{b}", "--grains-file", str(grains_file),
            "--seconds", str(per_case), "--concurrency", str(figures.client_concurrency),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        out, _ = await child.communicate()
        got = json.loads(out.decode().strip().splitlines()[-1])
        print(f"  (client: {got['map_refreshes']} ownership-map refreshes)", flush=True)
        d50, d99, n = delay_in(got["started_at"] + 0.2, got["ended_at"])
        figures.cases.append(
            ReadCase(f"Python client (async, {figures.client_concurrency} tasks)", got["rps"],
                     got["p50_ms"], got["p99_ms"], got["errors"], got["requests"], d50, d99, n)
        )  # fmt: skip
    finally:
        if producer is not None and producer.returncode is None:
            producer.terminate()
            await producer.wait()
        other.stop()
        stop.set()
        await asyncio.wait_for(node, 60)
        store.close()


async def measure_reads(
    bootstrap: str,
    *,
    records: int = 200_000,
    grains: int = 10_000,
    fetch_runs: int = 3,
    seconds: float = 10.0,
    connections: int = 8,
    client_concurrency: int = 16,
    rate: int = 5000,
) -> ReadFigures:
    """Both sections of the module docstring on a fresh topic; never raises (``failed``)."""
    figures = ReadFigures(
        records, grains, seconds, connections, client_concurrency, rate, load_average()
    )
    topic = f"read-bench-{uuid.uuid4().hex[:8]}"
    try:
        filled = await prefill(bootstrap, topic, PARTITIONS, Workload(records, grains))
        ends = dict(filled.end_offsets)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(fetch_runs):
            for http in (False, True):
                rates[http].append(await fetch_rate(bootstrap, topic, ends, http))
        if fetch_runs:  # 0: reads only
            figures.fetch_without = statistics.median(rates[False])
            figures.fetch_with_idle_http = statistics.median(rates[True])
            figures.fetch_runs = fetch_runs
        with tempfile.TemporaryDirectory() as tmp:
            await reads_under_load(bootstrap, topic, grains, figures, Path(tmp))
    except Exception as exc:  # a broken read bench must not lose the rest of `make bench`
        figures.failed = f"{type(exc).__name__}: {exc}"
    finally:
        figures.load_at_end = load_average()
        try:
            await delete_topics(bootstrap, [topic])
        except Exception as exc:
            logging.getLogger(__name__).warning("could not delete %s: %s", topic, exc)
    return figures


async def bench_reads(bootstrap: str, small: bool) -> ReadFigures:
    """The read section of ``make bench`` (``--small``: a short version, 3 s per case)."""
    print("reads over HTTP (wrk; a producer at 5,000 records/s meanwhile) ...", flush=True)
    with quiet_workers():
        if small:
            figures = await measure_reads(
                bootstrap, records=20_000, grains=2_000, fetch_runs=1, seconds=3.0
            )
        else:
            figures = await measure_reads(bootstrap)
    print(figures.table() + "\n", flush=True)
    return figures


@contextlib.contextmanager
def quiet_workers() -> Iterator[None]:
    """The in-process workers log every refused Delta and shadowed state; the bench output
    is for figures (the counters have every record)."""
    names = ("stream_replica", "stream_replica.worker", "stream_replica.watchdog")
    before = {name: logging.getLogger(name).level for name in names}
    logging.getLogger("stream_replica").setLevel(logging.ERROR)
    logging.getLogger("stream_replica.worker").setLevel(logging.CRITICAL)
    logging.getLogger("stream_replica.watchdog").setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


async def main(argv: list[str]) -> int:
    if argv and argv[0] == "_client":
        return await client_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--grains", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="fetch-rate runs per variant (0: none)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per read case")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--concurrency", type=int, default=16, help="Python client tasks")
    parser.add_argument("--rate", type=int, default=5000, help="producer records/s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the in-process workers' progress lines
    bootstrap = os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    )
    with quiet_workers():
        figures = await measure_reads(
            bootstrap, records=args.records, grains=args.grains, fetch_runs=args.runs,
            seconds=args.seconds, connections=args.connections,
            client_concurrency=args.concurrency, rate=args.rate,
        )  # fmt: skip
    print(figures.table())
    return 1 if figures.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
