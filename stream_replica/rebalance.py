"""Positioning the active partitions: what the worker does when the group revokes or
assigns partitions (the worker stays the ConsumerRebalanceListener and hands the callbacks
here), and when a fetch finds a position out of range.

* Revocation waits for the in-flight poll (the batch lock), commits what is written, and
  returns; whatever fails, the fence is set in a ``finally``: nothing fetched before it is
  applied, nor committed with the old generation (``Positions.rebalancing``, the seek epoch).
* Assignment seeks every partition to the store's checkpoint, or rebuilds it from the log
  start (offsets.resume_from); the group's committed offset is never used to skip data the
  store has not seen. A partition that could not be positioned stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from stream_replica import catchup
from stream_replica.catchup import CatchUpFocus
from stream_replica.commits import OffsetCommits
from stream_replica.durability import CatchUpDurability
from stream_replica.errors import FatalError, StreamReplicaError
from stream_replica.lag import LagTracker
from stream_replica.metrics import Metrics
from stream_replica.offsets import CommitBook, resume_from
from stream_replica.ownership import DuplicateInstanceCheck, Ownership, now_ms
from stream_replica.positions import Positions
from stream_replica.standby import StandbyFollower
from stream_replica.store import ReplicaStore, TopicIdentity, partitions_added
from stream_replica.topic_id import fetch_topic_id_with

# The worker's logger: these lines have always been the worker's.
log = logging.getLogger("stream_replica.worker")
# How long an assignment waits for the topic's ID (check_topic_identity) before going on
# with the partition count alone.
IDENTITY_TIMEOUT_S: Final = 5.0


class RebalanceHandler:
    """``fail`` is told what stops the worker (it sets the worker's fatal error and stops
    it); ``refusal`` turns a Kafka error retrying cannot fix (an ACL) into the operator's."""

    def __init__(
        self,
        topic: str,
        store: ReplicaStore,
        lock: asyncio.Lock,
        positions: Positions,
        book: CommitBook,
        commits: OffsetCommits,
        durability: CatchUpDurability,
        lag: LagTracker,
        focus: CatchUpFocus,
        ownership: Ownership,
        standby: StandbyFollower,
        instance_check: DuplicateInstanceCheck,
        metrics: Metrics,
        refusal: Callable[[BaseException, str], StreamReplicaError | None],
        fail: Callable[[Exception], None],
    ) -> None:
        self.topic = topic
        self._store = store
        self._lock = lock
        self._positions = positions
        self._book = book
        self._commits = commits
        self._durability = durability
        self._lag = lag
        self._focus = focus
        self._ownership = ownership
        self._standby = standby
        self._instance_check = instance_check
        self._metrics = metrics
        self._refusal = refusal
        self._fail = fail
        self.delete_retention_ms = 0  # the topic's, known once the worker has described it
        self.ever_assigned = False

    async def revoked(
        self, consumer: AIOKafkaConsumer | None, revoked: set[TopicPartition]
    ) -> None:
        # aiokafka swallows exceptions raised here, so log them ourselves.
        try:
            async with self._lock:  # waits for the in-flight poll's write + commit
                try:
                    partitions = [tp.partition for tp in revoked if tp.topic == self.topic]
                    if consumer is not None and partitions:
                        await self._commits.await_task()
                        await self._durability.persist()  # no WAL: flushed, then committed
                        await self._commits.commit_pending(consumer, partitions)
                        self._lag.mark_caught_up(consumer, partitions)
                    if partitions:
                        self._focus.revoked(partitions)
                        self._ownership.revoked(partitions)
                        log.info("released partitions %s", sorted(partitions))
                finally:
                    # Even if the steps above failed: nothing fetched before now may be
                    # applied, nor committed with the old generation.
                    self._positions.rebalancing = True
                    self._positions.seek_epoch += 1
        except Exception:
            log.exception("revocation handling failed")

    async def assigned(
        self, consumer: AIOKafkaConsumer | None, assigned: set[TopicPartition]
    ) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self._metrics.rebalances.inc()
        self.ever_assigned = True
        self._lag.reached_end.clear()
        async with self._lock:
            try:
                self._instance_check.check(consumer)
                actives = [tp for tp in assigned if tp.topic == self.topic]
                if actives and consumer is not None:
                    await self.check_topic_identity(consumer)
                lags, held = await self.seek_assigned(actives, consumer)
                catchup.pause_far_behind(self._focus, consumer, self.topic, lags, held)
                standby = self._ownership.assigned(tp.partition for tp in actives)
                await self._standby.follow(standby)
            except FatalError as exc:
                self._fail(exc)
            except Exception as exc:
                # Some partitions may not be sought: nothing fetched may be applied any more.
                log.debug("assignment handling failed", exc_info=True)
                self._fail(
                    self._refusal(exc, "positioning the assigned partitions")
                    or FatalError(
                        f"could not position the assigned partitions "
                        f"{sorted(tp.partition for tp in assigned)} ({type(exc).__name__}: "
                        f"{exc}); restart the worker"
                    )
                )
            finally:
                self._positions.seek_epoch += 1
                self._positions.rebalancing = False

    async def check_topic_identity(self, consumer: AIOKafkaConsumer) -> None:
        """The store was bound to the topic's identity at start (worker.run); the topic may
        have changed under the running worker since. aiokafka follows a topic by name: one
        deleted and recreated comes back in an assignment like the old one, and seeking its
        partitions to the old log's checkpoints would skip the new log's first records and
        keep the old log's grains, all reported caught up. A partition count raised meanwhile
        moves grains to other partitions, and the read API routes by the stored count. So
        every assignment compares the topic's ID and partition count with the store's and
        re-binds it as a restart would (store.bind_topic: another topic drops the replica,
        which the seeks that follow rebuild from the log start; more partitions keep it,
        record the new count and say, once, what that means: partitions_added)."""
        known = self._store.topic_identity()
        if known is None:
            return
        partitions = consumer._client.cluster.partitions_for_topic(self.topic)
        if not partitions:
            return
        why = "the broker did not report it"
        try:
            topic_id = await asyncio.wait_for(
                fetch_topic_id_with(consumer._client, self.topic), IDENTITY_TIMEOUT_S
            )
        except TimeoutError:
            topic_id, why = None, f"the broker did not answer within {IDENTITY_TIMEOUT_S:.0f} s"
        if topic_id is None and known.topic_id is not None:
            log.warning(
                "topic %s: its ID could not be confirmed at this assignment (%s): only its "
                "partition count was compared, a topic deleted and recreated meanwhile goes "
                "unnoticed until the next assignment or a restart",
                self.topic,
                why,
            )
        identity = TopicIdentity(topic_id or known.topic_id, len(partitions))
        if identity == known:
            return
        added = partitions_added(self.topic, known, identity)
        reason = self._store.bind_topic(identity)
        if reason is None:
            if added is not None:
                log.error("%s", added)
            return
        log.warning("%s: dropped the local replica, rebuilding every partition", reason)
        self._ownership.reload()
        self._standby.reset()  # its positions were in the old log
        self._positions.next.clear()
        self._positions.caught_up_at.clear()

    async def seek_assigned(
        self, assigned: list[TopicPartition], consumer: AIOKafkaConsumer | None
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Position each partition; returns (records behind the end, offset held) of each."""
        lags: dict[int, int] = {}
        held: dict[int, int] = {}
        if not assigned or consumer is None:
            return lags, held
        checkpoints = self._store.checkpoints()
        beginnings = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        committed = await asyncio.gather(*(consumer.committed(tp) for tp in assigned))
        now = now_ms()
        to_wipe: dict[int, str] = {}
        for tp, group_offset in sorted(zip(assigned, committed, strict=True)):
            checkpoint = checkpoints.get(tp.partition)
            end = ends[tp]
            resume = resume_from(checkpoint, beginnings[tp], end, now, self.delete_retention_ms)
            self._positions.seek(consumer, tp, resume.offset)
            self._positions.listed_ends[tp.partition] = end
            lags[tp.partition] = max(0, end - resume.offset)
            held[tp.partition] = resume.offset - beginnings[tp]
            if group_offset is not None and group_offset > end:
                # Of another log: the offsets a revocation committed for a topic then deleted
                # and recreated under the name (or a log truncated). As the floor it would hold
                # every commit back until the new log passed it.
                log.warning(
                    "partition %d: the group's committed offset %d is past the end offset %d "
                    "(the topic deleted and recreated, or its log truncated): commits start "
                    "over from the store's",
                    tp.partition,
                    group_offset,
                    end,
                )
                group_offset = None
            self._book.assigned(tp.partition, group_offset)
            behind = self._book.behind(tp.partition, resume.offset)
            lag = (
                f"; {behind} records behind the group's committed offset {group_offset}, "
                "commits resume past it"
                if behind
                else ""
            )
            if resume.reason is None and group_offset is not None and group_offset < resume.offset:
                # An operator's offset reset (kafka-consumer-groups --reset-offsets) lands
                # here: say that it is overridden, and what re-reads instead.
                lag = (
                    f"; the group's committed offset {group_offset} is behind it (an offset "
                    "reset, or a stop between a write and its commit): the store's checkpoint "
                    "wins and is committed; to re-read, use `stream-replica replay`"
                )
            if resume.reason is None:
                assert checkpoint is not None
                # The group's offset may lag the store (a crash between write and commit):
                # commit ours then. A store behind the group's offset commits once past it.
                self._book.written(tp.partition, resume.offset)
                caught_up = checkpoint.next_offset >= end
                self._positions.caught_up_at[tp.partition] = (
                    now if caught_up else checkpoint.caught_up_at_ms
                )
                log.info(
                    "partition %d: resuming from stored offset %d (end %d)%s",
                    tp.partition,
                    resume.offset,
                    end,
                    lag,
                )
                continue
            if resume.wipe:
                to_wipe[tp.partition] = resume.reason
                log.warning("partition %d: %s%s", tp.partition, resume.reason, lag)
            else:
                log.info(
                    "partition %d: %s (offsets %d..%d)%s",
                    tp.partition,
                    resume.reason,
                    beginnings[tp],
                    end,
                    lag,
                )
            # Reading from the log start now sees every tombstone the log holds now.
            self._positions.caught_up_at[tp.partition] = now
        if to_wipe:
            self._store.wipe_partitions(to_wipe)
            log.info("wiped the grains of partitions %s", sorted(to_wipe))
        return lags, held

    async def out_of_range(self, consumer: AIOKafkaConsumer, exc: OffsetOutOfRangeError) -> None:
        failed: dict[TopicPartition, int] = exc.args[0] if exc.args else {}
        async with self._lock:
            assigned = consumer.assignment()
            # Only an error about the position we are really at counts (it may be stale).
            current = [
                tp
                for tp, offset in failed.items()
                if tp in assigned and self._positions.next.get(tp.partition) == offset
            ]
            try:
                if current:
                    log.warning(
                        "offsets %s out of range (the log start moved past them): wiping "
                        "and rebuilding those partitions",
                        {tp.partition: failed[tp] for tp in current},
                    )
                    beginnings = await consumer.beginning_offsets(current)
                    self._store.wipe_partitions(tp.partition for tp in current)
                    now = now_ms()
                    for tp, start in beginnings.items():
                        self._positions.seek(consumer, tp, start)
                        self._positions.caught_up_at[tp.partition] = now
                        self._book.forget(tp.partition)
            except KafkaError as error:
                log.warning("could not handle out-of-range offsets (%s); retrying", error)
            self._positions.reseek(consumer)
            self._positions.seek_epoch += 1
