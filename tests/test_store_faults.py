"""Disk trouble: a state directory that cannot be created, and writes that fail mid-run
(RLIMIT_FSIZE makes RocksDB's WAL writes fail like a full disk)."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path
from typing import Any

from stream_replica import admin
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader
from tests.helpers import TopicFactory, cli, wait_until, worker_command
from tests.oracle import read_oracle
from tests.test_worker import InProcessWorker, stored_grains


def test_uncreatable_state_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = cli("run", "--db", str(blocker / "db"), "--topic", "t", "--group", "g")
    assert result.returncode == 2
    assert "cannot create state directory" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def _limit_file_size() -> None:
    one_mib = 1 << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (one_mib, one_mib))


async def test_failed_writes_stop_the_worker_without_committing(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=1)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(1500):
            await publisher.publish_snapshot("t", f"k{i % 200}", bytes([i % 251]) * 2048)
    oracle = await read_oracle(kafka_bootstrap, topic, 1)
    db = tmp_path / "db"
    # Python ignores SIGXFSZ, so writes past the limit fail with EFBIG, as on a full disk.
    result = subprocess.run(
        worker_command(kafka_bootstrap, topic, group, db),
        preexec_fn=_limit_file_size,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("stream-replica: write to state directory"), last_line
    assert "not committed" in last_line
    assert "Traceback" not in result.stderr

    with ReplicaReader(db) as reader:
        written = reader.checkpoints()[0].next_offset
    assert 0 < written < 1500
    committed = await admin.committed_offsets(kafka_bootstrap, group, topic)
    assert committed.get(0, -1) <= written  # never ahead of what was written

    # With space again, the worker resumes from its checkpoint and ends exactly right.
    worker = InProcessWorker(kafka_bootstrap, topic, group, db).start()
    await wait_until(lambda: worker.caught_up(oracle.end_offsets()), 60, what="catch-up")
    grains = stored_grains(worker.store)
    records = worker.worker.counts.records
    await worker.stop()
    assert records == 1500 - written
    assert grains == oracle.expected()
