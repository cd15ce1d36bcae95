"""Process-wide settings for a process the worker owns (``stream-replica run``), not for
programs that embed :class:`~stream_replica.worker.ReplicaWorker`: they change the whole
process's garbage collector and RocksDB's shared thread pools.

* The collector: what exists when the worker starts (modules, settings, the store) lives as
  long as the process. Frozen, it is out of the collector's full passes, which walked it for
  16-53 ms of the event loop every few seconds of a catch-up.
* RocksDB's compactions (its low-priority thread pool, shared by every store in the process)
  run at the lowest CPU priority (nice 19). They are background work that can wait; the event
  loop cannot: on a busy machine the loop thread otherwise waited up to ~40 ms at a time for a
  core the compaction threads held. Flushes keep the normal priority, so writes do not wait
  for a memtable to be freed.
"""

from __future__ import annotations

import gc

from rocksdict import Env


def freeze_startup_objects() -> None:
    """One full collection (~25 ms), then everything alive is left out of later ones."""
    gc.collect()
    gc.freeze()


def lower_compaction_priority() -> str:
    """RocksDB's compaction threads at nice 19 (see the module doc); what was done."""
    try:
        Env().lower_thread_pool_cpu_priority()
    except Exception as exc:  # a platform without thread priorities
        return f"compaction priority left as it is ({type(exc).__name__}: {exc})"
    return "RocksDB compactions at the lowest CPU priority (nice 19); flushes as the loop"
