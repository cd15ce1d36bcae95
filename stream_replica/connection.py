"""One connection config for every Kafka client (worker, DLQ and repair producers, admin,
publisher, replay, audit, demo): bootstrap servers, TLS, SASL, and validated passthrough
options. Why a connection fails is diagnosis.py's; starting and stopping clients is
clients.py's."""

from __future__ import annotations

import inspect
import json
import logging
import re
import socket
import ssl
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stream_replica.cli_flags import env_name, option_label

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
        default=None, description="SASL password (environment only; or --sasl-password-file)"
    )
    sasl_password_file: Path | None = Field(
        default=None,
        description="file holding the SASL password (trailing newline ignored); or the "
        "password itself in env STREAM_REPLICA_SASL_PASSWORD, never a flag",
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle that signed the brokers' certificates (PEM)"
    )
    ssl_certfile: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    ssl_keyfile: Path | None = Field(default=None, description="client private key (mutual TLS)")
    ssl_key_password: SecretStr | None = Field(
        default=None,
        description="password of an encrypted --ssl-keyfile (environment only; or "
        "--ssl-key-password-file)",
    )
    ssl_key_password_file: Path | None = Field(
        default=None,
        description="file holding the password of an encrypted --ssl-keyfile (trailing "
        "newline ignored); or the password itself in env STREAM_REPLICA_SSL_KEY_PASSWORD, "
        "never a flag",
    )
    ssl_check_hostname: bool = Field(
        default=True, description="verify that the broker certificate names the host"
    )
    # NoDecode: pydantic-settings reads a list from the environment as JSON only (refusing
    # STREAM_REPLICA_KAFKA_OPTION=request_timeout_ms=60000); _kafka_option_text reads it.
    kafka_option: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="NAME=VALUE passed to the Kafka clients (repeatable), e.g. "
        "request_timeout_ms=60000; in the environment one NAME=VALUE, several separated by "
        'spaces, or a JSON list (["client_id=a b", ...]: a value with spaces)',
    )

    # Built once, when the settings are validated (start-up): a file that cannot be loaded
    # is a configuration error then, never a connection failure retried later.
    _ssl_context: ssl.SSLContext | None = PrivateAttr(default=None)

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, text: str) -> str:
        parse_bootstrap_servers(text)  # refused here, by every command, before any connection
        return ",".join(item.strip() for item in text.split(","))

    @field_validator("kafka_option", mode="before")
    @classmethod
    def _kafka_option_text(cls, value: object) -> object:
        """The environment's text (flags give a list): a JSON list, else NAME=VALUE items
        separated by whitespace."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of NAME=VALUE strings ({exc})") from None
        return text.split()

    @field_validator(
        "ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file", "ssl_key_password_file"
    )
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
        self.sasl_password = _secret(
            self.sasl_password, self.sasl_password_file, "sasl_password", "the SASL password"
        )
        self.ssl_key_password = _secret(
            self.ssl_key_password,
            self.ssl_key_password_file,
            "ssl_key_password",
            "the key's password",
        )
        if sasl:
            missing = [
                label
                for label, value in (
                    (option_label("sasl_mechanism"), self.sasl_mechanism),
                    (option_label("sasl_username"), self.sasl_username),
                    (option_label("sasl_password"), self.sasl_password),
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
        if self.ssl_key_password_file is not None and given:  # (its content is in the password)
            given[-1] = option_label("ssl_key_password_file")
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
                f"in {option_label('ssl_key_password')}"
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


def _secret(
    given: SecretStr | None, path: Path | None, setting: str, what: str
) -> SecretStr | None:
    """A secret from the environment (``given``) or from its ``<setting>_file``, not both."""
    if path is None:
        return given
    if given is not None:
        raise ValueError(
            f"give {what} once: env {env_name(setting)} or "
            f"{option_label(setting + '_file')}, not both"
        )
    return SecretStr(_read_secret(path, setting + "_file"))


def _read_secret(path: Path, setting: str) -> str:
    """The password in ``path`` (trailing newline ignored), or ValueError naming the option
    and the file; never anything of the content (a decoding error quotes a byte of it)."""
    label = option_label(setting)
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{label}: cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{label}: {path} is not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{label}: {path} is empty")
    return secret


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
