"""Before the worker joins its group: the replicated topic (and the dead-letter topic) exist
and are fit to replicate from, and aiokafka's fast record parser is there.

The same problems, the same exit codes as ``topic describe`` (errors.py). An unreachable
broker is retried with backoff until the worker is stopped (``Stopped``: a clean exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from stream_replica.admin import TopicInfo, describe_topic
from stream_replica.errors import (
    ConfigurationError,
    KafkaUnavailableError,
    StreamReplicaError,
    TopicNotCompactedError,
)
from stream_replica.settings import WorkerSettings

# The worker's logger: these lines have always been the worker's.
log = logging.getLogger("stream_replica.worker")

T = TypeVar("T")


class Stopped(Exception):
    """Signalled before the worker got going: a clean exit."""


def c_parser_loaded() -> bool:
    """aiokafka silently falls back to a ~60x slower pure-Python record parser."""
    from aiokafka.record import default_records

    return "_crecords" in default_records.DefaultRecordBatch.__module__


async def check_topic(
    settings: WorkerSettings,
    stop: asyncio.Event,
    waiting: Callable[[str | None], None] = lambda _: None,
) -> TopicInfo:
    """Describe the topic, retrying an unreachable broker with backoff until stopped. Only
    that is retried: anything else (credentials, certificates, ACLs, a bug) retrying cannot
    fix, so it ends the worker. ``waiting`` hears why Kafka was not reached at each retry,
    and None once it answered."""
    backoff = 1.0
    while True:
        if stop.is_set():
            raise Stopped
        try:
            info = await _unless_stopped(describe_topic(settings, settings.topic), stop)
            waiting(None)
            break
        except (KafkaUnavailableError, KafkaError, OSError, TimeoutError) as exc:
            if stop.is_set():
                raise Stopped from None
            why = _unreachable(settings, exc)
            waiting(why)
            log.warning("%s; retrying in %.0f s", why, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)
    # The same problems, the same exit codes as `topic describe` (errors.py).
    if info is None:
        raise ConfigurationError(
            f"topic {settings.topic!r} does not exist on {settings.bootstrap_servers} "
            "(--topic, env STREAM_REPLICA_TOPIC)"
        )
    if not info.compacted and not settings.allow_non_compacted:
        raise TopicNotCompactedError(
            f"topic {settings.topic!r} is not compacted "
            f"(cleanup.policy={info.configs.get('cleanup.policy')}); "
            "pass --allow-non-compacted to run anyway"
        )
    for warning in info.replica_warnings():
        log.warning("%s", warning)
    if settings.dlq_topic:
        dlq = await describe_topic(settings, settings.dlq_topic)
        if dlq is None:
            raise ConfigurationError(
                f"dead-letter topic {settings.dlq_topic!r} (--dlq-topic) does not exist; create "
                f"it with `stream-replica topic create --topic {shlex.quote(settings.dlq_topic)} "
                "--cleanup-policy delete` (a compacted topic refuses records without a key)"
            )
        if dlq.compacted:
            log.warning(
                "dead-letter topic %r is compacted (cleanup.policy=%s): dead letters of one "
                "grain will replace each other at compaction, and a refused record without a "
                "key will be refused by the broker (which stops this worker); use a topic with "
                "cleanup.policy=delete (topic create --cleanup-policy delete)",
                settings.dlq_topic,
                dlq.configs.get("cleanup.policy"),
            )
    return info


async def _unless_stopped(call: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """``call``'s result, or :class:`Stopped` as soon as ``stop`` is set: a broker that
    accepts connections and never answers holds a request for ~13 s (a client's start, then
    the pre-flight beside it: clients.py), or 30 s for a call after the start, longer than
    an orchestrator's grace period after SIGTERM."""
    task = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Stopped
    return task.result()


def _unreachable(settings: WorkerSettings, exc: BaseException) -> str:
    if isinstance(exc, StreamReplicaError):
        return str(exc)  # already says what failed where
    return f"Kafka not reachable at {settings.bootstrap_servers} ({type(exc).__name__}: {exc})"
