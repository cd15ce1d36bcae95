"""examples/rust-producer end to end: the Rust example (rdkafka, idempotent, murmur2
partitioner) produces grains in both encodings and a tombstone to the local broker; a real
worker's replica holds them. Skipped without cargo. The first build compiles librdkafka from
the source vendored in rdkafka-sys (about a minute on 2 cores); the target dir is shared and
ignored (.cache/cargo-target), so later runs only link."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from aiokafka.partitioner import murmur2

from stream_replica.store import ReplicaReader, StoreError
from tests.helpers import (
    ROOT,
    TopicFactory,
    cargo,
    cargo_or_skip,
    cargo_target_dir,
    wait_until,
    worker_command,
)

PRODUCER = ROOT / "examples" / "rust-producer"
PARTITIONS = 3
GRAINS = 3
DELIVERED = re.compile(
    r"^delivered key=(?P<key>\S+) encoding=(?P<encoding>\S+) "
    r"partition=(?P<partition>\d+) offset=(?P<offset>\d+)$"
)


def build_producer() -> Path:
    cargo_or_skip()
    cargo(PRODUCER, "build", "--release", "--locked", "--quiet")
    binary = cargo_target_dir() / "release" / "stream-replica-rust-producer"
    assert binary.is_file(), f"cargo build left no {binary}"
    return binary


def java_partition(key: str) -> int:
    """What the Java client's (and aiokafka's) default partitioner picks for a keyed record."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def test_producer_refuses_bad_arguments() -> None:
    binary = build_producer()
    done = subprocess.run([binary], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "--bootstrap HOST:PORT is required" in done.stderr
    done = subprocess.run(
        [binary, "--bootstrap", "x:1", "--grains", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert '--grains "0": expected an integer >= 1' in done.stderr


async def test_rust_producer_replicates_both_encodings(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    binary = build_producer()
    topic = await make_topic(partitions=PARTITIONS)
    done = subprocess.run(
        [binary, "--bootstrap", kafka_bootstrap, "--topic", topic, "--grains", str(GRAINS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"rust producer failed:\n{done.stdout}\n{done.stderr}"
    deliveries = [DELIVERED.match(line) for line in done.stdout.splitlines()]
    assert all(deliveries), f"unexpected producer output:\n{done.stdout}"
    records = [m.groupdict() for m in deliveries if m is not None]
    # N named + N positional puts, one positional update, one tombstone.
    assert len(records) == 2 * GRAINS + 2, done.stdout
    assert {r["encoding"] for r in records} == {"named", "positional", "tombstone"}

    # Same partition as the Java client / aiokafka for every key (murmur2_random).
    for record in records:
        assert int(record["partition"]) == java_partition(record["key"]), record
    ends: dict[int, int] = {}
    for record in records:
        partition, offset = int(record["partition"]), int(record["offset"])
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    db = tmp_path / "db"
    log = tmp_path / "worker.log"
    with log.open("wb") as log_file:
        worker = subprocess.Popen(
            worker_command(kafka_bootstrap, topic, f"g-{tmp_path.name}", db),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:

        def caught_up() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited {worker.returncode}:\n{log.read_text()}")
            try:
                with ReplicaReader(db) as reader:
                    checkpoints = reader.checkpoints()
            except StoreError:
                return False
            return all(
                p in checkpoints and checkpoints[p].next_offset >= end for p, end in ends.items()
            )

        await wait_until(caught_up, 90, what=f"the worker to read {ends}")
        with ReplicaReader(db) as reader:
            grains = dict(reader.grains())
            counts = reader.counts()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)

    expected = {("order", f"rust/named/{i}"): (1, f"named {i} v1") for i in range(1, GRAINS)}
    expected |= {
        ("order", f"rust/positional/{i}"): (1, f"positional {i} v1") for i in range(2, GRAINS + 1)
    }
    expected[("order", "rust/positional/1")] = (2, "positional 1 v2")
    held = {grain: (state.sequence, state.payload.decode()) for grain, state in grains.items()}
    assert held == expected, log.read_text()[-3000:]
    # The tombstone deleted a grain that was there, and nothing was refused.
    assert ("order", f"rust/named/{GRAINS}") not in grains
    assert counts.tombstones == 1, counts
    assert counts.invalid == 0 and counts.deltas_refused == 0, counts
    for grain, state in grains.items():
        assert state.partition == java_partition(f"{grain[0]}/{grain[1]}"), grain
        assert state.source_cluster == "rust-primary"
