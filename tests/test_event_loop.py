"""event_loop.py: the command line's loop (uvloop where installed, asyncio's on request)."""

from __future__ import annotations

import asyncio
import gc
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
