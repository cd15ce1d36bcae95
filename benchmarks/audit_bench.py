"""How long ``stream-replica audit`` takes on a store of N grains (``make bench-audit``).

Pre-fills a topic (N grains, a few updates each, some Deltas and stale records so there is
shadowing to find), runs one worker until it has read everything, then times the audit of
its store against the topic. Prints grains, records read, seconds and records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import Workload, delete_topics, prefill
from stream_replica.audit import audit
from stream_replica.settings import WorkerSettings
from stream_replica.store import ReplicaStore
from stream_replica.worker import ReplicaWorker


async def run(args: argparse.Namespace) -> None:
    topic = f"bench-audit-{uuid.uuid4().hex[:8]}"
    workload = Workload(
        records=args.grains * args.updates, grains=args.grains, delta_rate=0.01, seed=5
    )
    filled = await prefill(args.bootstrap_servers, topic, args.partitions, workload)
    workdir = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        settings = WorkerSettings(
            bootstrap_servers=args.bootstrap_servers,
            topic=topic,
            group=f"{topic}-group",
            db=workdir / "db",
        )
        store = ReplicaStore(settings.db, topic)
        stop = asyncio.Event()
        task = asyncio.create_task(ReplicaWorker(settings, store, stop).run())
        while True:
            checkpoints = store.checkpoints()
            if all(
                checkpoints.get(p) is not None and checkpoints[p].next_offset >= end
                for p, end in filled.end_offsets.items()
                if end
            ):
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.5)
        stop.set()
        await task
        grains = sum(1 for _ in store.grains())
        shadowed = sum(1 for _ in store.shadowed())
        store.close()

        started = time.monotonic()
        report = await audit(settings.db, args.bootstrap_servers)
        seconds = time.monotonic() - started
        records = report.summary["records_read"]
        print(f"grains in store          {grains}")
        print(f"records in topic         {filled.records}")
        print(f"shadowed (store marks)   {shadowed}")
        print(f"divergent (audit)        {report.summary['divergent']}")
        print(f"audit seconds            {seconds:.2f}")
        print(f"audit records/s          {records / seconds:,.0f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            await delete_topics(args.bootstrap_servers, [topic])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-audit", description=__doc__)
    parser.add_argument(
        "--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--grains", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=3, help="records per grain")
    parser.add_argument("--partitions", type=int, default=6)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
