"""Throughput, latency and memory of the replica worker, side by side with its limits.

    python -m benchmarks.bench [--records 500000 --grains 25000 --partitions 6 ...]
    python -m benchmarks.bench --small            # CI-sized

1. Pre-fills a compacted topic with the workload (printed: how long it took).
2. Catches up on that topic, each contender in its own process with a fresh group, and measures
   wall time (launch to done, and after the group join), CPU seconds (``wait4`` rusage) and
   peak RSS (``VmHWM``) of that process: raw aiokafka ``getmany`` counting records (the ceiling for our
   client), Kafka's ConsumerPerformance (JVM; the broker-to-client limit), our worker
   (``stream-replica run``) at max_records 100 and 1000, a Quix Streams app doing the same
   job (``benchmarks/quix_app.py``) and a Kafka Streams app (``benchmarks/kstreams_bench.py``);
   final states are checked against the fold of the log (``benchmarks/verify.py``).
3. Steady state: a worker (in this process, its store's ``apply`` wrapped to time each written
   state) follows a fresh topic while a producer process writes at a fixed rate; reports the
   end-to-end delay (state visible in RocksDB minus the record's ``timestamp_millis``).
4. Growth: grains, payload size, updates per grain per poll, 1-3 workers.
5. Backlog memory: peak RSS catching up on a small and a 10x larger backlog.
(After 2: the floor of the stack per record: the fetch alone, the fast pass's typed decode, a
head-cache lookup, a write-batch put; ``--skip-floor`` leaves it out.)
6. Writes ``bench.md`` and ``bench.png`` to ``--out``; the ratio lines are printed last.

Topics and groups are unique per run (``bench-<id>-...``); topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from benchmarks import kstreams_bench
from benchmarks.common import (
    MIB,
    GroupWatcher,
    Prefill,
    ProcResult,
    Workload,
    create_topic,
    delete_topics,
    run_measured,
    run_measured_many,
    time_states_written,
    worker_assigned_at,
    worker_command,
)
from benchmarks.common import prefill as prefill_topic
from benchmarks.read_bench import bench_reads
from benchmarks.read_load import ReadFigures
from benchmarks.scale_bench import (
    PRODUCTION_INITIAL_DELAY_MS,
    ScaleResult,
    own_broker,
    run_scale,
)
from stream_replica import admin, event_loop

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "dev" / "kafka" / "kafka.sh"
KAFKA_VERSION_FALLBACK = "4.1.1"
log = logging.getLogger("benchmarks.bench")


# --- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One contender (or growth case) catching up on a pre-filled topic."""

    name: str
    records: int
    bytes: int
    wall_s: float  # process launch to done
    join_s: float | None = None  # process launch to partitions assigned / first record
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    note: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    failed: str | None = None

    @property
    def rate(self) -> float:
        return self.records / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def consume_s(self) -> float | None:
        if self.join_s is None:
            return None
        return self.wall_s - self.join_s

    @property
    def rate_after_join(self) -> float | None:
        consume = self.consume_s
        return self.records / consume if consume and consume > 0 else None

    @property
    def mib_s_after_join(self) -> float | None:
        consume = self.consume_s
        return self.bytes / MIB / consume if consume and consume > 0 else None

    @property
    def best_rate(self) -> float:
        """records/s after the group join when measured, else from launch."""
        after = self.rate_after_join
        return after if after is not None else self.rate

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "records": self.records,
            "bytes": self.bytes,
            "wall_s": self.wall_s,
            "join_s": self.join_s,
            "records_per_s": self.rate,
            "records_per_s_after_join": self.rate_after_join,
            "mib_per_s_after_join": self.mib_s_after_join,
            "cpu_s": self.cpu_s,
            "peak_rss_mib": self.peak_rss_mib,
            "note": self.note,
            "counts": self.counts,
            "failed": self.failed,
        }


def _fmt(value: float | None, digits: int = 1, thousands: bool = False) -> str:
    if value is None:
        return "-"
    if thousands:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


ROW_HEADER = (
    "| contender | records | wall s | join s | records/s | records/s after join "
    "| MiB/s after join | CPU s | CPU µs/record | peak RSS MiB | note |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def row_line(row: Row) -> str:
    if row.failed:
        return f"| {row.name} | - | - | - | - | - | - | - | - | - | {row.failed} |"
    per_record = row.cpu_s * 1e6 / row.records if row.cpu_s is not None and row.records else None
    return (
        f"| {row.name} | {row.records:,} | {row.wall_s:.2f} | {_fmt(row.join_s, 2)} "
        f"| {row.rate:,.0f} | {_fmt(row.rate_after_join, thousands=True)} "
        f"| {_fmt(row.mib_s_after_join)} | {_fmt(row.cpu_s)} | {_fmt(per_record, 0)} "
        f"| {_fmt(row.peak_rss_mib)} | {row.note} |"
    )


def rows_table(rows: Sequence[Row]) -> str:
    return "\n".join([ROW_HEADER, *(row_line(r) for r in rows)])


@dataclass
class Steady:
    rate: int
    seconds: float
    produced: int = 0
    produce_s: float = 0.0
    samples: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    worker_cpu_pct: float = 0.0
    catch_up_s: float = 0.0
    failed: str | None = None

    def table(self) -> str:
        if self.failed:
            return f"steady state failed: {self.failed}"
        achieved = self.produced / self.produce_s if self.produce_s else 0.0
        return (
            "| target rate | produced | achieved rate | states timed | p50 ms | p99 ms | max ms "
            "| worker CPU % of a core | tail catch-up s |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {self.rate:,}/s for {self.seconds:.0f} s | {self.produced:,} | {achieved:,.0f}/s "
            f"| {self.samples:,} | {self.p50_ms:.1f} | {self.p99_ms:.1f} | {self.max_ms:.1f} "
            f"| {self.worker_cpu_pct:.0f} | {self.catch_up_s:.2f} |"
        )


@dataclass
class Breakdown:
    """Per-stage time of the worker in this process (wall time inside each stage)."""

    max_records: int
    records: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    longest_stall_ms: float | None = None  # the worker's loop-stall watchdog, whole run
    failed: str | None = None

    def table(self) -> str:
        if self.failed:
            return f"breakdown failed: {self.failed}"
        per = 1e6 / self.records
        lines = [
            "| stage | s | µs/record | share of wall |",
            "|---|---:|---:|---:|",
        ]
        for label, seconds in sorted(self.stages.items(), key=lambda kv: -kv[1]):
            lines.append(
                f"| {label} | {seconds:.2f} | {seconds * per:.2f} "
                f"| {100 * seconds / self.wall_s:.0f} % |"
            )
        rest = self.wall_s - sum(self.stages.values())
        lines.append(
            f"| everything else (loop, Polled records, DLQ/log, commits, idle) | {rest:.2f} "
            f"| {rest * per:.2f} | {100 * rest / self.wall_s:.0f} % |"
        )
        lines.append(
            f"| **total** ({self.records / self.wall_s:,.0f} records/s; CPU "
            f"{self.cpu_s:.2f} s = {self.cpu_s * per:.1f} µs/record incl. RocksDB threads) "
            f"| {self.wall_s:.2f} | {self.wall_s * per:.2f} | 100 % |"
        )
        if self.longest_stall_ms is not None:
            lines.append(
                f"\nLongest event-loop stall (the worker's watchdog, start to stop): "
                f"{self.longest_stall_ms:.0f} ms"
            )
        return "\n".join(lines)


@dataclass
class Floor:
    """The floor of this stack, per record: what each step the worker cannot skip costs on
    its own on this machine (in this process, no broker involved except for the fetch)."""

    records: int
    grains: int
    fetch_us: float | None = None  # raw aiokafka getmany(100), counting (from its row)
    fetch_cpu_us: float | None = None
    steps: dict[str, float] = field(default_factory=dict)  # label -> µs/record
    failed: str | None = None

    def take_fetch(self, raw: Row | None) -> None:
        """The fetch step from a raw aiokafka row (nothing from a missing or failed one)."""
        if raw is not None and not raw.failed and raw.consume_s:
            self.fetch_us = raw.consume_s / raw.records * 1e6
            if raw.cpu_s is not None:
                self.fetch_cpu_us = raw.cpu_s / raw.records * 1e6

    def total_us(self) -> float:
        return (self.fetch_us or 0.0) + sum(
            us for label, us in self.steps.items() if not label.startswith("(")
        )

    def table(self) -> str:
        if self.failed:
            return f"floor failed: {self.failed}"
        lines = ["| step (per record) | µs/record |", "|---|---:|"]
        if self.fetch_us is not None:
            cpu = f"; CPU {self.fetch_cpu_us:.2f} µs" if self.fetch_cpu_us is not None else ""
            lines.append(
                f"| fetch alone: raw aiokafka getmany(100) counting, after join{cpu} "
                f"| {self.fetch_us:.2f} |"
            )
        for label, us in self.steps.items():
            lines.append(f"| {label} | {us:.2f} |")
        total = self.total_us()
        lines.append(
            f"| **floor** (sum of the unbracketed steps; at most {1e6 / total:,.0f} records/s "
            f"on one core) | {total:.2f} |"
        )
        return "\n".join(lines)


def _per_call_us(fn: Callable[[], int], min_s: float = 0.3) -> float:
    """µs per item of ``fn`` (which processes some items and returns how many), best of 3."""
    best = float("inf")
    for _ in range(3):
        items, started = 0, time.perf_counter()
        while True:
            items += fn()
            elapsed = time.perf_counter() - started
            if elapsed >= min_s / 3:
                break
        best = min(best, elapsed / items * 1e6)
    return best


def measure_floor(workload: Workload, workdir: Path) -> Floor:
    """Time, in this process, a typed decode of the workload's values, a head lookup (a
    RocksDB get of a stored grain) and a write-batch put of a typical value."""
    import msgpack
    from rocksdict import Rdict, WriteBatch, WriteOptions

    from benchmarks.common import generate
    from stream_replica.contract import Entry, canonical_full_state, decode
    from stream_replica.fold import FoldCounts, GrainState
    from stream_replica.store import ReplicaStore, grain_body_of_key

    sample = Workload(
        min(workload.records, 50_000),
        min(workload.grains, 50_000),
        workload.payload,
        workload.delta_rate,
        workload.tombstone_rate,
        workload.order,
        workload.seed,
    )
    pairs = [(k, v) for k, v in generate(sample, lambda: 1_700_000_000_000) if v is not None]
    values = [v for _, v in pairs]
    floor = Floor(len(pairs), sample.grains)

    def unpack_only() -> int:
        unpackb = msgpack.unpackb
        for value in values:
            unpackb(value, raw=False)
        return len(values)

    def typed_decode() -> int:
        for key, value in pairs:
            decode(key, value)
        return len(pairs)

    def fast_decode() -> int:
        for key, value in pairs:
            canonical_full_state(key, value)
        return len(pairs)

    floor.steps["(msgpack.unpackb of the value alone)"] = _per_call_us(unpack_only)
    floor.steps["(typed decode by the reference path, contract.decode)"] = _per_call_us(
        typed_decode
    )
    floor.steps["typed decode by the fast pass (contract.canonical_full_state)"] = _per_call_us(
        fast_decode
    )

    entries = [e for e in (decode(k, v) for k, v in pairs) if isinstance(e, Entry)]
    last = {}
    for entry in entries:
        last[entry.grain] = entry
    typical = sorted(len(e.payload) for e in entries)[len(entries) // 2]
    db_dir = workdir / "floor-db"
    shutil.rmtree(db_dir, ignore_errors=True)
    store = ReplicaStore(db_dir, "floor")
    try:
        changes: dict[Any, GrainState | None] = {
            g: GrainState(
                e.sequence, e.timestamp_millis, e.source_cluster, e.payload, hash(g) % 6, 1
            )
            for g, e in last.items()
        }
        items = list(changes.items())
        for start in range(0, len(items), 1000):
            store.apply(dict(items[start : start + 1000]), {}, FoldCounts())
        grains = list(last)
        random.Random(5).shuffle(grains)

        def head_lookup() -> int:
            get = store.get
            for grain in grains:
                get(grain)
            return len(grains)

        def head_lookup_batched() -> int:
            for start in range(0, len(grains), 100):
                store.get_many(grains[start : start + 100])
            return len(grains)

        bodies = [grain_body_of_key(f"{g[0]}/{g[1]}".encode(), g) for g in grains]

        def head_cache_lookup() -> int:
            for start in range(0, len(bodies), 100):
                store.cached_heads(bodies[start : start + 100])
            return len(bodies)

        floor.steps["head lookup in the head cache (store.cached_heads, 100 per call)"] = (
            _per_call_us(head_cache_lookup)
        )
        floor.steps["(store.get of a stored grain, one at a time)"] = _per_call_us(head_lookup)
        floor.steps["(store.get_many of stored grains, 100 per call: decoded states)"] = (
            _per_call_us(head_lookup_batched)
        )
    finally:
        store.close()
        shutil.rmtree(db_dir, ignore_errors=True)

    raw_dir = workdir / "floor-raw-db"
    shutil.rmtree(raw_dir, ignore_errors=True)
    from stream_replica.store_options import _options

    db = Rdict(str(raw_dir), _options())
    try:
        value = bytes(typical + 40)  # the state header + source + a median payload
        # bytes, typed as rocksdict's multi-get takes them (its stubs list a union)
        keys: list[Any] = [f"g{i:09d}".encode() for i in range(sample.grains)]

        # A catch-up writes without the WAL (durability.py); a caught-up worker with it.
        without_wal = WriteOptions()
        without_wal.disable_wal = True  # type: ignore[method-assign,assignment]

        def batch_put(options: WriteOptions) -> int:
            for start in range(0, len(keys), 100):
                batch = WriteBatch(raw_mode=True)
                for key in keys[start : start + 100]:
                    batch.put(key, value)
                db.write(batch, options)
            return len(keys)

        floor.steps[
            f"write-batch put of a typical value ({len(value)} B), 100 per batch + write "
            "without the WAL (a catch-up)"
        ] = _per_call_us(lambda: batch_put(without_wal))
        floor.steps["(the same through the WAL, as a caught-up worker writes)"] = _per_call_us(
            lambda: batch_put(WriteOptions())
        )
        shuffled = keys[:]
        random.Random(5).shuffle(shuffled)

        def raw_lookup() -> int:
            for start in range(0, len(shuffled), 100):
                db.get(shuffled[start : start + 100])
            return len(shuffled)

        floor.steps["(head lookup in RocksDB: multi-get of stored keys, 100 per call)"] = (
            _per_call_us(raw_lookup)
        )
    finally:
        db.close()
        shutil.rmtree(raw_dir, ignore_errors=True)
    return floor


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    started: datetime
    revision: str  # the code measured (HEAD at the start of the run)
    load_at_start: str = ""
    load_at_end: str = ""
    main_prefill: Prefill | None = None
    rows: list[Row] = field(default_factory=list)
    steady: Steady | None = None
    breakdown: Breakdown | None = None
    floor: Floor | None = None
    payload_floor: Floor | None = None  # the 10 KiB payload case's floor (growth)
    growth: list[tuple[str, Row]] = field(default_factory=list)  # (group, row)
    backlog: list[Row] = field(default_factory=list)
    prefills: list[Prefill] = field(default_factory=list)
    reads: ReadFigures | None = None
    scale: ScaleResult | None = None
    memory: Any = None  # benchmarks.memory_bench.MemoryReport
    warm_up: Row | None = None  # the unreported first read of the main topic

    def row(self, name: str) -> Row | None:
        for row in self.rows:
            if row.name == name and not row.failed:
                return row
        return None


def describe_warm_up(row: Row) -> str:
    rate = row.rate_after_join
    if row.failed or rate is None:
        return f"{row.name} failed: {row.failed or 'no timing'}"
    return f"{row.name}, {row.records:,} records, {rate:,.0f} records/s after join"


# --- contenders -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.bootstrap: str = args.bootstrap_servers
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{self.run_id}"
        self.workdir = Path(args.workdir).resolve() / self.run_id
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.topics: list[str] = []
        self.groups: list[str] = []
        self.watcher: GroupWatcher | None = None

    # naming ---------------------------------------------------------------------------------

    def topic(self, label: str) -> str:
        name = f"{self.prefix}-{label}"
        self.topics.append(name)
        return name

    def group(self, label: str) -> str:
        name = f"{self.prefix}-{label}"
        self.groups.append(name)
        return name

    def timeout_for(self, records: int) -> float:
        return 180.0 + records / 1000.0

    # pre-fill -------------------------------------------------------------------------------

    async def prefill(self, label: str, workload: Workload) -> Prefill:
        topic = self.topic(label)
        result = await prefill_topic(self.bootstrap, topic, self.args.partitions, workload)
        self.report.prefills.append(result)
        print(
            f"pre-fill {label}: {result.records:,} records, {result.bytes / MIB:.1f} MiB "
            f"in {result.seconds:.1f} s ({result.records / result.seconds:,.0f} records/s) "
            f"-> {topic}",
            flush=True,
        )
        return result

    async def drop_topic(self, topic: str) -> None:
        with contextlib.suppress(Exception):
            await delete_topics(self.bootstrap, [topic])
            self.topics.remove(topic)

    # (a) raw aiokafka ------------------------------------------------------------------------

    async def raw(self, data: Prefill, max_records: int = 100, label: str = "raw") -> Row:
        name = f"raw aiokafka getmany({max_records})"
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
            self.group(label),
            "--records",
            str(data.total_offsets),
            "--max-records",
            str(max_records),
        ]
        result = await run_measured(
            name, cmd, self.logs, timeout_s=self.timeout_for(data.records), cwd=ROOT
        )
        row = Row(name, data.records, data.bytes, result.wall_s, None, result.cpu_s)
        row.peak_rss_mib = result.peak_rss_mib
        info = _last_json(result.stdout)
        if result.exit_code != 0 or info is None:
            row.failed = f"exit {result.exit_code}: {result.stderr_tail(2)}"
            return row
        row.wall_s = info["done_at"] - result.launched
        row.join_s = info["assigned_at"] - result.launched
        row.note = "counts records only"
        return row

    # (b) Kafka's ConsumerPerformance ---------------------------------------------------------

    async def consumer_perf(self, data: Prefill) -> Row:
        name = "Kafka ConsumerPerformance (JVM)"
        if not KAFKA_SH.exists():
            return Row(name, data.records, data.bytes, 0.0, failed=f"{KAFKA_SH} not found")
        cmd = [
            str(KAFKA_SH),
            "tool",
            "consumer-perf",
            "--bootstrap-server",
            self.bootstrap,
            "--topic",
            data.topic,
            "--messages",
            str(data.total_offsets),
            "--group",
            self.group("cperf"),
            "--timeout",
            "60000",
        ]
        result = await run_measured(
            name, cmd, self.logs, timeout_s=self.timeout_for(data.records), cwd=ROOT
        )
        row = Row(name, data.records, data.bytes, result.wall_s, None, result.cpu_s)
        row.peak_rss_mib = result.peak_rss_mib
        parsed = parse_consumer_perf(result.stdout)
        if result.exit_code != 0 or parsed is None:
            row.failed = f"unavailable (exit {result.exit_code}): {result.stderr_tail(1)[:150]}"
            return row
        start = _perf_time(parsed["start.time"])
        end = _perf_time(parsed["end.time"])
        rebalance_s = float(parsed["rebalance.time.ms"]) / 1000
        row.wall_s = end - result.launched  # JVM start + join + fetch (not JVM shutdown)
        row.join_s = start + rebalance_s - result.launched
        row.note = (
            f"its own figures: {float(parsed['fetch.nMsg.sec']):,.0f} records/s, "
            f"{float(parsed['fetch.MB.sec']):.1f} MB/s after join; JVM, -Xmx256m"
        )
        if int(parsed["data.consumed.in.nMsg"]) != data.total_offsets:
            row.note += f"; consumed {parsed['data.consumed.in.nMsg']}"
        return row

    # (c) our worker --------------------------------------------------------------------------

    def worker_cmd(self, data: Prefill, group: str, db: Path, max_records: int) -> list[str]:
        return worker_command(
            self.bootstrap, data.topic, group, db, "--max-records", str(max_records)
        )

    async def ours(
        self, data: Prefill, max_records: int = 100, workers: int = 1, name: str | None = None
    ) -> Row:
        name = name or f"stream-replica run (max_records {max_records})"
        label = f"ours{max_records}-w{workers}-{uuid.uuid4().hex[:4]}"
        group = self.group(label)
        dbs = [self.workdir / f"{label}-db{i}" for i in range(workers)]
        commands = [
            (f"{label}-{i}", self.worker_cmd(data, group, db, max_records))
            for i, db in enumerate(dbs)
        ]
        assert self.watcher is not None
        results = await run_measured_many(
            commands,
            self.logs,
            done=self.watcher.caught_up(group, data),
            timeout_s=self.timeout_for(data.records),
            cwd=ROOT,
        )
        row = self._worker_row(name, data, results, dbs)
        await kstreams_bench.check_worker(self, row, data, dbs)
        for db in dbs:
            shutil.rmtree(db, ignore_errors=True)
        return row

    def _worker_row(
        self, name: str, data: Prefill, results: list[ProcResult], dbs: list[Path]
    ) -> Row:
        launched = min(r.launched for r in results)
        done = max(r.done for r in results)
        row = Row(name, data.records, data.bytes, done - launched)
        row.cpu_s = sum(r.cpu_s for r in results)
        row.peak_rss_mib = max(r.peak_rss_mib for r in results)
        problems = [
            f"{r.name}: exit {r.exit_code}{' (timed out)' if r.timed_out else ''}: "
            f"{r.stderr_tail(1)[:200]}"
            for r in results
            if r.exit_code != 0 or r.timed_out
        ]
        if problems:
            row.failed = "; ".join(problems)
            return row
        assigned = [t for t in (worker_assigned_at(r.stderr_path) for r in results) if t]
        if assigned:
            row.join_s = min(assigned) - launched
        counts: dict[str, int] = {}
        from stream_replica.store import ReplicaReader

        for db in dbs:
            with contextlib.suppress(Exception), ReplicaReader(db) as reader:
                for key, value in reader.counts().as_dict().items():
                    counts[key] = counts.get(key, 0) + value
        row.counts = counts
        if len(results) > 1:
            row.note = (
                f"{len(results)} processes: CPU is the sum, RSS the largest; "
                f"{counts.get('records', 0):,} records read in all (rebalance re-reads)"
            )
        return row

    # (d) Quix Streams ------------------------------------------------------------------------

    async def quix(self, data: Prefill) -> Row:
        name = "Quix Streams app (same job)"
        try:
            importlib.metadata.version("quixstreams")
        except importlib.metadata.PackageNotFoundError:
            return Row(name, data.records, data.bytes, 0.0, failed="quixstreams not installed")
        group = self.group("quix")
        state_dir = self.workdir / "quix-state"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.quix_app",
            "--bootstrap-servers",
            self.bootstrap,
            "--topic",
            data.topic,
            "--group",
            group,
            "--state-dir",
            str(state_dir),
            "--commit-interval",
            str(self.args.quix_commit_interval),
        ]
        assert self.watcher is not None
        result = await run_measured(
            name,
            cmd,
            self.logs,
            done=self.watcher.caught_up(group, data),
            timeout_s=self.timeout_for(data.records),
            cwd=ROOT,
        )
        shutil.rmtree(state_dir, ignore_errors=True)
        row = Row(name, data.records, data.bytes, result.wall_s, None, result.cpu_s)
        row.peak_rss_mib = result.peak_rss_mib
        if result.exit_code != 0 or result.timed_out:
            row.failed = f"exit {result.exit_code}: {result.stderr_tail(1)[:200]}"
            return row
        first = None
        for line in result.stdout.splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if "first_record_at" in obj:
                    first = obj["first_record_at"]
                if "counts" in obj:
                    row.counts = obj["counts"]
        if first is not None:
            row.join_s = first - result.launched
        row.note = (
            f"quixstreams {_version('quixstreams')}, no changelog topic, "
            f"commit_interval {self.args.quix_commit_interval:g} s; join = first record"
        )
        return row

    # 3. steady state -------------------------------------------------------------------------

    async def steady_state(self) -> Steady:
        from stream_replica.settings import WorkerSettings
        from stream_replica.store import ReplicaStore
        from stream_replica.worker import ReplicaWorker

        args = self.args
        result = Steady(args.steady_rate, args.steady_seconds)
        topic = self.topic("steady")
        await create_topic(self.bootstrap, topic, args.partitions)
        db = self.workdir / "steady-db"
        settings = WorkerSettings(
            bootstrap_servers=self.bootstrap,
            topic=topic,
            group=self.group("steady"),
            db=db,
            max_records=100,
        )
        store = ReplicaStore(db, topic)
        latencies: list[float] = []
        time_states_written(
            store, lambda visible_ms, sent_ms: latencies.append(visible_ms - sent_ms)
        )
        stop = asyncio.Event()
        worker = ReplicaWorker(settings, store, stop)
        assigned = asyncio.Event()
        original_assigned = worker.on_partitions_assigned

        async def on_assigned(partitions: Any) -> None:
            await original_assigned(partitions)
            assigned.set()

        worker.on_partitions_assigned = on_assigned  # type: ignore[method-assign,assignment]
        cleanup = contextlib.ExitStack()
        cleanup.enter_context(worker_logs(self.logs / "steady-worker.log"))
        producer_err = cleanup.enter_context((self.logs / "steady-producer.err").open("wb"))
        task = asyncio.create_task(worker.run())
        try:
            waiter = asyncio.create_task(assigned.wait())
            await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if not assigned.is_set():
                waiter.cancel()
                result.failed = "worker was not assigned its partitions within 60 s"
                return result
            cpu_before = _self_cpu()
            producer = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.bench",
                "_steady-producer",
                "--bootstrap-servers",
                self.bootstrap,
                "--topic",
                topic,
                "--rate",
                str(args.steady_rate),
                "--seconds",
                str(args.steady_seconds),
                "--grains",
                str(args.grains),
                stdout=asyncio.subprocess.PIPE,
                stderr=producer_err,
                cwd=ROOT,
            )
            out, _ = await producer.communicate()
            info = _last_json(out.decode(errors="replace"))
            if producer.returncode != 0 or info is None:
                result.failed = f"producer exited {producer.returncode}"
                return result
            result.produced = info["sent"]
            result.produce_s = info["seconds"]
            produced_at = time.monotonic()
            ends = await admin.end_offsets(self.bootstrap, topic, args.partitions)
            while True:
                checkpoints = store.checkpoints()
                if all(
                    (checkpoints[p].next_offset if p in checkpoints else 0) >= end
                    for p, end in ends.items()
                ):
                    break
                if time.monotonic() - produced_at > 120 or task.done():
                    result.failed = "worker did not catch up within 120 s of the producer's end"
                    return result
                await asyncio.sleep(0.05)
            result.catch_up_s = time.monotonic() - produced_at
            cpu_s = _self_cpu() - cpu_before
            result.worker_cpu_pct = 100 * cpu_s / (info["seconds"] + result.catch_up_s)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
            store.close()
            cleanup.close()
            shutil.rmtree(db, ignore_errors=True)
            await self.drop_topic(topic)
        latencies.sort()
        result.samples = len(latencies)
        if latencies:
            result.p50_ms = _quantile(latencies, 0.50)
            result.p99_ms = _quantile(latencies, 0.99)
            result.max_ms = latencies[-1]
        return result

    # where the time goes ---------------------------------------------------------------------

    async def breakdown(self, data: Prefill, max_records: int = 100) -> Breakdown:
        """Run the worker in this process on ``data`` with its stages timed (wrappers around
        the worker module's ``decode``/``fold``, the store's ``get_many``/``apply`` and
        aiokafka's ``getmany``; whatever of these is missing is left out)."""
        import stream_replica.fast_fold as fast_fold_module
        import stream_replica.poll as poll_module
        from stream_replica.settings import WorkerSettings
        from stream_replica.store import ReplicaStore
        from stream_replica.worker import ReplicaWorker

        totals: dict[str, float] = {}
        restore: list[tuple[Any, str, Any]] = []

        # Self time per stage: what a wrapped call spends inside another wrapped call (the
        # reference path's fold awaits the reads) counts for the inner stage only.
        nested: list[float] = []  # per wrapped call in progress: time of the calls inside it

        def wrap(owner: Any, attr: str, label: str) -> None:
            original = getattr(owner, attr, None)
            if original is None:
                return
            totals[label] = 0.0

            def enter() -> float:
                nested.append(0.0)
                return time.perf_counter()

            def leave(started: float) -> None:
                elapsed = time.perf_counter() - started
                totals[label] += elapsed - nested.pop()
                if nested:
                    nested[-1] += elapsed

            if asyncio.iscoroutinefunction(original):

                async def timed_async(*a: Any, **k: Any) -> Any:
                    started = enter()
                    try:
                        return await original(*a, **k)
                    finally:
                        leave(started)

                setattr(owner, attr, timed_async)
            else:

                def timed(*a: Any, **k: Any) -> Any:
                    started = enter()
                    try:
                        return original(*a, **k)
                    finally:
                        leave(started)

                setattr(owner, attr, timed)
            restore.append((owner, attr, original))

        # Stages (self time), named so that STAGE_KEYWORDS maps them onto the round-1 stages:
        # the fast pass's steps, the reference path for the grains it hands over, the reads
        # of current states both make, the write.
        wrap(AIOKafkaConsumer, "getmany", "aiokafka getmany (fetch, parse records)")
        wrap(fast_fold_module, "scan", "fast pass: canonical decode of every record, runs")
        wrap(fast_fold_module, "look_up", "fast pass: read current states (head cache)")
        wrap(
            ReplicaStore,
            "read_states_async",
            "read current states from RocksDB (grains the head cache lacks; loop or reader thread)",
        )
        wrap(fast_fold_module, "settle", "fast pass: fold (settle the runs)")
        wrap(poll_module, "decode_batch", "reference path: decode of the other grains' records")
        wrap(poll_module, "fold_polled", "reference path: fold of the other grains")
        wrap(ReplicaStore, "apply", "store.apply (pack + RocksDB write batch)")
        group = self.group("breakdown")
        db = self.workdir / "breakdown-db"
        store = ReplicaStore(db, data.topic)
        stop = asyncio.Event()
        settings = WorkerSettings(
            bootstrap_servers=self.bootstrap,
            topic=data.topic,
            group=group,
            db=db,
            max_records=max_records,
        )
        result = Breakdown(max_records, data.records)
        try:
            with worker_logs(self.logs / "breakdown-worker.log"):
                worker = ReplicaWorker(settings, store, stop)
                task = asyncio.create_task(worker.run())
                try:
                    deadline = time.monotonic() + self.timeout_for(data.records)
                    # Time from the first written poll on (group join and start-up excluded).
                    while True:
                        baseline = sum(c.next_offset for c in store.checkpoints().values())
                        if baseline or task.done() or time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.005)
                    for label in totals:
                        totals[label] = 0.0
                    started, cpu_before = time.perf_counter(), _self_cpu()
                    while True:
                        offsets = sum(c.next_offset for c in store.checkpoints().values())
                        if offsets >= data.total_offsets:
                            break
                        if task.done() or time.monotonic() > deadline:
                            result.failed = "the worker stopped or timed out"
                            return result
                        await asyncio.sleep(0.02)
                    result.wall_s = time.perf_counter() - started
                    result.cpu_s = _self_cpu() - cpu_before
                    result.stages = dict(totals)
                    result.records = data.total_offsets - baseline
                    if result.records <= 0 or result.wall_s <= 0:
                        result.failed = (
                            "the worker had read the whole topic by its first written poll: "
                            "too few records to time (--records)"
                        )
                finally:
                    stop.set()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, 60)
                    watchdog = getattr(worker, "watchdog", None)
                    if watchdog is not None:
                        result.longest_stall_ms = watchdog.longest_s * 1000
        finally:
            for owner, attr, original in restore:
                setattr(owner, attr, original)
            store.close()
            shutil.rmtree(db, ignore_errors=True)
        return result

    async def floor_of(self, data: Prefill, workload: Workload) -> Floor:
        """The floor of a topic: its raw fetch (own process, as the main contender) plus
        measure_floor's steps on its workload."""
        try:
            floor = measure_floor(workload, self.workdir)
        except Exception as exc:  # a broken floor must not lose the rest
            return Floor(0, 0, failed=f"{type(exc).__name__}: {exc}")
        floor.take_fetch(await self.raw(data))
        return floor

    # 4. growth -------------------------------------------------------------------------------

    async def growth_case(
        self, group: str, label: str, workload: Workload, name: str, floor: bool = False
    ) -> Row:
        data = await self.prefill(label, workload)
        row = await self.ours(data, 100, name=name)
        if floor and not self.args.skip_floor:
            self.report.payload_floor = await self.floor_of(data, workload)
            print(f"the floor of this stack for {name} (per record):", flush=True)
            print(self.report.payload_floor.table() + "\n", flush=True)
        row.note = (row.note + "; " if row.note else "") + workload.describe()
        if row.counts and not row.failed:
            row.note += (
                f"; applied {row.counts.get('applied', 0):,}, "
                f"intermediates_dropped {row.counts.get('intermediates_dropped', 0):,}"
            )
        await self.drop_topic(data.topic)
        self.report.growth.append((group, row))
        print_row(row)
        return row

    async def growth(self, main: Prefill) -> None:
        args = self.args
        n = args.growth_records
        await self.growth_case(
            "grains", "g-10k", Workload(n, 10_000), f"10k grains ({n:,} records)"
        )
        big = args.growth_big_grains
        await self.growth_case(
            "grains",
            "g-big",
            Workload(big, big),
            f"{big:,} grains ({big:,} records, 1 each)",
        )
        await self.growth_case(
            "payload", "p-100", Workload(n, 10_000, payload=100), f"100 B payloads ({n:,})"
        )
        big_payload_records = max(1000, n // 5)
        await self.growth_case(
            "payload",
            "p-10k",
            Workload(big_payload_records, max(1, big_payload_records // 20), payload=10 * 1024),
            f"10 KiB payloads ({big_payload_records:,})",
            floor=True,
        )
        per_grain = 50
        grains = max(1, n // per_grain)
        await self.growth_case(
            "updates/poll",
            "u-1",
            Workload(n, grains, order="rounds"),
            f"1 update/grain/poll ({grains:,} grains x {per_grain}, interleaved)",
        )
        await self.growth_case(
            "updates/poll",
            "u-50",
            Workload(n, grains, order="adjacent"),
            f"{per_grain} updates/grain/poll ({grains:,} grains x {per_grain}, adjacent)",
        )
        one = self.report.row("stream-replica run (max_records 100)")
        if one is not None:
            copy = Row(**{**one.__dict__, "name": "1 worker (main topic)"})
            self.report.growth.append(("workers", copy))
        for workers in (2, 3):
            row = await self.ours(
                main, 100, workers=workers, name=f"{workers} workers (main topic)"
            )
            self.report.growth.append(("workers", row))
            print_row(row)

    async def scale(self, main: Prefill) -> ScaleResult:
        """The scale-out cases on a broker of their own with Kafka's default initial
        rebalance delay (``--scale-broker-port``; 0: on the main topic and broker)."""
        port = self.args.scale_broker_port
        if not port:
            return await run_scale(self.bootstrap, main, self.workdir / "scale")
        delay = PRODUCTION_INITIAL_DELAY_MS
        print(f"  own broker on port {port}, group.initial.rebalance.delay.ms={delay}", flush=True)
        async with own_broker(port, delay) as bootstrap:
            data = await prefill_topic(bootstrap, main.topic, main.partitions, main.workload)
            result = await run_scale(bootstrap, data, self.workdir / "scale")
            result.broker_note = (
                f"a broker of its own (port {port}) with Kafka's default "
                f"group.initial.rebalance.delay.ms={delay}, the main topic's workload "
                "pre-filled there"
            )
            return result

    # 5. backlog memory -----------------------------------------------------------------------

    async def backlog(self) -> None:
        for records in self.args.backlog:
            workload = Workload(records, max(1, records // 20))
            data = await self.prefill(f"backlog-{records}", workload)
            row = await self.ours(data, 100, name=f"backlog {records:,} records")
            row.note = workload.describe()
            await self.drop_topic(data.topic)
            self.report.backlog.append(row)
            print_row(row)

    # cleanup ---------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        if self.topics:
            try:
                await delete_topics(self.bootstrap, list(self.topics))
                self.topics.clear()
            except Exception as exc:
                print(f"could not delete topics {self.topics}: {exc}", file=sys.stderr)
        for path in self.workdir.glob("*"):
            if path.is_dir() and path.name != "logs":
                shutil.rmtree(path, ignore_errors=True)


# --- helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def worker_logs(path: Path) -> Iterator[None]:
    """Send the in-process worker's logs to a file (not to this script's stderr)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                return obj
    return None


def parse_consumer_perf(stdout: str) -> dict[str, str] | None:
    """ConsumerPerformance prints a header line and one line of comma-separated values."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    for index, line in enumerate(lines[:-1]):
        if line.startswith("start.time"):
            names = [n.strip() for n in line.split(",")]
            values = [v.strip() for v in lines[index + 1].split(",")]
            if len(names) == len(values):
                return dict(zip(names, values, strict=True))
    return None


def _perf_time(text: str) -> float:
    """ConsumerPerformance's default date format: yyyy-MM-dd HH:mm:ss:SSS (local time)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S:%f").timestamp()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def kafka_version() -> str:
    libs = [ROOT / "dev" / "kafka" / ".cache" / "lib"]
    if os.environ.get("KAFKA_HOME"):
        libs.insert(0, Path(os.environ["KAFKA_HOME"]) / "libs")
    for lib in libs:
        for jar in sorted(lib.glob("kafka_2.13-*.jar")):
            version = jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
            if version[:1].isdigit() and "-" not in version:
                return version
    return KAFKA_VERSION_FALLBACK


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def code_revision() -> str:
    """HEAD of the repository, and whether stream_replica/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "stream_replica"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in stream_replica/" if dirty else "")


def machine_facts(revision: str) -> list[tuple[str, str]]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    librdkafka = "?"
    with contextlib.suppress(Exception):
        import confluent_kafka

        librdkafka = confluent_kafka.libversion()[0]
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", memory),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("aiokafka", _version("aiokafka")),
        ("rocksdict", _version("rocksdict")),
        ("msgpack", _version("msgpack")),
        ("event loop (ours, raw aiokafka, in-process runs)", f"uvloop {_version('uvloop')}"),
        ("quixstreams", f"{_version('quixstreams')} (librdkafka {librdkafka})"),
        ("Kafka broker", f"{kafka_version()} (single node, KRaft, same machine)"),
        ("stream-replica code", revision),
    ]


def print_row(row: Row) -> None:
    if row.failed:
        print(f"  {row.name}: FAILED {row.failed}", flush=True)
        return
    print(
        f"  {row.name}: {row.records:,} records in {row.wall_s:.2f} s "
        f"(join {_fmt(row.join_s, 2)} s) = {row.rate:,.0f} records/s, "
        f"{_fmt(row.rate_after_join, thousands=True)} records/s after join; "
        f"CPU {_fmt(row.cpu_s)} s, peak RSS {_fmt(row.peak_rss_mib)} MiB",
        flush=True,
    )


def ratio_lines(report: Report) -> list[str]:
    ours = report.row("stream-replica run (max_records 100)")
    raw = report.row("raw aiokafka getmany(100)")
    quix = report.row("Quix Streams app (same job)")

    def ratio(a: Row | None, b: Row | None, missing: str) -> str:
        if a is None or b is None:
            return f"n/a ({missing})"
        return f"{a.best_rate / b.best_rate:.2f}"

    quix_missing = "--skip-quix" if report.args.skip_quix else "Quix run failed"
    return [
        *floor_lines(report, ours),
        *kstreams_bench.ratio_lines(report),  # before the two lines the smoke test reads last
        f"ours(100)/raw-aiokafka = {ratio(ours, raw, 'a run failed')}",
        f"ours(100)/quix = {ratio(ours, quix, quix_missing)}",
    ]


def floor_lines(report: Report, ours: Row | None) -> list[str]:
    floor = report.floor
    if floor is None or floor.failed or ours is None or floor.fetch_us is None:
        return []
    ours_us = 1e6 / ours.best_rate
    return [
        f"ours(100) {ours_us:.2f} µs/record vs floor {floor.total_us():.2f} µs/record: "
        f"floor/ours = {floor.total_us() / ours_us:.2f}",
        *payload_floor_lines(report),
    ]


def payload_floor_lines(report: Report) -> list[str]:
    """The 10 KiB case against its floor and issue #12's target (2x round 1's rate)."""
    floor = report.payload_floor
    row = next((r for _, r in report.growth if "10 KiB payloads" in r.name), None)
    if floor is None or floor.failed or floor.fetch_us is None or row is None or row.failed:
        return []
    target = 2 * json.loads(BASELINE.read_text())["records_per_s_after_join"]["10 KiB payloads"]
    ceiling = 1e6 / floor.total_us()
    return [
        f"10 KiB payloads: ours {1e6 / row.best_rate:.2f} µs/record vs floor "
        f"{floor.total_us():.2f} µs/record (at most {ceiling:,.0f} records/s); 2x round 1 "
        f"needs {1e6 / target:.2f} µs/record ({target:,.0f} records/s): "
        + ("below the floor" if target > ceiling else "above the floor")
    ]


# --- output files ---------------------------------------------------------------------------


def write_markdown(report: Report, path: Path) -> None:
    args = report.args
    lines = [
        "# Benchmark: stream-replica worker vs. its limits",
        "",
        f"Run {report.started:%Y-%m-%d %H:%M} with:",
        "",
        "```sh",
        report.command,
        "```",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine_facts(report.revision)),
        "",
        "Everything (broker, contenders, this script) shares the same machine; each contender "
        "runs alone, one after the other. Load average (1/5/15 min) at the start: "
        f"{report.load_at_start}; at the end: {report.load_at_end} (other work on the machine "
        "shows up here and makes the figures noisier).",
        "",
    ]
    if report.main_prefill is not None:
        data = report.main_prefill
        lines += [
            "## Catch-up on a pre-filled topic",
            "",
            f"Topic: {data.partitions} partitions, compacted, {data.workload.describe()}; "
            f"{data.bytes / MIB:.1f} MiB of keys + values. Pre-fill took {data.seconds:.1f} s "
            f"({data.records / data.seconds:,.0f} records/s, aiokafka producer, acks=1).",
            "",
            rows_table(report.rows),
            "",
            *(
                [
                    "Before these, one unreported read of the whole topic warmed the broker "
                    f"({describe_warm_up(report.warm_up)}): on a freshly started broker the "
                    "first reader of a topic is the slowest.",
                    "",
                ]
                if report.warm_up is not None
                else []
            ),
            *(f"**{line}**  " for line in ratio_lines(report)),
            "",
            "How to read it:",
            "",
            "- Every contender reads the whole topic with a fresh consumer group, in its own "
            "process. *wall s* runs from process launch to done; *join s* from launch to the "
            "partitions being assigned (our worker: its first `partition N:` log line; raw "
            "aiokafka: the rebalance listener; ConsumerPerformance: its start time + its "
            "rebalance time; Quix: its first processed record). *records/s after join* = "
            "records / (wall - join); the ratios use it.",
            "- Done: raw aiokafka and ConsumerPerformance stop by themselves after the last "
            "record. Our worker and Quix are done when the group's committed offsets equal the "
            "end offsets (polled every 0.05 s), then get SIGTERM.",
            "- CPU s: the kernel's rusage of that process (`wait4`), user + system seconds "
            "until exit (including start-up and shutdown). Peak RSS: the process's `VmHWM` "
            "(/proc), read every 50 ms while it runs (`ru_maxrss` would include this script's "
            "own size, inherited over fork + exec).",
            "- Our worker fetches, decodes and validates every record, folds each poll, writes "
            "one RocksDB batch (grains + checkpoints) and commits offsets after every poll. "
            "The Quix app decodes with the same validator and keeps state in Quix's RocksDB "
            "store (changelog topic off; Quix writes its state and commits every "
            f"{args.quix_commit_interval:g} s instead of every poll).",
            *kstreams_bench.markdown_notes(report),
            "",
        ]
    if report.floor is not None:
        lines += [
            "## The floor of this stack",
            "",
            "Per record, each step the worker cannot skip, alone: the fetch (the raw aiokafka "
            "row above: its time after the join / records), and in the bench process the "
            "cheapest typed decode of the workload's values the worker uses (the fast pass's), "
            "a head lookup in the head cache of a store holding the workload's grains, and a "
            "write-batch put of a median-sized value into a RocksDB with the store's options, "
            "without the WAL as a catch-up writes (best of 3). Bracketed rows are for comparison and not summed: the reference "
            "decode and a RocksDB lookup are what a record the fast pass hands over, or a "
            "grain the cache lacks, costs. A worker doing all four on one event loop cannot "
            "beat the sum.",
            "",
            report.floor.table(),
            "",
        ]
    if report.payload_floor is not None:
        lines += [
            "### The floor for 10 KiB payloads",
            "",
            "The same steps on the 10 KiB payload case's topic and workload (its own raw "
            "aiokafka run for the fetch).",
            "",
            report.payload_floor.table(),
            "",
            *payload_floor_lines(report),
            "",
        ]
    if report.breakdown is not None:
        lines += [
            "## Where our worker's time goes",
            "",
            f"The worker (max_records {report.breakdown.max_records}) run inside the bench "
            "process on the same topic with a fresh group, its stages wrapped in timers "
            "(the wrappers add well under 1 µs/record). Timed from its first written poll to "
            "the last record. All of it runs on one thread (the event loop); RocksDB's "
            "flush/compaction threads are in the CPU figure only.",
            "",
            report.breakdown.table(),
            "",
        ]
    if report.steady is not None:
        lines += [
            "## Steady state: end-to-end delay",
            "",
            "One worker (in the bench process, max_records 100) follows a fresh "
            f"{args.partitions}-partition topic while a producer process "
            "(`stream_replica.publisher.Publisher`, linger 5 ms, acks=all) writes at a fixed "
            f"rate over {args.grains:,} grains; each record's `timestamp_millis` is its send "
            "time. Delay = when the grain state's RocksDB write batch returned minus that "
            "timestamp, for every state written.",
            "",
            report.steady.table(),
            "",
        ]
    if report.growth:
        lines += [
            "## Growth (our worker, max_records 100)",
            "",
            ROW_HEADER.replace("| contender |", "| case |"),
            *(
                row_line(Row(**{**row.__dict__, "name": f"{group}: {row.name}"}))
                for group, row in report.growth
            ),
            "",
        ]
    if report.scale is not None:
        lines.append(report.scale.markdown())
    if report.backlog:
        lines += ["## Backlog memory (our worker, max_records 100)", "", rows_table(report.backlog)]
        if len(report.backlog) == 2 and all(r.peak_rss_mib for r in report.backlog):
            small, big = report.backlog
            lines += [
                "",
                f"Peak RSS {small.peak_rss_mib:.1f} MiB at {small.records:,} records vs "
                f"{big.peak_rss_mib:.1f} MiB at {big.records:,} records: "
                f"ratio {big.peak_rss_mib / small.peak_rss_mib:.2f}.",  # type: ignore[operator]
            ]
        lines.append("")
    if report.reads is not None:
        lines += [report.reads.markdown(), ""]
    lines += before_after_lines(report)
    if report.memory is not None:
        lines += ["## Memory budget at scale (benchmarks/memory_bench.py)", ""]
        lines += report.memory.markdown()
    path.write_text("\n".join(lines))


def before_after_lines(report: Report) -> list[str]:
    comparison = before_after(report)
    if comparison is None:
        return []
    lines = [
        "## Before / after: round 1 (a343deb) → this run",
        "",
        f"Round 1 figures: `{BASELINE.relative_to(ROOT)}` ({json.loads(BASELINE.read_text())['source']}).",
        "",
        "| case (records/s after join) | round 1 | this run | ratio |",
        "|---|---:|---:|---:|",
    ]
    for case, before in comparison["rates_before"].items():
        after = comparison["rates_after"].get(case)
        lines.append(
            f"| {case} | {before:,.0f} | "
            + (f"{after:,.0f} | {after / before:.2f}x |" if after else "not run | |")
        )
    if comparison["stages_after"]:
        lines += ["", "| stage (µs/record) | round 1 | this run |", "|---|---:|---:|"]
        for name, before in comparison["stages_before"].items():
            lines.append(f"| {name} | {before:.2f} | {comparison['stages_after'][name]:.2f} |")
    return [*lines, ""]


def write_chart(report: Report, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return False
    rows = [r for r in report.rows if not r.failed]
    growth = [(g, r) for g, r in report.growth if not r.failed]
    panels = 2 if growth else 1
    comparison = before_after(report)
    fig, axes = plt.subplots(
        1, panels + (comparison is not None), figsize=(7 * (panels + 1), 5.2), squeeze=False
    )
    ax = axes[0][0]
    names = [r.name.replace(" (", "\n(") for r in rows]
    positions = range(len(rows))
    width = 0.4
    ax.bar(
        [p - width / 2 for p in positions],
        [r.rate for r in rows],
        width,
        label="launch to done",
        color="#9ecae1",
    )
    ax.bar(
        [p + width / 2 for p in positions],
        [r.rate_after_join or 0 for r in rows],
        width,
        label="after group join",
        color="#3182bd",
    )
    ax.set_xticks(list(positions), names, rotation=30, ha="right", fontsize=8)
    thousands = FuncFormatter(lambda value, _pos: f"{value:,.0f}")
    ax.yaxis.set_major_formatter(thousands)
    ax.set_ylabel("records/s")
    ax.set_title(
        f"Catch-up on {report.main_prefill.records:,} records" if report.main_prefill else ""
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if growth:
        ax2 = axes[0][1]
        colors = {
            "grains": "#31a354",
            "payload": "#e6550d",
            "updates/poll": "#756bb1",
            "workers": "#636363",
        }
        ax2.bar(
            range(len(growth)),
            [r.best_rate for _, r in growth],
            color=[colors.get(g, "#999999") for g, _ in growth],
        )
        ax2.set_xticks(
            list(range(len(growth))),
            [f"{g}:\n{r.name.split(' (')[0]}" for g, r in growth],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax2.yaxis.set_major_formatter(thousands)
        ax2.set_ylabel("records/s after join")
        ax2.set_title("Our worker (max_records 100): growth")
        ax2.grid(axis="y", alpha=0.3)
    before_after_panel(report, fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


BASELINE = Path(__file__).with_name("baseline_round1.json")
STAGE_KEYWORDS = {  # baseline stage -> a word of this run's breakdown label
    "state reads": "read current states",
    "decode + validation": "decode",
    "write batch": "apply",
    "fetch": "getmany",
    "fold": "fold",
}


def before_after(report: Report) -> dict[str, dict[str, float]] | None:
    """Round 1 (the committed baseline) beside this run: records/s of the comparable cases
    and µs/record per stage; None when this run has neither."""
    if not BASELINE.exists():
        return None
    base = json.loads(BASELINE.read_text())
    now: dict[str, float] = {}
    ours = report.row("stream-replica run (max_records 100)")
    if ours is not None and ours.rate_after_join:
        now["one worker (max_records 100)"] = ours.rate_after_join
    if report.scale is not None:
        together = next((c for c in report.scale.cases if c.name == "2 together"), None)
        if together is not None and together.rate:
            now["two workers together"] = together.rate
    for _group, row in report.growth:
        if row.failed or not row.rate_after_join:
            continue
        if "1,000,000 grains" in row.name:
            now["1,000,000 grains"] = row.rate_after_join
        elif "10 KiB payloads" in row.name:
            now["10 KiB payloads"] = row.rate_after_join
    stages: dict[str, float] = {}
    breakdown = report.breakdown
    if breakdown is not None and not breakdown.failed and breakdown.records:
        per = 1e6 / breakdown.records
        for name, word in STAGE_KEYWORDS.items():
            stages[name] = sum(s for label, s in breakdown.stages.items() if word in label) * per
        stages["everything else"] = (breakdown.wall_s - sum(breakdown.stages.values())) * per
    if not now and not stages:
        return None
    return {
        "rates_before": {k: float(v) for k, v in base["records_per_s_after_join"].items()},
        "rates_after": now,
        "stages_before": {k: float(v) for k, v in base["stages_us_per_record"].items()},
        "stages_after": stages,
    }


def before_after_panel(report: Report, fig: Any) -> None:
    """The last panel: records/s before (round 1) and after, per comparable case, with the
    per-stage µs/record written under each worker bar pair."""
    comparison = before_after(report)
    if comparison is None:
        return
    ax = fig.axes[-1]
    cases = [c for c in comparison["rates_before"] if c in comparison["rates_after"]]
    positions = range(len(cases))
    width = 0.4
    ax.bar(
        [p - width / 2 for p in positions],
        [comparison["rates_before"][c] for c in cases],
        width,
        label="round 1 (a343deb)",
        color="#bdbdbd",
    )
    ax.bar(
        [p + width / 2 for p in positions],
        [comparison["rates_after"][c] for c in cases],
        width,
        label="this run",
        color="#3182bd",
    )
    for p, case in zip(positions, cases, strict=True):
        ratio = comparison["rates_after"][case] / comparison["rates_before"][case]
        ax.annotate(
            f"{ratio:.2f}x",
            (p + width / 2, comparison["rates_after"][case]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(list(positions), cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("records/s after join")
    ax.yaxis.set_major_formatter(fig.axes[0].yaxis.get_major_formatter())  # thousands
    ax.set_title("Before / after (our worker)")
    stages_after = comparison["stages_after"]
    if stages_after:
        text = "µs/record before → after:\n" + "\n".join(
            f"{name} {before:.2f} → {stages_after.get(name, 0.0):.2f}"
            for name, before in comparison["stages_before"].items()
        )
        ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize=7, family="monospace")
        ax.set_ylim(top=ax.get_ylim()[1] * 1.4)  # room for the text above the tallest bar
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)


# --- child processes ------------------------------------------------------------------------


async def raw_child(argv: Sequence[str]) -> int:
    """Raw aiokafka: subscribe with a fresh group, getmany until N records, count only."""
    parser = argparse.ArgumentParser(prog="bench _raw")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--max-records", type=int, default=100)
    args = parser.parse_args(argv)
    stamps: dict[str, float] = {}

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            stamps.setdefault("assigned_at", time.time())

    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,  # as the worker (WorkerSettings.fetch_max_wait_ms)
    )
    await consumer.start()
    consumer.subscribe([args.topic], listener=Listener())
    count = 0
    try:
        while count < args.records:
            batch = await consumer.getmany(timeout_ms=500, max_records=args.max_records)
            for records in batch.values():
                count += len(records)
        stamps["done_at"] = time.time()
    finally:
        await consumer.stop()
    print(json.dumps({"count": count, **stamps}), flush=True)
    return 0


async def steady_producer_child(argv: Sequence[str]) -> int:
    """Publish at a fixed rate; each record's timestamp_millis is its send time."""
    from stream_replica.contract import Entry, EntryType, encode_key, encode_value
    from stream_replica.publisher import Publisher

    parser = argparse.ArgumentParser(prog="bench _steady-producer")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--grains", type=int, required=True)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    pool = rng.randbytes(1 << 20)
    import math

    mu = math.log(256)
    sent = 0
    async with Publisher(args.bootstrap_servers, args.topic) as publisher:
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= args.seconds:
                break
            due = min(int(args.rate * elapsed) + 1, int(args.rate * args.seconds))
            while sent < due:
                index = rng.randrange(args.grains)
                grain_type, grain_key = ("account", "cart", "session")[index % 3], f"g-{index:07d}"
                roll = rng.random()
                if roll < 0.01:
                    await publisher.publish_tombstone(grain_type, grain_key)
                else:
                    size = min(4096, max(64, int(rng.lognormvariate(mu, 0.75))))
                    start = rng.randrange(0, len(pool) - size)
                    payload = pool[start : start + size]
                    if roll < 0.015:  # a misbehaving primary's Delta (Publisher refuses them)
                        sequence = publisher.next_sequence((grain_type, grain_key))
                        entry = Entry(
                            grain_type, grain_key, sequence, sequence, "primary",
                            EntryType.DELTA, payload,
                        )  # fmt: skip
                        await publisher.publish_raw(
                            encode_key(grain_type, grain_key), encode_value(entry)
                        )
                    else:
                        await publisher.publish_snapshot(grain_type, grain_key, payload)
                sent += 1
            await asyncio.sleep(0.001)
        await publisher.flush()
        seconds = time.monotonic() - started
    print(json.dumps({"sent": sent, "seconds": seconds}), flush=True)
    return 0


CHILDREN = {"_raw": raw_child, "_steady-producer": steady_producer_child}


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Throughput, latency and memory of the replica worker vs. its limits.",
    )
    parser.add_argument("--records", type=int, default=None, help="main topic (500000)")
    parser.add_argument("--grains", type=int, default=None, help="main topic (25000)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    parser.add_argument("--skip-quix", action="store_true")
    kstreams_bench.add_arguments(parser)
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--skip-backlog", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="skip 1 vs 2 workers")
    parser.add_argument(
        "--scale-broker-port",
        type=int,
        default=29092,
        help="1 vs 2 workers on a broker of their own on this port, with Kafka's default "
        "initial rebalance delay (0: on the main broker, whose delay is 0)",
    )
    parser.add_argument(
        "--skip-read", action="store_true", help="skip the HTTP read benchmark (read_bench)"
    )
    parser.add_argument(
        "--skip-memory", action="store_true", help="skip the 1M/10M-grain memory budget runs"
    )
    parser.add_argument(
        "--memory-grains",
        default="1000000,10000000",
        help="grain counts of the memory runs (1000000,10000000)",
    )
    parser.add_argument(
        "--skip-breakdown", action="store_true", help="skip the per-stage timing of our worker"
    )
    parser.add_argument(
        "--skip-floor", action="store_true", help="skip the per-record floor of the stack"
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="no unreported raw aiokafka read of the main topic before the contenders",
    )
    parser.add_argument("--steady-rate", type=int, default=5000, help="records/s (5000)")
    parser.add_argument("--steady-seconds", type=float, default=None, help="60 (--small: 10)")
    parser.add_argument(
        "--growth-records", type=int, default=200_000, help="records per growth case (200000)"
    )
    parser.add_argument(
        "--growth-big-grains", type=int, default=1_000_000, help="the many-grains case (1000000)"
    )
    parser.add_argument(
        "--backlog",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="backlog sizes for the memory check (100000,1000000; --small: 20000,100000)",
    )
    parser.add_argument(
        "--quix-commit-interval", type=float, default=1.0, help="Quix commit_interval s (1.0)"
    )
    parser.add_argument(
        "--small", action="store_true", help="CI size: ~20k records, short steady, no growth"
    )
    parser.add_argument("--out", default="docs/", help="where bench.md and bench.png go")
    parser.add_argument("--workdir", default=".bench", help="state dirs and child logs")
    args = parser.parse_args(argv)
    if args.small:
        args.records = args.records or 20_000
        args.grains = args.grains or 1_000
        args.steady_seconds = args.steady_seconds if args.steady_seconds is not None else 10.0
        args.backlog = args.backlog or [20_000, 100_000]
        args.skip_growth = True
        args.skip_memory = True
    else:
        args.records = args.records or 500_000
        args.grains = args.grains or 25_000
        args.steady_seconds = args.steady_seconds if args.steady_seconds is not None else 60.0
        args.backlog = args.backlog or [100_000, 1_000_000]
    if args.records < 1 or args.grains < 1 or args.partitions < 1:
        parser.error("--records, --grains and --partitions must be positive")
    return args


async def run(args: argparse.Namespace, command: str) -> int:
    report = Report(args, command, datetime.now(), code_revision(), load_average())
    bench = Bench(args, report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench run {bench.run_id} against {bench.bootstrap}; logs in {bench.logs}", flush=True)
    await admin.wait_for_broker(bench.bootstrap, 60)
    try:
        async with GroupWatcher(bench.bootstrap) as watcher:
            bench.watcher = watcher
            workload = Workload(args.records, args.grains)
            main = await bench.prefill("main", workload)
            report.main_prefill = main
            print(f"pre-fill took {main.seconds:.1f} s", flush=True)

            if not args.no_warm_up:
                # the broker's first reads of a topic (a JVM not yet warmed up on the fetch
                # path, segments not yet in its page cache) would slow the first contender only
                report.warm_up = await bench.raw(main, 100, label="warm-up")
                print(f"warm-up read, not reported: {describe_warm_up(report.warm_up)}", flush=True)

            print("\ncatch-up, one contender at a time:", flush=True)
            contenders: list[Callable[[], Awaitable[Row]]] = [
                lambda: bench.raw(main, 100),
                lambda: bench.consumer_perf(main),
                lambda: bench.ours(main, 100),
                lambda: bench.ours(main, 1000),
            ]
            if not args.skip_quix:
                contenders.append(lambda: bench.quix(main))
            if kstreams_bench.wanted(args):
                contenders.append(lambda: kstreams_bench.run(bench, main, Row))
            for contender in contenders:
                row = await contender()
                report.rows.append(row)
                print_row(row)
            print("\n" + rows_table(report.rows) + "\n", flush=True)

            if not args.skip_floor:
                print("the floor of this stack (per record):", flush=True)
                try:
                    report.floor = measure_floor(workload, bench.workdir)
                except Exception as exc:  # a broken floor must not lose the rest
                    report.floor = Floor(0, 0, failed=f"{type(exc).__name__}: {exc}")
                report.floor.take_fetch(report.row("raw aiokafka getmany(100)"))
                print(report.floor.table() + "\n", flush=True)

            if not args.skip_breakdown:
                print("where our worker's time goes (in this process, stages timed):", flush=True)
                report.breakdown = await bench.breakdown(main)
                print(report.breakdown.table() + "\n", flush=True)

            if not args.skip_steady:
                print(
                    f"steady state: {args.steady_rate:,} records/s for "
                    f"{args.steady_seconds:g} s ...",
                    flush=True,
                )
                report.steady = await bench.steady_state()
                print(report.steady.table() + "\n", flush=True)

            if not args.skip_growth:
                print("growth (our worker, max_records 100):", flush=True)
                await bench.growth(main)
                print("", flush=True)

            if not args.skip_scale:
                print("scale-out, one worker vs. two (benchmarks/scale_bench.py):", flush=True)
                report.scale = await bench.scale(main)

            if not args.skip_backlog:
                print("backlog memory (our worker, max_records 100):", flush=True)
                await bench.backlog()
                if len(report.backlog) == 2:
                    small, big = report.backlog
                    if small.peak_rss_mib and big.peak_rss_mib:
                        print(
                            f"  peak RSS {small.peak_rss_mib:.1f} MiB ({small.records:,}) vs "
                            f"{big.peak_rss_mib:.1f} MiB ({big.records:,}): ratio "
                            f"{big.peak_rss_mib / small.peak_rss_mib:.2f}",
                            flush=True,
                        )
                print("", flush=True)

            if not args.skip_read:
                report.reads = await bench_reads(bench.bootstrap, args.small)
            if not args.skip_memory:
                from benchmarks.memory_bench import from_bench_args, run_memory_bench

                report.memory = await run_memory_bench(from_bench_args(args))
                print("\n".join(report.memory.markdown()), flush=True)
    finally:
        await bench.cleanup()

    report.load_at_end = load_average()
    write_markdown(report, out / "bench.md")
    charted = write_chart(report, out / "bench.png")
    (bench.logs / "results.json").write_text(
        json.dumps(
            {
                "rows": [r.as_json() for r in report.rows],
                "growth": [{"group": g, **r.as_json()} for g, r in report.growth],
                "backlog": [r.as_json() for r in report.backlog],
                "steady": report.steady.__dict__ if report.steady else None,
                "breakdown": report.breakdown.__dict__ if report.breakdown else None,
                "floor": report.floor.__dict__ if report.floor else None,
                "payload_floor": (report.payload_floor.__dict__ if report.payload_floor else None),
            },
            indent=2,
        )
    )
    print(f"wrote {out / 'bench.md'}" + (f" and {out / 'bench.png'}" if charted else ""))
    failed = [r.name for r in report.rows if r.failed]
    if failed:
        print(f"failed contenders: {', '.join(failed)}")
    for line in ratio_lines(report):
        print(line, flush=True)
    ours_failed = report.row("stream-replica run (max_records 100)") is None
    return 1 if ours_failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # On the loop `stream-replica run` uses by default, as its in-process runs and the raw
    # aiokafka ceiling should be.
    if argv and argv[0] in CHILDREN:
        return event_loop.run(CHILDREN[argv[0]](argv[1:]))
    args = parse_args(argv)
    command = " ".join(["python -m benchmarks.bench", shlex.join(argv)]).strip()
    return event_loop.run(run(args, command))


if __name__ == "__main__":
    sys.exit(main())
