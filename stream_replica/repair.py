"""Shadow repair (``run --repair-shadowed``): re-publish a shadowed grain's state.

A record the fold refuses or ignores after a grain's state leaves the log's last record for
that key unusable, so once the cleaner runs a rebuild loses the state (fold.py). Re-publishing
the state (same sequence, payload, timestamp and source; a header saying it is a repair) makes
the last record valid again, and compaction converges to the replica.

Why it converges without ping-pong:

* A repair carries the state's own sequence, so every replica folds it as an equal-sequence
  redelivery (the later record wins): the state does not change and the shadow mark clears.
* Repairs wait until the partition is caught up, so a worker does not re-publish a state the
  log has already moved past. If the primary writes a higher sequence concurrently, the
  repair is stale, shadows the newer state and is itself repaired once with that higher
  sequence; each repair answers one shadowing record, and only the primary makes new ones.
* Several replica groups repairing the same grain publish the same state; duplicates are
  harmless and clear every group's mark.
* If the primary deletes the grain concurrently (a tombstone between the caught-up check and
  the repair), the repair, a FullState after a tombstone, starts the grain again. The worker
  watches what it reads up to its repair: when the last record on the key before it is such a
  tombstone and nothing followed the repair, it re-publishes the deletion (a tombstone with
  the repair header), and the replicas, and compaction, end deleted again.

The shadow index in the store (written with the poll's batch) is the to-do list: a repair
lost in a crash or a failed send is retried by the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream_replica.clients import start_client, stop_producer
from stream_replica.connection import ConnectionSettings
from stream_replica.contract import Entry, EntryType, GrainId, encode_key, encode_value
from stream_replica.fold import GrainState
from stream_replica.store import ReplicaStore

log = logging.getLogger("stream_replica.repair")

SEND_TIMEOUT_S: Final = 30.0
REPAIR_HEADER: Final = "stream-replica.repair"
# A repair not read back within this (its partition went to another worker) is not watched.
WATCH_FOR_S: Final = 600.0


def repair_record(
    grain: GrainId, state: GrainState, group: str
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the record that re-publishes ``state``."""
    entry = Entry(
        grain[0],
        grain[1],
        state.sequence,
        state.timestamp_millis,
        state.source_cluster,
        EntryType.FULL_STATE,
        state.payload,
    )
    headers = [
        (REPAIR_HEADER, b"1"),
        ("stream-replica.repair-of-offset", str(state.offset).encode()),
        ("stream-replica.shadowed-by-offset", str(state.shadowed_by).encode()),
        ("stream-replica.repair-group", group.encode()),
    ]
    return encode_key(*grain), encode_value(entry), headers


@dataclass(slots=True)
class _Watch:
    """A repair on its way back: which record on its key came last before it."""

    grain: GrainId
    partition: int
    since: int  # the partition's next offset when the repair was decided
    repair_offset: int  # where the repair landed
    started: float
    deleted_at: int = -1  # the last record on the key in [since, repair_offset): a tombstone


class ShadowRepairer:
    """Publishes repairs with an idempotent producer (acks=all) to the replicated topic."""

    def __init__(
        self,
        topic: str,
        group: str,
        producer: AIOKafkaProducer,
        connection: ConnectionSettings | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self._producer = producer
        self._connection = connection
        # grain → the shadowing offset a repair was acknowledged for (not sent twice)
        self._acknowledged: dict[GrainId, int] = {}
        # Kafka key → its repair not read back yet (a concurrent deletion is looked for)
        self._watches: dict[bytes, _Watch] = {}
        self.repairs = 0
        self.deletions_restored = 0

    @classmethod
    def create(cls, settings: ConnectionSettings, topic: str, group: str) -> ShadowRepairer:
        producer = AIOKafkaProducer(
            **settings.options("producer"), acks="all", enable_idempotence=True
        )
        return cls(topic, group, producer, settings)

    async def start(self) -> None:
        if self._connection is not None:
            await start_client(self._connection, self._producer, (self.topic, "--topic"))
        else:
            await self._producer.start()

    async def stop(self, timeout_s: float) -> bool:
        """False: repairs were dropped unacknowledged (the next sweep after a restart sends
        them again: the store's shadow marks are the to-do list)."""
        return await stop_producer(self._producer, timeout_s)

    def forget(self, grains: Iterable[GrainId]) -> None:
        """The grains are no longer shadowed (their repair, or a newer record, was read)."""
        for grain in grains:
            self._acknowledged.pop(grain, None)

    async def sweep(
        self,
        store: ReplicaStore,
        caught_up: Callable[[int], bool],
        next_offsets: Mapping[int, int],
    ) -> int:
        """Repair every shadowed grain of the partitions for which ``caught_up`` is true
        (read up to ``next_offsets``). Returns the number of repairs acknowledged; failures
        are logged and retried later."""
        wanted = [
            grain
            for grain, mark in store.shadowed()
            if self._acknowledged.get(grain) != mark.by_offset and caught_up(mark.partition)
        ]
        if not wanted:
            return 0
        states = store.get_many(wanted)
        return await self.repair(
            [(g, s) for g, s in states.items() if s is not None and s.shadowed], next_offsets
        )

    async def repair(
        self, items: list[tuple[GrainId, GrainState]], next_offsets: Mapping[int, int]
    ) -> int:
        """Re-publish each state; ``next_offsets``: how far its partition was read when the
        repair was decided (what comes after is watched for a deletion)."""
        sends = []
        keys = {}
        for grain, state in items:
            key, value, headers = repair_record(grain, state, self.group)
            keys[grain] = key
            sends.append((grain, state, self._send(key, value, state.partition, headers)))
        results = await asyncio.gather(*(send for _, _, send in sends), return_exceptions=True)
        done = 0
        for (grain, state, _), outcome in zip(sends, results, strict=True):
            if isinstance(outcome, BaseException):
                log.warning(
                    "repair of grain %s/%s (partition %d, state at offset %d, shadowed by "
                    "offset %d) not published (%s: %s); retrying later",
                    grain[0],
                    grain[1],
                    state.partition,
                    state.offset,
                    state.shadowed_by,
                    type(outcome).__name__,
                    outcome,
                )
                continue
            self._acknowledged[grain] = state.shadowed_by
            since = next_offsets.get(state.partition, state.shadowed_by + 1)
            self._watches[keys[grain]] = _Watch(
                grain, state.partition, since, outcome, time.monotonic()
            )
            done += 1
            log.info(
                "repaired grain %s/%s: re-published sequence %d (state at %s/%d/%d, shadowed "
                "by offset %d) at offset %s",
                grain[0],
                grain[1],
                state.sequence,
                self.topic,
                state.partition,
                state.offset,
                state.shadowed_by,
                outcome,
            )
        self.repairs += done
        return done

    @property
    def watching(self) -> bool:
        return bool(self._watches)

    async def read_back(
        self, batch: Mapping[TopicPartition, list[Any]], store: ReplicaStore
    ) -> None:
        """After a poll is written: note the records on watched keys, and for each repair
        this poll read back, re-publish the deletion it undid (if it undid one)."""
        watches = self._watches
        read: list[_Watch] = []
        for tp, records in batch.items():
            for record in records:
                watch = watches.get(record.key)
                if watch is None or watch.partition != tp.partition:
                    continue
                if record.offset >= watch.repair_offset:
                    read.append(watches.pop(record.key))
                elif record.offset >= watch.since:
                    watch.deleted_at = record.offset if record.value is None else -1
        expired = time.monotonic() - WATCH_FOR_S
        for key in [k for k, w in watches.items() if w.started < expired]:
            del watches[key]
        for watch in read:
            if watch.deleted_at < 0:
                continue
            state = store.get(watch.grain)
            if state is None or state.offset != watch.repair_offset:
                continue  # deleted or set again after the repair: nothing to restore
            await self._restore_deletion(watch)

    async def _restore_deletion(self, watch: _Watch) -> None:
        grain = watch.grain
        headers = [
            (REPAIR_HEADER, b"1"),
            ("stream-replica.repair-of-deletion-offset", str(watch.deleted_at).encode()),
            ("stream-replica.repair-group", self.group.encode()),
        ]
        where = (
            f"grain {grain[0]}/{grain[1]}: the repair at {self.topic}/{watch.partition}/"
            f"{watch.repair_offset} came after the grain's deletion at offset "
            f"{watch.deleted_at} and started it again"
        )
        try:
            offset = await self._send(encode_key(*grain), None, watch.partition, headers)
        except KafkaError as exc:
            log.error(
                "%s; re-publishing the deletion failed (%s: %s): publish a tombstone for it",
                where,
                type(exc).__name__,
                exc,
            )
            return
        self.deletions_restored += 1
        log.warning("%s; re-published the deletion at offset %d", where, offset)

    async def _send(
        self, key: bytes, value: bytes | None, partition: int, headers: list[tuple[str, bytes]]
    ) -> int:
        async def acknowledged() -> int:
            future = await self._producer.send(
                self.topic, key=key, value=value, partition=partition, headers=headers
            )
            return int((await future).offset)

        # Bounded as a whole: send() itself waits for metadata and buffer space, and the sweep
        # holds the worker's batch lock, which a revocation waits for.
        try:
            return await asyncio.wait_for(acknowledged(), SEND_TIMEOUT_S)
        except TimeoutError:
            raise KafkaError(f"no acknowledgement within {SEND_TIMEOUT_S:.0f} s") from None
