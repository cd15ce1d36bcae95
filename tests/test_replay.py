"""Replay from the beginning, a timestamp and explicit offsets, with and without --rebuild."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_replica import admin
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader
from tests.helpers import TopicFactory, cli, wait_until
from tests.oracle import read_oracle
from tests.test_worker import InProcessWorker


async def catch_up(bootstrap: str, topic: str, group: str, db: Path, ends: dict[int, int]) -> int:
    worker = InProcessWorker(bootstrap, topic, group, db).start()
    await wait_until(lambda: worker.caught_up(ends), 60, what="catch-up")
    records = worker.worker.counts.records
    await worker.stop()
    return records


def replay(bootstrap: str, topic: str, group: str, db: Path, *args: str) -> dict[str, Any]:
    result = cli(
        "replay",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--db",
        str(db),
        *args,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def store_state(db: Path) -> tuple[dict[Any, Any], dict[int, int]]:
    with ReplicaReader(db) as reader:
        return dict(reader.grains()), {p: c.next_offset for p, c in reader.checkpoints().items()}


async def test_replay_modes(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=2)
    group, db = unique("g"), tmp_path / "db"
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(30):
            await publisher.publish_snapshot("t", f"k{i}", b"first")
    oracle_first = await read_oracle(kafka_bootstrap, topic, 2)
    middle = datetime.now(UTC)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(30):
            await publisher.publish_snapshot("t", f"k{i}", b"second")
        await publisher.publish_tombstone("t", "k0")
    oracle = await read_oracle(kafka_bootstrap, topic, 2)
    ends = oracle.end_offsets()
    assert await catch_up(kafka_bootstrap, topic, group, db, ends) == 61

    # --from-beginning, keeping grains: re-read everything, same final state.
    out = replay(kafka_bootstrap, topic, group, db, "--from-beginning")
    assert out["partitions"] == {"0": 0, "1": 0} and out["grains_wiped"] == 0
    grains, checkpoints = store_state(db)
    assert checkpoints == {0: 0, 1: 0} and len(grains) == 29  # grains kept
    assert await admin.committed_offsets(kafka_bootstrap, group, topic) == {0: 0, 1: 0}
    assert await catch_up(kafka_bootstrap, topic, group, db, ends) == 61
    assert store_state(db)[0] == oracle.expected()

    # --from-beginning --rebuild: grains wiped first, then rebuilt exactly.
    out = replay(kafka_bootstrap, topic, group, db, "--from-beginning", "--rebuild")
    assert out["grains_wiped"] == 29
    assert store_state(db)[0] == {}
    assert await catch_up(kafka_bootstrap, topic, group, db, ends) == 61
    assert store_state(db)[0] == oracle.expected()

    # --from-timestamp: each partition goes back to its first record at/after the time.
    out = replay(kafka_bootstrap, topic, group, db, "--from-timestamp", middle.isoformat())
    assert out["partitions"] == {str(p): e for p, e in oracle_first.end_offsets().items()}
    assert await catch_up(kafka_bootstrap, topic, group, db, ends) == 31
    assert store_state(db)[0] == oracle.expected()

    # --offsets on one partition with --rebuild: only that partition is rebuilt from there.
    out = replay(kafka_bootstrap, topic, group, db, "--offsets", "1:0", "--rebuild")
    assert out["partitions"] == {"1": 0}
    grains, checkpoints = store_state(db)
    assert checkpoints[1] == 0 and checkpoints[0] == ends[0]
    assert all(state.partition == 0 for state in grains.values())
    committed = await admin.committed_offsets(kafka_bootstrap, group, topic)
    assert committed == {0: ends[0], 1: 0}
    assert await catch_up(kafka_bootstrap, topic, group, db, ends) == ends[1]
    assert store_state(db)[0] == oracle.expected()


async def test_replay_refused_while_group_is_live(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=1)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await publisher.publish_snapshot("t", "k", b"x")
    worker = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "live").start()
    try:
        await wait_until(lambda: worker.caught_up({0: 1}), 60, what="catch-up")

        async def member_visible() -> bool:
            return bool(await admin.group_members(kafka_bootstrap, group))

        await wait_until(member_visible, 30, what="group membership")
        result = cli(
            "replay",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topic,
            "--group",
            group,
            "--db",
            str(tmp_path / "other"),
            "--from-beginning",
        )
        assert result.returncode == 2
        assert "live member" in result.stderr and "Traceback" not in result.stderr
    finally:
        await worker.stop()


def test_replay_needs_exactly_one_start() -> None:
    result = cli("replay", "--db", "x", "--from-beginning", "--offsets", "0:1")
    assert result.returncode == 2 and "not allowed with" in result.stderr


async def test_replay_refuses_to_claim_unapplied_records(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=1)
    group, db = unique("g"), tmp_path / "db"
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(10):
            await publisher.publish_snapshot("t", f"k{i}", b"x")
    args = ("--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group)

    missing = cli("replay", *args, "--db", str(tmp_path / "typo"), "--from-beginning")
    assert missing.returncode == 2 and "no replica store" in missing.stderr
    assert not (tmp_path / "typo").exists()

    replay(kafka_bootstrap, topic, group, db, "--from-beginning", "--rebuild")
    forward = cli("replay", *args, "--db", str(db), "--offsets", "0:5")
    assert forward.returncode == 2 and "would claim records it never applied" in forward.stderr
    assert store_state(db)[1] == {0: 0}  # unchanged
    out = replay(kafka_bootstrap, topic, group, db, "--offsets", "0:5", "--rebuild")
    assert out["partitions"] == {"0": 5}


async def test_replay_with_another_group_than_the_stores_is_refused(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """A mistyped --group made a new group, committed its offsets and moved the store's
    checkpoints, while the workers' own group stayed where it was."""
    topic = await make_topic(partitions=1)
    group, db = unique("g"), tmp_path / "db"
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(5):
            await publisher.publish_snapshot("t", f"k{i}", b"x")
    assert await catch_up(kafka_bootstrap, topic, group, db, {0: 5}) == 5
    typo = group + "-typo"
    args = ("--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--db", str(db))
    refused = cli("replay", *args, "--group", typo, "--from-beginning")
    assert refused.returncode == 2, refused.stderr
    assert f"belongs to group {group!r} (its last worker's), not {typo!r}" in refused.stderr
    assert store_state(db)[1] == {0: 5}  # the store as it was
    assert await admin.committed_offsets(kafka_bootstrap, typo, topic) == {}  # no new group
    assert replay(kafka_bootstrap, topic, group, db, "--from-beginning")["partitions"] == {"0": 0}


async def test_replay_ends_where_the_workers_can_read_while_a_transaction_is_open(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """Replay took the end offset as a consumer reading uncommitted records sees it (the high
    watermark). While a transaction is open the workers, reading committed records only, see
    the last stable offset: a store moved past it (--offsets 0:8 --rebuild, or a
    --from-timestamp after every record) was taken by the next worker for a checkpoint
    "past the end offset (topic recreated?)", wiped and rebuilt from the log start, and the
    group's offset for one of another log."""
    from aiokafka import AIOKafkaProducer

    from tests.test_worker import _transactional_record

    topic = await make_topic(partitions=1)
    group, db = unique("g"), tmp_path / "db"
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(5):
            await publisher.publish_snapshot("t", f"k{i}", b"x")
    assert await catch_up(kafka_bootstrap, topic, group, db, {0: 5}) == 5
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        for i in range(3):  # offsets 5-7, the high watermark 8, the last stable offset 5
            await (await producer.send(topic, **_transactional_record(0, f"k{i}", 2**60)))
        args = ("--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group)
        past = cli("replay", *args, "--db", str(db), "--offsets", "0:8", "--rebuild")
        assert past.returncode == 2, past.stderr
        assert "outside 0..5" in past.stderr and "transaction" in past.stderr
        assert store_state(db)[1] == {0: 5}  # unchanged
        later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1).isoformat()
        out = replay(kafka_bootstrap, topic, group, db, "--from-timestamp", later, "--rebuild")
        assert out["partitions"] == {"0": 5}
        assert await admin.committed_offsets(kafka_bootstrap, group, topic) == {0: 5}
        await producer.commit_transaction()  # its marker: offset 8
    finally:
        await producer.stop()
    # The store holds what the records from offset 5 on give: the transaction's.
    assert await catch_up(kafka_bootstrap, topic, group, db, {0: 9}) == 3
    grains, checkpoints = store_state(db)
    assert checkpoints == {0: 9} and sorted(k for _, k in grains) == ["k0", "k1", "k2"]
