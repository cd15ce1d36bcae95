"""The consumer loop: fetch → decode → fold → one RocksDB batch → DLQ ack → commit.

Ordering guarantees (README "Semantics"):

* The local store is the source of truth for positions. On assignment every partition is
  sought to the store's checkpoint (or rebuilt from the beginning); the group's committed
  offset is never used to skip data the store has not seen.
* A poll's grain writes and checkpoints go into one write batch; refused records reach the
  dead-letter topic (acknowledged) before that batch is written; offsets are committed only
  after the write. Commits are cumulative, so a failed one is retried with the next.
* Revocation waits for the in-flight poll (a lock), commits, and returns; no lock loops.
* The group's committed offset never moves backwards (offsets.CommitBook): a store behind it
  reads from its own checkpoint and commits once past it.

Who owns what comes from our state-aware assignor (ownership.py, membership.py); standby
partitions are followed by standby.py. This module is the active loop and its lifecycle; it
composes the capabilities around it: the consumer and its fetch (consumer.py), positions and
fences (positions.py), the rebalance callbacks' work (rebalance.py), commits (commits.py),
dead letters (dead_letters.py), lags (lag.py), shadowing and repairs (shadowing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)

from stream_replica import catchup
from stream_replica.catchup import CatchUpFocus
from stream_replica.clients import start_client, stop_consumer
from stream_replica.commits import COMMIT_TIMEOUT_S as COMMIT_TIMEOUT_S
from stream_replica.commits import OffsetCommits
from stream_replica.consumer import REBALANCE_TIMEOUT_MS as REBALANCE_TIMEOUT_MS
from stream_replica.consumer import (
    StoppableFetch,
    active_consumer,
    confirm_end_offsets_at_send,
    reads_committed_only,
)
from stream_replica.dead_letters import DLQ_TIMEOUT_S as DLQ_TIMEOUT_S
from stream_replica.dead_letters import DeadLetters, log_rejection, refusals
from stream_replica.durability import CatchUpDurability
from stream_replica.errors import (
    FatalError,
    StreamReplicaError,
)
from stream_replica.fold import FoldCounts
from stream_replica.grain_waits import GrainWaits
from stream_replica.lag import LagTracker
from stream_replica.membership import GroupAssignment
from stream_replica.metrics import Metrics
from stream_replica.offsets import (
    MARKERS_CHECK_INTERVAL_S,
    CommitBook,
    EndOffset,
    advance,
    end_offset,
    past_control_records,
    past_trailing_markers,
)
from stream_replica.ownership import NEWCOMER_WINDOW_S as NEWCOMER_WINDOW_S
from stream_replica.ownership import DuplicateInstanceCheck, Ownership, fenced_line, is_fenced
from stream_replica.poll import fold_batch
from stream_replica.positions import Positions, owned
from stream_replica.preflight import Stopped as Stopped
from stream_replica.preflight import c_parser_loaded, check_topic
from stream_replica.rebalance import RebalanceHandler
from stream_replica.refusals import refusal
from stream_replica.repair import ShadowRepairer
from stream_replica.settings import WorkerSettings
from stream_replica.shadowing import ShadowRepairs, log_shadowing, shadowings
from stream_replica.standby import StandbyError, StandbyFollower
from stream_replica.status import NodeStatus, PartitionRow
from stream_replica.store import ReplicaStore, StoreError, TopicIdentity, partitions_added
from stream_replica.topic_watch import TopicWatch
from stream_replica.watchdog import LoopWatchdog

log = logging.getLogger("stream_replica.worker")
STOP_TIMEOUT_S: Final = 10.0
TOUCH_INTERVAL_S: Final = 60.0
PROGRESS_INTERVAL_S: Final = 10.0
# Lags (for the served records and the assignor) are computed at most this often: per poll
# they cost ~1 % of a catch-up.
LAG_REPORT_INTERVAL_S: Final = 0.02
CONTACT_CHECK_INTERVAL_S: Final = 1.0  # lag.report_contact


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ReplicaWorker(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, settings: WorkerSettings, store: ReplicaStore, stop: asyncio.Event) -> None:
        self.settings = settings
        self.store = store
        self.stop = stop
        self.topic = settings.topic
        self.counts = FoldCounts()  # this process's counts (the store keeps the totals)
        self.metrics = Metrics(self.topic)
        self.metrics.reads_on_thread.set_function(lambda: float(store.read_placement.on_thread))
        self.started_at = time.time()
        # Before the first poll: what the worker waits for (Kafka to answer, the group).
        self._waiting_for = f"connecting to Kafka at {settings.bootstrap_servers}"
        self._committed_only = reads_committed_only(settings)
        self._fetcher = StoppableFetch(stop, settings.poll_timeout_ms, settings.max_records)
        self._batch_lock = asyncio.Lock()
        self._book = CommitBook()  # written to the store, not yet committed; never backwards
        self.durability = CatchUpDurability(
            store, self._book, settings.wal_off_lag, self.metrics.wal_on.set
        )
        # Next offset per owned partition, the seek epoch and the rebalance fence.
        self.positions = Positions(self.topic)
        self.commits = OffsetCommits(
            self.topic, self._book, self.positions, self.metrics, self._refusal, self._refused
        )
        self._focus = CatchUpFocus(settings.catch_up_partitions, catchup.MIN_LAG)
        # Set by a callback or task that could not do its job: FatalError (exit 1) or a
        # StreamReplicaError with its own exit code (an ACL refusal: 2).
        self._fatal: Exception | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: DeadLetters | None = None
        self._last_touch = time.monotonic()
        self._last_lag_report = 0.0
        self._last_contact_check = 0.0
        self._markers_checked = 0.0  # when _step_over_markers last ran
        self._last_progress = time.monotonic()
        self._repairer: ShadowRepairer | None = None
        self.ownership = Ownership(
            store,
            self.topic,
            instance_id=settings.instance_id,
            standby_replicas=settings.standby_replicas,
            lost_partition_grace_ms=settings.lost_partition_grace_ms,
        )
        self.grain_waits = GrainWaits()
        self.standby = StandbyFollower(settings, store, self._batch_lock, self.grain_waits)
        self._standby_task: asyncio.Task[None] | None = None
        self._topic_watch_task: asyncio.Task[None] | None = None
        self.lag = LagTracker(
            self.topic,
            store,
            self.positions,
            self.standby,
            settings.end_offset_max_age_s,
            self._committed_only,
        )
        self.instance_check = DuplicateInstanceCheck(settings)  # static membership
        self.watchdog = LoopWatchdog(self.metrics.loop_stall_max.set)
        self.repairs = ShadowRepairs(self.topic, store, self._batch_lock, self.positions, self.lag)
        self.rebalance = RebalanceHandler(
            self.topic,
            store,
            self._batch_lock,
            self.positions,
            self._book,
            self.commits,
            self.durability,
            self.lag,
            self._focus,
            self.ownership,
            self.standby,
            self.instance_check,
            self.metrics,
            self._refusal,
            self._fail,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        if not c_parser_loaded():
            log.warning("aiokafka's C record parser is not loaded; consuming will be slow")
        info = await check_topic(self.settings, self.stop, self._waiting_for_kafka)
        self._set_delete_retention_ms(info.delete_retention_ms)
        topic_watch = TopicWatch(
            self.settings, info, self._set_delete_retention_ms, self.metrics.topic_compacted.set
        )
        identity = TopicIdentity(info.topic_id, info.partitions)
        added = partitions_added(self.topic, self.store.topic_identity(), identity)
        changed = self.store.bind_topic(identity)
        if changed is not None:
            log.warning("%s: dropped the local replica, rebuilding every partition", changed)
            self.ownership.reload()
        elif added is not None:
            log.error("%s", added)
        self.store.set_group(self.settings.group)
        log.info(
            "replicating topic %s (%d partitions, delete.retention.ms=%d) as group %s%s into %s",
            self.topic,
            info.partitions,
            info.delete_retention_ms,
            self.settings.group,
            f" instance {self.settings.instance_id}" if self.settings.instance_id else "",
            self.store.path,
        )
        self._consumer = active_consumer(self.settings, self.ownership.binding.strategy)
        self._dlq = DeadLetters.create(self.settings, self.topic)
        if self.settings.repair_shadowed:
            self._repairer = ShadowRepairer.create(self.settings, self.topic, self.settings.group)
            self._repairer.on_repaired = self.metrics.repairs.inc
        self.watchdog.start()
        try:
            await start_client(self.settings, self._consumer)
            confirm_end_offsets_at_send(self._consumer)
            if self._dlq is not None:
                await self._dlq.start()
            if self._repairer is not None:
                await self._repairer.start()
            self._consumer.subscribe([self.topic], listener=self)
            self._standby_task = asyncio.create_task(self._run_standby())
            self._topic_watch_task = asyncio.create_task(topic_watch.run(self.stop))
            await self._loop(self._consumer)
            if self._fatal is not None:
                raise self._fatal
            # Flushed: every written offset can be committed.
            await self._settle_durability("stopping")
            await self.commits.await_task()
            await self.commits.commit_pending(self._consumer, None)
            if self._fatal is not None:  # that commit refused (an ACL)
                raise self._fatal
            self.lag.mark_caught_up(self._consumer)
            self.ownership.stopped()
        finally:
            await self._stop_standby()
            if self._topic_watch_task is not None:
                self._topic_watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._topic_watch_task
            await self._shutdown()
            try:
                await self.durability.close()
            except StoreError as exc:
                log.error("%s", exc)
            await self.watchdog.stop()
            dog = self.watchdog
            log.info(
                "longest event-loop stall: %.0f ms (%d over %.0f ms; longest on the CPU %.0f "
                "ms; longest waiting for a core %.0f ms)%s",
                dog.longest_s * 1000,
                dog.stalls_reported,
                dog.report_over_s * 1000,
                dog.longest_on_cpu_s * 1000,
                dog.longest_waiting_for_core_s * 1000,
                f"; the longest in {dog.longest_where}" if dog.longest_where else "",
            )

    def _set_delete_retention_ms(self, delete_retention_ms: int) -> None:
        self.rebalance.delete_retention_ms = delete_retention_ms
        self.standby.delete_retention_ms = delete_retention_ms

    async def _run_standby(self) -> None:
        try:
            await self.standby.run(self.stop)
        except StandbyError as exc:
            self._fatal = FatalError(str(exc))
            self.stop.set()
        except StreamReplicaError as exc:  # refused by Kafka (refusals.py)
            self._fatal = exc
            self.stop.set()
        except Exception as exc:
            log.debug("standby follower failed", exc_info=True)
            self._fatal = FatalError(f"standby follower failed ({type(exc).__name__}: {exc})")
            self.stop.set()

    async def _stop_standby(self) -> None:
        if self._standby_task is not None:
            self._standby_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._standby_task
        await self.standby.stop()

    async def _shutdown(self) -> None:
        await self._fetcher.close()
        if self._consumer is not None:
            try:
                # Leaves the group. Bounded: during a rebalance aiokafka first waits for its
                # JoinGroup, which the broker may hold up to the rebalance timeout; our offsets
                # are committed already, so the broker expiring the member is harmless.
                await asyncio.wait_for(stop_consumer(self._consumer), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("leaving the group took over %.0f s; exiting anyway", STOP_TIMEOUT_S)
            except Exception as exc:
                log.warning("consumer stop failed: %s", exc)
        for name, producer, left in (
            ("dead-letter", self._dlq, "their poll was not written: they are sent again"),
            ("repair", self._repairer, "the next sweep repairs those grains"),
        ):
            if producer is not None:
                try:
                    if not await producer.stop(STOP_TIMEOUT_S):
                        log.warning(
                            "%s producer: records not acknowledged within %.0f s (Kafka "
                            "unreachable, or fewer in-sync replicas than min.insync.replicas); "
                            "dropped: %s after a restart",
                            name,
                            STOP_TIMEOUT_S,
                            left,
                        )
                except Exception as exc:
                    log.warning("%s producer stop failed: %s", name, exc)
        refusals.flush()  # say what the rate limits held back before going quiet
        shadowings.flush()
        repairs = f" repairs={self._repairer.repairs}" if self._repairer is not None else ""
        log.info("stopped; this run: %s%s", _format_counts(self.counts), repairs)

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        while not self.stop.is_set():
            # getmany returns at once while aiokafka holds fetched records, and a poll without
            # refusals awaits nothing: without this turn the other tasks (heartbeats, fetches,
            # commits, HTTP reads) waited 130-160 ms during a catch-up. (It costs nothing
            # measurable; a task per poll raced against a stop waiter did.)
            await asyncio.sleep(0)
            epoch = self.positions.seek_epoch
            try:
                fetched = await self._fetcher.fetch(consumer)
                if fetched is None:
                    break  # stopped while aiokafka waited for a rebalance
                batch = fetched
            except OffsetOutOfRangeError as exc:
                await self.rebalance.out_of_range(consumer, exc)
                continue
            except NoOffsetForPartitionError:
                # Fetch raced ahead of on_partitions_assigned, which seeks every partition.
                await asyncio.sleep(0.05)
                continue
            except KafkaError as exc:
                if is_fenced(exc):
                    raise FatalError(fenced_line(self.settings)) from None
                refused = self._refusal(exc, "fetching", "joining it or in a heartbeat")
                if refused is not None:
                    raise refused from None
                log.warning("fetch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if batch:
                async with self._batch_lock:
                    if self._fatal is not None:
                        raise self._fatal
                    if self.positions.rebalancing:
                        pass  # fetched before the revocation: the next owner reads it
                    elif epoch == self.positions.seek_epoch:
                        await self._process(consumer, batch)
                    else:
                        # Fetched before on_partitions_assigned sought (e.g. from the group's
                        # committed offset): drop it and fetch again from our own positions.
                        self.positions.reseek(consumer)
            if not batch or time.monotonic() - self._markers_checked > MARKERS_CHECK_INTERVAL_S:
                await self._step_over_markers(consumer, epoch)
                if self._book:
                    self.commits.schedule(consumer)
            self._periodic()
            if self.durability.due:
                await self._settle_durability()
            if self._repairer is not None:
                await self.repairs.sweep(consumer, self._repairer)

    async def _settle_durability(self, why: str = "caught up") -> None:
        try:
            await self.durability.settle(why)
        except StoreError as exc:
            raise FatalError(str(exc)) from None

    async def _step_over_markers(self, consumer: AIOKafkaConsumer, epoch: int) -> None:
        """After an empty poll, and now and then after others (MARKERS_CHECK_INTERVAL_S):
        past the transaction markers the consumer stepped over (offsets.past_control_records),
        and on to the next paused partition if the focused ones have nothing more to read
        (their tail aborted or markers, a transaction open)."""
        self._markers_checked = time.monotonic()
        async with self._batch_lock:
            if self._fatal is not None:  # as for a poll with records: nothing more is written
                raise self._fatal
            if self.positions.rebalancing or epoch != self.positions.seek_epoch:
                return
            owned = self._owned()
            moved = await past_control_records(consumer, self.topic, self.positions.next, owned)
            if moved:
                checkpoints = advance(
                    moved,
                    lambda p: self._end(consumer, p),
                    self.positions.caught_up_at,
                    now_ms(),
                )
                self.store.set_checkpoints(checkpoints)
                self.positions.next.update(moved)
                for partition, next_offset in moved.items():
                    self._book.written(partition, next_offset)
            if self._focus.waiting:
                self._hand_on(consumer)
            if self._repairer is not None and self._repairer.watch.watching:
                # A repair acknowledged after it was read back is decided now, not when the
                # next record comes (on a quiet topic, never).
                await self._repairer.watch.read_back({}, self.store, self._read_to_end(consumer))

    def _read_to_end(self, consumer: AIOKafkaConsumer) -> Callable[[int], bool]:
        """Whether the store holds a partition up to its high watermark at the last fetch
        (past any transaction open then: lag.read_to_log_end)."""
        return lambda p: self.lag.read_to_log_end(consumer, p, self.positions.next.get(p, -1))

    def _end(self, consumer: AIOKafkaConsumer, partition: int) -> EndOffset | None:
        tp = TopicPartition(self.topic, partition)
        return end_offset(consumer, tp, self._committed_only)

    def _periodic(self) -> None:
        now = time.monotonic()
        refusals.tick()  # summarise what the rate limits held back, polls or no polls
        shadowings.tick()
        if now - self._last_touch > TOUCH_INTERVAL_S and self._consumer is not None:
            self.lag.mark_caught_up(self._consumer)
            self.standby.touch()
            self._last_touch = now
        if now - self._last_contact_check > CONTACT_CHECK_INTERVAL_S:
            self.lag.report_contact(self._consumer)
            self._last_contact_check = now
        if now - self._last_lag_report < LAG_REPORT_INTERVAL_S:
            return
        self._last_lag_report = now
        lags = self.lag.lags(self._consumer)
        self.ownership.report_lag(self.lag.for_readers(self._consumer, lags))
        self.durability.observe(lags)
        if now - self._last_progress > PROGRESS_INTERVAL_S:
            behind = {p: lag for p, lag in sorted(lags.items()) if lag}
            log.info(
                "progress: %s%s%s",
                _format_counts(self.counts),
                f" standby_records={self.standby.counts.records}"
                if self.standby.partitions
                else "",
                f" lag={behind}" if behind else "",
            )
            self._last_progress = now
            self._drop_lost_partitions()

    # --- what the HTTP face shows (read-only snapshot) -----------------------------------------

    def partition_rows(self) -> dict[int, PartitionRow]:
        """Every served partition: role, the store's next offset, the end offset at the last
        fetch, and how much is left while it has not caught up since it was assigned."""
        return self.lag.rows(self._consumer)

    def group_assignment(self) -> GroupAssignment | None:
        """The last assignment of our protocol: who serves every partition (the read API's
        routing table)."""
        return self.ownership.binding.last

    def status(self) -> NodeStatus:
        rows = self.partition_rows()
        self.metrics.set_partitions(rows)
        shadowed = self.store.shadowed_per_partition()
        self.metrics.set_shadowed(shadowed, rows)
        shadowed_now = sum(shadowed.values())
        last_poll = self._fetcher.last_poll
        if last_poll is not None:
            self.metrics.last_poll.set(time.time() - (time.monotonic() - last_poll))
        return NodeStatus(
            name=self.settings.instance_id or f"{self.settings.group}@{self.store.path.name}",
            topic=self.topic,
            group=self.settings.group,
            started_at=self.started_at,
            last_poll_age_s=None if last_poll is None else time.monotonic() - last_poll,
            assigned=self.rebalance.ever_assigned,
            partitions=rows,
            counts=self.counts,
            repairs=self._repairer.repairs if self._repairer is not None else 0,
            shadowed_now=shadowed_now,
            waiting_for_kafka=self._waiting_for if last_poll is None else None,
        )

    def _waiting_for_kafka(self, why: str | None) -> None:
        """Why Kafka did not answer (None: it did; the group's turn)."""
        self._waiting_for = why or f"joining group {self.settings.group}"

    def _drop_lost_partitions(self) -> None:
        """Drop the data of partitions not served for longer than the grace period (another
        worker has them). Synchronous: no poll can be applied in between."""
        if not self.rebalance.ever_assigned:
            return  # the group has not told us what we own yet
        if self.positions.rebalancing or self._batch_lock.locked():
            # It may be telling us now: an assignment reads the checkpoints of partitions
            # given back, then resumes from them (the next progress line tries again).
            return
        expired = self.ownership.expired(self.store.checkpoints())
        if expired:
            self.store.drop_partitions(expired)
            self.ownership.dropped(expired)
            log.info(
                "dropped the grains of partitions %s: not served here for over %d ms",
                expired,
                self.settings.lost_partition_grace_ms,
            )

    def _owned(self) -> list[int]:
        return owned(self._consumer, self.topic)

    def _hand_on(self, consumer: AIOKafkaConsumer) -> None:
        """Resume the next paused partition for each focused one within MIN_LAG of what it
        can read now: also one this poll returned nothing from (its tail aborted records or
        an open transaction), which would otherwise keep the others paused."""
        owned_now = set(self._owned())
        held = {
            p: self.positions.next[p]
            for p in self._focus.focus
            if p in owned_now and p in self.positions.next
        }
        catchup.resume_next(self._focus, consumer, self.topic, held, self._committed_only)

    # --- one poll ----------------------------------------------------------------------------

    async def _process(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[Any]]
    ) -> None:
        assigned = consumer.assignment()
        started = time.perf_counter()
        # A partition revoked while this poll was waiting for the lock is skipped.
        folded = await fold_batch(batch, lambda tp: tp in assigned, self.store)
        if not folded.records:
            return
        result = folded.result
        for warning in result.warnings:
            log.warning("%s", warning)
        log_shadowing(self.topic, result, self._repairer is not None)
        if result.rejected:
            for rejection in result.rejected:
                log_rejection(self.topic, rejection)
            if self._dlq is not None:
                await self._dlq.send(result.rejected)
                self.metrics.dlq_sends.inc(len(result.rejected))
        await past_trailing_markers(consumer, self.topic, result.next_offsets)
        checkpoints = advance(
            result.next_offsets,
            lambda p: self._end(consumer, p),
            self.positions.caught_up_at,
            now_ms(),
        )
        write_started = time.perf_counter()
        try:
            self.store.apply(
                result.changes, checkpoints, result.counts, result.unshadowed, folded.prepared
            )
        except StoreError as exc:
            raise FatalError(f"{exc}; offsets of this poll were not committed") from None
        if self.grain_waits:  # reads waiting for one of these grains (?min_sequence)
            self.grain_waits.written(folded.written())
        done = time.perf_counter()
        self.counts.add(result.counts)
        self.metrics.add_fold(result.counts)
        self.metrics.poll_records.observe(folded.records)
        self.metrics.write_grains.observe(folded.grains_written)
        self.metrics.write_seconds.observe(done - write_started)
        self.metrics.poll_seconds.observe(done - started)
        for partition, next_offset in result.next_offsets.items():
            self._book.written(partition, next_offset)
        self.positions.next.update(result.next_offsets)
        if self._focus.waiting:
            self._hand_on(consumer)
        self.commits.schedule(consumer)
        if self._repairer is not None:
            self._repairer.forget(result.unshadowed)
            if self._repairer.watch.watching:
                await self._repairer.watch.read_back(batch, self.store, self._read_to_end(consumer))
            await self.repairs.repair_now(consumer, self._repairer, result)

    # --- rebalance: the listener's callbacks (rebalance.py does the work) ----------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.rebalance.revoked(self._consumer, revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.rebalance.assigned(self._consumer, assigned)

    def _refusal(
        self, exc: BaseException, doing: str, group_doing: str | None = None
    ) -> StreamReplicaError | None:
        return refusal(
            exc,
            self.settings,
            doing=doing,
            group_doing=group_doing,
            topic=self.topic,
            group=self.settings.group,
        )

    def _fail(self, exc: Exception) -> None:
        """A rebalance callback could not do its job: stop the worker with ``exc``."""
        self._fatal = exc
        self.stop.set()

    def _refused(self, refused: StreamReplicaError) -> None:
        """A commit was refused for good (an ACL): stop after this poll."""
        self._fatal = self._fatal or refused
        self.stop.set()


def _format_counts(counts: FoldCounts) -> str:
    return " ".join(f"{name}={value}" for name, value in counts.as_dict().items())
