"""Configuration: flags > environment (``KAFKA_BOOTSTRAP_SERVERS``, ``STREAM_REPLICA_*``) >
defaults, validated by pydantic-settings. The CLI passes only the flags the user gave."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_replica.connection import ConnectionSettings

DEFAULT_TOPIC = "grain-replication"


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
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    # Re-publish shadowed grain states so compaction converges to the replica (repair.py).
    repair_shadowed: bool = False


class ReplaySettings(KafkaSettings):
    group: str = Field(default="stream-replica", min_length=1)
    db: Path


class AuditSettings(ConnectionSettings):
    db: Path
