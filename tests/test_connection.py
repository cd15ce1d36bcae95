"""The shared connection config: validation, per-client options, secrets kept secret."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from stream_replica import connection
from stream_replica.connection import (
    ConnectionSettings,
    parse_bootstrap_servers,
    parse_kafka_options,
    preflight,
    start_client,
)
from stream_replica.errors import ConfigurationError, KafkaAccessError, KafkaUnavailableError


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
        ({"sasl_password": "p"}, "--sasl-password .* given, but --security-protocol is PLAINTEXT"),
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


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two self-signed certificates with their keys (a, b), a's key encrypted with password
    'pw', and a file that is not PEM."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    directory = tmp_path_factory.mktemp("pem")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    for name in ("a", "b"):
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem",
        )  # fmt: skip
    openssl("pkey", "-in", "a.key", "-aes256", "-passout", "pass:pw", "-out", "a-enc.key")
    (directory / "not-pem.txt").write_text("not a certificate\n")
    return directory


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
            "its password with --ssl-key-password",
        ),
        (
            {"ssl_certfile": "a.pem", "ssl_keyfile": "a-enc.key", "ssl_key_password": "wrong"},
            "--ssl-key-password (env STREAM_REPLICA_SSL_KEY_PASSWORD): it does not decrypt "
            "{dir}/a-enc.key",
        ),
        (
            {"ssl_key_password": "pw"},
            "--ssl-key-password (env STREAM_REPLICA_SSL_KEY_PASSWORD) given without --ssl-keyfile",
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


@pytest.mark.broker
async def test_sasl_against_a_plaintext_listener_is_a_protocol_mismatch(
    kafka_bootstrap: str,
) -> None:
    """The broker answers ApiVersions, then refuses SaslHandshake (ILLEGAL_SASL_STATE):
    configuration, not a broker that is down."""
    settings = ConnectionSettings(
        bootstrap_servers=kafka_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",  # type: ignore[arg-type]
    )
    with pytest.raises(KafkaAccessError) as refused:
        await preflight(settings)
    assert isinstance(refused.value, ConfigurationError) and refused.value.exit_code == 2
    host, port = parse_bootstrap_servers(kafka_bootstrap)[0]
    assert str(refused.value).startswith(
        f"the broker at {host}:{port} answered, but the SASL handshake failed "
        "(ILLEGAL_SASL_STATE): is that listener PLAINTEXT, without SASL? check "
        "--security-protocol"
    )


async def test_an_unknown_host_is_named_as_such_not_as_refused() -> None:
    settings = ConnectionSettings(bootstrap_servers="nosuchhost.invalid:9092")
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await preflight(settings, timeout_s=5)
    assert str(unavailable.value).startswith(
        "cannot resolve host 'nosuchhost.invalid' of --bootstrap-servers nosuchhost.invalid:9092"
    )
    assert "refused" not in str(unavailable.value)
    settings = ConnectionSettings(bootstrap_servers="nosuchhost.invalid:9092,127.0.0.1:1")
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await preflight(settings, timeout_s=5)
    assert "nosuchhost.invalid:9092: cannot resolve host 'nosuchhost.invalid'" in str(
        unavailable.value
    )
    assert "127.0.0.1:1: connection refused" in str(unavailable.value)


async def test_a_listener_that_hangs_up_stays_unavailable_not_a_mismatch() -> None:
    """What a broker shutting down (or a load balancer with none behind it) does: accept and
    close. The protocol probes get none of a broker's answers (a TLS handshake, SaslHandshake),
    so this stays an outage, which `run` retries."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = ConnectionSettings(bootstrap_servers=f"127.0.0.1:{port}")
        with pytest.raises(KafkaUnavailableError) as unavailable:
            await preflight(settings, timeout_s=5)
    finally:
        server.close()
        await server.wait_closed()
    assert str(unavailable.value).startswith(f"no Kafka broker answered at 127.0.0.1:{port}")


@pytest.mark.parametrize("tls_server", [False, True], ids=["plain-server", "tls-server"])
async def test_a_listener_that_hangs_up_on_a_tls_client_stays_unavailable(
    pem: Path, tls_server: bool
) -> None:
    """The probes of a TLS client's failure (a plain ApiVersions, a TLS alert after the
    handshake) get no answer and no alert from a listener that accepts (and completes the
    handshake) and closes: an outage, which `run` retries."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server_context = None
    if tls_server:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(pem / "a.pem", pem / "a.key")
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = ConnectionSettings(
            bootstrap_servers=f"127.0.0.1:{port}",
            security_protocol="SSL",
            ssl_cafile=pem / "a.pem",
            ssl_check_hostname=False,  # (a.pem names no host)
        )
        with pytest.raises(KafkaUnavailableError) as unavailable:
            await preflight(settings, timeout_s=5)
    finally:
        server.close()
        await server.wait_closed()
    assert str(unavailable.value).startswith(f"no Kafka broker answered at 127.0.0.1:{port}")


@pytest.fixture
async def silent_listener() -> AsyncIterator[str]:
    """An address that accepts connections and never answers (a hung broker, another
    service's port)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_silent_listener_is_told_apart_from_no_connection(silent_listener: str) -> None:
    settings = ConnectionSettings(bootstrap_servers=silent_listener)
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await preflight(settings, timeout_s=1)
    assert str(unavailable.value).startswith(
        f"no Kafka broker answered at {silent_listener} over PLAINTEXT (the connection was "
        "accepted, but no Kafka answer came within 1 s: is it a Kafka listener"
    )


async def test_a_client_start_held_by_a_silent_listener_ends_with_the_preflight(
    silent_listener: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka waits for a silent bootstrap server until its request timeout (30-40 s) and
    then says only "Unable to bootstrap"; the pre-flight then took 10 s more. A start still
    pending after SLOW_START_S now has the pre-flight run beside it."""
    monkeypatch.setattr(connection, "SLOW_START_S", 0.2)
    monkeypatch.setattr(connection, "preflight", partial(preflight, timeout_s=1))
    settings = ConnectionSettings(bootstrap_servers=silent_listener)
    consumer = AIOKafkaConsumer(**settings.options("consumer"))
    began = time.monotonic()
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await start_client(settings, consumer)
    took_s = time.monotonic() - began
    assert "the connection was accepted, but no Kafka answer came" in str(unavailable.value)
    assert took_s < 10, took_s  # the client's own request timeout is 40 s
    assert consumer._closed  # stopped: no connection left behind


class _SlowStart:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.finished = self.cancelled = False

    async def start(self) -> None:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True


@pytest.mark.broker
async def test_a_slow_start_on_a_healthy_broker_is_waited_for(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-flight passing says nothing is wrong with the connection: the start goes on."""
    monkeypatch.setattr(connection, "SLOW_START_S", 0.1)
    client = _SlowStart(delay_s=1.0)
    await start_client(ConnectionSettings(bootstrap_servers=kafka_bootstrap), client)
    assert client.finished and not client.cancelled


async def test_a_slow_start_the_preflight_explains_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "SLOW_START_S", 0.1)
    client = _SlowStart(delay_s=30.0)
    settings = ConnectionSettings(bootstrap_servers="127.0.0.1:1")  # refused
    refused = re.escape("127.0.0.1:1 over PLAINTEXT (connection refused)")
    with pytest.raises(KafkaUnavailableError, match=refused):
        await start_client(settings, client)
    assert client.cancelled and not client.finished
