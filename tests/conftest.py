"""Shared fixtures. The broker is real: KAFKA_BOOTSTRAP_SERVERS when set, else a
testcontainers KafkaContainer when a Docker engine answers, else the local Maven-fetched
broker (dev/kafka/kafka.sh), started once per session."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_replica import admin
from tests.helpers import TopicFactory
from tests.kafka_cluster import KafkaCluster

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "dev" / "kafka" / "kafka.sh"


def _try_testcontainers() -> tuple[str, Any] | None:
    try:
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.13
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer("apache/kafka:4.1.1").with_kraft()
        container.start()
    except Exception:  # no Docker engine here: constructing or starting raises
        return None
    return container.get_bootstrap_server(), container


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if os.environ.get("STREAM_REPLICA_TEST_DOCKER", "auto") != "no":
        found = _try_testcontainers()
        if found is not None:
            bootstrap, container = found
            try:
                yield bootstrap
            finally:
                container.stop()
            return
    port = os.environ.get("KAFKA_PORT", "9092")
    was_running = (
        subprocess.run([str(KAFKA_SH), "status"], capture_output=True, check=False).returncode == 0
    )
    started = subprocess.run(
        [str(KAFKA_SH), "start"], capture_output=True, text=True, timeout=600, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"local Kafka broker did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if not was_running and os.environ.get("STREAM_REPLICA_KEEP_BROKER") != "1":
            subprocess.run([str(KAFKA_SH), "stop"], capture_output=True, timeout=120, check=False)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names for topics (and the groups named after them); STREAM_REPLICA_TEST_PREFIX
    prefixes them, so runs sharing one broker tell their topics and groups apart."""
    shared = os.environ.get("STREAM_REPLICA_TEST_PREFIX", "")

    def make(prefix: str) -> str:
        return f"{shared}{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
async def make_topic(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> AsyncIterator[TopicFactory]:
    created: list[str] = []

    async def make(
        partitions: int = 1, compacted: bool = True, prefix: str = "t", fast_cleaner: bool = False
    ) -> str:
        """``fast_cleaner``: segments roll after 200 ms and the log cleaner compacts whatever
        it can (see helpers.force_compaction), so tests see what compaction really leaves."""
        name = unique(prefix)
        configs = admin.replication_topic_configs(1) if compacted else {"cleanup.policy": "delete"}
        if fast_cleaner:
            configs |= {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.001"}
        await admin.create_topic(kafka_bootstrap, name, partitions, 1, configs)
        created.append(name)
        return name

    yield make
    try:
        async with admin.admin_client(kafka_bootstrap) as client:
            await client.delete_topics(created)
    except Exception:
        pass  # best effort: unique names keep tests independent anyway


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A 3-broker KRaft cluster of its own (dev/kafka/kafka.sh cluster), started once per
    session: brokers on KAFKA_TEST_CLUSTER_PORT (21092), +1000, +2000; controller on +1."""
    port = int(os.environ.get("KAFKA_TEST_CLUSTER_PORT", "21092"))
    cluster = KafkaCluster(port, tmp_path_factory.mktemp("cluster") / "run")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()  # also after a failed start: stops whatever did come up


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> KafkaCluster:
    """The session cluster with every broker up (a previous test may have stopped one)."""
    kafka_cluster.start()  # idempotent: starts only what is down
    return kafka_cluster


@pytest.fixture(scope="session")
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
