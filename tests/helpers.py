"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

TopicFactory = Callable[..., Awaitable[str]]
ROOT = Path(__file__).resolve().parent.parent
# One target dir for every cargo project in the repo (ignored by git), so a rerun is
# incremental and the rdkafka build is shared; CARGO_TARGET_DIR overrides it.
CARGO_TARGET_DIR = ROOT / ".cache" / "cargo-target"


def cargo_or_skip() -> str:
    """The cargo executable, or skip the test saying why."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed (these tests need a Rust toolchain with cargo)")
    return cargo


def cargo(project: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """Run ``cargo ARGS`` in ``project`` with the shared target dir; fail with cargo's output
    when it fails."""
    env = {**os.environ}
    env.setdefault("CARGO_TARGET_DIR", str(CARGO_TARGET_DIR))
    done = subprocess.run(
        [cargo_or_skip(), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cargo {' '.join(args)} in {project.relative_to(ROOT)} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return done


def cargo_target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", str(CARGO_TARGET_DIR)))


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


def worker_command(bootstrap: str, topic: str, group: str, db: object, *extra: str) -> list[str]:
    """``stream-replica run`` as a subprocess command line."""
    return [
        sys.executable, "-m", "stream_replica", "run",
        "--bootstrap-servers", bootstrap, "--topic", topic, "--group", group, "--db", str(db),
        *extra,
    ]  # fmt: skip


def read_until(process: subprocess.Popen[str], text: str) -> None:
    """Read the process's stderr until a line contains ``text`` (fail if it exits first)."""
    assert process.stderr is not None
    for line in process.stderr:
        if text in line:
            return
    raise AssertionError(f"process exited before printing {text!r}")
