"""The replica store's RocksDB options, sized by the memory plan (memory.py), and the error
a store that cannot be opened raises."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, WriteBufferManager

from stream_replica.memory import DEFAULT_PLAN, MemoryPlan
from stream_replica.store_records import StoreError

# Table files the writer keeps open; each open file holds a table reader. Its index and filter
# blocks are in the block cache, so a reader is small, but 10M grains make hundreds of files.
MAX_OPEN_FILES: Final = 512


# L0 files that start a compaction: RocksDB's default, and while the store is written without
# its WAL (a catch-up; see ReplicaStore._set_wal).
L0_COMPACTION_TRIGGER: Final = 4
CATCH_UP_L0_COMPACTION_TRIGGER: Final = 8


def _options(plan: MemoryPlan = DEFAULT_PLAN) -> Options:
    """RocksDB's memory stays within the plan's memtables + block cache whatever the number
    of grains: the memtables are charged to the block cache (one cap for both), index and
    filter blocks live in the cache too, partitioned so that a lookup loads one small
    partition of a file's index/filter instead of all of it (the whole-file filters of a
    10M-grain store, ~25 MB, would crowd a small cache and be re-read on misses), bloom
    filters so that looking up a grain that is not stored yet rarely touches a data block."""
    options = Options(
        raw_mode=True
    )  # raw from the very first open: a default-mode DB reopened raw breaks
    options.create_if_missing(True)
    options.set_write_buffer_size(plan.write_buffer_bytes)
    options.set_max_write_buffer_number(plan.write_buffers)
    options.set_max_open_files(MAX_OPEN_FILES)
    options.set_level_zero_file_num_compaction_trigger(L0_COMPACTION_TRIGGER)
    cache = Cache(plan.block_cache_bytes + plan.memtables_bytes)
    options.set_write_buffer_manager(
        WriteBufferManager.new_write_buffer_manager_with_cache(plan.memtables_bytes, False, cache)
    )
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options


def _open_error(path: Path, exc: Exception) -> StoreError:
    text = str(exc)
    if "LOCK" in text and ("unavailable" in text.lower() or "lock" in text.lower()):
        return StoreError(
            f"state directory {path} is in use by another worker (RocksDB lock held); "
            "each worker needs its own --db"
        )
    return StoreError(f"cannot open state directory {path}: {text}")
