""" "Identical results": a contender's final state against the fold of the whole log.

The expected state is what ``stream_replica.fold.fold`` makes of every record of the topic, in
offset order per partition (as ``stream-replica demo`` verifies its replicas). Each grain is
compared by a digest of its state: sequence, timestamp, source cluster and the SHA-256 of the
payload (what the Kafka Streams app dumps; payloads need not cross a process boundary).

``compare`` and ``expected_from_partitions`` are pure (tested in tests/test_bench_verify.py);
the rest reads a topic, a worker's store or a dump file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stream_replica.contract import ContractError, Entry, GrainId, Tombstone, decode
from stream_replica.fold import GrainState, Polled, fold

FOLD_CHUNK = 10_000  # records folded at a time: memory stays at the states, not the log


@dataclass(frozen=True, slots=True)
class GrainDigest:
    sequence: int
    timestamp_millis: int
    source_cluster: str
    payload_sha256: str


def grain_name(grain: GrainId) -> str:
    """The grain as the record key spells it (``grain_type/grain_key``)."""
    return f"{grain[0]}/{grain[1]}"


def digest(state: GrainState) -> GrainDigest:
    return GrainDigest(
        state.sequence,
        state.timestamp_millis,
        state.source_cluster,
        hashlib.sha256(state.payload).hexdigest(),
    )


@dataclass
class Verification:
    """The outcome for one contender: ``grains`` expected, and what differed."""

    grains: int
    mismatches: int = 0
    examples: list[str] = field(default_factory=list)  # the first few, one line each

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def summary(self) -> str:
        if self.ok:
            return f"verified: {self.grains:,} grains, 0 mismatches"
        return (
            f"NOT verified: {self.grains:,} grains, {self.mismatches:,} mismatches "
            f"(e.g. {'; '.join(self.examples)})"
        )


def compare(
    expected: Mapping[str, GrainDigest],
    actual: Iterable[tuple[str, GrainDigest]],
    limit: int = 3,
) -> Verification:
    """Every expected grain must be present with the same digest, nothing else may be, and no
    grain may appear twice in ``actual``."""
    result = Verification(len(expected))

    def mismatch(text: str) -> None:
        result.mismatches += 1
        if len(result.examples) < limit:
            result.examples.append(text)

    seen: set[str] = set()
    for name, got in actual:
        if name in seen:
            mismatch(f"{name}: appears twice")
            continue
        seen.add(name)
        want = expected.get(name)
        if want is None:
            mismatch(f"{name}: extra (sequence {got.sequence}), the log deletes or never sets it")
        elif want != got:
            mismatch(f"{name}: has {_short(got)}, the fold of the log gives {_short(want)}")
    for name in expected.keys() - seen:
        mismatch(f"{name}: missing (the fold of the log gives {_short(expected[name])})")
    return result


def _short(state: GrainDigest) -> str:
    return f"sequence {state.sequence} payload {state.payload_sha256[:12]}"


def expected_from_partitions(partitions: Mapping[int, Iterable[Polled]]) -> dict[str, GrainDigest]:
    """The fold of each partition's records (in offset order), folded a chunk at a time."""
    expected: dict[str, GrainDigest] = {}
    for records in partitions.values():
        for name, state in _fold_partition(records):
            expected[name] = state
    return expected


def _fold_partition(records: Iterable[Polled]) -> Iterator[tuple[str, GrainDigest]]:
    states: dict[GrainId, GrainState] = {}
    chunk: list[Polled] = []

    def flush() -> None:
        for grain, state in fold(chunk, states).changes.items():
            if state is None:
                states.pop(grain, None)
            else:
                states[grain] = state
        chunk.clear()

    for record in records:
        chunk.append(record)
        if len(chunk) >= FOLD_CHUNK:
            flush()
    flush()
    for grain, state in states.items():
        yield grain_name(grain), digest(state)


async def expected_from_topic(
    bootstrap: str, topic: str, end_offsets: Mapping[int, int]
) -> dict[str, GrainDigest]:
    """Read every partition of ``topic`` up to ``end_offsets`` and fold it."""
    expected: dict[str, GrainDigest] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        for partition, end in end_offsets.items():
            # One partition at a time, so only one partition's records are held at once.
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            records: list[Polled] = []
            while end > 0 and await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=5000, max_records=10_000)
                for record in batch.get(tp, []):
                    if record.offset < end:
                        records.append(_polled(partition, record))
            expected.update(expected_from_partitions({partition: records}))
    finally:
        await consumer.stop()
    return expected


def _polled(partition: int, record: ConsumerRecord[bytes, bytes]) -> Polled:
    body: Entry | Tombstone | ContractError
    try:
        body = decode(record.key, record.value)
    except ContractError as exc:
        body = exc
    return Polled(partition, record.offset, None, None, body)


def worker_store(dbs: Sequence[Path]) -> list[tuple[str, GrainDigest]]:
    """The grains of our workers' stores (read-only secondary instances)."""
    from stream_replica.store import ReplicaReader

    grains: list[tuple[str, GrainDigest]] = []
    for db in dbs:
        with ReplicaReader(db) as reader:
            grains.extend((grain_name(g), digest(s)) for g, s in reader.grains())
    return grains


def dump_file(path: Path) -> list[tuple[str, GrainDigest]]:
    """A dump of JSON lines {grain, sequence, timestamp_millis, source_cluster, payload_sha256}
    (what benchmarks/kstreams writes)."""
    grains: list[tuple[str, GrainDigest]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                grains.append(
                    (
                        str(obj["grain"]),
                        GrainDigest(
                            int(obj["sequence"]),
                            int(obj["timestamp_millis"]),
                            str(obj["source_cluster"]),
                            str(obj["payload_sha256"]),
                        ),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a grain line ({exc})") from None
    return grains
