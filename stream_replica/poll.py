"""One fetched batch → decoded records → fold against the store's current states. Shared by
the active loop (worker.py) and the standby follower (standby.py), so both apply the same
rules to the same records.

:func:`fold_batch` is the entry point: the fast pass (fast_fold.py) settles the grains whose
records are all plain FullStates above their held state; the rest go through the reference
path, :func:`decode_batch` (contract.decode) and :func:`fold_polled` (fold.fold)."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from stream_replica.contract import ContractError, Entry, EntryType, GrainId, Tombstone, decode
from stream_replica.fast_fold import fast_fold
from stream_replica.fold import FoldResult, GrainState, Polled, fold
from stream_replica.store import Prepared, ReplicaStore


@dataclass(slots=True)
class FoldedBatch:
    result: FoldResult
    # the new states of the grains the fast pass settled (store.apply's ``prepared``; those
    # grains are not in result.changes)
    prepared: list[Prepared]
    records: int  # records of the kept partitions

    @property
    def grains_written(self) -> int:
        return len(self.result.changes) + len(self.prepared)

    def written(self) -> Iterator[GrainId]:
        """Every grain this batch writes (reads waiting on one are woken: grain_waits.py)."""
        yield from self.result.changes
        for prepared in self.prepared:
            yield prepared[0]


async def fold_batch(
    batch: Mapping[TopicPartition, list[Any]],
    keep: Callable[[TopicPartition], bool],
    store: ReplicaStore,
) -> FoldedBatch:
    """The fold of a fetched batch: what fold(decode_batch(batch)) gives (tests/
    test_fast_fold.py), most of it computed by the fast pass: the grains it settles are in
    ``prepared``, encoded for the store, the others in ``result.changes``."""
    fast = await fast_fold(batch, keep, store)
    slow_keys = fast.slow_keys
    if slow_keys:
        polled = decode_batch(batch, keep, slow_keys)
        result = await fold_polled(polled, store)
    else:
        result = FoldResult()
    if fast.prepared:
        result.unshadowed |= fast.unshadowed
        counts = result.counts
        counts.applied += fast.applied
        counts.intermediates_dropped += fast.applied - len(fast.prepared)
    result.counts.records = fast.records
    result.next_offsets = fast.next_offsets
    return FoldedBatch(result, fast.prepared, fast.records)


def decode_batch(
    batch: Mapping[TopicPartition, list[Any]],
    keep: Callable[[TopicPartition], bool],
    only_keys: Container[bytes | None] | None = None,
) -> list[Polled]:
    """The kept partitions' records (only those whose Kafka key is in ``only_keys``, when
    given), decoded by the reference path, in poll order."""
    polled: list[Polled] = []
    for tp, records in batch.items():
        if not keep(tp):
            continue
        partition = tp.partition
        for record in records:
            key, value = record.key, record.value
            if only_keys is not None and key not in only_keys:
                continue
            try:
                body: Any = decode(key, value)
            except ContractError as exc:
                body = exc
            polled.append(Polled(partition, record.offset, key, value, body))
    return polled


async def fold_polled(polled: list[Polled], store: ReplicaStore) -> FoldResult:
    """Fold against the store's current states. A grain whose head the store has cached and
    whose first record in the poll needs no more than the head (a tombstone, or a FullState
    above the held sequence) is folded against a stand-in carrying only the head; any other
    (a refusal or a stale or equal sequence may shadow the state or compare its payload) is
    read from RocksDB, from the partition its first record came from first."""
    first: dict[GrainId, Polled] = {}
    for p in polled:
        body = p.body
        grain = body.grain
        if grain is not None and grain not in first:
            first[grain] = p
    heads = store.heads(first)
    stored: dict[GrainId, GrainState | None] = {}
    to_read: dict[GrainId, int] = {}
    for grain, record in first.items():
        if grain in heads:
            head = heads[grain]
            body = record.body
            if head is None:
                stored[grain] = None
                continue
            if isinstance(body, Tombstone) or (
                isinstance(body, Entry)
                and body.entry_type is EntryType.FULL_STATE
                and body.sequence > head[0]
            ):
                sequence, partition, offset, shadowed_by, _ = head
                stored[grain] = GrainState(sequence, 0, "", b"", partition, offset, shadowed_by)
                continue
        to_read[grain] = record.partition
    if to_read:
        stored.update(await store.read_states_async(to_read))
    return fold(polled, stored)
