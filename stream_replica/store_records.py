"""What the replica store holds besides grain states, as its readers and writer see it:
checkpoints, served records, the last assignment, the topic's identity, shadow marks; and
StoreError, the one error a store raises."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

# A running worker rewrites its served records at least this often (ownership.py), so that
# a reader of the store can tell them from those of a worker that died: one older than
# SERVED_STALE_MS says nothing about now (not caught up).
SERVED_REFRESH_MS: Final = 10_000
SERVED_STALE_MS: Final = 3 * SERVED_REFRESH_MS


class StoreError(Exception):
    """A state directory that cannot be used; the message is one readable line."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """``next_offset``: the store holds exactly the result of the partition's records before
    it. ``caught_up_at_ms``: the last time the store had read everything the partition held
    (or began rebuilding it from the start): every tombstone written before then was seen, so
    the store is safe to resume while that is less than ``delete.retention.ms`` ago."""

    next_offset: int
    caught_up_at_ms: int


@dataclass(frozen=True, slots=True)
class ShadowMark:
    """A grain whose state is shadowed: the log's last record on its key (``by_offset``) is
    not the state the store holds (set by the record at ``state_offset``)."""

    partition: int
    state_offset: int
    by_offset: int


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """The Kafka topic a store replicates: its ID (None when the broker does not report
    one) and partition count."""

    topic_id: str | None
    partitions: int


def partitions_added(topic: str, known: TopicIdentity | None, now: TopicIdentity) -> str | None:
    """What a partition count raised under a store means (None: not raised). The store is
    kept: each old partition's log, and so its checkpoint, is unchanged, and the fold keeps
    the higher sequence of a grain whatever partition it comes from."""
    if known is None or now.partitions <= known.partitions:
        return None
    if known.topic_id is not None and now.topic_id not in (None, known.topic_id):
        return None  # another topic: bind_topic drops the store
    return (
        f"topic {topic!r} now has {now.partitions} partitions, the store was built from "
        f"{known.partitions}: a grain whose key maps to another partition now has its older "
        "records in the old one. This replica keeps what it read and reads the new "
        "partitions from their start, but reads route by the new count (a grain not written "
        "since is looked for in the wrong partition) and a rebuild reads the partitions in no "
        "fixed order (a grain deleted since may come back): have the primary republish every "
        "grain, or replicate a new topic created with the partition count wanted"
    )


@dataclass(frozen=True, slots=True)
class Served:
    """Whether this store's worker serves a partition. ``role``: ``active``, ``standby``, or
    ``""`` (not served: revoked, or the worker stopped) since ``since_ms``. ``lag``: records
    the store was behind the partition's high watermark at ``updated_ms`` (-1: unknown, e.g.
    Kafka unreachable)."""

    role: str
    lag: int
    since_ms: int
    updated_ms: int

    @property
    def serving(self) -> bool:
        return bool(self.role)

    def age_ms(self, now_ms: int | None = None) -> int:
        """How long ago the worker last wrote this record."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return max(0, now - self.updated_ms)

    @property
    def stale(self) -> bool:
        """Not rewritten for longer than a running worker lets it be: its worker is gone
        (killed, or stopped without a word), so the lag says nothing about now."""
        return self.serving and self.age_ms() > SERVED_STALE_MS

    @property
    def caught_up(self) -> bool:
        return self.serving and self.lag == 0 and not self.stale


@dataclass(frozen=True, slots=True)
class LastAssignment:
    epoch: int
    active: frozenset[int]
    standby: frozenset[int]
