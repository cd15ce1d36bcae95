"""The loop-stall watchdog sees a synchronous step that blocks the event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
import threading
import time

import pytest

from stream_replica.metrics import Metrics
from stream_replica.watchdog import (
    LoopWatchdog,
    longest_noted_call,
    note_blocking_call,
    run_queue_wait_s,
)


def _hold_the_loop_waiting(seconds: float) -> None:
    time.sleep(seconds)  # the synchronous step under test (off the CPU)


def _hold_the_loop_computing(seconds: float) -> int:
    deadline, spins = time.thread_time() + seconds, 0
    while time.thread_time() < deadline:
        spins += 1
    return spins


async def test_a_blocking_step_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("t")
    watchdog = LoopWatchdog(metrics.loop_stall_max.set, interval_s=0.01, report_over_s=0.1)
    watchdog.start()
    await asyncio.sleep(0.05)  # the watchdog is sleeping its interval
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        _hold_the_loop_waiting(0.3)
        await asyncio.sleep(0.05)
    await watchdog.stop()
    # it cannot wake before the blocking step ends: at least 0.3 s minus its interval late
    assert watchdog.longest_s >= 0.29
    assert metrics.loop_stall_max._value.get() == watchdog.longest_s
    assert watchdog.stalls_reported >= 1
    assert "event loop stalled for" in caplog.text
    # time.sleep stalls the loop without using the CPU: waiting, not our own work
    assert watchdog.longest_on_cpu_s < watchdog.longest_s
    # the sampler thread saw the loop inside the step, and the report names it
    assert watchdog.longest_where is not None
    assert watchdog.longest_where.startswith("_hold_the_loop_waiting (test_watchdog.py:")
    assert "; in _hold_the_loop_waiting (test_watchdog.py:" in caplog.text


async def test_a_computing_step_is_located_too(caplog: pytest.LogCaptureFixture) -> None:
    """Python code holding the loop gives the GIL up every few ms, so the sampler sees it at
    work: the report names the function, and (Linux) the stall is mostly on the CPU."""
    watchdog = LoopWatchdog(interval_s=0.01, report_over_s=0.1)
    watchdog.start()
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        _hold_the_loop_computing(0.3)
        await asyncio.sleep(0.05)
    await watchdog.stop()
    assert watchdog.longest_where is not None
    assert "_hold_the_loop_computing (test_watchdog.py:" in watchdog.longest_where
    assert watchdog.longest_on_cpu_s >= 0.2


async def test_a_long_call_its_caller_noted_is_named_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A C call holding the GIL hides from the sampler (it sees the line after); store.py
    notes its RocksDB calls, and a stall names the longest noted call within it."""
    watchdog = LoopWatchdog(interval_s=0.01, report_over_s=0.1)
    watchdog.start()
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        started = time.monotonic()
        _hold_the_loop_waiting(0.2)
        note_blocking_call("test C call", started)
        await asyncio.sleep(0.05)
    await watchdog.stop()
    assert watchdog.longest_where is not None
    assert re.match(r"a \d+ ms test C call, then _hold_the_loop_waiting", watchdog.longest_where)
    assert "; in a " in caplog.text and " ms test C call, then " in caplog.text


async def test_a_long_garbage_collection_is_named_even_in_a_stall_under_the_log_limit() -> None:
    """A collection holds the GIL like a C call; the watchdog times collections while it runs,
    and the longest stall names the call within it even when it is too short to be logged."""
    callbacks_before = len(gc.callbacks)
    watchdog = LoopWatchdog(interval_s=0.01, report_over_s=10.0)
    watchdog.start()
    assert len(gc.callbacks) == callbacks_before + 1
    await asyncio.sleep(0.05)
    tracked = [[] for _ in range(2_000_000)]  # containers the collector must walk
    started = time.monotonic()
    gc.collect()
    took = time.monotonic() - started
    await asyncio.sleep(0.05)
    await watchdog.stop()
    del tracked
    assert len(gc.callbacks) == callbacks_before
    assert took >= 0.03, f"a full collection of 2M lists took only {took * 1000:.0f} ms"
    assert watchdog.stalls_reported == 0
    assert watchdog.longest_where is not None
    assert re.match(r"a \d+ ms garbage collection \(generation 2\)", watchdog.longest_where)


def test_only_long_calls_are_noted() -> None:
    before = time.monotonic()
    note_blocking_call("quick", time.monotonic())
    assert longest_noted_call(before) is None
    note_blocking_call("slow", time.monotonic() - 0.05)
    noted = longest_noted_call(before)
    assert noted is not None and noted[0] == "slow" and noted[1] >= 0.05


def test_the_stack_sampler_thread_ends_with_the_watchdog() -> None:
    async def run() -> None:
        watchdog = LoopWatchdog(interval_s=0.01)
        watchdog.start()
        assert any(t.name == "loop-stall-sampler" for t in threading.enumerate())
        await watchdog.stop()

    asyncio.run(run())
    assert not any(t.name == "loop-stall-sampler" for t in threading.enumerate())


def test_small_lags_are_kept_but_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog(report_over_s=0.1)
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        watchdog.observe(0.02)
        watchdog.observe(-0.001)
    assert watchdog.longest_s == 0.02 and watchdog.stalls_reported == 0
    assert caplog.text == ""


def test_the_on_cpu_part_of_a_stall_is_what_the_loop_thread_spent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = LoopWatchdog(report_over_s=0.1)
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        watchdog.observe(0.3, cpu_s=0.04)  # descheduled: the machine was busy
        watchdog.observe(0.15, cpu_s=0.2)  # our own work: all of it on the CPU
    assert watchdog.longest_s == 0.3 and watchdog.longest_on_cpu_s == 0.15
    assert "stalled for 300 ms, 40 ms of it on the CPU" in caplog.text


def test_waiting_for_a_core_is_told_apart_from_being_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = LoopWatchdog(report_over_s=0.1)
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        watchdog.observe(0.3, cpu_s=0.04, waiting_for_core_s=0.2)
        # a run-queue wait longer than the off-CPU part is clamped to it
        watchdog.observe(0.12, cpu_s=0.1, waiting_for_core_s=0.5)
    assert "300 ms, 40 ms of it on the CPU, 200 ms waiting for a core" in caplog.text
    assert "120 ms, 100 ms of it on the CPU, 20 ms waiting for a core" in caplog.text
    assert watchdog.longest_waiting_for_core_s == pytest.approx(0.2)


def test_the_run_queue_wait_is_read_where_linux_tells_it() -> None:
    waited = run_queue_wait_s()
    if sys.platform.startswith("linux"):
        assert waited is not None and waited >= 0.0
    else:
        assert waited is None
