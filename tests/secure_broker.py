"""A broker in secure mode (KAFKA_SECURE=1 dev/kafka/kafka.sh): SASL_SSL with SCRAM, mutual
TLS and SASL_PLAINTEXT, certificates made by dev/kafka/secure.sh, users
admin/replica/limited/writer; and two misadvertised PLAINTEXT listeners."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from stream_replica.connection import ConnectionSettings

S = TypeVar("S", bound=ConnectionSettings)

KAFKA_SH = Path(__file__).resolve().parent.parent / "dev" / "kafka" / "kafka.sh"


def free_port_block(size: int = 8) -> int:
    """A port p with p+1..p+size-1 also free (plain, controller, SASL_SSL, TLS,
    SASL_PLAINTEXT, two misadvertised listeners, and the port one of them advertises)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + size > 65535:
            continue
        try:
            for offset in range(1, size):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free block of ports")


@dataclass
class SecureBroker:
    port: int
    run_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_RUN_DIR": str(self.run_dir),
            "KAFKA_SECURE": "1",
        }

    @property
    def plaintext(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl(self) -> str:
        return f"127.0.0.1:{self.port + 2}"

    @property
    def mutual_tls(self) -> str:
        return f"127.0.0.1:{self.port + 3}"

    @property
    def sasl_plaintext(self) -> str:
        return f"127.0.0.1:{self.port + 4}"

    @property
    def advertised_elsewhere(self) -> str:
        """A PLAINTEXT listener advertised as broker.invalid (a name that never resolves)."""
        return f"127.0.0.1:{self.port + 5}"

    @property
    def advertised_moved(self) -> str:
        """A PLAINTEXT listener advertised on a port nothing listens on (PORT+7)."""
        return f"127.0.0.1:{self.port + 6}"

    @property
    def tls(self) -> Path:
        return self.run_dir / "tls"

    def kafka_sh(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SH), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def grant(
        self,
        users: tuple[str, ...],
        operations: list[str],
        *,
        topics: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
        revoke: bool = False,
    ) -> None:
        """Allow each user each operation on each topic and group, or take that back (Kafka's
        AclCommand, over the PLAINTEXT listener, whose ANONYMOUS principal is a super user)."""
        args = ["--remove", "--force"] if revoke else ["--add"]
        args += [a for user in users for a in ("--allow-principal", f"User:{user}")]
        args += [a for op in operations for a in ("--operation", op)]
        args += [a for topic in topics for a in ("--topic", topic)]
        args += [a for group in groups for a in ("--group", group)]
        done = self.kafka_sh(
            "tool", "org.apache.kafka.tools.AclCommand", "--bootstrap-server", self.plaintext,
            *args, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"AclCommand {args} failed:\n{done.stdout}\n{done.stderr}")

    def settings(self, model: type[S], user: str = "replica", **fields: Any) -> S:
        """What :meth:`client_env` gives a process, as settings for the test process."""
        return model(
            bootstrap_servers=self.sasl_ssl,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=SecretStr(f"{user}-secret"),
            ssl_cafile=self.tls / "ca.pem",
            **fields,
        )

    def client_env(self, user: str = "replica", password: str | None = None) -> dict[str, str]:
        """Environment for a stream-replica process connecting over SASL_SSL as ``user``."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl,
            "STREAM_REPLICA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAM_REPLICA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAM_REPLICA_SASL_USERNAME": user,
            "STREAM_REPLICA_SASL_PASSWORD": password or f"{user}-secret",
            "STREAM_REPLICA_SSL_CAFILE": str(self.tls / "ca.pem"),
        }
