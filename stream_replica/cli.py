"""Command line: ``stream-replica COMMAND``. JSON to stdout, logs to stderr.

argparse parses flags (all defaulting to None); pydantic-settings merges them over the
environment and validates, so every option also comes from ``STREAM_REPLICA_<OPTION>``.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NoReturn, TypeVar

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
from stream_replica.contract import ContractError, GrainId, check_grain_text
from stream_replica.errors import ConfigurationError, StreamReplicaError, TopicNotCompactedError
from stream_replica.fold import GrainState
from stream_replica.output import emit, fail
from stream_replica.publish_lines import cmd_publish
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
