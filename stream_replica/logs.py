"""Logging set-up: a human format or JSON lines (``--log-format json``), and a rate limit for
the lines a flood of bad records would otherwise produce.

JSON lines carry the standard fields (``time``, ``level``, ``logger``, ``message``) plus any
structured field a log call passes in ``extra`` (``topic``, ``partition``, ``offset``,
``grain_type``, ``grain_key``, ``kind``...), so a log pipeline can filter by grain or offset.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["human", "json"]
HUMAN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _JsonLines(JsonFormatter):
    """JSON lines whose ``time`` is ISO 8601 in UTC with milliseconds (what log pipelines
    parse without a pattern), not logging's local "2026-11-29 13:47:25,006"."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_formatter() -> logging.Formatter:
    return _JsonLines(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )


_configured: LogFormat = "human"


def configure(level: str, log_format: LogFormat = "human") -> None:
    global _configured
    _configured = log_format
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_json_formatter())
    else:
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every rebalance step; its warnings still show, except
    # connection failures, which stream-replica reports itself as one line with what to check.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    handler.addFilter(_ConnectNoise())
    handler.addFilter(LibraryRepeats())


def fatal_line(message: str, level: int = logging.CRITICAL) -> str:
    """The one line a command ends with on stderr: ``stream-replica: <message>``, or with
    JSON logs a JSON line like the others (level CRITICAL), so a log pipeline keeps the
    reason a worker ended. ``level``: for a refusal the command goes on after (ERROR)."""
    text = " ".join(message.split())  # one line, whatever the exception's text holds
    if _configured != "json":
        return f"stream-replica: {text}"
    record = logging.LogRecord("stream_replica", level, "", 0, text, None, None)
    return _json_formatter().format(record)


class _ConnectNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("aiokafka")
            and str(record.msg).startswith(("Unable connect to", "Unable to request metadata"))
        )


class LibraryRepeats(logging.Filter):
    """While a broker is unreachable aiokafka logs every failed fetch, metadata and
    coordinator request: ~30 lines a second. One line per logger and message per interval;
    the next one to pass says how many like it were held back. Our own lines pass untouched."""

    MAX_KEYS: Final = 1024  # messages with their values baked in could grow it: start over

    def __init__(self, interval_s: float = 10.0, prefix: str = "aiokafka") -> None:
        super().__init__()
        self.interval_s = interval_s
        self.prefix = prefix
        self._passed: dict[tuple[str, str], float] = {}
        self._held: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        passed = self._passed.get(key)
        if passed is not None and now - passed < self.interval_s:
            self._held[key] += 1
            return False
        if len(self._passed) >= self.MAX_KEYS:
            self._passed.clear()
            self._held.clear()
        self._passed[key] = now
        held = self._held.pop(key, 0)
        if held and passed is not None:
            record.msg = f"{record.msg} [{held} more like this in the last {now - passed:.0f} s]"
        return True


class RateLimitedLog:
    """At most ``burst`` lines per ``interval_s`` through :meth:`log`; the rest are counted by
    kind and summarised in one line when the interval ends (or at :meth:`flush`)."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 20,
        interval_s: float = 10.0,
        summary: str = "the dead-letter topic and the counters have every record",
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval_s = interval_s
        self.summary = summary  # where the suppressed lines' content can still be found
        self._window_start = time.monotonic()
        self._sent = 0
        self._suppressed: Counter[str] = Counter()

    def log(self, level: int, kind: str, message: str, *args: Any, **extra: Any) -> None:
        self._end_window_if_over()
        if self._sent < self.burst:
            self._sent += 1
            self.logger.log(level, message, *args, extra={"kind": kind, **extra})
        else:
            self._suppressed[kind] += 1

    def tick(self) -> None:
        """Summarise what was held back once its interval is over, even if no line follows
        (the worker calls it every loop turn: a burst at the start of a catch-up is
        summarised ~10 s later, not at the next such line, which may be hours away)."""
        if self._suppressed:
            self._end_window_if_over()

    def _end_window_if_over(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.interval_s:
            self.flush()
            self._window_start = now
            self._sent = 0

    def flush(self) -> None:
        if not self._suppressed:
            return
        total = sum(self._suppressed.values())
        detail = ", ".join(f"{kind}: {count}" for kind, count in sorted(self._suppressed.items()))
        self.logger.warning(
            "%d more lines like the above suppressed in the last %.0f s (%s); %s",
            total,
            self.interval_s,
            detail,
            self.summary,
            extra={"suppressed": dict(self._suppressed)},
        )
        self._suppressed.clear()
