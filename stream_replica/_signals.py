"""Stop signals for the worker, handled with plain ``signal.signal`` handlers.

The same handler is installed before the heavy imports (so a worker signalled while starting
up still stops cleanly) and stays for the whole run; it wakes the event loop through
``call_soon_threadsafe`` rather than asyncio's wakeup-fd signal machinery. A second signal
exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from stream_replica.logs import fatal_line

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
received: list[int] = []
_on_stop: Callable[[int], None] | None = None


def _handle(signum: int, frame: FrameType | None) -> None:
    received.append(signum)
    if len(received) > 1:
        # (a JSON line with --log-format json; Python runs this handler between bytecodes)
        line = fatal_line("second signal, exiting at once") + "\n"
        os.write(sys.stderr.fileno(), line.encode())
        os._exit(128 + signum)
    if _on_stop is not None:
        _on_stop(signum)


def install() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)


def on_stop(callback: Callable[[int], None]) -> None:
    """Call ``callback(signum)`` on the first stop signal (now, if one already came)."""
    global _on_stop
    _on_stop = callback
    if received:
        callback(received[0])
