"""Offset commits of the active loop: what the store has written, committed to the group.

Commits run in one background task so the next poll is fetched and written while the
broker answers; they carry only offsets already written to the store, so they are never
ahead of it. Offsets are cumulative: a failed commit is covered by the next one. Nothing is
committed across a rebalance (``Positions.rebalancing``), and never below the group's
committed offset nor for a partition no longer owned (offsets.CommitBook).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream_replica.errors import StreamReplicaError
from stream_replica.metrics import Metrics
from stream_replica.offsets import CommitBook
from stream_replica.ownership import partitions_of
from stream_replica.positions import Positions

# The worker's logger: these lines have always been the worker's.
log = logging.getLogger("stream_replica.worker")

COMMIT_TIMEOUT_S: Final = 15.0
# Background commits start at most this often. One per poll cost each worker (and the
# broker's coordinator, which appends every commit to __consumer_offsets) a request per
# few hundred records; the store, not the group, holds positions, so a commit a little later
# loses nothing (revocation and stop still commit at once).
COMMIT_INTERVAL_S: Final = 0.05


class OffsetCommits:
    """``refusal`` turns a Kafka error into the operator's error when retrying cannot fix it
    (an ACL); ``refused`` is then told, and stops the worker after this poll."""

    def __init__(
        self,
        topic: str,
        book: CommitBook,
        positions: Positions,
        metrics: Metrics,
        refusal: Callable[[BaseException, str], StreamReplicaError | None],
        refused: Callable[[StreamReplicaError], None],
    ) -> None:
        self.topic = topic
        self._book = book  # written to the store, not yet committed; never backwards
        self._positions = positions
        self._metrics = metrics
        self._refusal = refusal
        self._refused = refused
        self._task: asyncio.Task[None] | None = None
        self._last_commit = 0.0  # monotonic start of the last background commit

    def schedule(self, consumer: AIOKafkaConsumer) -> None:
        if self._positions.rebalancing or not self._book:  # nothing written, or nothing flushed yet
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._commit_in_background(consumer))

    async def _commit_in_background(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while self._book and not self._positions.rebalancing:
                wait = self._last_commit + COMMIT_INTERVAL_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                self._last_commit = time.monotonic()
                if not await self.commit_pending(consumer, None):
                    await asyncio.sleep(1.0)  # back off; the next poll schedules a retry
                    return
        except Exception:
            log.exception("background commit failed; the next poll retries")

    async def await_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), COMMIT_TIMEOUT_S + 1)
            except TimeoutError:
                log.warning("background commit did not finish; continuing")

    async def commit_pending(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[int] | None
    ) -> bool:
        """Commit written checkpoints (all, or only ``partitions``). Returns False on failure,
        which is harmless: the store is authoritative and the offsets stay pending."""
        owned = partitions_of(consumer.assignment(), self.topic)
        # Never commit partitions we no longer own (their new owner does), nor at or below
        # the group's committed offset.
        due = self._book.due(owned, partitions)
        if not due:
            return True
        offsets = {TopicPartition(self.topic, p): o for p, o in due.items()}
        if not await self._commit_offsets(consumer, offsets):
            return False
        self._book.committed(due)
        return True

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
    ) -> bool:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
        except (KafkaError, TimeoutError) as exc:
            refused = self._refusal(exc, "committing offsets")
            if refused is not None:  # retrying cannot fix an ACL: stop after this poll
                self._refused(refused)
                return False
            log.warning(
                "offset commit of %s not done (%s); local checkpoints are written, will retry",
                {tp.partition: o for tp, o in offsets.items()},
                type(exc).__name__,
            )
            return False
        return True
