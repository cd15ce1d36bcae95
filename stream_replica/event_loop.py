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
whatever loop they run; nothing here is global (so they do not get the TLS close fix nor the
handler of aiokafka's unobserved task errors below).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any, Final, TypeVar

from aiokafka.errors import KafkaError

from stream_replica.errors import ConfigurationError

log = logging.getLogger("stream_replica")

T = TypeVar("T")

LOOPS: Final = ("auto", "uvloop", "asyncio")
DEFAULT: Final = "auto"

# uvloop stops reading while it closes a TLS connection (MagicStack/uvloop#471, still so in
# 0.23): a Kafka response arriving meanwhile (a consumer's fetch in flight at stop) leaves the
# close_notify exchange waiting for the whole ssl_shutdown_timeout, 30 s by default. Stopping
# a client over SSL/SASL_SSL took 30 s in about half of the runs (`audit` 0.6 s or 30.1 s);
# with this, at most this long. A peer that answers close_notify at all does so in one
# round trip.
SSL_SHUTDOWN_TIMEOUT_S: Final = 2.0


def _uvloop_class() -> type[asyncio.AbstractEventLoop]:
    import uvloop

    class Loop(uvloop.Loop):
        """uvloop's loop, its TLS connections' and servers' close bounded (see above)."""

        async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl"):
                kwargs.setdefault("ssl_shutdown_timeout", SSL_SHUTDOWN_TIMEOUT_S)
            return await super().create_connection(*args, **kwargs)

        async def create_server(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl"):
                kwargs.setdefault("ssl_shutdown_timeout", SSL_SHUTDOWN_TIMEOUT_S)
            return await super().create_server(*args, **kwargs)

    return Loop


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
        return _uvloop_class()
    except ImportError as exc:
        if name == "auto":
            return None
        raise ConfigurationError(
            f"--event-loop uvloop: uvloop cannot be imported ({exc}); "
            "install it (pip install uvloop) or pass --event-loop asyncio"
        ) from None


def run(main: Coroutine[Any, Any, T], name: str = DEFAULT) -> T:
    """``asyncio.run(main)`` on the named loop."""
    try:
        factory = loop_factory(name)
    except ConfigurationError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_exception_handler(_unobserved_library_errors)
        return runner.run(main)


def _unobserved_library_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiokafka's commit runs in a task it shields from cancellation: when a commit times
    out (the group coordinator down), that task fails later with nobody to see it, and
    asyncio logged "Task exception was never retrieved" with a traceback, an ERROR for a
    failure the worker reports itself (the commit timed out, retried). Such Kafka errors of
    aiokafka's own tasks go to DEBUG; everything else to asyncio's handler as before."""
    failed, exception = context.get("future"), context.get("exception")
    if isinstance(exception, KafkaError) and isinstance(failed, asyncio.Task):
        code = getattr(failed.get_coro(), "cr_code", None)
        if code is not None and f"{os.sep}aiokafka{os.sep}" in code.co_filename:
            log.debug("%s (%s): %r", context.get("message"), code.co_qualname, exception)
            return
    loop.default_exception_handler(context)


def describe() -> str:
    """The running loop, for the worker's start-up log."""
    loop = asyncio.get_running_loop()
    if any(cls.__module__.partition(".")[0] == "uvloop" for cls in type(loop).__mro__):
        return f"event loop: uvloop {version('uvloop')}"
    return f"event loop: {type(loop).__module__.partition('.')[0]} ({type(loop).__name__})"
