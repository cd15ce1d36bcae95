"""How far behind the served partitions are, and since when the active ones are caught up.

* Lags (records behind the end offset: what the consumers can read, offsets.end_offset) go
  to the assignor (ownership.report_lag), the WAL policy (durability.py) and the progress
  line.
* The rows of the HTTP face: role, next offset, end offset, caught up, what is left.
* Caught-up bookkeeping: since when the store of each owned partition holds everything the
  log had (store.Checkpoint), which the tombstone-retention check on assignment uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_replica.offsets import EndOffset, caught_up_since, end_offset, readable_end
from stream_replica.ownership import now_ms
from stream_replica.positions import Positions, owned
from stream_replica.standby import StandbyFollower
from stream_replica.status import PartitionRow
from stream_replica.store import Checkpoint, ReplicaStore

log = logging.getLogger("stream_replica.worker")


class LagTracker:
    def __init__(
        self,
        topic: str,
        store: ReplicaStore,
        positions: Positions,
        standby: StandbyFollower,
        end_offset_max_age_s: float,
        committed_only: bool = True,
    ) -> None:
        self.topic = topic
        self._committed_only = committed_only  # the active consumer reads committed records
        self._store = store
        self._positions = positions
        self._standby = standby
        self._end_offset_max_age_s = end_offset_max_age_s
        # (partition, role) that reached the end offset since they were assigned here
        self.reached_end: set[tuple[int, str]] = set()
        self._unconfirmed: list[int] = []  # partitions said to have no word from Kafka

    def lags(self, consumer: AIOKafkaConsumer | None) -> dict[int, int]:
        """Records behind the end offset, per served partition (-1: not known yet)."""
        lags = self._standby.lags()
        if consumer is not None:
            for partition in owned(consumer, self.topic):
                tp = TopicPartition(self.topic, partition)
                mark = readable_end(consumer, tp, self._committed_only)
                if mark is None:  # not fetched yet (paused for a catch-up)
                    mark = self._positions.listed_ends.get(partition)
                position = self._positions.next.get(partition)
                lags[partition] = (
                    -1 if mark is None or position is None else max(0, mark - position)
                )
        return lags

    def for_readers(
        self, consumer: AIOKafkaConsumer | None, lags: Mapping[int, int]
    ) -> dict[int, int]:
        """``lags`` as the store's served records give them to its readers: -1 (unknown)
        where the broker has not confirmed the end offset for over end_offset_max_age_s
        (Kafka unreachable: how far behind is not known, as /readyz says), and a lag of 0 no
        fetch has confirmed yet (measured against the end listed at the assignment: "caught
        up" needs the broker's word, as /readyz does)."""
        now = now_ms()
        limit_ms = self._end_offset_max_age_s * 1000
        confirmed = self._confirmed_at(consumer)

        def for_reader(partition: int, lag: int) -> int:
            confirmed_at = confirmed.get(partition)
            if confirmed_at is None:  # not fetched yet: a lower bound, never "caught up"
                return lag if lag > 0 else -1
            return -1 if now - confirmed_at > limit_ms else lag

        return {p: for_reader(p, lag) for p, lag in lags.items()}

    def rows(self, consumer: AIOKafkaConsumer | None) -> dict[int, PartitionRow]:
        """Every served partition: role, the store's next offset, the end offset at the last
        fetch, and how much is left while it has not caught up since it was assigned."""
        rows: dict[int, PartitionRow] = {}
        served: list[tuple[int, str, int | None, EndOffset | None]] = [
            (p, "standby", position, end) for p, (position, end) in self._standby.marks().items()
        ]
        listed: dict[int, int] = {}
        if consumer is not None:
            for partition in owned(consumer, self.topic):
                end = self._end(consumer, partition)
                served.append((partition, "active", self._positions.next.get(partition), end))
                if end is None and partition in self._positions.listed_ends:
                    listed[partition] = self._positions.listed_ends[partition]
        now = now_ms()
        max_age_s = self._end_offset_max_age_s
        for partition, role, position, end in served:
            checkpoint = position if position is not None else 0
            # Not fetched yet: the end listed at the assignment gives the lag, not a fetch's
            # confirmation (no age, so not caught up and not taken for Kafka unreachable).
            mark = (
                end.offset
                if end is not None
                else listed.get(partition)
                if role == "active"
                else None
            )
            reached = mark is not None and position is not None and position >= mark
            if reached:
                self.reached_end.add((partition, role))
            remaining = 0
            if (partition, role) not in self.reached_end and mark is not None:
                remaining = max(0, mark - checkpoint)
            # An end offset the broker has not confirmed for long (Kafka unreachable) says
            # nothing about what the log holds now: not caught up, however close we were.
            age_s = None if end is None else max(0, now - end.confirmed_at_ms) / 1000
            caught_up = reached and age_s is not None and age_s <= max_age_s
            held_back = 0 if end is None else end.held_back
            rows[partition] = PartitionRow(
                role, checkpoint, mark, caught_up, remaining, age_s, held_back
            )
        return rows

    def report_contact(self, consumer: AIOKafkaConsumer | None) -> None:
        """One warning when the broker has not confirmed the end offset of served partitions
        for over end_offset_max_age_s (Kafka unreachable from here, or their leader down):
        their reads answer "not caught up" meanwhile. One line when it does again. Without
        it only aiokafka's rate-limited connection errors said so, and nothing said when
        they ended. Partitions paused for a catch-up are not fetched: not counted."""
        now = now_ms()
        paused = set()
        if consumer is not None:
            paused = {tp.partition for tp in consumer.paused() if tp.topic == self.topic}
        limit_ms = self._end_offset_max_age_s * 1000
        silent = {
            p: (now - confirmed_at) / 1000
            for p, confirmed_at in self._confirmed_at(consumer).items()
            if p not in paused and now - confirmed_at > limit_ms
        }
        unconfirmed = sorted(silent)
        if unconfirmed and not self._unconfirmed:
            log.warning(
                "Kafka has not confirmed the end offset of partitions %s for %.0f s "
                "(unreachable from here, or their leader down): their reads answer not caught "
                "up until it does",
                unconfirmed,
                max(silent.values()),
            )
        elif self._unconfirmed and not unconfirmed:
            log.info("Kafka confirms the end offsets of every served partition again")
        self._unconfirmed = unconfirmed

    def _confirmed_at(self, consumer: AIOKafkaConsumer | None) -> dict[int, int]:
        """When the broker last confirmed each served partition's end offset (those fetched
        at least once), standby and active."""
        confirmed = {p: end.confirmed_at_ms for p, (_, end) in self._standby.marks().items() if end}
        if consumer is not None:
            for partition in owned(consumer, self.topic):
                end = self._end(consumer, partition)
                if end is not None:
                    confirmed[partition] = end.confirmed_at_ms
        return confirmed

    def _end(self, consumer: AIOKafkaConsumer, partition: int) -> EndOffset | None:
        return end_offset(consumer, TopicPartition(self.topic, partition), self._committed_only)

    def is_caught_up(self, consumer: AIOKafkaConsumer, partition: int, next_offset: int) -> bool:
        """Whether the store holds the partition up to the end offset at the last fetch
        (what the consumer can read: an open transaction's records are not waited for)."""
        end = readable_end(consumer, TopicPartition(self.topic, partition), self._committed_only)
        return end is not None and next_offset >= end

    def read_to_log_end(self, consumer: AIOKafkaConsumer, partition: int, next_offset: int) -> bool:
        """Whether the store holds the partition up to its high watermark at the last fetch:
        also past every transaction open then. The repair watch waits for this (a record of
        the primary's in an open transaction, once committed, may come before the deletion
        it would re-publish: repair_watch.py)."""
        highwater = consumer.highwater(TopicPartition(self.topic, partition))
        return highwater is not None and next_offset >= highwater

    def mark_caught_up(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[int] | None = None
    ) -> None:
        """Record, for owned partitions whose position has reached the end offset, since
        when the store is caught up: when the broker confirmed that end offset (the
        tombstone-retention check on assignment uses it)."""
        now = now_ms()
        wanted = set(owned(consumer, self.topic)) if partitions is None else set(partitions)
        checkpoints = {}
        for partition in wanted:
            position = self._positions.next.get(partition)
            if position is None:
                continue
            since = caught_up_since(position, self._end(consumer, partition), now)
            if since is not None:
                since = max(since, self._positions.caught_up_at.get(partition, since))
                self._positions.caught_up_at[partition] = since
                checkpoints[partition] = Checkpoint(position, since)
        if checkpoints:
            self._store.set_checkpoints(checkpoints)
