"""fold_polled with the store's head cache gives exactly what it gives reading every state
from RocksDB (the cache is an optimisation, never a different answer)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stream_replica.contract import ContractError, Entry, EntryType, Tombstone
from stream_replica.fold import FoldCounts, GrainState, Polled
from stream_replica.poll import fold_polled
from stream_replica.store import ReplicaStore

GRAINS = [("t", f"g{i}") for i in range(6)]


def _record(rng: random.Random, partition: int, offset: int) -> Polled:
    grain = rng.choice(GRAINS)
    # mostly the grain's usual partition, sometimes another (a producer that misroutes)
    part = GRAINS.index(grain) % 3 if rng.random() < 0.85 else partition
    roll = rng.random()
    body: Entry | Tombstone | ContractError
    if roll < 0.1:
        body = Tombstone(*grain)
    elif roll < 0.18:
        body = Entry(*grain, rng.randint(1, 9), 5, "eu", EntryType.DELTA, b"d")
    elif roll < 0.24:
        body = ContractError("bad", grain)
    else:
        payload = rng.choice([b"x", b"y"])
        body = Entry(*grain, rng.randint(1, 9), 5, "eu", EntryType.FULL_STATE, payload)
    return Polled(part, offset, None, None, body)


def _full(state: GrainState | None) -> tuple[object, ...] | None:
    if state is None:
        return None
    return (
        state.sequence,
        state.timestamp_millis,
        state.source_cluster,
        state.payload,
        state.partition,
        state.offset,
        state.shadowed_by,
    )


@pytest.mark.parametrize("seed", range(8))
async def test_head_cache_changes_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    stores = [
        ReplicaStore(tmp_path / "nocache", "t", head_cache_entries=0),
        ReplicaStore(tmp_path / "tiny", "t", head_cache_entries=2),
        ReplicaStore(tmp_path / "cache", "t"),
    ]
    offset = 0
    try:
        for poll in range(60):
            polled = []
            for _ in range(rng.randint(1, 12)):
                polled.append(_record(rng, rng.randrange(3), offset))
                offset += 1
            results = [await fold_polled(polled, store) for store in stores]
            seen = [
                (
                    {g: _full(s) for g, s in r.changes.items()},
                    r.counts.as_dict(),
                    r.warnings,
                    r.shadowed,
                    r.unshadowed,
                    [(j.kind, j.grain, j.shadows_offset) for j in r.rejected],
                )
                for r in results
            ]
            assert seen[0] == seen[1] == seen[2]
            for store, result in zip(stores, results, strict=True):
                store.apply(result.changes, {}, FoldCounts(), result.unshadowed)
            if poll % 20 == 19:
                for store in stores:
                    store.wipe_partitions([poll % 3])
        finals = [[(g, _full(s)) for g, s in store.grains()] for store in stores]
        assert finals[0] == finals[1] == finals[2]
        assert finals[0]  # the run left some grains to compare
    finally:
        for store in stores:
            store.close()
