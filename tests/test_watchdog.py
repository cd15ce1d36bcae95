"""The loop-stall watchdog sees a synchronous step that blocks the event loop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from stream_replica.metrics import Metrics
from stream_replica.watchdog import LoopWatchdog


async def test_a_blocking_step_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("t")
    watchdog = LoopWatchdog(metrics.loop_stall_max.set, interval_s=0.01, report_over_s=0.1)
    watchdog.start()
    await asyncio.sleep(0.05)  # the watchdog is sleeping its interval
    with caplog.at_level(logging.WARNING, logger="stream_replica.watchdog"):
        time.sleep(0.3)  # noqa: ASYNC251 - the synchronous step under test
        await asyncio.sleep(0.05)
    await watchdog.stop()
    # it cannot wake before the blocking step ends: at least 0.3 s minus its interval late
    assert watchdog.longest_s >= 0.29
    assert metrics.loop_stall_max._value.get() == watchdog.longest_s
    assert watchdog.stalls_reported >= 1
    assert "event loop stalled for" in caplog.text
    # time.sleep stalls the loop without using the CPU: waiting, not our own work
    assert watchdog.longest_on_cpu_s < watchdog.longest_s


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
