"""The chaos run (``make chaos``): workers under SIGKILL, SIGTERM, scale up/down and broker
bounces while a producer writes; then every replica is checked against the oracle.

Runs its own broker (default port 19092) so bouncing it disturbs nothing else.
``python -m tests.chaos --help`` lists the knobs; ``--small`` is the CI-sized run.

``--cluster`` runs a 3-broker KRaft cluster instead (brokers on ports 14092, 15092, 16092 by
default; topic and DLQ with replication factor 3 and min.insync.replicas 2) and, while the
producer and the workers run: SIGKILL of the broker leading the most partitions, a controlled
shutdown of another, a restart of each, and one period with two brokers down. It also checks
that every record the producer saw acknowledged is in the log, that nothing was acknowledged
while two brokers were down, and measures how long each failover stalled replication (see
``measure_stall``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
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
from tests.kafka_cluster import KafkaCluster, fully_in_sync, leaders
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
    # cluster mode
    sent: list[tuple[bytes | None, bytes | None, asyncio.Future[Any]]] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    broker_kills: int = 0
    broker_stops: int = 0
    broker_restarts: int = 0
    two_down_periods: int = 0
    two_down_window: tuple[float, float] | None = None
    stalls: dict[str, list[float]] = field(default_factory=dict)  # fault kind -> seconds
    not_resumed: list[str] = field(default_factory=list)
    cluster_faults_done: asyncio.Event = field(default_factory=asyncio.Event)
    # Cleared while a failover's stall is measured: worker faults wait, so a rebalance does
    # not get counted as failover time.
    no_failover: asyncio.Event = field(default_factory=asyncio.Event)
    worker_fault_busy: bool = False
    last_worker_fault: float = 0.0


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
    def __init__(
        self, name: str, broker: Broker | KafkaCluster, topic: str, dlq: str, group: str, root: Path
    ):
        self.name = name
        self.db = root / f"{name}.db"
        self.log = root / f"{name}.log"
        self.args = worker_command(broker.bootstrap, topic, group, self.db, "--dlq-topic", dlq)
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.signalled = False  # the last exit was ours (a signal), not the worker's own

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log_file)
        self.signalled = False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.signalled = True
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
    broker: Broker | KafkaCluster,
    topic: str,
    args: argparse.Namespace,
    stats: Stats,
    done: asyncio.Event,
) -> None:
    ops = scenario(args.grains, args.seed)
    interval = 1.0 / args.rate
    started = time.monotonic()

    def acknowledged(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            stats.ack_times.append(time.monotonic())

    async with Publisher(broker.bootstrap, topic, request_timeout_ms=60_000) as publisher:
        # In cluster mode the broker faults need a live stream: produce until they are done.
        while stats.produced < args.records or (
            args.cluster and not stats.cluster_faults_done.is_set()
        ):
            op = next(ops)
            try:
                future = await publisher.publish_raw(op.key, op.value)
                if args.cluster:
                    future.add_done_callback(acknowledged)
                    stats.sent.append((op.key, op.value, future))
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
    broker: Broker | KafkaCluster,
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
        if stats.worker_fault_busy:  # the previous action is done
            stats.worker_fault_busy, stats.last_worker_fault = False, time.monotonic()
        await asyncio.sleep(period * rng.uniform(0.5, 1.5))  # chaos pacing
        await stats.no_failover.wait()
        stats.worker_fault_busy = True
        for worker in workers:  # a worker that died on its own is a finding
            if worker.process is not None and not worker.running:
                code = worker.process.returncode
                stats.unexpected_exits.append(f"{worker.name} exited {code} on its own")
                say(f"{worker.name} exited {code} on its own; restarting")
                worker.start()
        if extra.process is not None and not extra.running and not extra.signalled:
            code = extra.process.returncode
            stats.unexpected_exits.append(f"{extra.name} exited {code} on its own")
            say(f"{extra.name} exited {code} on its own")
            extra.signalled = True  # reported once; the scale-up below may start it again
        elapsed = time.monotonic() - started
        if bounce_at and (elapsed >= bounce_at[0] or producing_done.is_set()):
            bounce_at.pop(0)
            assert isinstance(broker, Broker)
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
    stats.worker_fault_busy, stats.last_worker_fault = False, time.monotonic()


async def sample_commits(
    broker: Broker | KafkaCluster,
    group: str,
    topic: str,
    stores: list[Worker],
    stats: Stats,
    stop: asyncio.Event,
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
    broker: Broker | KafkaCluster, group: str, topic: str, ends: dict[int, int], timeout: float
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


def store_positions(stores: list[Worker]) -> dict[int, int]:
    """Per partition, the furthest checkpoint any store has written."""
    written: dict[int, int] = {}
    for worker in stores:
        for partition, offset in worker.checkpoints().items():
            written[partition] = max(written.get(partition, 0), offset)
    return written


async def measure_stall(
    stores: list[Worker],
    thresholds: dict[int, int],
    fault_at: float,
    timeout: float,
) -> dict[int, float | None]:
    """Seconds from the fault until some store's checkpoint of each partition passes its
    threshold (the partition's end offset read just before the fault, after a kill also past
    every record acknowledged before it), i.e. until a record that was not yet in the log at
    the fault has been written to a replica. Checkpoints are sampled every 0.25 s, so figures
    are rounded up to that. None: not within ``timeout``."""
    result: dict[int, float | None] = dict.fromkeys(thresholds)
    remaining = set(thresholds)
    while remaining:
        written = await asyncio.to_thread(store_positions, stores)
        now = time.monotonic()
        for partition in list(remaining):
            if written.get(partition, 0) > thresholds[partition]:
                result[partition] = now - fault_at
                remaining.discard(partition)
        if now - fault_at > timeout:
            break
        await asyncio.sleep(0.25)  # sampling period of the measurement, not synchronisation
    return result


async def wait_in_sync(cluster: KafkaCluster, topics: list[str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not await fully_in_sync(cluster.bootstrap, topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"partitions of {topics} not fully in sync within {timeout:.0f} s")
        await asyncio.sleep(0.5)


def most_leading(leader_of: dict[int, int], candidates: list[int]) -> int:
    counts = {b: sum(1 for leader in leader_of.values() if leader == b) for b in candidates}
    return max(candidates, key=lambda b: (counts[b], -b))


async def wait_group_stable(bootstrap: str, group: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if (await admin.describe_group(bootstrap, group))[0] == "Stable":
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"group {group} not stable within {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def cluster_faults(
    cluster: KafkaCluster,
    stores: list[Worker],
    topic: str,
    dlq: str,
    group: str,
    args: argparse.Namespace,
    stats: Stats,
) -> None:
    """SIGKILL of the leader of most partitions, a controlled shutdown of another, a restart
    of each, then two brokers down at once; every failover's replication stall is measured.

    Faults run one after the other: before each, worker faults are paused, the last one has
    had 12 s to settle and the group must be stable, so a stall is the failover's own and not
    a worker rebalance's."""
    expected = args.records / args.rate
    gap = max(5.0, expected / 8)
    topics = [topic, dlq, "__consumer_offsets"]

    async def fault(kind: str, victims: list[int], action: Any) -> asyncio.Task[None]:
        """Run ``action`` (a blocking call) after recording what the victims lead and where
        the log ends; returns the task measuring the stall of those partitions."""
        stats.no_failover.clear()
        # Let the last worker fault settle: a SIGKILLed member leaves the group only when its
        # session (10 s) expires, and the rebalance that follows must not count as failover.
        while True:
            quiet_for = time.monotonic() - stats.last_worker_fault
            if not stats.worker_fault_busy and quiet_for >= 12.0:
                break
            await asyncio.sleep(max(0.25, 12.0 - quiet_for))
        await wait_group_stable(cluster.bootstrap, group)
        leader_of = await leaders(cluster.bootstrap, topic)
        moved = sorted(p for p, leader in leader_of.items() if leader in victims)
        ends = await admin.end_offsets(cluster.bootstrap, topic, args.partitions)
        fault_at = time.monotonic()
        say(f"{kind}: broker(s) {victims} leading partitions {moved}")
        await asyncio.to_thread(action)
        thresholds = {p: ends[p] for p in moved}
        if kind != "controlled shutdown":
            # Records acknowledged between reading the ends and the kill were written before
            # it: the killed leader acknowledges nothing after its death.
            for p, acked_end in acknowledged_ends(stats).items():
                if p in thresholds:
                    thresholds[p] = max(thresholds[p], acked_end)

        async def measure() -> None:
            stalls = await measure_stall(stores, thresholds, fault_at, args.stall_timeout)
            for partition, seconds in stalls.items():
                if seconds is None:
                    stats.not_resumed.append(
                        f"{kind}: p{partition} not replicated again within {args.stall_timeout} s"
                    )
                else:
                    stats.stalls.setdefault(kind, []).append(seconds)
            shown = {p: (f"{s:.1f}" if s is not None else "-") for p, s in stalls.items()}
            say(f"{kind}: replication stall per moved partition (s) {shown}")

        return asyncio.create_task(measure())

    measuring: asyncio.Task[None] | None = None
    try:
        await asyncio.sleep(gap)  # chaos pacing
        await wait_in_sync(cluster, topics)
        first = most_leading(await leaders(cluster.bootstrap, topic), cluster.ids)
        measuring = await fault("kill -9", [first], lambda: cluster.kill_broker(first))
        stats.broker_kills += 1
        await measuring
        stats.no_failover.set()
        await asyncio.sleep(gap / 2)  # chaos pacing: the cluster runs degraded for a while
        say(f"restarting broker {first}")
        await asyncio.to_thread(cluster.start_broker, first)
        stats.broker_restarts += 1
        await wait_in_sync(cluster, topics)

        await asyncio.sleep(gap)
        others = [b for b in cluster.ids if b != first]
        second = most_leading(await leaders(cluster.bootstrap, topic), others)
        measuring = await fault(
            "controlled shutdown", [second], lambda: cluster.stop_broker(second)
        )
        stats.broker_stops += 1
        await measuring
        stats.no_failover.set()
        await asyncio.sleep(gap / 2)
        say(f"restarting broker {second}")
        await asyncio.to_thread(cluster.start_broker, second)
        stats.broker_restarts += 1
        await wait_in_sync(cluster, topics)

        await asyncio.sleep(gap)
        leader_of = await leaders(cluster.bootstrap, topic)
        hard = most_leading(leader_of, cluster.ids)
        soft = most_leading(leader_of, [b for b in cluster.ids if b != hard])

        def two_down() -> None:
            cluster.kill_broker(hard)
            cluster.stop_broker(soft)

        measuring = await fault("two brokers down", [hard, soft], two_down)
        both_down_at = time.monotonic()
        stats.broker_kills += 1
        stats.broker_stops += 1
        stats.two_down_periods += 1
        await asyncio.sleep(args.two_down)  # how long the cluster stays degraded
        restart_at = time.monotonic()
        # acks=all with min.insync.replicas=2 and one live broker: nothing may be acknowledged
        # (a second of grace for responses already on the wire when the second broker went).
        stats.two_down_window = (both_down_at + 1.0, restart_at)
        say(f"restarting brokers {hard} and {soft}")
        await asyncio.to_thread(cluster.start_broker, hard, soft)
        stats.broker_restarts += 2
        await measuring
        stats.no_failover.set()
        await wait_in_sync(cluster, topics)
    finally:
        if measuring is not None:
            measuring.cancel()
        stats.no_failover.set()
        stats.cluster_faults_done.set()


def acknowledged_ends(stats: Stats) -> dict[int, int]:
    """Per partition, one past the highest offset acknowledged so far."""
    ends: dict[int, int] = {}
    for _, _, future in stats.sent:
        if future.done() and not future.cancelled() and future.exception() is None:
            meta = future.result()
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


def acknowledged_lost(stats: Stats, oracle: Oracle) -> tuple[int, list[str]]:
    """(records acknowledged, descriptions of acknowledged records not in the log)."""
    log = {(r.partition, r.offset): r for records in oracle.records.values() for r in records}
    acked, lost = 0, []
    for key, value, future in stats.sent:
        if not future.done() or future.cancelled() or future.exception() is not None:
            continue
        acked += 1
        meta = future.result()
        found = log.get((meta.partition, meta.offset))
        if found is None or found.key != key or found.value != value:
            lost.append(f"acknowledged record p{meta.partition}@{meta.offset} not in the log")
    return acked, lost


def p50_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


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
    broker: Broker | KafkaCluster
    if args.cluster:
        broker = KafkaCluster(args.cluster_port, root / "cluster", args.brokers)
        say(f"starting a dedicated {args.brokers}-broker cluster on {broker.bootstrap}")
    else:
        broker = Broker(args.port, root / "broker")
        say(f"starting a dedicated broker on {broker.bootstrap}")
        broker.run("start")
    stats = Stats()
    stats.no_failover.set()
    topic, dlq, group = "chaos-grains", "chaos-dlq", "chaos-replicas"
    workers: list[Worker] = []
    extra: Worker | None = None
    try:
        replication = 1
        dlq_configs = {"cleanup.policy": "delete"}
        if isinstance(broker, KafkaCluster):
            broker.start()  # inside the try: a half-started cluster is stopped too
            replication = min(3, args.brokers)
            dlq_configs["min.insync.replicas"] = str(max(1, min(2, replication - 1)))
        await admin.create_topic(broker.bootstrap, topic, args.partitions, replication)
        await admin.create_topic(broker.bootstrap, dlq, 1, replication, configs=dlq_configs)
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
        tasks = [
            produce(broker, topic, args, stats, producing_done),
            faults(broker, workers, extra, args, stats, producing_done),
        ]
        if isinstance(broker, KafkaCluster):
            tasks.append(cluster_faults(broker, [*workers, extra], topic, dlq, group, args, stats))
        await asyncio.gather(*tasks)
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
        mismatches.extend(f"committed offset went back: {c}" for c in stats.commit_regressions[:5])
        mismatches.extend(stats.unexpected_exits[:5])
        cluster_rows: list[tuple[str, object]] = []
        if isinstance(broker, KafkaCluster):
            acked, lost = acknowledged_lost(stats, oracle)
            mismatches.extend(lost[:5])
            if lost:
                mismatches.append(f"{len(lost)} acknowledged records are not in the log")
            window = stats.two_down_window
            acked_two_down = (
                sum(1 for t in stats.ack_times if window[0] <= t <= window[1]) if window else 0
            )
            if acked_two_down:
                mismatches.append(
                    f"{acked_two_down} records acknowledged while two brokers were down"
                )
            mismatches.extend(stats.not_resumed[:5])
            all_stalls = [s for values in stats.stalls.values() for s in values]
            cluster_rows = [
                ("brokers", args.brokers),
                (
                    "broker kill -9 / controlled shutdowns",
                    f"{stats.broker_kills} / {stats.broker_stops}",
                ),
                ("broker restarts", stats.broker_restarts),
                (
                    "periods with two brokers down (s)",
                    f"{stats.two_down_periods} ({args.two_down:.0f})",
                ),
                (
                    "failovers (moved partition leaderships)",
                    len(all_stalls) + len(stats.not_resumed),
                ),
                *(
                    (f"stall s p50 / max: {kind}", p50_max(values))
                    for kind, values in stats.stalls.items()
                ),
                ("stall s p50 / max: all failovers", p50_max(all_stalls)),
                ("records acknowledged (lost)", f"{acked} ({len(lost)})"),
                ("acknowledged while two brokers down", acked_two_down),
            ]
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
            *cluster_rows,
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
            if isinstance(broker, KafkaCluster):
                broker.stop()
            else:
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
    parser.add_argument(
        "--cluster", action="store_true", help="a 3-broker cluster with broker failovers"
    )
    parser.add_argument("--brokers", type=int, default=3, help="brokers in --cluster mode")
    parser.add_argument(
        "--cluster-port", type=int, default=14092, help="broker i on PORT+(i-1)*1000"
    )
    parser.add_argument(
        "--two-down", type=float, default=10.0, help="seconds two brokers stay down"
    )
    parser.add_argument(
        "--stall-timeout", type=float, default=120.0, help="max wait for a failover to resume"
    )
    parser.add_argument(
        "--static", action="store_true", help="workers with --instance-id and --standby-replicas 1"
    )
    parser.add_argument(
        "--session-timeout-ms", type=int, default=10_000, help="with --static (default 10000)"
    )
    args = parser.parse_args(argv)
    if args.small:
        args.grains, args.records, args.rate = 500, 10_000, 300.0
        args.kills, args.terms, args.bounces = 4, 2, 1
    if args.cluster:
        args.bounces = 0  # the cluster faults replace whole-broker bounces
        if args.brokers < 3:
            parser.error("--cluster needs --brokers 3 or more (two are taken down at once)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
