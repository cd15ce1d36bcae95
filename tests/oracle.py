"""The oracle: each partition's expected replica, computed by applying the records the broker
really holds one by one in offset order (independent of stream_replica.fold)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_replica.contract import ContractError, EntryType, GrainId, Tombstone, decode
from stream_replica.fold import GrainState, Polled

Store = dict[GrainId, GrainState]


def apply_one(store: Store, record: Polled) -> None:
    body = record.body
    if isinstance(body, ContractError):
        return
    if isinstance(body, Tombstone):
        store.pop(body.grain, None)
        return
    if body.entry_type is EntryType.DELTA:
        return
    current = store.get(body.grain)
    # Equal sequence: the later record wins (as it does in a compacted log).
    if current is None or body.sequence >= current.sequence:
        store[body.grain] = GrainState(
            body.sequence,
            body.timestamp_millis,
            body.source_cluster,
            body.payload,
            record.partition,
            record.offset,
        )


@dataclass
class Oracle:
    records: dict[int, list[Polled]] = field(default_factory=dict)

    def expected(self, upto: dict[int, int] | None = None) -> Store:
        """Expected store for all partitions (or each partition's records below ``upto``)."""
        store: Store = {}
        for partition, records in sorted(self.records.items()):
            limit = None if upto is None else upto.get(partition, 0)
            for record in records:
                if limit is not None and record.offset >= limit:
                    break
                apply_one(store, record)
        return store

    def rejected(self) -> set[tuple[int, int]]:
        """(partition, offset) of every Delta and invalid record."""
        found = set()
        for records in self.records.values():
            for record in records:
                body = record.body
                if isinstance(body, ContractError) or (
                    not isinstance(body, Tombstone) and body.entry_type is EntryType.DELTA
                ):
                    found.add((record.partition, record.offset))
        return found

    def end_offsets(self) -> dict[int, int]:
        return {p: (r[-1].offset + 1 if r else 0) for p, r in self.records.items()}


async def read_oracle(bootstrap: str, topic: str, partitions: int) -> Oracle:
    """Read every partition from the beginning to its current end offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    oracle = Oracle({p: [] for p in range(partitions)})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=5000, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    try:
                        body: object = decode(record.key, record.value)
                    except ContractError as exc:
                        body = exc
                    oracle.records[tp.partition].append(
                        Polled(tp.partition, record.offset, record.key, record.value, body)  # type: ignore[arg-type]
                    )
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return oracle
