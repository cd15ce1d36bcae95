"""One connection config for every Kafka client (worker, DLQ and repair producers, admin,
publisher, replay, audit, demo): bootstrap servers, TLS, SASL, and validated passthrough
options, plus a pre-flight check that turns the failures an operator must fix (wrong
password, untrusted certificate) into one clear line instead of a retry loop.

aiokafka only logs the real cause of a failed SASL handshake and then raises the same
``KafkaConnectionError`` as for a network failure, so the pre-flight opens one connection
itself, where the cause arrives as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import socket
import ssl
from collections.abc import Awaitable
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_replica import listener
from stream_replica.cli_flags import option_label
from stream_replica.errors import KafkaAccessError, KafkaUnavailableError, StreamReplicaError
from stream_replica.refusals import refusal

log = logging.getLogger(__name__)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# Set by stream-replica itself: a passthrough option may not override them.
_MANAGED: Final = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "group_id",
        "group_instance_id",
        "enable_auto_commit",
        "auto_offset_reset",
        "enable_idempotence",
        "acks",
        "partition_assignment_strategy",
        "key_deserializer",
        "value_deserializer",
        "key_serializer",
        "value_serializer",
        "loop",
    }
)
# The flag that sets a managed option, where there is one.
_MANAGED_BY: Final = {
    "bootstrap_servers": "--bootstrap-servers",
    "security_protocol": "--security-protocol",
    "ssl_context": "--ssl-cafile, --ssl-certfile, --ssl-keyfile and --ssl-check-hostname",
    "sasl_mechanism": "--sasl-mechanism",
    "sasl_plain_username": "--sasl-username",
    "sasl_plain_password": "--sasl-password-file or env STREAM_REPLICA_SASL_PASSWORD",
    "group_id": "--group",
    "group_instance_id": "--instance-id",
}
_CLIENTS: Final = {
    "consumer": AIOKafkaConsumer,
    "producer": AIOKafkaProducer,
    "admin": AIOKafkaAdminClient,
}


@cache
def _parameters(client: str) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(_CLIENTS[client].__init__)
    return {n: p for n, p in signature.parameters.items() if n not in ("self", "args", "kwargs")}


def _parse_value(name: str, text: str) -> object:
    defaults = [p.default for c in _CLIENTS if (p := _parameters(c).get(name)) is not None]
    default = next(
        (d for d in defaults if d is not None and d is not inspect.Parameter.empty), None
    )
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--kafka-option {name}={text}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--kafka-option {name}={text}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--kafka-option {name}={text}: expected a number") from None
    return text


def parse_kafka_options(items: list[str]) -> dict[str, object]:
    """``["request.timeout.ms=60000", "client_id=x"]`` → aiokafka keyword arguments. Kafka's
    dotted names are accepted for aiokafka's underscored ones."""
    options: dict[str, object] = {}
    known = {n for c in _CLIENTS for n in _parameters(c)}
    for item in items:
        raw_name, sep, text = item.partition("=")
        name = raw_name.strip().replace(".", "_").replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--kafka-option {item!r}: expected NAME=VALUE")
        if name in _MANAGED:
            instead = f": use {_MANAGED_BY[name]}" if name in _MANAGED_BY else ""
            raise ValueError(f"--kafka-option {raw_name}: set by stream-replica itself{instead}")
        if name not in known:
            raise ValueError(
                f"--kafka-option {raw_name}: not a setting of the Kafka client (aiokafka); "
                "e.g. request_timeout_ms, client_id, metadata_max_age_ms"
            )
        options[name] = _parse_value(name, text)
    return options


_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_BOOTSTRAP_FORMAT: Final = "expected HOST:PORT[,HOST:PORT...] (IPv6: [ADDRESS]:PORT)"


def parse_bootstrap_servers(text: str) -> list[tuple[str, int]]:
    """``"b1:9092,[::1]:9093"`` → ``[("b1", 9092), ("::1", 9093)]``, or ValueError saying
    what is wrong with which entry. Stricter than aiokafka, which takes a missing port as
    9092 and fails inside its connect (retried as if the network were down) on a bad one."""
    hosts = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"{text!r} has an empty entry; {_BOOTSTRAP_FORMAT}")
        if "://" in item:
            raise ValueError(
                f"{item!r}: no scheme here, the protocol is --security-protocol's; "
                f"{_BOOTSTRAP_FORMAT}"
            )
        if item.startswith("["):
            address, closed, rest = item[1:].partition("]")
            if not closed or not _is_ipv6(address.partition("%")[0]):  # (%: a zone)
                raise ValueError(f"{item!r}: {address!r} is not an IPv6 address")
            host, sep, port = address, rest[:1], rest[1:]
            if rest and sep != ":":
                raise ValueError(f"{item!r}: {_BOOTSTRAP_FORMAT}")
        else:
            host, sep, port = item.rpartition(":")
            if _is_ipv6(item) or _is_ipv6(host):
                raise ValueError(f"{item!r}: an IPv6 address goes in brackets, e.g. [::1]:9092")
            if not sep:
                host, port = item, ""
            elif not _HOST_NAME.fullmatch(host):
                raise ValueError(f"{item!r}: {host!r} is not a host name; {_BOOTSTRAP_FORMAT}")
        if not sep or not port:
            raise ValueError(f"{item!r} has no port; {_BOOTSTRAP_FORMAT}")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(
                f"{item!r}: the port {port!r} is not a number from 1 to 65535; {_BOOTSTRAP_FORMAT}"
            )
        hosts.append((host, int(port)))
    return hosts


def _is_ipv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


class ConnectionSettings(BaseSettings):
    """Where the cluster is and how to authenticate. Secrets come from the environment or a
    file (never a default, never echoed)."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_REPLICA_",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
        hide_input_in_errors=True,  # the input of an error of the whole model has the secrets
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        min_length=1,
        validation_alias=AliasChoices(
            "bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "STREAM_REPLICA_BOOTSTRAP_SERVERS"
        ),
        description="host:port[,host:port...] of the Kafka cluster",
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)"
    )
    sasl_username: str | None = Field(default=None, description="SASL user name")
    sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password, or use --sasl-password-file",
    )
    sasl_password_file: Path | None = Field(
        default=None, description="file holding the SASL password (trailing newline ignored)"
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle that signed the brokers' certificates (PEM)"
    )
    ssl_certfile: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    ssl_keyfile: Path | None = Field(default=None, description="client private key (mutual TLS)")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="password of an encrypted --ssl-keyfile"
    )
    ssl_check_hostname: bool = Field(
        default=True, description="verify that the broker certificate names the host"
    )
    kafka_option: list[str] = Field(
        default_factory=list,
        description="NAME=VALUE passed to the Kafka clients (repeatable), e.g. "
        "request_timeout_ms=60000",
    )

    # Built once, when the settings are validated (start-up): a file that cannot be loaded
    # is a configuration error then, never a connection failure retried later.
    _ssl_context: ssl.SSLContext | None = PrivateAttr(default=None)

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, text: str) -> str:
        parse_bootstrap_servers(text)  # refused here, by every command, before any connection
        return ",".join(item.strip() for item in text.split(","))

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> ConnectionSettings:
        # Each message names every option involved, as flag and environment variable: the
        # model as a whole has no flag of its own.
        protocol = f"--security-protocol is {self.security_protocol}"
        sasl = self.security_protocol.startswith("SASL_")
        if self.sasl_password_file is not None:
            if self.sasl_password is not None:
                raise ValueError(
                    f"give the SASL password once: {option_label('sasl_password')} or "
                    f"{option_label('sasl_password_file')}, not both"
                )
            secret = self.sasl_password_file.read_text(encoding="utf-8").rstrip("\r\n")
            self.sasl_password = SecretStr(secret)
        if sasl:
            missing = [
                label
                for label, value in (
                    (option_label("sasl_mechanism"), self.sasl_mechanism),
                    (option_label("sasl_username"), self.sasl_username),
                    (
                        "--sasl-password-file or env STREAM_REPLICA_SASL_PASSWORD",
                        self.sasl_password,
                    ),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"{protocol}, which needs {_and(missing)}")
        else:
            given = _given(self, "sasl_mechanism", "sasl_username", "sasl_password")
            if self.sasl_password_file is not None:  # (its content is in sasl_password now)
                given[-1] = option_label("sasl_password_file")
            if given:
                raise ValueError(
                    f"{_and(given)} given, but {protocol} (env STREAM_REPLICA_SECURITY_PROTOCOL):"
                    " SASL needs SASL_SSL or SASL_PLAINTEXT"
                )
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        given = _given(self, "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
        if not tls and given:
            raise ValueError(
                f"{_and(given)} given, but {protocol} (env STREAM_REPLICA_SECURITY_PROTOCOL): "
                "TLS needs SSL or SASL_SSL"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                f"mutual TLS needs both {option_label('ssl_certfile')} and "
                f"{option_label('ssl_keyfile')}"
            )
        if self.ssl_key_password is not None and self.ssl_keyfile is None:
            raise ValueError(
                f"{option_label('ssl_key_password')} given without {option_label('ssl_keyfile')}"
            )
        parse_kafka_options(self.kafka_option)  # fail at start-up, not at first use
        if tls:
            self._ssl_context = self._load_tls()
        return self

    def _load_tls(self) -> ssl.SSLContext:
        """The client's TLS context, loaded step by step so that a failure names the file
        (and option) at fault. OpenSSL never prompts for a key's password on the terminal."""
        cafile = self.ssl_cafile
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=None if cafile is None else str(cafile)
            )
        except (OSError, ssl.SSLError) as exc:
            if cafile is None:
                raise ValueError(
                    f"cannot load the system's CA certificates ({_tls_why(exc)}); "
                    f"give {option_label('ssl_cafile')}"
                ) from None
            raise ValueError(
                f"{option_label('ssl_cafile')}: cannot load {cafile} as CA certificates "
                f"({_tls_why(exc)})"
            ) from None
        context.check_hostname = self.ssl_check_hostname
        certfile, keyfile = self.ssl_certfile, self.ssl_keyfile
        if certfile is None or keyfile is None:
            return context
        try:  # the certificate on its own first: load_cert_chain does not say which file
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(certfile))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"{option_label('ssl_certfile')}: cannot load {certfile} as a certificate "
                f"({_tls_why(exc)})"
            ) from None
        asked = False

        def password() -> str:
            nonlocal asked
            asked = True
            if self.ssl_key_password is None:
                raise _KeyEncryptedError
            return self.ssl_key_password.get_secret_value()

        try:
            context.load_cert_chain(str(certfile), str(keyfile), password)
        except _KeyEncryptedError:
            raise ValueError(
                f"{option_label('ssl_keyfile')}: {keyfile} is encrypted; give its password "
                "with --ssl-key-password or env STREAM_REPLICA_SSL_KEY_PASSWORD"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                raise ValueError(
                    f"--ssl-keyfile {keyfile} does not hold the key of the certificate in "
                    f"--ssl-certfile {certfile} (env STREAM_REPLICA_SSL_KEYFILE, "
                    "STREAM_REPLICA_SSL_CERTFILE)"
                ) from None
            if asked:
                raise ValueError(
                    f"{option_label('ssl_key_password')}: it does not decrypt {keyfile}"
                ) from None
            raise ValueError(
                f"{option_label('ssl_keyfile')}: cannot load {keyfile} as a private key "
                f"({_tls_why(exc)})"
            ) from None
        return context

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context built at validation; None without TLS."""
        return self._ssl_context

    def options(self, client: Literal["consumer", "producer", "admin"]) -> dict[str, Any]:
        """Keyword arguments for one aiokafka client class."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        accepted = _parameters(client)
        for name, value in parse_kafka_options(self.kafka_option).items():
            if name in accepted:
                options[name] = value
        return options

    def describe(self) -> str:
        """For logs: never the password."""
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.sasl_username else ""
        return f"{self.bootstrap_servers} over {self.security_protocol}{who}"


class _KeyEncryptedError(Exception):
    """The private key needs a password and none was given."""


def _tls_why(exc: OSError) -> str:
    """OpenSSL's reason in words where it has a common one."""
    reason = getattr(exc, "reason", None)
    if reason == "NO_CERTIFICATE_OR_CRL_FOUND":
        return "no PEM certificate in it"
    if isinstance(exc, ssl.SSLError):
        if reason is None and "PEM lib" in str(exc):
            return "not in PEM format, or not what this option takes"
        return f"{exc.library}: {reason}" if reason else str(exc)
    return exc.strerror or str(exc)


def _given(settings: ConnectionSettings, *names: str) -> list[str]:
    return [option_label(n) for n in names if getattr(settings, n) is not None]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


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
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
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
    return KafkaAccessError(
        f"the broker at {host}:{port} refused the client certificate --ssl-certfile "
        f"{settings.ssl_certfile} ({reason}): use one signed by a CA the broker trusts "
        "(its ssl.truststore), with its key in --ssl-keyfile"
    )


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


class Startable(Protocol):
    async def start(self) -> None: ...


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. aiokafka 0.14's fetcher cancels its fetch tasks on close and awaits
    them without catching their CancelledError, which then ends ``stop()`` before the client
    is closed (seen on SIGTERM while a fetch backed off from an unreachable broker: a
    traceback and exit 1). That CancelledError is not aimed at us: absorbed here, and the
    client closed."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our own task is being cancelled: not the library's stray one
        client = getattr(consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def start_client(
    settings: ConnectionSettings, client: Startable, writes: tuple[str, str] | None = None
) -> None:
    """Start an aiokafka client; if that fails, stop it (no leaked connections or "Unclosed"
    warnings) and raise one clear :class:`StreamReplicaError`. ``writes``: a producer's
    topic and the flag that names it (an idempotent producer's start needs Write on it)."""
    try:
        await _diagnosed_if_slow(settings, client.start())
    except StreamReplicaError:
        await _stop_quietly(client)
        raise
    except (KafkaError, OSError) as exc:
        await _stop_quietly(client)
        if writes is not None:
            topic, flag = writes
            doing = "starting the producer"
            refused = refusal(exc, settings, doing=doing, topic=topic, topic_flag=flag)
            if refused is not None:
                raise refused from None
        raise await explain_failure(settings, exc) from None


# A client start still pending after this long gets a pre-flight connection beside it.
SLOW_START_S: Final = 3.0


async def _diagnosed_if_slow(settings: ConnectionSettings, start: Awaitable[None]) -> None:
    """Await a client's ``start``. One still pending after ``SLOW_START_S`` (aiokafka waits
    for a silent bootstrap server until its request timeout, 30-40 s) has the pre-flight run
    beside it, and ends as soon as the pre-flight finds what is wrong."""
    task = asyncio.ensure_future(start)
    probe: asyncio.Task[None] | None = None
    try:
        await asyncio.wait((task,), timeout=SLOW_START_S)
        if not task.done():
            probe = asyncio.ensure_future(preflight(settings))
            await asyncio.wait((task, probe), return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not probe.cancelled():
                found = probe.exception()
                if isinstance(found, StreamReplicaError):
                    raise found
        await task
    finally:
        for pending in (task, probe):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


async def _stop_quietly(client: Startable) -> None:
    """Close a client whose start failed: no leaked connections or "Unclosed" warnings."""
    stop = getattr(client, "stop", None) or getattr(client, "close", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            await stop()
