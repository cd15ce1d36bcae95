"""The topic changed under a running worker: each change said once, the new
delete.retention.ms used, the compaction gauge set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_replica import admin, topic_watch
from stream_replica.admin import PartitionReplicas, TopicInfo
from stream_replica.settings import WorkerSettings
from stream_replica.topic_watch import TopicWatch
from tests.helpers import InProcessWorker, TopicFactory, wait_until

COMPACT = {"cleanup.policy": "compact", "delete.retention.ms": "1000", "min.insync.replicas": "2"}


def described(configs: dict[str, str], *isr: tuple[int, ...]) -> TopicInfo:
    replicas = tuple(
        PartitionReplicas(p, in_sync[0] if in_sync else -1, (1, 2, 3), in_sync)
        for p, in_sync in enumerate(isr or ((1, 2, 3),))
    )
    return TopicInfo("grains", len(replicas), 3, configs, None, replicas)


class Seen:
    def __init__(self) -> None:
        self.retention: list[int] = []
        self.compacted: list[bool] = []

    def watch(self, first: TopicInfo, **options: Any) -> TopicWatch:
        settings = WorkerSettings(topic="grains", group="g", db=Path("unused"), **options)
        return TopicWatch(settings, first, self.retention.append, self.compacted.append)


def test_a_topic_no_longer_compacted_is_one_error_and_the_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Seen()
    watch = seen.watch(described(COMPACT))
    deleting = described(COMPACT | {"cleanup.policy": "delete"})
    with caplog.at_level(logging.INFO, "stream_replica"):
        watch.compare(deleting)
        watch.compare(deleting)  # said once
        watch.compare(described(COMPACT))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "topic 'grains' is no longer compacted (cleanup.policy=delete)" in errors[0]
    assert "set cleanup.policy=compact again" in errors[0]
    assert seen.compacted == [True, False, True]
    assert "topic 'grains' is compacted again" in caplog.text


def test_allowed_non_compacted_topic_changing_policy_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Seen()
    watch = seen.watch(described(COMPACT), allow_non_compacted=True)
    with caplog.at_level(logging.INFO, "stream_replica"):
        watch.compare(described(COMPACT | {"cleanup.policy": "delete"}))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert seen.compacted == [True, False]


def test_a_new_delete_retention_is_handed_on(caplog: pytest.LogCaptureFixture) -> None:
    seen = Seen()
    watch = seen.watch(described(COMPACT))
    with caplog.at_level(logging.INFO, "stream_replica"):
        watch.compare(described(COMPACT | {"delete.retention.ms": "86400000"}))
        watch.compare(described(COMPACT | {"delete.retention.ms": "86400000"}))
    assert seen.retention == [86_400_000]
    assert "delete.retention.ms is now 86400000 (was 1000)" in caplog.text


def test_unhealthy_partitions_are_said_when_they_change_and_when_healed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Seen()
    watch = seen.watch(described(COMPACT, (1, 2, 3), (1, 2, 3)))
    with caplog.at_level(logging.INFO, "stream_replica"):
        watch.compare(described(COMPACT, (1, 2, 3), (2,)))
        watch.compare(described(COMPACT, (1, 2, 3), (2,)))  # the same: not again
        watch.compare(described(COMPACT, (), (2,)))  # partition 0 lost its leader
        watch.compare(described(COMPACT, (1, 2, 3), (1, 2, 3)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "partitions [1] have fewer in-sync replicas than min.insync.replicas=2" in warnings[0]
    assert "partitions [0] have no leader" in warnings[1]
    assert "every partition has a leader and its replicas in sync" in caplog.text


@pytest.mark.broker
async def test_a_running_worker_notices_the_topic_changed(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It noticed nothing: a topic set to cleanup.policy=delete was found at the next start
    (exit 3), and the delete.retention.ms of the start was used for every assignment."""
    monkeypatch.setattr(topic_watch, "CHECK_INTERVAL_S", 0.2)
    topic = await make_topic(partitions=1)
    worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db").start()
    registry = worker.worker.metrics.registry

    def compacted() -> float | None:
        return registry.get_sample_value("stream_replica_topic_compacted")

    await wait_until(lambda: compacted() == 1.0, 30, 0.05, what="the first description")
    changed = admin.replication_topic_configs(1) | {
        "cleanup.policy": "delete",
        "delete.retention.ms": "4321",
    }
    async with admin.admin_client(kafka_bootstrap) as client:
        await client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, changed)])
    with caplog.at_level(logging.INFO, "stream_replica"):
        await wait_until(lambda: compacted() == 0.0, 30, 0.05, what="the change noticed")
        await wait_until(
            lambda: worker.worker.rebalance.delete_retention_ms == 4321, 30, 0.05, what="4321"
        )
    await worker.stop()
    assert f"topic {topic!r} is no longer compacted (cleanup.policy=delete)" in caplog.text
