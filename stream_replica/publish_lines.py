"""``stream-replica publish``: JSON lines from stdin (or a sample load) to the topic.

Each line is read as it comes, without holding the event loop (a pipe or a terminal gives a
line at a time), checked, and published; a line that cannot be is rejected by number with
what was wrong, and the others go on. The summary (published, rejected) is the output.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import select
import shlex
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from stream_replica import admin, logs
from stream_replica.cli_flags import settings_from
from stream_replica.contract import ContractError, EntryType
from stream_replica.errors import ConfigurationError
from stream_replica.output import emit, fail
from stream_replica.settings import PublishSettings


async def cmd_publish(args: argparse.Namespace) -> int:
    from stream_replica.publisher import Publisher, max_request_size
    from stream_replica.workload import sample_workload

    s = settings_from(PublishSettings, args)
    max_bytes = max_request_size(s)
    cap = publish_line_cap(max_bytes)
    await _require_topic(s)
    bad_lines = 0
    sent = 0
    too_long: int | None = None
    async with Publisher(s, s.topic, s.source_cluster) as publisher:
        if args.demo is not None:
            for op in sample_workload(args.demo, seed=args.seed):
                await publisher.publish_raw(op.key, op.value)
                sent += 1
        else:
            deliveries = _Deliveries(publisher)
            try:
                async for line_number, raw in _StdinLines(sys.stdin.fileno(), cap):
                    if not raw.strip():
                        continue
                    try:
                        future = await _publish_line(publisher, _utf8(raw))
                        sent += 1
                        if deliveries.track(line_number, future):
                            await deliveries.settle()
                    except (ValueError, KeyError, TypeError, ContractError) as exc:
                        bad_lines += 1
                        refused = f"stdin line {line_number}: {exc}"
                        print(logs.fatal_line(refused, logging.ERROR), file=sys.stderr)
            except LineTooLongError as exc:
                bad_lines += 1
                too_long = exc.line_number
            await deliveries.settle()
            not_delivered = deliveries.report()
            sent -= not_delivered
            bad_lines += not_delivered
        await publisher.flush()
    emit({"topic": s.topic, "published": sent, "rejected_lines": bad_lines})
    if too_long is not None:  # after the summary: what was published before it is kept
        fail(
            f"stdin line {too_long} is longer than {cap} characters, the most a line can be "
            f"(a payload of the producer's max_request_size, {max_bytes} bytes, in base64, plus "
            "64 KiB for the other fields; --kafka-option max_request_size=N raises it); "
            "stopped reading there"
        )
        return ConfigurationError.exit_code
    return 1 if bad_lines else 0


class _Deliveries:
    """What became of each stdin line's record once sent. A record the broker refuses (one
    over the topic's max.message.bytes) fails its delivery future after its line was counted
    as published: that ended the command with a bare ``MessageSizeTooLargeError: [Error 10]
    MessageSizeTooLargeError``, naming no line and printing no summary. Here each line not
    delivered is named and counted as rejected. It flushes the publisher one record before
    the publisher would itself (whose flush raises the first failure out of a line's send)."""

    _NAMED: Final = 20  # lines named at most; the rest counted

    def __init__(self, publisher: Any) -> None:
        self._publisher = publisher
        self._settle_at: int = publisher.FLUSH_EVERY - 1
        self._waiting: list[tuple[int, asyncio.Future[Any]]] = []
        self._failed: list[tuple[int, BaseException]] = []

    def track(self, line_number: int, future: asyncio.Future[Any]) -> bool:
        """True: time to :meth:`settle`."""
        self._waiting.append((line_number, future))
        return len(self._waiting) >= self._settle_at

    async def settle(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            await self._publisher.flush()
        except KafkaError:  # at the first failure: wait for the others too
            unsettled = [future for _, future in waiting if not future.done()]
            if unsettled:
                await asyncio.wait(unsettled)
        for line_number, future in waiting:
            failure = future.exception()
            if failure is not None:
                self._failed.append((line_number, failure))

    def report(self) -> int:
        """Print a line per record not delivered (at most ``_NAMED``); their number."""
        for line_number, failure in self._failed[: self._NAMED]:
            line = f"stdin line {line_number}: not published: {_delivery_failure(failure)}"
            print(logs.fatal_line(line, logging.ERROR), file=sys.stderr)
        if len(self._failed) > self._NAMED:
            more = f"{len(self._failed) - self._NAMED} more stdin lines not published"
            print(logs.fatal_line(more, logging.ERROR), file=sys.stderr)
        return len(self._failed)


def _delivery_failure(failure: BaseException) -> str:
    if isinstance(failure, MessageSizeTooLargeError):
        return (
            "the broker refused the record as too large (MessageSizeTooLargeError): over the "
            "topic's max.message.bytes, which `stream-replica topic describe` shows"
        )
    return f"{type(failure).__name__}: {failure}"


# Room in a stdin line for the fields besides the payload (grain type and key, sequence...).
_LINE_FIELDS_ROOM: Final = 64 * 1024


def publish_line_cap(max_request_bytes: int) -> int:
    """The longest stdin line ``publish`` reads (characters): the base64 of a payload as large
    as the producer sends (a longer line cannot become a record), plus room for the other
    fields. 1,463,640 with aiokafka's default max_request_size, 1 MiB."""
    return 4 * -(-max_request_bytes // 3) + _LINE_FIELDS_ROOM


class LineTooLongError(Exception):
    def __init__(self, line_number: int) -> None:
        super().__init__(f"stdin line {line_number} is too long")
        self.line_number = line_number


class _StdinLines:
    """The lines of a file descriptor (stdin), numbered, without their newline, none read past
    ``cap`` bytes: iterating over stdin read a line whole, however long (`publish < /dev/zero`
    grew to 22 GB); :class:`LineTooLongError` at the first longer line.

    While the descriptor has nothing to give (a pipe or a terminal waiting for its writer),
    the event loop runs: a blocking read held it, so the producer sent nothing until the next
    lines or the end of the input came (`tail -f log | stream-replica publish` published
    nothing), and a Ctrl-C, which asyncio turns into the cancellation of the command's task,
    went unnoticed until then too."""

    _CHUNK: Final = 64 * 1024

    def __init__(self, fd: int, cap: int) -> None:
        self._fd = fd
        self._cap = cap

    async def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        buffer = bytearray()
        searched = 0  # no newline before this in buffer
        number = 0
        while True:
            newline = buffer.find(b"\n", searched)
            if newline >= 0:
                number += 1
                if newline > self._cap:
                    raise LineTooLongError(number)
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                searched = 0
                yield number, line
                continue
            if len(buffer) > self._cap:
                raise LineTooLongError(number + 1)
            searched = len(buffer)
            chunk = await self._read()
            if chunk:
                buffer += chunk
                continue
            if buffer:  # the last line, without a newline
                yield number + 1, bytes(buffer)
            return

    async def _read(self) -> bytes:
        try:
            ready = select.select([self._fd], [], [], 0)[0]
        except (OSError, ValueError):
            ready = [self._fd]
        if not ready:
            await self._readable()
        return os.read(self._fd, self._CHUNK)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        try:
            loop.add_reader(self._fd, on_readable)
        except (OSError, ValueError, NotImplementedError):
            return  # a descriptor the loop cannot watch: the read blocks, as it always did
        try:
            await readable
        finally:
            loop.remove_reader(self._fd)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


async def _require_topic(s: PublishSettings) -> None:
    """Refuse a topic that does not exist before producing: the producer would wait for it
    for 40 s (max_block_ms), logging "not found" ten times a second."""
    if await admin.topic_partitions(s, s.topic) is None:
        raise ConfigurationError(
            f"topic {s.topic!r} does not exist on {s.bootstrap_servers}; create it with "
            f"`stream-replica topic create --topic {shlex.quote(s.topic)} [--partitions N]` "
            "(same connection settings)"
        )


async def _publish_line(publisher: Any, line: str) -> asyncio.Future[Any]:
    """Publish one stdin line (its record's delivery future); a ValueError names the field
    and what was expected, or why the record cannot be sent."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc}): expected one JSON object per line") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(obj)}")
    grain_type = _string_field(obj, "grain_type")
    grain_key = _string_field(obj, "grain_key")
    try:
        if obj.get("delete") is True:
            return await publisher.publish_tombstone(grain_type, grain_key)  # type: ignore[no-any-return]
        payload, sequence, entry_type = _snapshot_fields(obj)
        _, delivery = await publisher.send_snapshot(
            grain_type, grain_key, payload, sequence, entry_type
        )
        return delivery  # type: ignore[no-any-return]
    except MessageSizeTooLargeError as exc:
        # The producer refuses a record over its max_request_size as it takes it (a payload
        # under the line cap can be): a rejected line naming the grain, not the end of the
        # command with aiokafka's bare MessageSizeTooLargeError.
        size = re.search(r"is (\d+) bytes", str(exc))
        raise ValueError(
            f"grain {grain_type}/{grain_key}: the record"
            + (f" ({size.group(1)} bytes serialized)" if size else "")
            + " is larger than the producer's max_request_size; --kafka-option "
            "max_request_size=N raises it, up to the topic's max.message.bytes"
        ) from None


def _snapshot_fields(obj: dict[str, Any]) -> tuple[bytes, int | None, EntryType]:
    """A snapshot line's payload, sequence and entry type; a ValueError names the field."""
    if "payload" not in obj:
        raise ValueError(
            "field 'payload' is missing: expected the state as a base64 string "
            '(or "delete": true for a tombstone)'
        )
    encoded = obj["payload"]
    if not isinstance(encoded, str):
        raise ValueError(f"field 'payload': expected a base64 string, got {_json_type(encoded)}")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except ValueError as exc:  # binascii.Error
        raise ValueError(
            f"field 'payload': expected standard base64 (A-Z a-z 0-9 + /, '=' padding), got "
            f"{_shown(encoded)} ({exc})"
        ) from None
    sequence = obj.get("sequence")
    if sequence is not None and (type(sequence) is not int or not 1 <= sequence < 2**64):
        raise ValueError(
            f"field 'sequence': expected an integer in 1..2**64-1, got {_shown(sequence)}"
        )
    entry_type_name = obj.get("entry_type", EntryType.FULL_STATE.value)
    try:
        entry_type = EntryType(entry_type_name)
    except ValueError:
        expected = " or ".join(repr(e.value) for e in EntryType)
        raise ValueError(
            f"field 'entry_type': expected {expected}, got {_shown(entry_type_name)}"
        ) from None
    return payload, sequence, entry_type


def _string_field(obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise ValueError(f"field {name!r} is missing: expected a string")
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"field {name!r}: expected a string, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object"}
    return f"{names.get(type(value), type(value).__name__)} {_shown(value)}"


def _shown(value: object, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
