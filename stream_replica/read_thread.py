"""A thread for the store's RocksDB multi-gets, so that the event loop runs on during them.

rocksdict lets go of the GIL while RocksDB looks keys up, so a read on this thread costs the
loop only the hand-over. Cold keys of a 10M-grain store took 35-77 ms for a few keys: on the
loop, every other task (heartbeats, commits, HTTP reads) waited that out.

One long-lived thread fed by a ``queue.SimpleQueue`` rather than a ThreadPoolExecutor: the
hand-over is what a read costs here (~65 µs of CPU on this box against ~80 through the
executor, whose locks the loop can also end up waiting on while the thread waits for a core).

That hand-over costs more than a warm read (a 12-key multi-get from the block cache: ~20 µs),
so ReadPlacement keeps reads on the loop while they are fast and sends them to the thread
from the first slow one on, until reads there have been fast for a while again.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

_In = TypeVar("_In")
_Out = TypeVar("_Out")

# (loop, future, function, argument); None stops the thread
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[Any], Any], Any]


class ReadThread(Generic[_In, _Out]):
    """Runs ``read`` calls on one thread, in the order they were asked for."""

    def __init__(self, read: Callable[[_In], _Out], name: str) -> None:
        self._read = read
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def read(self, argument: _In) -> _Out:
        """``read(argument)`` on the thread. A cancelled caller leaves the read to finish
        there (its result is dropped); close() waits for it."""
        if self._thread is None:
            # daemon: a store never closed must not keep the interpreter from exiting
            self._thread = threading.Thread(
                target=_serve, args=(self._jobs,), name=self._name, daemon=True
            )
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Out] = loop.create_future()
        self._jobs.put((loop, future, self._read, argument))
        return await future

    def close(self) -> None:
        """Wait for every read asked for, then end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        loop, future, read, argument = job
        try:
            outcome, failed = read(argument), False
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome, failed = exc, True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, future, outcome, failed)


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():  # the caller was cancelled
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass
class ReadPlacement:
    """Where the next read runs. On the loop while reads take at most ``slow_s``; a slower
    one sends reads to the thread, and ``fast_in_a_row`` reads there of at most ``fast_s``
    each bring them back. Fed with each read's own duration (on whichever thread it ran)."""

    slow_s: float = 0.002
    fast_s: float = 0.0005
    fast_in_a_row: int = 100
    on_thread: bool = False
    _fast_reads: int = 0
    moves_to_thread: int = 0  # how often a slow read sent reads to the thread

    def took(self, seconds: float) -> None:
        if not self.on_thread:
            if seconds > self.slow_s:
                self.on_thread, self._fast_reads = True, 0
                self.moves_to_thread += 1
        elif seconds > self.fast_s:
            self._fast_reads = 0
        else:
            self._fast_reads += 1
            if self._fast_reads >= self.fast_in_a_row:
                self.on_thread = False
