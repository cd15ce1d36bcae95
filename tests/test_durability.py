"""Writing without RocksDB's WAL while far behind (durability.py): the policy, what a killed
process keeps (a real SIGKILL of a process holding the store), and a worker killed while it
catches up without the WAL, restarted against the real broker."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import Workload, prefill
from stream_replica import admin
from stream_replica import store as store_module
from stream_replica.durability import FLUSH_INTERVAL_S, MIN_WAL_ON_S, CatchUpDurability, WalPolicy
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.offsets import CommitBook
from stream_replica.store import Checkpoint, ReplicaReader, ReplicaStore
from tests.helpers import wait_until
from tests.oracle import read_oracle
from tests.test_cluster import check_store

# --- the policy (pure) -------------------------------------------------------------------------


def test_policy_turns_off_far_behind_and_on_within_half() -> None:
    policy = WalPolicy(10_000)
    assert policy.wanted({0: 6_000, 1: 4_000}, 100.0)  # 10,000: not above
    assert not policy.wanted({0: 6_000, 1: 4_001}, 100.0)
    policy.wal_on = False
    assert not policy.wanted({0: 5_001}, 100.0)  # hysteresis: on again only within half
    assert policy.wanted({0: 5_000}, 100.0)
    assert policy.wanted({0: 0, 1: 0}, 100.0)


def test_policy_ignores_unknown_lags_and_zero_disables() -> None:
    policy = WalPolicy(100)
    assert policy.wanted({0: -1, 1: -1, 2: 50}, 1.0)  # -1: end offset not known yet
    assert not policy.wanted({0: -1, 1: 101}, 1.0)
    assert WalPolicy(0).wanted({0: 10**9}, 1.0)


def test_policy_keeps_the_wal_on_a_while_after_turning_it_on() -> None:
    policy = WalPolicy(100, turned_on_at=50.0)
    assert policy.wanted({0: 1_000}, 50.0 + MIN_WAL_ON_S - 0.1)
    assert not policy.wanted({0: 1_000}, 50.0 + MIN_WAL_ON_S)


def test_policy_flushes_periodically_only_while_off() -> None:
    policy = WalPolicy(100, last_flush=10.0)
    assert not policy.flush_due(10.0 + FLUSH_INTERVAL_S)  # on: RocksDB's WAL holds it
    policy.wal_on = False
    assert not policy.flush_due(10.0 + FLUSH_INTERVAL_S - 0.1)
    assert policy.flush_due(10.0 + FLUSH_INTERVAL_S)


# --- the store: what a reader and a killed process see ------------------------------------------


def write(store: ReplicaStore, key: str, next_offset: int) -> None:
    state = GrainState(next_offset, 1, "c", key.encode(), 0, next_offset - 1)
    store.apply({("t", key): state}, {0: Checkpoint(next_offset, 1)}, FoldCounts())


def seen_by_reader(db: Path) -> tuple[set[str], int | None]:
    """What another process's view (a RocksDB secondary: table files + WAL) holds."""
    with ReplicaReader(db) as reader:
        checkpoint = reader.checkpoints().get(0)
        return {key for (_, key), _ in reader.grains()}, (
            None if checkpoint is None else checkpoint.next_offset
        )


async def test_writes_without_the_wal_reach_other_processes_at_the_flush(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = ReplicaStore(db, "topic")
    try:
        assert store.wal_on
        write(store, "a", 1)
        assert seen_by_reader(db) == ({"a"}, 1)  # through the WAL: seen at once
        store.write_without_wal()
        assert not store.wal_on
        write(store, "b", 2)
        assert seen_by_reader(db) == ({"a"}, 1)  # in the memtable only
        await store.flush_async()
        assert seen_by_reader(db) == ({"a", "b"}, 2)
        write(store, "c", 3)
        assert await store.write_with_wal() >= 0
        assert store.wal_on
        write(store, "d", 4)
        assert seen_by_reader(db) == ({"a", "b", "c", "d"}, 4)
    finally:
        store.close()


def _flush_threads(store: ReplicaStore, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each memtable flush, whether it ran on the loop's thread."""
    on_loop: list[bool] = []
    flush = store._flush

    def recorded() -> None:
        on_loop.append(threading.current_thread() is threading.main_thread())
        flush()

    monkeypatch.setattr(store, "_flush", recorded)
    return on_loop


async def test_turning_the_wal_on_flushes_off_the_loop_when_nothing_is_written_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    store = ReplicaStore(db, "topic")
    try:
        store.write_without_wal()
        write(store, "a", 1)
        on_loop = _flush_threads(store, monkeypatch)
        await store.write_with_wal()
        assert store.wal_on
        assert on_loop == [False]  # one flush, on a thread: the loop never waited for it
        assert seen_by_reader(db) == ({"a"}, 1)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("writing_flushes", "expected"),
    [
        (1, [False, False]),
        (store_module._TAIL_FLUSHES, [False] * store_module._TAIL_FLUSHES + [True]),
    ],
)
async def test_writes_during_the_flushes_are_persisted_before_the_wal_is_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writing_flushes: int, expected: list[bool]
) -> None:
    """A write that lands after a flush on a thread did its work, before the loop hears back,
    is not persisted by it: flush again (on a thread) until one ran with no write meanwhile,
    or, after _TAIL_FLUSHES, on the loop, where nothing can slip in."""
    db = tmp_path / "db"
    store = ReplicaStore(db, "topic")
    loop = asyncio.get_running_loop()
    try:
        store.write_without_wal()
        write(store, "a", 1)
        on_loop: list[bool] = []
        flush = store._flush
        keys = iter(range(2, 2 + writing_flushes))

        def flush_then_a_write_on_the_loop() -> None:
            on_thread = threading.current_thread() is not threading.main_thread()
            on_loop.append(not on_thread)
            flush()
            key = next(keys, None) if on_thread else None
            if key is not None:
                written = threading.Event()

                def write_on_the_loop() -> None:
                    write(store, f"k{key}", key)
                    written.set()

                loop.call_soon_threadsafe(write_on_the_loop)
                assert written.wait(10)

        monkeypatch.setattr(store, "_flush", flush_then_a_write_on_the_loop)
        await store.write_with_wal()
        assert store.wal_on
        assert on_loop == expected
        last = 1 + writing_flushes
        # WAL-less writes reach another process only through a flush: all of them did
        assert seen_by_reader(db) == ({"a", *(f"k{k}" for k in range(2, last + 1))}, last)
    finally:
        store.close()


_KILLED_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from stream_replica.fold import FoldCounts, GrainState
    from stream_replica.store import Checkpoint, ReplicaStore

    def write(store, key, next_offset):
        state = GrainState(next_offset, 1, "c", key.encode(), 0, next_offset - 1)
        store.apply({("t", key): state}, {0: Checkpoint(next_offset, 1)}, FoldCounts())

    async def main(db, turn_on):
        store = ReplicaStore(db, "topic")
        write(store, "a", 1)
        store.write_without_wal()
        write(store, "b", 2)
        write(store, "c", 3)
        if turn_on:
            await store.write_with_wal()
            write(store, "d", 4)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: as the OOM killer would

    asyncio.run(main(Path(sys.argv[1]), sys.argv[2] == "on"))
    """
)


@pytest.mark.parametrize(
    ("turn_on", "kept"), [(False, ({"a"}, 1)), (True, ({"a", "b", "c", "d"}, 4))]
)
def test_a_killed_process_keeps_a_consistent_store(
    tmp_path: Path, turn_on: bool, kept: tuple[set[str], int]
) -> None:
    """Killed while writing without the WAL: the store reopens at the last persisted
    checkpoint with exactly that checkpoint's grains (not a later checkpoint with older
    grains). Killed after turning the WAL on again: nothing is lost."""
    db = tmp_path / "db"
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(db), "on" if turn_on else "off"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    store = ReplicaStore(db, "topic")
    try:
        grains = {key for (_, key), _ in store.grains()}
        checkpoint = store.checkpoints()[0].next_offset
    finally:
        store.close()
    assert (grains, checkpoint) == kept


# --- CatchUpDurability on a store -----------------------------------------------------------------


async def test_durability_switches_the_store_and_its_gauge(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = ReplicaStore(db, "topic")
    gauge: list[float] = []
    durability = CatchUpDurability(store, CommitBook(), 1_000, gauge.append)
    try:
        assert gauge == [1.0]
        durability.observe({0: 800, 1: 100})
        assert store.wal_on and not durability.due
        durability.observe({0: 800, 1: 201})
        assert not store.wal_on and gauge == [1.0, 0.0]
        write(store, "a", 1)
        durability.observe({0: 501})
        assert not durability.due  # within 1,000 but not within half of it
        durability.observe({0: 500})
        assert durability.due and not store.wal_on  # the loop turns it on (it awaits a flush)
        await durability.settle()
        assert store.wal_on and durability.wal_on and gauge == [1.0, 0.0, 1.0]
        assert seen_by_reader(db) == ({"a"}, 1)
        durability.observe({0: 5_000})  # a burst right after: stays on (MIN_WAL_ON_S)
        assert store.wal_on
    finally:
        store.close()


async def test_durability_flushes_periodically_while_off_and_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "stream_replica")
    db = tmp_path / "db"
    store = ReplicaStore(db, "topic")
    durability = CatchUpDurability(store, CommitBook(), 10, lambda _: None)
    try:
        durability.observe({0: 11})
        write(store, "a", 1)
        durability.observe({0: 11})  # not due yet: nothing flushed
        await asyncio.sleep(0)
        assert seen_by_reader(db) == (set(), None)
        durability._policy.last_flush = time.monotonic() - FLUSH_INTERVAL_S
        durability.observe({0: 11})
        await wait_until(lambda: seen_by_reader(db) == ({"a"}, 1), 10, 0.02, what="a flush")
        assert not store.wal_on
        write(store, "b", 2)
        await durability.close()
        assert store.wal_on and seen_by_reader(db) == ({"a", "b"}, 2)
        # Far behind still: the line must not say "caught up" (it did, on every SIGTERM).
        assert "closing the store: writing through RocksDB's WAL again" in caplog.text
        assert "caught up" not in caplog.text
    finally:
        store.close()


async def test_offsets_are_committed_only_once_flushed_while_the_wal_is_off(
    tmp_path: Path,
) -> None:
    store = ReplicaStore(tmp_path / "db", "topic")
    book = CommitBook()
    book.assigned(0, None)
    durability = CatchUpDurability(store, book, 10, lambda _: None)
    try:
        book.written(0, 5)
        assert book.due([0]) == {0: 5}  # through the WAL: at once
        durability.observe({0: 11})
        write(store, "a", 7)
        book.written(0, 7)
        assert book.due([0]) == {}  # in the memtable only
        durability._policy.last_flush = time.monotonic() - FLUSH_INTERVAL_S
        durability.observe({0: 11})  # the periodic flush
        await wait_until(lambda: book.due([0]) == {0: 7}, 10, 0.01, what="the flushed offset")
        write(store, "b", 9)
        book.written(0, 9)
        assert book.due([0]) == {0: 7}
        await durability.persist()  # a revocation flushes before it commits
        assert book.due([0]) == {0: 9} and not store.wal_on
        write(store, "c", 12)
        book.written(0, 12)
        await durability.close()
        assert book.due([0]) == {0: 12} and store.wal_on
    finally:
        store.close()


async def test_durability_never_turns_the_wal_off_at_zero(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", "topic")
    try:
        durability = CatchUpDurability(store, CommitBook(), 0, lambda _: None)
        durability.observe({0: 10**9})
        assert store.wal_on and not durability.due
    finally:
        store.close()


# --- a worker killed while it catches up without the WAL (real broker) ----------------------------


async def test_worker_killed_while_writing_without_the_wal_recovers(
    kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    """Killed a good way into a catch-up without the WAL: the group's committed offsets are
    not ahead of the store it reopens (only flushed offsets were committed), and the restarted
    worker completes the replica."""
    topic = unique("wal")
    records = 200_000
    await prefill(kafka_bootstrap, topic, 3, Workload(records, records // 10, payload=64))
    oracle = await read_oracle(kafka_bootstrap, topic, 3)
    ends = oracle.end_offsets()
    group = unique("g")
    db = tmp_path / "db"

    command = [
        sys.executable, "-m", "stream_replica", "--log-level", "INFO", "run",
        "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group,
        "--db", str(db), "--wal-off-lag", "1000", "--http", "127.0.0.1:0",
    ]  # fmt: skip

    def start(log: Path) -> subprocess.Popen[bytes]:
        # the log goes to a file: a pipe nobody reads while the test waits fills and blocks
        with log.open("wb") as stderr:
            return subprocess.Popen(command, stderr=stderr)

    def records_read(log: Path) -> float:
        found = re.search(r"HTTP on (\S+?):(\d+) ", log.read_text())
        if found is None:
            return 0
        url = f"http://127.0.0.1:{found[2]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        value = re.search(r"^stream_replica_records_read_total (\S+)$", text, re.M)
        return 0 if value is None else float(value[1])

    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start(first_log)
    try:
        # a third of the way: a few hundred polls written without the WAL, commits due
        await wait_until(
            lambda: records_read(first_log) >= records / 3, 60, 0.01, what="a third read"
        )
        assert "writing without RocksDB's WAL" in first_log.read_text()
        assert "writing through RocksDB's WAL again" not in first_log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    committed = await admin.committed_offsets(kafka_bootstrap, group, topic)
    with ReplicaReader(db) as reader:
        kept = {p: c.next_offset for p, c in reader.checkpoints().items()}
    assert all(offset <= kept.get(p, 0) for p, offset in committed.items()), (committed, kept)
    second = start(second_log)
    try:

        async def done() -> bool:
            return await admin.committed_offsets(kafka_bootstrap, group, topic) == ends

        await wait_until(done, 120, 0.1, what="the restarted worker to catch up")
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    finally:
        if second.poll() is None:
            second.kill()
    log = second_log.read_text()
    assert second.returncode == 0, log[-2000:]
    assert "writing through RocksDB's WAL again" in log
    assert check_store(db, oracle) == ends  # every partition, equal to the fold of the log
