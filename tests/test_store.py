"""The RocksDB store on its own: layout, atomic batches, binding, readers beside a writer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stream_replica.fold import FoldCounts, GrainState
from stream_replica.store import (
    Checkpoint,
    ReplicaReader,
    ReplicaStore,
    StoreError,
    grain_db_key,
    parse_grain_db_key,
)


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
        assert store.wipe_partitions([0]) == 2
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
