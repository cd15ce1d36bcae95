"""Rebuilt equals live: replicas after the log cleaner really ran (topics with a fast cleaner),
shadowing detected and reported, repairs that converge, the audit command, topic identity."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from stream_replica import admin
from stream_replica.contract import EntryType, GrainId, encode_key
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.publisher import Publisher
from stream_replica.repair import REPAIR_HEADER, ShadowRepairer, repair_record
from stream_replica.store import Checkpoint, ReplicaStore
from tests.helpers import (
    InProcessWorker,
    TopicFactory,
    cli,
    enable_fast_cleaner,
    force_compaction,
    log_records,
    publish_unchecked,
    wait_until,
)

Grains = dict[GrainId, GrainState]


async def publish_hazards(bootstrap: str, topic: str) -> None:
    """The issue's table: each key's first record is a good snapshot, then (offsets 5..9)
    a Delta, an invalid value, a stale sequence, an equal sequence with another payload,
    and a newer snapshot (the control)."""
    async with Publisher(bootstrap, topic) as p:
        await p.publish_snapshot("acct", "delta", b"d1", sequence=1)  # offset 0
        await p.publish_snapshot("acct", "invalid", b"i1", sequence=1)  # 1
        await p.publish_snapshot("acct", "stale", b"s5", sequence=5)  # 2
        await p.publish_snapshot("acct", "conflict", b"first", sequence=2)  # 3
        await p.publish_snapshot("acct", "control", b"c1", sequence=1)  # 4
        await p.flush()
        await publish_unchecked(p, "acct", "delta", b"d2", 2, EntryType.DELTA)  # 5
        await p.publish_raw(encode_key("acct", "invalid"), b"\xc1")  # 6: not msgpack
        await publish_unchecked(p, "acct", "stale", b"s3", 3)  # 7
        await p.publish_snapshot("acct", "conflict", b"second", sequence=2)  # 8
        await p.publish_snapshot("acct", "control", b"c2", sequence=2)  # 9
        await p.flush()


SHADOWED = {"delta", "invalid", "stale"}


async def publish_shadowed(bootstrap: str, topic: str, grain: GrainId, sequence: int) -> None:
    """The grain's state (payload s1, ``sequence``), then a Delta that shadows it."""
    async with Publisher(bootstrap, topic) as p:
        await p.publish_snapshot(*grain, b"s1", sequence=sequence)
        await p.flush()
        await publish_unchecked(p, *grain, b"d", sequence + 1, EntryType.DELTA)


def by_key(grains: Grains) -> dict[str, tuple[int, bytes]]:
    return {g[1]: (s.sequence, s.payload) for g, s in grains.items()}


async def caught_up_to_end(bootstrap: str, topic: str, *workers: InProcessWorker) -> bool:
    ends = await admin.end_offsets(bootstrap, topic, 1)
    return all([await w.caught_up(ends) for w in workers])


async def test_rebuild_after_compaction_differs_only_where_shadowing_was_reported(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(fast_cleaner=True)
    dlq = await make_topic(compacted=False, prefix="dlq")
    await publish_hazards(kafka_bootstrap, topic)
    live = InProcessWorker(
        kafka_bootstrap, topic, unique("live"), tmp_path / "live", dlq_topic=dlq
    ).start()
    await wait_until(lambda: live.caught_up({0: 10}), 60, what="the live replica")
    live_grains = dict(live.store.grains())
    assert by_key(live_grains) == {
        "delta": (1, b"d1"),
        "invalid": (1, b"i1"),
        "stale": (5, b"s5"),
        "conflict": (2, b"second"),  # the later record wins, as compaction decides
        "control": (2, b"c2"),
    }
    marks = {g[1]: (m.state_offset, m.by_offset) for g, m in live.store.shadowed()}
    assert marks == {"delta": (0, 5), "invalid": (1, 6), "stale": (2, 7)}
    assert live.store.counts().shadowed == 3
    stats = cli("stats", "--db", str(tmp_path / "live"))
    assert json.loads(stats.stdout)["shadowed"] == 3
    assert json.loads(stats.stdout)["shadowed_now"] == 3

    await force_compaction(kafka_bootstrap, topic, gone={0, 1, 2, 3, 4})

    # The audit (while the worker runs) names each shadowed grain and why.
    audited = cli("audit", "--bootstrap-servers", kafka_bootstrap, "--db", str(tmp_path / "live"))
    assert audited.returncode == 1, audited.stderr
    lines = [json.loads(line) for line in audited.stdout.splitlines()]
    divergent = {line["grain_key"]: line for line in lines[:-1]}
    assert set(divergent) == SHADOWED
    assert {k: (v["why"], v["shadowed_by_offset"]) for k, v in divergent.items()} == {
        "delta": ("shadowed", 5),
        "invalid": ("shadowed", 6),
        "stale": ("shadowed", 7),
    }
    assert divergent["stale"]["last_record"] == "stale"
    assert divergent["stale"]["rebuild"]["sequence"] == 3
    assert divergent["delta"]["rebuild"] is None
    summary = lines[-1]["summary"]
    assert summary["divergent"] == 3 and summary["shadowed"] == 3
    assert summary["grains_in_store"] == 5

    # A replica rebuilt from the compacted log equals the live one except those grains.
    rebuilt = InProcessWorker(kafka_bootstrap, topic, unique("rebuild"), tmp_path / "rebuilt")
    rebuilt.start()
    await wait_until(
        lambda: caught_up_to_end(kafka_bootstrap, topic, rebuilt), 60, what="the rebuild"
    )
    rebuilt_grains = dict(rebuilt.store.grains())
    differing = {
        g[1] for g in live_grains.keys() | rebuilt_grains.keys()
        if live_grains.get(g) != rebuilt_grains.get(g)
    }  # fmt: skip
    assert differing == SHADOWED
    assert by_key(rebuilt_grains)["stale"] == (3, b"s3")
    await rebuilt.stop()
    await live.stop()

    # The dead-letter copies say which state they shadow.
    dead = await read_topic(kafka_bootstrap, dlq, 2)
    shadows = {dict(r.headers)["stream-replica.source-offset"]: r for r in dead}
    assert dict(shadows[b"5"].headers)["stream-replica.shadows-offset"] == b"0"
    assert dict(shadows[b"6"].headers)["stream-replica.shadows-offset"] == b"1"

    # The audit of the rebuilt store finds nothing; plant divergences and it names them.
    clean = cli("audit", "--bootstrap-servers", kafka_bootstrap, "--db", str(tmp_path / "rebuilt"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout.splitlines()[-1])["summary"]["divergent"] == 0
    store = ReplicaStore(tmp_path / "rebuilt", topic)
    control = rebuilt_grains[("acct", "control")]
    planted = GrainState(control.sequence, 0, "x", b"planted", 0, control.offset)
    ghost = GrainState(1, 0, "x", b"ghost", 0, 3)
    store.apply(
        {("acct", "control"): planted, ("acct", "ghost"): ghost},
        {0: Checkpoint(store.checkpoints()[0].next_offset, 0)},
        FoldCounts(),
    )
    store.close()
    planted_audit = cli(
        "audit", "--bootstrap-servers", kafka_bootstrap, "--db", str(tmp_path / "rebuilt")
    )
    assert planted_audit.returncode == 1
    found = {
        json.loads(line)["grain_key"]: json.loads(line)["why"]
        for line in planted_audit.stdout.splitlines()[:-1]
    }
    assert found == {"control": "differs", "ghost": "extra"}


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        while len(records) < expected:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"{topic} has only {len(records)} of {expected} records"
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def primary_racing_repairs(bootstrap: str, topic: str, rounds: int) -> None:
    """A primary that keeps writing newer snapshots of grains whose states keep being
    shadowed, so repairs race with it."""
    async with Publisher(bootstrap, topic) as p:
        for round_index in range(1, rounds + 1):
            sequence = 10 * round_index
            await p.publish_snapshot("acct", "busy", b"b%d" % sequence, sequence=sequence)
            await publish_unchecked(p, "acct", "busy", b"old", sequence - 1)
            await p.publish_snapshot("acct", "stale", b"s%d" % sequence, sequence=sequence)
            await p.flush()
            await asyncio.sleep(0.02)  # pacing the producer, not synchronisation


async def test_repair_converges_with_two_groups_and_a_concurrent_primary(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    # The cleaner stays off while the groups race (so every repair can be counted in the log),
    # and is switched on for the rebuild.
    topic = await make_topic()
    await publish_hazards(kafka_bootstrap, topic)
    # A repair from a slower group that landed after the primary moved on: stale itself, so
    # it shadows the newer state and is repaired once more, with the higher sequence.
    async with Publisher(kafka_bootstrap, topic) as p:
        await p.publish_snapshot("acct", "late", b"l5", sequence=5)
        await publish_unchecked(p, "acct", "late", b"l3", 3)
        await p.publish_snapshot("acct", "late", b"l6", sequence=6)
        key, value, headers = repair_record(
            ("acct", "late"), GrainState(5, 5, "primary", b"l5", 0, 10, shadowed_by=11), "old"
        )
        await p._producer.send_and_wait(topic, value, key=key, partition=0, headers=headers)

    workers = [
        InProcessWorker(
            kafka_bootstrap, topic, unique(name), tmp_path / name, repair_shadowed=True
        ).start()
        for name in ("a", "b")
    ]
    await primary_racing_repairs(kafka_bootstrap, topic, rounds=20)

    async def settled() -> bool:
        if not await caught_up_to_end(kafka_bootstrap, topic, *workers):
            return False
        return all(not list(w.store.shadowed()) for w in workers)

    await wait_until(settled, 90, what="both groups to repair every shadowed grain")
    grains = [dict(w.store.grains()) for w in workers]
    assert grains[0] == grains[1]
    assert by_key(grains[0])["late"] == (6, b"l6")
    assert by_key(grains[0])["busy"] == (200, b"b200")
    repairs = [w.worker._repairer.repairs for w in workers if w.worker._repairer is not None]
    records = await log_records(kafka_bootstrap, topic)
    repair_records = [dict(r.headers) for r in records if REPAIR_HEADER in dict(r.headers or ())]
    # Every acknowledged repair is in the log, and each group answered each shadowing record
    # at most once: no repair loops.
    assert len(repair_records) == 1 + sum(repairs)
    assert all(r > 0 for r in repairs)
    answered = [
        (h["stream-replica.repair-group"], h["stream-replica.shadowed-by-offset"])
        for h in repair_records
    ]
    assert len(answered) == len(set(answered))
    # The late repair (stale itself) was answered by both groups with the higher sequence.
    # The late repair (offset 13, stale itself) was answered with sequence 6 (by one group or
    # both: a group that reads the other's answer first has nothing left to repair).
    assert {group for group, shadowed_by in answered if shadowed_by == b"13"} <= {
        w.settings.group.encode() for w in workers
    }
    assert any(shadowed_by == b"13" for _, shadowed_by in answered)
    for worker in workers:
        await worker.stop()
    await enable_fast_cleaner(kafka_bootstrap, topic)

    # Everything superseded is compacted away; a rebuild from what is left equals both.
    last_offsets: dict[bytes, int] = {}
    for record in records:
        last_offsets[record.key] = record.offset
    superseded = {r.offset for r in records} - set(last_offsets.values())
    await force_compaction(kafka_bootstrap, topic, gone=superseded)
    rebuilt = InProcessWorker(kafka_bootstrap, topic, unique("rebuild"), tmp_path / "rebuilt")
    rebuilt.start()
    await wait_until(
        lambda: caught_up_to_end(kafka_bootstrap, topic, rebuilt), 60, what="the rebuild"
    )
    assert dict(rebuilt.store.grains()) == grains[0]
    await rebuilt.stop()
    audited = cli("audit", "--bootstrap-servers", kafka_bootstrap, "--db", str(tmp_path / "a"))
    assert audited.returncode == 0, audited.stdout + audited.stderr


async def test_a_repair_that_follows_a_concurrent_deletion_restores_it(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The primary deletes a shadowed grain between the worker's caught-up check and its
    repair (injected: the tombstone is produced just before the repair is sent). The repair,
    a FullState after a tombstone, starts the grain again; the worker re-publishes the
    deletion, and the replica and the log end deleted."""
    topic = await make_topic()
    grain = ("acct", "doomed")
    hand_off = ShadowRepairer._hand_off
    deleted: list[int] = []

    async def deleted_first(self: ShadowRepairer, key: bytes, value: bytes | None, *a: Any) -> Any:
        if value is not None and not deleted:  # the first repair: the primary deletes first
            async with Publisher(kafka_bootstrap, topic) as p:
                await p.publish_tombstone(*grain)
            deleted.append(1)
        return await hand_off(self, key, value, *a)

    monkeypatch.setattr(ShadowRepairer, "_hand_off", deleted_first)
    async with Publisher(kafka_bootstrap, topic) as p:
        await p.publish_snapshot(*grain, b"s1", sequence=1)  # offset 0
        await p.publish_snapshot("acct", "other", b"o1", sequence=1)  # 1
        await p.flush()
        await publish_unchecked(p, *grain, b"d2", 2, EntryType.DELTA)  # 2: shadows offset 0
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", repair_shadowed=True
    ).start()

    async def deleted_again() -> bool:
        # tombstone (3), repair (4), the re-published deletion (5)
        return await caught_up_to_end(kafka_bootstrap, topic, worker) and (
            (await admin.end_offsets(kafka_bootstrap, topic, 1))[0] >= 6
        )

    await wait_until(deleted_again, 60, what="the deletion to be re-published")
    assert worker.store.get(grain) is None
    assert by_key(dict(worker.store.grains())) == {"other": (1, b"o1")}
    records = [r for r in await log_records(kafka_bootstrap, topic) if r.key == encode_key(*grain)]
    assert [r.value is None for r in records] == [False, False, True, False, True]
    last = dict(records[-1].headers)
    assert last[REPAIR_HEADER] == b"1"
    assert last["stream-replica.repair-of-deletion-offset"] == str(records[2].offset).encode()
    repairer = worker.worker._repairer
    assert repairer is not None
    # counted when its acknowledgement is heard (not waited for)
    await wait_until(lambda: repairer.deletions_restored == 1, 30, 0.05, what="counted")
    await worker.stop()


async def test_a_deletion_undone_by_a_repair_acknowledged_after_it_was_read_is_restored(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but the repair's acknowledgement reaches the worker only after its consumer
    has read the repair back (a produce response lost and retried, a slow ISR), and nothing
    is written after it: the deletion is re-published all the same, without waiting for
    another record on the topic."""
    topic = await make_topic()
    grain = ("acct", "doomed")
    hand_off = ShadowRepairer._hand_off
    deleted: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def deleted_first(self: ShadowRepairer, key: bytes, value: bytes | None, *a: Any) -> Any:
        if value is None or deleted:
            return await hand_off(self, key, value, *a)
        deleted.append(1)
        async with Publisher(kafka_bootstrap, topic) as p:  # the primary deletes first
            await p.publish_tombstone(*grain)
        delivery = await hand_off(self, key, value, *a)
        late: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def acknowledge_late() -> None:
            metadata = await delivery
            await asyncio.sleep(3)  # the worker reads the repair back meanwhile
            late.set_result(metadata)

        tasks.append(asyncio.create_task(acknowledge_late()))
        return late

    monkeypatch.setattr(ShadowRepairer, "_hand_off", deleted_first)
    await publish_shadowed(kafka_bootstrap, topic, grain, 1)  # offsets 0, 1
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", repair_shadowed=True
    ).start()

    async def deleted_again() -> bool:
        # tombstone (2), repair (3), the re-published deletion (4)
        return (await admin.end_offsets(kafka_bootstrap, topic, 1))[0] >= 5

    await wait_until(deleted_again, 20, what="the deletion to be re-published")
    await wait_until(lambda: caught_up_to_end(kafka_bootstrap, topic, worker), 20)
    assert worker.store.get(grain) is None
    await asyncio.gather(*tasks)
    await worker.stop()


async def test_a_deletion_undone_by_two_groups_repairs_is_restored(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two replica groups repair the same shadowed grain after the primary deleted it: both
    repairs (the same state) land after the tombstone. Each group's repair follows a deletion
    (the other group's repair is no write of the primary), so the deletion is re-published:
    by either group, or both (a duplicate tombstone is harmless)."""
    topic = await make_topic()
    grain = ("acct", "doomed")
    hand_off = ShadowRepairer._hand_off
    deleted: list[int] = []
    both, tombstoned = asyncio.Event(), asyncio.Event()

    async def deleted_first(self: ShadowRepairer, key: bytes, value: bytes | None, *a: Any) -> Any:
        if value is not None and len(deleted) < 2:
            deleted.append(1)
            if len(deleted) == 1:  # the first repair: the primary deletes first
                async with Publisher(kafka_bootstrap, topic) as p:
                    await p.publish_tombstone(*grain)
                tombstoned.set()
                await asyncio.wait_for(both.wait(), 20)  # both repairs sent together
            else:
                both.set()
                await asyncio.wait_for(tombstoned.wait(), 20)
        return await hand_off(self, key, value, *a)

    monkeypatch.setattr(ShadowRepairer, "_hand_off", deleted_first)
    await publish_shadowed(kafka_bootstrap, topic, grain, 1)  # offsets 0, 1
    workers = [
        InProcessWorker(
            kafka_bootstrap, topic, unique(name), tmp_path / name, repair_shadowed=True
        ).start()
        for name in ("a", "b")
    ]

    async def settled() -> bool:
        # tombstone (2), two repairs (3, 4), then the re-published deletion(s)
        if (await admin.end_offsets(kafka_bootstrap, topic, 1))[0] < 5:
            return False
        return await caught_up_to_end(kafka_bootstrap, topic, *workers) and all(
            w.store.get(grain) is None for w in workers
        )

    await wait_until(settled, 20, what="the deletion to be re-published")
    records = [r for r in await log_records(kafka_bootstrap, topic) if r.key == encode_key(*grain)]
    assert [r.value is None for r in records[:5]] == [False, False, True, False, False]
    assert records[-1].value is None
    for worker in workers:
        await worker.stop()


async def test_a_grain_the_primary_started_again_after_a_repair_is_not_deleted(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The primary deletes the grain before the repair lands and starts it again just after
    it. The worker reads the repair in a poll that ends before the new start (one record per
    poll here; a catch-up's polls end anywhere): the deletion is not re-published while the
    log holds more than the worker has read, and the primary's new state stands."""
    topic = await make_topic()
    grain = ("acct", "doomed")
    hand_off = ShadowRepairer._hand_off
    deleted: list[int] = []

    async def deleted_around(self: ShadowRepairer, key: bytes, value: bytes | None, *a: Any) -> Any:
        if value is None or deleted:
            return await hand_off(self, key, value, *a)
        deleted.append(1)
        async with Publisher(kafka_bootstrap, topic) as p:
            await p.publish_tombstone(*grain)  # the primary deletes
            await p.flush()
            delivery = await hand_off(self, key, value, *a)
            await delivery  # the repair lands
            await p.publish_snapshot(*grain, b"new", sequence=7)  # and the primary restarts
            await p.flush()
        return delivery

    monkeypatch.setattr(ShadowRepairer, "_hand_off", deleted_around)
    await publish_shadowed(kafka_bootstrap, topic, grain, 5)  # offsets 0, 1
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", repair_shadowed=True, max_records=1
    ).start()

    async def read() -> bool:
        # tombstone (2), repair (3), the primary's new state (4)
        return (await admin.end_offsets(kafka_bootstrap, topic, 1))[0] >= 5 and (
            await caught_up_to_end(kafka_bootstrap, topic, worker)
        )

    await wait_until(read, 20, what="the worker to read the primary's new state")
    await asyncio.sleep(1)  # (a deletion re-published would be read by now)
    await wait_until(lambda: caught_up_to_end(kafka_bootstrap, topic, worker), 20)
    records = [r for r in await log_records(kafka_bootstrap, topic) if r.key == encode_key(*grain)]
    print(
        [(r.offset, r.value, dict(r.headers or ()).get("stream-replica.repair")) for r in records]
    )
    assert records[-1].value is not None, "the primary's new state was deleted"
    state = worker.store.get(grain)
    assert state is not None and state.offset == records[-1].offset
    await worker.stop()


async def test_recreated_topic_is_not_resumed_and_more_partitions_keep_the_store(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as p:
        for i in range(5):
            await p.publish_snapshot("acct", f"old{i}", b"old", sequence=1)
    group = unique("g")
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: first.caught_up({0: 5}), 60, what="the first replica")
    assert first.store.topic_identity() is not None
    await first.stop()

    # Recreated under the same name, already holding more records than the checkpoint.
    await admin.delete_topic(kafka_bootstrap, topic)

    async def recreated() -> bool:
        try:
            return await admin.create_topic(kafka_bootstrap, topic, 1)
        except admin.AdminError:
            return False  # deletion still in progress

    await wait_until(recreated, 60, interval=0.5, what="the topic to be recreated")
    async with Publisher(kafka_bootstrap, topic) as p:
        for i in range(8):
            await p.publish_snapshot("acct", f"new{i}", b"new", sequence=1)
    second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: second.caught_up({0: 8}), 60, what="the rebuilt replica")
    assert sorted(g[1] for g, _ in second.store.grains()) == [f"new{i}" for i in range(8)]
    await second.stop()

    # More partitions: the old partition's log and checkpoint stand, so the store is kept
    # (a rebuild would read the partitions in no fixed order), and the line says what the
    # change means.
    async with admin.admin_client(kafka_bootstrap) as client:
        from aiokafka.admin import NewPartitions

        await client.create_partitions({topic: NewPartitions(total_count=2)})
    caplog.set_level(logging.INFO, logger="stream_replica.worker")
    caplog.clear()
    third = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(
        lambda: caught_up_to_end(kafka_bootstrap, topic, third), 60, what="the third replica"
    )
    identity = third.store.topic_identity()
    assert identity is not None and identity.partitions == 2
    assert third.store.counts().records == 5 + 8  # partition 0 not read again
    assert sorted(g[1] for g, _ in third.store.grains()) == [f"new{i}" for i in range(8)]
    added = [r for r in caplog.records if "now has 2 partitions" in r.getMessage()]
    assert len(added) == 1 and added[0].levelno == logging.ERROR
    assert "republish every grain" in added[0].getMessage()
    assert not any("dropped the local replica" in r.getMessage() for r in caplog.records)
    await third.stop()
