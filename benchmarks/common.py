"""Shared pieces of the benchmarks: workload generation, fast pre-fill, and a harness that
runs one contender in its own process and measures wall time, CPU seconds and peak RSS.

Nothing here touches ``stream_replica`` internals; it uses the package's public pieces
(contract encoding, topic admin) the way an operator's tooling would.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from stream_replica import admin
from stream_replica.contract import Entry, EntryType, encode_key, encode_value

GRAIN_TYPES = ("account", "cart", "session")
MIB = 1024 * 1024


# --- workload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What to write into a topic.

    ``order="rounds"``: rounds over all grains in a fresh random order each round, so one poll
    holds many different grains (each record a write). ``order="adjacent"``: all updates of a
    grain back to back, so a poll holds few grains and intermediates are dropped.

    ``payload``: ``"lognormal"`` (median ~256 B, clipped to 64 B..4 KiB) or a fixed size.
    """

    records: int
    grains: int
    payload: str | int = "lognormal"
    delta_rate: float = 0.005
    tombstone_rate: float = 0.01
    order: str = "rounds"
    seed: int = 1

    def describe(self) -> str:
        per = self.records / max(1, self.grains)
        size = (
            "64 B-4 KiB lognormal (median ~256 B)"
            if self.payload == "lognormal"
            else f"{self.payload} B"
        )
        return (
            f"{self.records:,} records, {self.grains:,} grains (~{per:.3g} updates each, "
            f"{self.order}), payload {size}, {self.delta_rate:.1%} Deltas, "
            f"{self.tombstone_rate:.1%} tombstones"
        )


def _payload_sizes(workload: Workload, rng: random.Random) -> Callable[[], int]:
    if workload.payload == "lognormal":
        mu, sigma = math.log(256), 0.75

        def lognormal() -> int:
            return min(4096, max(64, int(rng.lognormvariate(mu, sigma))))

        return lognormal
    fixed = int(workload.payload)
    return lambda: fixed


def generate(
    workload: Workload, timestamp_millis: Callable[[], int] | None = None
) -> Iterator[tuple[bytes, bytes | None]]:
    """Yield ``(key, value)`` pairs (value None = tombstone), deterministic per seed."""
    rng = random.Random(workload.seed)
    pool = rng.randbytes(1 << 20)  # payload bytes are slices of random data (incompressible)
    size_of = _payload_sizes(workload, rng)
    names = [(GRAIN_TYPES[i % len(GRAIN_TYPES)], f"g-{i:07d}") for i in range(workload.grains)]
    keys = [encode_key(t, k) for t, k in names]
    sequences = [0] * workload.grains
    alive = [False] * workload.grains
    stamp = timestamp_millis or (lambda: time.time_ns() // 1_000_000)
    ts_now = stamp()
    produced = 0

    def one(index: int) -> tuple[bytes, bytes | None]:
        grain_type, grain_key = names[index]
        roll = rng.random()
        if alive[index] and roll < workload.tombstone_rate:
            alive[index] = False
            return keys[index], None
        size = size_of()
        start = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
        payload = pool[start : start + size]
        delta = alive[index] and roll < workload.tombstone_rate + workload.delta_rate
        if delta:
            sequence = sequences[index] + 1  # refused by the replica; sequence not advanced
        else:
            sequences[index] += 1
            sequence = sequences[index]
            alive[index] = True
        entry = Entry(
            grain_type,
            grain_key,
            sequence,
            ts_now if timestamp_millis is None else stamp(),
            "primary",
            EntryType.DELTA if delta else EntryType.FULL_STATE,
            payload,
        )
        return keys[index], encode_value(entry)

    if workload.order == "adjacent":
        per_grain = max(1, math.ceil(workload.records / workload.grains))
        for index in range(workload.grains):
            for _ in range(per_grain):
                if produced >= workload.records:
                    return
                produced += 1
                yield one(index)
        return
    order = list(range(workload.grains))
    while produced < workload.records:
        rng.shuffle(order)
        for index in order:
            if produced >= workload.records:
                return
            produced += 1
            yield one(index)


# --- topics and pre-fill --------------------------------------------------------------------


@dataclass
class Prefill:
    topic: str
    partitions: int
    records: int
    bytes: int  # key + value bytes
    seconds: float
    end_offsets: dict[int, int]
    workload: Workload

    @property
    def total_offsets(self) -> int:
        return sum(self.end_offsets.values())


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    configs = admin.replication_topic_configs(1)
    created = await admin.create_topic(bootstrap, topic, partitions, 1, configs)
    if not created:
        raise RuntimeError(f"topic {topic} already exists")


async def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    if not topics:
        return
    async with admin.admin_client(bootstrap) as client:
        await client.delete_topics(list(topics))


async def prefill(
    bootstrap: str, topic: str, partitions: int, workload: Workload, create: bool = True
) -> Prefill:
    """Create ``topic`` (compacted) and write ``workload`` into it as fast as aiokafka can:
    hand-built record batches per partition (``create_batch``/``send_batch``), with the
    Java client's murmur2 partitioning cached per key."""
    if create:
        await create_topic(bootstrap, topic, partitions)
    started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * MIB,
    )
    await producer.start()
    records = size = 0
    partition_of: dict[bytes, int] = {}
    builders: dict[int, Any] = {}
    pending: list[asyncio.Future[Any]] = []

    async def ship(partition: int) -> None:
        builder = builders.pop(partition)
        pending.append(await producer.send_batch(builder, topic, partition=partition))
        if len(pending) >= 64:
            await asyncio.gather(*pending)
            pending.clear()

    try:
        for key, value in generate(workload):
            partition = partition_of.get(key)
            if partition is None:
                partition = (murmur2(key) & 0x7FFFFFFF) % partitions
                partition_of[key] = partition
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                await ship(partition)
                builder = builders[partition] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise RuntimeError(f"record of {len(value or b'')} B does not fit a batch")
            records += 1
            size += len(key) + (len(value) if value is not None else 0)
        for partition in list(builders):
            await ship(partition)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.monotonic() - started
    ends = await admin.end_offsets(bootstrap, topic, partitions)
    if sum(ends.values()) != records:
        raise RuntimeError(f"pre-fill of {topic}: wrote {records} records, end offsets {ends}")
    return Prefill(topic, partitions, records, size, seconds, ends, workload)


# --- "done" detection -----------------------------------------------------------------------


class GroupWatcher:
    """Keeps one admin client open and answers "has the group committed the end offsets?"."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> GroupWatcher:
        self._client = await self._stack.enter_async_context(admin.admin_client(self.bootstrap))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        try:
            offsets = await self._client.list_consumer_group_offsets(group)
        except Exception:
            return {}
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    def caught_up(self, group: str, prefill: Prefill) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            committed = await self.committed(group, prefill.topic)
            return all(committed.get(p, -1) >= end for p, end in prefill.end_offsets.items())

        return check


def time_states_written(store: Any, record: Callable[[float, int], None]) -> None:
    """Wrap ``store.apply`` so that ``record(visible_ms, timestamp_millis)`` is called for each
    grain state a write made visible: the reference path's (``changes``; a shadowed state is
    an older state re-written with its mark, not this poll's record) and the fast pass's
    (``prepared``, encoded; never shadowed). Timing ``changes`` alone timed a handful of
    states a minute."""
    from stream_replica.store_layout import _unpack_state

    original_apply = store.apply

    def timed_apply(
        changes: Any, checkpoints: Any, counts: Any, unshadowed: Any = (), prepared: Any = ()
    ) -> None:
        original_apply(changes, checkpoints, counts, unshadowed, prepared)
        visible_ms = time.time_ns() / 1e6
        for state in changes.values():
            if state is not None and not state.shadowed:
                record(visible_ms, state.timestamp_millis)
        for entry in prepared:
            record(visible_ms, _unpack_state(entry[4]).timestamp_millis)

    store.apply = timed_apply


# --- the process harness --------------------------------------------------------------------


@dataclass
class ProcResult:
    name: str
    launched: float  # epoch seconds
    done: float  # epoch seconds: exit, or when the done predicate first held
    exit_code: int | None
    cpu_s: float
    peak_rss_mib: float
    stdout: str
    stderr_path: Path
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return self.done - self.launched

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def worker_command(bootstrap: str, topic: str, group: str, db: Path, *extra: str) -> list[str]:
    """``stream-replica run`` as the benchmarks launch it (INFO: the harnesses read its log)."""
    return [
        sys.executable, "-m", "stream_replica", "--log-level", "INFO", "run",
        "--bootstrap-servers", bootstrap, "--topic", topic, "--group", group, "--db", str(db),
        *extra,
    ]  # fmt: skip


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size of ``pid`` so far (``VmHWM`` in /proc/PID/status), MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _terminate(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def run_measured(
    name: str,
    cmd: Sequence[str],
    log_dir: Path,
    done: Callable[[], Awaitable[bool]] | None = None,
    timeout_s: float = 1800.0,
    poll_s: float = 0.05,
    cwd: Path | None = None,
) -> ProcResult:
    """Run ``cmd`` as a child process (see :func:`run_measured_many`)."""
    (result,) = await run_measured_many([(name, cmd)], log_dir, done, timeout_s, poll_s, cwd)
    return result


async def run_measured_many(
    commands: Sequence[tuple[str, Sequence[str]]],
    log_dir: Path,
    done: Callable[[], Awaitable[bool]] | None = None,
    timeout_s: float = 1800.0,
    poll_s: float = 0.05,
    cwd: Path | None = None,
) -> list[ProcResult]:
    """Run each command as a child, all at once. Without ``done`` each is done when it exits;
    with ``done``, all are done when the predicate first holds (polled every ``poll_s``) and
    then get SIGTERM. CPU seconds are the kernel's rusage of each child (``wait4``: user +
    system time), so they belong to that contender alone. Peak RSS is the child's ``VmHWM``
    (the high-water mark of its own address space) read from ``/proc`` every few tens of ms
    while it runs: ``ru_maxrss`` cannot be used, because Linux carries the parent's high-water
    mark over a (v)fork + exec, so every child would report at least this script's size."""
    log_dir.mkdir(parents=True, exist_ok=True)
    running: dict[int, tuple[str, subprocess.Popen[bytes], float, Path, Path]] = {}
    for name, cmd in commands:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        out_path, err_path = log_dir / f"{safe}.out", log_dir / f"{safe}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            launched = time.time()
            proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd
            )
        running[proc.pid] = (name, proc, launched, out_path, err_path)
    first_launch = min(entry[2] for entry in running.values())
    finished: dict[int, tuple[int, Any, float]] = {}
    peaks: dict[int, float] = {}
    done_at: float | None = None
    timed_out = False
    term_sent_at: float | None = None
    last_check = 0.0
    while len(finished) < len(running):
        for pid in running:
            if pid in finished:
                continue
            hwm = vm_hwm_mib(pid)
            if hwm is not None:
                peaks[pid] = max(peaks.get(pid, 0.0), hwm)
            got, status, usage = os.wait4(pid, os.WNOHANG)  # noqa: ASYNC222 (non-blocking)
            if got:
                finished[pid] = (status, usage, time.time())
        if len(finished) == len(running):
            break
        now = time.time()
        if term_sent_at is not None:
            if now - term_sent_at > 60:
                for pid in set(running) - set(finished):
                    _terminate(pid, signal.SIGKILL)
        elif now - first_launch > timeout_s:
            timed_out = True
            term_sent_at = now
            for pid in set(running) - set(finished):
                _terminate(pid, signal.SIGTERM)
        elif done is not None and now - last_check >= poll_s:
            last_check = now
            if await done():
                done_at = time.time()
                term_sent_at = done_at
                for pid in set(running) - set(finished):
                    _terminate(pid, signal.SIGTERM)
        await asyncio.sleep(0.02)
    results = []
    for pid, (name, proc, launched, out_path, err_path) in running.items():
        status, usage, exited = finished[pid]
        proc.returncode = os.waitstatus_to_exitcode(status)
        results.append(
            ProcResult(
                name=name,
                launched=launched,
                done=done_at if done_at is not None else exited,
                exit_code=proc.returncode,
                cpu_s=usage.ru_utime + usage.ru_stime,
                peak_rss_mib=peaks.get(pid, 0.0),
                stdout=out_path.read_text(errors="replace"),
                stderr_path=err_path,
                timed_out=timed_out,
            )
        )
    return results


# --- log parsing ----------------------------------------------------------------------------

_ASSIGNED_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO stream_replica\.worker: partition \d+: "
)


def worker_assigned_at(stderr_path: Path) -> float | None:
    """Epoch time of the worker's first partition-assignment log line (local-time asctime)."""
    try:
        with stderr_path.open(errors="replace") as lines:
            for line in lines:
                match = _ASSIGNED_LINE.match(line)
                if match:
                    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                    return stamp.timestamp()  # naive = local time, as logging wrote it
    except OSError:
        return None
    return None


def end_offsets_of(ends: dict[TopicPartition, int]) -> dict[int, int]:
    return {tp.partition: offset for tp, offset in ends.items()}
