"""A worker's producers (dead letters, repairs) against a partition Kafka takes no writes for:
fewer in-sync replicas than min.insync.replicas (two brokers of three down in production;
here a topic with two replicas, min.insync.replicas 2, and its follower's broker stopped).
An idempotent acks=all producer then retries its batches until the broker takes them.

The worker used to hang in aiokafka's producer ``stop()``, which waits for every record to be
acknowledged: after a dead-letter send that timed out (the FatalError was never printed, no
exit) and on SIGTERM with repairs pending, until the brokers came back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from stream_replica import admin, dead_letters, repair
from stream_replica import worker as worker_module
from stream_replica.contract import Entry, EntryType, encode_value
from stream_replica.errors import FatalError
from stream_replica.publisher import Publisher
from tests.helpers import InProcessWorker, publish_unchecked, wait_until
from tests.kafka_cluster import KafkaCluster, partition_state

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]


@pytest.fixture(autouse=True)
def collected() -> Iterator[None]:
    """What the stopped producers leave behind is collected (and any failed future asyncio
    reports then, reported) here, not in the middle of a later test: a finalizer that logs
    while Python 3.11 compiles (pytest formatting a report) breaks pytest with "AST
    constructor recursion depth mismatch"."""
    yield
    gc.collect()


async def two_replicas(cluster: KafkaCluster, topic: str, compacted: bool) -> None:
    """Create ``topic``: 1 partition, 2 replicas in sync, min.insync.replicas 2."""
    configs = admin.replication_topic_configs(2) if compacted else {"cleanup.policy": "delete"}
    configs |= {"min.insync.replicas": "2"}
    await admin.create_topic(cluster.bootstrap, topic, 1, 2, configs)

    async def in_sync() -> bool:
        state = (await partition_state(cluster.bootstrap, topic)).get(0)
        return state is not None and state["leader"] in cluster.ids and len(state["isr"]) == 2

    await wait_until(in_sync, 60, 0.25, what=f"{topic} in sync")


async def stop_follower(cluster: KafkaCluster, topic: str) -> int:
    """Stop the broker of ``topic``'s follower (controlled: the ISR shrinks at once) and wait
    until acks=all writes are refused (NOT_ENOUGH_REPLICAS). Returns the stopped broker."""
    seen: dict[str, Any] = {}

    async def known() -> bool:  # (a broker may not have the new topic's metadata yet)
        state = (await partition_state(cluster.bootstrap, topic)).get(0)
        if state is None or len(state["isr"]) != 2:
            return False
        seen.update(state)
        return True

    await wait_until(known, 60, 0.25, what=f"{topic}'s replicas")
    follower = int(next(b for b in seen["replicas"] if b != seen["leader"]))
    await asyncio.to_thread(cluster.stop_broker, follower)

    async def shrunk() -> bool:
        state = (await partition_state(cluster.bootstrap, topic)).get(0)
        return state is not None and len(state["isr"]) == 1

    await wait_until(shrunk, 60, 0.25, what=f"{topic}'s ISR below min.insync.replicas")
    return follower


async def below_min_isr(cluster: KafkaCluster, topic: str, compacted: bool) -> int:
    await two_replicas(cluster, topic, compacted)
    return await stop_follower(cluster, topic)


async def delete(bootstrap: str, *topics: str) -> None:
    with contextlib.suppress(Exception):
        async with admin.admin_client(bootstrap) as client:
            await client.delete_topics(list(topics))


async def test_stop_producer_drops_what_kafka_will_not_take(
    cluster: KafkaCluster, unique: Any
) -> None:
    from stream_replica.clients import stop_producer

    topic = unique("below-min-isr")
    stopped = await below_min_isr(cluster, topic, compacted=False)
    described = await admin.describe_topic(cluster.bootstrap, topic)
    assert described is not None and described.below_min_insync() == [0]
    assert "fewer in-sync replicas than min.insync.replicas=2" in described.replica_warnings()[0]
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
    )
    try:
        await producer.start()
        delivery = await producer.send(topic, b"v", key=b"k")
        await asyncio.sleep(1.0)  # sent, refused, retried
        assert not delivery.done()
        # Nothing asyncio reports: an error in aiokafka's callbacks of the batches failed (a
        # KeyError for a batch put back for a retry), or a future failed and never retrieved
        # when collected.
        reported: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context))
        try:
            started = time.monotonic()
            assert await stop_producer(producer, 1.0) is False
            assert time.monotonic() - started < 5
            assert delivery.done() and delivery.exception() is not None
            await asyncio.sleep(0)  # the done callbacks run
            del producer, delivery
            gc.collect()
        finally:
            loop.set_exception_handler(None)
        assert not reported, [
            f"{context.get('message')}: {context.get('exception')!r}" for context in reported
        ]
    finally:
        await asyncio.to_thread(cluster.start_broker, stopped)
        await delete(cluster.bootstrap, topic)


async def test_worker_exits_when_the_dead_letter_topic_takes_no_write(
    cluster: KafkaCluster, tmp_path: Path, unique: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_letters, "DLQ_TIMEOUT_S", 2.0)
    monkeypatch.setattr(worker_module, "STOP_TIMEOUT_S", 2.0)
    bootstrap = cluster.bootstrap
    topic, dlq = unique("dlq-source"), unique("dlq")
    await admin.create_topic(bootstrap, topic, 1, 3, admin.replication_topic_configs(3))
    stopped = await below_min_isr(cluster, dlq, compacted=False)  # the topic keeps 2 of 3
    worker: InProcessWorker | None = None
    try:
        async with Publisher(bootstrap, topic) as publisher:
            await publisher.publish_snapshot("acct", "a", b"a1", sequence=1)
            await publish_unchecked(publisher, "acct", "a", b"delta", 2, EntryType.DELTA)
            await publisher.flush()
        worker = InProcessWorker(bootstrap, topic, unique("g"), tmp_path / "db", dlq_topic=dlq)
        task = worker.start().task
        assert task is not None
        # Before the fix the send timed out, and then stop() of the dead-letter producer
        # waited for that record for as long as the partition took no writes: no exit.
        with pytest.raises(FatalError, match="no acknowledgement within 2 s"):
            await asyncio.wait_for(task, 60)
        checkpoint = worker.store.checkpoints().get(0)
        assert checkpoint is None or checkpoint.next_offset <= 1  # the Delta's poll: unwritten
    finally:
        if worker is not None:
            await worker.kill()
        await asyncio.to_thread(cluster.start_broker, stopped)
        await delete(bootstrap, topic, dlq)


async def test_sigterm_with_repairs_kafka_will_not_take_exits(
    cluster: KafkaCluster, tmp_path: Path, unique: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repair, "ACK_WAIT_S", 1.0)
    monkeypatch.setattr(worker_module, "STOP_TIMEOUT_S", 2.0)
    bootstrap = cluster.bootstrap
    topic = unique("repairs")
    await two_replicas(cluster, topic, compacted=True)
    stopped = 0
    worker: InProcessWorker | None = None
    try:
        # A state, then a Delta that shadows it: the worker repairs it once caught up.
        async with Publisher(bootstrap, topic) as publisher:
            await publisher.publish_snapshot("acct", "a", b"a1", sequence=1)
            await publish_unchecked(publisher, "acct", "a", b"delta", 2, EntryType.DELTA)
            await publisher.flush()
        stopped = await stop_follower(cluster, topic)  # the repair is never taken
        worker = InProcessWorker(
            bootstrap, topic, unique("g"), tmp_path / "db", repair_shadowed=True
        ).start()
        await wait_until(lambda: worker.caught_up({0: 2}), 60, what="catch-up")
        repairer = worker.worker._repairer
        assert repairer is not None
        # a repair sent and not acknowledged; aiokafka retries it still
        await wait_until(lambda: bool(repairer._in_flight), 30, 0.05, what="a repair in flight")
        assert [g for g, _ in worker.store.shadowed()] == [("acct", "a")]
        started = time.monotonic()
        worker.stop_event.set()  # SIGTERM: before the fix, the repair producer's stop hung
        assert worker.task is not None
        await asyncio.wait_for(worker.task, 60)
        assert time.monotonic() - started < 30
        worker.store.close()
        worker = None
    finally:
        if worker is not None:
            await worker.kill()
        if stopped:
            await asyncio.to_thread(cluster.start_broker, stopped)
        await delete(bootstrap, topic)


async def test_repairs_kafka_will_not_take_do_not_hold_up_the_worker(
    cluster: KafkaCluster, tmp_path: Path, unique: Any
) -> None:
    """A broker down during a catch-up: no partition of the topic takes writes (fewer in-sync
    replicas than min.insync.replicas), but what the log holds can be read. A repair not
    acknowledged stays in flight, sent once, and repairs pause: the catch-up goes on. A repair
    pass used to wait 30 s per repair holding the batch lock (one poll per 30 s for every
    partition), and each pass queued the same repair again."""
    bootstrap = cluster.bootstrap
    topic = unique("repairs")
    configs = admin.replication_topic_configs(2) | {"min.insync.replicas": "2"}
    leader, follower = cluster.ids[:2]  # both partitions on the same two brokers
    async with admin.admin_client(bootstrap) as client:
        await client.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=-1,
                    replication_factor=-1,
                    replica_assignments={0: [leader, follower], 1: [leader, follower]},
                    topic_configs=configs,
                )
            ]
        )

    async def in_sync() -> bool:
        state = await partition_state(bootstrap, topic)
        return len(state) == 2 and all(len(p["isr"]) == 2 for p in state.values())

    await wait_until(in_sync, 60, 0.25, what=f"{topic}'s replicas")
    stopped: list[int] = []
    worker: InProcessWorker | None = None
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            # partition 0: a state and a Delta that shadows it (repaired once caught up);
            # partition 1: a backlog read 20 records a poll
            await producer.send_and_wait(topic, full_state("a", 1), key=b"acct/a", partition=0)
            delta = Entry("acct", "a", 2, 1, "c1", EntryType.DELTA, b"d")
            await producer.send_and_wait(topic, encode_value(delta), key=b"acct/a", partition=0)
            sends = [
                await producer.send(
                    topic, full_state(f"b{i}", 1), key=f"acct/b{i}".encode(), partition=1
                )
                for i in range(2_000)
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()
        ends = await admin.end_offsets(bootstrap, topic, 2)
        stopped = [follower]  # (the group's coordinator keeps its in-sync replicas)
        await asyncio.to_thread(cluster.stop_broker, *stopped)

        async def below_min_isr() -> bool:
            state = await partition_state(bootstrap, topic)
            return all(p["isr"] == [leader] for p in state.values())

        await wait_until(below_min_isr, 60, 0.25, what="both partitions below min ISR")
        worker = InProcessWorker(
            bootstrap, topic, unique("g"), tmp_path / "db", repair_shadowed=True, max_records=20
        ).start()

        def in_flight() -> bool:
            repairer = worker.worker._repairer  # made once the worker reached Kafka
            return repairer is not None and bool(repairer._in_flight)

        await wait_until(in_flight, 60, 0.05, what="a repair in flight")
        repairer = worker.worker._repairer
        assert repairer is not None
        await wait_until(lambda: worker.caught_up(ends), 30, 0.1, what="the catch-up")
        assert len(repairer._in_flight) == 1 and repairer.repairs == 0  # sent once
        await asyncio.to_thread(cluster.start_broker, *stopped)
        stopped = []
        await wait_until(lambda: repairer.repairs == 1, 60, 0.1, what="the repair to land")
    finally:
        if worker is not None:
            await worker.stop()
        if stopped:
            await asyncio.to_thread(cluster.start_broker, *stopped)
        await delete(bootstrap, topic)


def full_state(key: str, sequence: int) -> bytes:
    return encode_value(Entry("acct", key, sequence, 1, "c1", EntryType.FULL_STATE, b"v"))
