"""tuning.py: RocksDB's compaction threads run at the lowest priority, its flushes do not. Each
case runs in a child interpreter, so that this test process keeps its thread pools as they were."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Opens a store, writes and compacts it (so that RocksDB's pools have threads), prints each
# RocksDB thread's name and nice value.
_COMPACT = """
import glob, json, os, sys
from stream_replica import tuning
from stream_replica.store import ReplicaStore
said = tuning.lower_compaction_priority() if sys.argv[1] == "lowered" else ""
store = ReplicaStore(sys.argv[2], "t")
for round_ in range(3):
    for i in range(20000):
        store._db[os.urandom(16)] = os.urandom(100)
    store._db.flush()
store._db.compact_range(None, None)
threads = {"process": os.nice(0)}
for task in glob.glob("/proc/self/task/*"):
    name = open(task + "/comm").read().strip()
    if name.startswith("rocksdb:"):
        threads[name] = int(open(task + "/stat").read().rsplit(")", 1)[1].split()[16])
store.close()
print(json.dumps({"said": said, "threads": threads}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and nice values")
@pytest.mark.parametrize("mode", ["default", "lowered"])
def test_compactions_run_at_the_lowest_priority_and_flushes_do_not(
    mode: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _COMPACT, mode, str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    threads = result["threads"]
    assert "rocksdb:low" in threads and "rocksdb:high" in threads, threads
    base = threads["process"]  # the nice value pytest runs at
    assert threads["rocksdb:high"] == base
    assert threads["rocksdb:low"] == (19 if mode == "lowered" else base)
    if mode == "lowered":
        assert "nice 19" in result["said"]
