"""Three worker processes in one group over a 6-partition topic, with a SIGKILL + restart and
a late joiner, while a producer writes. Checked against the oracle and Kafka's own
ConsumerGroupCommand."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

from stream_replica import admin
from stream_replica.contract import EntryType, GrainId
from stream_replica.fold import GrainState
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader, StoreError
from tests.conftest import KAFKA_SH
from tests.helpers import TopicFactory, publish_unchecked, wait_until, worker_command
from tests.oracle import Oracle, read_oracle

PARTITIONS = 6


class WorkerProcess:
    def __init__(self, name: str, bootstrap: str, topic: str, group: str, root: Path) -> None:
        self.name = name
        self.db = root / f"{name}.db"
        self.log = root / f"{name}.log"
        self.args = worker_command(bootstrap, topic, group, self.db)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log_file)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(90)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
            masks = "\n".join(line for line in status.splitlines() if line.startswith("Sig"))
            self.process.send_signal(signal.SIGUSR1)  # the worker dumps its stacks
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
            tail = self.log.read_text()[-6000:]
            raise AssertionError(
                f"{self.name} did not stop within 90 s of SIGTERM:\n{masks}\n{tail}"
            ) from None

    def checkpoints(self) -> dict[int, int]:
        try:
            with ReplicaReader(self.db) as reader:
                return {p: c.next_offset for p, c in reader.checkpoints().items()}
        except StoreError:
            return {}


async def produce(bootstrap: str, topic: str, rounds: int, grains: int) -> None:
    rng = random.Random(3)
    async with Publisher(bootstrap, topic) as publisher:
        for round_index in range(rounds):
            for i in rng.sample(range(grains), grains):
                roll = rng.random()
                if roll < 0.03:
                    await publisher.publish_tombstone("g", f"k{i}")
                elif roll < 0.05:
                    await publish_unchecked(publisher, "g", f"k{i}", b"d", 1, EntryType.DELTA)
                else:
                    await publisher.publish_snapshot("g", f"k{i}", f"{round_index}".encode() * 20)
            await publisher.flush()
            await asyncio.sleep(0.05)  # pacing the producer, not synchronisation


def partition_view(grains: dict[GrainId, GrainState], partition: int) -> dict[GrainId, GrainState]:
    return {g: s for g, s in grains.items() if s.partition == partition}


def check_store(db: Path, oracle: Oracle) -> dict[int, int]:
    """Every partition a store holds equals the oracle up to that store's checkpoint."""
    with ReplicaReader(db) as reader:
        checkpoints = {p: c.next_offset for p, c in reader.checkpoints().items()}
        grains = dict(reader.grains())
    for partition, next_offset in checkpoints.items():
        expected = partition_view(oracle.expected({partition: next_offset}), partition)
        assert partition_view(grains, partition) == expected, (db, partition, next_offset)
    return checkpoints


def consumer_group_describe(bootstrap: str, group: str) -> dict[int, tuple[int, int]]:
    result = subprocess.run(
        [
            str(KAFKA_SH),
            "tool",
            "consumer-groups",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] == group and parts[2].isdigit():
            rows[int(parts[2])] = (int(parts[3]), int(parts[4]))  # current, log-end
    return rows


async def test_three_workers_kill_and_late_join(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=PARTITIONS)
    group = unique("cluster")
    a = WorkerProcess("a", kafka_bootstrap, topic, group, tmp_path).start()
    b = WorkerProcess("b", kafka_bootstrap, topic, group, tmp_path).start()
    producer = asyncio.create_task(produce(kafka_bootstrap, topic, rounds=30, grains=300))
    late = WorkerProcess("c", kafka_bootstrap, topic, group, tmp_path)
    try:
        await wait_until(lambda: sum(a.checkpoints().values()) > 500, 90, what="worker a progress")
        a.kill()
        a.start()  # restart on the same store
        late.start()
        await producer
        oracle = await read_oracle(kafka_bootstrap, topic, PARTITIONS)
        ends = oracle.end_offsets()

        async def lag_zero() -> bool:
            committed = await admin.committed_offsets(kafka_bootstrap, group, topic)
            return committed == ends

        await wait_until(lag_zero, 120, interval=0.5, what="group lag to reach 0")
    finally:
        if not producer.done():
            producer.cancel()
        codes = {w.name: w.terminate() for w in (a, b, late) if w.process is not None}
    assert codes == {"a": 0, "b": 0, "c": 0}, codes

    latest: dict[int, int] = {}
    for worker in (a, b, late):
        for partition, next_offset in check_store(worker.db, oracle).items():
            latest[partition] = max(latest.get(partition, 0), next_offset)
    assert latest == ends  # every partition is fully replicated somewhere

    described = consumer_group_describe(kafka_bootstrap, group)
    assert described == {p: (e, e) for p, e in ends.items()}
    assert sum(ends.values()) == 30 * 300
    assert "refused delta" in "".join(w.log.read_text() for w in (a, b, late))
