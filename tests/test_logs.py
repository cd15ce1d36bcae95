"""Log formats and the rate limit on refused-record lines."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from stream_replica import logs
from tests.helpers import cli


def test_json_lines_carry_structured_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    try:
        logging.getLogger("stream_replica.worker").error(
            "refused %s", "delta", extra={"partition": 3, "offset": 17, "grain_key": "a/b"}
        )
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        logs.configure("INFO", "human")
    assert line["message"] == "refused delta"
    assert line["level"] == "ERROR" and line["logger"] == "stream_replica.worker"
    assert (line["partition"], line["offset"], line["grain_key"]) == (3, 17, "a/b")
    assert "time" in line


def test_rate_limit_summarises_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    limited = logs.RateLimitedLog(logging.getLogger("t"), burst=3, interval_s=3600)
    with caplog.at_level(logging.INFO, logger="t"):
        for index in range(10):
            limited.log(logging.ERROR, "delta" if index % 2 else "invalid", "bad %d", index)
        limited.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["bad 0", "bad 1", "bad 2"]
    assert len(messages) == 4
    assert messages[3].startswith("7 more lines like the above suppressed")
    assert "delta: 4, invalid: 3" in messages[3]
    limited.flush()  # nothing new: no second summary
    assert len(caplog.records) == 4


def test_tick_summarises_once_the_interval_is_over_without_another_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    limited = logs.RateLimitedLog(
        logging.getLogger("t"), burst=1, interval_s=10, summary="audit lists each"
    )
    with caplog.at_level(logging.INFO, logger="t"):
        for index in range(4):
            limited.log(logging.WARNING, "shadowed", "grain %d", index)
        limited.tick()  # the interval is not over: nothing yet
        assert [r.getMessage() for r in caplog.records] == ["grain 0"]
        clock[0] += 10
        limited.tick()
        limited.tick()  # said once
        limited.log(logging.WARNING, "shadowed", "grain %d", 9)  # a new window: let through
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "grain 0",
        "3 more lines like the above suppressed in the last 10 s (shadowed: 3); audit lists each",
        "grain 9",
    ]


def test_shadowing_lines_are_rate_limited_with_their_grain_fields(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream_replica import shadowing
    from stream_replica.fold import FoldResult, Shadowing

    limited = logs.RateLimitedLog(shadowing.log, burst=20, interval_s=3600, summary="see audit")
    monkeypatch.setattr(shadowing, "shadowings", limited)
    result = FoldResult(
        shadowed=[
            Shadowing(("Counter", f"k{index}"), 2, 10 + index, 100 + index, "delta", True)
            for index in range(25)
        ]
        + [Shadowing(("Counter", "k0"), 2, 10, 200, "delta", False)]  # not the first: no line
    )
    with caplog.at_level(logging.INFO, logger=shadowing.log.name):
        shadowing.log_shadowing("orders", result, repairing=False)
        limited.flush()
    lines = [r for r in caplog.records if r.name == shadowing.log.name]
    assert len(lines) == 21
    first = lines[0]
    assert first.getMessage().startswith("grain Counter/k0: its state (orders/2/10) is shadowed")
    assert (first.grain_type, first.grain_key, first.partition, first.offset) == (  # type: ignore[attr-defined]
        "Counter",
        "k0",
        2,
        100,
    )
    assert first.state_offset == 10  # type: ignore[attr-defined]
    assert lines[-1].getMessage() == (
        "5 more lines like the above suppressed in the last 3600 s (shadowed: 5); see audit"
    )


def test_library_lines_repeat_once_per_interval_and_say_how_many_were_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    limiter = logs.LibraryRepeats(interval_s=10.0)

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    fetch = "aiokafka.consumer.fetcher"
    passed = [
        limiter.filter(record(fetch, "Failed fetch from %s: %s", 1, "down")) for _ in range(30)
    ]
    assert passed == [True] + [False] * 29
    assert limiter.filter(record("aiokafka", "Unable to update metadata from %s", [1]))  # another
    assert all(limiter.filter(record("stream_replica.worker", "ours")) for _ in range(5))
    clock[0] += 11
    later = record(fetch, "Failed fetch from %s: %s", 1, "down")
    assert limiter.filter(later)
    assert later.getMessage() == "Failed fetch from 1: down [29 more like this in the last 11 s]"
    clock[0] += 11
    quiet = record(fetch, "Failed fetch from %s: %s", 1, "down")
    assert limiter.filter(quiet) and quiet.getMessage() == "Failed fetch from 1: down"


def test_json_time_is_iso_8601_utc(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    try:
        logging.getLogger("stream_replica").info("hello")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        logs.configure("INFO", "human")
    assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0), line
    assert line["time"].endswith("Z") and "." in line["time"]  # milliseconds, UTC


def test_the_fatal_line_follows_the_log_format() -> None:
    """With JSON logs the line a worker dies with was plain text: a log pipeline lost it."""
    assert (
        logs.fatal_line("topic 't'\n does not exist") == "stream-replica: topic 't' does not exist"
    )
    logs.configure("INFO", "json")
    try:
        line = json.loads(logs.fatal_line("topic 't' does not exist"))
    finally:
        logs.configure("INFO", "human")
    assert (line["level"], line["logger"]) == ("CRITICAL", "stream_replica")
    assert line["message"] == "topic 't' does not exist" and line["time"].endswith("Z")


def test_a_command_ends_with_a_json_line_when_logs_are_json(tmp_path: Path) -> None:
    result = cli(
        "--log-format", "json", "run", "--topic", "t", "--dlq-topic", "t",
        "--db", str(tmp_path / "db"),
    )  # fmt: skip
    assert result.returncode == 2
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "CRITICAL" and "dead-letter topic is the replicated" in line["message"]


def test_a_refused_argument_ends_with_a_json_line_when_logs_are_json(tmp_path: Path) -> None:
    result = cli("--log-format", "json", "run", "--db", str(tmp_path / "db"), "--max-records", "x")
    assert result.returncode == 2
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "CRITICAL" and "--max-records" in line["message"]
