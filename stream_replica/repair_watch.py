"""Repairs on their way back (repair.py): did one land just after the primary deleted its
grain?

A repair is a FullState, and a FullState after a tombstone starts the grain again. The worker
decides a repair when it has read its partition to the end (``since``); if the primary deletes
the grain between that and the repair's append, every replica, and compaction, would keep the
resurrected state. So each repair is watched from ``since``: the records read on its key are
noted until the repair itself (``repair_offset``, known once it is acknowledged) has been
read. If the last of them before the repair is a tombstone, and the grain's state is still
the repair's own (nothing set or deleted it since), the deletion is re-published. Other
replica groups' repairs of the grain (the same state, sent at the same time) are no write of
the primary: they are passed over on both sides of the repair, or with two groups repairing,
each would take the other's repair for the grain set again and neither would restore the
deletion.
The decision waits until the worker has read its partition to the end offset: a poll can end
just after the repair while the primary has already started the grain again after it (a
catch-up, a poll's max_records), and a deletion re-published then would delete that. The end
is the high watermark, not the last stable offset the worker's freshness is measured
against (lag.py): a transaction still open may hold the primary's new start of the grain.

The ack and the read of the repair come in either order (the consumer may fetch the repair
before the producer hears back), so the watch keeps what it saw and decides once it knows
both.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition

from stream_replica.contract import GrainId
from stream_replica.store import ReplicaStore

# A repair not read back within this (its partition went to another worker) is not watched.
WATCH_FOR_S: Final = 600.0
# A key written this often past ``since`` is not a deletion race worth following.
MAX_SEEN: Final = 64
# The header that marks a repair (repair.py), also another replica group's.
REPAIR_HEADER: Final = "stream-replica.repair"


@dataclass(slots=True)
class _Watch:
    grain: GrainId
    partition: int
    since: int  # the partition's next offset when the repair was decided
    started: float
    repair_offset: int | None = None  # where the repair landed, once acknowledged
    # (offset, a tombstone, a repair's FullState: this worker's or another group's)
    seen: list[tuple[int, bool, bool]] = field(default_factory=list)


# What re-publishes a deletion: (grain, partition, offset of the tombstone, of the repair).
Restore = Callable[[GrainId, int, int, int], Awaitable[None]]


class RepairWatch:
    def __init__(self, restore: Restore) -> None:
        self._restore = restore
        self._watches: dict[bytes, _Watch] = {}  # by Kafka key

    @property
    def watching(self) -> bool:
        return bool(self._watches)

    def expect(self, key: bytes, grain: GrainId, partition: int, since: int) -> None:
        """A repair of ``grain`` is being sent; its partition was read up to ``since``."""
        self._watches[key] = _Watch(grain, partition, since, time.monotonic())

    def landed(self, key: bytes, offset: int) -> None:
        watch = self._watches.get(key)
        if watch is not None:
            watch.repair_offset = offset

    def cancel(self, key: bytes) -> None:
        """The repair was not published."""
        self._watches.pop(key, None)

    async def read_back(
        self,
        batch: Mapping[TopicPartition, list[Any]],
        store: ReplicaStore,
        caught_up: Callable[[int], bool],
    ) -> None:
        """After a poll is written: note the records on watched keys; for each repair read
        back by now, its partition read to the end offset (``caught_up``), re-publish the
        deletion it undid (if it undid one)."""
        watches = self._watches
        for tp, records in batch.items():
            for record in records:
                watch = watches.get(record.key)
                if watch is None or watch.partition != tp.partition:
                    continue
                if record.offset >= watch.since:
                    deleted = record.value is None
                    watch.seen.append((record.offset, deleted, not deleted and _repair(record)))
                    if len(watch.seen) > MAX_SEEN:
                        del watches[record.key]
        expired = time.monotonic() - WATCH_FOR_S
        for key, watch in list(watches.items()):
            landed = watch.repair_offset
            if (
                landed is None
                or not any(offset >= landed for offset, _, _ in watch.seen)
                or not caught_up(watch.partition)
            ):
                if watch.started < expired:
                    del watches[key]
                continue
            del watches[key]
            primary = [(o, deleted) for o, deleted, repair in watch.seen if not repair]
            before = [(o, deleted) for o, deleted in primary if o < landed]
            if not before or not before[-1][1]:
                continue  # the last record before the repair was no deletion
            if any(o > landed for o, _ in primary):
                continue  # set or deleted again after the repair: nothing to restore
            repairs = {o for o, _, repair in watch.seen if repair and o > landed}
            state = store.get(watch.grain)
            if state is None or (state.offset != landed and state.offset not in repairs):
                continue  # deleted or set again after the repair: nothing to restore
            await self._restore(watch.grain, watch.partition, before[-1][0], landed)


def _repair(record: Any) -> bool:
    """Whether a consumer record carries the repair header."""
    return any(name == REPAIR_HEADER for name, _ in getattr(record, "headers", None) or ())
