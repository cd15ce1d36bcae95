"""Standby replicas: warm copies of partitions another worker owns.

The group's assignor names, for each partition, ``--standby-replicas`` members besides its
owner (docs/assignor.md). This follower reads those partitions with its own group-less
consumer and applies them to the same store by the same rules as the active path (decode,
fold, one write batch with the checkpoint), so when the owner goes away and the partition is
assigned here, the active path resumes from a checkpoint close to the end.

What it never does: commit the group's offsets (the group tracks the active owner), send
refused records to the dead-letter topic or repair shadowed grains (the active owner does).
Its writes take the worker's batch lock, so a partition moving between the active path and
the follower is never written by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from stream_replica.clients import start_client, stop_consumer
from stream_replica.consumer import confirm_end_offsets_at_send, reads_committed_only
from stream_replica.fold import FoldCounts
from stream_replica.grain_waits import GrainWaits
from stream_replica.memory import FETCH_MAX_BYTES
from stream_replica.offsets import (
    MARKERS_CHECK_INTERVAL_S,
    READ_COMMITTED,
    EndOffset,
    advance,
    caught_up_since,
    end_offset,
    past_control_records,
    past_trailing_markers,
    resume_from,
)
from stream_replica.ownership import now_ms
from stream_replica.poll import fold_batch
from stream_replica.refusals import refusal
from stream_replica.settings import WorkerSettings
from stream_replica.store import Checkpoint, ReplicaStore, StoreError

log = logging.getLogger("stream_replica.standby")

IDLE_WAIT_S: Final = 1.0


class StandbyError(Exception):
    """The follower cannot go on (the store refused a write); one readable line."""


class StandbyFollower:
    def __init__(
        self,
        settings: WorkerSettings,
        store: ReplicaStore,
        lock: asyncio.Lock,
        grain_waits: GrainWaits | None = None,
        delete_retention_ms: int = 0,
    ) -> None:
        self.grain_waits = grain_waits if grain_waits is not None else GrainWaits()
        self.settings = settings
        self.store = store
        self.topic = settings.topic
        self.lock = lock  # the worker's batch lock
        # Whether the follower's consumer reads committed records only (as the active one).
        self._committed_only = reads_committed_only(settings)
        self.delete_retention_ms = delete_retention_ms
        self.counts = FoldCounts()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: frozenset[int] = frozenset()
        self._positions: dict[int, int] = {}
        self._caught_up_at: dict[int, int] = {}
        self._epoch = 0  # bumped by every follow(): a batch fetched before it is stale
        self._wake = asyncio.Event()
        self._markers_checked = 0.0  # when the follower last looked for markers stepped over

    @property
    def partitions(self) -> frozenset[int]:
        return self._partitions

    def reset(self) -> None:
        """The store was dropped (the topic changed under the worker): the next follow()
        positions every partition afresh, none from where it stood."""
        self._partitions = frozenset()
        self._positions.clear()

    async def follow(self, partitions: frozenset[int]) -> None:
        """Follow exactly ``partitions`` from now on, each from the store's checkpoint (or
        rebuilt, by the same rules as the active path). Call with the batch lock held."""
        if partitions == self._partitions:
            return  # positions stand; an in-flight fetch stays valid
        self._epoch += 1
        dropped = self._partitions - partitions
        self._partitions = partitions
        for partition in dropped:
            self._positions.pop(partition, None)
        if not partitions:
            if self._consumer is not None:
                self._consumer.unsubscribe()
            log.info("no standby partitions")
            return
        consumer = await self._ensure_consumer()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        checkpoints = self.store.checkpoints()
        now = now_ms()
        to_wipe = {}
        for tp in tps:
            resume = resume_from(
                checkpoints.get(tp.partition),
                beginnings[tp],
                ends[tp],
                now,
                self.delete_retention_ms,
            )
            if resume.wipe:
                to_wipe[tp.partition] = resume.reason
            if resume.reason is not None:
                self._caught_up_at[tp.partition] = now  # reading from the log start
                log.info("standby partition %d: %s", tp.partition, resume.reason)
            else:
                checkpoint = checkpoints[tp.partition]
                self._caught_up_at[tp.partition] = checkpoint.caught_up_at_ms
                log.info(
                    "standby partition %d: following from stored offset %d (end %d)",
                    tp.partition,
                    resume.offset,
                    ends[tp],
                )
            consumer.seek(tp, resume.offset)
            self._positions[tp.partition] = resume.offset
        if to_wipe:
            self.store.wipe_partitions(to_wipe)
        log.info("standby partitions %s", sorted(partitions))
        self._wake.set()

    async def _ensure_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **(READ_COMMITTED | self.settings.options("consumer")),
                group_id=None,  # never part of the group, never commits
                client_id=f"stream-replica-{self.settings.group}-standby",
                enable_auto_commit=False,
                auto_offset_reset="none",  # positions come from the store
                fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
                fetch_max_bytes=FETCH_MAX_BYTES,  # part of the memory budget's fixed share
            )
            await start_client(self.settings, consumer)
            confirm_end_offsets_at_send(consumer)
            self._consumer = consumer
        return self._consumer

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until stopped. Raises :class:`StandbyError` when the store refuses a write,
        :class:`~stream_replica.errors.KafkaAccessError` when Kafka refuses the reads."""
        while not stop.is_set():
            consumer = self._consumer
            if consumer is None or not self._partitions:
                self._wake.clear()
                stopping = asyncio.ensure_future(stop.wait())
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait(
                        {stopping, woken}, timeout=IDLE_WAIT_S, return_when="FIRST_COMPLETED"
                    )
                finally:  # also when this task is cancelled (the worker stopping)
                    for task in (stopping, woken):
                        task.cancel()
                continue
            epoch = self._epoch
            try:
                batch = await consumer.getmany(
                    timeout_ms=self.settings.poll_timeout_ms,
                    max_records=self.settings.max_records,
                )
            except OffsetOutOfRangeError as exc:
                await self._rebuild_out_of_range(consumer, exc)
                continue
            except NoOffsetForPartitionError:
                # Fetched while follow() was between assigning and seeking a new partition.
                await asyncio.sleep(0.05)
                continue
            except KafkaError as exc:
                refused = refusal(
                    exc, self.settings, doing="following standby partitions", topic=self.topic
                )
                if refused is not None:
                    raise refused from None
                log.warning("standby fetch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if batch:
                async with self.lock:
                    if epoch == self._epoch:
                        await self._apply(consumer, batch)
                    else:
                        # Fetched before follow() or a rebuild moved positions: the consumer
                        # has moved past this batch, so go back to what the store holds.
                        self._reseek(consumer)
            # After an empty poll, and now and then after others (a partition whose last
            # marker was stepped over by a poll of other partitions' records only).
            if not batch or time.monotonic() - self._markers_checked > MARKERS_CHECK_INTERVAL_S:
                self._markers_checked = time.monotonic()
                async with self.lock:
                    if epoch == self._epoch:
                        self._step_over_markers(
                            await past_control_records(
                                consumer, self.topic, self._positions, self._partitions
                            )
                        )

    async def _apply(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]
    ) -> None:
        folded = await fold_batch(
            batch,
            lambda tp: tp.topic == self.topic and tp.partition in self._partitions,
            self.store,
        )
        if not folded.records:
            return
        result = folded.result
        # Refused records are logged and dead-lettered by the active owner, not twice.
        if result.rejected:
            log.debug("standby: %d refused records left to the active owner", len(result.rejected))
        await past_trailing_markers(consumer, self.topic, result.next_offsets)
        checkpoints = advance(
            result.next_offsets,
            lambda p: self._end(consumer, p),
            self._caught_up_at,
            now_ms(),
        )
        try:
            self.store.apply(
                result.changes, checkpoints, result.counts, result.unshadowed, folded.prepared
            )
        except StoreError as exc:
            raise StandbyError(f"standby: {exc}") from None
        if self.grain_waits:  # stale reads waiting on this copy (?stale=ok&min_sequence)
            self.grain_waits.written(folded.written())
        self.counts.add(result.counts)
        self._positions.update(result.next_offsets)

    def _step_over_markers(self, moved: dict[int, int]) -> None:
        """The consumer stepped over control records (offsets.past_control_records)."""
        if not moved or self._consumer is None:
            return
        consumer = self._consumer
        checkpoints = advance(moved, lambda p: self._end(consumer, p), self._caught_up_at, now_ms())
        self.store.set_checkpoints(checkpoints)
        self._positions.update(moved)

    def _reseek(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            if tp.topic == self.topic and tp.partition in self._positions:
                consumer.seek(tp, self._positions[tp.partition])

    def _end(self, consumer: AIOKafkaConsumer, partition: int) -> EndOffset | None:
        return end_offset(consumer, TopicPartition(self.topic, partition), self._committed_only)

    def lags(self) -> dict[int, int]:
        """Records behind the end offset per standby partition (-1: not known yet)."""
        if self._consumer is None:
            return {}
        result = {}
        for partition in self._partitions:
            end = self._end(self._consumer, partition)
            position = self._positions.get(partition)
            result[partition] = (
                -1 if end is None or position is None else max(0, end.offset - position)
            )
        return result

    def marks(self) -> dict[int, tuple[int | None, EndOffset | None]]:
        """(next offset, end offset) per standby partition (None: not known yet)."""
        result: dict[int, tuple[int | None, EndOffset | None]] = {}
        for partition in self._partitions:
            end = None if self._consumer is None else self._end(self._consumer, partition)
            result[partition] = (self._positions.get(partition), end)
        return result

    def touch(self) -> None:
        """Refresh the caught-up time of standby partitions at the end offset: when the
        broker confirmed it (the tombstone-retention check on takeover uses it). Call with no
        await in between."""
        now = now_ms()
        checkpoints = {}
        for partition, (position, end) in self.marks().items():
            since = None if position is None else caught_up_since(position, end, now)
            if position is not None and since is not None:
                since = max(since, self._caught_up_at.get(partition, since))
                self._caught_up_at[partition] = since
                checkpoints[partition] = Checkpoint(position, since)
        if checkpoints:
            self.store.set_checkpoints(checkpoints)

    async def _rebuild_out_of_range(
        self, consumer: AIOKafkaConsumer, exc: OffsetOutOfRangeError
    ) -> None:
        failed: dict[TopicPartition, int] = exc.args[0] if exc.args else {}
        async with self.lock:
            current = [
                tp
                for tp, offset in failed.items()
                if tp.partition in self._partitions and self._positions.get(tp.partition) == offset
            ]
            if not current:
                return
            log.warning(
                "standby offsets %s out of range: wiping and rebuilding those partitions",
                {tp.partition: failed[tp] for tp in current},
            )
            try:
                beginnings = await consumer.beginning_offsets(current)
            except KafkaError as error:
                log.warning("could not handle out-of-range offsets (%s); retrying", error)
                return
            self.store.wipe_partitions(tp.partition for tp in current)
            now = now_ms()
            for tp, start in beginnings.items():
                consumer.seek(tp, start)
                self._positions[tp.partition] = start
                self._caught_up_at[tp.partition] = now
            self._epoch += 1

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await stop_consumer(self._consumer)
            self._consumer = None
