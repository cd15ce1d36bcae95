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

from aiokafka import AIOKafkaConsumer

from stream_replica import admin
from stream_replica.contract import ContractError, EntryType, GrainId, Tombstone
from stream_replica.fold import GrainState
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader, StoreError
from tests.chaos_scenario import scenario
from tests.helpers import worker_command
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
    commit_regressions: list[str] = field(default_factory=list)
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
    """Committed offsets must never be ahead of what some store has written, nor go back."""
    highest: dict[int, int] = {}
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
            if offset < highest.get(partition, -1):
                stats.commit_regressions.append(f"p{partition}: {highest[partition]} -> {offset}")
            highest[partition] = max(offset, highest.get(partition, -1))
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
        if args.static:  # stable ownership: instance ids and warm standbys
            for worker in [*workers, extra]:
                worker.args += ["--instance-id", worker.name, "--standby-replicas", "1"]
                worker.args += ["--session-timeout-ms", str(args.session_timeout_ms)]
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
        mismatches.extend(f"commit ahead of store: {c}" for c in stats.commit_ahead[:5])
        mismatches.extend(f"committed offset went back: {c}" for c in stats.commit_regressions[:5])
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
            ("committed offsets gone back", len(stats.commit_regressions)),
            ("instance ids + 1 standby", "yes" if args.static else "no"),
            ("Deltas applied", deltas_applied),
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
        "--static", action="store_true", help="workers with --instance-id and --standby-replicas 1"
    )
    parser.add_argument(
        "--session-timeout-ms", type=int, default=10_000, help="with --static (default 10000)"
    )
    args = parser.parse_args(argv)
    if args.small:
        args.grains, args.records, args.rate = 500, 15_000, 300.0
        args.kills, args.terms, args.bounces = 4, 2, 1
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
