"""The writer's head cache (the fold's view of the current states): the heads of the grains
it read or wrote lately, the grain filter, and the state reads that fill them. ReplicaStore
(store.py) is the one subclass."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Mapping
from typing import Final

from rbloom import Bloom

from stream_replica.contract import GrainId
from stream_replica.fold import GrainState
from stream_replica.grain_filter import new_grain_filter
from stream_replica.memory import DEFAULT_PLAN
from stream_replica.read_thread import ReadPlacement, ReadThread
from stream_replica.store_layout import (
    _HEAD,
    _INDEX_PREFIX,
    _NO_STATE,
    _PARTITION,
    _STATE_PREFIX,
    Head,
    HeadLookup,
    Located,
    _grain_body,
    _unpack_state,
)
from stream_replica.store_records import StoreError
from stream_replica.store_view import _StoreView
from stream_replica.watchdog import note_blocking_call

# What rocksdict's multi-get takes (raw mode: bytes only, but its stubs say all key types).
_DbKeys = list[str | int | float | bytes | bool]


# Heads (sequence, partition, offset, shadowed_by, key body) the writer keeps in memory so that
# the fold skips the RocksDB read of grains it saw lately. How many: memory.MemoryPlan (from
# --memory-budget-mib, or --head-cache-entries when given).
HEAD_CACHE_ENTRIES: Final = DEFAULT_PLAN.head_cache_entries


class _HeadCache(_StoreView):
    """The head cache of ReplicaStore; see _init_heads."""

    def _init_heads(self, head_cache_entries: int, grain_filter_bytes: int) -> None:
        # grain key body → packed (sequence, partition, offset, shadowed_by) of its stored
        # state, or _NO_STATE. Exact: filled from this writer's reads and writes, cleared by
        # every wipe.
        # Two generations, so that making room is O(1) on the loop: new heads go into the
        # young one; when it holds half the limit it becomes the old one, and the previous old
        # one is retired: its entries are freed a slice at a time by later writes (freeing, or
        # copying out, 250k+ entries at once stalled the loop for 50-100 ms).
        self._heads: dict[bytes, bytes] = {}
        self._old_heads: dict[bytes, bytes] = {}
        self._retired: list[dict[bytes, bytes]] = []
        self._head_limit = max(0, head_cache_entries)
        # Every grain given a state since the store last held none (grain_filter.py): a grain
        # the cache lacks and the filter rules out has no state, so a build or rebuild into an
        # empty store reads almost nothing from RocksDB. None while the store holds states it
        # did not see written (opened with states).
        self._grain_filter_bytes = grain_filter_bytes
        self._grain_filter: Bloom | None = None
        # read_states_async's thread (read_thread.py), started at its first slow read
        self._reader: ReadThread[_DbKeys, tuple[list[bytes | None], float]] | None = None
        self.read_placement = ReadPlacement()

    def heads(self, grains: Iterable[GrainId]) -> dict[GrainId, Head | None]:
        """The heads the cache knows among ``grains`` (absent: not known): (sequence,
        partition, offset, shadowed_by, key body) of the stored state, or None: the grain has no
        state (cached as such, or ruled out by the grain filter)."""
        found: dict[GrainId, Head | None] = {}
        for grain in grains:
            body = _grain_body(grain)
            packed = self._cached(body)
            if packed is not None:
                found[grain] = (*_HEAD.unpack(packed), body) if packed else None
        return found

    def _store_heads(self, heads: Iterable[tuple[bytes, bytes]]) -> None:
        """Cache ``heads`` (newest last) in the young generation; see _init_heads. Each call
        frees twice as many retired entries as it adds (at least 1,000), so a retired
        generation is gone before the young one fills again: at most ``limit`` entries are
        held, plus what is being freed."""
        limit = self._head_limit
        if not limit:
            return
        young = self._heads
        before = len(young)
        young.update(heads)
        self._free_retired(max(1000, 2 * (len(young) - before)))
        if len(young) >= max(1, limit // 2):
            self._retire(self._old_heads)
            self._old_heads, self._heads = young, {}

    def _start_grain_filter(self) -> None:
        """The store holds no state (just opened or wiped): a new, empty grain filter."""
        size = self._grain_filter_bytes
        self._grain_filter = new_grain_filter(size) if size > 0 else None

    def _retire(self, generation: dict[bytes, bytes]) -> None:
        if generation:
            self._retired.append(generation)

    def _free_retired(self, count: int) -> None:
        retired = self._retired
        while retired and count > 0:
            generation = retired[-1]
            freed = min(count, len(generation))
            for _ in range(freed):
                generation.popitem()
            count -= freed
            if not generation:
                retired.pop()

    def cached_heads(self, bodies: Iterable[bytes]) -> list[HeadLookup]:
        """The cached heads of the grains whose key bodies are ``bodies``; see HeadLookup."""
        bodies = bodies if isinstance(bodies, list) else list(bodies)
        packed = list(map(self._heads.get, bodies))
        if None in packed:  # some are in the old generation, or not cached
            old = self._old_heads.get
            packed = [old(b) if p is None else p for b, p in zip(bodies, packed, strict=True)]
            grain_filter = self._grain_filter
            if grain_filter is not None and None in packed:
                may_hold = grain_filter.__contains__
                packed = [
                    (None if may_hold(b) else _NO_STATE) if p is None else p
                    for b, p in zip(bodies, packed, strict=True)
                ]
        if None not in packed and _NO_STATE not in packed:
            return list(map(_HEAD.unpack, packed))  # type: ignore[arg-type]
        unpack = _HEAD.unpack
        return [False if p is None else (unpack(p) if p else None) for p in packed]

    def _cached(self, body: bytes) -> bytes | None:
        """The packed head of a grain (``_NO_STATE``: no state), None when not cached."""
        packed = self._heads.get(body)
        if packed is None:
            packed = self._old_heads.get(body)
            if packed is None and not self._may_hold(body):
                return _NO_STATE
        return packed

    def _may_hold(self, body: bytes) -> bool:
        """False when the grain filter rules out a state for the grain (see _init_heads)."""
        return self._grain_filter is None or body in self._grain_filter

    def _drop_heads(self) -> None:
        """Forget every cached head (a wipe, a failed write): O(1) here, freed by later
        writes. The grain filter stays right: it may only hold more grains than have states."""
        self._retire(self._heads)
        self._retire(self._old_heads)
        self._heads, self._old_heads = {}, {}

    def read_states(self, hints: Mapping[GrainId, int]) -> dict[GrainId, GrainState | None]:
        """Current states of ``hints``' grains; each hint is the partition a record of the
        grain came from, where its state most likely is. One RocksDB multi-get asks for the
        state there and the grain's index entry together; only a grain whose entry names
        another partition costs a second read. On the calling thread: see read_states_async."""
        reading = self._reading(hints)
        try:
            keys = next(reading)
            while True:
                started = time.monotonic()
                raws: list[bytes | None] = self._db.get(keys)  # type: ignore[assignment]
                note_blocking_call("RocksDB multi-get (read_states)", started)
                keys = reading.send(raws)
        except StopIteration as done:
            result: dict[GrainId, GrainState | None] = done.value
            return result
        except Exception as exc:  # RocksDB's I/O or corruption errors, a value not decoded
            raise StoreError(f"read of state directory {self.path} failed: {exc}") from None

    async def read_states_async(
        self, hints: Mapping[GrainId, int]
    ) -> dict[GrainId, GrainState | None]:
        """read_states, with its multi-gets on the store's reader thread once one was slow
        (read_thread.ReadPlacement): rocksdict lets go of the GIL while RocksDB looks keys
        up, so the event loop runs on (a few cold keys of a 10M-grain store took 35-77 ms, a
        stall every other task waited out), while warm reads skip the ~70 µs hand-over. The
        head cache changes on the loop only, after each read."""
        reading = self._reading(hints)
        placement = self.read_placement
        try:
            keys = next(reading)
            while True:
                if placement.on_thread:
                    if self._reader is None:
                        self._reader = ReadThread(self._timed_multi_get, "rocksdb-read")
                    raws, took = await self._reader.read(keys)
                else:
                    started = time.monotonic()
                    raws, took = self._timed_multi_get(keys)
                    note_blocking_call("RocksDB multi-get (read_states_async)", started)
                placement.took(took)
                keys = reading.send(raws)
        except StopIteration as done:
            result: dict[GrainId, GrainState | None] = done.value
            return result
        except Exception as exc:  # RocksDB's I/O or corruption errors, a value not decoded
            raise StoreError(f"read of state directory {self.path} failed: {exc}") from None

    def _timed_multi_get(self, keys: _DbKeys) -> tuple[list[bytes | None], float]:
        started = time.monotonic()
        raws: list[bytes | None] = self._db.get(keys)  # type: ignore[assignment]
        return raws, time.monotonic() - started

    def _reading(
        self, hints: Mapping[GrainId, int]
    ) -> Generator[_DbKeys, list[bytes | None], dict[GrainId, GrainState | None]]:
        """read_states as a generator: yields the keys of each multi-get, is sent what it
        found, returns the states (and caches their heads)."""
        grain_list = list(hints)
        result: dict[GrainId, GrainState | None] = dict.fromkeys(grain_list)
        if not grain_list:
            return result
        bodies = [_grain_body(g) for g in grain_list]
        keys: _DbKeys = []
        for grain, body in zip(grain_list, bodies, strict=True):
            keys.append(_STATE_PREFIX + _PARTITION.pack(hints[grain]) + body)
            keys.append(_INDEX_PREFIX + body)
        raws = yield keys
        elsewhere: list[tuple[GrainId, bytes]] = []
        for n, grain in enumerate(grain_list):
            raw = raws[2 * n]
            if raw is not None:
                result[grain] = _unpack_state(raw)
                continue
            spot = raws[2 * n + 1]
            if spot is not None and _PARTITION.unpack(spot)[0] != hints[grain]:
                elsewhere.append((grain, _STATE_PREFIX + spot + bodies[n]))
        if elsewhere:
            found = yield [key for _, key in elsewhere]
            for (grain, _), raw in zip(elsewhere, found, strict=True):
                if raw is not None:
                    result[grain] = _unpack_state(raw)
        self._store_heads(
            (
                body,
                _NO_STATE
                if (state := result[grain]) is None
                else _HEAD.pack(state.sequence, state.partition, state.offset, state.shadowed_by),
            )
            for grain, body in zip(grain_list, bodies, strict=True)
        )
        return result

    def _locations(self, grains: list[GrainId]) -> dict[GrainId, Located]:
        """Where each grain's state is according to the index (grains the head cache does
        not know)."""
        bodies = [_grain_body(g) for g in grains]
        started = time.monotonic()
        spots: list[bytes | None] = self._db.get([_INDEX_PREFIX + b for b in bodies])  # type: ignore[assignment]
        note_blocking_call("RocksDB multi-get (_locations)", started)
        return {
            grain: (body, None if spot is None else _PARTITION.unpack(spot)[0])
            for grain, body, spot in zip(grains, bodies, spots, strict=True)
        }
