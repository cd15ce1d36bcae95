"""The HTTP load generator of the read benchmark: ``wrk`` (C, epoll, keep-alive), installed by
the bench itself when missing, driven by a small Lua script that spreads GETs over many paths.

A Python load generator would need most of a core to reach the rates we measure; wrk needs a
fraction of one, so the figures are the server's, not the client's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# One path per line in $READ_PATHS; each wrk thread walks them from its own offset, so all
# connections do not hammer the same key at once.
LUA = """\
local paths = {}
for line in io.lines(os.getenv("READ_PATHS")) do paths[#paths + 1] = line end
local i = 0
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("offset", counter * 7919)
end
init = function(args)
  i = offset or 0
end
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


class WrkMissing(RuntimeError):
    pass


def ensure_wrk() -> str:
    """The path of ``wrk``; installs the Debian package when missing and we are root with
    apt-get, else raises with how to install it."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is not None and os.geteuid() == 0:
        for command in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "wrk"]):
            subprocess.run(
                command,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        found = shutil.which("wrk")
        if found:
            return found
    raise WrkMissing(
        "the read benchmark needs wrk (HTTP load generator): install it with "
        "`apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`, or pass --skip-read"
    )


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    started_at: float  # wall clock (time.time()) when wrk was launched
    ended_at: float


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}: not understood")
    return float(match.group(1)) * UNIT_MS[match.group(2)]


def parse(output: str) -> tuple[int, float, float, float, float, int, int]:
    """(requests, seconds, requests/s, p50 ms, p99 ms, non-2xx, socket errors) from wrk's
    ``--latency`` report."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (done and rps and p50 and p99):
        raise ValueError(f"wrk output not understood: {output[-300:]!r}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return (
        int(done.group(1)),
        _ms(done.group(2) + done.group(3)) / 1000,
        float(rps.group(1)),
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        int(non_2xx.group(1)) if non_2xx else 0,
        sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_wrk(
    wrk: str,
    base_url: str,
    paths: list[str],
    seconds: float,
    connections: int,
    workdir: Path,
    threads: int = 1,
) -> WrkResult:
    """GETs over ``paths`` against ``base_url`` for ``seconds`` with ``connections``
    keep-alive connections (closed loop: each sends its next request when the last returns)."""
    if not paths:
        raise ValueError("run_wrk: no paths to read")
    paths_file = workdir / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    script = workdir / "spread.lua"
    script.write_text(LUA)
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
        "--latency", "--timeout", "5s", "-s", str(script), base_url,
    ]  # fmt: skip
    started = time.time()
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
        env={**os.environ, "READ_PATHS": str(paths_file)},
    )
    ended = time.time()
    if completed.returncode != 0:
        raise RuntimeError(f"wrk exited {completed.returncode}: {completed.stderr.strip()[-300:]}")
    requests, took, rps, p50, p99, non_2xx, errors = parse(completed.stdout)
    return WrkResult(requests, took, rps, p50, p99, non_2xx, errors, started, ended)
