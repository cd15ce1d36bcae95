"""Configuration: flags > environment (``KAFKA_BOOTSTRAP_SERVERS``, ``STREAM_REPLICA_*``) >
defaults, validated by pydantic-settings. The CLI passes only the flags the user gave."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_replica.connection import ConnectionSettings
from stream_replica.memory import DEFAULT_BUDGET_MIB, MemoryPlan, plan_memory
from stream_replica.routing import FORWARD_TIMEOUT_S

DEFAULT_TOPIC = "grain-replication"
STATIC_SESSION_TIMEOUT_MS = 45_000  # Kafka's consumer default
DYNAMIC_SESSION_TIMEOUT_MS = 10_000
CONTAINER_NAME = "@container"


class KafkaSettings(ConnectionSettings):
    """A command that talks to the cluster about the replicated topic."""

    topic: str = Field(default=DEFAULT_TOPIC, min_length=1, description="the replicated topic")


class TopicSettings(KafkaSettings):
    partitions: int = Field(default=6, ge=1, description="partitions of a new topic")
    cleanup_policy: Literal["compact", "delete"] = Field(
        default="compact",
        description="compact: the replicated topic; delete: a dead-letter topic (run "
        "--dlq-topic), whose records of one grain must not replace each other",
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="copies of each partition of a new topic (default: 3, or the number of "
        "brokers when fewer)",
    )
    segment_ms: int = Field(
        default=60 * 60 * 1000,
        ge=1000,
        description="roll segments this often (ms): the active one is never compacted",
    )
    delete_retention_ms: int = Field(
        default=24 * 60 * 60 * 1000,
        ge=0,
        description="how long tombstones survive compaction (ms)",
    )


class PublishSettings(KafkaSettings):
    source_cluster: str = Field(
        default="primary", min_length=1, description="source_cluster written into entries"
    )


_DB = Field(description="the worker's RocksDB state directory (one per worker)")


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAM_REPLICA_", extra="ignore")

    db: Path = _DB


class WorkerSettings(KafkaSettings):
    group: str = Field(default="stream-replica", min_length=1, description="consumer group")
    db: Path = _DB
    max_records: int = Field(
        default=100, ge=1, le=100_000, description="records fetched per poll at most"
    )
    dlq_topic: str | None = Field(
        default=None,
        description="dead-letter topic for refused records (cleanup.policy=delete: topic "
        "create --cleanup-policy delete)",
    )
    allow_non_compacted: bool = Field(
        default=False, description="run on a topic that is not compacted"
    )
    poll_timeout_ms: int = Field(default=500, ge=10, description="longest wait of one poll (ms)")
    fetch_max_wait_ms: int = Field(
        default=100, ge=0, description="how long the broker may hold a fetch for more data (ms)"
    )
    # None: 45 s with an instance id (a restart within it gets its partitions back with no
    # rebalance), 10 s without (a restarted worker is a new member anyway, so a long session
    # would only delay the takeover of a dead worker's partitions).
    session_timeout_ms: int | None = Field(
        default=None,
        ge=6_000,
        le=1_800_000,
        description="group session timeout (ms); default 45000 with --instance-id, else 10000",
    )
    repair_shadowed: bool = Field(
        default=False,
        description="re-publish a grain's state when a refused or stale record shadows it, "
        "so compaction keeps it",
    )
    # Kafka's group.instance.id (static membership); legal topic-name characters only, or
    # @container: the cli resolves it to the container's name (docker-compose --scale).
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=249,
        pattern=r"^(@container|[A-Za-z0-9._-]+)$",
        description="static group membership id (e.g. the pod name; @container: the "
        "container's name): a restart within the session timeout keeps the partitions",
    )
    standby_replicas: int = Field(
        default=0, ge=0, le=10, description="warm copies of each partition on other workers"
    )
    catch_up_partitions: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="partitions far behind (a rebuild) are caught up this many at a time, the "
        "rest paused, so a worker joining meanwhile takes partitions not read yet (default: "
        "half of them, at least 2; 0: all at once)",
    )
    memory_budget_mib: int = Field(
        default=DEFAULT_BUDGET_MIB,
        ge=1,
        le=1_048_576,
        description="peak resident memory the worker is sized for (MiB): split between the "
        "head cache, RocksDB's block cache and memtables, and a fixed part",
    )
    head_cache_entries: int | None = Field(
        default=None,
        ge=0,
        le=100_000_000,
        description="grain heads kept in memory to skip RocksDB reads (~200 B each; 0: off; "
        "default: what --memory-budget-mib leaves)",
    )
    wal_off_lag: int = Field(
        default=10_000,
        ge=0,
        description="write without RocksDB's WAL while the partitions served here are more "
        "than this many records behind in total (a catch-up: a killed worker re-reads from "
        "Kafka what it had not flushed), through it again within half of it; 0: always",
    )
    lost_partition_grace_ms: int = Field(
        default=3_600_000,
        ge=0,
        description="drop data of partitions not served here for this long (ms)",
    )
    http: str | None = Field(
        default=None,
        description="serve reads (/grains, /partitions), /metrics, /healthz, /readyz, "
        "/openapi.json and a status page on HOST:PORT",
    )
    advertise: str | None = Field(
        default=None,
        description="HOST:PORT other workers and clients reach this worker's --http on "
        "(default: from --http; 0.0.0.0 or no host: this machine's host name; "
        "@container:PORT: the container's name, which Docker's DNS resolves)",
    )
    http_token_file: Path | None = Field(
        default=None,
        description="require 'Authorization: Bearer <the file's content>' on the data routes "
        "(/grains, /partitions); forwarding between workers sends it",
    )
    http_tls_cert: Path | None = Field(
        default=None, description="serve HTTPS with this certificate chain (PEM)"
    )
    http_tls_key: Path | None = Field(
        default=None, description="the private key (PEM) of --http-tls-cert"
    )
    http_tls_cafile: Path | None = Field(
        default=None,
        description="CA bundle (PEM) that forwarding between workers verifies peers with "
        "(default: the system's)",
    )
    read_forward_timeout_s: float = Field(
        default=FORWARD_TIMEOUT_S,
        gt=0,
        description="longest wait for another worker's answer to a read (s); /partitions "
        "reports it, and the Python client waits 2 s longer for a worker",
    )
    health_max_poll_age_s: float = Field(
        default=30.0, gt=0, description="/healthz fails when the loop has not polled for this long"
    )
    end_offset_max_age_s: float = Field(
        default=15.0,
        gt=0,
        description="a partition whose end offset the broker has not confirmed for this long "
        "(Kafka unreachable) is not reported caught up: reads say caught_up false, /readyz fails",
    )
    ready_max_lag: int = Field(
        default=1000,
        ge=0,
        description="/readyz passes when every served partition is within this many records",
    )

    @model_validator(mode="after")
    def _dead_letters_elsewhere(self) -> WorkerSettings:
        # The worker would read its own dead letters back, refuse them again and send them
        # again: the topic grows without end, and the copies shadow the grains' states.
        if self.dlq_topic is not None and self.dlq_topic == self.topic:
            raise ValueError(
                f"the dead-letter topic is the replicated topic {self.topic!r}: refused "
                "records would be read back and refused again, for ever; give --dlq-topic a "
                "topic of its own (topic create --cleanup-policy delete)"
            )
        return self

    def memory_plan(self) -> MemoryPlan:
        """The budget's split; raises MemoryBudgetError (one line) when it is too small."""
        return plan_memory(self.memory_budget_mib, self.head_cache_entries)

    @property
    def effective_session_timeout_ms(self) -> int:
        if self.session_timeout_ms is not None:
            return self.session_timeout_ms
        return STATIC_SESSION_TIMEOUT_MS if self.instance_id else DYNAMIC_SESSION_TIMEOUT_MS


class ReplaySettings(KafkaSettings):
    group: str = Field(default="stream-replica", min_length=1, description="consumer group")
    db: Path = _DB


class AuditSettings(ConnectionSettings):
    db: Path = _DB
