"""Memory and scale: one worker with a memory budget on 1M and 10M grains.

    python -m benchmarks.memory_bench [--grains 1000000,10000000] [--budget-mib 256]

For each grain count: pre-fills a 6-partition compacted topic with one record per grain
(payload 64 B-4 KiB lognormal, median ~256 B; several producer processes), then

1. **build**: ``stream-replica run --memory-budget-mib B`` on an empty store, fresh group:
   peak RSS (``VmHWM``) against the budget, records/s and MiB/s after the group join, and the
   worker's longest event-loop stall (its watchdog's exit line);
2. **open / close**: the built store opened and closed in this process with the worker's
   options (both run on the worker's event loop), timed;
3. **wipe + rebuild**: the store's checkpoints are set past the end offsets, so the worker
   wipes every partition on assignment (range deletes, on the loop) and re-reads the topic:
   seconds, MiB/s, peak RSS, longest stall;
4. **raw ceiling**: raw aiokafka ``getmany(100)`` counting the same topic's records
   (``benchmarks.bench _raw``);
5. **revoke**: a worker in this process resumes on the rebuilt store, a second worker joins
   its group and takes part of the partitions; the first one's longest loop stall (resume,
   revocation, stop) and the store's close are reported.

Prints one table and a JSON line; ``benchmarks.bench`` (``make bench``) runs it unless
``--small`` or ``--skip-memory``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from benchmarks.common import (
    GRAIN_TYPES,
    MIB,
    GroupWatcher,
    Prefill,
    Workload,
    create_topic,
    delete_topics,
    run_measured,
    run_measured_many,
    worker_command,
)
from stream_replica import admin
from stream_replica.contract import Entry, EntryType, GrainId, encode_key, encode_value
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.memory import HEAD_ENTRY_BYTES, plan_memory
from stream_replica.store import Checkpoint, ReplicaStore

ROOT = Path(__file__).resolve().parent.parent
_STALL_LINE = re.compile(
    r"longest event-loop stall: (\d+) ms \((\d+) over \d+ ms(?:; longest on the CPU (\d+) ms)?"
    r"(?:; longest waiting for a core (\d+) ms)?\)?(?:; the longest in (.*))?$",
    re.MULTILINE,
)
# The first positioning line of a partition; a wipe logs it at WARNING (common.py's
# worker_assigned_at looks for INFO only).
_ASSIGNED_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?:INFO|WARNING) stream_replica\.worker: "
    r"partition \d+: ",
    re.MULTILINE,
)


def assigned_at(stderr: str) -> float | None:
    """Epoch time of the worker's first partition-positioning log line (local time)."""
    match = _ASSIGNED_LINE.search(stderr)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


# --- results --------------------------------------------------------------------------------


@dataclass
class Case:
    """One worker (or raw consumer) reading a whole topic."""

    name: str
    grains: int
    records: int
    bytes: int
    budget_mib: int | None
    wall_s: float = 0.0
    join_s: float | None = None
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    longest_stall_ms: float | None = None
    longest_on_cpu_ms: float | None = None  # the part of a stall the loop thread was running
    # the part of a stall the loop thread was runnable but had no core (Linux's run queue)
    longest_waiting_ms: float | None = None
    longest_where: str | None = None  # where the loop was in the longest stall (its stack)
    stalls_over_100ms: int | None = None
    failed: str | None = None

    @property
    def read_s(self) -> float:
        return self.wall_s - (self.join_s or 0.0)

    @property
    def records_s(self) -> float:
        return self.records / self.read_s if self.read_s > 0 else 0.0

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.read_s if self.read_s > 0 else 0.0


@dataclass
class Step:
    """A synchronous store call the worker makes on its event loop, timed alone."""

    name: str
    grains: int
    seconds: float


@dataclass
class MemoryReport:
    budget_mib: int
    plan: str
    head_entry_bytes: float
    load_at_start: str
    load_at_end: str = ""
    prefills: list[Prefill] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    # (grains, dirty MiB after the pre-fill, seconds to write it back before the build)
    writeback: list[tuple[int, float, float]] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            "| case | grains | records | read s | records/s | MiB/s | peak RSS MiB | budget "
            "MiB | longest loop stall ms | longest on CPU ms | longest waiting for a core ms | "
            "stalls > 100 ms | CPU s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in self.cases:
            if c.failed:
                lines.append(f"| {c.name} | {c.grains:,} | FAILED: {c.failed} |")
                continue
            stall = "" if c.longest_stall_ms is None else f"{c.longest_stall_ms:.0f}"
            over = "" if c.stalls_over_100ms is None else str(c.stalls_over_100ms)
            on_cpu = "" if c.longest_on_cpu_ms is None else f"{c.longest_on_cpu_ms:.0f}"
            waiting = "" if c.longest_waiting_ms is None else f"{c.longest_waiting_ms:.0f}"
            budget = "" if c.budget_mib is None else str(c.budget_mib)
            lines.append(
                f"| {c.name} | {c.grains:,} | {c.records:,} | {c.read_s:.1f} | "
                f"{c.records_s:,.0f} | {c.mib_s:.1f} | {c.peak_rss_mib:.0f} | {budget} | "
                f"{stall} | {on_cpu} | {waiting} | {over} | {c.cpu_s:.1f} |"
            )
        return "\n".join(lines)

    def steps_table(self) -> str:
        lines = ["| store call on the loop | grains | ms |", "|---|---:|---:|"]
        lines += [f"| {s.name} | {s.grains:,} | {s.seconds * 1000:.0f} |" for s in self.steps]
        return "\n".join(lines)

    def ratio_lines(self) -> list[str]:
        out = []
        for grains in sorted({c.grains for c in self.cases}):
            by = {c.name.split(" ")[0]: c for c in self.cases if c.grains == grains}
            rebuild, raw = by.get("rebuild"), by.get("raw")
            if rebuild and raw and not rebuild.failed and not raw.failed and raw.read_s > 0:
                out.append(
                    f"rebuild of {grains:,} grains: {rebuild.read_s:.1f} s, "
                    f"{rebuild.mib_s:.1f} MiB/s vs raw aiokafka {raw.read_s:.1f} s, "
                    f"{raw.mib_s:.1f} MiB/s: {rebuild.mib_s / raw.mib_s:.2f} of the ceiling"
                )
        return out

    def markdown(self) -> list[str]:
        return [
            f"One worker, `--memory-budget-mib {self.budget_mib}` ({self.plan}); one record "
            "per grain (payload 64 B-4 KiB lognormal, median ~256 B), 6 partitions. Measured "
            f"head-cache entry: {self.head_entry_bytes:.0f} B (planned {HEAD_ENTRY_BYTES} B). "
            f"Load average at the start: {self.load_at_start}; at the end: {self.load_at_end}.",
            "",
            self.table(),
            "",
            self.steps_table(),
            "",
            *(f"**{line}**  " for line in self.ratio_lines()),
            "",
            *(
                f"Before the {grains:,}-grain build: the pre-fill left {dirty:,.0f} MiB of dirty "
                f"page cache (the broker's log), written back in {seconds:.1f} s (`sync`) so that "
                "the build is not throttled by the kernel's writeback of the bench's own load.  "
                for grains, dirty, seconds in self.writeback
            ),
            "",
            *self.where_lines(),
        ]

    def where_lines(self) -> list[str]:
        """Where each worker's event loop was during its longest stall (the watchdog's stack
        sample; none when no stall lasted long enough to be sampled)."""
        found = [c for c in self.cases if c.longest_where]
        if not found:
            return []
        return [
            "Where the loop was in each case's longest stall (the watchdog's stack sample, "
            "innermost frame first):",
            "",
            *(f"- {c.name}, {c.grains:,} grains: `{c.longest_where}`" for c in found),
            "",
        ]


def dirty_mib() -> float | None:
    """The machine's dirty page cache (/proc/meminfo ``Dirty``), MiB; None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("Dirty:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


async def settle_writeback(timeout_s: float = 120.0) -> tuple[float, float]:
    """Write the page cache's dirty data back (``sync``) before a build is measured: the
    pre-fill leaves GBs of the broker's log dirty, and the kernel's writeback of it throttles
    every process that writes meanwhile (balance_dirty_pages), the worker's RocksDB WAL writes
    too: one 331 ms event-loop stall, 316 ms of it blocked in the write, came from that. That
    is the bench's own load on one shared disk, not the worker's. Returns (dirty MiB before,
    seconds taken)."""
    before = dirty_mib() or 0.0
    started = time.monotonic()
    await asyncio.to_thread(os.sync)
    # a kernel counter: nothing to wait on but a poll (sync has written most of it already)
    while (dirty_mib() or 0.0) > 64 and time.monotonic() - started < timeout_s:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    return before, time.monotonic() - started


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --- pre-fill: one record per grain, several producer processes -----------------------------


def _grain(index: int) -> tuple[str, str]:
    return GRAIN_TYPES[index % len(GRAIN_TYPES)], f"g-{index:08d}"


async def produce_range(
    bootstrap: str, topic: str, partitions: int, first: int, last: int, seed: int
) -> tuple[int, int]:
    """Write one FullState record for each grain in ``first..last-1``: hand-built batches per
    partition, as benchmarks.common.prefill, but streamed (no per-grain lists: 10M grains)."""
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 20)
    mu, sigma = math.log(256), 0.75
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * MIB,
    )
    await producer.start()
    builders: dict[int, Any] = {}
    pending: list[asyncio.Future[Any]] = []
    records = size = 0
    now = time.time_ns() // 1_000_000

    async def ship(partition: int) -> None:
        pending.append(
            await producer.send_batch(builders.pop(partition), topic, partition=partition)
        )
        if len(pending) >= 64:
            await asyncio.gather(*pending)
            pending.clear()

    try:
        for index in range(first, last):
            grain_type, grain_key = _grain(index)
            key = encode_key(grain_type, grain_key)
            length = min(4096, max(64, int(rng.lognormvariate(mu, sigma))))
            start = rng.randrange(0, len(pool) - length)
            entry = Entry(
                grain_type,
                grain_key,
                1,
                now,
                "primary",
                EntryType.FULL_STATE,
                pool[start : start + length],
            )
            value = encode_value(entry)
            partition = (murmur2(key) & 0x7FFFFFFF) % partitions
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                await ship(partition)
                builder = builders[partition] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
            records += 1
            size += len(key) + len(value)
        for partition in list(builders):
            await ship(partition)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return records, size


async def produce_child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="memory_bench _produce")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--last", type=int, required=True)
    args = parser.parse_args(argv)
    records, size = await produce_range(
        args.bootstrap_servers, args.topic, args.partitions, args.first, args.last, args.first
    )
    print(json.dumps({"records": records, "bytes": size}), flush=True)
    return 0


async def prefill_grains(
    bootstrap: str, topic: str, partitions: int, grains: int, producers: int, logs: Path
) -> Prefill:
    await create_topic(bootstrap, topic, partitions)
    started = time.monotonic()
    step = -(-grains // producers)
    commands = [
        (
            f"produce-{topic}-{n}",
            [
                sys.executable,
                "-m",
                "benchmarks.memory_bench",
                "_produce",
                "--bootstrap-servers",
                bootstrap,
                "--topic",
                topic,
                "--partitions",
                str(partitions),
                "--first",
                str(n * step),
                "--last",
                str(min(grains, (n + 1) * step)),
            ],
        )
        for n in range(producers)
        if n * step < grains
    ]
    results = await run_measured_many(commands, logs, timeout_s=3600, cwd=ROOT)
    size = 0
    for result in results:
        info = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
        if result.exit_code != 0 or "bytes" not in info:
            raise RuntimeError(f"{result.name} failed: {result.stderr_tail(3)}")
        size += info["bytes"]
    seconds = time.monotonic() - started
    ends = await admin.end_offsets(bootstrap, topic, partitions)
    if sum(ends.values()) != grains:
        raise RuntimeError(f"pre-fill of {topic}: wanted {grains} records, end offsets {ends}")
    workload = Workload(grains, grains, delta_rate=0.0, tombstone_rate=0.0)
    return Prefill(topic, partitions, grains, size, seconds, ends, workload)


# --- measurements ---------------------------------------------------------------------------


def head_entry_bytes(entries: int = 200_000) -> float:
    """What one head-cache entry costs, measured by tracemalloc: a store's cache filled by
    writing one state per grain (the key body and packed head per grain, the dict's slots)."""
    with tempfile.TemporaryDirectory() as scratch:
        # room for all of them in the young generation: nothing retired while measuring
        store = ReplicaStore(Path(scratch) / "db", "t", head_cache_entries=4 * entries)
        try:
            grains = [_grain(index) for index in range(entries)]
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for start in range(0, entries, 1000):
                    changes: dict[GrainId, GrainState | None] = {
                        grain: GrainState(1, 0, "primary", b"x", index % 6, index, -1)
                        for index, grain in enumerate(grains[start : start + 1000], start)
                    }
                    store.apply(changes, {}, FoldCounts())
                    del changes  # only what the store keeps counts: the cache
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            return held / entries
        finally:
            store.close()


class MemoryBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bootstrap: str = args.bootstrap_servers
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(args.workdir).resolve() / f"memory-{self.run_id}"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        plan = plan_memory(args.budget_mib)
        self.report = MemoryReport(
            args.budget_mib, plan.describe().split(": ", 1)[1], head_entry_bytes(), load_average()
        )

    def worker_cmd(self, topic: str, group: str, db: Path) -> list[str]:
        return worker_command(
            self.bootstrap, topic, group, db, "--memory-budget-mib", str(self.args.budget_mib)
        )

    async def worker(self, name: str, data: Prefill, db: Path, watcher: GroupWatcher) -> Case:
        case = Case(name, data.records, data.records, data.bytes, self.args.budget_mib)
        group = f"memory-{self.run_id}-{name.split(' ')[0]}-{data.records}"
        result = await run_measured(
            f"{name}-{data.records}",
            self.worker_cmd(data.topic, group, db),
            self.logs,
            done=watcher.caught_up(group, data),
            timeout_s=300 + data.records / 2000,
            cwd=ROOT,
        )
        case.wall_s, case.cpu_s, case.peak_rss_mib = (
            result.wall_s,
            result.cpu_s,
            result.peak_rss_mib,
        )
        if result.exit_code != 0 or result.timed_out:
            case.failed = f"exit {result.exit_code}: {result.stderr_tail(1)[:200]}"
            return case
        stderr = result.stderr_path.read_text(errors="replace")
        assigned = assigned_at(stderr)
        if assigned is not None:
            case.join_s = assigned - result.launched
        match = _STALL_LINE.search(stderr)
        if match:
            case.longest_stall_ms = float(match.group(1))
            case.stalls_over_100ms = int(match.group(2))
            if match.group(3) is not None:
                case.longest_on_cpu_ms = float(match.group(3))
            if match.group(4) is not None:
                case.longest_waiting_ms = float(match.group(4))
            case.longest_where = match.group(5)
        return case

    async def raw(self, data: Prefill) -> Case:
        case = Case("raw aiokafka getmany(100)", data.records, data.records, data.bytes, None)
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.bench",
            "_raw",
            "--bootstrap-servers",
            self.bootstrap,
            "--topic",
            data.topic,
            "--group",
            f"memory-{self.run_id}-raw-{data.records}",
            "--records",
            str(data.total_offsets),
        ]
        result = await run_measured(
            f"raw-{data.records}", cmd, self.logs, timeout_s=300 + data.records / 2000, cwd=ROOT
        )
        case.cpu_s, case.peak_rss_mib = result.cpu_s, result.peak_rss_mib
        lines = result.stdout.strip().splitlines()
        if result.exit_code != 0 or not lines:
            case.failed = f"exit {result.exit_code}: {result.stderr_tail(1)[:200]}"
            return case
        info = json.loads(lines[-1])
        case.wall_s = info["done_at"] - result.launched
        case.join_s = info["assigned_at"] - result.launched
        return case

    def store_steps(self, data: Prefill, db: Path, past_end: bool) -> None:
        """Open the built store as the worker does, with ``past_end`` set every checkpoint
        past its end offset (so the next worker wipes and rebuilds on assignment), close it;
        open and close timed."""
        plan = plan_memory(self.args.budget_mib)
        started = time.perf_counter()
        store = ReplicaStore(db, data.topic, memory=plan)
        opened = time.perf_counter()
        now = int(time.time() * 1000)
        if past_end:
            store.set_checkpoints(
                {p: Checkpoint(end + 1_000_000, now) for p, end in data.end_offsets.items()}
            )
        closing = time.perf_counter()
        store.close()
        closed = time.perf_counter()
        self.report.steps.append(Step("open (ReplicaStore)", data.records, opened - started))
        self.report.steps.append(Step("close", data.records, closed - closing))

    async def revoke(self, data: Prefill, db: Path) -> None:
        """A worker in this process resumes on the built store (nothing to read); a second
        worker process joins its group, so it revokes part of its partitions; then both stop.
        Its watchdog's longest stall covers the resume, the revocation and the stop; the
        store's close after it is timed on its own."""
        from stream_replica.settings import WorkerSettings
        from stream_replica.worker import ReplicaWorker

        group = f"memory-{self.run_id}-revoke-{data.records}"
        plan = plan_memory(self.args.budget_mib)
        store = ReplicaStore(db, data.topic, memory=plan)
        settings = WorkerSettings(
            bootstrap_servers=self.bootstrap,
            topic=data.topic,
            group=group,
            db=db,
            memory_budget_mib=self.args.budget_mib,
        )
        stop = asyncio.Event()
        worker = ReplicaWorker(settings, store, stop)
        assigned, revoked = asyncio.Event(), asyncio.Event()
        on_assigned, on_revoked = worker.on_partitions_assigned, worker.on_partitions_revoked

        async def assigned_hook(partitions: Any) -> None:
            await on_assigned(partitions)
            if partitions:
                assigned.set()

        async def revoked_hook(partitions: Any) -> None:
            await on_revoked(partitions)
            if partitions:
                revoked.set()

        worker.on_partitions_assigned = assigned_hook  # type: ignore[method-assign,assignment]
        worker.on_partitions_revoked = revoked_hook  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(worker.run())
        other: asyncio.subprocess.Process | None = None
        failed = None
        try:
            await asyncio.wait_for(assigned.wait(), 120)
            with (self.logs / f"revoke-other-{data.records}.err").open("wb") as err:
                other = await asyncio.create_subprocess_exec(
                    *self.worker_cmd(data.topic, group, self.workdir / "revoke-other-db"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=err,
                    cwd=ROOT,
                )
            await asyncio.wait_for(revoked.wait(), 120)
            assigned.clear()
            await asyncio.wait_for(assigned.wait(), 120)  # the rebalance is over
        except TimeoutError:
            failed = "no rebalance within 120 s"
        finally:
            stop.set()
            await asyncio.wait_for(task, 120)
            if other is not None:
                other.terminate()
                await other.wait()
            closing = time.perf_counter()
            store.close()
            closed = time.perf_counter()
            shutil.rmtree(self.workdir / "revoke-other-db", ignore_errors=True)
        if failed is not None:
            print(f"revoke case failed: {failed}", flush=True)
            return
        self.report.steps.append(
            Step(
                "resume + revoke + stop (worker's longest loop stall)",
                data.records,
                worker.watchdog.longest_s,
            )
        )
        self.report.steps.append(Step("close after the revoke", data.records, closed - closing))

    async def one(self, grains: int, watcher: GroupWatcher) -> None:
        topic = f"memory-{self.run_id}-{grains}"
        data = await prefill_grains(
            self.bootstrap, topic, 6, grains, self.args.producers, self.logs
        )
        self.report.prefills.append(data)
        print(
            f"pre-fill {grains:,} grains: {data.bytes / MIB:,.0f} MiB in {data.seconds:.1f} s "
            f"({grains / data.seconds:,.0f} records/s, {self.args.producers} producers); "
            f"load {load_average()}",
            flush=True,
        )
        dirty_mib, settle_s = await settle_writeback()
        print(
            f"writeback of the pre-fill: {dirty_mib:,.0f} MiB dirty in the page cache, written "
            f"back in {settle_s:.1f} s before the build",
            flush=True,
        )
        self.report.writeback.append((grains, dirty_mib, settle_s))
        db = self.workdir / f"db-{grains}"
        try:
            cases = [await self.worker("build (empty store)", data, db, watcher)]
            print(self.report.table().splitlines()[0] + "\n" + _last_row(cases[0]), flush=True)
            if not cases[0].failed:
                self.store_steps(data, db, past_end=not self.args.skip_rebuild)
                if not self.args.skip_rebuild:
                    cases.append(await self.worker("rebuild (wipe + re-read)", data, db, watcher))
                    print(_last_row(cases[-1]), flush=True)
                    cases.append(await self.raw(data))
                    print(_last_row(cases[-1]), flush=True)
                await self.revoke(data, db)
                print(self.report.steps_table(), flush=True)
            self.report.cases += cases
        finally:
            shutil.rmtree(db, ignore_errors=True)
            try:
                await delete_topics(self.bootstrap, [topic])
            except Exception as exc:
                print(f"could not delete topic {topic}: {exc}", file=sys.stderr)

    async def run(self) -> MemoryReport:
        await admin.wait_for_broker(self.bootstrap, 60)
        async with GroupWatcher(self.bootstrap) as watcher:
            for grains in self.args.grains:
                await self.one(grains, watcher)
        self.report.load_at_end = load_average()
        return self.report


def _last_row(case: Case) -> str:
    report = MemoryReport(0, "", 0.0, "")
    report.cases.append(case)
    return report.table().splitlines()[-1]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_bench",
        description="Peak RSS vs the memory budget, rebuild speed and loop stalls at scale.",
    )
    parser.add_argument(
        "--grains",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1_000_000, 10_000_000],
        help="grain counts, one record each (1000000,10000000)",
    )
    parser.add_argument("--budget-mib", type=int, default=256, help="the worker's budget (256)")
    parser.add_argument("--producers", type=int, default=2, help="pre-fill processes (2)")
    parser.add_argument(
        "--skip-rebuild", action="store_true", help="no wipe + rebuild and no raw ceiling"
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    parser.add_argument("--workdir", default=".bench", help="state dirs and child logs")
    return parser.parse_args(argv)


def from_bench_args(bench_args: argparse.Namespace) -> argparse.Namespace:
    """This benchmark's options from ``benchmarks.bench``'s (``--memory-grains``)."""
    return parse_args(
        [
            "--grains",
            bench_args.memory_grains,
            "--bootstrap-servers",
            bench_args.bootstrap_servers,
            "--workdir",
            bench_args.workdir,
        ]
    )


async def run_memory_bench(args: argparse.Namespace) -> MemoryReport:
    bench = MemoryBench(args)
    print(
        f"memory bench {bench.run_id}: budget {args.budget_mib} MiB ({bench.report.plan}); "
        f"head-cache entry {bench.report.head_entry_bytes:.0f} B measured, "
        f"{HEAD_ENTRY_BYTES} B planned; load {bench.report.load_at_start}; logs in {bench.logs}",
        flush=True,
    )
    return await bench.run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_produce":
        return asyncio.run(produce_child(argv[1:]))
    report = asyncio.run(run_memory_bench(parse_args(argv)))
    print("\n" + "\n".join(report.markdown()), flush=True)
    print(
        json.dumps(
            {"cases": [asdict(c) for c in report.cases], "steps": [asdict(s) for s in report.steps]}
        )
    )
    return 1 if any(c.failed for c in report.cases) else 0


if __name__ == "__main__":
    sys.exit(main())
