"""``make rolling``: what a deploy and a crash cost a group of workers.

1. Rolling restart: W caught-up workers, each in turn stopped with SIGTERM and started again
   on its own directory ``--gap`` seconds later (what an operator's deploy does). Reported:
   partitions moved to another worker, partitions rebuilt, records re-read (folded again
   although nothing new was produced), committed offsets that went backwards.
2. Failover: kill -9 of the worker owning partition 0, with and without standby replicas;
   reported: seconds until each of its partitions is caught up on a live worker (the session
   timeout, ``--session-timeout-ms``, is part of it: that is when the broker notices).

``--legacy`` runs the workers without the ownership flags (``--instance-id``,
``--standby-replicas``, ``--session-timeout-ms``), for measuring a version that lacks them.
Everything is read from the outside: worker logs, stores (read-only) and the group's
committed offsets. The harness is shared with tests/test_ownership.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from benchmarks.common import Workload, prefill
from stream_replica import admin
from stream_replica.store import ReplicaReader, StoreError

_ASSIGNED = re.compile(r"^(\S+ \S+) INFO stream_replica\.worker: assigned partitions \[([\d, ]*)\]")


def say(message: str) -> None:
    print(f"[rolling {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Worker:
    """One ``stream-replica run`` process with its own store and log file."""

    def __init__(self, name: str, bootstrap: str, topic: str, group: str, root: Path, *extra: str):
        self.name = name
        self.db = root / f"{name}.db"
        self.log = root / f"{name}.log"
        self.args = [
            sys.executable, "-m", "stream_replica", "run",
            "--bootstrap-servers", bootstrap, "--topic", topic, "--group", group,
            "--db", str(self.db), *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Worker:
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log_file)
        return self

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(90)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def assignments(self) -> list[tuple[float, frozenset[int]]]:
        """(time, active partitions) of every assignment this worker logged."""
        events = []
        for line in self.log_text().splitlines():
            match = _ASSIGNED.match(line)
            if match:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                parts = frozenset(int(p) for p in match.group(2).split(",") if p.strip())
                events.append((stamp, parts))
        return events

    def checkpoints(self) -> dict[int, int]:
        try:
            with ReplicaReader(self.db) as reader:
                return {p: c.next_offset for p, c in reader.checkpoints().items()}
        except StoreError:
            return {}

    def records_folded(self) -> int:
        try:
            with ReplicaReader(self.db) as reader:
                return reader.counts().records
        except StoreError:
            return 0


def owners(workers: list[Worker], since: float = 0.0) -> list[tuple[float, str, frozenset[int]]]:
    """Every logged assignment of every worker after ``since``, in time order."""
    events = [(t, w.name, parts) for w in workers for t, parts in w.assignments() if t >= since]
    return sorted(events)


def current_owners(workers: list[Worker]) -> dict[int, str]:
    """Partition -> the worker whose latest logged assignment holds it."""
    owner: dict[int, str] = {}
    for _, name, parts in owners(workers):
        for p in [p for p, o in owner.items() if o == name]:
            del owner[p]
        for p in parts:
            owner[p] = name
    return owner


def count_moves(start: dict[int, str], events: list[tuple[float, str, frozenset[int]]]) -> int:
    """Partition hand-overs: each time a worker is given a partition another worker held."""
    owner = dict(start)
    moves = 0
    for _, name, parts in events:
        for p in parts:
            if owner.get(p) != name:
                moves += 1
                owner[p] = name
    return moves


@dataclass
class OffsetWatch:
    """Samples the group's committed offsets; counts every step backwards."""

    bootstrap: str
    group: str
    topic: str
    regressions: list[str] = field(default_factory=list)
    samples: int = 0
    _last: dict[int, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                committed = await admin.committed_offsets(self.bootstrap, self.group, self.topic)
                for p, offset in committed.items():
                    if offset < self._last.get(p, -1):
                        self.regressions.append(f"p{p}: {self._last[p]} -> {offset}")
                    self._last[p] = max(offset, self._last.get(p, -1))
                self.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.25)

    def stop(self) -> None:
        self._stop.set()


async def wait_for(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def worker_flags(args: argparse.Namespace, name: str, standbys: int) -> list[str]:
    if args.legacy:
        return []
    return [
        "--instance-id", name, "--standby-replicas", str(standbys),
        "--session-timeout-ms", str(args.session_timeout_ms),
    ]  # fmt: skip


def legacy_env(args: argparse.Namespace) -> None:
    # The older version has no flag for it, but reads the setting from the environment.
    os.environ["STREAM_REPLICA_SESSION_TIMEOUT_MS"] = str(args.session_timeout_ms)


async def committed_to(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    return await admin.committed_offsets(bootstrap, group, topic) == ends


def owners_caught_up(workers: list[Worker], ends: dict[int, int]) -> bool:
    """Every running worker has joined, and every partition's current owner holds it up to
    the end. (The group's committed offset alone does not tell: a new owner rebuilding a
    partition commits only once past it.)"""
    latest = [w.assignments()[-1:] for w in workers if w.running]
    if not all(latest):
        return False  # a worker has not joined yet
    parts = [p for events in latest for p in events[0][1]]
    if len(parts) != len(set(parts)):
        return False  # assignments of different generations: a rebalance is under way
    owner = current_owners(workers)
    held = {w.name: w.checkpoints() for w in workers if w.name in owner.values()}
    return len(owner) == len(ends) and all(
        held[owner[p]].get(p, 0) >= end for p, end in ends.items()
    )


async def settled(
    bootstrap: str, group: str, topic: str, workers: list[Worker], ends: dict[int, int]
) -> bool:
    return owners_caught_up(workers, ends) and await committed_to(bootstrap, group, topic, ends)


@dataclass
class RollingResult:
    restarts: int
    moved: int
    rebuilt: int
    reread: int
    regressions: list[str]


async def rolling_restart(
    args: argparse.Namespace, root: Path, topic: str, ends: dict[int, int]
) -> RollingResult:
    group = f"rolling-{uuid.uuid4().hex[:8]}"
    workers = [
        Worker(f"w{i}", args.bootstrap, topic, group, root, *worker_flags(args, f"w{i}", 0))
        for i in range(args.workers)
    ]
    for worker in workers:
        worker.start()
    watch = OffsetWatch(args.bootstrap, group, topic)
    try:
        await wait_for(
            lambda: settled(args.bootstrap, group, topic, workers, ends), 300, "catch-up"
        )
        say(f"{args.workers} workers caught up; owners {current_owners(workers)}")
        start_owners = current_owners(workers)
        folded_before = sum(w.records_folded() for w in workers)
        logs_before = {w.name: len(w.log_text()) for w in workers}
        roll_started = time.time()
        watcher = asyncio.create_task(watch.run())
        for worker in workers:
            code = worker.stop()
            say(f"{worker.name} stopped (exit {code}); restarting in {args.gap:.0f} s")
            await asyncio.sleep(args.gap)  # the operator's pace, as in a deploy
            restarted_at = time.time()
            seen = len(worker.assignments())
            worker.start()
            await wait_for(lambda w=worker, n=seen: len(w.assignments()) > n, 120, "rejoin")
            await wait_for(
                lambda: settled(args.bootstrap, group, topic, workers, ends), 300, "catch-up"
            )
            # Let a rebalance the rejoin triggered finish before the next restart.
            await asyncio.sleep(args.settle)
            say(f"{worker.name} back after {time.time() - restarted_at:.1f} s")
        watch.stop()
        await watcher
        moved = count_moves(start_owners, owners(workers, since=roll_started))
        rebuilt = sum(
            w.log_text()[logs_before[w.name] :].count("rebuilding from the beginning")
            + w.log_text()[logs_before[w.name] :].count("wiping and rebuilding")
            for w in workers
        )
        for w in workers:
            w.stop()
        reread = sum(w.records_folded() for w in workers) - folded_before
        return RollingResult(len(workers), moved, rebuilt, reread, watch.regressions)
    finally:
        watch.stop()
        for w in workers:
            if w.running:
                w.stop(signal.SIGKILL)


@dataclass
class Failover:
    seconds: float  # kill -9 to every lost partition caught up on a live worker
    catch_up: float  # of which: from the first reassignment to caught up


async def failover(
    args: argparse.Namespace, root: Path, topic: str, ends: dict[int, int], standbys: int
) -> Failover:
    """Kill -9 of partition 0's owner; time until all its partitions are caught up elsewhere."""
    group = f"failover-{uuid.uuid4().hex[:8]}"
    root = root / f"failover-{standbys}"
    root.mkdir()
    count = args.failover_workers or args.workers
    workers = [
        Worker(f"w{i}", args.bootstrap, topic, group, root, *worker_flags(args, f"w{i}", standbys))
        for i in range(count)
    ]
    for worker in workers:
        worker.start()
    try:
        await wait_for(
            lambda: settled(args.bootstrap, group, topic, workers, ends), 300, "catch-up"
        )
        wanted = 1 + min(standbys, count - 1)  # stores that must hold each partition

        def copies_caught_up() -> bool:
            held = [w.checkpoints() for w in workers]
            return all(
                sum(1 for c in held if c.get(p, -1) >= end) >= wanted for p, end in ends.items()
            )

        await wait_for(copies_caught_up, 300, f"{wanted} caught-up copies of every partition")
        owner_of = current_owners(workers)
        victim = next(w for w in workers if w.name == owner_of[0])
        lost = sorted(p for p, name in owner_of.items() if name == victim.name)
        survivors = [w for w in workers if w is not victim]
        killed_at = time.time()
        victim.stop(signal.SIGKILL)
        say(f"kill -9 {victim.name} (partitions {lost}), standby replicas {standbys}")

        def taken_over() -> bool:
            for p in lost:
                holders = [
                    w
                    for w in survivors
                    if any(p in parts for _, _, parts in owners([w], since=killed_at)[-1:])
                ]
                if not any(w.checkpoints().get(p, -1) >= ends[p] for w in holders):
                    return False
            return True

        await wait_for(taken_over, 300, "takeover")
        done = time.time()
        reassigned = min(
            t for t, _, parts in owners(survivors, since=killed_at) if set(lost) & parts
        )
        return Failover(done - killed_at, done - reassigned)
    finally:
        for w in workers:
            if w.running:
                w.stop(signal.SIGKILL)


async def run(args: argparse.Namespace) -> int:
    root = Path(args.workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if args.legacy:
        legacy_env(args)
    topic = f"rolling-{uuid.uuid4().hex[:8]}"
    workload = Workload(records=args.records, grains=max(1, args.records // 10))
    filled = await prefill(args.bootstrap, topic, args.partitions, workload)
    ends = filled.end_offsets
    say(f"topic {topic}: {filled.records} records in {args.partitions} partitions")
    try:
        roll = await rolling_restart(args, root, topic, ends)
        standby_counts = [0] if args.legacy else [0, 1]
        failovers = {n: await failover(args, root, topic, ends, n) for n in standby_counts}
    finally:
        with contextlib.suppress(Exception):
            async with admin.admin_client(args.bootstrap) as client:
                await client.delete_topics([topic])
    mode = "legacy flags" if args.legacy else "instance ids"
    rows = [
        ("mode", mode),
        ("records / partitions / workers", f"{args.records} / {args.partitions} / {args.workers}"),
        ("failover workers", args.failover_workers or args.workers),
        ("rolling restart: partitions moved", roll.moved),
        ("rolling restart: partitions rebuilt", roll.rebuilt),
        ("rolling restart: records re-read", roll.reread),
        ("rolling restart: committed-offset regressions", len(roll.regressions)),
        *(
            (
                f"failover s (kill -9, standby replicas {n})",
                f"{f.seconds:.1f} (catch-up after reassignment {f.catch_up:.1f})",
            )
            for n, f in failovers.items()
        ),
        ("session timeout ms", args.session_timeout_ms),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make rolling", description=__doc__)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
        ),
    )
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--failover-workers", type=int, default=0, help="workers in the failover runs (--workers)"
    )
    parser.add_argument("--gap", type=float, default=3.0, help="seconds a worker stays down")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after each rejoin")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--legacy", action="store_true", help="run workers without new flags")
    parser.add_argument("--workdir", default=".rolling")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
