"""What a worker reports about itself: a snapshot the HTTP face and the metrics read (the
loop fills it; nothing here does I/O)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from stream_replica.fold import FoldCounts


class PartitionRow:
    """What the worker reports about one partition it serves."""

    __slots__ = (
        "caught_up",
        "checkpoint",
        "end_offset",
        "end_offset_age_s",
        "held_back",
        "rebuild_remaining",
        "role",
    )

    def __init__(
        self,
        role: str,
        checkpoint: int,
        end_offset: int | None,
        caught_up: bool,
        rebuild_remaining: int = 0,
        end_offset_age_s: float | None = None,
        held_back: int = 0,
    ) -> None:
        self.role = role
        self.checkpoint = checkpoint
        self.end_offset = end_offset
        # caught up with the end offset the broker confirmed this long ago (not caught up
        # when that is too long ago: the broker may have taken records since)
        self.caught_up = caught_up
        self.rebuild_remaining = rebuild_remaining
        self.end_offset_age_s = end_offset_age_s
        # records past the end offset that an open transaction keeps from every consumer
        # reading committed records (offsets.EndOffset.held_back)
        self.held_back = held_back

    @property
    def lag(self) -> int:
        return 0 if self.end_offset is None else max(0, self.end_offset - self.checkpoint)

    def as_json(self) -> dict[str, object]:
        return {
            "role": self.role,
            "checkpoint": self.checkpoint,
            "end_offset": self.end_offset,
            "end_offset_age_s": _rounded(self.end_offset_age_s),
            "lag": self.lag,
            "caught_up": self.caught_up,
            "rebuild_remaining": self.rebuild_remaining,
            "held_back": self.held_back,
        }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@dataclass
class NodeStatus:
    name: str
    topic: str
    group: str
    started_at: float  # unix seconds
    last_poll_age_s: float | None  # None: no poll yet
    assigned: bool  # the group has given this worker an assignment (maybe empty)
    partitions: dict[int, PartitionRow] = field(default_factory=dict)
    counts: FoldCounts = field(default_factory=FoldCounts)
    repairs: int = 0
    shadowed_now: int = 0
    # Before the first poll: what the worker waits for (Kafka to answer, retried with the
    # reason it did not; then the group to assign its partitions).
    waiting_for_kafka: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "topic": self.topic,
            "group": self.group,
            "started_at": self.started_at,
            "now": time.time(),
            "last_poll_age_s": self.last_poll_age_s,
            "assigned": self.assigned,
            "partitions": {str(p): row.as_json() for p, row in sorted(self.partitions.items())},
            "counts": self.counts.as_dict(),
            "repairs": self.repairs,
            "shadowed_now": self.shadowed_now,
            "waiting_for_kafka": self.waiting_for_kafka,
        }
