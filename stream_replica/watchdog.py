"""Event-loop stall watchdog: a task that sleeps a short interval and measures how late it
wakes up. A late wake-up means something ran on the loop without yielding (a RocksDB call, a
wipe, a big fold) — during which no heartbeat, commit or fetch could run.

On a busy machine the process also waits for a core: the loop thread's CPU time over the same
interval says how much of a stall was our own work (``longest_on_cpu_s``: the largest
``min(stall, CPU time)`` seen) and how much was waiting to be scheduled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

INTERVAL_S: Final = 0.05
REPORT_OVER_S: Final = 0.1  # stalls longer than this are logged when they end


class LoopWatchdog:
    def __init__(
        self,
        on_stall: Callable[[float], None] | None = None,
        interval_s: float = INTERVAL_S,
        report_over_s: float = REPORT_OVER_S,
    ) -> None:
        self.interval_s = interval_s
        self.report_over_s = report_over_s
        self.longest_s = 0.0
        self.longest_on_cpu_s = 0.0
        self.stalls_reported = 0
        self._on_stall = on_stall
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            started, cpu_started = time.monotonic(), time.thread_time()
            await asyncio.sleep(self.interval_s)
            lag_s = time.monotonic() - started - self.interval_s
            self.observe(lag_s, time.thread_time() - cpu_started)

    def observe(self, lag_s: float, cpu_s: float | None = None) -> None:
        """``cpu_s``: the loop thread's CPU time over the interval (None: unknown, counted as
        all of the stall)."""
        lag_s = max(0.0, lag_s)
        on_cpu_s = lag_s if cpu_s is None else min(lag_s, max(0.0, cpu_s))
        self.longest_on_cpu_s = max(self.longest_on_cpu_s, on_cpu_s)
        if lag_s > self.longest_s:
            self.longest_s = lag_s
            if self._on_stall is not None:
                self._on_stall(lag_s)
        if lag_s > self.report_over_s:
            self.stalls_reported += 1
            log.warning(
                "event loop stalled for %.0f ms, %.0f ms of it on the CPU (longest so far %.0f ms)",
                lag_s * 1000,
                on_cpu_s * 1000,
                self.longest_s * 1000,
            )
