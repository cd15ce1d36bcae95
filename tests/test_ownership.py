"""Stable ownership against the real broker, with worker processes: rolling restarts with
instance ids, scaling 2 -> 3 -> 2, kill -9 with a standby, and a duplicate instance id.
The harness (worker processes, owner history from their logs, committed-offset watch) is
benchmarks/rolling.py's, which ``make rolling`` also uses."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Workload, prefill
from benchmarks.rolling import (
    OffsetWatch,
    Worker,
    count_moves,
    current_owners,
    owners,
    owners_caught_up,
)
from stream_replica import admin
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader
from stream_replica.worker import NEWCOMER_WINDOW_S
from tests.helpers import cli, wait_until
from tests.oracle import read_oracle
from tests.test_cluster import check_store

PARTITIONS = 6


async def filled_topic(bootstrap: str, unique: Any, records: int, partitions: int) -> str:
    topic = unique("own")
    await prefill(bootstrap, topic, partitions, Workload(records=records, grains=records // 10))
    return topic


async def produce(bootstrap: str, topic: str, records: int) -> None:
    """More updates of existing and new grains (sequences from the publisher's clock)."""
    async with Publisher(bootstrap, topic) as publisher:
        for i in range(records):
            await publisher.publish_snapshot("more", f"k{i % 500}", f"v{i}".encode())
        await publisher.flush()


def rebuilds(worker: Worker, since: int) -> int:
    text = worker.log_text()[since:]
    return text.count("rebuilding from the beginning") + text.count("wiping and rebuilding")


def served_roles(worker: Worker) -> dict[int, tuple[str, bool]]:
    with ReplicaReader(worker.db) as reader:
        return {p: (s.role, s.caught_up) for p, s in reader.served().items()}


async def settled(bootstrap: str, group: str, topic: str, workers: list[Worker]) -> bool:
    ends = await admin.end_offsets(bootstrap, topic, PARTITIONS)
    committed = await admin.committed_offsets(bootstrap, group, topic)
    return committed == ends and owners_caught_up(workers, ends)


def stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        if worker.running:
            worker.stop(signal.SIGKILL)


async def test_rolling_restart_moves_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    topic = await filled_topic(kafka_bootstrap, unique, 12_000, PARTITIONS)
    group = unique("roll")
    workers = [
        Worker(f"w{i}", kafka_bootstrap, topic, group, tmp_path, "--instance-id", f"w{i}")
        for i in range(3)
    ]
    for worker in workers:
        worker.start()
    watch = OffsetWatch(kafka_bootstrap, group, topic)
    try:
        await wait_until(lambda: settled(kafka_bootstrap, group, topic, workers), 90, 0.3)
        oracle = await read_oracle(kafka_bootstrap, topic, PARTITIONS)
        before = current_owners(workers)
        folded = sum(w.records_folded() for w in workers)
        log_sizes = [len(w.log_text()) for w in workers]
        started = owners(workers)[-1][0] + 0.001
        watcher = asyncio.create_task(watch.run())
        for worker in workers:
            assert worker.stop() == 0
            seen = len(worker.assignments())
            mine = {p for p, name in before.items() if name == worker.name}
            # Reads keep working while it is down: the others serve their partitions.
            for other in workers:
                check_store(other.db, oracle)
            worker.start()
            await wait_until(lambda w=worker, n=seen: len(w.assignments()) > n, 60, 0.2)

            def back(w: Worker = worker, mine: set[int] = mine) -> bool:
                roles = served_roles(w)
                return all(roles.get(p) == ("active", True) for p in mine)

            await wait_until(back, 60, 0.2, what=f"{worker.name} to serve {sorted(mine)} again")
        watch.stop()
        await watcher
        assert current_owners(workers) == before
        assert count_moves(before, owners(workers, since=started)) == 0
        assert sum(rebuilds(w, n) for w, n in zip(workers, log_sizes, strict=True)) == 0
        assert watch.regressions == [] and watch.samples > 0
        for worker in workers:
            check_store(worker.db, oracle)
        for worker in workers:
            assert worker.stop() == 0
        assert sum(w.records_folded() for w in workers) == folded  # nothing re-read
    finally:
        watch.stop()
        stop_all(workers)


async def test_scale_up_and_down_moves_the_minimum(
    kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    topic = await filled_topic(kafka_bootstrap, unique, 6_000, PARTITIONS)
    group = unique("scale")
    flags = ("--session-timeout-ms", "6000")
    a, b, c = (
        Worker(name, kafka_bootstrap, topic, group, tmp_path, "--instance-id", name, *flags)
        for name in ("a", "b", "c")
    )
    watch = OffsetWatch(kafka_bootstrap, group, topic)
    watcher = asyncio.create_task(watch.run())
    producer = asyncio.create_task(produce(kafka_bootstrap, topic, 3_000))
    try:
        a.start()
        b.start()
        await wait_until(lambda: settled(kafka_bootstrap, group, topic, [a, b]), 90, 0.3)
        start = current_owners([a, b, c])
        since = owners([a, b])[-1][0] + 0.001
        c.start()
        await wait_until(lambda: len(c.assignments()) > 0, 60, 0.2)
        await wait_until(lambda: settled(kafka_bootstrap, group, topic, [a, b, c]), 90, 0.3)
        grown = current_owners([a, b, c])
        assert sorted(list(grown.values()).count(n) for n in "abc") == [2, 2, 2]
        assert count_moves(start, owners([a, b, c], since=since)) == 2  # 6 // 3 to the joiner
        since = owners([a, b, c])[-1][0] + 0.001
        await producer
        assert c.stop() == 0  # static member: its partitions move after the session timeout
        await wait_until(lambda: settled(kafka_bootstrap, group, topic, [a, b]), 90, 0.3)
        assert count_moves(grown, owners([a, b], since=since)) == 2  # only c's partitions
        assert sorted(list(current_owners([a, b]).values()).count(n) for n in "ab") == [3, 3]
        watch.stop()
        await watcher
        assert watch.regressions == [] and watch.samples > 0
        oracle = await read_oracle(kafka_bootstrap, topic, PARTITIONS)
        for worker in (a, b, c):
            check_store(worker.db, oracle)
    finally:
        watch.stop()
        producer.cancel()
        stop_all([a, b, c])


async def test_kill_with_standby_rereads_nothing_already_read(
    kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    partitions = 4
    topic = await filled_topic(kafka_bootstrap, unique, 8_000, partitions)
    group = unique("standby")
    flags = ("--standby-replicas", "1", "--session-timeout-ms", "6000")
    a, b = (
        Worker(name, kafka_bootstrap, topic, group, tmp_path, "--instance-id", name, *flags)
        for name in ("a", "b")
    )
    try:
        a.start()
        b.start()
        ends = await admin.end_offsets(kafka_bootstrap, topic, partitions)

        def both_hold_everything() -> bool:
            # Each store holds every partition (active or standby) up to the end.
            return all(
                w.checkpoints() == ends
                and sorted(role for role, _ in served_roles(w).values())
                == ["active"] * 2 + ["standby"] * 2
                for w in (a, b)
            )

        await wait_until(both_hold_everything, 90, 0.3, what="active and standby copies")
        owner = current_owners([a, b])
        victim, survivor = (a, b) if owner[0] == "a" else (b, a)
        lost = sorted(p for p, name in owner.items() if name == victim.name)
        folded = survivor.records_folded()
        log_size = len(survivor.log_text())
        victim.stop(signal.SIGKILL)
        more = 2_000
        await produce(kafka_bootstrap, topic, more)
        new_ends = await admin.end_offsets(kafka_bootstrap, topic, partitions)

        def took_over() -> bool:
            roles = served_roles(survivor)
            return survivor.checkpoints() == new_ends and all(
                roles.get(p) == ("active", True) for p in range(partitions)
            )

        await wait_until(took_over, 60, 0.3, what=f"{survivor.name} to take over {lost}")
        # The standby was caught up when the owner died: the takeover read only the records
        # produced since, once each, and resumed every lost partition from its checkpoint.
        assert survivor.records_folded() - folded == more
        takeover = survivor.log_text()[log_size:]
        assert rebuilds(survivor, log_size) == 0
        for p in lost:
            resumed = re.findall(rf"partition {p}: resuming from stored offset (\d+)", takeover)
            assert resumed and int(resumed[0]) >= ends[p], (p, resumed, ends[p])

        async def committed() -> bool:
            return await admin.committed_offsets(kafka_bootstrap, group, topic) == new_ends

        await wait_until(committed, 30, 0.2, what="the takeover's commits")
        oracle = await read_oracle(kafka_bootstrap, topic, partitions)
        check_store(survivor.db, oracle)
    finally:
        stop_all([a, b])


async def test_duplicate_instance_id_fails_with_one_line(
    kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    topic = await filled_topic(kafka_bootstrap, unique, 600, 2)
    group = unique("dup")
    # The default session timeout (45 s): the first worker, past the newcomer window but
    # within a session timeout of its join, must keep going.
    flags = ("--instance-id", "same")
    first = Worker("first", kafka_bootstrap, topic, group, tmp_path, *flags).start()
    second = Worker("second", kafka_bootstrap, topic, group, tmp_path, *flags)
    try:
        await wait_until(lambda: len(first.assignments()) > 0, 60, 0.2)
        # A worker replaced within NEWCOMER_WINDOW_S of its first join is the newcomer and
        # stops; one in the group for longer keeps going (ownership.DuplicateInstanceCheck).
        joined = first.assignments()[0][0]
        settled = NEWCOMER_WINDOW_S + 0.5
        await wait_until(lambda: time.time() - joined > settled, 20, 0.2, what="first to settle")
        second.start()
        assert second.process is not None
        code = await asyncio.to_thread(second.process.wait, 60)
        last = second.log_text().strip().splitlines()[-1]
        assert code == 1
        assert last == (
            "stream-replica: instance id 'same' is in use by another live worker of group "
            f"{group!r}; give each worker its own --instance-id"
        )
        assert "Traceback" not in second.log_text()
        # The long-running worker keeps its place and its partitions.
        ends = await admin.end_offsets(kafka_bootstrap, topic, 2)
        await wait_until(lambda: owners_caught_up([first], ends), 60, 0.2)
        assert first.running and current_owners([first]) == {0: "first", 1: "first"}
    finally:
        stop_all([first, second])


def test_bad_instance_id_is_one_line(tmp_path: Path) -> None:
    result = cli("run", "--db", str(tmp_path / "db"), "--instance-id", "has space")
    assert result.returncode == 2
    assert "--instance-id" in result.stderr and "STREAM_REPLICA_INSTANCE_ID" in result.stderr
    assert result.stderr.strip().count("\n") == 0
