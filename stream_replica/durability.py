"""When the store writes without RocksDB's write-ahead log: while the worker is far behind.

A worker catching up (a build, a rebuild, a takeover, a backlog) writes without the WAL,
like Kafka Streams' RocksDB stores, whose changelog topic plays the part Kafka's log plays
here: every record it would redo after a crash is still in Kafka. Writes then persist at
memtable flushes, which keep whole batches in write order, so a killed worker reopens at an
earlier checkpoint holding the grains it had then, and reads the rest again (as after an
OS crash with the WAL on). The group's committed offset may be ahead of that checkpoint;
positions come from the store, and commits resume past the group's offset. What it saves:
computing the WAL's checksum and writing every batch twice (a catch-up of the bench's
main topic went 13-15 % faster, of 10 KiB values ~30 %).

While the WAL is off, the offsets committed to the group are those the last flush made
durable (:class:`offsets.CommitBook`), so the group's offset is never ahead of what the store
keeps through a kill, as Kafka Streams flushes its stores before committing.

A worker within ``off_above_lag / 2`` records of the end writes through the WAL again (after
a flush of what it wrote without), so a caught-up worker killed at any moment loses nothing,
and a ``ReplicaReader`` in another process (which sees flushed data and the WAL) sees every
write. While the WAL is off a flush runs every ``FLUSH_INTERVAL_S``: that bounds what a kill
makes the worker read again, and how old a reader's view of a slow catch-up can be.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from stream_replica.offsets import CommitBook
from stream_replica.store import ReplicaStore

log = logging.getLogger(__name__)

# While the WAL is off, flush the memtables at least this often: it bounds what a kill makes
# the worker read again, and how far the group's committed offsets (which wait for a flush)
# trail the store: tools that show a group's lag read those. (A fast catch-up fills the
# memtables several times a second anyway; with 10 s, a 3 s catch-up committed nothing until
# its end, and the scale bench's second worker, started at 20 % committed, never joined; with
# 1 s it joined late. Flushing every 0.25 s cost nothing measurable: 194,971 vs 176,089
# records/s with 1 s, medians of 4 interleaved.)
FLUSH_INTERVAL_S: Final = 0.25
# After turning the WAL on, keep it on at least this long: a worker near the threshold (a
# burst of production) does not flip at every lag report.
MIN_WAL_ON_S: Final = 10.0


def records_behind(lags: Mapping[int, int]) -> int:
    """Records behind over the served partitions (a lag of -1, not known yet, counts 0)."""
    return sum(lag for lag in lags.values() if lag > 0)


@dataclass(slots=True)
class WalPolicy:
    """Whether the store should write through the WAL, from the records behind (pure)."""

    off_above_lag: int  # 0: the WAL is never turned off
    wal_on: bool = True
    turned_on_at: float = -math.inf
    last_flush: float = field(default_factory=time.monotonic)

    def wanted(self, lags: Mapping[int, int], now: float) -> bool:
        """The WAL state for these lags (records behind per served partition, -1: not known
        yet, not counted)."""
        if self.off_above_lag <= 0:
            return True
        behind = records_behind(lags)
        if self.wal_on:
            return behind <= self.off_above_lag or now - self.turned_on_at < MIN_WAL_ON_S
        return behind <= self.off_above_lag // 2

    def flush_due(self, now: float) -> bool:
        return not self.wal_on and now - self.last_flush >= FLUSH_INTERVAL_S


class CatchUpDurability:
    """Applies :class:`WalPolicy` to a store: ``observe`` at each lag report (turns the WAL
    off at once, starts periodic flushes), ``settle`` from the loop when ``due`` (turning it
    on awaits a flush), ``close`` before the store closes."""

    def __init__(
        self,
        store: ReplicaStore,
        book: CommitBook,
        off_above_lag: int,
        report: Callable[[float], None],
    ) -> None:
        self._store = store
        self._book = book  # commits only what a flush made durable while the WAL is off
        self._policy = WalPolicy(off_above_lag, wal_on=store.wal_on)
        self._report = report  # the gauge: 1 with the WAL on
        self._flush_task: asyncio.Task[None] | None = None
        self.due = False  # turning the WAL on is due: the loop awaits settle()
        report(1.0 if store.wal_on else 0.0)

    @property
    def wal_on(self) -> bool:
        return self._policy.wal_on

    def observe(self, lags: Mapping[int, int]) -> None:
        now = time.monotonic()
        policy = self._policy
        wanted = policy.wanted(lags, now)
        if wanted == policy.wal_on:
            self.due = False
            if policy.flush_due(now) and self._flush_task is None:
                policy.last_flush = now
                self._flush_task = asyncio.create_task(self._flush())
            return
        if wanted:
            self.due = True
            return
        self._store.write_without_wal()
        self._book.hold()
        policy.wal_on = False
        policy.last_flush = now
        self._report(0.0)
        log.info(
            "%d records behind: writing without RocksDB's WAL until within %d (a kill now "
            "re-reads from the last memtable flush)",
            records_behind(lags),
            policy.off_above_lag // 2,
        )

    async def settle(self, why: str = "caught up") -> None:
        """Turn the WAL on (after persisting what was written without it); ``why`` for the
        log line."""
        self.due = False
        if self._policy.wal_on:
            return
        await self._await_flush_task()
        took = await self._store.write_with_wal()
        self._book.release()
        self._policy.wal_on = True
        self._policy.turned_on_at = time.monotonic()
        self._report(1.0)
        log.info("%s: writing through RocksDB's WAL again (flushed in %.0f ms)", why, took * 1000)

    async def persist(self) -> None:
        """Make what was written durable, so that it can be committed (a revocation)."""
        if not self._policy.wal_on:
            await self._await_flush_task()
            await self._flush_and_release_offsets()

    async def close(self) -> None:
        """Persist everything before the store closes (then its close has nothing to flush on
        the loop)."""
        await self.settle("closing the store")

    async def _flush_and_release_offsets(self) -> None:
        flushing = self._book.flushing()  # all written before the flush starts: it persists them
        await self._store.flush_async()
        self._policy.last_flush = time.monotonic()
        self._book.persisted(flushing)

    async def _flush(self) -> None:
        try:
            await self._flush_and_release_offsets()
        except Exception as exc:  # the next write reports a broken store; a flush can wait
            log.warning("periodic RocksDB flush failed: %s", exc)
        finally:
            self._flush_task = None

    async def _await_flush_task(self) -> None:
        task = self._flush_task
        if task is not None:
            await asyncio.shield(task)
