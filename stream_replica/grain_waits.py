"""Reads waiting for a grain to be written (``?min_sequence=N&wait_ms=T``): woken by the write
of that grain, not by polling the store. The writer (the worker's loop, the standby follower)
says which grains each write batch held; a waiting read re-checks the store only then, or at
the latest every ``RECHECK_S`` (a revocation or a wipe changes the store without a write of
that grain). A read of a grain the copy does not hold, while the copy is a few records behind,
waits for the next write batch of any grain instead (:meth:`GrainWaits.wait_any`). With no
read waiting, a write costs one truth test of an empty dict."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

from stream_replica.contract import GrainId

RECHECK_S: Final = 0.5


class GrainWaits:
    def __init__(self) -> None:
        self._waiting: dict[GrainId, list[asyncio.Future[None]]] = {}
        self._any: list[asyncio.Future[None]] = []  # woken by the next write batch

    def __bool__(self) -> bool:
        return bool(self._waiting) or bool(self._any)

    async def wait(self, grain: GrainId, timeout_s: float) -> None:
        """Until ``grain`` is written, ``timeout_s`` passes or RECHECK_S, whichever is first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(grain, [])
        waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, max(0.0, min(timeout_s, RECHECK_S)))
        except TimeoutError:
            pass
        finally:
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[grain]

    async def wait_any(self, timeout_s: float) -> None:
        """Until the next write batch (of any grain), ``timeout_s`` passes or RECHECK_S."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._any.append(waiter)
        try:
            await asyncio.wait_for(waiter, max(0.0, min(timeout_s, RECHECK_S)))
        except TimeoutError:
            pass
        finally:
            self._any.remove(waiter)

    def written(self, grains: Iterable[GrainId]) -> None:
        """A write batch holding ``grains`` is in the store: wake the reads waiting on them,
        and those waiting for any write."""
        for waiter in self._any:
            if not waiter.done():
                waiter.set_result(None)
        waiting = self._waiting
        for grain in grains:
            for waiter in waiting.get(grain, ()):
                if not waiter.done():
                    waiter.set_result(None)
