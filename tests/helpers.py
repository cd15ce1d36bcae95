"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

TopicFactory = Callable[..., Awaitable[str]]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def cli(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess (the way operators and scripts do)."""
    return subprocess.run(
        [sys.executable, "-m", "stream_replica", *args],
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 120),
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,
    )
