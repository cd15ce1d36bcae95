"""The RocksDB store on its own: layout, atomic batches, binding, readers beside a writer."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from stream_replica.contract import GrainId
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.memory import DEFAULT_BUDGET_MIB, minimum_budget_mib, plan_memory
from stream_replica.read_thread import ReadPlacement
from stream_replica.store import (
    CATCH_UP_L0_COMPACTION_TRIGGER,
    L0_COMPACTION_TRIGGER,
    Checkpoint,
    ReplicaReader,
    ReplicaStore,
    StoreError,
    grain_db_key,
    index_db_key,
    parse_grain_db_key,
    state_db_key,
)
from stream_replica.store_layout import _pack_state
from stream_replica.watchdog import longest_noted_call


def state(
    sequence: int, partition: int = 0, source: str = "eu", payload: bytes = b"p"
) -> GrainState:
    return GrainState(sequence, 1000 + sequence, source, payload, partition, sequence * 10)


def test_db_keys_sort_like_grain_tuples_and_round_trip() -> None:
    grains = [("a", "x"), ("a-b", "x"), ("a\x00b", "y"), ("a", "x/y"), ("ab", ""), ("a", "\x00")]
    encoded = sorted(grain_db_key(g) for g in grains)
    assert [parse_grain_db_key(k) for k in encoded] == sorted(grains)


def test_apply_writes_states_checkpoints_and_counts_together(tmp_path: Path) -> None:
    counts = FoldCounts(records=3, applied=2)
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply(
            {("t", "a"): state(1), ("t", "b"): state(2, source="x" * 70_000)},
            {0: Checkpoint(3, 42)},
            counts,
        )
        store.apply({("t", "a"): None}, {0: Checkpoint(4, 43)}, FoldCounts(records=1))
    with ReplicaReader(tmp_path / "db") as reader:
        assert dict(reader.grains()) == {("t", "b"): state(2, source="x" * 70_000)}
        assert reader.checkpoints() == {0: Checkpoint(4, 43)}
        assert reader.counts().records == 4 and reader.counts().applied == 2
        assert reader.topic == "t"


def test_wipe_removes_only_that_partitions_grains(tmp_path: Path) -> None:
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply(
            {("t", "a"): state(1, 0), ("t", "b"): state(1, 1), ("t", "c"): state(1, 0)},
            {0: Checkpoint(5, 1), 1: Checkpoint(7, 1)},
            FoldCounts(),
        )
        store.wipe_partitions([0])
        assert dict(store.grains()) == {("t", "b"): state(1, 1)}
        assert store.checkpoints() == {1: Checkpoint(7, 1)}


def test_missing_store_for_readers(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no replica store"):
        ReplicaReader(tmp_path / "nothing")


def test_readers_open_while_a_writer_writes_and_compacts(tmp_path: Path) -> None:
    """Readers are RocksDB secondaries: the writer's compactions never break them."""
    store = ReplicaStore(tmp_path / "db", "t")
    done = threading.Event()
    errors: list[str] = []

    def read_repeatedly() -> None:
        while not done.is_set():
            try:
                with ReplicaReader(tmp_path / "db") as reader:
                    sum(1 for _ in reader.grains())
                    reader.checkpoints()
            except StoreError as exc:
                errors.append(str(exc))

    reader_thread = threading.Thread(target=read_repeatedly)
    reader_thread.start()
    try:
        payload = b"z" * 2000
        for batch in range(1200):  # ~120 MB through 16 MiB memtables: flushes, compactions
            changes = {
                ("t", f"k{i}"): GrainState(batch + 1, 0, "eu", payload, 0, batch) for i in range(50)
            }
            store.apply(changes, {0: Checkpoint(batch + 1, 0)}, FoldCounts())
    finally:
        done.set()
        reader_thread.join()
        store.close()
    assert errors == []


def test_dump_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    from stream_replica.fold import FoldCounts, GrainState
    from stream_replica.store import Checkpoint, ReplicaStore

    store = ReplicaStore(tmp_path / "db", "t")
    grains = {("t", f"k{i:05d}"): GrainState(1, 1, "s", b"x" * 200, 0, i) for i in range(5000)}
    store.apply(grains, {0: Checkpoint(5000, 0)}, FoldCounts())
    store.close()
    shell = f"{sys.executable} -m stream_replica dump --db {tmp_path / 'db'} | head -3"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.count("\n") == 3
    assert result.returncode == 0, result.stderr
    assert "BrokenPipeError" not in result.stderr and "Traceback" not in result.stderr


# --- format 5: partition-major states, grain index, range wipes, head cache -----------------


def test_states_are_partition_major_and_grains_merge_in_grain_order(tmp_path: Path) -> None:
    grains = [("b", "1"), ("a", "z"), ("a\x00b", "y"), ("a", "x/y"), ("ab", ""), ("c", "0")]
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply(
            {g: state(i + 1, partition=(5 - i) % 3) for i, g in enumerate(grains)},
            {},
            FoldCounts(),
        )
        assert [g for g, _ in store.grains()] == sorted(grains)
        assert store.count_grains() == 6 and store.count_grains([2]) == 2
        assert store.get(("a", "z")) == state(2, partition=1)
        assert store.get_many([("c", "0"), ("nope", "x")]) == {
            ("c", "0"): state(6, partition=0),
            ("nope", "x"): None,
        }
    raw = Rdict(str(tmp_path / "db"), Options(raw_mode=True))
    try:
        keys = list(map(bytes, raw.keys()))
    finally:
        raw.close()
    assert state_db_key(1, ("a", "z")) in keys and index_db_key(("a", "z")) in keys
    assert not any(k.startswith(b"g") for k in keys)


def test_range_wipe_then_rebuild_and_a_grain_that_moves_partition(tmp_path: Path) -> None:
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply({("t", "a"): state(1, 0), ("t", "b"): state(1, 1)}, {}, FoldCounts())
        store.apply({("t", "a"): state(2, 1)}, {}, FoldCounts())  # now set from partition 1
        store.wipe_partitions([0])
        assert dict(store.grains()) == {("t", "a"): state(2, 1), ("t", "b"): state(1, 1)}
        store.wipe_partitions([1])
        assert list(store.grains()) == [] and store.get(("t", "a")) is None
        # the index entries left by the wipe point at an empty partition: no state
        assert store.get_many([("t", "a"), ("t", "b")]) == {("t", "a"): None, ("t", "b"): None}
        store.apply({("t", "a"): state(3, 2)}, {}, FoldCounts())
        store.apply({("t", "b"): None}, {}, FoldCounts())  # delete of a wiped grain: no-op
        assert dict(store.grains()) == {("t", "a"): state(3, 2)}
    with ReplicaReader(tmp_path / "db") as reader:
        assert reader.get(("t", "a")) == state(3, 2) and reader.get(("t", "b")) is None


def _write_format_4(path: Path, states: dict[tuple[str, str], GrainState]) -> None:
    db = Rdict(str(path), Options(raw_mode=True))
    try:
        db[b"m:topic"] = b"t"
        db[b"m:format"] = b"4"
        db[b"m:partitions"] = b"3"
        for grain, value in states.items():
            db[grain_db_key(grain)] = _pack_state(value)
    finally:
        db.close()


def test_format_4_is_refused_by_readers_and_migrated_by_the_writer(tmp_path: Path) -> None:
    states = {("t", f"k{i:03d}"): state(i + 1, partition=i % 3) for i in range(50)}
    _write_format_4(tmp_path / "db", states)
    with pytest.raises(StoreError, match="start the worker on it once"):
        ReplicaReader(tmp_path / "db")
    with ReplicaStore(tmp_path / "db", "t") as store:
        assert dict(store.grains()) == states
        store.wipe_partitions([0])
        assert dict(store.grains()) == {g: s for g, s in states.items() if s.partition != 0}
    with ReplicaReader(tmp_path / "db") as reader:
        assert reader.get(("t", "k001")) == states[("t", "k001")]
        assert reader.get(("t", "k000")) is None


def test_wipe_all_is_range_deletes(tmp_path: Path) -> None:
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply({("t", "a"): state(1, 4)}, {4: Checkpoint(2, 1)}, FoldCounts(records=1))
        store.wipe_all()
        assert list(store.grains()) == [] and store.checkpoints() == {}
        assert store.get(("t", "a")) is None and store.counts().records == 1


def test_head_cache_holds_nothing_the_garbage_collector_walks(tmp_path: Path) -> None:
    # A tracked cache of N entries makes every full collection walk N entries on the loop.
    with ReplicaStore(tmp_path / "db", "t", head_cache_entries=4) as store:
        store.apply({("t", "a"): state(1, 0), ("t", "b"): None}, {}, FoldCounts())
        store.read_states({("t", "c"): 1, ("t", "d"): 2, ("t", "e"): 3})  # evicts in bulk
        assert store.heads([("t", "a"), ("t", "d"), ("t", "e")]) == {
            ("t", "d"): None,
            ("t", "e"): None,
        }
        store.apply({("t", "f"): state(2, 1)}, {}, FoldCounts())
        assert store.heads([("t", "f")]) == {("t", "f"): (2, 1, 20, -1, b"t\x00f")}
        assert not gc.is_tracked(store._heads) and not gc.is_tracked(store._old_heads)


def _used_store(path: Path, head_cache_entries: int) -> ReplicaStore:
    """A store reopened with a state in it (partition 7): its head cache starts empty and
    incomplete, so a grain it does not hold is "not cached", not "no state"."""
    with ReplicaStore(path, "t") as store:
        store.apply({("t", "old"): state(1, 7)}, {}, FoldCounts())
    return ReplicaStore(path, "t", head_cache_entries=head_cache_entries)


def test_head_cache_follows_writes_and_is_cleared_by_wipes(tmp_path: Path) -> None:
    with _used_store(tmp_path / "db", head_cache_entries=2) as store:
        store.apply({("t", "a"): state(1, 0), ("t", "b"): None}, {}, FoldCounts())
        assert store.heads([("t", "a"), ("t", "b"), ("t", "c")]) == {
            ("t", "a"): (1, 0, 10, -1, b"t\x00a"),
            ("t", "b"): None,
        }
        store.read_states({("t", "c"): 1})  # a third grain: the oldest go, in bulk
        assert store.heads([("t", "a"), ("t", "b"), ("t", "c")]) == {("t", "c"): None}
        store.read_states({("t", "a"): 0})
        # the young generation (a) became the old one; the previous old one (c) is retired
        assert set(store.heads([("t", "a"), ("t", "b"), ("t", "c")])) == {("t", "a")}
        store.wipe_partitions([5])
        assert store.heads([("t", "a"), ("t", "c")]) == {}
        assert store.read_states({("t", "a"): 3}) == {("t", "a"): state(1, 0)}  # wrong hint


def test_wiping_the_last_partitions_with_states_drops_the_whole_grain_index(
    tmp_path: Path,
) -> None:
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply({("t", "a"): state(1, 0), ("t", "b"): state(1, 1)}, {}, FoldCounts())
        store.wipe_partitions([0])
        # Partition 1 still holds a state: the index stays (a's entry is a leftover).
        assert len(list(store._scan(b"i"))) == 2
        assert store.get(("t", "b")) == state(1, 1) and store.get(("t", "a")) is None
        store.wipe_partitions([1, 2])
        assert list(store._scan(b"i")) == []
        assert store.read_states({("t", "b"): 1}) == {("t", "b"): None}
        store.apply({("t", "b"): state(2, 0)}, {}, FoldCounts())
        assert store.get(("t", "b")) == state(2, 0)


def test_head_cache_generations_keep_the_newest_head_and_free_retired_ones_gradually(
    tmp_path: Path,
) -> None:
    with _used_store(tmp_path / "db", head_cache_entries=4000) as store:
        store.apply({("t", "a"): state(1, 0)}, {}, FoldCounts())
        store.read_states({("t", f"x{n}"): 0 for n in range(1999)})  # young is full: now old
        store.apply({("t", "a"): None}, {}, FoldCounts())  # newer head in the young one
        assert store.heads([("t", "a")]) == {("t", "a"): None}
        store.read_states({("t", f"y{n}"): 0 for n in range(2000)})  # old one retired
        assert store.heads([("t", "x1")]) == {}
        assert store.heads([("t", "a")]) == {("t", "a"): None}
        assert sum(len(g) for g in store._retired) == 2000
        store.read_states({("t", "z"): 0})  # each write frees a slice of the retired
        assert sum(len(g) for g in store._retired) == 1000
        store.wipe_partitions([0])
        assert store.heads([("t", "a"), ("t", "z")]) == {}


def test_a_store_without_states_rules_out_the_grains_it_never_gave_a_state(
    tmp_path: Path,
) -> None:
    # A build into an empty store reads almost nothing: the grain filter holds every grain
    # given a state since the store held none, so one it lacks has no state, however many
    # heads the cache has forgotten.
    a, b, c = ("t", "a"), ("t", "b"), ("t", "c")
    with ReplicaStore(tmp_path / "db", "t", head_cache_entries=4) as store:
        assert store.cached_heads([b"t\x00a"]) == [None]
        store.apply({a: state(1, 0)}, {}, FoldCounts())
        assert store.heads([a, b]) == {a: (1, 0, 10, -1, b"t\x00a"), b: None}
        for batch in ("x", "y"):  # the young generation, then the old one with a in it, goes
            store.read_states({("t", f"{batch}{n}"): 1 for n in range(4)})
        # a left the cache: "maybe" (read it); b never had a state: "none", no read
        assert store.cached_heads([b"t\x00a", b"t\x00b"]) == [False, None]
        assert store.read_states({a: 1}) == {a: state(1, 0)}  # wrong hint, found by the index
        store.wipe_partitions([0])  # partition 1 holds no state: a was all there was
        assert store.cached_heads([b"t\x00a"]) == [None]  # a new, empty filter
        store.apply({a: state(2, 0), b: state(1, 1)}, {}, FoldCounts())
        store.wipe_partitions([1])  # partition 0 still holds a: the filter stays (b: "maybe")
        assert store.heads([b, c]) == {c: None}
        assert store.read_states({b: 1}) == {b: None}
        store.wipe_all()
        assert store.heads([a, c]) == {a: None, c: None}
        store.apply({c: state(1, 2)}, {}, FoldCounts())
    with ReplicaStore(tmp_path / "db", "t") as store:  # reopened with a state: no filter
        assert store.cached_heads([b"t\x00a"]) == [False]
        assert store.read_states({a: 0, c: 2}) == {a: None, c: state(1, 2)}
    with ReplicaStore(tmp_path / "nocache", "t", head_cache_entries=0) as store:
        assert store.cached_heads([b"t\x00a"]) == [None]  # the filter works without a cache
        store.apply({a: state(1, 0)}, {}, FoldCounts())
        assert store.cached_heads([b"t\x00a", b"t\x00b"]) == [False, None]
    no_filter = plan_memory(minimum_budget_mib())
    assert no_filter.grain_filter_bytes == 0 and no_filter.head_cache_entries == 0
    with ReplicaStore(tmp_path / "bare", "t", memory=no_filter) as store:
        assert store.cached_heads([b"t\x00a"]) == [False]  # no cache, no filter: unknown


@pytest.mark.parametrize("filter_bytes", [8, 4096])
def test_the_grain_filter_never_says_none_for_a_stored_state(
    tmp_path: Path, filter_bytes: int
) -> None:
    """Random writes, deletions, moves between partitions and wipes, with a saturated filter
    (8 bytes) and a sparse one: every grain the cache and filter call stateless has no state
    in RocksDB."""
    rng = random.Random(12)
    grains = [("t", f"g{n}") for n in range(300)]
    plan = replace(plan_memory(DEFAULT_BUDGET_MIB), grain_filter_bytes=filter_bytes)
    with ReplicaStore(tmp_path / "db", "t", head_cache_entries=40, memory=plan) as store:
        for step in range(150):
            changes: dict[GrainId, GrainState | None] = {}
            for grain in rng.sample(grains, 20):
                changes[grain] = None if rng.random() < 0.2 else state(step + 1, rng.randrange(3))
            store.apply(changes, {}, FoldCounts())
            if step % 40 == 39:
                store.wipe_partitions([rng.randrange(3)])
            heads = store.heads(grains)
            for grain, head in heads.items():
                if head is None:
                    assert store.get(grain) is None, (step, grain)
        assert store._grain_filter is not None
        assert abs(store._grain_filter.size_in_bits - 8 * filter_bytes) <= 64


def test_a_failed_write_leaves_the_cache_knowing_nothing(tmp_path: Path) -> None:
    with ReplicaStore(tmp_path / "db", "t") as store:

        def fail(batch: object) -> None:
            raise StoreError("disk full")

        store._write = fail  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            store.apply({("t", "a"): state(1, 0)}, {}, FoldCounts())
        assert store.cached_heads([b"t\x00a"]) == [False]


def test_a_slow_rocksdb_write_is_noted_for_the_stall_report(tmp_path: Path) -> None:
    class SlowWrites:
        def __init__(self, db: Rdict) -> None:
            self.db = db

        def write(self, batch: object, options: object) -> None:
            time.sleep(0.03)  # a write that held the loop (and, in rocksdict, the GIL)
            self.db.write(batch, options)  # type: ignore[arg-type]

    with ReplicaStore(tmp_path / "db", "t") as store:
        real = store._db
        store._db = SlowWrites(real)  # type: ignore[assignment]
        before = time.monotonic()
        try:
            store.apply({("t", "a"): state(1, 0)}, {}, FoldCounts())
        finally:
            store._db = real
        noted = longest_noted_call(before)
        assert noted is not None and noted[0] == "RocksDB batch write" and noted[1] >= 0.03
        assert store.get(("t", "a")) == state(1, 0)


class _HeldGets:
    """Stands in for a store's Rdict: records the thread of each multi-get and holds it
    until released, or for the next of ``delays`` (a slow disk)."""

    def __init__(self, db: Rdict, delays: list[float] | None = None) -> None:
        self._db = db
        self.threads: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.delays = delays

    def get(self, keys: object) -> object:
        if isinstance(keys, list):
            self.threads.append(threading.get_ident())
            self.entered.set()
            if self.delays is not None:
                time.sleep(self.delays.pop(0))
            else:
                assert self.release.wait(30)
        return self._db.get(keys)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


async def test_read_states_async_reads_on_another_thread_what_read_states_reads(
    tmp_path: Path,
) -> None:
    a, b, c = ("t", "a"), ("t", "b"), ("t", "c")
    with ReplicaStore(tmp_path / "db", "t", head_cache_entries=0) as store:
        store.apply({a: state(1, 0), b: state(2, 1)}, {}, FoldCounts())
        hints = {a: 1, b: 1, c: 0}  # a's hint is wrong: found through the index
        expected = store.read_states(hints)
        assert expected == {a: state(1, 0), b: state(2, 1), c: None}
        held = _HeldGets(store._db)
        held.release.set()
        store._db = held  # type: ignore[assignment]
        store.read_placement.on_thread = True
        assert await store.read_states_async(hints) == expected
        # both multi-gets (the hinted partitions, then a's) off the loop's thread
        assert len(held.threads) == 2
        assert threading.get_ident() not in held.threads
        store._db = held._db


async def test_reads_run_on_the_loop_until_one_is_slow_then_on_the_thread_until_fast(
    tmp_path: Path,
) -> None:
    a = ("t", "a")
    with ReplicaStore(tmp_path / "db", "t", head_cache_entries=0) as store:
        store.apply({a: state(1, 0)}, {}, FoldCounts())
        store.read_placement = ReadPlacement(slow_s=0.05, fast_s=0.04, fast_in_a_row=2)
        # fast, slow (moves reads off the loop), fast, fast (bring them back), fast
        held = _HeldGets(store._db, delays=[0.0, 0.1, 0.0, 0.0, 0.0])
        store._db = held  # type: ignore[assignment]
        for _ in range(5):
            assert await store.read_states_async({a: 0}) == {a: state(1, 0)}
        loop_thread = threading.get_ident()
        on_loop = [thread == loop_thread for thread in held.threads]
        assert on_loop == [True, True, False, False, True]
        assert store.read_placement.moves_to_thread == 1
        store._db = held._db


async def test_a_cancelled_read_changes_no_head_and_close_waits_for_it(tmp_path: Path) -> None:
    a = ("t", "a")
    store = ReplicaStore(tmp_path / "db", "t")
    store.apply({a: state(1, 0)}, {}, FoldCounts())
    store.close()
    store = ReplicaStore(tmp_path / "db", "t")  # reopened: a's head is not cached
    held = _HeldGets(store._db)
    store._db = held  # type: ignore[assignment]
    store.read_placement.on_thread = True
    reading = asyncio.create_task(store.read_states_async({a: 0}))
    assert await asyncio.to_thread(held.entered.wait, 30)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert store.heads([a]) == {}  # the read's result never reached the cache
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # RocksDB cannot close under the read: close() waits for it
    held.release.set()
    closer.join(30)
    assert not closer.is_alive()
    with ReplicaReader(tmp_path / "db") as reader:
        assert dict(reader.grains()) == {a: state(1, 0)}


async def test_a_catch_up_compacts_level_0_less_often(tmp_path: Path) -> None:
    """Written without the WAL (a catch-up), L0 compactions wait for twice as many files;
    with the WAL back on, RocksDB's default again. RocksDB records options changed at run
    time in a new OPTIONS file, which is what this reads."""

    def l0_trigger() -> int:
        latest = max(tmp_path.glob("db/OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
        for line in latest.read_text().splitlines():
            if line.strip().startswith("level0_file_num_compaction_trigger="):
                return int(line.split("=")[1])
        raise AssertionError(f"no L0 trigger in {latest}")

    store = ReplicaStore(tmp_path / "db", "t")
    try:
        assert l0_trigger() == L0_COMPACTION_TRIGGER == 4
        store.write_without_wal()
        assert l0_trigger() == CATCH_UP_L0_COMPACTION_TRIGGER == 8
        await store.write_with_wal()
        assert l0_trigger() == L0_COMPACTION_TRIGGER
    finally:
        store.close()


class _FailingReads:
    """RocksDB failing every read (an I/O error, a corrupt block), writes untouched."""

    def __init__(self, db: Rdict) -> None:
        self._db = db

    def get(self, *args: object, **kwargs: object) -> object:
        raise Exception("Corruption: block checksum mismatch (injected)")

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_failing_read_is_a_store_error_naming_the_directory(tmp_path: Path) -> None:
    """The worker's reads of held states (the fold's) fail as a StoreError naming the state
    directory, which the command line ends with in one line (exit 1), not RocksDB's bare
    exception."""
    with ReplicaStore(tmp_path / "db", "t") as store:
        store.apply({("t", "a"): state(1)}, {0: Checkpoint(1, 1)}, FoldCounts(records=1))
        store._drop_heads()  # not cached: the fold must read it
        real = store._db
        store._db = _FailingReads(real)  # type: ignore[assignment]
        try:
            for read in (
                lambda: store.read_states({("t", "a"): 0}),
                lambda: asyncio.run(store.read_states_async({("t", "a"): 0})),
            ):
                with pytest.raises(StoreError, match=r"read of state directory .*/db failed: "):
                    read()
        finally:
            store._db = real
