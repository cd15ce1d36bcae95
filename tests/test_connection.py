"""The shared connection config: validation, per-client options, secrets kept secret."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_replica.connection import (
    ConnectionSettings,
    parse_bootstrap_servers,
    parse_kafka_options,
)


def test_plaintext_defaults_give_plain_options() -> None:
    settings = ConnectionSettings(bootstrap_servers="b:9092")
    assert settings.options("consumer") == {
        "bootstrap_servers": "b:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_options_and_the_password_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-value\n")
    settings = ConnectionSettings(
        bootstrap_servers="b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="replica",
        sasl_password_file=secret,
    )
    options = settings.options("producer")
    assert options["sasl_plain_password"] == "s3cr3t-value"  # trailing newline dropped
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    for text in (repr(settings), str(settings), settings.describe(), str(settings.model_dump())):
        assert "s3cr3t-value" not in text


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_REPLICA_SASL_PASSWORD", "from-env")
    settings = ConnectionSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u"
    )
    assert settings.options("admin")["sasl_plain_password"] == "from-env"
    assert "ssl_context" not in settings.options("admin")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"security_protocol": "SASL_SSL"},
            "SASL_SSL, which needs --sasl-mechanism \\(env STREAM_REPLICA_SASL_MECHANISM\\), "
            "--sasl-username",
        ),
        (
            {"sasl_username": "u"},
            "--sasl-username \\(env STREAM_REPLICA_SASL_USERNAME\\) given, but "
            "--security-protocol is PLAINTEXT",
        ),
        (
            {"sasl_password": "p"},
            "env STREAM_REPLICA_SASL_PASSWORD or --sasl-password-file given, but "
            "--security-protocol is PLAINTEXT",
        ),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "not a readable file"),
        ({"kafka_option": ["no-equals"]}, "expected NAME=VALUE"),
        ({"kafka_option": ["group_id=x"]}, "group_id: set by stream-replica itself: use --group"),
        ({"kafka_option": ["fetch.max.bites=1"]}, "not a setting of the Kafka client"),
        ({"kafka_option": ["request_timeout_ms=soon"]}, "expected an integer"),
    ],
)
def test_misconfiguration_is_one_clear_message(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConnectionSettings(**given)  # type: ignore[arg-type]


def test_mutual_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match=r"needs both --ssl-certfile .* and --ssl-keyfile"):
        ConnectionSettings(security_protocol="SSL", ssl_certfile=cert)


def test_passthrough_goes_only_to_clients_that_accept_it() -> None:
    assert parse_kafka_options(["request.timeout.ms=60000", "linger_ms=7"]) == {
        "request_timeout_ms": 60000,
        "linger_ms": 7,
    }
    settings = ConnectionSettings(kafka_option=["linger_ms=7", "fetch_max_wait_ms=50"])
    assert settings.options("producer")["linger_ms"] == 7
    assert "linger_ms" not in settings.options("consumer")
    assert settings.options("consumer")["fetch_max_wait_ms"] == 50
    assert parse_kafka_options(["check_crcs=false"]) == {"check_crcs": False}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("request_timeout_ms=60000", ["request_timeout_ms=60000"]),
        (" linger_ms=7\trequest.timeout.ms=60000\n", ["linger_ms=7", "request.timeout.ms=60000"]),
        ('["client_id=a b", "linger_ms=7"]', ["client_id=a b", "linger_ms=7"]),
        ("", []),
    ],
)
def test_kafka_options_from_the_environment_in_the_natural_form(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: list[str]
) -> None:
    """pydantic-settings read the variable as JSON only: request_timeout_ms=60000 was a
    SettingsError (exit 1)."""
    monkeypatch.setenv("STREAM_REPLICA_KAFKA_OPTION", env)
    assert ConnectionSettings().kafka_option == expected
    assert ConnectionSettings(kafka_option=["linger_ms=3"]).kafka_option == ["linger_ms=3"]


def test_kafka_options_from_the_environment_that_are_not_a_json_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAM_REPLICA_KAFKA_OPTION", '["linger_ms=7"')
    with pytest.raises(ValidationError, match="not a JSON list of NAME=VALUE strings"):
        ConnectionSettings()


@pytest.mark.parametrize(
    ("given", "hosts"),
    [
        ("b:9092", [("b", 9092)]),
        (" b1:1 , 10.0.0.2:65535", [("b1", 1), ("10.0.0.2", 65535)]),
        (
            "[::1]:9092,kafka-0.kafka.svc.cluster.local.:9093",
            [("::1", 9092), ("kafka-0.kafka.svc.cluster.local.", 9093)],
        ),
    ],
)
def test_bootstrap_servers_accepted(given: str, hosts: list[tuple[str, int]]) -> None:
    assert parse_bootstrap_servers(given) == hosts
    settings = ConnectionSettings(bootstrap_servers=given)
    assert settings.bootstrap_servers == ",".join(i.strip() for i in given.split(","))


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("host:notaport", "the port 'notaport' is not a number from 1 to 65535"),
        ("foo:bar:baz", "'foo:bar' is not a host name"),
        ("b:0", "the port '0' is not a number"),
        ("b:65536", "the port '65536' is not a number"),
        ("b", "'b' has no port"),
        ("[::1]", "'[::1]' has no port"),
        ("::1", "an IPv6 address goes in brackets"),
        ("[nope]:1", "'nope' is not an IPv6 address"),
        ("a:1,,b:2", "has an empty entry"),
        ("PLAINTEXT://b:9092", "no scheme here"),
        ("my host:9092", "'my host' is not a host name"),
    ],
)
def test_malformed_bootstrap_servers_refused(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_bootstrap_servers(given)
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        ConnectionSettings(bootstrap_servers=given)
    assert refused.value.errors()[0]["loc"] == ("bootstrap_servers",)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"ssl_cafile": "not-pem.txt"},
            "--ssl-cafile (env STREAM_REPLICA_SSL_CAFILE): cannot load {dir}/not-pem.txt as CA "
            "certificates (no PEM certificate in it)",
        ),
        (
            {"ssl_certfile": "not-pem.txt", "ssl_keyfile": "a.key"},
            "--ssl-certfile (env STREAM_REPLICA_SSL_CERTFILE): cannot load {dir}/not-pem.txt as "
            "a certificate",
        ),
        (
            {"ssl_certfile": "a.pem", "ssl_keyfile": "not-pem.txt"},
            "--ssl-keyfile (env STREAM_REPLICA_SSL_KEYFILE): cannot load {dir}/not-pem.txt as a "
            "private key",
        ),
        (
            {"ssl_certfile": "a.pem", "ssl_keyfile": "b.key"},
            "--ssl-keyfile {dir}/b.key does not hold the key of the certificate in "
            "--ssl-certfile {dir}/a.pem",
        ),
        (
            {"ssl_certfile": "a.pem", "ssl_keyfile": "a-enc.key"},
            "--ssl-keyfile (env STREAM_REPLICA_SSL_KEYFILE): {dir}/a-enc.key is encrypted; give "
            "its password in env STREAM_REPLICA_SSL_KEY_PASSWORD or --ssl-key-password-file",
        ),
        (
            {"ssl_certfile": "a.pem", "ssl_keyfile": "a-enc.key", "ssl_key_password": "wrong"},
            "env STREAM_REPLICA_SSL_KEY_PASSWORD or --ssl-key-password-file: it does not decrypt "
            "{dir}/a-enc.key",
        ),
        (
            {"ssl_key_password": "pw"},
            "env STREAM_REPLICA_SSL_KEY_PASSWORD or --ssl-key-password-file given without "
            "--ssl-keyfile",
        ),
    ],
)
def test_tls_files_that_cannot_be_loaded_are_refused_naming_option_and_file(
    pem: Path, files: dict[str, str], message: str
) -> None:
    given = {k: v if k == "ssl_key_password" else pem / v for k, v in files.items()}
    with pytest.raises(ValidationError) as refused:
        ConnectionSettings(security_protocol="SSL", **given)  # type: ignore[arg-type]
    assert message.format(dir=pem) in str(refused.value)
    assert "wrong" not in str(refused.value)  # a password is never echoed


def test_the_tls_context_is_built_once_with_an_encrypted_key(pem: Path) -> None:
    settings = ConnectionSettings(
        security_protocol="SSL",
        ssl_cafile=pem / "b.pem",
        ssl_certfile=pem / "a.pem",
        ssl_keyfile=pem / "a-enc.key",
        ssl_key_password="pw",  # type: ignore[arg-type]
        ssl_check_hostname=False,
    )
    context = settings.options("consumer")["ssl_context"]
    assert context is settings.options("producer")["ssl_context"] is settings.ssl_context()
    assert isinstance(context, ssl.SSLContext) and not context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "b"),),)]
    assert "pw" not in repr(settings)


def test_the_key_password_from_a_file(pem: Path, tmp_path: Path) -> None:
    secret = tmp_path / "key-password"
    secret.write_text("pw\n")
    settings = ConnectionSettings(
        security_protocol="SSL",
        ssl_cafile=pem / "b.pem",
        ssl_certfile=pem / "a.pem",
        ssl_keyfile=pem / "a-enc.key",
        ssl_key_password_file=secret,
    )
    assert isinstance(settings.ssl_context(), ssl.SSLContext)
    with pytest.raises(ValidationError, match="give the key's password once"):
        ConnectionSettings(
            security_protocol="SSL",
            ssl_keyfile=pem / "a-enc.key",
            ssl_certfile=pem / "a.pem",
            ssl_key_password="pw",  # type: ignore[arg-type]
            ssl_key_password_file=secret,
        )
