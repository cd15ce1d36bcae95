"""What a Kafka listener expects, asked by the pre-flight (connection.py) when a client without
SASL could not use it. Only answers a running broker gives count, so an outage is never taken
for a protocol mismatch:

* a listener with SASL answers SaslHandshake with its mechanisms (error NONE, or
  UNSUPPORTED_SASL_MECHANISM for the one we named); one without refuses it as
  ILLEGAL_SASL_STATE. Asked over a connection that already answered ApiVersions, which a SASL
  listener allows before authentication.
* a TLS listener completes a TLS handshake (or answers it with a TLS alert, e.g. "certificate
  required"); a plain Kafka listener takes the ClientHello for a request frame and closes.

Nothing secret is sent: the handshake names a mechanism only, and TLS here verifies nothing
(it is never used for data)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
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
