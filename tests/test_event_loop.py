"""event_loop.py: the command line's loop (uvloop where installed, asyncio's on request)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from stream_replica import event_loop
from stream_replica.cli import main
from stream_replica.errors import ConfigurationError
from tests.helpers import TopicFactory, finish, read_until, worker_command


async def _loop_module() -> str:
    """The package of the loop's class, or of the loop it extends (ours extends uvloop's)."""
    for cls in type(asyncio.get_running_loop()).__mro__:
        if cls.__module__.startswith(("uvloop", "asyncio")):
            return cls.__module__
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default_and_asyncio_is_on_request() -> None:
    assert event_loop.run(_loop_module()).startswith("uvloop")
    assert event_loop.run(_loop_module(), "uvloop").startswith("uvloop")
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_describe_names_the_running_loop() -> None:
    assert event_loop.run(_describe(), "uvloop").startswith("event loop: uvloop 0.")
    assert event_loop.run(_describe(), "asyncio") == "event loop: asyncio (_UnixSelectorEventLoop)"


async def _describe() -> str:
    return event_loop.describe()


def test_an_unknown_loop_is_a_configuration_error_and_the_command_never_starts() -> None:
    started: list[bool] = []

    async def command() -> None:
        started.append(True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            ConfigurationError, match=r"'tokio'.*choose one of auto, uvloop, asyncio"
        ):
            event_loop.run(command(), "tokio")
        gc.collect()
    assert started == []
    assert not [w for w in caught if "never awaited" in str(w.message)]  # closed, not dropped


def test_uvloop_missing_names_the_fix_when_asked_for_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    with pytest.raises(ConfigurationError, match=r"pip install uvloop\) or pass --event-loop"):
        event_loop.loop_factory("uvloop")
    assert event_loop.loop_factory("asyncio") is None
    assert event_loop.run(_loop_module()).startswith("asyncio")  # auto: no uvloop, no error


def test_cli_refuses_a_bad_loop_from_the_environment_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAM_REPLICA_EVENT_LOOP", "tokio")
    # a coroutine command: the loop is chosen before it runs (nothing listens on port 1)
    code = main(["topic", "describe", "--topic", "t", "--bootstrap-servers", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "stream-replica: event loop 'tokio' (--event-loop or STREAM_REPLICA_EVENT_LOOP): "
        "choose one of auto, uvloop, asyncio"
    ]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_worker_runs_and_stops_on_sigterm_on_either_loop(
    loop: str, kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """The worker process says which loop it runs on, and a SIGTERM (a plain signal handler,
    _signals.py) stops it cleanly on both."""
    topic = await make_topic(partitions=2)
    command = worker_command(kafka_bootstrap, topic, unique("g"), tmp_path / "db")
    command[3:3] = ["--event-loop", loop]  # after `-m stream_replica`
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        read_until(process, f"event loop: {loop}")
        read_until(process, "assigned partitions")
        process.send_signal(signal.SIGTERM)
        rest = finish(process, 30)
        assert process.returncode == 0, rest
        assert "stopped; this run:" in rest, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_aiokafka_task_failing_unobserved_is_debug_not_an_error(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's shielded commit task failing after our commit timed out (the coordinator
    down) was logged as "Task exception was never retrieved" with a traceback; a task of
    anyone else's still is."""
    from aiokafka.client import AIOKafkaClient

    class Ours(Exception):
        pass

    async def fails() -> None:
        raise Ours("ours")

    async def unobserved() -> None:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")
        for coroutine in (client.bootstrap(), fails()):
            task = asyncio.create_task(coroutine)
            await asyncio.wait([task])  # done, its exception never asked for
            del task
            gc.collect()
        await client.close()

    with caplog.at_level(logging.DEBUG):
        event_loop.run(unobserved(), loop)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "asyncio"]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], Ours)
    debug = [r.getMessage() for r in caplog.records if r.name == "stream_replica"]
    assert any(
        "Task exception was never retrieved (AIOKafkaClient.bootstrap): KafkaConnectionError"
        in line
        for line in debug
    ), debug
