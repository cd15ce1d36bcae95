"""The audit's rebuild (what a rebuild from the last record of each key gives), pure, and the
audit command on a grain whose records are on two partitions (a broker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from stream_replica.audit import rebuilt_grains
from stream_replica.contract import Entry, EntryType, encode_key, encode_value
from tests.helpers import InProcessWorker, TopicFactory, cli, wait_until

GRAIN = ("acct", "a1")
KEY = encode_key(*GRAIN)


def full_state(sequence: int, payload: bytes = b"p", grain: tuple[str, str] = GRAIN) -> bytes:
    return encode_value(
        Entry(*grain, sequence, 1_000 + sequence, "c1", EntryType.FULL_STATE, payload)
    )


def test_one_partition_gives_one_outcome() -> None:
    rebuilt = rebuilt_grains({0: {KEY: (7, full_state(3))}})
    (state,) = rebuilt[GRAIN].states
    assert state is not None and (state.sequence, state.partition, state.offset) == (3, 0, 7)


def test_the_higher_sequence_wins_whatever_the_partition_order() -> None:
    # the old partition's record (sequence 5) and the new one's (sequence 9), either way round
    for old, new in ((0, 1), (1, 0)):
        rebuilt = rebuilt_grains({old: {KEY: (40, full_state(5))}, new: {KEY: (2, full_state(9))}})
        (state,) = rebuilt[GRAIN].states
        assert state is not None and (state.sequence, state.partition) == (9, new)
        assert sorted(rebuilt[GRAIN].records) == [0, 1]


def test_a_tombstone_on_another_partition_depends_on_the_order() -> None:
    rebuilt = rebuilt_grains({0: {KEY: (4, full_state(5))}, 1: {KEY: (8, None)}})
    states = rebuilt[GRAIN].states
    assert None in states and any(s is not None and s.sequence == 5 for s in states)


def test_a_refused_last_record_rebuilds_nothing() -> None:
    delta = encode_value(Entry(*GRAIN, 6, 1, "c1", EntryType.DELTA, b"d"))
    assert rebuilt_grains({0: {KEY: (3, delta)}})[GRAIN].states == [None]


@pytest.mark.broker
async def test_audit_of_a_grain_on_two_partitions(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """A grain whose newer states went to another partition (the partition count was raised,
    or a producer keyed it differently): the replica keeps the higher sequence, and the audit
    agrees whichever partition it reads last."""
    topic = await make_topic(partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        # partition 1 read last by the audit holds the older state
        await producer.send_and_wait(topic, full_state(9, b"new"), key=KEY, partition=0)
        await producer.send_and_wait(topic, full_state(5, b"old"), key=KEY, partition=1)
        await producer.send_and_wait(
            topic, full_state(1, grain=("acct", "other")), key=b"acct/other", partition=1
        )
    finally:
        await producer.stop()
    worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db").start()
    try:
        await wait_until(lambda: worker.caught_up({0: 1, 1: 2}), 60, what="the replica")
        state = worker.store.get(GRAIN)
        assert state is not None and (state.sequence, state.payload) == (9, b"new")
    finally:
        await worker.stop()
    audited = cli("audit", "--bootstrap-servers", kafka_bootstrap, "--db", str(tmp_path / "db"))
    assert audited.returncode == 0, audited.stdout + audited.stderr
    summary = json.loads(audited.stdout.strip().splitlines()[-1])["summary"]
    assert summary["divergent"] == 0 and summary["grains_in_store"] == 2, summary
