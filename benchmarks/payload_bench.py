"""Large payloads: where a worker's time goes catching up on 10 KiB values, and what changes it.

    python -m benchmarks.payload_bench [--records 100000 --payload 10240 --variants all]

Pre-fills a 6-partition topic (``--records`` records over records/20 grains, rounds, fixed
payload size), then runs the worker in this process once per variant with its stages timed
(``benchmarks.bench``'s breakdown: fetch, decode, state reads, fold, write), each with a fresh
group and store. Variants change one thing: RocksDB's compression, the Kafka fetch size.
``--profile`` adds a cProfile of the first variant (top functions by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import aiokafka
from rocksdict import DBCompressionType, Options

import stream_replica.store as store_module
import stream_replica.store_options as store_options
from benchmarks.bench import Bench, Breakdown, Report, load_average
from benchmarks.common import MIB, GroupWatcher, Workload
from stream_replica import admin


@contextlib.contextmanager
def rocksdb_options(change: Callable[[Options], None]) -> Iterator[None]:
    original = store_options._options

    def patched(*args: Any, **kwargs: Any) -> Options:
        options = original(*args, **kwargs)
        change(options)
        return options

    store_options._options = patched
    try:
        yield
    finally:
        store_options._options = original


@contextlib.contextmanager
def wal_always_on() -> Iterator[None]:
    """As ``--wal-off-lag 0``: the catch-up writes through the WAL (durability.py)."""
    original = store_module.ReplicaStore.write_without_wal
    store_module.ReplicaStore.write_without_wal = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        store_module.ReplicaStore.write_without_wal = original  # type: ignore[method-assign]


@contextlib.contextmanager
def consumer_options(**extra: Any) -> Iterator[None]:
    original = aiokafka.AIOKafkaConsumer.__init__

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, **extra})

    aiokafka.AIOKafkaConsumer.__init__ = patched
    try:
        yield
    finally:
        aiokafka.AIOKafkaConsumer.__init__ = original


def _no_compression(options: Options) -> None:
    options.set_compression_type(DBCompressionType.none())


def _lz4(options: Options) -> None:
    options.set_compression_type(DBCompressionType.lz4())


def _blob_files(options: Options) -> None:
    options.set_enable_blob_files(True)
    options.set_min_blob_size(4096)
    options.set_enable_blob_gc(True)


def _levels(options: Options) -> None:
    none, lz4 = DBCompressionType.none(), DBCompressionType.lz4()
    options.set_compression_per_level([none, none, lz4, lz4, lz4, lz4, lz4])


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "as shipped": contextlib.nullcontext,
    "RocksDB compression off": lambda: rocksdb_options(_no_compression),
    "RocksDB LZ4": lambda: rocksdb_options(_lz4),
    "RocksDB L0-L1 uncompressed, LZ4 below": lambda: rocksdb_options(_levels),
    "RocksDB blob files (values >= 4 KiB)": lambda: rocksdb_options(_blob_files),
    "RocksDB WAL on (--wal-off-lag 0)": wal_always_on,
    "fetch 4 MiB per partition": lambda: consumer_options(max_partition_fetch_bytes=4 * MIB),
    "fetch 256 KiB per partition": lambda: consumer_options(max_partition_fetch_bytes=256 << 10),
}


async def run(args: argparse.Namespace) -> int:
    report = Report(args, "payload_bench", datetime.now(), "", load_average())
    bench = Bench(args, report)
    await admin.wait_for_broker(bench.bootstrap, 60)
    grains = max(1, args.records // 20)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(";")
    results: list[tuple[str, Breakdown]] = []
    try:
        async with GroupWatcher(bench.bootstrap) as watcher:
            bench.watcher = watcher
            data = await bench.prefill("payload", Workload(args.records, grains, args.payload))
            raw = await bench.raw(data, args.max_records)
            if raw.consume_s:
                print(
                    f"raw aiokafka getmany({args.max_records}), its own process: "
                    f"{raw.consume_s / raw.records * 1e6:.1f} µs/record after the join, "
                    f"{raw.mib_s_after_join:.0f} MiB/s, CPU {raw.cpu_s:.1f} s (load "
                    f"{load_average()})",
                    flush=True,
                )
            for n, name in enumerate(names):
                print(f"\n{name} (load {load_average()}):", flush=True)
                profiler = cProfile.Profile() if args.profile and n == 0 else None
                with VARIANTS[name]():
                    if profiler is not None:
                        profiler.enable()
                    result = await bench.breakdown(data, args.max_records)
                    if profiler is not None:
                        profiler.disable()
                results.append((name, result))
                print(result.table(), flush=True)
                if profiler is not None:
                    text = io.StringIO()
                    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
                    print(text.getvalue(), flush=True)
    finally:
        await bench.cleanup()
    print(f"\n{args.records:,} records of {args.payload:,} B; load at the end {load_average()}")
    print("| variant | µs/record (wall) | records/s | CPU µs/record |")
    print("|---|---:|---:|---:|")
    for name, result in results:
        if result.failed or not result.records:
            print(f"| {name} | failed: {result.failed} | | |")
            continue
        per = 1e6 / result.records
        print(
            f"| {name} | {result.wall_s * per:.1f} | {result.records / result.wall_s:,.0f} | "
            f"{result.cpu_s * per:.1f} |"
        )
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.payload_bench")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=10 * 1024, help="bytes (10240)")
    parser.add_argument("--max-records", type=int, default=100)
    parser.add_argument("--variants", default="all", help=f"';'-separated of {list(VARIANTS)}")
    parser.add_argument("--profile", action="store_true", help="cProfile the first variant")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    parser.add_argument("--workdir", default=".bench", help="state dirs and child logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(list(sys.argv[1:] if argv is None else argv))))


if __name__ == "__main__":
    sys.exit(main())
