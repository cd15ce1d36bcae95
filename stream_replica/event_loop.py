"""The event loop the command line runs its commands on (``--event-loop``).

``uvloop``: libuv's loop under the same asyncio API. It does the loop's own work (scheduling
callbacks, polling sockets, transports) in C: part of the ~16 % of a catch-up outside the
worker's timed stages (docs/bench.md). `stream-replica run` on the bench's main topic, 9
interleaved runs each: 173,549 records/s on asyncio's loop, 179,649 on uvloop (medians;
docs/performance-history.md, round 10). ``asyncio``: the standard library's loop, to rule
the loop out while diagnosing. ``auto`` (the default): uvloop where it is installed (the
package depends on it wherever uvloop ships wheels, i.e. not on Windows), asyncio's loop
otherwise; the worker's start-up line names the one it got.

Programs that embed the worker (:class:`~stream_replica.worker.ReplicaWorker`) run it on
whatever loop they run; nothing here is global.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any, Final, TypeVar

from stream_replica.errors import ConfigurationError

T = TypeVar("T")

LOOPS: Final = ("auto", "uvloop", "asyncio")
DEFAULT: Final = "auto"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for ``asyncio.Runner`` (None: asyncio's default loop)."""
    if name not in LOOPS:
        raise ConfigurationError(
            f"event loop {name!r} (--event-loop or STREAM_REPLICA_EVENT_LOOP): choose one of "
            + ", ".join(LOOPS)
        )
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if name == "auto":
            return None
        raise ConfigurationError(
            f"--event-loop uvloop: uvloop cannot be imported ({exc}); "
            "install it (pip install uvloop) or pass --event-loop asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], name: str = DEFAULT) -> T:
    """``asyncio.run(main)`` on the named loop."""
    try:
        factory = loop_factory(name)
    except ConfigurationError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def describe() -> str:
    """The running loop, for the worker's start-up log."""
    loop = asyncio.get_running_loop()
    package = type(loop).__module__.partition(".")[0]
    if package == "uvloop":
        return f"event loop: uvloop {version('uvloop')}"
    return f"event loop: {package} ({type(loop).__name__})"
