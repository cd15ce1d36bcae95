"""Command line: ``stream-replica COMMAND``. JSON to stdout, logs to stderr.

argparse parses flags (all defaulting to None); pydantic-settings merges them over the
environment and validates, so every option also comes from ``STREAM_REPLICA_<OPTION>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import faulthandler
import json
import logging
import os
import re
import select
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NoReturn, TypeVar

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from stream_replica import __version__, admin, event_loop, fold, logs, tuning
from stream_replica.cli_flags import (
    add_model_flags,
    env_name,
    flag_name,
    option_label,
    settings_from,
)
from stream_replica.contract import ContractError, EntryType, GrainId, check_grain_text
from stream_replica.errors import ConfigurationError, StreamReplicaError, TopicNotCompactedError
from stream_replica.fold import GrainState
from stream_replica.settings import (
    CONTAINER_NAME,
    AuditSettings,
    KafkaSettings,
    PublishSettings,
    ReplaySettings,
    StoreSettings,
    TopicSettings,
    WorkerSettings,
)
from stream_replica.store import ReplicaReader, ReplicaStore, Served, StoreError

log = logging.getLogger("stream_replica")
S = TypeVar("S", bound=BaseSettings)


class UsageError(Exception):
    pass


# --- output helpers ---------------------------------------------------------------------------


def served_json(served: Served | None) -> dict[str, Any] | None:
    """Whether the worker serves the grain's partition here (None: not served), and whether
    that copy was caught up with the log when the worker last reported (lag 0), how long ago
    (a running worker reports at least every 10 s: a record older than 30 s is a dead
    worker's, never caught up)."""
    if served is None or not served.serving:
        return None
    return {
        "role": served.role,
        "lag": served.lag,
        "caught_up": served.caught_up,
        "reported_s_ago": round(served.age_ms() / 1000, 1),
    }


def grain_json(
    grain: GrainId, state: GrainState, served: Mapping[int, Served] | None = None
) -> dict[str, Any]:
    extra = {} if served is None else {"served": served_json(served.get(state.partition))}
    return {**fold.grain_json(grain, state), **extra}


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")


def fail(message: str) -> None:
    """The one line an operator reads on stderr: ``stream-replica: <message>``, even when
    the message (an exception's text) has line breaks; a JSON line with ``--log-format
    json``."""
    print(logs.fatal_line(message), file=sys.stderr)


# --- commands ---------------------------------------------------------------------------------


async def cmd_topic_create(args: argparse.Namespace) -> int:
    """Exit 0 when the topic was created, or exists as asked; 3 when it exists but differs
    (then one line says how, and that it was left unchanged)."""
    s = settings_from(TopicSettings, args)
    replication_factor = s.replication_factor or await admin.default_replication_factor(s)
    if s.cleanup_policy == "delete":
        configs = admin.dead_letter_topic_configs(replication_factor, s.segment_ms)
    else:
        configs = admin.replication_topic_configs(
            replication_factor, s.segment_ms, s.delete_retention_ms
        )
    created = await admin.create_topic(s, s.topic, s.partitions, replication_factor, configs)
    info = await admin.describe_topic(s, s.topic)
    if info is None:  # deleted by someone else meanwhile
        raise admin.AdminError(f"topic {s.topic!r} was created, then could not be described")
    emit({"created": created, **info.as_json()})
    if created:
        return _report_compaction(info) if s.cleanup_policy == "compact" else 0
    differences = _differences(s, info, configs["cleanup.policy"])
    if not differences:
        log.info(
            "topic %s already existed (%d partitions, cleanup.policy=%s); left as it is",
            s.topic,
            info.partitions,
            info.configs.get("cleanup.policy"),
        )
        return 0
    fail(
        f"topic {s.topic!r} already exists with {'; '.join(differences)}; "
        "left unchanged (topic create never alters an existing topic)"
    )
    return 3


def _differences(s: TopicSettings, info: admin.TopicInfo, policy: str) -> list[str]:
    """How the existing topic differs from what was asked: the cleanup policy always (it is
    what the command is for), the partition count and replication factor when given (flag or
    environment; the defaults are no request)."""
    found = []
    if "partitions" in s.model_fields_set and info.partitions != s.partitions:
        found.append(f"{info.partitions} partitions (asked {s.partitions})")
    if "replication_factor" in s.model_fields_set and (
        info.replication_factor != s.replication_factor
    ):
        found.append(f"replication factor {info.replication_factor} (asked {s.replication_factor})")
    existing = info.configs.get("cleanup.policy", "delete")
    if sorted(existing.split(",")) != sorted(policy.split(",")):
        found.append(f"cleanup.policy={existing} (asked {policy})")
    return found


async def cmd_topic_describe(args: argparse.Namespace) -> int:
    s = settings_from(KafkaSettings, args)
    info = await admin.describe_topic(s, s.topic)
    if info is None:
        raise ConfigurationError(
            f"topic {s.topic!r} does not exist on {s.bootstrap_servers} "
            "(--topic, env STREAM_REPLICA_TOPIC)"
        )
    emit(info.as_json())
    for warning in info.replica_warnings():
        log.warning("%s", warning)
    return _report_compaction(info)


def _report_compaction(info: admin.TopicInfo) -> int:
    """After the description is printed: the line and exit code `run` refuses it with."""
    if info.compacted:
        return 0
    fail(
        f"topic {info.name!r} is NOT compacted "
        f"(cleanup.policy={info.configs.get('cleanup.policy')}); replicas need "
        "cleanup.policy=compact (a dead-letter topic for run --dlq-topic is right without)"
    )
    return TopicNotCompactedError.exit_code


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


async def cmd_run(args: argparse.Namespace) -> int:
    from stream_replica.errors import FatalError
    from stream_replica.node import run_node
    from stream_replica.preflight import Stopped

    s = with_container_name(settings_from(WorkerSettings, args), container_name)
    memory = s.memory_plan()  # a budget too small is refused before anything starts
    # before the store starts RocksDB's threads; logged after the open (a refusal stays one line)
    tuned = tuning.lower_compaction_priority()
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: for diagnosing a stuck worker.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    store = ReplicaStore(s.db, s.topic, memory=memory)
    log.info("%s", memory.describe())  # after the open: a refusal stays one line
    log.info("%s; %s", tuned, event_loop.describe())
    # This process is the worker's: process-wide choices are ours to make (tuning.py).
    tuning.freeze_startup_objects()
    fatal: str | None = None
    code = 1
    try:
        await run_node(s, store, stop)
    except FatalError as exc:
        fatal = str(exc)
    except StreamReplicaError as exc:  # credentials, certificates, ACLs, a taken HTTP port
        fatal, code = str(exc), exc.exit_code
    except StoreError as exc:  # the store opened, then failed (a disk error): exit 1
        fatal = str(exc)
    except Stopped:
        log.info("stopped before the broker was reached")
    finally:
        try:
            store.close()
        except StoreError as exc:
            log.error("%s", exc)
    if fatal is not None:  # printed last: the one line an operator needs
        fail(fatal)
        return code
    return 0


def with_container_name(s: WorkerSettings, lookup: Callable[[str], str]) -> WorkerSettings:
    """``--instance-id @container`` and ``--advertise @container:PORT`` with this container's
    name: Docker's embedded DNS resolves it on the compose network, so the other workers can
    forward to it (the default, the host name, is the container id)."""
    update: dict[str, str] = {}
    if s.instance_id == CONTAINER_NAME:
        update["instance_id"] = lookup(f"--instance-id {CONTAINER_NAME}")
    if s.advertise is not None and s.advertise.startswith(CONTAINER_NAME + ":"):
        port = s.advertise.removeprefix(CONTAINER_NAME + ":")
        name = update.get("instance_id") or lookup(f"--advertise {s.advertise}")
        update["advertise"] = f"{name}:{port}"
    return s.model_copy(update=update) if update else s


def container_name(option: str = f"--instance-id {CONTAINER_NAME}") -> str:
    """This container's name, e.g. ``stream-replica-worker-2``: Docker's embedded DNS answers
    a reverse lookup of the container's address with ``<name>.<network>``. Stable while the
    replica slot exists (``docker compose up`` recreates worker-2 as worker-2, keeping its
    anonymous volume), unlike the hostname, which is the container id. ``option``: what asked
    for it, as the refusal names it (``--advertise @container:8080`` was refused as
    ``--instance-id @container``, an option not given)."""
    host = socket.gethostname()
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET)})
    except OSError:
        addresses = []
    for address in addresses:
        try:
            name = socket.gethostbyaddr(str(address))[0]
        except OSError:
            continue
        label = name.split(".", 1)[0]
        if label and label != host and not label.startswith("localhost"):
            return label
    what = "the address" if option.startswith("--advertise") else "the instance id"
    raise UsageError(
        f"{option}: no container name found by a reverse DNS lookup of {host} "
        f"({', '.join(map(str, addresses)) or 'no address'}); set {what} explicitly"
    )


def _install_signal_handlers(stop: asyncio.Event) -> None:
    from stream_replica import _signals

    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info(
            "signal %s: finishing the current poll, then stopping", signal.Signals(signum).name
        )
        stop.set()

    _signals.install()  # idempotent; also covers `python -m stream_replica.cli run`

    # The handler runs in the main thread between bytecodes; hand over to the loop safely.
    def wake(signum: int) -> None:
        loop.call_soon_threadsafe(on_signal, signum)

    _signals.on_stop(wake)


def cmd_get(args: argparse.Namespace) -> int:
    from stream_replica.routing import partition_for

    try:  # as the HTTP API does (a 400 there)
        grain = check_grain_text(args.grain_type, args.grain_key)
    except ContractError as exc:
        raise UsageError(f"GRAIN_TYPE GRAIN_KEY: {exc}") from None
    s = settings_from(StoreSettings, args)
    with ReplicaReader(s.db) as reader:
        state = reader.get(grain)
        served = reader.served()
        identity = reader.topic_identity()
        held = reader.checkpoints()
    if state is None:
        why = ""
        if identity is not None:  # None: the worker never reached the topic
            partition = partition_for(grain, identity.partitions)
            if partition not in held:
                why = (
                    f": it belongs to partition {partition}, which this store does not hold "
                    "(another worker serves it)"
                )
        fail(f"grain {grain[0]}/{grain[1]} not in {s.db}{why}")
        return 1
    emit(grain_json(grain, state, served))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    s = settings_from(StoreSettings, args)
    with ReplicaReader(s.db) as reader:
        served = reader.served()
        for grain, state in reader.grains():
            if args.served_only and served_json(served.get(state.partition)) is None:
                continue
            emit(grain_json(grain, state, served))
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    s = settings_from(StoreSettings, args)
    with ReplicaReader(s.db) as reader:
        checkpoints = reader.checkpoints()
        served = reader.served()
        emit(
            {
                "topic": reader.topic,
                "partitions": {str(p): c.next_offset for p, c in sorted(checkpoints.items())},
                "served": {str(p): served_json(served.get(p)) for p in sorted(checkpoints)},
            }
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    s = settings_from(StoreSettings, args)
    with ReplicaReader(s.db) as reader:
        shadowed_now = sum(1 for _ in reader.shadowed())
        emit({"topic": reader.topic, **reader.counts().as_dict(), "shadowed_now": shadowed_now})
    return 0


async def cmd_audit(args: argparse.Namespace) -> int:
    from stream_replica.audit import audit

    s = settings_from(AuditSettings, args)
    report = await audit(s.db, s, _partition_list(args.partitions))
    for line in report.divergent:
        emit(line)
    emit({"summary": report.summary})
    return 1 if report.divergent else 0


def _partition_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise UsageError(f"--partitions {text!r} is not P,P,...") from None


async def cmd_replay(args: argparse.Namespace) -> int:
    from stream_replica.replay import parse_offsets, replay

    s = settings_from(ReplaySettings, args)
    timestamp = None
    if args.from_timestamp is not None:
        try:
            timestamp = datetime.fromisoformat(args.from_timestamp)
        except ValueError:
            raise UsageError(f"--from-timestamp {args.from_timestamp!r} is not ISO 8601") from None
        if timestamp.tzinfo is None:
            raise UsageError("--from-timestamp needs a time zone (e.g. ...Z or +00:00)")
    partitions = _partition_list(args.partitions)
    result = await replay(
        s,
        from_beginning=args.from_beginning,
        from_timestamp=timestamp,
        offsets=parse_offsets(args.offsets) if args.offsets is not None else None,
        partitions=partitions,
        rebuild=args.rebuild,
    )
    emit(result)
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from stream_replica.demo import run_demo

    return await run_demo(
        bootstrap_servers=args.bootstrap_servers
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        grains=args.grains,
        workers=args.workers,
        workdir=args.workdir,
    )


# --- parser -----------------------------------------------------------------------------------


# An option that looks like it takes a secret, however misspelt or abbreviated (argparse
# echoes what it refuses: `--sasl-pasword S` as an unrecognized argument, `--sasl-pass=S`
# as an ambiguous option, `get --sasl-password S` where get takes none).
_SECRET_OPTION: Final = re.compile(r"-[-\w]*(pas|pw|secret|token|cred)", re.IGNORECASE)


def _secret_values(argv: Sequence[str]) -> list[str]:
    """The values given to options that look like they take a secret: never echoed."""
    found = []
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if not _SECRET_OPTION.match(name):
            continue
        if eq:
            found.append(value)
        elif i + 1 < len(argv):
            found.append(argv[i + 1])
    return sorted({v for v in found if v}, key=len, reverse=True)


class _Parser(argparse.ArgumentParser):
    """Refuses bad arguments with the one line every other refusal is (argparse prints the
    whole usage first: 16 lines for publish), with the values of secret options hidden."""

    hidden: tuple[str, ...] = ()  # set by main(): the values never to echo

    def error(self, message: str) -> NoReturn:
        for value in self.hidden:
            message = message.replace(value, "***")
        fail(f"{message} (`{self.prog} --help` lists the options)")
        self.exit(2)


def _sub(
    commands: Any, name: str, text: str, model: type[BaseSettings] | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of ``model`` (help and env names included)."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
    if model is not None:
        add_model_flags(parser, model)
    # Also after the command (`run --log-format json`); the top-level values are the defaults.
    parser.add_argument(
        "--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS,
        help="as before the command",
    )  # fmt: skip
    parser.add_argument(
        "--log-format", choices=_LOG_FORMATS, default=argparse.SUPPRESS,
        help="as before the command",
    )  # fmt: skip
    parser.add_argument(
        "--event-loop", choices=event_loop.LOOPS, default=argparse.SUPPRESS,
        help="as before the command",
    )  # fmt: skip
    return parser


_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
_LOG_FORMATS = ["human", "json"]


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum``. A count of 0 (or less) made
    `demo` wait 120 s for no workers, and the sample load fail in ``randrange``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(  # its subcommands' parsers are of its class
        prog="stream-replica",
        description="Keep RocksDB read replicas of grain state from a compacted Kafka topic.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("STREAM_REPLICA_LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=_LOG_LEVELS,
        help="log verbosity on stderr (env STREAM_REPLICA_LOG_LEVEL; default INFO)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("STREAM_REPLICA_LOG_FORMAT", "human"),
        choices=_LOG_FORMATS,
        help="human lines, or one JSON object per line with grain/partition/offset fields "
        "(env STREAM_REPLICA_LOG_FORMAT; default human)",
    )
    parser.add_argument(
        "--event-loop",
        default=os.environ.get("STREAM_REPLICA_EVENT_LOOP", event_loop.DEFAULT),
        choices=event_loop.LOOPS,
        help="uvloop (libuv, in C: ~3.5 %% faster catch-ups), asyncio's own loop, or auto: "
        "uvloop where installed, else asyncio "
        f"(env STREAM_REPLICA_EVENT_LOOP; default {event_loop.DEFAULT})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    topic = commands.add_parser("topic", help="create or describe the replication topic")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True)
    _sub(
        topic_commands,
        "create",
        "create the topic, compacted (--cleanup-policy delete: a dead-letter topic)",
        TopicSettings,
    ).set_defaults(handler=cmd_topic_create)
    _sub(topic_commands, "describe", "show partitions and configs", KafkaSettings).set_defaults(
        handler=cmd_topic_describe
    )

    publish = _sub(
        commands,
        "publish",
        "publish JSON lines from stdin, or a sample load with --demo N",
        PublishSettings,
    )
    publish.add_argument(
        "--demo", type=_at_least(1), metavar="N", help="N grains, several updates each"
    )
    publish.add_argument("--seed", type=int, default=7, help="of the --demo load (default 7)")
    publish.set_defaults(handler=cmd_publish)

    _sub(commands, "run", "run a replica worker until signalled", WorkerSettings).set_defaults(
        handler=cmd_run
    )

    audit_parser = _sub(
        commands,
        "audit",
        "compare the store with what a rebuild from the topic would give "
        "(exit 1 on any divergence)",
        AuditSettings,
    )
    audit_parser.add_argument("--partitions", metavar="P,...", help="default: all the store holds")
    audit_parser.set_defaults(handler=cmd_audit)

    for name, handler, text in (
        ("get", cmd_get, "print one grain as JSON"),
        ("dump", cmd_dump, "print every grain, one JSON object per line"),
        ("checkpoints", cmd_checkpoints, "print the store's next offset per partition"),
        ("stats", cmd_stats, "print the store's cumulative counters"),
    ):
        sub = _sub(commands, name, text, StoreSettings)
        if name == "get":
            sub.add_argument("grain_type")
            sub.add_argument("grain_key")
        if name == "dump":
            sub.add_argument(
                "--served-only",
                action="store_true",
                help="only grains of partitions this worker serves (active or standby)",
            )
        sub.set_defaults(handler=handler)

    replay_parser = _sub(
        commands, "replay", "move checkpoints and group offsets (workers stopped)", ReplaySettings
    )
    start = replay_parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="from each log start")
    start.add_argument(
        "--from-timestamp", metavar="ISO8601", help="from the first record at or after"
    )
    start.add_argument("--offsets", metavar="P:O[,P:O...]", help="from these offsets")
    replay_parser.add_argument("--partitions", metavar="P,...", help="default: all")
    replay_parser.add_argument(
        "--rebuild", action="store_true", help="wipe the partitions' grains first"
    )
    replay_parser.set_defaults(handler=cmd_replay)

    demo = _sub(commands, "demo", "the main job end to end on a local broker")
    demo.add_argument(
        "--bootstrap-servers", help="default env KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092"
    )
    demo.add_argument(
        "--grains", type=_at_least(1), default=5000, help="grains to publish (default 5000)"
    )
    demo.add_argument(
        "--workers", type=_at_least(1), default=3, help="worker processes (default 3)"
    )
    demo.add_argument(
        "--workdir",
        default=".demo",
        help="where the workers' stores go: emptied by each run, so new, empty or an earlier "
        "demo's (default .demo)",
    )
    demo.set_defaults(handler=cmd_demo)
    # A missing command is named by its choices, as the usage shows them, not by the
    # attribute it is stored in ("required: topic_command").
    for choosing in (commands, topic_commands):
        choosing.metavar = "{" + ",".join(choosing.choices) + "}"
    return parser


# What pydantic puts before the message of an error raised in a validator.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def _validation_line(exc: ValidationError) -> str:
    """One line naming each setting at fault as its flag and environment variable. An error
    of the model as a whole (several options at once) has no location: its message names
    the options itself."""
    parts = []
    for error in exc.errors():
        message = error["msg"]
        for prefix in _PYDANTIC_PREFIXES:
            message = message.removeprefix(prefix)
        if error["loc"]:
            name = str(error["loc"][0])
            if name == "KAFKA_BOOTSTRAP_SERVERS" or name.startswith("STREAM_REPLICA_"):
                name = name.removeprefix("KAFKA_").removeprefix("STREAM_REPLICA_").lower()
            message = f"{option_label(name)}: {message}"
        parts.append(message)
    return "configuration error: " + "; ".join(parts)


def _settings_error_line(exc: SettingsError) -> str:
    """A value the environment gives that pydantic-settings cannot even parse (a list or
    object field wants JSON there). Its error names the field only in words."""
    found = re.search(r'field "(\w+)"', str(exc))
    where = (
        f"env {env_name(found[1])} ({flag_name(found[1])})"
        if found
        else "a setting from the environment"
    )
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    return f"configuration error: {where} cannot be parsed{cause}"


def _run_handler(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    result = handler(args)
    if asyncio.iscoroutine(result):
        return int(event_loop.run(result, args.event_loop))
    return int(result)


def _early_log_format(argv: Sequence[str] | None) -> logs.LogFormat:
    """``--log-format`` before the full parse, so that a refused argument's line is in it
    too."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--log-format", default=os.environ.get("STREAM_REPLICA_LOG_FORMAT"))
    found = early.parse_known_args(argv)[0].log_format
    return "json" if found == "json" else "human"


def _refused_log_setting(args: argparse.Namespace) -> str | None:
    """A log level or format from the environment that is not one of the flag's choices:
    argparse checks a flag's value, never a default (STREAM_REPLICA_LOG_LEVEL=verbose ended in
    a traceback, STREAM_REPLICA_LOG_FORMAT=jsonl gave human lines, silently)."""
    for option, variable, value, choices in (
        ("--log-level", "STREAM_REPLICA_LOG_LEVEL", args.log_level, _LOG_LEVELS),
        ("--log-format", "STREAM_REPLICA_LOG_FORMAT", args.log_format, _LOG_FORMATS),
    ):
        if value not in choices:
            return (
                f"configuration error: env {variable} ({option}) is {os.environ.get(variable)!r}: "
                f"choose one of {', '.join(choices)}"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    logs.configure("INFO", _early_log_format(argv))
    _Parser.hidden = tuple(_secret_values(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    refused = _refused_log_setting(args)
    if refused is not None:
        fail(refused)
        return ConfigurationError.exit_code
    logs.configure(args.log_level, args.log_format)
    try:
        return _run_handler(args.handler, args)
    except ValidationError as exc:
        fail(_validation_line(exc))
        return ConfigurationError.exit_code
    except SettingsError as exc:
        fail(_settings_error_line(exc))
        return ConfigurationError.exit_code
    except (UsageError, StoreError) as exc:
        fail(str(exc))
        return ConfigurationError.exit_code
    except StreamReplicaError as exc:  # admin, replay and connection errors among them
        fail(str(exc))
        return exc.exit_code
    except BrokenPipeError:
        # `stream-replica dump | head`: the reader is done; exit quietly as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Last resort: one readable line; the traceback only at debug level.
        log.debug("unexpected error", exc_info=True)
        fail(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
