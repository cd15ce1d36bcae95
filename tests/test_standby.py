"""standby.py, mostly without a broker (a scripted consumer): a standby applies by the active
path's rules, and a batch fetched while its partitions were re-sought is never applied nor
skipped. One test against the broker: a transaction held open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream_replica.contract import Entry, EntryType, encode_key, encode_value
from stream_replica.settings import WorkerSettings
from stream_replica.standby import StandbyFollower
from stream_replica.store import ReplicaStore
from tests.helpers import wait_until

TOPIC = "t"


def record(offset: int, key: str, sequence: int) -> Any:
    entry = Entry("g", key, sequence, 1, "primary", EntryType.FULL_STATE, f"v{offset}".encode())
    return SimpleNamespace(offset=offset, key=encode_key("g", key), value=encode_value(entry))


class ScriptedConsumer:
    """Holds one partition's log; getmany returns from the position and advances it, as
    aiokafka does. ``during_fetch`` runs inside the next getmany (a rebalance meanwhile)."""

    def __init__(self, log: dict[int, list[Any]]) -> None:
        self.log = log
        self.positions: dict[TopicPartition, int] = {}
        self.during_fetch: Callable[[], Any] | None = None

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {tp: self.positions.get(tp, -1) for tp in tps}

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log[tp.partition]) for tp in tps}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp.partition])

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.highwater(tp)  # no transaction open

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return time.time_ns() // 1_000_000  # every call "fetches": the end is always fresh

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        batch = {}
        for tp, position in self.positions.items():
            records = self.log[tp.partition][position : position + 3]
            if records:
                batch[tp] = records
                self.positions[tp] = position + len(records)
        if self.during_fetch is not None:
            action, self.during_fetch = self.during_fetch, None
            await action()
        await asyncio.sleep(0)
        return batch

    async def stop(self) -> None:
        pass


@pytest.mark.parametrize("refollow", [frozenset({0}), frozenset({0, 1})])
async def test_batch_fetched_across_a_refollow_is_neither_lost_nor_doubled(
    tmp_path: Path, refollow: frozenset[int]
) -> None:
    """A rebalance while a fetch is in flight, keeping the standby set or growing it."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    settings = WorkerSettings(db=tmp_path / "db", topic=TOPIC)
    lock = asyncio.Lock()
    follower = StandbyFollower(settings, store, lock)
    log = {
        0: [record(o, f"k{o % 4}", o + 1) for o in range(9)],
        1: [record(o, f"j{o}", 1) for o in range(2)],
    }
    consumer = ScriptedConsumer(log)
    follower._consumer = consumer  # type: ignore[assignment]
    async with lock:
        await follower.follow(frozenset({0}))

    async def rebalance() -> None:  # while offsets 0..2 of p0 are in flight
        async with lock:
            await follower.follow(refollow)

    consumer.during_fetch = rebalance
    stop = asyncio.Event()
    runner = asyncio.create_task(follower.run(stop))

    expected = {0: 9, 1: 2} if 1 in refollow else {0: 9}

    def caught_up() -> bool:
        return {p: c.next_offset for p, c in store.checkpoints().items()} == expected

    await wait_until(caught_up, 5, 0.01, what="the standby to reach the end")
    stop.set()
    await asyncio.wait_for(runner, 5)
    grains = {g: s.payload for g, s in store.grains()}
    assert {g: p for g, p in grains.items() if g[1].startswith("k")} == {
        ("g", "k0"): b"v8",
        ("g", "k1"): b"v5",
        ("g", "k2"): b"v6",
        ("g", "k3"): b"v7",
    }
    # Every record applied exactly once: a dropped batch is read again from the store's position.
    assert follower.counts.records == sum(expected.values())
    assert follower.lags() == dict.fromkeys(expected, 0)
    store.close()


class MarkedConsumer(ScriptedConsumer):
    """Its log ends with a commit marker (offset 3) that getmany steps over with the records
    before it, as aiokafka does: the position is past the marker, the records end before."""

    def highwater(self, tp: TopicPartition) -> int:
        return 4

    async def position(self, tp: TopicPartition) -> int:
        return 4


async def test_a_poll_followed_by_a_commit_marker_leaves_the_standby_past_it(
    tmp_path: Path,
) -> None:
    """A transactional producer writing all the time: no poll comes back empty, so the
    marker after a poll's records must be stepped over with them (the copy stayed one short
    of the end for good: never caught up)."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    follower = StandbyFollower(
        WorkerSettings(db=tmp_path / "db", topic=TOPIC), store, asyncio.Lock()
    )
    consumer = MarkedConsumer({0: []})
    follower._consumer = consumer  # type: ignore[assignment]
    follower._partitions = frozenset({0})
    batch = {TopicPartition(TOPIC, 0): [record(o, f"k{o}", 1) for o in range(3)]}
    await follower._apply(consumer, batch)  # type: ignore[arg-type]
    assert store.checkpoints()[0].next_offset == 4
    assert follower.lags() == {0: 0}
    store.close()


class BusyNeighbour(ScriptedConsumer):
    """Partition 0: three records and a commit marker (offset 3), which a fetch steps over
    on its own after the poll that returned the records; partition 1: written all the time,
    so no poll comes back empty."""

    def __init__(self) -> None:
        super().__init__({0: [record(o, f"k{o}", 1) for o in range(3)], 1: []})
        self.polls = 0

    def highwater(self, tp: TopicPartition) -> int:
        return 4 if tp.partition == 0 else self.polls * 3

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        batch = {}
        p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
        if self.positions[p0] == 3:
            self.positions[p0] = 4  # stepped over the marker, nothing of it returned
        elif self.positions[p0] == 0:
            batch[p0] = self.log[0]
            self.positions[p0] = 3
        start = self.positions[p1]
        batch[p1] = [record(o, f"b{o % 5}", o + 1) for o in range(start, start + 3)]
        self.positions[p1] = start + 3
        await asyncio.sleep(0.001)
        return batch


async def test_a_quiet_partition_steps_over_its_marker_while_another_is_busy(
    tmp_path: Path,
) -> None:
    """The standby stepped over markers only after an empty poll: with another partition
    written all the time, the quiet one stayed one short of its end for as long."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    follower = StandbyFollower(
        WorkerSettings(db=tmp_path / "db", topic=TOPIC), store, asyncio.Lock()
    )
    consumer = BusyNeighbour()
    consumer.assign([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    for tp in consumer.assignment():
        consumer.seek(tp, 0)
    follower._consumer = consumer  # type: ignore[assignment]
    follower._partitions = frozenset({0, 1})
    follower._positions = {0: 0, 1: 0}
    stop = asyncio.Event()
    runner = asyncio.create_task(follower.run(stop))
    try:

        def past_the_marker() -> bool:
            assert not runner.done(), runner
            checkpoint = store.checkpoints().get(0)
            return checkpoint is not None and checkpoint.next_offset == 4

        await wait_until(past_the_marker, 10, 0.02, what="partition 0 past its marker")
        assert follower.lags()[0] == 0
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
        store.close()


async def test_a_transaction_held_open_leaves_the_standby_caught_up_with_what_it_can_read(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, unique: Any
) -> None:
    """Against a broker: a transaction left open keeps its records, and every record after
    its start, from the standby's consumer (it reads committed records only). Its lag was
    measured against the high watermark: behind for as long as the transaction stayed open,
    and its caught-up time (the tombstone-retention check on a takeover) not refreshed."""
    from aiokafka import AIOKafkaProducer

    from stream_replica.publisher import Publisher

    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(5):
            await publisher.publish_snapshot("t", f"g{i}", b"plain")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap, topic=topic, group=unique("g"), db=tmp_path / "db"
    )
    store = ReplicaStore(tmp_path / "db", topic)
    lock = asyncio.Lock()
    follower = StandbyFollower(settings, store, lock)
    stop = asyncio.Event()
    runner = None
    try:
        await producer.begin_transaction()
        for i in range(3):
            entry = Entry("t", f"g{i}", 2**60, 1, "eu", EntryType.FULL_STATE, b"in transaction")
            await (
                await producer.send(
                    topic, key=encode_key("t", f"g{i}"), value=encode_value(entry), partition=0
                )
            )
        async with lock:
            await follower.follow(frozenset({0}))
        runner = asyncio.create_task(follower.run(stop))
        started = time.time_ns() // 1_000_000

        def caught_up() -> bool:
            _, end = follower.marks()[0]
            return (
                follower.lags() == {0: 0}
                and end is not None
                and end.held_back == 3
                and end.confirmed_at_ms > started
            )

        await wait_until(caught_up, 30, 0.1, what="the standby caught up, the transaction open")
        async with lock:
            follower.touch()  # the caught-up time: when the broker confirmed that end
        checkpoint = store.checkpoints()[0]
        assert checkpoint.next_offset == 5 and checkpoint.caught_up_at_ms > started
    finally:
        stop.set()
        if runner is not None:
            await asyncio.wait_for(runner, 10)
        await follower.stop()
        await producer.stop()
        store.close()
