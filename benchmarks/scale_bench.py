"""Scale-out: one worker vs. two, on the same pre-filled topic (issue #12).

Cases, each with a fresh group and fresh stores, workers launched as ``stream-replica run``,
after one unreported one-worker case that warms the broker (``--no-warm-up``: none):

* ``1 worker``;
* ``2 together``: two workers launched at the same instant;
* ``1 -> 2``: one worker, the second launched once the first has written ``--join-at`` of the
  topic to its store (default 20 %; its own progress, the ``stream_replica_partition_checkpoint``
  gauges of its ``--http`` /metrics, polled every 0.1 s: the group's committed offsets trail a
  catch-up, which commits only what a flush made durable).

Per case: wall time from the first worker's first assignment to the group's committed offsets
equal to the end offsets (polled every 0.1 s, so ±0.1 s), records/s, the ratio to the one-
worker case, records read by all workers (each worker's final ``stopped; this run:
records=N`` line) and their ratio to the topic's records, CPU seconds per worker (``wait4``
rusage, whole life) and of the broker over the case (/proc, when its pid is known), and
partitions moved (a partition assigned to a worker after another worker held it).

``python -m benchmarks.scale_bench`` prints the table; ``benchmarks/bench.py`` calls
:func:`run_scale` for its "Scale-out" section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiohttp import ClientError, ClientSession, ClientTimeout
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import (
    GroupWatcher,
    Prefill,
    Workload,
    delete_topics,
    prefill,
    worker_command,
)

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "dev" / "kafka" / "kafka.sh"
# Kafka's default group.initial.rebalance.delay.ms: a broker holds a new group's first
# rebalance this long so that members started together join one generation. The dev broker
# runs with 0 (tests form groups at once), where two workers launched together race: one
# joins a few ms first, starts alone, and hands half its partitions over 0.5 s later.
PRODUCTION_INITIAL_DELAY_MS = 3000
_ASSIGNED = re.compile(r"^(\S+ \S+) INFO stream_replica\.worker: assigned partitions \[([\d, ]*)\]")
_STOPPED = re.compile(r"INFO stream_replica\.worker: stopped; this run: records=(\d+)")
DONE_POLL_S = 0.1


def _free_port() -> int:
    """A port free on 127.0.0.1 now (the worker binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ProgressProbe:
    """A worker's own progress: its /metrics ``stream_replica_partition_checkpoint`` gauges
    (the store's next offset per partition it serves actively)."""

    def __init__(self, session: ClientSession, port: int) -> None:
        self.session = session
        self.url = f"http://127.0.0.1:{port}/metrics"

    async def checkpoints(self) -> dict[int, int]:
        """Partition -> checkpoint; empty while the worker is not serving yet."""
        try:
            async with self.session.get(self.url) as response:
                text = await response.text()
        except (ClientError, OSError, TimeoutError):
            return {}
        found: dict[int, int] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "stream_replica_partition_checkpoint":
                continue
            for sample in family.samples:
                if sample.labels.get("role") == "active":
                    found[int(sample.labels["partition"])] = int(sample.value)
        return found


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def proc_cpu_s(pid: int | None) -> float | None:
    """user + system seconds of a live process (/proc/PID/stat), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def broker_pid(bootstrap: str) -> int | None:
    """The dev broker's pid (dev/kafka/kafka.sh keeps it per port), for its CPU figure."""
    port = bootstrap.rsplit(":", 1)[-1].split(",")[0]
    try:
        return int((ROOT / f"dev/kafka/.cache/run-{port}/kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class WorkerRun:
    name: str
    launched: float  # epoch s
    cpu_s: float = 0.0
    exit_code: int | None = None
    records_read: int | None = None  # None: no final line (crashed)
    assignments: list[tuple[float, frozenset[int]]] = field(default_factory=list)


@dataclass
class ScaleCase:
    name: str
    topic_records: int
    first_join: float  # epoch s: the first assignment of any worker
    done: float | None  # epoch s: committed == end; None: timed out
    workers: list[WorkerRun]
    broker_cpu_s: float | None
    joined_at_fraction: float | None = None  # 1 -> 2: share in the 1st's store at the join
    joined_at: float | None = None  # 1 -> 2: epoch s of the 2nd worker's first assignment
    # 1 -> 2, at that assignment: records the newcomer must read (its partitions from offset 0:
    # its store is empty) and records the first worker had left on the partitions it kept
    newcomer_reads: int | None = None
    first_left: int | None = None
    load: str = ""

    @property
    def wall_s(self) -> float | None:
        return None if self.done is None else self.done - self.first_join

    @property
    def rate(self) -> float | None:
        wall = self.wall_s
        return None if not wall else self.topic_records / wall

    @property
    def rate_after_join(self) -> float | None:
        """1 -> 2: records/s of the group from the 2nd worker's first assignment to done (the
        records the first worker had not written by then / that time): what the group does once scaled out."""
        if self.joined_at is None or self.joined_at_fraction is None or self.done is None:
            return None
        left = self.topic_records * (1.0 - self.joined_at_fraction)
        seconds = self.done - self.joined_at
        return left / seconds if seconds > 0 else None

    @property
    def bound_after_join(self) -> float | None:
        """1 -> 2: the most the group can do after the join, as a ratio to one worker: each
        worker at one worker's rate, the newcomer rebuilding its partitions from offset 0
        while the first finishes its own (state is local: the newcomer cannot take over the
        first worker's progress on the partitions it is given). One worker's rate is taken
        over its whole catch-up, ramp-up included, so a measured ratio can land a little above."""
        if self.newcomer_reads is None or self.first_left is None:
            return None
        if self.joined_at_fraction is None:
            return None
        left = self.topic_records * (1.0 - self.joined_at_fraction)
        slowest = max(self.newcomer_reads, self.first_left)
        return left / slowest if slowest > 0 else None

    @property
    def records_read(self) -> int | None:
        counts = [w.records_read for w in self.workers]
        return None if None in counts else sum(c or 0 for c in counts)

    @property
    def read_ratio(self) -> float | None:
        read = self.records_read
        return None if read is None else read / self.topic_records

    @property
    def moved(self) -> int:
        """Partitions handed from one worker to another (first assignments are not moves)
        until done (the harness stopping the workers hands partitions over too)."""
        end = self.done if self.done is not None else float("inf")
        events = sorted(
            (t, w.name, ps) for w in self.workers for t, ps in w.assignments if t <= end
        )
        owner: dict[int, str] = {}
        moves = 0
        for _, name, parts in events:
            for p in parts:
                moves += p in owner and owner[p] != name
                owner[p] = name
        return moves


@dataclass
class ScaleResult:
    prefill: Prefill
    cases: list[ScaleCase]
    load_at_start: str
    load_at_end: str = ""
    worker_args: list[str] = field(default_factory=list)
    broker_note: str = ""  # where the cases ran, when not on the main broker
    warm_up_broker_cpu_s: float | None = None  # the broker's CPU in the unreported warm-up case

    def baseline(self, case: ScaleCase) -> ScaleCase | None:
        """The one-worker case run just before ``case`` (ratios are taken back to back)."""
        before = self.cases[: self.cases.index(case) + 1]
        ones = [c for c in before if len(c.workers) == 1 and c.rate]
        return ones[-1] if ones else None

    def ratio(self, case: ScaleCase) -> float | None:
        base = self.baseline(case)
        return None if base is None or not case.rate or not base.rate else case.rate / base.rate

    def ratio_after_join(self, case: ScaleCase) -> float | None:
        base, after = self.baseline(case), case.rate_after_join
        return None if base is None or not after or not base.rate else after / base.rate

    def markdown(self) -> str:
        """The section of docs/bench.md (benchmarks/bench.py writes it)."""
        return "\n".join(
            [
                "## Scale-out: one worker vs. two (issue #12)",
                "",
                f"`python -m benchmarks.scale_bench` on the main topic ({self.prefill.records:,} "
                f"records, {self.prefill.partitions} partitions"
                + (f"; {self.broker_note}" if self.broker_note else "")
                + "); each case a fresh group and "
                "fresh stores, workers launched as `stream-replica run`"
                + (
                    ", after an unreported one-worker case that warms the broker's JVM (its CPU "
                    f"then: {self.warm_up_broker_cpu_s:.1f} s)"
                    if self.warm_up_broker_cpu_s is not None
                    else ""
                )
                + ". *wall s* runs from the "
                "first worker's first assignment to the group's committed offsets equal to the "
                "end offsets (polled every 0.1 s); the ratio is to the one-worker case run just "
                "before. 1 -> 2 launches the second worker once the first has that share of the topic "
                "in its store (its /metrics checkpoints). Its note also gives the group's rate from the second "
                "worker's first assignment to done (the records not in the first worker's "
                "store then / that time) against the one-worker rate: what the group does once scaled out, "
                "without the newcomer's start-up, and the most it could do: state is local, so "
                "the newcomer reads the partitions it is given from offset 0 while the first "
                "worker finishes the ones it kept (its records left by its checkpoints at the "
                "join); at one worker's rate each, the group needs the longer of the two. "
                "*records read* sums each worker's final "
                "`records=` count; CPU s is "
                "each worker's whole life (start-up ~0.7 s included) and the broker's over the "
                f"case. Load average at the start {self.load_at_start}, at the end "
                f"{self.load_at_end}: on this shared 2-core machine two workers need both "
                "cores, so the ratio tracks what other work leaves free.",
                "",
                self.table(),
                "",
            ]
        )

    def table(self) -> str:
        lines = [
            "| case | load avg 1 min | wall s (join→done) | records/s | ratio to 1 worker "
            "| records read | read / topic | CPU s per worker | broker CPU s | moved | note |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for case in self.cases:
            ratio = self.ratio(case)
            note = ""
            if case.joined_at_fraction is not None:
                note = f"2nd joined with {case.joined_at_fraction:.0%} in the 1st's store"
                after, after_ratio = case.rate_after_join, self.ratio_after_join(case)
                if after is not None and after_ratio is not None:
                    note += f"; from then on {after:,.0f} records/s = {after_ratio:.2f}x one worker"
                bound = case.bound_after_join
                if bound is not None:
                    note += (
                        f" (bound {bound:.2f}x at one worker's rate each: the newcomer reads "
                        f"its partitions from offset 0, {case.newcomer_reads:,} records, while "
                        f"the first worker has {case.first_left:,} left)"
                    )
            if case.done is None:
                note = "TIMED OUT"
            bad = [f"{w.name} exit {w.exit_code}" for w in case.workers if w.exit_code]
            note = "; ".join(filter(None, [note, *bad]))
            lines.append(
                f"| {case.name} | {case.load.split(' / ')[0]} | {_f(case.wall_s, 2)} | "
                f"{_f(case.rate, 0, True)} | {_f(ratio, 2)} | {_f(case.records_read, 0, True)} "
                f"| {_f(case.read_ratio, 3)} | "
                f"{' + '.join(f'{w.cpu_s:.1f}' for w in case.workers)} | "
                f"{_f(case.broker_cpu_s, 1)} | {case.moved} | {note} |"
            )
        return "\n".join(lines)


def _f(value: float | None, digits: int, thousands: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def status_killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


class _Proc:
    def __init__(self, name: str, cmd: list[str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("wb") as err:
            self.run = WorkerRun(name, time.time())
            self.popen = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd
            )

    async def finish(self, timeout_s: float = 60.0) -> WorkerRun:
        """SIGTERM, reap (rusage of the whole life), parse the log."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)  # noqa: ASYNC222
            if pid:
                break
            if time.monotonic() > deadline:
                self.popen.kill()
                deadline = float("inf")
            await asyncio.sleep(0.05)
        self.popen.returncode = self.run.exit_code = os.waitstatus_to_exitcode(status)
        self.run.cpu_s = usage.ru_utime + usage.ru_stime
        for line in self.log.read_text(errors="replace").splitlines():
            if match := _ASSIGNED.match(line):
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                parts = frozenset(int(p) for p in match.group(2).split(",") if p.strip())
                self.run.assignments.append((stamp, parts))
            elif match := _STOPPED.search(line):
                self.run.records_read = int(match.group(1))
        if self.run.records_read is None and not self.run.assignments and status_killed(status):
            # Done before this worker got going (a small topic): SIGTERM hit it while it
            # started up, before it could read anything.
            self.run.records_read, self.run.exit_code = 0, None
        return self.run


class ScaleBench:
    def __init__(
        self,
        bootstrap: str,
        data: Prefill,
        workdir: Path,
        worker_args: Sequence[str] = (),
        worker_code: Path | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.data = data
        self.workdir = workdir
        self.worker_args = list(worker_args)
        # `python -m stream_replica` imports the package from its working directory first.
        self.worker_code = worker_code or ROOT
        self.broker = broker_pid(bootstrap)

    def _cmd(self, group: str, db: Path, *extra: str) -> list[str]:
        return worker_command(self.bootstrap, self.data.topic, group, db, *self.worker_args, *extra)

    def _launch(self, group: str, index: int, db: Path, *extra: str) -> _Proc:
        cmd = self._cmd(group, db, *extra)
        return _Proc(f"w{index}", cmd, db.with_suffix(".log"), self.worker_code)

    async def case(
        self, watcher: GroupWatcher, name: str, workers: int, join_at: float | None = None
    ) -> ScaleCase:
        """``workers`` launched at once, or (``join_at``) one, then a second once the first
        has that share of the topic in its store."""
        label = f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}-{uuid.uuid4().hex[:6]}"
        group = f"scale-{label}"
        dirs = [self.workdir / f"{label}-{i}" for i in range(workers)]
        total = self.data.total_offsets
        broker_before = proc_cpu_s(self.broker)
        async with ClientSession(timeout=ClientTimeout(total=2)) as session:
            probe: ProgressProbe | None = None
            if join_at is None:
                procs = [self._launch(group, i, d) for i, d in enumerate(dirs)]
            else:
                port = _free_port()
                procs = [self._launch(group, 0, dirs[0], "--http", f"127.0.0.1:{port}")]
                probe = ProgressProbe(session, port)
            # (time, the first worker's checkpoints) for the join share
            samples: list[tuple[float, dict[int, int]]] = []
            done: float | None = None
            deadline = time.monotonic() + 180 + total / 1000
            while time.monotonic() < deadline:
                committed = await watcher.committed(group, self.data.topic)
                if all(committed.get(p, -1) >= e for p, e in self.data.end_offsets.items()):
                    done = time.time()
                    break
                if probe is not None:
                    samples.append((time.time(), await probe.checkpoints()))
                    written = sum(samples[-1][1].values())
                    if len(procs) < workers and written >= (join_at or 0) * total:
                        procs.append(self._launch(group, len(procs), dirs[-1]))
                await asyncio.sleep(DONE_POLL_S)
        broker_after = proc_cpu_s(self.broker)
        runs = [await p.finish() for p in procs]
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        joins = [w.assignments[0][0] for w in runs if w.assignments]
        case = ScaleCase(
            name,
            self.data.records,
            min(joins) if joins else runs[0].launched,
            done,
            runs,
            None if broker_before is None or broker_after is None else broker_after - broker_before,
            load=load_average(),
        )
        if join_at is not None and len(runs) > 1 and runs[1].assignments:
            joined, given = runs[1].assignments[0]
            # the first worker's furthest checkpoint per partition before the join (a scrape
            # during the rebalance shows only the partitions it still serves)
            progress: dict[int, int] = {}
            for stamp, checkpoints in samples:
                if stamp <= joined:
                    for p, offset in checkpoints.items():
                        progress[p] = max(progress.get(p, 0), offset)
            case.joined_at_fraction = sum(progress.values()) / total
            case.joined_at = joined
            ends = self.data.end_offsets
            case.newcomer_reads = sum(ends.get(p, 0) for p in given)
            case.first_left = sum(
                end - min(end, progress.get(p, 0)) for p, end in ends.items() if p not in given
            )
        return case


@contextlib.asynccontextmanager
async def own_broker(port: int, initial_delay_ms: int) -> AsyncIterator[str]:
    """A broker of the cases' own (dev/kafka/kafka.sh on ``port``, a fresh run dir, deleted
    after) with the given initial rebalance delay; yields its bootstrap address."""
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(port + 1),
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": str(initial_delay_ms),
    }
    env.pop("KAFKA_RUN_DIR", None)  # run-PORT, where broker_pid() finds the pid

    def kafka(command: str) -> None:
        done = subprocess.run(
            [str(KAFKA_SH), command], env=env, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} on port {port}: {done.stderr[-1000:]}")

    await asyncio.to_thread(kafka, "clean")
    await asyncio.to_thread(kafka, "start")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(kafka, "clean")


async def run_scale(
    bootstrap: str,
    data: Prefill,
    workdir: Path,
    *,
    join_at: float = 0.2,
    repeats: int = 1,
    worker_args: Sequence[str] = (),
    cases: str = "abc",
    worker_code: Path | None = None,
    progress: bool = True,
    warm_up: bool = True,
) -> ScaleResult:
    """The three cases, back to back, ``repeats`` times, on the pre-filled ``data``; first
    (``warm_up``) one unreported one-worker case: a broker started for the cases is a cold
    JVM, which spent 1.4 s of CPU serving the first case against 0.4 s by the third."""
    workdir.mkdir(parents=True, exist_ok=True)
    bench = ScaleBench(bootstrap, data, workdir, worker_args, worker_code)
    result = ScaleResult(data, [], load_average(), worker_args=list(worker_args))
    async with GroupWatcher(bootstrap) as watcher:
        if warm_up:
            warm = await bench.case(watcher, "warm-up", 1)
            result.warm_up_broker_cpu_s = warm.broker_cpu_s
            if progress:
                print(f"warm-up: one worker, broker CPU {_f(warm.broker_cpu_s, 1)} s", flush=True)
        for _ in range(repeats):
            for key, name, workers, at in (
                ("a", "1 worker", 1, None),
                ("b", "2 together", 2, None),
                ("c", f"1 -> 2 at {join_at:.0%}", 2, join_at),
            ):
                if key not in cases:
                    continue
                case = await bench.case(watcher, name, workers, at)
                result.cases.append(case)
                if progress:
                    print(result.table().splitlines()[-1], flush=True)
    result.load_at_end = load_average()
    return result


async def _main(args: argparse.Namespace) -> int:
    if not args.own_broker_port:
        return await _cases(args, args.bootstrap_servers)
    print(
        f"own broker on port {args.own_broker_port}, "
        f"group.initial.rebalance.delay.ms={args.initial_rebalance_delay_ms}"
    )
    async with own_broker(args.own_broker_port, args.initial_rebalance_delay_ms) as bootstrap:
        return await _cases(args, bootstrap)


async def _cases(args: argparse.Namespace, bootstrap: str) -> int:
    workload = Workload(args.records, args.grains)
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    print(f"load average {load_average()}; pre-filling {workload.describe()} -> {topic}")
    data = await prefill(bootstrap, topic, args.partitions, workload)
    try:
        result = await run_scale(
            bootstrap,
            data,
            Path(args.workdir).resolve() / topic,
            join_at=args.join_at,
            repeats=args.repeats,
            worker_args=args.worker_arg,
            cases=args.cases,
            worker_code=args.worker_code,
            warm_up=not args.no_warm_up,
        )
    finally:
        await delete_topics(bootstrap, [topic])
    print(f"\n{result.table()}\n\nload average at start {result.load_at_start}, "
          f"at end {result.load_at_end}; worker args {result.worker_args}")  # fmt: skip
    ok = all(c.done is not None and not any(w.exit_code for w in c.workers) for c in result.cases)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--grains", type=int, default=25_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--join-at", type=float, default=0.2, help="1 -> 2: share in the 1st worker's store"
    )
    parser.add_argument("--cases", default="abc", help="a: 1 worker, b: 2 together, c: 1 -> 2")
    parser.add_argument("--repeats", type=int, default=2, help="the three cases, N times")
    parser.add_argument(
        "--worker-arg", action="append", default=[], help="extra `run` argument (repeatable)"
    )
    parser.add_argument(
        "--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--own-broker-port",
        type=int,
        default=0,
        help="run the cases on a broker of their own on this port (0: --bootstrap-servers)",
    )
    parser.add_argument(
        "--initial-rebalance-delay-ms",
        type=int,
        default=PRODUCTION_INITIAL_DELAY_MS,
        help="that broker's group.initial.rebalance.delay.ms (Kafka's default: 3000)",
    )
    parser.add_argument(
        "--no-warm-up", action="store_true", help="skip the unreported one-worker case first"
    )
    parser.add_argument("--workdir", default=".bench/scale")
    parser.add_argument(
        "--worker-code",
        type=lambda s: Path(s).resolve(),
        default=None,
        help="run the workers from this checkout (e.g. `git archive` of an older commit)",
    )
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
