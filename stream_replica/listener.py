"""What a Kafka listener expects, asked by the pre-flight (diagnosis.py) when a client could
not use it. Only answers a running broker gives count, so an outage is never taken for a
protocol mismatch:

* a listener with SASL answers SaslHandshake with its mechanisms (error NONE, or
  UNSUPPORTED_SASL_MECHANISM for the one we named); one without refuses it as
  ILLEGAL_SASL_STATE. Asked over a connection that already answered ApiVersions, which a SASL
  listener allows before authentication.
* a TLS listener completes a TLS handshake (or answers it with a TLS alert, e.g. "certificate
  required"); a plain Kafka listener takes the ClientHello for a request frame and closes.
* a plain listener answers ApiVersions over plain TCP; a TLS one takes it for a bad record.
* a mutual-TLS listener refusing the client's certificate (or its lack) says so with an alert,
  with TLS 1.3 only after the client's side of the handshake is done: on the first read.

Nothing secret is sent: the handshake names a mechanism only, and TLS here verifies nothing
(it is never used for data), except in :func:`tls_alert`, which uses the client's own context
to learn why the listener refuses it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.conn import create_conn
from aiokafka.errors import IllegalSaslStateError, UnsupportedSaslMechanismError
from aiokafka.protocol.admin import SaslHandShakeRequest

log = logging.getLogger(__name__)

_SASL_ANSWERS: Final = (0, UnsupportedSaslMechanismError.errno)


@dataclass(frozen=True, slots=True)
class SaslAnswer:
    takes_sasl: bool
    mechanisms: tuple[str, ...] = ()


async def ask_sasl(conn: Any, timeout_s: float) -> SaslAnswer | None:
    """Whether the listener ``conn`` (an aiokafka connection) is on takes SASL, and with which
    mechanisms; None if it did not say."""
    try:
        response = await asyncio.wait_for(conn.send(SaslHandShakeRequest("PLAIN")), timeout_s)
    except Exception:
        log.debug("SaslHandshake probe failed", exc_info=True)
        return None
    if response.error_code in _SASL_ANSWERS:
        return SaslAnswer(True, tuple(str(m) for m in response.enabled_mechanisms))
    if response.error_code == IllegalSaslStateError.errno:
        return SaslAnswer(False)
    log.debug("SaslHandshake probe: error code %d", response.error_code)
    return None


async def unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to ``host:port`` fails, or None if it is accepted. Plain TCP: the
    listener's protocol is the pre-flight's business (diagnosis.py)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r} ({exc.strerror})"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return None


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe: whether TLS is spoken, not whom we trust
    return context


async def speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=_unverified()), timeout_s
        )
    except ssl.SSLError as exc:
        # An alert is the peer speaking TLS (refusing us, e.g. without a client certificate);
        # a plain listener gives EOF, a reset or bytes that are no TLS record.
        return "ALERT" in str(exc.reason or "")
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def tls_protocol(host: str, port: int, timeout_s: float) -> str | None:
    """``"SASL_SSL"`` or ``"SSL"`` for a TLS listener (``"SSL or SASL_SSL"`` when it would not
    say which: mutual TLS refuses a client without a certificate), None for one without TLS."""
    if not await speaks_tls(host, port, timeout_s):
        return None
    if await tls_alert(host, port, _unverified(), timeout_s) is not None:
        # Mutual TLS refusing a client without a certificate (TLS 1.3: after the handshake).
        # Asked through aiokafka's connection instead, the alert would end in a future nobody
        # retrieves, which asyncio logs with a traceback once the connection is collected.
        return "SSL or SASL_SSL"
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                port,
                ssl_context=_unverified(),
                security_protocol="SSL",
                request_timeout_ms=int(timeout_s * 1000),
            ),
            timeout_s,
        )
    except Exception:
        log.debug("TLS listener probe: no ApiVersions answer", exc_info=True)
        return "SSL or SASL_SSL"
    try:
        answer = await ask_sasl(conn, timeout_s)
    finally:
        conn.close()
    if answer is None:
        return "SSL or SASL_SSL"
    return "SASL_SSL" if answer.takes_sasl else "SSL"


async def plain_protocol(
    host: str, port: int, timeout_s: float
) -> tuple[str, tuple[str, ...]] | None:
    """``("PLAINTEXT", ())`` or ``("SASL_PLAINTEXT", mechanisms)`` for a listener that answers
    ApiVersions over plain TCP (so speaks no TLS); None for one that does not answer it."""
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host, port, security_protocol="PLAINTEXT", request_timeout_ms=int(timeout_s * 1000)
            ),
            timeout_s,
        )
    except Exception:
        log.debug("plain listener probe: no ApiVersions answer", exc_info=True)
        return None
    try:
        answer = await ask_sasl(conn, timeout_s)
    finally:
        conn.close()
    if answer is None:  # (it answered ApiVersions, so it is plain, but would not say more)
        return "PLAINTEXT or SASL_PLAINTEXT", ()
    return ("SASL_PLAINTEXT", answer.mechanisms) if answer.takes_sasl else ("PLAINTEXT", ())


async def sasl_mechanisms(
    host: str, port: int, context: ssl.SSLContext | None, timeout_s: float
) -> tuple[str, ...] | None:
    """The SASL mechanisms the listener enables, asked without authenticating (over TLS with
    ``context``, the client's own); None if it would not say."""
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                port,
                ssl_context=context,
                security_protocol="PLAINTEXT" if context is None else "SSL",
                request_timeout_ms=int(timeout_s * 1000),
            ),
            timeout_s,
        )
    except Exception:
        log.debug("SASL mechanisms probe: no ApiVersions answer", exc_info=True)
        return None
    try:
        answer = await ask_sasl(conn, timeout_s)
    finally:
        conn.close()
    return answer.mechanisms if answer is not None and answer.takes_sasl else None


def _api_versions_request() -> bytes:
    """A Kafka ApiVersions v0 request frame: api key 18, version 0, correlation id 1, client
    id "stream-replica-probe", no body; any broker answers it before authentication."""
    client_id = b"stream-replica-probe"
    header = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    return struct.pack(">i", len(header)) + header


async def tls_alert(host: str, port: int, context: ssl.SSLContext, timeout_s: float) -> str | None:
    """The reason (e.g. ``SSLV3_ALERT_BAD_CERTIFICATE``) of the TLS alert with which the
    listener refuses a client with ``context``, None if it answers (or fails otherwise: an
    outage is never taken for a refusal). An ApiVersions request is sent and its answer read
    because with TLS 1.3 the refusal of a client certificate arrives only then."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), timeout_s
        )
    except ssl.SSLError as exc:  # (TLS 1.2 refuses within the handshake)
        return _alert(exc)
    except (OSError, TimeoutError):
        log.debug("TLS alert probe: no handshake", exc_info=True)
        return None
    try:
        writer.write(_api_versions_request())
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(8), timeout_s)  # size and correlation id
    except ssl.SSLError as exc:
        return _alert(exc)
    except (OSError, EOFError, TimeoutError):
        log.debug("TLS alert probe: no answer and no alert", exc_info=True)
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):  # (bounded: a TLS close waits for the peer's)
            await asyncio.wait_for(writer.wait_closed(), timeout_s)
    return None


def _alert(exc: ssl.SSLError) -> str | None:
    reason = str(exc.reason or "")
    return reason if "ALERT" in reason else None
