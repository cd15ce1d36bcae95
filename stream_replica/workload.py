"""Sample workloads: many grains, several updates each, with Deltas, tombstones, duplicates,
stale sequences and invalid records mixed in. Deterministic for a given seed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

from stream_replica.contract import Entry, EntryType, encode_key, encode_value


@dataclass(frozen=True, slots=True)
class Op:
    """One record to produce: raw key and value (None = tombstone), and what it is."""

    kind: str  # full | delta | tombstone | duplicate | stale | invalid
    key: bytes | None
    value: bytes | None


def invalid_values(rng: random.Random, grain_type: str, grain_key: str) -> list[Op]:
    """One record of each invalid class."""
    good = {
        "grain_type": grain_type,
        "grain_key": grain_key,
        "sequence": 1,
        "timestamp_millis": 0,
        "source_cluster": "primary",
        "entry_type": "FullState",
        "payload": b"x",
    }
    key = encode_key(grain_type, grain_key)

    def variant(**changes: object) -> bytes:
        fields = {**good, **changes}
        return msgpack.packb({k: v for k, v in fields.items() if v is not _DROP})  # type: ignore[no-any-return]

    return [
        Op("invalid", key, bytes(rng.getrandbits(8) for _ in range(12)) + b"\xc1"),  # not msgpack
        Op("invalid", key, msgpack.packb([1, 2, 3])),  # array too short to be the positional form
        Op("invalid", key, variant(sequence=_DROP)),  # missing field
        Op("invalid", key, variant(sequence="7")),  # wrong type
        Op("invalid", key, variant(sequence=0)),  # out of range
        Op("invalid", key, variant(entry_type="Snapshot")),  # unknown entry type
        Op("invalid", key, variant(grain_key=grain_key + "-other")),  # key/value mismatch
        Op("invalid", b"no-slash-key", variant()),  # bad key
        Op("invalid", b"\xff\xfe/bad-utf8", variant()),  # key not UTF-8
    ]


_DROP = object()


def sample_workload(
    grains: int,
    updates: int = 4,
    seed: int = 7,
    payload_sizes: tuple[int, int] = (16, 512),
    delta_rate: float = 0.01,
    tombstone_rate: float = 0.02,
    duplicate_rate: float = 0.01,
    stale_rate: float = 0.01,
    invalid_sets: int = 3,
    grain_types: tuple[str, ...] = ("account", "cart", "session"),
) -> Iterator[Op]:
    """Rounds of updates over all grains, interleaved, so each poll mixes many grains."""
    rng = random.Random(seed)
    sequences: dict[int, int] = {}
    names = [(grain_types[i % len(grain_types)], f"g-{i:07d}") for i in range(grains)]
    invalid_at = {rng.randrange(grains * updates) for _ in range(invalid_sets)}
    step = 0
    for round_index in range(updates):
        for index in rng.sample(range(grains), grains):
            grain_type, grain_key = names[index]
            key = encode_key(grain_type, grain_key)
            step += 1
            if step in invalid_at:
                yield from invalid_values(rng, grain_type, grain_key)
            roll = rng.random()
            current = sequences.get(index, 0)
            if round_index > 0 and roll < tombstone_rate:
                sequences[index] = 0
                yield Op("tombstone", key, None)
                continue
            size = rng.randint(*payload_sizes)
            payload = rng.randbytes(size)
            if current and roll < tombstone_rate + delta_rate:
                yield Op("delta", key, _value(grain_type, grain_key, current + 1, payload, True))
                continue
            sequence = current + rng.randint(1, 3)
            sequences[index] = sequence
            yield Op("full", key, _value(grain_type, grain_key, sequence, payload, False))
            roll = rng.random()
            if roll < duplicate_rate:
                yield Op("duplicate", key, _value(grain_type, grain_key, sequence, payload, False))
            elif roll < duplicate_rate + stale_rate and sequence > 1:
                yield Op("stale", key, _value(grain_type, grain_key, sequence - 1, b"old", False))


def _value(grain_type: str, grain_key: str, sequence: int, payload: bytes, delta: bool) -> bytes:
    entry_type = EntryType.DELTA if delta else EntryType.FULL_STATE
    return encode_value(
        Entry(
            grain_type,
            grain_key,
            sequence,
            1_700_000_000_000 + sequence,
            "primary",
            entry_type,
            payload,
        )
    )
