"""Our worker and the Kafka Streams app back to back, a few times, on one pre-filled topic: on
a shared machine the load changes between the rows of one ``make bench``, and a ratio of two
runs a minute apart says more than one of two runs five minutes apart.

    python -m benchmarks.kstreams_pairs [--pairs 3] [any benchmarks.bench flag: --records ...]

Each pair runs ``stream-replica run`` (max_records 100), then the Kafka Streams app, each in
its own process with a fresh group, measured and verified as in ``make bench``; it prints both
rows, their ratio (records/s after join, and CPU µs/record) and the load average before and
after the pair. Writes no report file.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime

from benchmarks import kstreams_bench
from benchmarks.bench import (
    Bench,
    Report,
    Row,
    code_revision,
    load_average,
    parse_args,
    print_row,
)
from benchmarks.common import GroupWatcher, Workload
from stream_replica import admin


def _cpu_us(row: Row) -> float:
    return (row.cpu_s or 0.0) * 1e6 / row.records


async def run(args: argparse.Namespace, pairs: int, command: str) -> int:
    report = Report(args, command, datetime.now(), code_revision(), load_average())
    bench = Bench(args, report)
    print(f"pairs run {bench.run_id} against {bench.bootstrap}; logs in {bench.logs}", flush=True)
    await admin.wait_for_broker(bench.bootstrap, 60)
    speed: list[float] = []
    cpu: list[float] = []
    try:
        async with GroupWatcher(bench.bootstrap) as watcher:
            bench.watcher = watcher
            main = await bench.prefill("main", Workload(args.records, args.grains))
            report.main_prefill = main  # our rows are verified on this topic
            for n in range(1, pairs + 1):
                before = load_average()
                ours = await bench.ours(main, 100)
                print_row(ours)
                kstreams = await kstreams_bench.run(bench, main, Row)
                print_row(kstreams)
                after = load_average()
                if ours.failed or kstreams.failed:
                    print(f"pair {n}: a run failed; load {before} -> {after}", flush=True)
                    continue
                speed.append(ours.best_rate / kstreams.best_rate)
                cpu.append(_cpu_us(kstreams) / _cpu_us(ours))
                print(
                    f"pair {n}: ours(100)/kafka-streams = {speed[-1]:.2f} (records/s after "
                    f"join); CPU µs/record kafka-streams/ours = {cpu[-1]:.2f}; "
                    f"load {before} -> {after}",
                    flush=True,
                )
    finally:
        await bench.cleanup()
    if speed:
        print(
            f"median of {len(speed)} pairs: ours(100)/kafka-streams = "
            f"{statistics.median(speed):.2f}; CPU µs/record kafka-streams/ours = "
            f"{statistics.median(cpu):.2f}",
            flush=True,
        )
    return 0 if len(speed) == pairs else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--pairs", type=int, default=3)
    known, rest = own.parse_known_args(argv)
    args = parse_args(rest)
    command = " ".join(["python -m benchmarks.kstreams_pairs", shlex.join(argv)]).strip()
    return asyncio.run(run(args, max(1, known.pairs), command))


if __name__ == "__main__":
    sys.exit(main())
