"""One fetched batch → decoded records → fold against the store's current states. Shared by
the active loop (worker.py) and the standby follower (standby.py), so both apply the same
rules to the same records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition

from stream_replica.contract import ContractError, Entry, EntryType, GrainId, Tombstone, decode
from stream_replica.fold import FoldResult, GrainState, Polled, fold
from stream_replica.store import ReplicaStore


def decode_batch(
    batch: Mapping[TopicPartition, list[Any]], keep: Callable[[TopicPartition], bool]
) -> list[Polled]:
    polled: list[Polled] = []
    for tp, records in batch.items():
        if not keep(tp):
            continue
        partition = tp.partition
        for record in records:
            key, value = record.key, record.value
            try:
                body: Any = decode(key, value)
            except ContractError as exc:
                body = exc
            polled.append(Polled(partition, record.offset, key, value, body))
    return polled


def fold_polled(polled: list[Polled], store: ReplicaStore) -> FoldResult:
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
        stored.update(store.read_states(to_read))
    return fold(polled, stored)
