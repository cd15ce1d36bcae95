"""The topic changing under a running worker (rebalance.RebalanceHandler.check_topic_identity):
deleted and recreated, or given more partitions. A restart already re-binds the store
(tests/test_compaction.py); these keep the worker running throughout."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewPartitions

from stream_replica import admin
from stream_replica.publisher import Publisher
from tests.helpers import InProcessWorker, TopicFactory, wait_until

# The default refresh (consumer.METADATA_MAX_AGE_MS) is 30 s: a test need not wait that long.
FAST_METADATA = ["metadata_max_age_ms=1000"]


async def test_topic_recreated_under_a_running_worker_is_rebuilt_not_resumed(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as p:
        for i in range(5):
            await p.publish_snapshot("acct", f"old{i}", b"old", sequence=1)
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", kafka_option=FAST_METADATA
    ).start()
    try:
        await wait_until(lambda: worker.caught_up({0: 5}), 60, what="the first replica")
        old_id = worker.store.topic_identity()
        assert old_id is not None and old_id.topic_id is not None

        await admin.delete_topic(kafka_bootstrap, topic)

        async def recreated() -> bool:
            try:
                return await admin.create_topic(kafka_bootstrap, topic, 1)
            except admin.AdminError:
                return False  # deletion still in progress

        await wait_until(recreated, 60, interval=0.5, what="the topic to be recreated")
        # More records than the old checkpoint (5): resuming there would skip new0..new4
        # and keep old0..old4.
        async with Publisher(kafka_bootstrap, topic) as p:
            for i in range(8):
                await p.publish_snapshot("acct", f"new{i}", b"new", sequence=1)

        def keys() -> list[str]:
            return sorted(g[1] for g, _ in worker.store.grains())

        async def rebuilt() -> bool:
            return await worker.caught_up({0: 8}) and keys() == [f"new{i}" for i in range(8)]

        await wait_until(rebuilt, 60, interval=0.25, what=f"the new topic's grains (have {keys()})")
        identity = worker.store.topic_identity()
        assert identity is not None and identity.topic_id not in (None, old_id.topic_id)
    finally:
        await worker.stop()


async def test_partitions_added_under_a_running_worker_are_read_and_bound(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store is kept (partition 0's log and checkpoint stand), the new partitions are
    read from their start, the new count is recorded (the read API routes by it), and one
    error line says what the change means."""
    caplog.set_level(logging.INFO, logger="stream_replica.worker")
    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as p:
        for i in range(5):
            await p.publish_snapshot("acct", f"k{i}", b"v1", sequence=1)
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", kafka_option=FAST_METADATA
    ).start()
    try:
        await wait_until(lambda: worker.caught_up({0: 5}), 60, what="the first replica")
        async with admin.admin_client(kafka_bootstrap) as client:
            await client.create_partitions({topic: NewPartitions(total_count=3)})
        async with Publisher(kafka_bootstrap, topic) as p:
            for i in range(5):
                await p.publish_snapshot("acct", f"k{i}", b"v2", sequence=2)
        ends = await admin.end_offsets(kafka_bootstrap, topic, 3)
        assert sum(ends.values()) == 10

        async def everything_read() -> bool:
            identity = worker.store.topic_identity()
            return (
                identity is not None
                and identity.partitions == 3  # the read API routes by it
                and await worker.caught_up(ends)
            )

        await wait_until(everything_read, 60, interval=0.25, what="the new partitions")
        assert {g[1]: s.sequence for g, s in worker.store.grains()} == {
            f"k{i}": 2 for i in range(5)
        }
        assert worker.store.counts().records == 10  # partition 0 was not read again
        messages = [r.getMessage() for r in caplog.records]
        assert sum("now has 3 partitions, the store was built from 1" in m for m in messages) == 1
        assert not any("dropped the local replica" in m for m in messages)
    finally:
        await worker.stop()


async def test_an_offset_reset_behind_the_store_is_overridden_and_said_so(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kafka-consumer-groups --reset-offsets --to-earliest while the workers are stopped: the
    store's checkpoint wins (offsets never rewind), and the resume line says so."""
    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as p:
        for i in range(5):
            await p.publish_snapshot("acct", f"k{i}", b"v", sequence=1)
    group = unique("g")
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: first.caught_up({0: 5}), 60, what="the replica")
    await wait_until(lambda: _committed(kafka_bootstrap, group, topic, 5), 30, what="the commit")
    await first.stop()

    reset = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await reset.start()
    try:
        reset.assign([TopicPartition(topic, 0)])
        await reset.commit({TopicPartition(topic, 0): 0})  # what --to-earliest does
    finally:
        await reset.stop()

    caplog.set_level(logging.INFO, logger="stream_replica.worker")
    second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    try:
        await wait_until(
            lambda: _committed(kafka_bootstrap, group, topic, 5), 30, what="the store's commit"
        )
        lines = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
        assert any("committed offset 0 is behind it" in line for line in lines), lines
    finally:
        await second.stop()


async def _committed(bootstrap: str, group: str, topic: str, offset: int) -> bool:
    return (await admin.committed_offsets(bootstrap, group, topic)).get(0) == offset


async def test_a_group_offset_past_the_end_is_not_a_floor(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A committed offset past the log's end is of another log (a revocation committed the
    old offsets of a topic deleted and recreated under the name): commits start over from
    the store's. As the floor it held every commit back until the new log passed it."""
    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as p:
        for i in range(5):
            await p.publish_snapshot("acct", f"k{i}", b"v", sequence=1)
    group = unique("g")
    old_log = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await old_log.start()
    try:
        old_log.assign([TopicPartition(topic, 0)])
        await old_log.commit({TopicPartition(topic, 0): 300})
    finally:
        await old_log.stop()
    caplog.set_level(logging.INFO, logger="stream_replica.worker")
    worker = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    try:
        await wait_until(lambda: worker.caught_up({0: 5}), 60, what="the replica")
        await wait_until(
            lambda: _committed(kafka_bootstrap, group, topic, 5), 30, what="the store's commit"
        )
        assert any(
            "committed offset 300 is past the end offset 5" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await worker.stop()


@pytest.mark.parametrize(
    ("answer", "why"),
    [("hangs", "the broker did not answer within 0 s"), ("none", "the broker did not report it")],
)
async def test_an_assignment_that_cannot_confirm_the_topic_id_says_why_and_goes_on(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    answer: str,
    why: str,
) -> None:
    """A slow or empty answer to the topic-ID request at an assignment: the partition count
    alone is compared, with one warning naming why, and the worker replicates as usual."""
    from stream_replica import rebalance

    async def unanswered(client: Any, topic: str) -> str | None:
        if answer == "hangs":
            await asyncio.Event().wait()
        return None

    monkeypatch.setattr(rebalance, "IDENTITY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(rebalance, "fetch_topic_id_with", unanswered)
    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await publisher.publish_snapshot("t", "a", b"1")
    with caplog.at_level(logging.WARNING, "stream_replica"):
        worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db").start()
        await wait_until(lambda: worker.caught_up({0: 1}), 60, what="catch-up")
        await worker.stop()
    expected = f"topic {topic}: its ID could not be confirmed at this assignment ({why})"
    assert expected in caplog.text
