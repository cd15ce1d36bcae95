"""tuning.py: the allocator thresholds take effect, and an operator's own setting wins. Each
case runs in a child interpreter so that this test process keeps its allocator as it was."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from stream_replica import tuning

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc"
)

# 40 fetch responses of 3-5.5 MiB (a catch-up's: a few partitions x 2 MiB) the way a stream
# reader gets them: a buffer grown 64 KiB at a time, the response copied out, both freed;
# prints the minor page faults that took. (Sizes vary from fetch to fetch, so glibc's own
# adaptive threshold, which rises to the largest mapping freed so far, does not catch up.)
_CHURN = """
import json, resource, sys
from stream_replica import tuning
said = tuning.tune_malloc() if sys.argv[1] == "tuned" else ""
chunk = b"x" * 65536
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(40):
    buffer = bytearray()
    while len(buffer) < (3 << 20) + i * 65536:
        buffer += chunk
    response = bytes(buffer)
    del buffer, response
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"said": said, "faults": faults}))
"""


def _churn(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
    clean = {k: v for k, v in clean.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@glibc_only
def test_tuned_allocator_reuses_fetch_sized_buffers_instead_of_faulting_them_in() -> None:
    default = _churn("default")
    tuned = _churn("tuned")
    assert "mmap threshold 32 MiB" in str(tuned["said"])
    # default: each response a fresh mapping, its pages faulted in (~40k faults); tuned: the
    # heap keeps the freed buffers and the next response reuses their pages (a few thousand)
    assert int(str(default["faults"])) > 20 * 1000
    assert int(str(tuned["faults"])) * 4 < int(str(default["faults"]))


@glibc_only
@pytest.mark.parametrize(
    "env",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"},
        {"MALLOC_TRIM_THRESHOLD_": "1048576"},
    ],
)
def test_an_operators_allocator_setting_wins(env: dict[str, str]) -> None:
    said = tuning.tune_malloc(env)
    assert said.startswith("allocator left as the environment sets it")
    # and the child with that environment still maps each buffer afresh
    churned = _churn("tuned", MALLOC_MMAP_THRESHOLD_="1048576")
    assert str(churned["said"]).startswith("allocator left as the environment sets it")
    assert int(str(churned["faults"])) > 20 * 1000


@glibc_only
def test_an_unrelated_tunable_does_not_stop_the_tuning() -> None:
    churned = _churn("tuned", GLIBC_TUNABLES="glibc.pthread.rseq=1")
    assert "mmap threshold 32 MiB" in str(churned["said"])
    assert int(str(churned["faults"])) < 20 * 1000


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
