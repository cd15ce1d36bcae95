"""The command line's error lines: one line, naming the flags and environment variables at
fault, exit 2 for misconfiguration (README "Command line")."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from stream_replica.cli import main


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command line; it must refuse with exit 2 and one line, which is returned."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("stream-replica: "), err
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "u"],
            "--security-protocol is SASL_PLAINTEXT, which needs --sasl-mechanism "
            "(env STREAM_REPLICA_SASL_MECHANISM) and env STREAM_REPLICA_SASL_PASSWORD or "
            "--sasl-password-file",
        ),
        (
            ["--sasl-username", "u"],
            "--sasl-username (env STREAM_REPLICA_SASL_USERNAME) given, but --security-protocol "
            "is PLAINTEXT (env STREAM_REPLICA_SECURITY_PROTOCOL)",
        ),
        (["--kafka-option", "no_such=1"], "configuration error: --kafka-option no_such: not a"),
    ],
)
def test_an_error_of_several_options_names_the_real_flags(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    line = refused(capsys, "topic", "describe", *flags)
    assert expected in line
    assert "--settings" not in line and "STREAM_REPLICA_SETTINGS" not in line


def test_a_field_error_names_flag_and_env_without_pydantic_prefixes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "ca.pem"
    line = refused(
        capsys, "topic", "describe", "--security-protocol", "SSL", "--ssl-cafile", str(missing)
    )
    assert line == (
        "stream-replica: configuration error: --ssl-cafile (env STREAM_REPLICA_SSL_CAFILE): "
        f"{missing} is not a readable file"
    )
    line = refused(capsys, "run", "--db", str(tmp_path / "db"), "--max-records", "0")
    assert "--max-records (env STREAM_REPLICA_MAX_RECORDS): Input should be" in line
    assert "Value error" not in line and "max_records" not in line


def test_an_environment_variable_is_named_as_such(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    line = refused(capsys, "topic", "describe")
    assert "--bootstrap-servers (env KAFKA_BOOTSTRAP_SERVERS): " in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            "request_timeout_ms=60000 no_such=1",
            "configuration error: --kafka-option no_such: not a setting of the Kafka client",
        ),
        (
            "[request_timeout_ms=60000]",
            "configuration error: --kafka-option (env STREAM_REPLICA_KAFKA_OPTION): not a JSON "
            "list of NAME=VALUE strings (Expecting value: line 1 column 2 (char 1))",
        ),
    ],
)
def test_kafka_options_from_the_environment_are_read_or_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: str, expected: str
) -> None:
    """STREAM_REPLICA_KAFKA_OPTION=request_timeout_ms=60000 was a SettingsError (exit 1):
    pydantic-settings wants JSON for a list. Here its first item is read, the second refused."""
    monkeypatch.setenv("STREAM_REPLICA_KAFKA_OPTION", env)
    assert refused(capsys, "topic", "describe").startswith(f"stream-replica: {expected}")


def test_a_value_the_environment_gives_that_cannot_be_parsed_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any pydantic-settings SettingsError (a list or object field it reads as JSON): exit 2,
    naming the variable, not "SettingsError: error parsing value for field ..." (exit 1)."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from stream_replica import cli

    class Listed(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="STREAM_REPLICA_")
        numbers: list[int] = []

    def handler(_: object) -> int:
        Listed()
        return 0

    monkeypatch.setattr(cli, "cmd_stats", handler)
    monkeypatch.setenv("STREAM_REPLICA_NUMBERS", "1 2")
    assert refused(capsys, "stats", "--db", "x") == (
        "stream-replica: configuration error: env STREAM_REPLICA_NUMBERS (--numbers) cannot be "
        "parsed: Extra data: line 1 column 3 (char 2)"
    )


@pytest.mark.parametrize(
    ("variable", "value", "choices"),
    [
        ("STREAM_REPLICA_LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING, ERROR"),
        ("STREAM_REPLICA_LOG_FORMAT", "jsonl", "human, json"),
    ],
)
def test_a_log_setting_the_environment_gives_is_checked_as_the_flag_is(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    choices: str,
) -> None:
    """argparse checks the flags' choices, not a default from the environment: an unknown
    level ended in a traceback (exit 1), an unknown format was ignored."""
    monkeypatch.setenv(variable, value)
    option = "--log-level" if variable.endswith("LEVEL") else "--log-format"
    assert refused(capsys, "stats", "--db", "x") == (
        f"stream-replica: configuration error: env {variable} ({option}) is {value!r}: "
        f"choose one of {choices}"
    )
    capsys.readouterr()
    monkeypatch.setenv(variable, "debug" if option == "--log-level" else "json")  # accepted
    assert main(["stats", "--db", "x"]) == 2
    assert "no replica store at x" in capsys.readouterr().err  # the command itself ran


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--db", "{tmp}/db"],
        ["topic", "describe"],
        ["topic", "create"],
        ["publish", "--demo", "1"],
        ["audit", "--db", "{tmp}/db"],
        ["replay", "--db", "{tmp}/db", "--from-beginning"],
        ["demo", "--workdir", "{tmp}/demo"],
    ],
)
def test_every_command_refuses_a_malformed_bootstrap_address_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    """It used to reach aiokafka's connect: ``run`` retried a ValueError forever, the others
    exited 1 with ``ValueError: invalid literal for int()``."""
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command]
    started = time.monotonic()
    line = refused(capsys, *argv, "--bootstrap-servers", "host:notaport")
    assert line.startswith(
        "stream-replica: configuration error: --bootstrap-servers (env KAFKA_BOOTSTRAP_SERVERS): "
        "'host:notaport': the port 'notaport' is not a number from 1 to 65535"
    )
    assert time.monotonic() - started < 5
    assert not (tmp_path / "db").exists() and not (tmp_path / "demo").exists()


@pytest.mark.parametrize("command", [["run", "--db", "{tmp}/db"], ["topic", "describe"]])
def test_a_ca_file_that_is_not_pem_is_refused_at_start(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    """run retried the SSLError (X509: NO_CERTIFICATE_OR_CRL_FOUND) forever; the other
    commands exited 1 without naming --ssl-cafile."""
    cafile = tmp_path / "ca.pem"
    cafile.write_text("not a certificate\n")
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command]
    line = refused(capsys, *argv, "--security-protocol", "SSL", "--ssl-cafile", str(cafile))
    assert line == (
        "stream-replica: configuration error: --ssl-cafile (env STREAM_REPLICA_SSL_CAFILE): "
        f"cannot load {cafile} as CA certificates (no PEM certificate in it)"
    )
    assert not (tmp_path / "db").exists()


def test_the_error_line_is_one_line_whatever_the_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stream_replica.cli import fail

    fail("first\nsecond\r\n  third")
    assert capsys.readouterr().err == "stream-replica: first second third\n"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["demo", "--workers", "0"], "--workers"),
        (["demo", "--grains", "0"], "--grains"),
        (["demo", "--workers", "-2"], "--workers"),
        (["publish", "--demo", "0"], "--demo"),
    ],
)
def test_a_count_below_one_is_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    """demo --workers 0 waited 120 s for a group of no workers, then exited 1 with a
    RuntimeError; demo --grains 0 and publish --demo 0 failed in randrange (exit 1). Refused
    by the parser, before anything runs (main parses first)."""
    from stream_replica.cli import build_parser

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    assert f"argument {flag}: must be at least 1, got {argv[-1]}" in capsys.readouterr().err


def test_counts_of_one_or_more_are_accepted() -> None:
    from stream_replica.cli import build_parser

    args = build_parser().parse_args(["demo", "--workers", "1", "--grains", "2"])
    assert (args.workers, args.grains) == (1, 2)
    assert build_parser().parse_args(["publish", "--demo", "1"]).demo == 1
    assert build_parser().parse_args(["demo"]).workers == 3  # the default is not re-parsed


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["get", "--db", "x"], "the following arguments are required: grain_type, grain_key"),
        (["topic"], "the following arguments are required: {create,describe}"),
        ([], "the following arguments are required: {topic,publish,run,audit,get,dump,"),
        (["topic", "create", "--cleanup-policy", "x"], "argument --cleanup-policy: invalid choice"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    """argparse printed its whole usage before the error (16 lines for publish)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stream-replica: {expected}"), err
    assert err.rstrip().endswith("--help` lists the options)")


@pytest.mark.parametrize(
    ("grain", "expected"),
    [
        (("a/b", "x"), "grain_type 'a/b' contains '/'"),
        (("", "x"), "grain_type is empty"),
        (("cart", ""), "grain_key is empty (grain_type 'cart')"),
        (("cart", "\udcff"), "grain_key '\\udcff' is not UTF-8 text (surrogates not allowed)"),
    ],
)
def test_get_refuses_a_grain_the_http_api_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, grain: tuple[str, str], expected: str
) -> None:
    """get said "grain a/b/x not in ..." (exit 1) where GET /grains/a%2Fb/x answers 400.
    Refused before the store is opened (there is none here)."""
    from stream_replica.query_request import ReadError, grain_of

    line = refused(capsys, "get", "--db", str(tmp_path / "db"), *grain)
    assert line == f"stream-replica: GRAIN_TYPE GRAIN_KEY: {expected}"
    with pytest.raises(ReadError, match=re.escape(expected)):  # the same rule over HTTP
        grain_of({"grain_type": grain[0], "grain_key": grain[1]})


def test_get_of_an_absent_grain_says_when_its_partition_is_not_held_here(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from stream_replica.fold import FoldCounts
    from stream_replica.routing import partition_for
    from stream_replica.store import Checkpoint, ReplicaStore
    from stream_replica.store_records import TopicIdentity

    keys = {partition_for(("cart", f"c{i}"), 6): f"c{i}" for i in range(50)}
    db = tmp_path / "db"
    store = ReplicaStore(db, "orders")
    try:
        store.bind_topic(TopicIdentity(None, 6))
        store.apply({}, {0: Checkpoint(1, 0), 1: Checkpoint(1, 0)}, FoldCounts())
    finally:
        store.close()
    assert main(["get", "--db", str(db), "cart", keys[5]]) == 1
    assert capsys.readouterr().err == (
        f"stream-replica: grain cart/{keys[5]} not in {db}: it belongs to partition 5, which "
        "this store does not hold (another worker serves it)\n"
    )
    assert main(["get", "--db", str(db), "cart", keys[1]]) == 1
    assert capsys.readouterr().err == f"stream-replica: grain cart/{keys[1]} not in {db}\n"


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """One source: the package's ``__version__``, which pyproject.toml reads as well."""
    import importlib.metadata

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    expected = importlib.metadata.version("stream-replica")
    assert capsys.readouterr() == (f"stream-replica {expected}\n", "")


def test_a_store_failing_while_the_worker_runs_is_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A store that opened and then failed (a disk error) is a failure at run time, not a
    misconfiguration: exit 1 (main took every StoreError for a refused store, exit 2)."""
    from stream_replica.store import StoreError
    from stream_replica.worker import ReplicaWorker

    async def failing(self: ReplicaWorker) -> None:
        raise StoreError(f"RocksDB write to {tmp_path / 'db'} failed: IO error: No space left")

    monkeypatch.setattr(ReplicaWorker, "run", failing)
    code = main(["run", "--topic", "t", "--db", str(tmp_path / "db")])
    assert code == 1
    assert capfd.readouterr().err.strip().endswith("IO error: No space left")


@pytest.mark.parametrize(
    ("flag", "where"),
    [
        ("--sasl-password", "env STREAM_REPLICA_SASL_PASSWORD or --sasl-password-file"),
        ("--ssl-key-password", "env STREAM_REPLICA_SSL_KEY_PASSWORD or --ssl-key-password-file"),
    ],
)
def test_a_secret_is_never_taken_on_the_command_line(
    capsys: pytest.CaptureFixture[str], flag: str, where: str
) -> None:
    """ps, /proc/PID/cmdline and shell history show a command line: secrets come from the
    environment or a file only."""
    for argv in (["run", flag, "hunter2-SECRET"], ["topic", "describe", f"{flag}=hunter2-SECRET"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "hunter2" not in err, err
        assert f"{flag}: a secret is not taken on the command line" in err, err
        assert f"use {where}" in err, err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"{flag}-file PATH" in help_text and f"{flag} " not in help_text


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "--db", "x", "a", "b", "--sasl-password", "hunter2-SECRET"],  # get takes none
        ["dump", "--db", "x", "--sasl-password=hunter2-SECRET"],
        ["topic", "describe", "--sasl-pasword", "hunter2-SECRET"],  # misspelt
        ["run", "--db", "x", "--sasl-pass=hunter2-SECRET"],  # ambiguous abbreviation
        ["--ssl-key-password", "hunter2-SECRET", "run"],  # before the command
    ],
)
def test_a_refused_argument_line_never_echoes_a_secret(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """argparse's refusals quote what they refuse: the value of a password flag too."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stream-replica: "), err
    assert "hunter2" not in err and "SECRET" not in err, err
    assert "***" in err or "a secret is not taken on the command line" in err, err


@pytest.mark.parametrize(
    ("content", "expected"), [(b"hunter2-SECRET\xff\n", "is not UTF-8 text"), (b"\n", "is empty")]
)
def test_a_password_file_that_cannot_be_used_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, expected: str
) -> None:
    """A file not in UTF-8 was "configuration error: 'utf-8' codec can't decode byte 0xff in
    position 14" (no option named, a byte of the secret quoted); an unreadable one exit 1
    with "PermissionError: ..."; an empty one went to the broker as an empty password."""
    secret = tmp_path / "password"
    secret.write_bytes(content)
    line = refused(
        capsys, "topic", "describe", "--security-protocol", "SASL_PLAINTEXT",
        "--sasl-mechanism", "PLAIN", "--sasl-username", "u", "--sasl-password-file", str(secret),
    )  # fmt: skip
    assert line == (
        "stream-replica: configuration error: --sasl-password-file "
        f"(env STREAM_REPLICA_SASL_PASSWORD_FILE): {secret} {expected}"
    )
