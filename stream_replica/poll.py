"""One fetched batch → decoded records → fold against the store's current states. Shared by
the active loop (worker.py) and the standby follower (standby.py), so both apply the same
rules to the same records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition

from stream_replica.contract import ContractError, decode
from stream_replica.fold import FoldResult, Polled, fold
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
    grains = {p.body.grain for p in polled if not isinstance(p.body, ContractError)}
    grains.update(
        p.body.grain for p in polled if isinstance(p.body, ContractError) and p.body.grain
    )
    return fold(polled, store.get_many(grains))
