"""The main job end to end (``make demo``): a compacted topic, a workers group following it,
a sample workload with Deltas, tombstones and invalid records, progress until the lag is zero,
a summary, a check of every replica against the log, and a sample ``get``."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stream_replica import admin
from stream_replica.clients import start_client
from stream_replica.contract import ContractError, Entry, GrainId, Tombstone, decode
from stream_replica.errors import ConfigurationError
from stream_replica.fold import FoldCounts, GrainState, Polled, fold
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader
from stream_replica.workload import sample_workload

PARTITIONS = 6
console = Console(stderr=True)


async def run_demo(bootstrap_servers: str, grains: int, workers: int, workdir: str) -> int:
    root = Path(workdir)
    # Unique per run: another demo on the same broker (another user's, another workdir) has
    # other names, and only the names recorded in this workdir are ever deleted.
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    topic, dlq, group = f"demo-grains-{run_id}", f"demo-grains-{run_id}-dlq", f"demo-{run_id}"
    admin.connection(bootstrap_servers)  # a malformed address is refused before the workdir
    with DemoWorkdir.claim(root) as claimed:
        await admin.wait_for_broker(bootstrap_servers)
        await _drop_topics(bootstrap_servers, claimed.previous_topics)
        claimed.reset(bootstrap_servers, [topic, dlq])
        return await _run(bootstrap_servers, grains, workers, root, topic, dlq, group)


async def _run(
    bootstrap_servers: str, grains: int, workers: int, root: Path, topic: str, dlq: str, group: str
) -> int:
    await admin.create_topic(bootstrap_servers, topic, PARTITIONS)
    await admin.create_topic(bootstrap_servers, dlq, 1, configs=admin.dead_letter_topic_configs(1))
    console.print(f"[bold]topic[/] {topic} ({PARTITIONS} partitions, compacted), DLQ {dlq}")

    processes = []
    for index in range(workers):
        db = root / f"worker-{index}.db"
        log_path = root / f"worker-{index}.log"
        with log_path.open("wb") as log_file:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "stream_replica",
                        "run",
                        "--bootstrap-servers",
                        bootstrap_servers,
                        "--topic",
                        topic,
                        "--group",
                        group,
                        "--db",
                        str(db),
                        "--dlq-topic",
                        dlq,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
            )
    try:
        await _wait_for_members(bootstrap_servers, group, workers)
        console.print(f"[bold]{workers} workers[/] joined group {group} (logs in {root}/)")
        published = await _publish(bootstrap_servers, topic, grains)
        ends = await admin.end_offsets(bootstrap_servers, topic, PARTITIONS)
        await _follow_lag(bootstrap_servers, group, topic, ends, processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = [process.wait(60) for process in processes]
    if any(codes):
        console.print(f"[red]a worker exited with {codes}; see {root}/worker-*.log")
        return 1

    stores = sorted(root.glob("worker-*.db"))
    totals = FoldCounts()
    for db in stores:
        with ReplicaReader(db) as reader:
            totals.add(reader.counts())
    dead_letters = sum((await admin.end_offsets(bootstrap_servers, dlq, 1)).values())
    _print_summary(published, totals, dead_letters)
    mismatches, grain_count, sample = await _verify(bootstrap_servers, topic, ends, stores)
    if mismatches:
        console.print(f"[red]{mismatches} grains differ from the log's fold")
        return 1
    console.print(
        f"[green]verified:[/] all {grain_count} grains in the {len(stores)} replicas equal "
        "the fold of the log (0 mismatches)"
    )
    if sample is not None:
        (grain_type, grain_key), db = sample
        # The command as the user can type it: the virtualenv's script by its path when
        # `stream-replica` is not on PATH (README: "Two commands").
        script = Path(sys.executable).with_name("stream-replica")
        on_path = shutil.which("stream-replica") == str(script)
        program = "stream-replica" if on_path or not script.exists() else os.path.relpath(script)
        command = [program, "get", "--db", str(db), grain_type, grain_key]
        console.print(f"[bold]sample:[/] {' '.join(command)}")
        result = subprocess.run(
            [sys.executable, "-m", "stream_replica", *command[1:]],
            capture_output=True,
            text=True,
            check=False,
        )
        sys.stdout.write(result.stdout)
    return 0


class DemoWorkdir:
    """The demo's working directory, which it may empty because it made it.

    It holds ``MARKER`` (JSON: the topics of the run that used it last); a directory without
    it is the demo's only when it does not exist, is empty, or holds nothing but what the
    demo writes (``worker-N.db``, ``worker-N.log``: a workdir of a demo from before the
    marker). Anything else is refused, never emptied. The marker is locked while the demo
    runs, so a second demo in the same workdir cannot delete the first's topics.
    """

    def __init__(self, root: Path, fd: int, previous_topics: list[str]) -> None:
        self.root = root
        self._fd = fd
        self.previous_topics = previous_topics

    @classmethod
    @contextlib.contextmanager
    def claim(cls, root: Path) -> Iterator[DemoWorkdir]:
        """Check, create and lock the workdir; ConfigurationError (one line) when it is not
        the demo's or another demo runs in it."""
        marker = root / MARKER
        if root.exists() and not root.is_dir():
            raise ConfigurationError(f"--workdir {root}: exists and is not a directory")
        if root.is_dir() and not marker.exists():
            foreign = sorted(p.name for p in root.iterdir() if not _LEGACY_ENTRY.fullmatch(p.name))
            if foreign:
                raise ConfigurationError(
                    f"--workdir {root}: not empty and not made by the demo (no {MARKER} in it; "
                    f"it holds {_listing(foreign)}); the demo empties its workdir, so give a new "
                    "or empty directory"
                )
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError(
                    f"--workdir {root}: another demo is running in it; wait for it or give "
                    "another --workdir"
                ) from None
            yield cls(root, fd, _recorded_topics(os.read(fd, 1 << 20)))
        finally:
            os.close(fd)  # releases the lock

    def reset(self, bootstrap_servers: str, topics: list[str]) -> None:
        """Empty the workdir (the marker stays) and record this run's topics before creating
        them, so a run that dies halfway still has them deleted by the next one."""
        for entry in self.root.iterdir():
            if entry.name == MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        record = {"bootstrap_servers": bootstrap_servers, "topics": topics}
        data = (json.dumps(record, indent=1) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)


MARKER = ".stream-replica-demo"
_LEGACY_ENTRY = re.compile(r"worker-\d+\.(db|log)")
_DEMO_TOPIC = re.compile(r"demo-grains-[0-9A-Za-z._-]+")


def _recorded_topics(data: bytes) -> list[str]:
    """The demo topics a marker records (an unreadable marker records none)."""
    try:
        topics = json.loads(data or b"{}").get("topics", [])
    except (ValueError, AttributeError):
        return []
    if not isinstance(topics, list):
        return []
    return [t for t in topics if isinstance(t, str) and _DEMO_TOPIC.fullmatch(t)]


def _listing(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


async def _drop_topics(bootstrap_servers: str, topics: list[str]) -> None:
    """Delete the topics an earlier run in this workdir created (those still there)."""
    if not topics:
        return
    async with admin.admin_client(bootstrap_servers) as client:
        existing = set(await client.list_topics())
        ours = [t for t in topics if t in existing]
        if ours:
            await client.delete_topics(ours)


async def _wait_for_members(bootstrap_servers: str, group: str, count: int) -> None:
    # Stable with every member: publishing earlier would move partitions mid-stream, and a
    # partition's new owner rebuilds it from the beginning (its own store has no state).
    deadline = time.monotonic() + 120
    while True:
        try:
            state, members = await admin.describe_group(bootstrap_servers, group)
        except KafkaError as exc:
            if not exc.retriable:  # e.g. a fresh broker still loading __consumer_offsets
                raise
            state, members = "Unknown", []
        if state == "Stable" and len(members) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not join group {group} within 120 s")
        await asyncio.sleep(0.5)


async def _publish(bootstrap_servers: str, topic: str, grains: int) -> int:
    sent = 0
    with Progress(
        TextColumn("publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("publish", total=None)
        async with Publisher(bootstrap_servers, topic) as publisher:
            for op in sample_workload(grains):
                await publisher.publish_raw(op.key, op.value)
                sent += 1
                if sent % 1000 == 0:
                    progress.update(task, completed=sent)
            await publisher.flush()
        progress.update(task, completed=sent, total=sent)
    return sent


async def _follow_lag(
    bootstrap_servers: str,
    group: str,
    topic: str,
    ends: dict[int, int],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    total = sum(ends.values())
    deadline = time.monotonic() + 300
    with Progress(
        TextColumn("replicated"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("lag {task.fields[lag]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("lag", total=total, lag=total)
        while True:
            try:
                committed = await admin.committed_offsets(bootstrap_servers, group, topic)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                committed = {}
            done = sum(min(committed.get(p, 0), end) for p, end in ends.items())
            progress.update(task, completed=done, lag=total - done)
            if done >= total:
                return
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a worker exited early; see its log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"lag still {total - done} after 300 s")
            await asyncio.sleep(0.25)


def _print_summary(published: int, totals: FoldCounts, dead_letters: int) -> None:
    table = Table(title="replication summary (all workers)")
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("records published", published),
        ("records read", totals.records),
        ("snapshots applied", totals.applied),
        ("  of which intermediates dropped (never written)", totals.intermediates_dropped),
        ("duplicates (same sequence, the later record kept)", totals.duplicates),
        ("stale (lower sequence, ignored)", totals.stale),
        ("snapshots shadowed (see README: compaction)", totals.shadowed),
        ("Deltas refused", totals.deltas_refused),
        ("tombstones", totals.tombstones),
        ("invalid records refused", totals.invalid),
        ("dead-letter records", dead_letters),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


async def _verify(
    bootstrap_servers: str, topic: str, ends: dict[int, int], stores: list[Path]
) -> tuple[int, int, tuple[GrainId, Path] | None]:
    """Fold each partition's whole log and compare with the store that holds the partition."""
    by_partition: dict[int, list[Polled]] = {p: [] for p in ends}
    settings = admin.connection(bootstrap_servers)  # (TLS and SASL from the environment)
    consumer = AIOKafkaConsumer(**settings.options("consumer"), enable_auto_commit=False)
    await start_client(settings, consumer)
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp.partition] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=5000, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp.partition]:
                        body: Entry | Tombstone | ContractError
                        try:
                            body = decode(record.key, record.value)
                        except ContractError as exc:
                            body = exc
                        by_partition[tp.partition].append(
                            Polled(tp.partition, record.offset, None, None, body)
                        )
                if await consumer.position(tp) >= ends[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()

    mismatches = grain_count = 0
    sample: tuple[GrainId, Path] | None = None
    for partition, records in by_partition.items():
        expected = {g: s for g, s in fold(records, {}).changes.items() if s is not None}
        holder = None
        for db in stores:
            with ReplicaReader(db) as reader:
                checkpoint = reader.checkpoints().get(partition)
                if checkpoint is not None and checkpoint.next_offset == ends[partition]:
                    holder = db
                    actual: dict[GrainId, GrainState] = {
                        g: s for g, s in reader.grains() if s.partition == partition
                    }
                    break
        if holder is None:
            mismatches += len(expected) or 1
            continue
        grain_count += len(expected)
        mismatches += sum(
            1 for g in expected.keys() | actual.keys() if expected.get(g) != actual.get(g)
        )
        if sample is None and expected:
            sample = (min(expected), holder)
    return mismatches, grain_count, sample
