"""The worker's memory budget (``--memory-budget-mib``) split into the parts that grow.

A worker's resident memory is a fixed part (the interpreter, the imported libraries, the Kafka
client's fetch buffers, RocksDB's table readers and compaction buffers) plus three parts that
would grow with the number of grains if nothing bounded them: the head cache (store_heads.py), the
RocksDB block cache (data, index and filter blocks all live in it) and the memtables; and one
fixed-size part the plan sizes too, the grain filter (grain_filter.py). The plan
gives each a share of the budget, so peak RSS stays under the budget whatever the number of
grains or the backlog (``python -m benchmarks.memory_bench`` checks it at 1M and 10M grains).

Figures (measured on CPython 3.11, ``benchmarks/memory_bench.py`` prints them each run):

* one head-cache entry costs ~165 B (the grain's key body and packed head, both bytes, and
  the dict's slots); planned at 200 B for dict over-allocation and the retired generation
  still being freed (store_heads.py);
* the fixed part is ~80 MiB at 1M grains (a worker with no head cache, 8 MiB of block
  cache and 32 MiB of memtables peaked at 120 MiB) and grows with the store: at 10M grains
  a worker at 256 MiB planned with 96 MiB fixed peaked at 272 MiB (more table files and
  their pinned top-level index/filter partitions, the allocator arenas of RocksDB's
  background threads). Planned at 136 MiB, which also covers a standby consumer's fetch
  (``FETCH_MAX_BYTES`` each): at 128 MiB, 10M-grain builds peaked at 241-254 MiB of 256
  across runs (the allocator's fragmentation varies), too close to the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from stream_replica.errors import ConfigurationError

MIB: Final = 1 << 20

DEFAULT_BUDGET_MIB: Final = 256
HEAD_ENTRY_BYTES: Final = 200
FIXED_MIB: Final = 136
# Two memtables: one taking writes while the other flushes. 16 MiB keeps flushes (and the L0
# files they make) few at ~40 MiB/s of writes.
WRITE_BUFFER_BYTES: Final = 16 * MIB
WRITE_BUFFERS: Final = 2
MIN_BLOCK_CACHE_BYTES: Final = 8 * MIB
# The block cache gets this share of what is left after the fixed part and the memtables, the
# head cache the rest: a cached head saves the whole RocksDB read (index, filter and data
# block), a cached block only part of it, and only for grains whose block is hot.
BLOCK_CACHE_SHARE: Final = 0.25
# The grain filter gets this share of the same (14 MiB at the default budget: ~12 bits per
# grain at 10M grains, ~0.4 % false "maybe"s; ~120 bits at 1M, none to speak of). At 8 % (7
# MiB, ~6 % false "maybe"s at 10M) nearly every poll of a 10M-grain build read RocksDB.
GRAIN_FILTER_SHARE: Final = 0.16
GRAIN_FILTER_MAX_BYTES: Final = 32 * MIB  # 10 bits per grain up to ~27M grains
# Bytes the Kafka client may hold from one fetch (all partitions together; aiokafka's default
# is 50 MiB, far above what a poll of at most --max-records records needs).
FETCH_MAX_BYTES: Final = 16 * MIB


class MemoryBudgetError(ConfigurationError):
    """A budget the worker cannot run within; the message is one readable line."""


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    budget_mib: int
    head_cache_entries: int
    block_cache_bytes: int
    grain_filter_bytes: int = 0
    write_buffer_bytes: int = WRITE_BUFFER_BYTES
    write_buffers: int = WRITE_BUFFERS
    fixed_mib: int = FIXED_MIB

    @property
    def memtables_bytes(self) -> int:
        return self.write_buffer_bytes * self.write_buffers

    @property
    def head_cache_bytes(self) -> int:
        return self.head_cache_entries * HEAD_ENTRY_BYTES

    def describe(self) -> str:
        return (
            f"memory budget {self.budget_mib} MiB: fixed {self.fixed_mib} MiB, memtables "
            f"{self.memtables_bytes // MIB} MiB, block cache {self.block_cache_bytes // MIB} MiB, "
            f"head cache {self.head_cache_entries:,} entries "
            f"(~{self.head_cache_bytes / MIB:.0f} MiB), grain filter "
            f"{self.grain_filter_bytes / MIB:.0f} MiB"
        )


def minimum_budget_mib(head_cache_entries: int = 0) -> int:
    needed = FIXED_MIB * MIB + WRITE_BUFFER_BYTES * WRITE_BUFFERS + MIN_BLOCK_CACHE_BYTES
    return -(-(needed + head_cache_entries * HEAD_ENTRY_BYTES) // MIB)


def plan_memory(budget_mib: int, head_cache_entries: int | None = None) -> MemoryPlan:
    """Split ``budget_mib``. An explicit ``head_cache_entries`` is kept as given and the block
    cache gets the rest; raises MemoryBudgetError when the budget cannot hold the parts."""
    least = minimum_budget_mib(head_cache_entries or 0)
    if budget_mib < least:
        given = f" with --head-cache-entries {head_cache_entries:,}" if head_cache_entries else ""
        raise MemoryBudgetError(
            f"--memory-budget-mib {budget_mib} is too small to run{given}: at least {least} "
            f"MiB (fixed {FIXED_MIB} MiB, memtables "
            f"{WRITE_BUFFER_BYTES * WRITE_BUFFERS // MIB} MiB, block cache "
            f"{MIN_BLOCK_CACHE_BYTES // MIB} MiB, {HEAD_ENTRY_BYTES} B per head-cache entry)"
        )
    spare = budget_mib * MIB - FIXED_MIB * MIB - WRITE_BUFFER_BYTES * WRITE_BUFFERS
    asked_heads = (head_cache_entries or 0) * HEAD_ENTRY_BYTES
    grain_filter = max(
        0,
        min(
            int(spare * GRAIN_FILTER_SHARE),
            GRAIN_FILTER_MAX_BYTES,
            spare - asked_heads - MIN_BLOCK_CACHE_BYTES,  # the block cache keeps its minimum
        ),
    )
    spare -= grain_filter
    if head_cache_entries is not None:
        return MemoryPlan(budget_mib, head_cache_entries, spare - asked_heads, grain_filter)
    block_cache = max(MIN_BLOCK_CACHE_BYTES, int(spare * BLOCK_CACHE_SHARE))
    entries = (spare - block_cache) // HEAD_ENTRY_BYTES
    return MemoryPlan(budget_mib, entries, block_cache, grain_filter)


DEFAULT_PLAN: Final = plan_memory(DEFAULT_BUDGET_MIB)
