"""Catch up a few partitions at a time, so a rebalance moves partitions not started yet.

A worker far behind on several partitions (a new store, a long outage) used to read them all
at once: when a second worker joined meanwhile, the assignor kept the first worker's freshest
partitions and gave the newcomer the others, each already part read; the newcomer, with no
store, read them again from the start (issue #12: 583,383 records read for 500,000). Read
``width`` of them at a time instead (the rest paused) and at any moment at most ``width``
partitions are part read; the others are either done or untouched, and the assignor keeps
the read ones with their worker (it keeps a member's freshest claims), so what moves was
never read. The total catch-up time is the same (one event loop reads at one rate), and
readers get whole partitions earlier, one after the other, instead of all at the end.

``CatchUpFocus`` is pure bookkeeping; ``pause_far_behind`` and ``resume_next`` pause and
resume the active consumer's partitions as it tells.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_replica.offsets import readable_end

# The worker's logger: these lines have always been the worker's.
log = logging.getLogger("stream_replica.worker")

# A partition further behind than this at assignment is caught up in turn; one within it is
# read at once (a few polls), as is a focused partition once it gets within it.
MIN_LAG: Final = 10_000


class CatchUpFocus:
    """``width``: partitions caught up at a time (0: all at once, no pausing; None: half of
    those far behind, at least 2). One worker joining a group of n takes floor(P/(n+1))
    partitions: a member keeps at least half of its share, so the half being read stays. At
    least 2: with one partition at a time every fetch waits for the previous one to be
    folded (500k-record bench, one worker: 9.3 s vs 4.8 s); with two, fetches overlap it.
    For the same reason the automatic width never leaves one partition to be read alone at
    the end: a last waiting partition is read with the others (so 3 far behind: no pause)."""

    def __init__(self, width: int | None, min_lag: int = MIN_LAG) -> None:
        if (width is not None and width < 0) or min_lag < 0:
            raise ValueError("width and min_lag must be >= 0")
        self.width = width
        self.min_lag = min_lag
        self.focus: list[int] = []  # being caught up now
        self.waiting: list[int] = []  # paused, in the order they will be read

    def assigned(
        self, lags: Mapping[int, int], held: Mapping[int, int] | None = None
    ) -> frozenset[int]:
        """A new assignment: ``lags`` = records behind the end per partition, ``held`` =
        the store's offsets. Returns the partitions to pause. The most advanced go first:
        the assignor ranks a member's partitions by the offset its store holds, so those
        are the ones it keeps at the next rebalance."""
        held = held or {}
        behind = sorted(
            (p for p, lag in lags.items() if lag > self.min_lag),
            key=lambda p: (-held.get(p, 0), p),
        )
        width = max(2, len(behind) // 2) if self.width is None else self.width
        if not width:
            self.focus, self.waiting = [], []
            return frozenset()
        self.focus, self.waiting = behind[:width], behind[width:]
        self._no_lone_tail()
        return frozenset(self.waiting)

    def _no_lone_tail(self) -> None:
        if self.width is None and len(self.waiting) == 1:
            self.focus.append(self.waiting.pop())

    def progressed(self, lags: Mapping[int, int]) -> list[int]:
        """Lags of partitions just read; returns the paused partitions to resume now (one
        for each focused partition that got within ``min_lag`` of its end)."""
        if not self.waiting:
            self.focus = []
            return []
        resumed = []
        for partition, lag in lags.items():
            if partition in self.focus and lag <= self.min_lag:
                self.focus.remove(partition)
                if self.waiting:
                    nxt = self.waiting.pop(0)
                    self.focus.append(nxt)
                    resumed.append(nxt)
                    if self.waiting and self.width is None and len(self.waiting) == 1:
                        resumed.append(self.waiting[0])
                        self._no_lone_tail()
        return resumed

    def revoked(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.focus = [p for p in self.focus if p not in gone]
        self.waiting = [p for p in self.waiting if p not in gone]

    @property
    def paused(self) -> frozenset[int]:
        return frozenset(self.waiting)


def pause_far_behind(
    focus: CatchUpFocus,
    consumer: AIOKafkaConsumer | None,
    topic: str,
    lags: Mapping[int, int],
    held: Mapping[int, int],
) -> None:
    """After an assignment: pause all but a few of the partitions far behind."""
    paused = focus.assigned(lags, held)
    if paused and consumer is not None:
        consumer.pause(*(TopicPartition(topic, p) for p in sorted(paused)))
        log.info(
            "catching up partitions %s first; %s paused until then",
            focus.focus,
            focus.waiting,
        )


def resume_next(
    focus: CatchUpFocus,
    consumer: AIOKafkaConsumer,
    topic: str,
    next_offsets: Mapping[int, int],
    committed_only: bool = True,
) -> None:
    """After a poll: resume the next paused partition for each focused one that got
    within ``focus.min_lag`` of what it can read (``committed_only``: the consumer reads
    committed records only)."""
    lags = {}
    for partition, offset in next_offsets.items():
        end = readable_end(consumer, TopicPartition(topic, partition), committed_only)
        if end is not None:
            lags[partition] = end - offset
    for partition in focus.progressed(lags):
        consumer.resume(TopicPartition(topic, partition))
        log.info("partition %d: catching up (next: %s)", partition, focus.waiting)
