"""The common case of a poll, folded in one pass over the fetched records.

Most records are FullStates in the canonical form whose sequence is above the state held for
their grain. For a grain all of whose records in a poll are such (one partition, sequences
rising, the first above the held state), the fold's outcome is known without running it: the
last record becomes the state, the others are intermediates, a shadowed state is unshadowed.
:func:`fast_fold` finds those grains with one C decode per record and one head lookup per
grain, and names every other key (tombstones, Deltas, invalid records, stale or equal
sequences, a grain on two partitions, other value forms) for the reference path — decode()
and fold() — which gets those keys' records in poll order. ``poll.fold_batch`` merges the two;
tests/test_fast_fold.py holds the merged result equal to the reference on random polls.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition

from stream_replica.contract import GrainId, canonical_full_state
from stream_replica.fold import GrainState
from stream_replica.store import (
    HeadLookup,
    Prepared,
    ReplicaStore,
    encode_new_state,
    grain_body_of_key,
)


@dataclass(slots=True)
class FastFold:
    """What the fast pass settled; everything else is in ``slow_keys``."""

    # the settled grains' new states, encoded for store.apply (no GrainState is made)
    prepared: list[Prepared] = field(default_factory=list)
    applied: int = 0  # FullStates that became a state (all records of the settled grains)
    unshadowed: set[GrainId] = field(default_factory=set)
    # Kafka keys whose records the reference path must fold (None: a record without a key)
    slow_keys: set[bytes | None] = field(default_factory=set)
    # current states read from RocksDB for the grains the head cache lacked
    read: dict[GrainId, GrainState | None] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    records: int = 0


# A run of one grain's records in a poll: [partition, first sequence, last fields, last offset,
# count]. A list, not an object: one is made per grain per poll.
_Run = list[Any]


async def fast_fold(
    batch: Mapping[TopicPartition, list[Any]],
    keep: Callable[[TopicPartition], bool],
    store: ReplicaStore,
) -> FastFold:
    out = FastFold()
    runs = scan(batch, keep, out)
    if runs:
        lookups, unknown = look_up(runs, store)
        if unknown:
            out.read = await store.read_states_async(unknown)
        settle(runs, lookups, out)
    return out


def scan(
    batch: Mapping[TopicPartition, list[Any]],
    keep: Callable[[TopicPartition], bool],
    out: FastFold,
) -> dict[bytes, _Run]:
    """Decode every kept record the fast way; the runs of the grains that may be settled
    (keyed by Kafka key), the other keys added to ``out.slow_keys``."""
    runs: dict[bytes, _Run] = {}
    slow = out.slow_keys
    next_offsets = out.next_offsets
    for tp, records in batch.items():
        if not records or not keep(tp):
            continue
        partition = tp.partition
        out.records += len(records)
        last = records[-1].offset + 1  # aiokafka hands a partition's records in offset order
        if next_offsets.get(partition, -1) < last:
            next_offsets[partition] = last
        for record in records:
            key = record.key
            if key in slow:
                continue
            fields = canonical_full_state(key, record.value)
            if fields is None:
                slow.add(key)
                continue
            run = runs.get(key)
            if run is None:
                runs[key] = [partition, fields.sequence, fields, record.offset, 1]
            elif run[2].sequence < fields.sequence and run[0] == partition:
                run[2] = fields
                run[3] = record.offset
                run[4] += 1
            else:  # an equal or lower sequence, or the grain on a second partition
                slow.add(key)
    for key in slow:
        runs.pop(key, None)  # type: ignore[arg-type]
    return runs


# Per run: grain, key body, what the head cache says (False: read into FastFold.read).
_Lookup = tuple[GrainId, bytes, HeadLookup]


def look_up(
    runs: dict[bytes, _Run], store: ReplicaStore
) -> tuple[list[_Lookup], dict[GrainId, int]]:
    """What the head cache says of each run's grain, and the grains it does not know (with
    the partition to read each from). (map() and C-level getters: this runs once per grain.)"""
    grains: list[GrainId] = list(map(_GRAIN_OF, map(_LAST_FIELDS, runs.values())))
    keys = list(runs)
    if b"\x00" in b"".join(keys):
        bodies = list(map(grain_body_of_key, keys, grains))
    else:  # the common case: grain_body_of_key without the check per key
        bodies = [key.replace(b"/", b"\x00", 1) for key in keys]
    heads = store.cached_heads(bodies)
    unknown: dict[GrainId, int] = {}
    if False in heads:
        unknown = {
            grain: run[0]
            for grain, run, head in zip(grains, runs.values(), heads, strict=True)
            if head is False
        }
    return list(zip(grains, bodies, heads, strict=True)), unknown


_GRAIN_OF: Final = operator.attrgetter("grain_type", "grain_key")
_LAST_FIELDS: Final = operator.itemgetter(2)


def settle(runs: dict[bytes, _Run], lookups: list[_Lookup], out: FastFold) -> None:
    """Settle each run whose first sequence is above the held state; hand the others over."""
    prepared = out.prepared
    for (key, run), (grain, body, head) in zip(runs.items(), lookups, strict=True):
        held_partition: int | None
        if head is False:
            state = out.read[grain]
            if state is None:
                held_partition = None
            elif run[1] > state.sequence:
                held_partition = state.partition
                if state.shadowed_by >= 0:
                    out.unshadowed.add(grain)
            else:
                out.slow_keys.add(key)
                continue
        elif head is None:
            held_partition = None
        else:
            held_sequence, held_partition, _, shadowed_by = head
            if run[1] <= held_sequence:
                out.slow_keys.add(key)
                continue
            if shadowed_by >= 0:
                out.unshadowed.add(grain)
        partition, _, fields, offset, count = run
        value, new_head = encode_new_state(
            fields.sequence,
            fields.timestamp_millis,
            fields.source_cluster,
            fields.payload,
            partition,
            offset,
        )
        prepared.append((grain, body, held_partition, partition, value, new_head))
        out.applied += count
