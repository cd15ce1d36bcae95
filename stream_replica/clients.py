"""Starting and stopping aiokafka clients: a failed start closes the client and raises one
clear :class:`StreamReplicaError` (diagnosis.py says why), a slow one has the pre-flight run
beside it, a consumer's stop absorbs aiokafka's stray cancellation, and a producer's stop is
bounded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from stream_replica import diagnosis
from stream_replica.connection import ConnectionSettings
from stream_replica.diagnosis import explain_failure
from stream_replica.errors import StreamReplicaError
from stream_replica.refusals import refusal


class Startable(Protocol):
    async def start(self) -> None: ...


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. aiokafka 0.14's fetcher cancels its fetch tasks on close and awaits
    them without catching their CancelledError, which then ends ``stop()`` before the client
    is closed (seen on SIGTERM while a fetch backed off from an unreachable broker: a
    traceback and exit 1). That CancelledError is not aimed at us: absorbed here, and the
    client closed."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our own task is being cancelled: not the library's stray one
        client = getattr(consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def stop_producer(producer: AIOKafkaProducer, timeout_s: float) -> bool:
    """Stop a producer, waiting at most ``timeout_s`` for the records it still holds to be
    acknowledged. aiokafka's ``stop()`` first waits until every record is acknowledged, and
    an idempotent producer's batches never expire: it retries them until a broker takes
    them. With fewer in-sync replicas than min.insync.replicas (acks=all: two brokers of
    three down) that is until the brokers come back, and a worker stopping (SIGTERM, or a
    dead-letter send that timed out) hung there with no word. Past the bound the records
    left are failed and the producer closes. Returns False when some were."""
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait((stopping,), timeout=timeout_s)
    if done:
        stopping.result()
        return True
    await discard(stopping)  # its wait for the flush; the producer is marked closed already
    # What stop() does after the flush, without it: end the sender (it lets its in-flight
    # requests finish: bounded again), fail what is left so nothing waits for it, and close
    # the connections. (Failing batches while a request for them is in flight makes the
    # sender raise on the answer, and aiokafka's handler of that raises in turn.)
    with contextlib.suppress(Exception, TimeoutError):
        await asyncio.wait_for(producer._sender.close(), timeout_s)
    with contextlib.suppress(Exception):
        accumulator = producer._message_accumulator
        batches = [b for queue in accumulator._batches.values() for b in queue]
        # A batch sent and put back for a retry left the pending set, but the callback its
        # first send registered removes it from that set once it is done: failing it raised
        # KeyError in that callback (an ERROR with a traceback, aiokafka 0.13).
        accumulator._pending_batches.update(b for b in batches if b.retry_count > 0)
        batches += list(accumulator._pending_batches)
        accumulator.fail_all(
            KafkaTimeoutError(f"not acknowledged within {timeout_s:g} s; the producer stopped")
        )
        # Retrieved here (the caller reports the drop): asyncio would log each future failed
        # and never awaited when it is collected ("Future exception was never retrieved"),
        # the batch's drain waiter too (failed with the rest; only flush() awaits it).
        for batch in batches:
            waiters = (batch.future, batch._drain_waiter, *(f for f, _ in batch._msg_futures))
            for future in waiters:
                if future.done() and not future.cancelled():
                    future.exception()
    with contextlib.suppress(Exception):
        await producer.client.close()
    return False


async def start_client(
    settings: ConnectionSettings, client: Startable, writes: tuple[str, str] | None = None
) -> None:
    """Start an aiokafka client; if that fails, stop it (no leaked connections or "Unclosed"
    warnings) and raise one clear :class:`StreamReplicaError`. ``writes``: a producer's
    topic and the flag that names it (an idempotent producer's start needs Write on it)."""
    try:
        await _diagnosed_if_slow(settings, client.start())
    except StreamReplicaError:
        await _stop_quietly(client)
        raise
    except (KafkaError, OSError) as exc:
        await _stop_quietly(client)
        if writes is not None:
            topic, flag = writes
            doing = "starting the producer"
            refused = refusal(exc, settings, doing=doing, topic=topic, topic_flag=flag)
            if refused is not None:
                raise refused from None
        raise await explain_failure(settings, exc) from None


# A client start still pending after this long gets a pre-flight connection beside it.
SLOW_START_S: Final = 3.0


async def _diagnosed_if_slow(settings: ConnectionSettings, start: Awaitable[None]) -> None:
    """Await a client's ``start``. One still pending after ``SLOW_START_S`` (aiokafka waits
    for a silent bootstrap server until its request timeout, 30-40 s) has the pre-flight run
    beside it, and ends as soon as the pre-flight finds what is wrong."""
    task = asyncio.ensure_future(start)
    probe: asyncio.Task[None] | None = None
    try:
        await asyncio.wait((task,), timeout=SLOW_START_S)
        if not task.done():
            probe = asyncio.ensure_future(diagnosis.preflight(settings))
            await asyncio.wait((task, probe), return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not probe.cancelled():
                found = probe.exception()
                if isinstance(found, StreamReplicaError):
                    raise found
        await task
    finally:
        await discard(task)
        await discard(probe)


async def discard(task: asyncio.Future[Any] | None) -> None:
    """Cancel a task whose outcome nobody waits for any more, and let it end. One that
    already failed has its exception taken, or asyncio logs it with a traceback ("exception
    was never retrieved"): it happens when the caller is cancelled just as the task fails."""
    if task is None:
        return
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    elif not task.cancelled():
        task.exception()


async def _stop_quietly(client: Startable) -> None:
    """Close a client whose start failed: no leaked connections or "Unclosed" warnings."""
    stop = getattr(client, "stop", None) or getattr(client, "close", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            await stop()
