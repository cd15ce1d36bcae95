"""Event-loop stall watchdog: a task that sleeps a short interval and measures how late it
wakes up. A late wake-up means something ran on the loop without yielding (a RocksDB call, a
wipe, a big fold) — during which no heartbeat, commit or fetch could run.

A stall has three possible parts, and the report tells them apart so that an operator knows
whether to look at the code or at the machine:

* on the CPU: the loop thread's own work (its CPU time over the interval);
* waiting for a core: the thread was runnable but other threads (RocksDB's compactions, the
  broker, other processes) held the cores — the run-queue wait from Linux's
  ``/proc/thread-self/schedstat`` (not counted where that file does not exist);
* the rest: blocked in the kernel (I/O, a lock, a page fault served from disk).

While a stall is under way, a small thread looks at the loop thread's Python stack, so the
report names where the loop was (``in apply (store.py:…) < _process (worker.py:…) ...``). It
needs the GIL for that: a C call holding the GIL is seen only after it returns, at whatever line
runs next. So callers of such calls (store.py's RocksDB calls) note the long ones with
:func:`note_blocking_call`, and a stall names the longest noted call within it first (``in a
45 ms RocksDB batch write, then apply (store.py:930) < ...``). The garbage
collector is noted the same way while a watchdog runs (``gc.callbacks``): a collection holds
the GIL too, and its pause lands on whatever line allocated last."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final

log = logging.getLogger(__name__)

INTERVAL_S: Final = 0.05
REPORT_OVER_S: Final = 0.1  # stalls longer than this are logged when they end
_SCHEDSTAT: Final = "/proc/thread-self/schedstat"
_FRAMES_SHOWN: Final = 4
NOTE_CALLS_OVER_S: Final = 0.02  # shorter calls cannot make a reported stall by themselves
# (ended, what, seconds) of recent long calls, monotonic time; appended by the loop thread
_noted_calls: deque[tuple[float, str, float]] = deque(maxlen=32)


def note_blocking_call(what: str, started: float) -> None:
    """Note a call that held the GIL since ``started`` (``time.monotonic()`` before it), if it
    took long enough to matter: the stack sampler cannot look inside it."""
    ended = time.monotonic()
    if ended - started >= NOTE_CALLS_OVER_S:
        _noted_calls.append((ended, what, ended - started))


class _CollectionTimer:
    """A ``gc.callbacks`` entry noting each long collection as a blocking call."""

    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.monotonic()
        elif self.started:
            note_blocking_call(
                f"garbage collection (generation {info['generation']})", self.started
            )
            self.started = 0.0


def longest_noted_call(since: float) -> tuple[str, float] | None:
    """The longest call noted as ending after ``since`` (monotonic): (what, seconds)."""
    calls = [(seconds, what) for ended, what, seconds in list(_noted_calls) if ended > since]
    if not calls:
        return None
    seconds, what = max(calls)
    return what, seconds


def run_queue_wait_s() -> float | None:
    """Seconds the calling thread has waited for a core since it started (None: unknown)."""
    try:
        with open(_SCHEDSTAT) as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def describe_frames(frame: FrameType | None) -> str:
    """The innermost frames of a stack, innermost first: ``func (file.py:line) < ...``."""
    shown: list[str] = []
    while frame is not None and len(shown) < _FRAMES_SHOWN:
        code = frame.f_code
        shown.append(f"{code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})")
        frame = frame.f_back
    return " < ".join(shown)


class _StackSampler:
    """A daemon thread that records where the loop thread is whenever the watchdog's last
    wake-up is more than ``after_s`` overdue."""

    def __init__(self, loop_thread_id: int, after_s: float, period_s: float) -> None:
        self.loop_thread_id = loop_thread_id
        self.after_s = after_s
        self.period_s = period_s
        self.due = time.monotonic()  # when the watchdog should wake next (set by it)
        self.where: str | None = None  # where the loop was when the current stall was seen
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-stall-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stopped.wait(self.period_s):
            # the first look of a stall: where the loop got stuck (a later one may already
            # show it back in select, the stall's end)
            if self.where is None and time.monotonic() - self.due > self.after_s:
                frame = sys._current_frames().get(self.loop_thread_id)
                if frame is not None:
                    self.where = describe_frames(frame)

    def take(self) -> str | None:
        where, self.where = self.where, None
        return where


class LoopWatchdog:
    def __init__(
        self,
        on_stall: Callable[[float], None] | None = None,
        interval_s: float = INTERVAL_S,
        report_over_s: float = REPORT_OVER_S,
        sample_stacks: bool = True,
    ) -> None:
        self.interval_s = interval_s
        self.report_over_s = report_over_s
        self.longest_s = 0.0
        self.longest_on_cpu_s = 0.0
        self.longest_waiting_for_core_s = 0.0
        self.longest_where: str | None = None  # where the loop was in the longest stall
        self.stalls_reported = 0
        self._on_stall = on_stall
        self._sample_stacks = sample_stacks
        self._sampler: _StackSampler | None = None
        self._collections = _CollectionTimer()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            gc.callbacks.append(self._collections)
            if self._sample_stacks:
                self._sampler = _StackSampler(
                    threading.get_ident(), self.report_over_s / 2, self.report_over_s / 5
                )
                self._sampler.start()
            self._task = asyncio.create_task(self._run(), name="loop-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._collections)
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    async def _run(self) -> None:
        while True:
            started, cpu_started, wait_started = (
                time.monotonic(),
                time.thread_time(),
                run_queue_wait_s(),
            )
            if self._sampler is not None:
                self._sampler.due = started + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag_s = time.monotonic() - started - self.interval_s
            wait_now = run_queue_wait_s()
            waited = None if wait_now is None or wait_started is None else wait_now - wait_started
            where = self._sampler.take() if self._sampler is not None else None
            # a stall shorter than a noted call cannot contain it; a shorter one may still
            # become the longest, which the exit line names
            call = longest_noted_call(started) if lag_s >= NOTE_CALLS_OVER_S else None
            if call is not None:
                what, seconds = call
                where = f"a {seconds * 1000:.0f} ms {what}" + (f", then {where}" if where else "")
            self.observe(lag_s, time.thread_time() - cpu_started, waited, where)

    def observe(
        self,
        lag_s: float,
        cpu_s: float | None = None,
        waiting_for_core_s: float | None = None,
        where: str | None = None,
    ) -> None:
        """``cpu_s``: the loop thread's CPU time over the interval (None: unknown, counted as
        all of the stall); ``waiting_for_core_s``: its run-queue wait over the interval
        (None: unknown); ``where``: the loop's stack seen during the stall."""
        lag_s = max(0.0, lag_s)
        on_cpu_s = lag_s if cpu_s is None else min(lag_s, max(0.0, cpu_s))
        waiting_s = (
            None
            if waiting_for_core_s is None
            else min(lag_s - on_cpu_s, max(0.0, waiting_for_core_s))
        )
        self.longest_on_cpu_s = max(self.longest_on_cpu_s, on_cpu_s)
        if waiting_s is not None:
            self.longest_waiting_for_core_s = max(self.longest_waiting_for_core_s, waiting_s)
        if lag_s > self.longest_s:
            self.longest_s = lag_s
            self.longest_where = where
            if self._on_stall is not None:
                self._on_stall(lag_s)
        if lag_s > self.report_over_s:
            self.stalls_reported += 1
            waited = "" if waiting_s is None else f", {waiting_s * 1000:.0f} ms waiting for a core"
            log.warning(
                "event loop stalled for %.0f ms, %.0f ms of it on the CPU%s (longest so far "
                "%.0f ms)%s",
                lag_s * 1000,
                on_cpu_s * 1000,
                waited,
                self.longest_s * 1000,
                f"; in {where}" if where else "",
            )
