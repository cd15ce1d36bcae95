"""Leader failover on a real 3-broker cluster: kill -9 the broker leading the most partitions
while a worker replicates and an acks=all producer writes. Afterwards the replica equals the
log's fold (the oracle), the moved partitions were replicated again without operator action,
and every record the producer saw acknowledged is in the log."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from stream_replica import admin
from stream_replica.contract import Entry, EntryType, encode_key, encode_value
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader, StoreError
from tests.helpers import cli, wait_until, worker_command
from tests.kafka_cluster import KafkaCluster, fully_in_sync, leaders
from tests.oracle import read_oracle

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

PARTITIONS = 3


def checkpoints(db: Path) -> dict[int, int]:
    if not (db / "CURRENT").exists():
        return {}
    try:
        with ReplicaReader(db) as reader:
            return {p: c.next_offset for p, c in reader.checkpoints().items()}
    except StoreError:
        return {}


async def produce(
    bootstrap: str, topic: str, sent: list[tuple[bytes, bytes, Any]], stop: asyncio.Event
) -> None:
    """FullStates with increasing sequences for 200 grains, flushed every 50 records."""
    rng = random.Random(5)
    async with Publisher(bootstrap, topic, request_timeout_ms=30_000) as publisher:
        sequence = 0
        while not stop.is_set():
            for _ in range(50):
                sequence += 1
                grain = f"k{rng.randrange(200)}"
                payload = rng.randbytes(rng.randint(1, 300))
                entry = Entry(
                    "g", grain, sequence, sequence, "primary", EntryType.FULL_STATE, payload
                )
                key, value = encode_key("g", grain), encode_value(entry)
                sent.append((key, value, await publisher.publish_raw(key, value)))
            await publisher.flush()  # acks=all: blocks while a partition has no leader
            await asyncio.sleep(0.05)  # pacing the producer, not synchronisation


async def test_leader_kill_while_a_worker_replicates(
    cluster: KafkaCluster, tmp_path: Path, unique: Any
) -> None:
    bootstrap = cluster.bootstrap
    topic, group = unique("failover"), unique("failover-group")
    configs = admin.replication_topic_configs(3)
    assert configs["min.insync.replicas"] == "2"
    await admin.create_topic(bootstrap, topic, PARTITIONS, 3, configs)
    await wait_until(
        lambda: fully_in_sync(bootstrap, [topic]), 60, 0.5, what="topic fully replicated"
    )
    db, log = tmp_path / "replica.db", tmp_path / "worker.log"
    with log.open("ab") as log_file:
        worker = subprocess.Popen(
            worker_command(bootstrap, topic, group, db),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    sent: list[tuple[bytes, bytes, Any]] = []
    stop = asyncio.Event()
    producer = asyncio.create_task(produce(bootstrap, topic, sent, stop))
    victim = 0
    try:
        await wait_until(
            lambda: len(checkpoints(db)) == PARTITIONS and min(checkpoints(db).values()) > 50,
            60,
            0.25,
            what="the worker replicating every partition",
        )
        leader_of = await leaders(bootstrap, topic)
        victim = max(cluster.ids, key=lambda b: sum(1 for v in leader_of.values() if v == b))
        moved = [p for p, leader in leader_of.items() if leader == victim]
        assert moved
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill_broker, victim)

        async def failed_over() -> bool:
            now_leading = await leaders(bootstrap, topic)
            return set(now_leading) == set(range(PARTITIONS)) and all(
                leader in cluster.ids and leader != victim for leader in now_leading.values()
            )

        await wait_until(failed_over, 60, 0.25, what=f"leaderships to leave broker {victim}")
        # Records written after the failover reach the replica: the worker follows the new
        # leaders without operator action or a restart.
        ends = await admin.end_offsets(bootstrap, topic, PARTITIONS)
        await wait_until(
            lambda: all(checkpoints(db).get(p, 0) > ends[p] for p in moved),
            60,
            0.25,
            what=f"partitions {moved} replicated again after broker {victim} was killed",
        )
        stall = time.monotonic() - killed_at
        stop.set()
        await asyncio.wait_for(producer, 60)
        assert worker.poll() is None, log.read_text()[-3000:]

        oracle = await read_oracle(bootstrap, topic, PARTITIONS)
        final_ends = oracle.end_offsets()
        await wait_until(
            lambda: checkpoints(db) == final_ends, 60, 0.25, what="the replica to catch up"
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]

        # replay works against the cluster with the killed broker still down
        offsets = ",".join(f"{p}:{o}" for p, o in sorted(final_ends.items()))
        replayed = await asyncio.to_thread(
            cli,
            *("replay", "--bootstrap-servers", bootstrap, "--topic", topic),
            *("--group", group, "--db", str(db), "--offsets", offsets),
        )
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        assert json.loads(replayed.stdout)["partitions"] == {
            str(p): o for p, o in final_ends.items()
        }
        assert await admin.committed_offsets(bootstrap, group, topic) == final_ends
    finally:
        stop.set()
        if not producer.done():
            producer.cancel()
        if worker.poll() is None:
            worker.kill()
            worker.wait(60)
        if victim:
            await asyncio.to_thread(cluster.start_broker, victim)

    with ReplicaReader(db) as reader:
        assert dict(reader.grains()) == oracle.expected()
    log_records = {(r.partition, r.offset): r for rs in oracle.records.values() for r in rs}
    acknowledged = [(k, v, f.result()) for k, v, f in sent if f.done() and not f.exception()]
    # not vacuous: records on the moved partitions were acknowledged after the failover
    assert any(m.partition in moved and m.offset >= ends[m.partition] for _, _, m in acknowledged)
    lost = [
        meta
        for key, value, meta in acknowledged
        if (found := log_records.get((meta.partition, meta.offset))) is None
        or (found.key, found.value) != (key, value)
    ]
    assert lost == []
    print(f"broker {victim} killed; partitions {moved} replicated again after {stall:.1f} s")


async def test_topic_create_keeps_three_copies_on_a_cluster_by_default(
    cluster: KafkaCluster, unique: Any
) -> None:
    """It made one copy unless told (--replication-factor): a production topic lost with
    one broker. One copy per broker up to 3; a single development broker still gets 1."""
    topic = unique("default-rf")
    created = cli("topic", "create", "--bootstrap-servers", cluster.bootstrap, "--topic", topic)
    assert created.returncode == 0, created.stderr
    description = json.loads(created.stdout)
    assert description["replication_factor"] == 3
    assert description["configs"]["min.insync.replicas"] == "2"
    async with admin.admin_client(cluster.bootstrap) as client:
        await client.delete_topics([topic])
