"""Log formats and the rate limit on refused-record lines."""

from __future__ import annotations

import json
import logging

import pytest

from stream_replica import logs


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
