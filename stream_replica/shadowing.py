"""Shadowed states seen by the active loop (README "Compaction: shadowing, repair, audit"):
one rate-limited warning per grain, and with ``--repair-shadowed`` when to repair (this
poll's grains of caught-up partitions at once, the others at a periodic sweep). The
repairing itself is repair.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer

from stream_replica import positions
from stream_replica.fold import FoldResult
from stream_replica.lag import LagTracker
from stream_replica.logs import RateLimitedLog
from stream_replica.positions import Positions
from stream_replica.repair import ShadowRepairer
from stream_replica.store import ReplicaStore

# The worker's logger: these lines have always been the worker's.
log = logging.getLogger("stream_replica.worker")
# Like refused records (dead_letters.py), shadowing must not flood the log: it is logged once
# per grain, rate-limited: a rebuild meets every shadowed grain again (2,341 lines in the
# bench's 500,000-record catch-up, 3 % of the loop thread), and the store keeps them all.
shadowings = RateLimitedLog(
    log,
    burst=20,
    interval_s=10.0,
    summary="`stream-replica stats` counts the grains shadowed now and `stream-replica audit` "
    "lists each",
)
REPAIR_SWEEP_INTERVAL_S: Final = 5.0


class ShadowRepairs:
    def __init__(
        self,
        topic: str,
        store: ReplicaStore,
        lock: asyncio.Lock,
        positions: Positions,
        lag: LagTracker,
    ) -> None:
        self.topic = topic
        self._store = store
        self._lock = lock
        self._positions = positions
        self._lag = lag
        self._last_sweep = 0.0

    async def sweep(self, consumer: AIOKafkaConsumer, repairer: ShadowRepairer) -> None:
        """Now and then, repair shadowed grains of caught-up partitions (also those whose
        repair was lost to a crash or a failed send)."""
        now = time.monotonic()
        if now - self._last_sweep < REPAIR_SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        async with self._lock:
            owned = set(positions.owned(consumer, self.topic))
            await repairer.sweep(
                self._store,
                lambda p: (
                    p in owned
                    and self._lag.is_caught_up(consumer, p, self._positions.next.get(p, -1))
                ),
                self._positions.next,
            )

    async def repair_now(
        self, consumer: AIOKafkaConsumer, repairer: ShadowRepairer, result: FoldResult
    ) -> None:
        """Repair this poll's shadowed grains in caught-up partitions at once; the others wait
        for the sweep (repairing while behind would re-publish states the log has passed)."""
        items = []
        for grain in {s.grain for s in result.shadowed}:
            state = result.changes.get(grain)
            if (
                state is not None
                and state.shadowed
                and self._lag.is_caught_up(
                    consumer, state.partition, result.next_offsets[state.partition]
                )
            ):
                items.append((grain, state))
        if items:  # (counted as each lands: repairer.on_repaired)
            await repairer.repair(sorted(items, key=lambda i: i[0]), result.next_offsets)


def log_shadowing(topic: str, result: FoldResult, repairing: bool) -> None:
    """One warning per grain when its state becomes shadowed (not per shadowing record),
    rate-limited."""
    for shadowing in result.shadowed:
        if not shadowing.first:
            continue
        grain = shadowing.grain
        shadowings.log(
            logging.WARNING,
            "shadowed",
            "grain %s/%s: its state (%s/%d/%d) is shadowed by the %s record at offset %d: "
            "once the log is compacted, a rebuild will not restore it%s",
            grain[0],
            grain[1],
            topic,
            shadowing.partition,
            shadowing.state_offset,
            shadowing.kind,
            shadowing.by_offset,
            "; repairing" if repairing else "; run with --repair-shadowed to re-publish it",
            topic=topic,
            partition=shadowing.partition,
            offset=shadowing.by_offset,
            state_offset=shadowing.state_offset,
            grain_type=grain[0],
            grain_key=grain[1],
        )
