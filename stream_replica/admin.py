"""Topic and group administration over the Kafka protocol (aiokafka's admin client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    TopicAuthorizationFailedError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from stream_replica.advertised import check_advertised
from stream_replica.clients import discard, start_client
from stream_replica.connection import ConnectionSettings
from stream_replica.errors import KafkaAccessError, KafkaUnavailableError, StreamReplicaError
from stream_replica.refusals import principal
from stream_replica.topic_id import fetch_topic_id

# Why each setting (README "Topic configuration"):
# - compact: the topic is the changelog of grain state; only the latest snapshot per key counts.
# - segment.ms 1 h: the active segment is never compacted; the 7-day default would keep a week
#   of superseded snapshots and slow every rebuild.
# - delete.retention.ms 24 h: how long a tombstone survives compaction; a replica that stays
#   away longer must be rebuilt (the worker checks this on assignment).
# - min.compaction.lag.ms 0: snapshots may be compacted as soon as a segment rolls.
DEFAULT_SEGMENT_MS: Final = 60 * 60 * 1000
DEFAULT_DELETE_RETENTION_MS: Final = 24 * 60 * 60 * 1000
DEFAULT_REPLICATION_FACTOR: Final = 3
# How long an admin request is retried when it fails on one broker of a cluster (see _retrying).
RETRY_S: Final = 30.0

T = TypeVar("T")


class AdminError(StreamReplicaError):
    """A topic/group problem reported to the operator as one line: the topic or group as
    configured cannot be used (refused, cannot be created or described)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class PartitionReplicas:
    """Where one partition lives, as the metadata says: its leader (-1 when it has none),
    its replicas and those in sync."""

    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "leader": self.leader if self.leader >= 0 else None,
            "replicas": list(self.replicas),
            "isr": list(self.isr),
        }


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    topic_id: str | None = None  # KIP-516; None when the broker does not report it
    replica_sets: tuple[PartitionReplicas, ...] = ()

    @property
    def compacted(self) -> bool:
        return "compact" in self.configs.get("cleanup.policy", "").split(",")

    @property
    def delete_retention_ms(self) -> int:
        return int(self.configs.get("delete.retention.ms", DEFAULT_DELETE_RETENTION_MS))

    @property
    def min_insync_replicas(self) -> int:
        return int(self.configs.get("min.insync.replicas", "1"))

    def leaderless(self) -> list[int]:
        """Partitions nobody can read or write until a replica is elected."""
        return [p.partition for p in self.replica_sets if p.leader < 0]

    def under_replicated(self) -> list[int]:
        return [p.partition for p in self.replica_sets if len(p.isr) < len(p.replicas)]

    def below_min_insync(self) -> list[int]:
        """Partitions an acks=all producer cannot write to (the dead-letter and repair
        producers): fewer replicas in sync than min.insync.replicas."""
        return [p.partition for p in self.replica_sets if len(p.isr) < self.min_insync_replicas]

    def replica_warnings(self) -> list[str]:
        """One line per kind of unhealthy partition, naming them; empty when all are well."""
        lines = []
        if leaderless := self.leaderless():
            lines.append(
                f"topic {self.name!r}: partitions {leaderless} have no leader (their brokers "
                "are down): nothing is read from them until a replica is elected"
            )
        if below := [p for p in self.below_min_insync() if p not in leaderless]:
            lines.append(
                f"topic {self.name!r}: partitions {below} have fewer in-sync replicas than "
                f"min.insync.replicas={self.min_insync_replicas}: writes with acks=all (the "
                "primary's, dead letters, repairs) are refused until brokers rejoin"
            )
        if under := [p for p in self.under_replicated() if p not in leaderless and p not in below]:
            lines.append(
                f"topic {self.name!r}: partitions {under} are under-replicated (a replica "
                "is out of sync): still readable and writable"
            )
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.name,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "topic_id": self.topic_id,
            "compacted": self.compacted,
            "configs": dict(sorted(self.configs.items())),
            "replicas": [p.as_json() for p in self.replica_sets],
            "leaderless": self.leaderless(),
            "under_replicated": self.under_replicated(),
            "below_min_insync": self.below_min_insync(),
        }


def replication_topic_configs(
    replication_factor: int,
    segment_ms: int = DEFAULT_SEGMENT_MS,
    delete_retention_ms: int = DEFAULT_DELETE_RETENTION_MS,
) -> dict[str, str]:
    configs = {
        "cleanup.policy": "compact",
        "segment.ms": str(segment_ms),
        "delete.retention.ms": str(delete_retention_ms),
        "min.compaction.lag.ms": "0",
    }
    if replication_factor > 1:
        # With acks=all a write needs this many in-sync copies: survive one broker down.
        configs["min.insync.replicas"] = str(max(1, min(2, replication_factor - 1)))
    return configs


def dead_letter_topic_configs(
    replication_factor: int, segment_ms: int = DEFAULT_SEGMENT_MS
) -> dict[str, str]:
    """A dead-letter topic: deleted by age (retention.ms, the broker's default), never
    compacted (a grain's refused records would replace each other, and a compacted topic
    refuses records without a key)."""
    configs = {"cleanup.policy": "delete", "segment.ms": str(segment_ms)}
    if replication_factor > 1:
        configs["min.insync.replicas"] = str(max(1, min(2, replication_factor - 1)))
    return configs


async def _retrying(
    call: Callable[[], Awaitable[T]],
    cluster: Cluster,
    only: tuple[type[KafkaError], ...] | None = None,
) -> T:
    """Run ``call`` (which opens its own client) again while it fails with a retriable error.

    The admin client sends each request to one broker picked from the metadata. A broker that
    was just killed stays in the metadata until the controller fences it (after
    ``broker.session.timeout.ms``, 9 s by default), so a request may go to a dead node and
    fail with NodeNotReadyError although the rest of the cluster answers. Not retried: a
    failed bootstrap (no broker reachable: callers report or back off themselves) and
    non-retriable errors. ``only`` narrows the retried errors.

    The advertised addresses are checked once (advertised.py) when a broker from the metadata
    cannot be reached, or when a call takes longer than ``SLOW_CALL_S`` (the admin client
    waits for a broker to connect until its request timeout, 30 s): when none can be reached
    from here, retrying cannot help.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_S
    settings = connection(cluster)
    check = _AdvertisedCheck(settings)
    try:
        while True:
            try:
                return await check.while_slow(call())
            except KafkaError as exc:
                retriable = isinstance(exc, only) if only is not None else exc.retriable
                bootstrap_failed = isinstance(exc, KafkaConnectionError) and "bootstrap" in str(exc)
                if not bootstrap_failed and isinstance(exc, _UNREACHED_NODE):
                    await check.start()
                if not retriable or bootstrap_failed or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
            except TimeoutError:
                await check.start()
                raise KafkaUnavailableError(
                    f"Kafka at {settings.bootstrap_servers} did not answer within the request "
                    "timeout"
                ) from None
    finally:
        await check.discard()


# An admin call slower than this has the advertised addresses checked meanwhile.
SLOW_CALL_S: Final = 3.0


class _AdvertisedCheck:
    """One advertised-listener check per :func:`_retrying`, started when needed."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(check_advertised(self._settings))
        return self._task

    async def while_slow(self, call: Awaitable[T]) -> T:
        """``call``'s result; if it is slow, the check runs beside it, and a misadvertised
        cluster ends it at once."""
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait((task,), timeout=SLOW_CALL_S)
            if not task.done():
                probe = self.start()
                await asyncio.wait((task, probe), return_when=asyncio.FIRST_COMPLETED)
                failed = None if task.done() or probe.cancelled() else probe.exception()
                if failed is not None:
                    raise failed
            return await task
        finally:
            await discard(task)

    async def discard(self) -> None:
        await discard(self._task)


# What aiokafka raises for a request to a broker from the metadata it cannot connect to.
_UNREACHED_NODE: Final = (NodeNotReadyError, KafkaConnectionError)


Cluster = str | ConnectionSettings  # a bootstrap string uses the environment's security


def connection(cluster: Cluster) -> ConnectionSettings:
    if isinstance(cluster, ConnectionSettings):
        return cluster
    return ConnectionSettings(bootstrap_servers=cluster)


def _grantee(cluster: Cluster) -> str:
    """Whom an ACL must name for this client, as the refusal lines say it."""
    return principal(connection(cluster)).grantee


@asynccontextmanager
async def admin_client(cluster: Cluster) -> AsyncIterator[AIOKafkaAdminClient]:
    settings = connection(cluster)
    options = {"request_timeout_ms": 30000, **settings.options("admin")}
    client = AIOKafkaAdminClient(**options)
    await start_client(settings, client)
    try:
        yield client
    finally:
        await client.close()


async def create_topic(
    bootstrap_servers: Cluster,
    topic: str,
    partitions: int,
    replication_factor: int = 1,
    configs: dict[str, str] | None = None,
) -> bool:
    """Create the topic compacted. Returns False when it already existed."""
    topic_configs = configs or replication_topic_configs(replication_factor)

    async def create() -> Any:
        async with admin_client(bootstrap_servers) as client:
            return await client.create_topics(
                [NewTopic(topic, partitions, replication_factor, topic_configs=topic_configs)]
            )

    # Only NodeNotReadyError: the request was never sent, so a retry cannot report a topic
    # this call created as "already existed".
    response = await _retrying(create, bootstrap_servers, only=(NodeNotReadyError,))
    for entry in response.topic_errors:
        error_code, message = entry[1], entry[2] if len(entry) > 2 else None
        if error_code == 0:
            continue
        error = for_code(error_code)
        if error.__name__ == "TopicAlreadyExistsError":
            return False
        raise AdminError(f"cannot create topic {topic!r}: {error.__name__} {message or ''}".strip())
    await _until_led(bootstrap_servers, topic, partitions)
    return True


# How long a topic just created may take to have a leader for every partition.
CREATED_READY_S: Final = 30.0


async def _until_led(cluster: Cluster, topic: str, partitions: int) -> None:
    """Wait until the broker asked knows the topic just created and a leader for each of its
    partitions. On a cluster the controller answers CreateTopics before every broker has the
    new metadata: a describe right after said the topic did not exist, and a producer's
    first sends waited for leaders."""
    deadline = time.monotonic() + CREATED_READY_S
    pause = 0.05
    async with admin_client(cluster) as client:
        while True:
            metadata = await client.describe_topics([topic])
            if metadata and metadata[0]["error_code"] == 0:
                led = [p for p in metadata[0]["partitions"] if p["leader"] >= 0]
                if len(led) == partitions:
                    return
            if time.monotonic() > deadline:
                raise AdminError(
                    f"topic {topic!r} was created, but its {partitions} partitions did not all "
                    f"have a leader within {CREATED_READY_S:.0f} s: check the brokers "
                    "(`stream-replica topic describe`)"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


async def default_replication_factor(cluster: Cluster) -> int:
    """3 copies, as production clusters keep, or one per broker when there are fewer (a
    development broker): what ``topic create`` uses when no replication factor is given."""

    async def brokers() -> int:
        async with admin_client(cluster) as client:
            return len((await client.describe_cluster())["brokers"])

    return max(1, min(DEFAULT_REPLICATION_FACTOR, await _retrying(brokers, cluster)))


async def delete_topic(bootstrap_servers: Cluster, topic: str) -> None:
    async with admin_client(bootstrap_servers) as client:
        await client.delete_topics([topic])


async def topic_partitions(bootstrap_servers: Cluster, topic: str) -> int | None:
    """The topic's partition count from the cluster metadata alone; None when it does not
    exist. Needs only Describe on the topic (which Write implies), not DescribeConfigs, and
    never makes a broker with auto.create.topics.enable create it."""

    async def ask() -> int | None:
        async with admin_client(bootstrap_servers) as client:
            response: Any = await client._send_request(
                MetadataRequest([topic], allow_auto_topic_creation=False)
            )
        for found in response.to_object()["topics"]:
            if found["topic"] != topic:
                continue
            if found["error_code"] == TopicAuthorizationFailedError.errno:
                raise KafkaAccessError(
                    f"not authorized to describe topic {topic!r} (TOPIC_AUTHORIZATION_FAILED): "
                    f"grant {_grantee(bootstrap_servers)} Describe (or Write) on it"
                )
            if found["error_code"] == 0:
                return len(found["partitions"])
        return None

    return await _retrying(ask, bootstrap_servers)


async def describe_topic(bootstrap_servers: Cluster, topic: str) -> TopicInfo | None:
    """Partitions, replication factor and configs of ``topic``; None when it does not exist."""
    return await _retrying(lambda: _describe_topic(bootstrap_servers, topic), bootstrap_servers)


async def _describe_topic(bootstrap_servers: Cluster, topic: str) -> TopicInfo | None:
    async with admin_client(bootstrap_servers) as client:
        metadata = await client.describe_topics([topic])
        if metadata and metadata[0]["error_code"] == TopicAuthorizationFailedError.errno:
            raise KafkaAccessError(
                f"not authorized to describe topic {topic!r} (TOPIC_AUTHORIZATION_FAILED): "
                f"grant {_grantee(bootstrap_servers)} Describe, DescribeConfigs and Read on it"
            )
        if not metadata or metadata[0]["error_code"] != 0:
            return None
        partitions = metadata[0]["partitions"]
        replication_factor = max((len(p["replicas"]) for p in partitions), default=0)
        responses = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        topic_id = await fetch_topic_id(client, topic)
    configs: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            error_code = resource[0]
            if error_code == TopicAuthorizationFailedError.errno:
                raise KafkaAccessError(
                    f"not authorized to describe the configs of topic {topic!r} "
                    f"(TOPIC_AUTHORIZATION_FAILED): grant {_grantee(bootstrap_servers)} "
                    "DescribeConfigs on it (workers check that it is compacted)"
                )
            if error_code:
                raise AdminError(
                    f"cannot describe configs of topic {topic!r}: {for_code(error_code).__name__}"
                )
            for config in resource[4]:
                name, value = config[0], config[1]
                if value is not None:
                    configs[name] = value
    replica_sets = tuple(
        sorted(
            (
                PartitionReplicas(
                    p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"])
                )
                for p in partitions
            ),
            key=lambda replicas: replicas.partition,
        )
    )
    return TopicInfo(topic, len(partitions), replication_factor, configs, topic_id, replica_sets)


async def describe_group(bootstrap_servers: Cluster, group: str) -> tuple[str, list[str]]:
    """The group's state (e.g. ``Stable``, ``Empty``, ``Dead``) and its live members' ids."""

    async def describe() -> Any:
        async with admin_client(bootstrap_servers) as client:
            responses = await client.describe_consumer_groups([group])
        for response in responses:
            for described in response.groups:
                if described[0] != 0:
                    # E.g. the coordinator moved with a partition leadership: asking again
                    # must not read as "no live members".
                    error = for_code(described[0])
                    if error is GroupAuthorizationFailedError:
                        raise KafkaAccessError(
                            f"not authorized to describe group {group!r} "
                            f"(GROUP_AUTHORIZATION_FAILED): grant {_grantee(bootstrap_servers)} "
                            "Describe on it"
                        )
                    if error.retriable:
                        raise error()
                    raise AdminError(f"cannot describe group {group!r}: {error.__name__}")
        return responses

    responses = await _retrying(describe, bootstrap_servers)
    state, members = "Dead", list[str]()
    for response in responses:
        for described in response.groups:
            group_state, group_members_list = described[2], described[5]
            state = group_state
            members.extend(member[0] for member in group_members_list)
    return state, members


async def group_members(bootstrap_servers: Cluster, group: str) -> list[str]:
    """Member ids of the group's live members (empty when the group is empty or unknown)."""
    state, members = await describe_group(bootstrap_servers, group)
    return [] if state in ("Dead", "Empty") else members


async def committed_offsets(bootstrap_servers: Cluster, group: str, topic: str) -> dict[int, int]:
    async def list_offsets() -> Any:
        async with admin_client(bootstrap_servers) as client:
            return await client.list_consumer_group_offsets(group)

    offsets = await _retrying(list_offsets, bootstrap_servers)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


@asynccontextmanager
async def offsets_reader(cluster: Cluster, **options: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer used only for ListOffsets requests. ``options``: consumer
    options the connection's --kafka-option values override (``isolation_level``: the end
    offset it lists is the last stable offset reading committed records only)."""
    settings = connection(cluster)
    consumer = AIOKafkaConsumer(
        **(options | settings.options("consumer")), enable_auto_commit=False
    )
    await start_client(settings, consumer)
    try:
        yield consumer
    finally:
        await consumer.stop()


async def end_offsets(bootstrap_servers: Cluster, topic: str, partitions: int) -> dict[int, int]:
    async with offsets_reader(bootstrap_servers) as consumer:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    return {tp.partition: offset for tp, offset in ends.items()}


async def wait_for_broker(bootstrap_servers: Cluster, timeout_s: float = 60.0) -> None:
    """Wait for the cluster to answer. Only an unreachable broker is waited for: settings
    it refuses (a malformed address, credentials) are raised at once."""
    settings = connection(bootstrap_servers)  # a malformed address: ValidationError, now
    deadline = asyncio.get_running_loop().time() + timeout_s
    check = _AdvertisedCheck(settings)
    while True:
        try:
            async with admin_client(settings) as client:
                await client.describe_cluster()
            return
        except (KafkaUnavailableError, KafkaError, OSError, TimeoutError) as exc:
            if isinstance(exc, (*_UNREACHED_NODE, TimeoutError)):
                await check.start()  # the bootstrap answered: are the advertised brokers reachable?
            if asyncio.get_running_loop().time() > deadline:
                if isinstance(exc, KafkaUnavailableError):
                    raise
                raise KafkaUnavailableError(
                    f"Kafka at {settings.bootstrap_servers} did not answer within "
                    f"{timeout_s:g} s ({type(exc).__name__}: {exc})"
                ) from None
            await asyncio.sleep(0.5)
