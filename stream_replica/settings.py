"""Configuration: flags > environment (``KAFKA_BOOTSTRAP_SERVERS``, ``STREAM_REPLICA_*``) >
defaults, validated by pydantic-settings. The CLI passes only the flags the user gave."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_replica.connection import ConnectionSettings

DEFAULT_TOPIC = "grain-replication"
STATIC_SESSION_TIMEOUT_MS = 45_000  # Kafka's consumer default
DYNAMIC_SESSION_TIMEOUT_MS = 10_000
CONTAINER_NAME = "@container"


class KafkaSettings(ConnectionSettings):
    """A command that talks to the cluster about the replicated topic."""

    topic: str = Field(default=DEFAULT_TOPIC, min_length=1, description="the replicated topic")


class TopicSettings(KafkaSettings):
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    segment_ms: int = Field(default=60 * 60 * 1000, ge=1000)
    delete_retention_ms: int = Field(default=24 * 60 * 60 * 1000, ge=0)


class PublishSettings(KafkaSettings):
    source_cluster: str = Field(default="primary", min_length=1)


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAM_REPLICA_", extra="ignore")

    db: Path


class WorkerSettings(KafkaSettings):
    group: str = Field(default="stream-replica", min_length=1)
    db: Path
    max_records: int = Field(default=100, ge=1, le=100_000)
    dlq_topic: str | None = None
    allow_non_compacted: bool = False
    poll_timeout_ms: int = Field(default=500, ge=10)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    # None: 45 s with an instance id (a restart within it gets its partitions back with no
    # rebalance), 10 s without (a restarted worker is a new member anyway, so a long session
    # would only delay the takeover of a dead worker's partitions).
    session_timeout_ms: int | None = Field(default=None, ge=6_000, le=1_800_000)
    # Re-publish shadowed grain states so compaction converges to the replica (repair.py).
    repair_shadowed: bool = False
    # Kafka's group.instance.id (static membership); legal topic-name characters only, or
    # CONTAINER_NAME: the cli resolves it to the container's name (docker-compose --scale).
    instance_id: str | None = Field(
        default=None, min_length=1, max_length=249, pattern=r"^(@container|[A-Za-z0-9._-]+)$"
    )
    standby_replicas: int = Field(default=0, ge=0, le=10)
    # Data of partitions not served here (neither active nor standby) for this long is dropped.
    lost_partition_grace_ms: int = Field(default=3_600_000, ge=0)

    @property
    def effective_session_timeout_ms(self) -> int:
        if self.session_timeout_ms is not None:
            return self.session_timeout_ms
        return STATIC_SESSION_TIMEOUT_MS if self.instance_id else DYNAMIC_SESSION_TIMEOUT_MS


class ReplaySettings(KafkaSettings):
    group: str = Field(default="stream-replica", min_length=1)
    db: Path


class AuditSettings(ConnectionSettings):
    db: Path
