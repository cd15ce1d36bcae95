"""Process-wide settings for a process the worker owns (``stream-replica run``), not for
programs that embed :class:`~stream_replica.worker.ReplicaWorker`: they change the whole
process's garbage collector and memory allocator.

* The collector: what exists when the worker starts (modules, settings, the store) lives as
  long as the process. Frozen, it is out of the collector's full passes, which walked it for
  16-53 ms of the event loop every few seconds of a catch-up.
* glibc's allocator: aiokafka reads each fetch response (up to ``FETCH_MAX_BYTES``, a few MiB
  while catching up) into a buffer that grows as the bytes arrive. Above glibc's mmap
  threshold such a buffer is a fresh mapping, its pages faulted in and zeroed by the kernel and
  unmapped a poll later; glibc's adaptive threshold only rises to the largest mapping freed so
  far, and fetch sizes vary. On 10 KiB records the fetch spent about a third of its time in
  page faults. With the threshold above the largest fetch and the heap allowed to keep that
  much free, the buffers' pages are reused (aiokafka alone: 19.5 -> 11.5 µs/record). An operator's
  own setting wins: ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`` or
  ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment leave it alone.
* RocksDB's compactions (its low-priority thread pool, shared by every store in the process)
  run at the lowest CPU priority (nice 19). They are background work that can wait; the event
  loop cannot: on a busy machine the loop thread otherwise waited up to ~100 ms at a time for
  a core the compaction threads held. Flushes keep the normal priority, so writes never wait
  for a memtable to be freed.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from collections.abc import Mapping
from typing import Final

from rocksdict import Env

from stream_replica.memory import FETCH_MAX_BYTES, MIB

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); above FETCH_MAX_BYTES.
MMAP_THRESHOLD_BYTES: Final = 32 * MIB
# Free memory the heap keeps before giving it back: one fetch buffer freed at its top stays.
TRIM_THRESHOLD_BYTES: Final = FETCH_MAX_BYTES

_OPERATOR_SETTINGS: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def freeze_startup_objects() -> None:
    """One full collection (~25 ms), then everything alive is left out of later ones."""
    gc.collect()
    gc.freeze()


def tune_malloc(environ: Mapping[str, str] = os.environ) -> str:
    """Set glibc's mmap and trim thresholds (see the module doc); what was done, for the log."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "allocator left as it is (not glibc)"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") or any(
        name in environ for name in _OPERATOR_SETTINGS
    ):
        return "allocator left as the environment sets it (GLIBC_TUNABLES / MALLOC_*_)"
    try:
        libc = ctypes.CDLL(None)
        applied = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        applied = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and applied
    except (OSError, AttributeError) as exc:
        return f"allocator left as it is (mallopt unavailable: {exc})"
    if not applied:
        return "allocator left as it is (mallopt refused the thresholds)"
    return (
        f"allocator: glibc mmap threshold {MMAP_THRESHOLD_BYTES // MIB} MiB, trim threshold "
        f"{TRIM_THRESHOLD_BYTES // MIB} MiB (fetch buffers reused, not mapped per fetch)"
    )


def lower_compaction_priority() -> str:
    """RocksDB's compaction threads at nice 19 (see the module doc); what was done."""
    try:
        Env().lower_thread_pool_cpu_priority()
    except Exception as exc:  # a platform without thread priorities
        return f"compaction priority left as it is ({type(exc).__name__}: {exc})"
    return "RocksDB compactions at the lowest CPU priority (nice 19); flushes as the loop"
