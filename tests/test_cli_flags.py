"""Flags derived from the settings models."""

from __future__ import annotations

import argparse

import pytest

from stream_replica.cli_flags import add_model_flags, settings_from
from stream_replica.connection import ConnectionSettings


def parser_for() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_model_flags(parser, ConnectionSettings)
    return parser


def test_every_field_is_a_flag_with_help_and_env() -> None:
    text = " ".join(parser_for().format_help().split())
    secrets = {"sasl_password", "ssl_key_password"}
    for name in ConnectionSettings.model_fields:
        flag = "--" + name.replace("_", "-")
        # a secret has no flag shown (refused on the command line), only its file's
        assert (f"{flag} " not in text) if name in secrets else (flag in text), flag
    assert "env KAFKA_BOOTSTRAP_SERVERS" in text
    assert "env STREAM_REPLICA_SECURITY_PROTOCOL" in text
    assert "password itself in env STREAM_REPLICA_SASL_PASSWORD, never a flag" in text
    assert "password itself in env STREAM_REPLICA_SSL_KEY_PASSWORD, never a flag" in text


def test_flags_override_env_which_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:1")
    monkeypatch.setenv("STREAM_REPLICA_SSL_CHECK_HOSTNAME", "false")
    args = parser_for().parse_args(["--kafka-option", "linger_ms=3", "--kafka-option", "a_b=1"])
    with pytest.raises(ValueError, match="a_b: not a setting"):
        settings_from(ConnectionSettings, args)
    args = parser_for().parse_args(
        ["--bootstrap-servers", "flag:2", "--kafka-option", "linger_ms=3"]
    )
    settings = settings_from(ConnectionSettings, args)
    assert settings.bootstrap_servers == "flag:2"
    assert settings.ssl_check_hostname is False  # from the environment
    assert settings.kafka_option == ["linger_ms=3"]


def test_choices_come_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--security-protocol", "TLS"])
    assert "invalid choice: 'TLS'" in capsys.readouterr().err


def test_a_required_setting_says_required_not_an_internal_default() -> None:
    from stream_replica.settings import WorkerSettings

    parser = argparse.ArgumentParser(prog="x")
    add_model_flags(parser, WorkerSettings)
    text = " ".join(parser.format_help().split())
    assert "env STREAM_REPLICA_DB; required" in text
    assert "Undefined" not in text


def test_every_default_is_shown_even_false_and_zero() -> None:
    from stream_replica.settings import WorkerSettings

    parser = argparse.ArgumentParser(prog="x")
    add_model_flags(parser, WorkerSettings)
    text = " ".join(parser.format_help().split())
    assert "env STREAM_REPLICA_STANDBY_REPLICAS; default 0)" in text
    assert "env STREAM_REPLICA_ALLOW_NON_COMPACTED; default off)" in text
    assert "env STREAM_REPLICA_REPAIR_SHADOWED; default off)" in text
    assert "env STREAM_REPLICA_SSL_CHECK_HOSTNAME; default on)" in text
    assert "env STREAM_REPLICA_MAX_RECORDS; default 100)" in text
    assert "env STREAM_REPLICA_DLQ_TOPIC)" in text  # None: the description says what then
    assert "env STREAM_REPLICA_KAFKA_OPTION)" in text  # an empty list
