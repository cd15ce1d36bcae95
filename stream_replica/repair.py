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
  the repair), the repair, a FullState after a tombstone, starts the grain again; the worker
  sees it when it reads its repair back and re-publishes the deletion (repair_watch.py).

The shadow index in the store (written with the poll's batch) is the to-do list: a repair
lost in a crash or a failed send is retried by the next sweep.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_replica.clients import start_client, stop_producer
from stream_replica.connection import ConnectionSettings
from stream_replica.contract import Entry, EntryType, GrainId, encode_key, encode_value
from stream_replica.fold import GrainState
from stream_replica.repair_watch import REPAIR_HEADER, RepairWatch
from stream_replica.store import ReplicaStore

log = logging.getLogger("stream_replica.repair")

HAND_OFF_TIMEOUT_S: Final = 5.0  # the producer taking a record (metadata, buffer space)
ACK_WAIT_S: Final = 2.0  # a repair pass waits this long for acknowledgements
BACKOFF_S: Final = 30.0  # no repairs for this long after one was not acknowledged in time
# The longest a poll waits on repairs: a pass (one hand-off may time out, then the wait for
# acknowledgements) and a deletion restored when a repair is read back.
LONGEST_WAIT_S: Final = 2 * (HAND_OFF_TIMEOUT_S + ACK_WAIT_S)


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


class ShadowRepairer:
    """Publishes repairs with an idempotent producer (acks=all) to the replicated topic.

    A repair pass never holds the worker up for long: each send is handed to the producer
    (bounded: HAND_OFF_TIMEOUT_S) and its acknowledgement awaited for ACK_WAIT_S at most. One
    not acknowledged by then stays in flight (the producer retries it until a broker takes
    it; it is not sent again meanwhile) and is counted when it lands; repairs pause for
    BACKOFF_S, since the partition takes no writes now (Kafka unreachable, or fewer in-sync
    replicas than min.insync.replicas). A pass used to wait 30 s per repair, holding the
    batch lock: every other partition got one poll per 30 s, and each pass queued the same
    repairs again."""

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
        # grain → the delivery of its repair, not acknowledged yet
        self._in_flight: dict[GrainId, asyncio.Future[Any]] = {}
        self._paused_until = 0.0
        self.watch = RepairWatch(self._restore_deletion)
        self.repairs = 0
        self.deletions_restored = 0
        self.on_repaired: Callable[[int], object] = lambda count: None  # (the metrics)

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
        (read up to ``next_offsets``). Returns the number of repairs acknowledged within the
        pass; failures are logged and retried later."""
        if self._paused():
            return 0
        wanted = [
            grain
            for grain, mark in store.shadowed()
            if self._acknowledged.get(grain) != mark.by_offset
            and grain not in self._in_flight
            and caught_up(mark.partition)
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
        repair was decided (what comes after is watched for a deletion). Returns the number
        acknowledged within ACK_WAIT_S (the others are counted when they land)."""
        if self._paused():
            return 0
        sent = []
        for grain, state in items:
            if grain in self._in_flight:
                continue
            key, value, headers = repair_record(grain, state, self.group)
            try:
                delivery = await self._hand_off(key, value, state.partition, headers)
            except KafkaError as exc:
                self._not_published(grain, state, exc)
                self._pause()
                break  # the producer takes nothing now: the rest waits for the next pass
            since = next_offsets.get(state.partition, state.shadowed_by + 1)
            self.watch.expect(key, grain, state.partition, since)
            self._in_flight[grain] = delivery
            delivery.add_done_callback(functools.partial(self._delivered, grain, state, key))
            sent.append(delivery)
        if not sent:
            return 0
        done, pending = await asyncio.wait(sent, timeout=ACK_WAIT_S)
        if pending:
            log.warning(
                "%d repair(s) not acknowledged within %.0f s (Kafka unreachable, or fewer "
                "in-sync replicas than min.insync.replicas); they land when Kafka takes "
                "them, and repairs pause for %.0f s",
                len(pending),
                ACK_WAIT_S,
                BACKOFF_S,
            )
            self._pause()
        return sum(1 for d in done if not d.cancelled() and d.exception() is None)

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _pause(self) -> None:
        self._paused_until = time.monotonic() + BACKOFF_S

    def _delivered(
        self, grain: GrainId, state: GrainState, key: bytes, delivery: asyncio.Future[Any]
    ) -> None:
        """A repair's delivery ended (its done-callback)."""
        if self._in_flight.get(grain) is delivery:
            del self._in_flight[grain]
        failure = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if failure is not None:
            self.watch.cancel(key)
            self._not_published(grain, state, failure)
            return
        offset = int(delivery.result().offset)
        self._acknowledged[grain] = state.shadowed_by
        self.watch.landed(key, offset)
        self.repairs += 1
        self.on_repaired(1)
        log.info(
            "repaired grain %s/%s: re-published sequence %d (state at %s/%d/%d, shadowed "
            "by offset %d) at offset %d",
            grain[0],
            grain[1],
            state.sequence,
            self.topic,
            state.partition,
            state.offset,
            state.shadowed_by,
            offset,
        )

    def _not_published(self, grain: GrainId, state: GrainState, failure: BaseException) -> None:
        log.warning(
            "repair of grain %s/%s (partition %d, state at offset %d, shadowed by offset %d) "
            "not published (%s: %s); retrying later",
            grain[0],
            grain[1],
            state.partition,
            state.offset,
            state.shadowed_by,
            type(failure).__name__,
            failure,
        )

    async def _restore_deletion(
        self, grain: GrainId, partition: int, deleted_at: int, repair_offset: int
    ) -> None:
        """The repair at ``repair_offset`` started the grain again after its deletion at
        ``deleted_at`` (repair_watch.py): publish the deletion again."""
        headers = [
            (REPAIR_HEADER, b"1"),
            ("stream-replica.repair-of-deletion-offset", str(deleted_at).encode()),
            ("stream-replica.repair-group", self.group.encode()),
        ]
        where = (
            f"grain {grain[0]}/{grain[1]}: the repair at {self.topic}/{partition}/"
            f"{repair_offset} came after the grain's deletion at offset {deleted_at} and "
            "started it again"
        )
        try:
            delivery = await self._hand_off(encode_key(*grain), None, partition, headers)
        except KafkaError as exc:
            self._not_restored(where, exc)
            return
        # Not awaited: the loop goes on (a wait here held up the poll, up to ACK_WAIT_S per
        # deletion); the idempotent producer retries it until Kafka takes it or it stops.
        delivery.add_done_callback(functools.partial(self._restored, where))

    def _restored(self, where: str, delivery: asyncio.Future[Any]) -> None:
        """A re-published deletion's delivery ended (its done-callback)."""
        failure = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if failure is not None:
            self._not_restored(where, failure)
            return
        self.deletions_restored += 1
        log.warning("%s; re-published the deletion at offset %d", where, delivery.result().offset)

    @staticmethod
    def _not_restored(where: str, failure: BaseException) -> None:
        log.error(
            "%s; re-publishing the deletion failed (%s: %s): publish a tombstone for it",
            where,
            type(failure).__name__,
            failure,
        )

    async def _hand_off(
        self, key: bytes, value: bytes | None, partition: int, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        """The record handed to the producer; its delivery (the broker's acknowledgement).
        Bounded: send() itself waits for metadata and buffer space."""
        try:
            delivery: asyncio.Future[Any] = await asyncio.wait_for(
                self._producer.send(
                    self.topic, key=key, value=value, partition=partition, headers=headers
                ),
                HAND_OFF_TIMEOUT_S,
            )
        except TimeoutError:
            raise KafkaError(
                f"the producer took no record within {HAND_OFF_TIMEOUT_S:.0f} s"
            ) from None
        return delivery
