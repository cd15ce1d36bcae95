"""Starting clients (stream_replica/clients.py): a slow start has the pre-flight beside it."""

from __future__ import annotations

import asyncio
import gc
import re
import time
from functools import partial

import pytest
from aiokafka import AIOKafkaConsumer

from stream_replica import clients, diagnosis
from stream_replica.clients import discard, start_client
from stream_replica.connection import ConnectionSettings
from stream_replica.errors import KafkaUnavailableError


async def test_a_client_start_held_by_a_silent_listener_ends_with_the_preflight(
    silent_listener: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka waits for a silent bootstrap server until its request timeout (30-40 s) and
    then says only "Unable to bootstrap"; the pre-flight then took 10 s more. A start still
    pending after SLOW_START_S now has the pre-flight run beside it."""
    monkeypatch.setattr(clients, "SLOW_START_S", 0.2)
    monkeypatch.setattr(diagnosis, "preflight", partial(diagnosis.preflight, timeout_s=1))
    settings = ConnectionSettings(bootstrap_servers=silent_listener)
    consumer = AIOKafkaConsumer(**settings.options("consumer"))
    began = time.monotonic()
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await start_client(settings, consumer)
    took_s = time.monotonic() - began
    assert "the connection was accepted, but no Kafka answer came" in str(unavailable.value)
    assert took_s < 10, took_s  # the client's own request timeout is 40 s
    assert consumer._closed  # stopped: no connection left behind


class _SlowStart:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.finished = self.cancelled = False

    async def start(self) -> None:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True


@pytest.mark.broker
async def test_a_slow_start_on_a_healthy_broker_is_waited_for(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-flight passing says nothing is wrong with the connection: the start goes on."""
    monkeypatch.setattr(clients, "SLOW_START_S", 0.1)
    client = _SlowStart(delay_s=1.0)
    await start_client(ConnectionSettings(bootstrap_servers=kafka_bootstrap), client)
    assert client.finished and not client.cancelled


async def test_a_slow_start_the_preflight_explains_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clients, "SLOW_START_S", 0.1)
    client = _SlowStart(delay_s=30.0)
    settings = ConnectionSettings(bootstrap_servers="127.0.0.1:1")  # refused
    refused = re.escape("127.0.0.1:1 over PLAINTEXT (connection refused)")
    with pytest.raises(KafkaUnavailableError, match=refused):
        await start_client(settings, client)
    assert client.cancelled and not client.finished


async def test_discard_takes_the_exception_of_a_task_that_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A caller cancelled just as its task failed left the exception to asyncio, which logged
    it with a traceback ("Task exception was never retrieved") when a SIGTERM came during a
    retry of an unreachable broker."""

    async def fail() -> None:
        raise ValueError("refused")

    discarded, forgotten = asyncio.ensure_future(fail()), asyncio.ensure_future(fail())
    await asyncio.sleep(0)  # both run and fail
    await discard(discarded)
    del discarded, forgotten
    gc.collect()
    logged = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(logged) == 1, logged  # the forgotten one only
