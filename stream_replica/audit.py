"""``stream-replica audit``: would a rebuild from the topic, as it stands, give this store?

Reads the partitions the store holds, keeps the last record of every key below the store's
checkpoint (what the log cleaner leaves at most, so the answer holds for any compaction),
folds each of those as a rebuild would, and compares grain by grain with the store:

* ``shadowed``: the log's last record on the key is one the fold refuses or ignores, so a
  rebuild loses the store's state (repair with ``run --repair-shadowed``);
* ``missing``: a rebuild has the grain, the store does not;
* ``extra``: the store has the grain, a rebuild would not;
* ``differs``: both have it, with different states.

Keys that have records past the checkpoint are skipped (the store has not read them yet, and
the cleaner may already have dropped their older records). The store is opened as a RocksDB
secondary, so the audit works while the worker runs; grains and checkpoints come from the
same instant.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream_replica.admin import Cluster, connection, describe_topic
from stream_replica.clients import start_client
from stream_replica.contract import (
    ContractError,
    EntryType,
    GrainId,
    Tombstone,
    decode,
    parse_key,
)
from stream_replica.fold import GrainState, Polled, fold
from stream_replica.offsets import READ_COMMITTED
from stream_replica.refusals import refusal
from stream_replica.store import ReplicaReader, StoreError

PROGRESS_INTERVAL_S = 2.0
# Progress lines go to the log (stderr, in --log-format json too), the report to stdout.
log = logging.getLogger("stream_replica.audit")


@dataclass
class AuditReport:
    divergent: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def state_json(state: GrainState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "sequence": state.sequence,
        "timestamp_millis": state.timestamp_millis,
        "source_cluster": state.source_cluster,
        "payload": base64.b64encode(state.payload).decode(),
        "partition": state.partition,
        "offset": state.offset,
    }


@dataclass
class _LastRecords:
    """Per partition: the last record of each key below the checkpoint, and the keys that
    also have records at or past it."""

    # key → (offset, value) of its last record; decoded only once the read is done
    last: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    later_keys: set[bytes] = field(default_factory=set)
    read: int = 0


async def _read_last_records(
    cluster: Cluster,
    topic: str,
    checkpoints: dict[int, int],
    progress: Callable[[str], None],
) -> dict[int, _LastRecords]:
    settings = connection(cluster)
    consumer = AIOKafkaConsumer(
        **(READ_COMMITTED | settings.options("consumer")),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await start_client(settings, consumer)
    found = {p: _LastRecords() for p in checkpoints}
    try:
        tps = [TopicPartition(topic, p) for p in checkpoints]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        total = sum(ends[tp] - starts[tp] for tp in tps)
        last_report = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, records in batch.items():
                bucket = found[tp.partition]
                limit = checkpoints[tp.partition]
                for record in records:
                    if record.offset >= ends[tp] or record.key is None:
                        continue  # null keys: a compacted topic refuses them anyway
                    bucket.read += 1
                    if record.offset >= limit:
                        bucket.later_keys.add(record.key)
                        continue
                    bucket.last[record.key] = (record.offset, record.value)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if time.monotonic() - last_report > PROGRESS_INTERVAL_S:
                done = sum(b.read for b in found.values())
                progress(f"audit: read {done} of at most {total} records")
                last_report = time.monotonic()
    except KafkaError as exc:
        refused = refusal(exc, settings, doing="reading it", topic=topic, topic_flag="--db")
        if refused is not None:
            raise refused from None
        raise
    finally:
        await consumer.stop()
    return found


@dataclass(slots=True)
class _Rebuild:
    """What a rebuild gives one grain: ``states``, every outcome the order of its
    partitions' records allows (one unless the grain has records on several partitions,
    whose interleaving a rebuild does not fix), and the last record on each partition."""

    states: list[GrainState | None]
    records: dict[int, Polled]


# A grain on more partitions than this (a producer that keyed it in many ways) is folded in
# offset order only, not in every order.
MAX_ORDERED_PARTITIONS = 4


def rebuilt_grains(
    found: dict[int, dict[bytes, tuple[int, bytes | None]]],
) -> dict[GrainId, _Rebuild]:
    """What a rebuild from only these records (the last of each key, per partition) gives.
    A grain with records on several partitions (a key sent to another partition, or the
    topic's partition count raised) is folded in every order of its partitions: the fold
    keeps the higher sequence whatever the order, but an equal sequence or a tombstone
    depends on which partition's record a rebuild reads last."""
    records: dict[GrainId, dict[int, Polled]] = {}
    for partition, last in found.items():
        for key, (offset, value) in last.items():
            try:
                decoded: Any = decode(key, value)
            except ContractError as exc:
                decoded = exc
            grain = decoded.grain
            if grain is None:
                continue  # an unparseable key names no grain
            records.setdefault(grain, {})[partition] = Polled(
                partition, offset, key, value, decoded
            )
    result: dict[GrainId, _Rebuild] = {}
    for grain, on in records.items():
        ordered = [on[p] for p in sorted(on)]
        orders = (
            itertools.permutations(ordered)
            if 1 < len(ordered) <= MAX_ORDERED_PARTITIONS
            else [sorted(ordered, key=lambda r: r.offset)]
        )
        states: list[GrainState | None] = []
        for order in orders:
            state = fold(order, {}).changes.get(grain)
            if state not in states:
                states.append(state)
        result[grain] = _Rebuild(states, on)
    return result


def _record_kind(record: Polled, store_state: GrainState | None) -> str:
    body = record.body
    if isinstance(body, ContractError):
        return "invalid"
    if isinstance(body, Tombstone):
        return "tombstone"
    if body.entry_type is EntryType.DELTA:
        return "delta"
    if store_state is not None and body.sequence < store_state.sequence:
        return "stale"
    return "full_state"


async def audit(
    db: Path,
    cluster: Cluster,
    partitions: list[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> AuditReport:
    started = time.monotonic()
    with ReplicaReader(db) as reader:
        topic = reader.topic
        if topic is None:
            raise StoreError(f"state directory {db} does not replicate any topic yet")
        identity = reader.topic_identity()
        checkpoints = {p: c.next_offset for p, c in reader.checkpoints().items()}
        if partitions is not None:
            unknown = sorted(set(partitions) - set(checkpoints))
            if unknown:
                raise StoreError(f"state directory {db} holds no partition(s) {unknown}")
            checkpoints = {p: checkpoints[p] for p in partitions}
        stored = {g: s for g, s in reader.grains() if s.partition in checkpoints}
    info = await describe_topic(cluster, topic)
    if info is None:
        raise StoreError(f"topic {topic!r} (replicated by {db}) does not exist")
    if (
        identity is not None
        and identity.topic_id
        and info.topic_id not in (None, identity.topic_id)
    ):
        raise StoreError(
            f"topic {topic!r} has ID {info.topic_id}, the store was built from "
            f"{identity.topic_id}: it replicates a deleted topic; rebuild it"
        )
    found = await _read_last_records(cluster, topic, checkpoints, progress or log.info)

    report = AuditReport()
    reasons = {"shadowed": 0, "missing": 0, "extra": 0, "differs": 0}
    skipped = 0
    later: set[GrainId] = set()
    for bucket in found.values():
        for key in bucket.later_keys:
            with contextlib.suppress(ContractError):  # an unparseable key names no grain
                later.add(parse_key(key))
    rebuilt = rebuilt_grains({p: bucket.last for p, bucket in found.items()})
    no_rebuild = _Rebuild([None], {})
    for grain in sorted(set(stored) | {g for g, r in rebuilt.items() if r.states != [None]}):
        if grain in later:
            skipped += 1
            continue
        mine = stored.get(grain)
        rebuild = rebuilt.get(grain, no_rebuild)
        if mine in rebuild.states:
            continue
        theirs = rebuild.states[0]
        line: dict[str, Any] = {
            "grain_type": grain[0],
            "grain_key": grain[1],
            "store": state_json(mine),
            "rebuild": state_json(theirs),
        }
        if len(rebuild.records) > 1:
            # which of them a rebuild keeps depends on the order it reads the partitions in
            line["on_partitions"] = sorted(rebuild.records)
            line["rebuilds"] = [state_json(s) for s in rebuild.states]
        record = None if mine is None else rebuild.records.get(mine.partition)
        if record is not None and mine is not None and record.offset > mine.offset:
            why = "shadowed"
            line["shadowed_by_offset"] = record.offset
            line["last_record"] = _record_kind(record, mine)
        elif mine is None:
            why = "missing"
        elif theirs is None and len(rebuild.states) == 1:
            why = "extra"
        else:
            why = "differs"
        line["why"] = why
        reasons[why] += 1
        report.divergent.append(line)
    report.summary = {
        "topic": topic,
        "partitions": sorted(checkpoints),
        "grains_in_store": len(stored),
        "records_read": sum(b.read for b in found.values()),
        "skipped_past_checkpoint": skipped,
        "divergent": len(report.divergent),
        **reasons,
        "seconds": round(time.monotonic() - started, 3),
    }
    return report
