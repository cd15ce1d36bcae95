"""The chaos scenario generator: an endless, seeded stream of records for many grains —
FullStates with increasing sequences, duplicates, lower (out-of-order) sequences, Deltas,
tombstones followed by re-creation, and invalid values of every class — with payloads from
a few bytes to tens of KiB."""

from __future__ import annotations

import random
from collections.abc import Iterator

from stream_replica.contract import Entry, EntryType, encode_key, encode_value
from stream_replica.workload import Op, invalid_values


def payload_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.70:
        return rng.randint(1, 512)
    if roll < 0.95:
        return rng.randint(1024, 4096)
    return rng.randint(10 * 1024, 40 * 1024)


def scenario(grains: int, seed: int) -> Iterator[Op]:
    rng = random.Random(seed)
    sequences: dict[int, int] = {}
    last_payload: dict[int, bytes] = {}
    types = ("account", "cart", "session", "order")
    while True:
        index = rng.randrange(grains)
        grain_type, grain_key = types[index % len(types)], f"k-{index:06d}"
        key = encode_key(grain_type, grain_key)
        current = sequences.get(index, 0)
        roll = rng.random()

        def value(
            sequence: int,
            kind: EntryType = EntryType.FULL_STATE,
            grain_type: str = grain_type,
            grain_key: str = grain_key,
        ) -> bytes:
            payload = rng.randbytes(payload_size(rng))
            return encode_value(
                Entry(grain_type, grain_key, sequence, sequence, "primary", kind, payload)
            )

        if roll < 0.02 and current:
            sequences[index] = 0  # the next FullState re-creates it from sequence 1
            yield Op("tombstone", key, None)
        elif roll < 0.04 and current:
            yield Op("delta", key, value(current + 1, EntryType.DELTA))
        elif roll < 0.06 and current:  # a redelivery: same sequence, same payload
            duplicate = Entry(
                grain_type,
                grain_key,
                current,
                current,
                "primary",
                EntryType.FULL_STATE,
                last_payload[index],
            )
            yield Op("duplicate", key, encode_value(duplicate))
        elif roll < 0.08 and current > 1:
            yield Op("stale", key, value(rng.randint(1, current - 1)))
        elif roll < 0.085:
            yield rng.choice(invalid_values(rng, grain_type, grain_key))
        elif roll < 0.087:
            yield Op("invalid", key, rng.randbytes(rng.randint(0, 64)))
        else:
            sequence = current + rng.randint(1, 3)
            sequences[index] = sequence
            payload = rng.randbytes(payload_size(rng))
            last_payload[index] = payload
            full = Entry(
                grain_type, grain_key, sequence, sequence, "primary", EntryType.FULL_STATE, payload
            )
            yield Op("full", key, encode_value(full))
