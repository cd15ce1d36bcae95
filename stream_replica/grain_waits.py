"""Reads waiting for a grain to be written (``?min_sequence=N&wait_ms=T``): woken by the write
of that grain, not by polling the store. The writer (the worker's loop, the standby follower)
says which grains each write batch held; a waiting read re-checks the store only then, or at
the latest every ``RECHECK_S`` (a revocation or a wipe changes the store without a write of
that grain). With no read waiting, a write costs one truth test of an empty dict."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

from stream_replica.contract import GrainId

RECHECK_S: Final = 0.5


class GrainWaits:
    def __init__(self) -> None:
        self._waiting: dict[GrainId, list[asyncio.Future[None]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

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

    def written(self, grains: Iterable[GrainId]) -> None:
        """A write batch holding ``grains`` is in the store: wake the reads waiting on them."""
        waiting = self._waiting
        for grain in grains:
            for waiter in waiting.get(grain, ()):
                if not waiter.done():
                    waiter.set_result(None)
