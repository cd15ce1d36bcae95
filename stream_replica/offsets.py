"""Positions and commits: where a partition resumes, and which offsets may be committed.

Two rules (docs/operations.md, "Partition ownership and recovery"):

* The store is the source of truth for positions: a partition resumes from its checkpoint,
  or is rebuilt from the log start when the checkpoint cannot be trusted (``resume_from``).
* The group's committed offset never moves backwards. A worker whose store is behind the
  group's offset (a new owner, a rebuild) reads from its own checkpoint but commits only once
  it has written past the group's offset (``CommitBook``); how far behind it is gets logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream_replica.store import Checkpoint

# Every consumer that folds the log reads committed records only: a transactional producer's
# aborted records are never applied (aiokafka's default, read_uncommitted, returns them). A
# --kafka-option isolation_level=... still wins.
READ_COMMITTED: Final[dict[str, str]] = {"isolation_level": "read_committed"}


class EndOffset(NamedTuple):
    """A partition's end offset as the broker last reported it: how far the consumer can
    read (see readable_end)."""

    offset: int
    confirmed_at_ms: int  # wall clock of the fetch response that carried it
    # Records past ``offset`` up to the high watermark: an open transaction's, and every
    # record written after its start (plain ones too), returned to no consumer reading
    # committed records until it ends (0 when none is open, or reading uncommitted ones).
    held_back: int = 0


def readable_end(
    consumer: AIOKafkaConsumer, tp: TopicPartition, committed_only: bool
) -> int | None:
    """How far the consumer can read ``tp`` now: the high watermark, or reading committed
    records only, the last stable offset when a transaction is open (nothing past it is
    returned until the transaction ends, which may take its producer's transaction timeout,
    minutes). The broker reports the last stable offset whatever the isolation level."""
    mark: int | None = consumer.highwater(tp)
    if not committed_only:
        return mark
    stable: int | None = consumer.last_stable_offset(tp)
    if mark is not None and stable is not None and stable >= 0:
        return min(mark, stable)
    return mark


def end_offset(
    consumer: AIOKafkaConsumer, tp: TopicPartition, committed_only: bool
) -> EndOffset | None:
    """The end offset of an assigned partition, as far as the consumer can read it
    (``committed_only``: it reads committed records only), with the time the broker confirmed
    it (None before the first fetch response). While the broker is unreachable it does not
    change, and its age says how far back "caught up" was true. "Caught up" is with this
    end: measured against the high watermark, a transaction held open (up to its producer's
    transaction.timeout.ms; for good while several producers' transactions overlap) kept a
    partition "behind", its reads refused as being rebuilt, all that time."""
    mark = readable_end(consumer, tp, committed_only)
    confirmed_ms: int | None = consumer.last_poll_timestamp(tp)
    if mark is None or confirmed_ms is None:
        return None
    highwater: int | None = consumer.highwater(tp)
    held_back = 0 if highwater is None else max(0, highwater - mark)
    return EndOffset(mark, confirmed_ms, held_back)


@dataclass(frozen=True, slots=True)
class Resume:
    """Where to read a partition from. ``wipe``: the stored grains must go first;
    ``reason``: why it is not the checkpoint (None when it is)."""

    offset: int
    wipe: bool
    reason: str | None


def resume_from(
    checkpoint: Checkpoint | None, start: int, end: int, now_ms: int, delete_retention_ms: int
) -> Resume:
    if checkpoint is None:
        if start == end:  # nothing to rebuild: no "rebuilding" at every restart
            return Resume(start, False, f"no local state, the partition is empty (offset {end})")
        return Resume(start, False, "no local state: rebuilding from the beginning")
    if checkpoint.next_offset < start:
        return Resume(
            start,
            True,
            f"stored offset {checkpoint.next_offset} is below the log start {start}: "
            "wiping and rebuilding",
        )
    if checkpoint.next_offset > end:
        return Resume(
            start,
            True,
            f"stored offset {checkpoint.next_offset} is past the end offset {end} "
            "(topic recreated?): wiping and rebuilding",
        )
    if checkpoint.next_offset < end and now_ms - checkpoint.caught_up_at_ms > delete_retention_ms:
        age_s = (now_ms - checkpoint.caught_up_at_ms) / 1000
        return Resume(
            start,
            True,
            f"store last caught up {age_s:.0f} s ago, longer than delete.retention.ms="
            f"{delete_retention_ms} (tombstones may be gone): wiping and rebuilding",
        )
    return Resume(checkpoint.next_offset, False, None)


async def past_control_records(
    consumer: AIOKafkaConsumer, topic: str, positions: Mapping[int, int], partitions: Iterable[int]
) -> dict[int, int]:
    """After a poll (empty, or with records already applied to ``positions``), the partitions
    whose consumer position is past the store's next offset, with that position. A transactional producer ends each transaction with a control
    record (a commit or abort marker) that getmany steps over without returning it (aborted
    records too): without this the store's next offset stays before the last one and the
    partition is never caught up (lag 1 forever, no repairs, the tombstone-retention clock
    never refreshed). The position is past every record getmany returned, all applied by
    then, so what lies between is control or aborted records only."""
    moved: dict[int, int] = {}
    for partition in partitions:
        tp = TopicPartition(topic, partition)
        end = consumer.highwater(tp)
        held = positions.get(partition)
        if end is None or held is None or held >= end:
            continue
        try:  # at once for a sought partition; bounded for one being reset
            position: int = await asyncio.wait_for(consumer.position(tp), 0.05)
        except (KafkaError, TimeoutError):
            continue
        if position > held:
            moved[partition] = position
    return moved


# A poll's partition this close to its end offset is checked for markers after its records.
NEAR_END: Final = 1_000
# How often, while polls come back with records, every served partition is checked for
# markers stepped over: a partition can be stepped past its last marker by a poll that
# returned only other partitions' records (its records ended the previous poll exactly at
# max_records), and with another partition written all the time no poll comes back empty.
MARKERS_CHECK_INTERVAL_S: Final = 1.0


async def past_trailing_markers(
    consumer: AIOKafkaConsumer, topic: str, next_offsets: dict[int, int]
) -> None:
    """Move a poll's ``next_offsets`` (its records applied) past the control records the
    consumer stepped over after them, for partitions a little short of their end offset: a
    commit marker after a poll's last record (a transactional producer writing all the time,
    so no poll comes back empty) would keep them one short for good, never caught up. Far
    from the end (a catch-up) the next polls read on, and the position is not asked for."""
    near = []
    for partition, next_offset in next_offsets.items():
        end = consumer.highwater(TopicPartition(topic, partition))
        if end is not None and 0 < end - next_offset <= NEAR_END:
            near.append(partition)
    if near:
        next_offsets.update(await past_control_records(consumer, topic, next_offsets, near))


def caught_up_since(next_offset: int, end: EndOffset | None, now_ms: int) -> int | None:
    """When a store at ``next_offset`` last held everything the log had: when the broker
    confirmed an end offset it has reached (not now: a broker unreachable since then may have
    taken records and, past delete.retention.ms, dropped tombstones). None: not reached."""
    if end is None or next_offset < end.offset:
        return None
    return min(now_ms, end.confirmed_at_ms)


def advance(
    next_offsets: Mapping[int, int],
    end_of: Callable[[int], EndOffset | None],
    caught_up_at: dict[int, int],
    now_ms: int,
) -> dict[int, Checkpoint]:
    """Checkpoints for a poll's next offsets; ``caught_up_at`` is refreshed for the
    partitions that reached the end offset (see store.Checkpoint, caught_up_since)."""
    checkpoints = {}
    for partition, next_offset in next_offsets.items():
        since = caught_up_since(next_offset, end_of(partition), now_ms)
        if since is not None:
            caught_up_at[partition] = max(since, caught_up_at.get(partition, since))
        checkpoints[partition] = Checkpoint(next_offset, caught_up_at.setdefault(partition, now_ms))
    return checkpoints


@dataclass(frozen=True)
class Flushing:
    """What a flush starting now covers: per partition, the written offset and the tenure
    (assignment) it was written in."""

    offsets: Mapping[int, tuple[int, int]]

    def offset(self, partition: int) -> int:
        return self.offsets[partition][0] if partition in self.offsets else -1


class CommitBook:
    """Per owned partition: the group's committed offset (the floor: commits never go below
    it) and the store's written offset not yet committed.

    The floor is learnt on assignment and raised by every successful commit; an offset at or
    below it is never offered for commit, so the group's offset only moves forwards."""

    def __init__(self) -> None:
        self._floor: dict[int, int] = {}  # -1: the group never committed this partition
        self._pending: dict[int, int] = {}
        # While the store writes without its WAL (durability.py), a written offset is durable
        # only once a memtable flush covers it, and only durable offsets are committed (as
        # Kafka Streams flushes its stores before it commits). None: every written offset is.
        self._durable: dict[int, int] | None = None
        # Raised whenever a partition is assigned or forgotten: a flush that began before
        # persisted the store as it was then, which says nothing about the partition's new
        # tenure (its store may be wiped and rebuilt meanwhile).
        self._tenure: dict[int, int] = {}

    def assigned(self, partition: int, committed: int | None) -> None:
        self._floor[partition] = -1 if committed is None else committed
        self._pending.pop(partition, None)
        self._new_tenure(partition)

    def _new_tenure(self, partition: int) -> None:
        self._tenure[partition] = self._tenure.get(partition, 0) + 1
        if self._durable is not None:
            self._durable.pop(partition, None)

    def hold(self) -> None:
        """Written offsets wait for a flush before they are committed (the WAL is off)."""
        if self._durable is None:
            self._durable = {}

    def release(self) -> None:
        """Every written offset is durable again (flushed, and the WAL is on)."""
        self._durable = None

    def flushing(self) -> Flushing:
        """The written offsets a flush starting now makes durable (pass them to persisted)."""
        return Flushing(
            {p: (offset, self._tenure.get(p, 0)) for p, offset in self._pending.items()}
        )

    def persisted(self, flushing: Flushing) -> None:
        """A flush begun at ``flushing`` finished: its offsets are durable, except those of
        partitions assigned or forgotten since it began."""
        if self._durable is not None:
            for partition, (offset, tenure) in flushing.offsets.items():
                if self._tenure.get(partition, 0) == tenure:
                    self._durable[partition] = max(self._durable.get(partition, -1), offset)

    def floor(self, partition: int) -> int:
        return self._floor.get(partition, -1)

    def written(self, partition: int, next_offset: int) -> None:
        """The store holds the partition up to ``next_offset``: commit it if it is ahead."""
        if next_offset > self.floor(partition):
            self._pending[partition] = next_offset
        else:
            self._pending.pop(partition, None)

    def behind(self, partition: int, next_offset: int) -> int:
        """Records the store must still read to reach the group's committed offset."""
        return max(0, self.floor(partition) - next_offset)

    def due(self, owned: Iterable[int], partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Offsets to commit now (of ``partitions``, default all). Partitions no longer owned
        are forgotten: their new owner commits them."""
        owned_set = set(owned)
        for partition in [p for p in self._pending if p not in owned_set]:
            del self._pending[partition]
        wanted = owned_set if partitions is None else owned_set & set(partitions)
        return {p: o for p, o in self._ready() if p in wanted}

    def _ready(self) -> Iterator[tuple[int, int]]:
        """(partition, offset) that may be committed: what was written, or while the book
        holds, what a flush covered of it (when that is still above the floor)."""
        durable = self._durable
        if durable is None:
            yield from self._pending.items()
            return
        for partition, offset in self._pending.items():
            flushed = min(offset, durable.get(partition, -1))
            if flushed > self.floor(partition):
                yield partition, flushed

    def committed(self, offsets: Mapping[int, int]) -> None:
        for partition, offset in offsets.items():
            self._floor[partition] = max(self.floor(partition), offset)
            if self._pending.get(partition) == offset:
                del self._pending[partition]

    def forget(self, partition: int) -> None:
        self._pending.pop(partition, None)
        self._new_tenure(partition)

    def __bool__(self) -> bool:
        """Whether some offset is ready to commit."""
        return next(self._ready(), None) is not None
