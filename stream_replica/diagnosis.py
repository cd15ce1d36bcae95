"""Why a Kafka connection fails, as one line an operator can act on: a pre-flight connection
that turns what must be fixed (a wrong password, an untrusted certificate, a listener of
another protocol) into a clear error instead of a retry loop, and an outage into a
:class:`KafkaUnavailableError` naming each address and what happened there.

aiokafka only logs the real cause of a failed SASL handshake and then raises the same
``KafkaConnectionError`` as for a network failure, so the pre-flight opens one connection
itself, where the cause arrives as an exception. What a listener expects is asked by
listener.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Final

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from stream_replica import listener
from stream_replica.cli_flags import option_label
from stream_replica.connection import ConnectionSettings, parse_bootstrap_servers
from stream_replica.errors import KafkaAccessError, KafkaUnavailableError, StreamReplicaError

log = logging.getLogger(__name__)


async def connect(
    settings: ConnectionSettings,
    host: str,
    port: int,
    timeout_s: float,
    context: ssl.SSLContext | None = None,
) -> Any:
    """One aiokafka connection to ``host:port`` as the settings' clients make it (TLS, SASL),
    for asking a broker something directly; the caller closes it. ``context``: the settings'
    TLS context, if the caller has it already."""
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return await asyncio.wait_for(
        create_conn(
            host,
            port,
            ssl_context=context if context is not None else settings.ssl_context(),
            security_protocol=settings.security_protocol,
            sasl_mechanism=settings.sasl_mechanism or "PLAIN",
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password,
            request_timeout_ms=int(timeout_s * 1000),
        ),
        timeout_s,
    )


async def preflight(settings: ConnectionSettings, timeout_s: float = 10.0) -> None:
    """Open one connection to a bootstrap server. Raises :class:`KafkaAccessError` for what
    retrying cannot fix (credentials, certificates, a listener of another protocol), else
    :class:`KafkaUnavailableError` saying what happened at each address (the caller may
    retry that with backoff)."""
    failures: list[tuple[str, int, str]] = []
    unresolved: list[tuple[str, str]] = []  # (host, why)
    context = settings.ssl_context()
    for host, port in parse_bootstrap_servers(settings.bootstrap_servers):
        try:
            conn = await connect(settings, host, port, timeout_s, context)
        except UnsupportedSaslMechanismError:
            # Not the credentials (aiokafka's text is then only the connection's repr).
            raise KafkaAccessError(
                await _mechanism_refused(settings, host, port, context, timeout_s)
            ) from None
        except SaslAuthenticationFailed as exc:
            raise KafkaAccessError(
                f"SASL authentication failed at {host}:{port} for user "
                f"{settings.sasl_username!r} ({settings.sasl_mechanism}): check the user name "
                f"and password ({_reason(exc)})"
            ) from None
        except IllegalSaslStateError:
            # The broker answered ApiVersions, then refused SaslHandshake as not valid in
            # this state: the listener has no SASL (Kafka's answer on a PLAINTEXT or SSL
            # listener). Not a network failure: retrying cannot fix it.
            plain = "PLAINTEXT" if settings.security_protocol == "SASL_PLAINTEXT" else "SSL"
            raise KafkaAccessError(
                f"the broker at {host}:{port} answered, but the SASL handshake failed "
                f"(ILLEGAL_SASL_STATE): is that listener {plain}, without SASL? check "
                f"{option_label('security_protocol')} and the port"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessError(_untrusted(host, port, exc)) from None
        except ssl.SSLError as exc:
            reason = str(exc.reason or exc)
            if (refused := _certificate_refused(settings, host, port, reason)) is not None:
                raise refused from None
            if (mismatch := await _tls_on_plaintext(settings, host, port, timeout_s)) is not None:
                raise mismatch from None
            raise KafkaAccessError(
                f"TLS handshake with {host}:{port} failed ({reason}); check "
                "--security-protocol, the client certificate and key"
            ) from None
        except socket.gaierror as exc:
            unresolved.append((host, exc.strerror or str(exc)))
            failures.append((host, port, f"cannot resolve host {host!r} ({exc.strerror})"))
        except ConnectionRefusedError:
            failures.append((host, port, "connection refused"))
        except TimeoutError:
            failures.append((host, port, await _silent(host, port, timeout_s)))
        except ConnectionResetError:
            # (What a plain listener does to a TLS handshake, and a TLS one to a plain client.)
            if (mismatch := await _mismatch(settings, host, port, timeout_s)) is not None:
                raise mismatch from None
            why = "connection reset"
            if context is not None:
                why += " during the TLS handshake"
            failures.append((host, port, why))
        except (OSError, KafkaError) as exc:
            # (A TLS listener closes a plain connection on its first request; a mutual-TLS one
            # closes a client whose certificate it refuses, which aiokafka reports as closed.)
            if (mismatch := await _mismatch(settings, host, port, timeout_s)) is not None:
                raise mismatch from None
            failures.append((host, port, f"{type(exc).__name__}: {exc}"))
        else:
            try:
                answer = None
                if not settings.security_protocol.startswith("SASL_"):
                    answer = await listener.ask_sasl(conn, timeout_s)
            finally:
                conn.close()
            if answer is not None and answer.takes_sasl:
                raise KafkaAccessError(_wants_sasl(settings, host, port, answer.mechanisms))
            return
    raise _unavailable(settings, failures, unresolved)


async def _mechanism_refused(
    settings: ConnectionSettings,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    timeout_s: float,
) -> str:
    """A listener that does not enable our SASL mechanism: which ones it does."""
    mechanisms = await listener.sasl_mechanisms(host, port, context, timeout_s)
    enabled = f"it enables {', '.join(mechanisms)}" if mechanisms else "it would not say which"
    return (
        f"the broker at {host}:{port} does not enable the SASL mechanism "
        f"{settings.sasl_mechanism} ({enabled}): set {option_label('sasl_mechanism')} to one "
        "it enables"
    )


async def _silent(host: str, port: int, timeout_s: float) -> str:
    """Why a connection that did not answer in time did not: the TCP connection, or Kafka's
    first request over one the listener accepted (something else on the port, or a broker
    too busy to answer)."""
    if await listener.unreachable(host, port, min(timeout_s, 3.0)) is not None:
        return f"no answer within {timeout_s:g} s"
    return (
        f"the connection was accepted, but no Kafka answer came within {timeout_s:g} s: "
        "is it a Kafka listener, and is the broker overloaded?"
    )


def _wants_sasl(
    settings: ConnectionSettings, host: str, port: int, mechanisms: tuple[str, ...]
) -> str:
    """A listener with SASL answered a client without (PLAINTEXT: it is SASL_PLAINTEXT)."""
    protocol = settings.security_protocol
    sasl = "SASL_SSL" if protocol == "SSL" else "SASL_PLAINTEXT"
    return (
        f"the broker at {host}:{port} expects SASL ({', '.join(mechanisms) or 'no mechanism'}), "
        f"but --security-protocol is {protocol}: use --security-protocol {sasl} with "
        "--sasl-mechanism, --sasl-username and a password, or check the port"
    )


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the CA is trusted, the name is not in the certificate.
_HOSTNAME_MISMATCH: Final = 62
# X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: a certificate in the broker's
# chain is outside its validity (another --ssl-cafile would not help).
_OUT_OF_DATE: Final = frozenset({9, 10})
# The alerts a mutual-TLS listener refuses a client certificate (or the lack of one) with:
# Java's (Kafka's) bad_certificate for none and certificate_unknown for an untrusted one,
# TLS 1.3's certificate_required, and what other TLS stacks send.
_CERTIFICATE_ALERTS: Final = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
    }
)
# Some TLS 1.2 stacks refuse a missing certificate so, but also a handshake with no TLS version
# or cipher in common: a missing certificate is named as a possibility only.
_HANDSHAKE_FAILURE: Final = "SSLV3_ALERT_HANDSHAKE_FAILURE"


def _untrusted(host: str, port: int, exc: ssl.SSLCertVerificationError) -> str:
    if exc.verify_code == _HOSTNAME_MISMATCH:
        return (
            f"TLS: the certificate of {host}:{port} does not name that host "
            f"({exc.verify_message}): connect by a host name or address it holds, or turn "
            "the check off with --no-ssl-check-hostname"
        )
    if exc.verify_code in _OUT_OF_DATE:
        return (
            f"TLS: the certificate of {host}:{port} is not valid now ({exc.verify_message}): "
            "the broker's certificate (or its CA's) must be renewed, or this host's clock is "
            "wrong"
        )
    return (
        f"TLS: the certificate of {host}:{port} is not trusted ({exc.verify_message}); "
        "check --ssl-cafile (the CA that signed the broker's certificate)"
    )


async def _mismatch(
    settings: ConnectionSettings, host: str, port: int, timeout_s: float
) -> KafkaAccessError | None:
    """Why a listener that hung up on us will never take this client, asked of it (see
    listener.py); None if it gave none of a running broker's answers (an outage, retried)."""
    context = settings.ssl_context()
    if context is None:
        return await _plaintext_on_tls(settings, host, port, timeout_s)
    if (mismatch := await _tls_on_plaintext(settings, host, port, timeout_s)) is not None:
        return mismatch
    reason = await listener.tls_alert(host, port, context, timeout_s)
    return None if reason is None else _certificate_refused(settings, host, port, reason)


def _certificate_refused(
    settings: ConnectionSettings, host: str, port: int, reason: str
) -> KafkaAccessError | None:
    """A TLS listener's alert refusing our client certificate, or its lack, as one line."""
    if reason == _HANDSHAKE_FAILURE:
        return KafkaAccessError(
            f"the broker at {host}:{port} refused the TLS handshake ({reason}): if it requires "
            "a client certificate (mutual TLS), check --ssl-certfile and --ssl-keyfile; else "
            "it shares no TLS version or cipher with us"
        )
    if reason not in _CERTIFICATE_ALERTS:
        return None
    if settings.ssl_certfile is None:
        return KafkaAccessError(
            f"the broker at {host}:{port} requires a client certificate (mutual TLS) and "
            f"refused the connection without one ({reason}): give --ssl-certfile and "
            "--ssl-keyfile"
        )
    if (not_valid := _not_valid_now(settings.ssl_certfile)) is not None:
        return KafkaAccessError(
            f"the broker at {host}:{port} refused the client certificate --ssl-certfile "
            f"{settings.ssl_certfile} ({reason}): it {not_valid}; renew it, or check this "
            "host's clock"
        )
    return KafkaAccessError(
        f"the broker at {host}:{port} refused the client certificate --ssl-certfile "
        f"{settings.ssl_certfile} ({reason}): use one signed by a CA the broker trusts "
        "(its ssl.truststore), with its key in --ssl-keyfile"
    )


def _not_valid_now(certfile: Path) -> str | None:
    """Why a certificate is outside its dates ("expired on <date>", "is valid only from
    <date>"; a broker refuses it as it refuses an untrusted one), else None. Read with the
    ssl module's certificate decoder: the public API reads only a peer's certificate."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        fields = decode(str(certfile))
        not_before, not_after = fields["notBefore"], fields["notAfter"]
        now = time.time()
        if now > ssl.cert_time_to_seconds(not_after):
            return f"expired on {not_after}"
        if now < ssl.cert_time_to_seconds(not_before):
            return f"is valid only from {not_before}"
    except (OSError, ssl.SSLError, KeyError, ValueError, TypeError):
        return None
    return None


async def _tls_on_plaintext(
    settings: ConnectionSettings, host: str, port: int, timeout_s: float
) -> KafkaAccessError | None:
    """A TLS client whose handshake a plain listener hung up on: the mismatch, with the
    protocol to use; None if the listener does not answer a plain ApiVersions."""
    protocol = settings.security_protocol
    if protocol not in ("SSL", "SASL_SSL"):
        return None
    found = await listener.plain_protocol(host, port, timeout_s)
    if found is None:
        return None
    plain, mechanisms = found
    if plain == "SASL_PLAINTEXT" and protocol == "SSL":
        how = (
            f"SASL_PLAINTEXT (that listener expects SASL: {', '.join(mechanisms)}), with "
            "--sasl-mechanism, --sasl-username and a password,"
        )
    elif plain == "PLAINTEXT" and protocol == "SASL_SSL":
        how = "PLAINTEXT (that listener takes no SASL either)"
    else:
        how = f"{plain},"
    return KafkaAccessError(
        f"the broker at {host}:{port} speaks no TLS ({plain}), but --security-protocol is "
        f"{protocol}: use --security-protocol {how} without the --ssl-* options, or check "
        "the port"
    )


async def _plaintext_on_tls(
    settings: ConnectionSettings, host: str, port: int, timeout_s: float
) -> KafkaAccessError | None:
    """A client without TLS that a TLS listener hung up on: the mismatch, with the protocol to
    use; None if the listener does not speak TLS (or the client does)."""
    client = settings.security_protocol
    if client not in ("PLAINTEXT", "SASL_PLAINTEXT"):
        return None
    protocol = await listener.tls_protocol(host, port, timeout_s)
    if protocol is None:
        return None
    with_sasl = "" if client == "SASL_PLAINTEXT" else " and SASL"
    no_sasl = " (that listener takes no SASL)" if client == "SASL_PLAINTEXT" else ""
    how = {
        "SASL_SSL": f"SASL_SSL (that listener expects SASL too), with --ssl-cafile{with_sasl}",
        "SSL": f"SSL{no_sasl}, with --ssl-cafile",
    }.get(
        protocol,
        "SSL or SASL_SSL (it would not say which; mutual TLS asks for "
        "--ssl-certfile and --ssl-keyfile)",
    )
    return KafkaAccessError(
        f"the broker at {host}:{port} speaks TLS, but --security-protocol is {client}: use "
        f"--security-protocol {how}, or check the port"
    )


def _unavailable(
    settings: ConnectionSettings,
    failures: list[tuple[str, int, str]],
    unresolved: list[tuple[str, str]],
) -> KafkaUnavailableError:
    servers = settings.bootstrap_servers
    if len(failures) == len(unresolved):  # DNS only (can be transient: a pod not up yet)
        names = ", ".join(repr(host) for host, _ in unresolved)
        reasons = sorted({why for _, why in unresolved})
        return KafkaUnavailableError(
            f"cannot resolve host {names} of --bootstrap-servers {servers} "
            f"({'; '.join(reasons)}); check the host names and DNS"
        )
    if len(failures) == 1:
        detail = failures[0][2]
    else:
        detail = "; ".join(f"{host}:{port}: {why}" for host, port, why in failures)
    return KafkaUnavailableError(
        f"no Kafka broker answered at {servers} over {settings.security_protocol} ({detail}); "
        "check --bootstrap-servers, --security-protocol and that the brokers are up"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if text else type(exc).__name__


async def explain_failure(settings: ConnectionSettings, exc: BaseException) -> StreamReplicaError:
    """Why a client could not start, as one line, learned from a pre-flight connection
    (aiokafka only logs the cause and raises "Unable to bootstrap"): credentials,
    certificates, a listener of another protocol, an unknown host, a refused connection."""
    try:
        await preflight(settings)
    except StreamReplicaError as explained:
        return explained
    except Exception:
        log.debug("pre-flight connection failed", exc_info=True)
    # The pre-flight connection worked: the client's failure was passing (or not about
    # connecting), so say what the client said.
    detail = str(exc) or type(exc).__name__
    if "Unable to bootstrap" in detail:
        detail = "no bootstrap server gave the cluster metadata, though one accepted a connection"
    return KafkaUnavailableError(
        f"Kafka at {settings.bootstrap_servers} over {settings.security_protocol} failed to "
        f"start a client ({detail}); check --bootstrap-servers, --security-protocol and that "
        "the brokers are up"
    )
