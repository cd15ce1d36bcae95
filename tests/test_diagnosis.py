"""Why a connection fails (stream_replica/diagnosis.py): the pre-flight's one line for each
kind of failure, an outage never taken for a misconfiguration."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from stream_replica.connection import ConnectionSettings, parse_bootstrap_servers
from stream_replica.diagnosis import preflight
from stream_replica.errors import ConfigurationError, KafkaAccessError, KafkaUnavailableError


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


async def test_a_silent_listener_is_told_apart_from_no_connection(silent_listener: str) -> None:
    settings = ConnectionSettings(bootstrap_servers=silent_listener)
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await preflight(settings, timeout_s=1)
    assert str(unavailable.value).startswith(
        f"no Kafka broker answered at {silent_listener} over PLAINTEXT (the connection was "
        "accepted, but no Kafka answer came within 1 s: is it a Kafka listener"
    )


def _expired_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid on 1-2 January 2020 only, and its key."""
    (directory / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n"
    )
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("01\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=old", "-keyout", "old.key", "-out", "old.csr",
    )  # fmt: skip
    openssl(
        "ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "old.key", "-in",
        "old.csr", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
        "-out", "old.pem",
    )  # fmt: skip
    return directory / "old.pem", directory / "old.key"


async def test_an_expired_broker_certificate_is_named_as_such(tmp_path: Path) -> None:
    """It was "not trusted (certificate has expired); check --ssl-cafile": the CA file is
    right, the certificate needs renewing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    cert, key = _expired_certificate(tmp_path)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = ConnectionSettings(
            bootstrap_servers=f"127.0.0.1:{port}",
            security_protocol="SSL",
            ssl_cafile=cert,
            ssl_check_hostname=False,  # (it names no host)
        )
        with pytest.raises(KafkaAccessError) as refused:
            await preflight(settings, timeout_s=5)
    finally:
        server.close()
        await server.wait_closed()
    assert str(refused.value) == (
        f"TLS: the certificate of 127.0.0.1:{port} is not valid now (certificate has "
        "expired): the broker's certificate (or its CA's) must be renewed, or this host's "
        "clock is wrong"
    )
