"""poll.fold_batch (fast pass + reference path for the rest) gives exactly what the reference
path alone gives — decode every record, fold them all — poll after poll, on stores with and
without a head cache, and leaves the same stores behind. The polls mix every kind of record
the fast pass must hand over: tombstones, Deltas, invalid values and keys, equal and lower
sequences, a grain on two partitions, the positional form, a NUL in a grain type."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from stream_replica.contract import GrainId, canonical_full_state, decode
from stream_replica.fold import FoldCounts, FoldResult, GrainState
from stream_replica.poll import decode_batch, fold_batch, fold_polled
from stream_replica.store import ReplicaStore
from stream_replica.store_layout import _unpack_state

TOPIC = "t"
GRAINS = [("t", f"g{i}") for i in range(8)] + [("a\x00b", "n"), ("t", "with/slash")]


def _value(grain: tuple[str, str], sequence: int, rng: random.Random) -> bytes | None:
    roll = rng.random()
    fields: dict[str, Any] = {
        "grain_type": grain[0],
        "grain_key": grain[1],
        "sequence": sequence,
        "timestamp_millis": 5,
        "source_cluster": "eu",
        "entry_type": "FullState",
        "payload": rng.choice([b"x", b"y"]),
    }
    if roll < 0.08:
        return None  # tombstone
    if roll < 0.14:
        fields["entry_type"] = rng.choice(["Delta", 1])
    elif roll < 0.18:
        fields["entry_type"] = 0  # FullState by index
    elif roll < 0.22:
        return msgpack.packb(list(fields.values()), use_bin_type=True)  # positional form
    elif roll < 0.25:
        fields["grain_key"] = "other"  # key and value disagree: invalid
    elif roll < 0.27:
        return b"\xc1 not msgpack"
    elif roll < 0.29:
        fields["sequence"] = 0  # out of range: invalid
    elif roll < 0.31:
        fields["extra"] = 1  # unknown field: the general path decides
    return msgpack.packb(fields, use_bin_type=True)


def _key(grain: tuple[str, str], rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.02:
        return None
    if roll < 0.03:
        return b"\xff\xfe/x"  # not UTF-8
    if roll < 0.04:
        return b"noslash"
    return f"{grain[0]}/{grain[1]}".encode()


def _poll(rng: random.Random, next_offsets: dict[int, int]) -> dict[TopicPartition, list[Any]]:
    batch: dict[TopicPartition, list[Any]] = {}
    for partition in rng.sample(range(3), rng.randint(1, 3)):
        records = []
        for _ in range(rng.randint(1, 15)):
            grain = rng.choice(GRAINS)
            offset = next_offsets.get(partition, 0)
            next_offsets[partition] = offset + 1
            key = _key(grain, rng)
            value = _value(grain, rng.randint(1, 12), rng)
            records.append(
                ConsumerRecord(TOPIC, partition, offset, 0, 0, key, value, None, 0, 0, ())
            )
        batch[TopicPartition(TOPIC, partition)] = records
    return batch


def _seen(result: FoldResult) -> tuple[object, ...]:
    def full(state: GrainState | None) -> tuple[object, ...] | None:
        if state is None:
            return None
        return (*(getattr(state, f) for f in GrainState.__slots__),)  # type: ignore[attr-defined]

    return (
        {g: full(s) for g, s in result.changes.items()},
        result.next_offsets,
        result.counts.as_dict(),
        result.warnings,
        result.shadowed,
        result.unshadowed,
        [(j.kind, j.grain, j.reason, j.shadows_offset, j.record.offset) for j in result.rejected],
    )


@pytest.mark.parametrize("seed", range(12))
async def test_fold_batch_equals_the_reference(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    reference = ReplicaStore(tmp_path / "reference", TOPIC, head_cache_entries=0)
    fast = [
        ReplicaStore(tmp_path / "nocache", TOPIC, head_cache_entries=0),
        ReplicaStore(tmp_path / "tiny", TOPIC, head_cache_entries=2),
        ReplicaStore(tmp_path / "cache", TOPIC),
    ]
    next_offsets: dict[int, int] = {}
    settled = 0
    try:
        for poll in range(80):
            batch = _poll(rng, next_offsets)
            keep = (lambda tp: tp.partition != 2) if poll % 7 == 3 else (lambda tp: True)
            expected = await fold_polled(decode_batch(batch, keep), reference)
            reference.apply(expected.changes, {}, FoldCounts(), expected.unshadowed)
            for store in fast:
                folded = await fold_batch(batch, keep, store)
                # The settled grains' states as the store will hold them, beside the others.
                merged = copy.copy(folded.result)
                merged.changes = {
                    **folded.result.changes,
                    **{p[0]: _unpack_state(p[4]) for p in folded.prepared},
                }
                assert len(merged.changes) == folded.grains_written
                assert _seen(merged) == _seen(expected), f"poll {poll}"
                assert folded.records == expected.counts.records
                settled += len(folded.prepared)
                store.apply(
                    folded.result.changes, {}, FoldCounts(), folded.result.unshadowed,
                    folded.prepared,
                )  # fmt: skip
            if poll % 25 == 24:
                for store in [reference, *fast]:
                    store.wipe_partitions([poll % 3])
        want = list(reference.grains())
        assert want  # the run left grains to compare
        for store in fast:
            assert list(store.grains()) == want
            assert list(store.shadowed()) == list(reference.shadowed())
        assert settled > 0  # the fast pass did settle grains
    finally:
        for store in [reference, *fast]:
            store.close()


def test_canonical_full_state_agrees_with_decode() -> None:
    """Whenever the fast decode answers, decode() gives a FullState of the same fields."""
    rng = random.Random(7)
    answered = 0
    for _ in range(3000):
        grain = rng.choice(GRAINS)
        key, value = _key(grain, rng), _value(grain, rng.randint(1, 5), rng)
        fields = canonical_full_state(key, value)
        if fields is None:
            continue
        answered += 1
        entry = decode(key, value)
        assert (entry.grain_type, entry.grain_key) == (fields.grain_type, fields.grain_key)
        assert getattr(entry, "entry_type", None) is not None
        assert entry.entry_type.value == "FullState"  # type: ignore[union-attr]
        assert (entry.sequence, entry.payload) == (fields.sequence, fields.payload)  # type: ignore[union-attr]
    assert answered > 1000


def _build_poll(
    rng: random.Random, next_offsets: dict[int, int]
) -> dict[TopicPartition, list[Any]]:
    """A poll of what a build mostly reads: FullStates with rising sequences, some tombstones."""
    batch: dict[TopicPartition, list[Any]] = {}
    for partition in range(3):
        records = []
        for _ in range(rng.randint(1, 15)):
            grain = ("t", f"p{partition}-{rng.randrange(20)}")
            offset = next_offsets.get(partition, 0)
            next_offsets[partition] = offset + 1
            value = (
                None
                if rng.random() < 0.1
                else msgpack.packb(
                    {
                        "grain_type": grain[0],
                        "grain_key": grain[1],
                        "sequence": 1 + offset,
                        "timestamp_millis": 5,
                        "source_cluster": "eu",
                        "entry_type": "FullState",
                        "payload": b"x",
                    },
                    use_bin_type=True,
                )
            )
            key = f"{grain[0]}/{grain[1]}".encode()
            records.append(
                ConsumerRecord(TOPIC, partition, offset, 0, 0, key, value, None, 0, 0, ())
            )
        batch[TopicPartition(TOPIC, partition)] = records
    return batch


async def test_a_build_into_an_empty_store_reads_nothing_from_rocksdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every head is cached from the first write on, so a build reads no current state: what
    # the cache lacks has none (test_fold_batch_equals_the_reference holds the results).
    rng = random.Random(5)
    store = ReplicaStore(tmp_path / "db", TOPIC)
    reads: list[object] = []
    for name in ("read_states", "_locations", "get_many"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda arg, real=real: reads.append(arg) or real(arg))
    real_async = store.read_states_async

    async def read_states_async(hints: dict[GrainId, int]) -> dict[GrainId, object]:
        reads.append(hints)
        return await real_async(hints)

    monkeypatch.setattr(store, "read_states_async", read_states_async)
    next_offsets: dict[int, int] = {}
    try:
        for _ in range(30):
            folded = await fold_batch(_build_poll(rng, next_offsets), lambda tp: True, store)
            result = folded.result
            store.apply(result.changes, {}, FoldCounts(), result.unshadowed, folded.prepared)
        assert store.count_grains() > 0 and reads == []
        store.wipe_partitions([0])  # other partitions hold states: the cache knows less now
        await fold_batch(_build_poll(rng, next_offsets), lambda tp: True, store)
        assert reads
    finally:
        store.close()
