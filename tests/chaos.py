"""The chaos run (``make chaos``): workers under SIGKILL, SIGTERM, scale up/down and broker
bounces while a producer writes; then every replica is checked against the oracle.

Runs its own broker (default port 19092) so bouncing it disturbs nothing else.
``python -m tests.chaos --help`` lists the knobs; ``--small`` is the CI-sized run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from stream_replica import admin
from stream_replica.audit import audit
from stream_replica.contract import ContractError, EntryType, GrainId, Tombstone
from stream_replica.fold import GrainState
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader, StoreError
from tests.chaos_scenario import scenario
from tests.helpers import enable_fast_cleaner, force_compaction, log_records, worker_command
from tests.oracle import Oracle, read_oracle

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "dev" / "kafka" / "kafka.sh"


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stats:
    produced: int = 0
    send_failures: int = 0
    kills: int = 0
    terms: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    bounces: int = 0
    commit_samples: int = 0
    commit_ahead: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)


class Broker:
    def __init__(self, port: int, run_dir: Path) -> None:
        self.port = port
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(port + 1),
            "KAFKA_RUN_DIR": str(run_dir),
        }
        self.bootstrap = f"127.0.0.1:{port}"

    def run(self, *args: str) -> None:
        result = subprocess.run(
            [str(KAFKA_SH), *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh {' '.join(args)} failed:\n{result.stderr[-2000:]}")


class Worker:
    def __init__(self, name: str, broker: Broker, topic: str, dlq: str, group: str, root: Path):
        self.name = name
        self.db = root / f"{name}.db"
        self.log = root / f"{name}.log"
        self.args = worker_command(broker.bootstrap, topic, group, self.db, "--dlq-topic", dlq)
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log_file)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(120)
        if signum == signal.SIGTERM:
            self.exit_codes.append(code)

    def checkpoints(self) -> dict[int, int]:
        if not (self.db / "CURRENT").exists():
            return {}
        try:
            with ReplicaReader(self.db) as reader:
                return {p: c.next_offset for p, c in reader.checkpoints().items()}
        except StoreError:
            return {}


async def produce(
    broker: Broker, topic: str, args: argparse.Namespace, stats: Stats, done: asyncio.Event
) -> None:
    ops = scenario(args.grains, args.seed)
    interval = 1.0 / args.rate
    started = time.monotonic()
    async with Publisher(broker.bootstrap, topic, request_timeout_ms=60_000) as publisher:
        while stats.produced < args.records:
            op = next(ops)
            try:
                await publisher.publish_raw(op.key, op.value)
            except Exception as exc:  # broker down: aiokafka buffers/retries; count the rest
                stats.send_failures += 1
                say(f"send failed: {type(exc).__name__}")
            stats.produced += 1
            if stats.produced % 500 == 0:
                try:
                    await publisher.flush()
                except Exception as exc:
                    stats.send_failures += 1
                    say(f"flush failed: {type(exc).__name__}: {exc}")
                ahead = started + stats.produced * interval - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # rate pacing, not synchronisation
        try:
            await publisher.flush()
        except Exception as exc:
            stats.send_failures += 1
            say(f"final flush failed: {exc}")
    done.set()


async def faults(
    broker: Broker,
    workers: list[Worker],
    extra: Worker,
    args: argparse.Namespace,
    stats: Stats,
    producing_done: asyncio.Event,
) -> None:
    rng = random.Random(args.seed + 1)
    expected_duration = args.records / args.rate
    period = max(1.0, expected_duration / (args.kills + args.terms + 4))
    bounce_at = [expected_duration * (i + 1) / (args.bounces + 1) for i in range(args.bounces)]
    started = time.monotonic()
    while not producing_done.is_set() or stats.kills < args.kills or stats.bounces < args.bounces:
        await asyncio.sleep(period * rng.uniform(0.5, 1.5))  # chaos pacing
        for worker in workers:  # a worker that died on its own is a finding
            if worker.process is not None and not worker.running:
                code = worker.process.returncode
                stats.unexpected_exits.append(f"{worker.name} exited {code} on its own")
                say(f"{worker.name} exited {code} on its own; restarting")
                worker.start()
        elapsed = time.monotonic() - started
        if bounce_at and (elapsed >= bounce_at[0] or producing_done.is_set()):
            bounce_at.pop(0)
            say("bouncing the broker")
            await asyncio.to_thread(broker.run, "stop")
            await asyncio.sleep(args.bounce_down)
            await asyncio.to_thread(broker.run, "start")
            stats.bounces += 1
            continue
        roll = rng.random()
        if stats.kills < args.kills and (roll < 0.6 or producing_done.is_set()):
            victim = rng.choice([w for w in workers if w.running])
            say(f"SIGKILL {victim.name}")
            victim.signal(signal.SIGKILL)
            stats.kills += 1
            victim.start()
        elif roll < 0.8 and stats.terms < args.terms:
            victim = rng.choice([w for w in workers if w.running])
            say(f"SIGTERM {victim.name}")
            await asyncio.to_thread(victim.signal, signal.SIGTERM)
            stats.terms += 1
            victim.start()
        elif extra.running:
            say(f"scale down: SIGTERM {extra.name}")
            await asyncio.to_thread(extra.signal, signal.SIGTERM)
            stats.scale_downs += 1
        else:
            say(f"scale up: start {extra.name}")
            extra.start()
            stats.scale_ups += 1
        if producing_done.is_set() and stats.kills >= args.kills and not bounce_at:
            break


async def sample_commits(
    broker: Broker, group: str, topic: str, stores: list[Worker], stats: Stats, stop: asyncio.Event
) -> None:
    """Committed offsets must never be ahead of what some store has written."""
    while not stop.is_set():
        try:
            committed = await admin.committed_offsets(broker.bootstrap, group, topic)
        except Exception:
            committed = {}  # broker bouncing
        written: dict[int, int] = {}
        for worker in stores:
            for partition, offset in worker.checkpoints().items():
                written[partition] = max(written.get(partition, 0), offset)
        for partition, offset in committed.items():
            if offset > written.get(partition, 0):
                stats.commit_ahead.append(
                    f"p{partition}: committed {offset} > written {written.get(partition, 0)}"
                )
        stats.commit_samples += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def wait_drained(
    broker: Broker, group: str, topic: str, ends: dict[int, int], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await admin.committed_offsets(broker.bootstrap, group, topic) == ends:
                return True
        except Exception:
            pass
        await asyncio.sleep(0.5)
    return False


def partition_view(grains: dict[GrainId, GrainState], partition: int) -> dict[GrainId, GrainState]:
    return {g: s for g, s in grains.items() if s.partition == partition}


def history(oracle: Oracle, grain: GrainId) -> list[str]:
    lines = []
    for records in oracle.records.values():
        for record in records:
            body = record.body
            if isinstance(body, ContractError):
                continue
            if body.grain == grain:
                kind = (
                    "tombstone"
                    if isinstance(body, Tombstone)
                    else (f"{body.entry_type.value} seq={body.sequence}")
                )
                lines.append(f"    p{record.partition}@{record.offset} {kind}")
    return lines


def compare(
    label: str,
    actual: dict[GrainId, GrainState],
    expected: dict[GrainId, GrainState],
    oracle: Oracle,
    mismatches: list[str],
) -> None:
    for grain in sorted(actual.keys() | expected.keys()):
        if actual.get(grain) != expected.get(grain):
            got, want = actual.get(grain), expected.get(grain)
            mismatches.append(
                f"{label} grain {grain}: store seq={got and got.sequence}@{got and got.offset}, "
                f"oracle seq={want and want.sequence}@{want and want.offset}\n"
                + "\n".join(history(oracle, grain)[-8:])
            )


async def read_dlq(bootstrap: str, dlq: str) -> set[tuple[int, int]]:
    end = (await admin.end_offsets(bootstrap, dlq, 1))[0]
    found: set[tuple[int, int]] = set()
    if end == 0:
        return found
    consumer = AIOKafkaConsumer(dlq, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    seen = 0
    try:
        while seen < end:
            batch = await consumer.getmany(timeout_ms=10_000, max_records=10_000)
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    seen += 1
                    headers = dict(record.headers)
                    found.add(
                        (
                            int(headers["stream-replica.source-partition"]),
                            int(headers["stream-replica.source-offset"]),
                        )
                    )
    finally:
        await consumer.stop()
    return found


def superseded(records: list[Any]) -> set[int]:
    """Offsets the cleaner may remove: every record followed by another on the same key."""
    last: dict[bytes, int] = {}
    for record in records:
        last[record.key] = record.offset
    return {r.offset for r in records} - set(last.values())


async def compact_all(broker: Broker, topic: str, partitions: int) -> tuple[int, int]:
    """Force the cleaner through every partition; returns records before and after."""
    before = after = 0
    for partition in range(partitions):
        records = await log_records(broker.bootstrap, topic, partition)
        before += len(records)
        await force_compaction(
            broker.bootstrap, topic, superseded(records), partition=partition, timeout=300
        )
        after += len(await log_records(broker.bootstrap, topic, partition))
    return before, after


async def run_until_caught_up(
    worker: Worker, broker: Broker, topic: str, partitions: int, timeout: float, done: Any = None
) -> bool:
    """Start ``worker``, wait until its store reached every partition's end (and ``done``
    holds), stop it with SIGTERM."""
    worker.start()
    deadline = time.monotonic() + timeout
    reached = False
    while time.monotonic() < deadline:
        ends = await admin.end_offsets(broker.bootstrap, topic, partitions)
        if worker.checkpoints() == {p: e for p, e in ends.items() if e} and (
            done is None or done()
        ):
            reached = True
            break
        await asyncio.sleep(0.5)
    worker.signal(signal.SIGTERM)
    return reached


def store_view(db: Path) -> tuple[dict[GrainId, GrainState], set[GrainId]]:
    with ReplicaReader(db) as reader:
        return dict(reader.grains()), {g for g, _ in reader.shadowed()}


async def compaction_phase(
    broker: Broker,
    topic: str,
    dlq: str,
    args: argparse.Namespace,
    live: Worker,
    root: Path,
    mismatches: list[str],
) -> list[tuple[str, object]]:
    """Let the cleaner really run, then: the audit names exactly the grains the live store
    marks shadowed; a fresh rebuild equals the live store except those; after the live worker
    repairs them (--repair-shadowed) and the cleaner runs again, a rebuild equals it exactly."""
    live_grains, shadowed = store_view(live.db)
    await enable_fast_cleaner(broker.bootstrap, topic)
    before, after = await compact_all(broker, topic, args.partitions)
    say(f"compaction: {before} records -> {after}; {len(shadowed)} shadowed grains")

    started = time.monotonic()
    report = await audit(live.db, broker.bootstrap, progress=say)
    audit_seconds = time.monotonic() - started
    audited = {(d["grain_type"], d["grain_key"]) for d in report.divergent}
    if audited != shadowed:
        mismatches.append(
            f"audit found {len(audited)} divergent grains, the store marks {len(shadowed)} "
            f"shadowed; e.g. {sorted(audited ^ shadowed)[:3]}"
        )

    rebuild = Worker("worker-rebuild", broker, topic, dlq, "chaos-rebuild", root)
    if not await run_until_caught_up(rebuild, broker, topic, args.partitions, args.drain_timeout):
        mismatches.append("the rebuild after compaction did not catch up")
    rebuilt, _ = store_view(rebuild.db)
    differing = {
        g for g in live_grains.keys() | rebuilt.keys() if live_grains.get(g) != rebuilt.get(g)
    }
    if differing - shadowed:
        mismatches.append(
            f"{len(differing - shadowed)} grains differ after a rebuild without being reported "
            f"shadowed, e.g. {sorted(differing - shadowed)[:3]}"
        )
    if shadowed - differing:
        mismatches.append(
            f"shadowed grains a rebuild restores anyway: {sorted(shadowed - differing)[:3]}"
        )

    # Repair: the live worker again, re-publishing what is shadowed, until nothing is.
    live.args = [*live.args, "--repair-shadowed"]
    repaired = await run_until_caught_up(
        live, broker, topic, args.partitions, args.drain_timeout,
        done=lambda: not store_view(live.db)[1],
    )  # fmt: skip
    repairs = live.log.read_text().count("repaired grain")
    if not repaired:
        mismatches.append("the repairing worker did not clear every shadowed grain")
    repaired_grains, _ = store_view(live.db)
    await compact_all(broker, topic, args.partitions)
    second = Worker("worker-rebuild-2", broker, topic, dlq, "chaos-rebuild-2", root)
    if not await run_until_caught_up(second, broker, topic, args.partitions, args.drain_timeout):
        mismatches.append("the rebuild after repair did not catch up")
    rebuilt_after_repair, _ = store_view(second.db)
    after_repair = {
        g for g in repaired_grains.keys() | rebuilt_after_repair.keys()
        if repaired_grains.get(g) != rebuilt_after_repair.get(g)
    }  # fmt: skip
    if after_repair:
        mismatches.append(
            f"{len(after_repair)} grains differ from a rebuild after repair, e.g. "
            f"{sorted(after_repair)[:3]}"
        )
    return [
        ("compaction: records before / after", f"{before} / {after}"),
        ("shadowed grains (store marks = audit)", f"{len(shadowed)} = {len(audited)}"),
        ("rebuilt != live, not reported", len(differing - shadowed)),
        ("audit s (grains)", f"{audit_seconds:.2f} ({report.summary['grains_in_store']})"),
        ("repairs published", repairs),
        ("rebuilt after repair != live", len(after_repair)),
    ]


async def run(args: argparse.Namespace) -> int:
    root = Path(args.workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    broker = Broker(args.port, root / "broker")
    say(f"starting a dedicated broker on {broker.bootstrap}")
    broker.run("start")
    stats = Stats()
    topic, dlq, group = "chaos-grains", "chaos-dlq", "chaos-replicas"
    workers: list[Worker] = []
    extra: Worker | None = None
    try:
        await admin.create_topic(broker.bootstrap, topic, args.partitions)
        await admin.create_topic(broker.bootstrap, dlq, 1, configs={"cleanup.policy": "delete"})
        workers = [
            Worker(f"worker-{i}", broker, topic, dlq, group, root) for i in range(args.workers)
        ]
        extra = Worker("worker-extra", broker, topic, dlq, group, root)
        for worker in workers:
            worker.start()
        producing_done, sampling_done = asyncio.Event(), asyncio.Event()
        started = time.monotonic()
        sampler = asyncio.create_task(
            sample_commits(broker, group, topic, [*workers, extra], stats, sampling_done)
        )
        await asyncio.gather(
            produce(broker, topic, args, stats, producing_done),
            faults(broker, workers, extra, args, stats, producing_done),
        )
        say(f"producing and faults done after {time.monotonic() - started:.0f} s; draining")
        for worker in workers:
            if not worker.running:
                worker.start()
        oracle = await read_oracle(broker.bootstrap, topic, args.partitions)
        ends = oracle.end_offsets()
        drained = await wait_drained(broker, group, topic, ends, args.drain_timeout)
        sampling_done.set()
        await sampler
        for worker in [*workers, extra]:
            if worker.running:
                worker.signal(signal.SIGTERM)

        mismatches: list[str] = []
        if not drained:
            mismatches.append(f"group did not drain to {ends} within {args.drain_timeout} s")
        deltas_applied = 0
        delta_offsets = {
            (r.partition, r.offset)
            for records in oracle.records.values()
            for r in records
            if not isinstance(r.body, (ContractError, Tombstone))
            and r.body.entry_type is EntryType.DELTA
        }
        for worker in [*workers, extra]:
            if not (worker.db / "CURRENT").exists():
                continue
            with ReplicaReader(worker.db) as reader:
                checkpoints = {p: c.next_offset for p, c in reader.checkpoints().items()}
                grains = dict(reader.grains())
            deltas_applied += sum(
                1 for s in grains.values() if (s.partition, s.offset) in delta_offsets
            )
            for partition, next_offset in checkpoints.items():
                expected = partition_view(oracle.expected({partition: next_offset}), partition)
                compare(
                    f"{worker.name} p{partition}@{next_offset}",
                    partition_view(grains, partition),
                    expected,
                    oracle,
                    mismatches,
                )

        # A final single worker takes every partition and must equal the oracle everywhere.
        final = workers[0]
        final.start()
        final_drained = await wait_drained(broker, group, topic, ends, args.drain_timeout)
        for _ in range(600):
            if final.checkpoints() == {p: e for p, e in ends.items() if e}:
                break
            await asyncio.sleep(0.2)
        final.signal(signal.SIGTERM)
        with ReplicaReader(final.db) as reader:
            final_grains = dict(reader.grains())
            final_checkpoints = {p: c.next_offset for p, c in reader.checkpoints().items()}
        if final_checkpoints != {p: e for p, e in ends.items() if e}:
            mismatches.append(f"final worker checkpoints {final_checkpoints} != ends {ends}")
        compare("final", final_grains, oracle.expected(), oracle, mismatches)
        committed = await admin.committed_offsets(broker.bootstrap, group, topic)
        if committed != ends or not final_drained:
            mismatches.append(f"committed {committed} != end offsets {ends}")

        dlq_sources = await read_dlq(broker.bootstrap, dlq)
        missing_dlq = oracle.rejected() - dlq_sources
        if missing_dlq:
            mismatches.append(
                f"{len(missing_dlq)} refused records missing from the DLQ, e.g. "
                f"{sorted(missing_dlq)[:5]}"
            )
        if deltas_applied:
            mismatches.append(f"{deltas_applied} grains hold a Delta's state")
        compaction_rows: list[tuple[str, object]] = []
        if args.compaction:
            compaction_rows = await compaction_phase(
                broker, topic, dlq, args, final, root, mismatches
            )
        mismatches.extend(f"commit ahead of store: {c}" for c in stats.commit_ahead[:5])
        mismatches.extend(stats.unexpected_exits[:5])
        bad_exits = {w.name: w.exit_codes for w in [*workers, extra] if any(w.exit_codes)}
        if bad_exits:
            mismatches.append(f"SIGTERM exits not 0: {bad_exits}")

        rebalances = sum(
            w.log.read_text().count("assigned partitions")
            for w in [*workers, extra]
            if w.log.exists()
        )
        rows = [
            ("records in topic", sum(ends.values())),
            ("records produced (send failures)", f"{stats.produced} ({stats.send_failures})"),
            ("grains in final replica", len(final_grains)),
            (
                "refused (Delta + invalid) / in DLQ",
                f"{len(oracle.rejected())} / {len(dlq_sources & oracle.rejected())}",
            ),
            ("SIGKILLs", stats.kills),
            ("SIGTERM stops", stats.terms),
            ("scale up / down", f"{stats.scale_ups} / {stats.scale_downs}"),
            ("broker bounces", stats.bounces),
            ("assignments seen (rebalances x members)", rebalances),
            (
                "commit-vs-store samples (ahead)",
                f"{stats.commit_samples} ({len(stats.commit_ahead)})",
            ),
            ("Deltas applied", deltas_applied),
            *compaction_rows,
            ("duration s", f"{time.monotonic() - started:.0f}"),
            ("mismatches", len(mismatches)),
        ]
        width = max(len(name) for name, _ in rows)
        print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
        for mismatch in mismatches[:10]:
            print("MISMATCH " + mismatch)
        return 1 if mismatches else 0
    finally:
        for worker in [*workers, *([extra] if extra else [])]:
            if worker.running:
                worker.signal(signal.SIGKILL)
        if not args.keep_broker:
            broker.run("stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    parser.add_argument("--small", action="store_true", help="CI size: a minute or two")
    parser.add_argument("--grains", type=int, default=5000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s produced")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--terms", type=int, default=4)
    parser.add_argument("--bounces", type=int, default=2)
    parser.add_argument("--bounce-down", type=float, default=5.0, help="seconds the broker is down")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--port", type=int, default=19092)
    parser.add_argument("--workdir", default=".chaos")
    parser.add_argument("--keep-broker", action="store_true")
    parser.add_argument(
        "--no-compaction",
        dest="compaction",
        action="store_false",
        help="skip the compaction phase (cleaner, audit, rebuild, repair, rebuild)",
    )
    args = parser.parse_args(argv)
    if args.small:
        args.grains, args.records, args.rate = 500, 15_000, 300.0
        args.kills, args.terms, args.bounces = 4, 2, 1
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
