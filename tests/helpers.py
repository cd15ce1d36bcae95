"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_replica import admin
from stream_replica.contract import Entry, EntryType, encode_key, encode_value
from stream_replica.publisher import Publisher
from stream_replica.settings import WorkerSettings
from stream_replica.store import ReplicaStore
from stream_replica.worker import ReplicaWorker

TopicFactory = Callable[..., Awaitable[str]]
ROOT = Path(__file__).resolve().parent.parent
# One target dir for every cargo project in the repo (ignored by git), so a rerun is
# incremental and the rdkafka build is shared; CARGO_TARGET_DIR overrides it.
CARGO_TARGET_DIR = ROOT / ".cache" / "cargo-target"


def cargo_or_skip() -> str:
    """The cargo executable, or skip the test saying why."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed (these tests need a Rust toolchain with cargo)")
    return cargo


def cargo(project: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """Run ``cargo ARGS`` in ``project`` with the shared target dir; fail with cargo's output
    when it fails."""
    env = {**os.environ}
    env.setdefault("CARGO_TARGET_DIR", str(CARGO_TARGET_DIR))
    done = subprocess.run(
        [cargo_or_skip(), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cargo {' '.join(args)} in {project.relative_to(ROOT)} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return done


def cargo_target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", str(CARGO_TARGET_DIR)))


async def publish_unchecked(
    publisher: Publisher,
    grain_type: str,
    grain_key: str,
    payload: bytes,
    sequence: int,
    entry_type: EntryType = EntryType.FULL_STATE,
) -> None:
    """Publish what a misbehaving primary would (Deltas, lower sequences): ``Publisher``
    refuses those, but replicas must cope with them."""
    entry = Entry(grain_type, grain_key, sequence, sequence, "primary", entry_type, payload)
    await publisher.publish_raw(encode_key(grain_type, grain_key), encode_value(entry))


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def log_records(bootstrap: str, topic: str, partition: int = 0) -> list[Any]:
    """The records the partition holds now (after whatever the cleaner did)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            records.extend(r for r in batch.get(tp, []) if r.offset < end)
        return records
    finally:
        await consumer.stop()


async def log_offsets(bootstrap: str, topic: str, partition: int = 0) -> list[int]:
    return [r.offset for r in await log_records(bootstrap, topic, partition)]


async def enable_fast_cleaner(bootstrap: str, topic: str) -> None:
    """Let the cleaner compact ``topic`` as soon as it can (segments roll after 200 ms)."""
    configs = admin.replication_topic_configs(1) | {
        "segment.ms": "200",
        "min.cleanable.dirty.ratio": "0.001",
    }
    async with admin.admin_client(bootstrap) as client:
        await client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])


async def force_compaction(
    bootstrap: str, topic: str, gone: set[int], partition: int = 0, timeout: float = 90.0
) -> None:
    """Make the log cleaner remove the records at ``gone`` offsets (a topic made with
    ``fast_cleaner``): the active segment is never cleaned, so keep appending a tombstone of
    a key no test uses, which rolls the segment once segment.ms has passed."""
    async with Publisher(bootstrap, topic) as roller:

        async def cleaned() -> bool:
            await roller.publish_raw(b"compaction/roll", None, partition=partition)
            await roller.flush()
            return not gone & set(await log_offsets(bootstrap, topic, partition))

        await wait_until(
            cleaned, timeout, interval=0.5, what=f"the cleaner to remove {sorted(gone)}"
        )


def cli(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess (the way operators and scripts do)."""
    return subprocess.run(
        [sys.executable, "-m", "stream_replica", *args],
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 120),
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,
    )


def worker_command(bootstrap: str, topic: str, group: str, db: object, *extra: str) -> list[str]:
    """``stream-replica run`` as a subprocess command line."""
    return [
        sys.executable, "-m", "stream_replica", "run",
        "--bootstrap-servers", bootstrap, "--topic", topic, "--group", group, "--db", str(db),
        *extra,
    ]  # fmt: skip


def read_until(process: subprocess.Popen[str], text: str) -> None:
    """Read the process's stderr until a line contains ``text`` (fail if it exits first).
    Collect the rest with :func:`finish`, not ``communicate``."""
    assert process.stderr is not None
    for line in process.stderr:
        if text in line:
            return
    raise AssertionError(f"process exited before printing {text!r}")


def finish(process: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the process to exit; the rest of its stderr. Reads through the buffered
    reader read_until used: ``communicate(timeout=...)`` reads the raw pipe and loses what
    that reader had already read ahead (a test counting log lines missed one)."""
    assert process.stderr is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(process.stderr.read)
        try:
            rest = reading.result(timeout)
        except concurrent.futures.TimeoutError:
            process.kill()
            rest = reading.result(30)
            raise AssertionError(
                f"process did not exit within {timeout:g} s; its stderr ends: {rest[-2000:]}"
            ) from None
    process.wait(30)
    return rest


class InProcessWorker:
    def __init__(self, bootstrap: str, topic: str, group: str, db: Path, **options: Any) -> None:
        self.settings = WorkerSettings(
            bootstrap_servers=bootstrap, topic=topic, group=group, db=db, **options
        )
        self.store = ReplicaStore(db, topic)
        self.stop_event = asyncio.Event()
        self.worker = ReplicaWorker(self.settings, self.store, self.stop_event)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> InProcessWorker:
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def caught_up(self, ends: dict[int, int]) -> bool:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # raise the worker's error in the test
        checkpoints = self.store.checkpoints()
        return all(
            checkpoints.get(p) is not None and checkpoints[p].next_offset >= end
            for p, end in ends.items()
            if end > 0
        )

    async def stop(self) -> None:
        self.stop_event.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 60)
        self.store.close()

    async def kill(self) -> None:
        """Die without finishing anything (the store is closed like the OS would)."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        self.store.close()


def without_report_age(value: Any) -> Any:
    """A reader's JSON with each served record's ``reported_s_ago`` checked (a running
    worker's, or one just written: under the 30 s after which it is stale) and left out."""
    if isinstance(value, dict):
        if "role" in value and "reported_s_ago" in value:
            age = value["reported_s_ago"]
            assert isinstance(age, float) and 0 <= age < 30, value
        return {k: without_report_age(v) for k, v in value.items() if k != "reported_s_ago"}
    if isinstance(value, list):
        return [without_report_age(v) for v in value]
    return value
