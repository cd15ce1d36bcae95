"""The replica store: grains and per-partition checkpoints in one RocksDB (rocksdict, raw mode).

The key layout and value encodings are in store_layout.py.

A poll's grain changes, checkpoints and counters go into ONE write batch: after any crash the
store holds exactly the result of the records before each partition's checkpoint.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

import msgpack
from rocksdict import (
    Rdict,
    WriteBatch,
    WriteOptions,
)

from stream_replica import store_options
from stream_replica.contract import GrainId
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.memory import DEFAULT_PLAN, MemoryPlan
from stream_replica.store_heads import HEAD_CACHE_ENTRIES, _HeadCache
from stream_replica.store_layout import (
    _ASSIGNMENT_KEY,
    _CHECKPOINT_PREFIX,
    _COUNTS_KEY,
    _FORMAT_KEY,
    _GRAIN_PREFIX,
    _GROUP_KEY,
    _HEAD,
    _INDEX_PREFIX,
    _MIGRATABLE,
    _NO_STATE,
    _PARTITION,
    _PARTITIONS_KEY,
    _SERVED_PREFIX,
    _SHADOW,
    _SHADOW_PREFIX,
    _STATE_HEADER,
    _STATE_PREFIX,
    _TOPIC_ID_KEY,
    _TOPIC_KEY,
    STORE_FORMAT,
    Head,
    HeadLookup,
    Located,
    Prepared,
    _checkpoint_key,
    _grain_body,
    _next_prefix,
    _pack_state,
    _partition_prefix,
    _served_key,
    _spot,
    _unpack_state,
    encode_new_state,
    grain_body_of_key,
    grain_db_key,
    index_db_key,
    parse_grain_db_key,
    shadow_db_key,
    state_db_key,
)
from stream_replica.store_options import (
    CATCH_UP_L0_COMPACTION_TRIGGER,
    L0_COMPACTION_TRIGGER,
    MAX_OPEN_FILES,
    _open_error,
)
from stream_replica.store_reader import ReplicaReader
from stream_replica.store_records import (
    Checkpoint,
    LastAssignment,
    Served,
    ShadowMark,
    StoreError,
    TopicIdentity,
    partitions_added,
)
from stream_replica.watchdog import note_blocking_call

__all__ = [
    "CATCH_UP_L0_COMPACTION_TRIGGER",
    "HEAD_CACHE_ENTRIES",
    "L0_COMPACTION_TRIGGER",
    "MAX_OPEN_FILES",
    "STORE_FORMAT",
    "Checkpoint",
    "Head",
    "HeadLookup",
    "LastAssignment",
    "Located",
    "Prepared",
    "ReplicaReader",
    "ReplicaStore",
    "Served",
    "ShadowMark",
    "StoreError",
    "TopicIdentity",
    "encode_new_state",
    "grain_body_of_key",
    "grain_db_key",
    "index_db_key",
    "parse_grain_db_key",
    "partitions_added",
    "shadow_db_key",
    "state_db_key",
]

_MIGRATE_BATCH: Final = 20_000

# write_with_wal flushes on a thread until one ran with nothing written meanwhile, at most
# _TAIL_FLUSHES times, then what the writes meanwhile left on the loop.
_TAIL_FLUSHES: Final = 4


# --- the writer -------------------------------------------------------------------------------


class ReplicaStore(_HeadCache):
    """The single writer of a state directory. ``topic`` binds the store on first open.
    ``memory`` sizes RocksDB's caches and the head cache (``head_cache_entries`` overrides
    the latter)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        topic: str,
        head_cache_entries: int | None = None,
        memory: MemoryPlan = DEFAULT_PLAN,
    ) -> None:
        self.path = Path(path)
        if head_cache_entries is None:
            head_cache_entries = memory.head_cache_entries
        self._init_heads(head_cache_entries, memory.grain_filter_bytes)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state directory {self.path}: {exc}") from None
        try:
            # through the module: benchmarks/payload_bench.py swaps store_options._options
            self._db = Rdict(str(self.path), store_options._options(memory))
        except Exception as exc:
            raise _open_error(self.path, exc) from None
        # WAL on, no fsync per batch: a process crash loses nothing (the WAL is in the OS page
        # cache); an OS crash can lose the last batches, but grains and checkpoints roll back
        # together, and the worker re-reads those records from Kafka. See docs/operations.md.
        self._write_options = WriteOptions()
        self._write_options.sync = False
        self._wal_on = True  # see write_without_wal
        # Held by a memtable flush on another thread: close() waits for it.
        self._flush_lock = threading.Lock()
        self._writes = 0  # write batches so far: write_with_wal sees whether any slipped in
        self._identity: TopicIdentity | None = None  # topic_identity(), kept by this writer
        stored_topic = self.topic
        if stored_topic is None:
            batch = WriteBatch(raw_mode=True)
            batch.put(_TOPIC_KEY, topic.encode())
            batch.put(_FORMAT_KEY, STORE_FORMAT)
            self._write(batch)
        elif stored_topic != topic and self._never_replicated():
            # A run refused before it reached its topic (a typo in --topic, a topic not
            # compacted) left only the name: nothing to lose, so the directory is not stuck.
            batch = WriteBatch(raw_mode=True)
            batch.put(_TOPIC_KEY, topic.encode())
            self._write(batch)
            self._check_format(migrate=True)
        elif stored_topic != topic:
            self._db.close()
            raise StoreError(
                f"state directory {self.path} holds a replica of topic {stored_topic!r}, "
                f"not {topic!r}: pass --topic {shlex.quote(stored_topic)} to use it, or another --db"
            )
        else:
            self._check_format(migrate=True)
            if self._db.get(_FORMAT_KEY) == _MIGRATABLE:
                self._migrate_from_4()
        self._counts = self.counts()
        if not self._state_partitions():
            self._start_grain_filter()

    def _never_replicated(self) -> bool:
        """Nothing but the topic's name: never bound to the topic, no checkpoint, no grain."""
        return (
            self.topic_identity() is None
            and not self.checkpoints()
            and not self._state_partitions()
            and next(self._scan(_INDEX_PREFIX), None) is None
        )

    def _migrate_from_4(self) -> None:
        """Format 4 → 5: every state moves from ``g`` + grain to ``p`` + partition + grain,
        with its index entry. Restartable: the old keys and the format marker change only in
        the last batch, so a crash midway leaves a format-4 store that migrates again."""
        batch = WriteBatch(raw_mode=True)
        pending = 0
        for db_key, raw in self._scan(_GRAIN_PREFIX):
            partition = _STATE_HEADER.unpack_from(raw)[2]
            body = db_key[len(_GRAIN_PREFIX) :]
            spot = _PARTITION.pack(partition)
            batch.put(_STATE_PREFIX + spot + body, raw)
            batch.put(_INDEX_PREFIX + body, spot)
            pending += 1
            if pending >= _MIGRATE_BATCH:
                self._write(batch)
                batch, pending = WriteBatch(raw_mode=True), 0
        batch.delete_range(_GRAIN_PREFIX, _next_prefix(_GRAIN_PREFIX))
        batch.put(_FORMAT_KEY, STORE_FORMAT)
        self._write(batch)

    # --- the write-ahead log (durability.py decides when it is off) ---------------------------

    @property
    def wal_on(self) -> bool:
        """Whether writes go through RocksDB's write-ahead log (on at open)."""
        return self._wal_on

    def write_without_wal(self) -> None:
        """Later writes skip the WAL: they persist at the next memtable flush (RocksDB's
        own, when a memtable fills, or :meth:`flush_async`). A process killed before then
        loses them, and only them: a flush persists whole batches in write order, so the
        store reopens at an earlier checkpoint with the grains it had then."""
        self._set_wal(False)

    async def write_with_wal(self) -> float:
        """Persist what was written without the WAL, then write through it again; the
        seconds the flushes took. The order matters: a WAL write recovered after a crash on
        top of lost WAL-less writes would pair a later checkpoint with older grains. Flushes
        run on a thread (RocksDB lets go of the GIL); the WAL goes back on as soon as one ran
        with no write meanwhile, which is the first one when the caller writes nothing while
        it waits (the worker settles between polls). Only if writes keep coming is the tail
        flushed on the loop, so that none slips in between: a flush there once blocked it
        for 1.3 s at 10M grains, as RocksDB's flush waits for a compaction rather than stall
        writes."""
        if self.wal_on:
            return 0.0
        started = time.monotonic()
        for _ in range(_TAIL_FLUSHES):
            writes_before = self._writes
            await self.flush_async()
            if self._writes == writes_before:  # all written before it began is persisted
                self._set_wal(True)
                return time.monotonic() - started
        tail_started = time.monotonic()
        self._flush()
        note_blocking_call("RocksDB memtable flush", tail_started)
        self._set_wal(True)
        return time.monotonic() - started

    def _set_wal(self, on: bool) -> None:
        # a property at run time; rocksdict's stubs declare a method
        self._write_options.disable_wal = not on  # type: ignore[method-assign,assignment]
        self._wal_on = on
        # A catch-up rewrites each grain many times: compacting L0 half as often there cut
        # RocksDB's compaction CPU by a third (a 3M-record rebuild: 4.7 -> 2.9 s) at the
        # price of more L0 files to look through, which only head-cache misses do.
        trigger = L0_COMPACTION_TRIGGER if on else CATCH_UP_L0_COMPACTION_TRIGGER
        self._db.set_options({"level0_file_num_compaction_trigger": str(trigger)})

    async def flush_async(self) -> None:
        """Flush the memtables to table files on a thread (the loop runs on meanwhile)."""
        await asyncio.to_thread(self._flush)

    def _flush(self) -> None:
        with self._flush_lock:
            try:
                self._db.flush()
            except Exception as exc:
                raise StoreError(f"flush of state directory {self.path} failed: {exc}") from None

    def close(self) -> None:
        with self._flush_lock:  # a flush on another thread finishes first
            pass
        if self._reader is not None:
            # a read whose task was cancelled may still run: RocksDB cannot close under it
            self._reader.close()
            self._reader = None
        super().close()

    def apply(
        self,
        changes: Mapping[GrainId, GrainState | None],
        checkpoints: Mapping[int, Checkpoint],
        counts: FoldCounts,
        unshadowed: Iterable[GrainId] = (),
        prepared: Iterable[Prepared] = (),
    ) -> None:
        """Write a poll's result atomically: grain changes, the new states the fast fold
        encoded already (``prepared``, grains not in ``changes``), the shadow index
        (``unshadowed``: grains no longer shadowed), checkpoints, counters."""
        batch = WriteBatch(raw_mode=True)
        heads: list[tuple[bytes, bytes]] = []
        put = batch.put
        # a grain getting its first state goes into the grain filter before the write (a
        # failed write leaves a harmless "maybe"; the other order could leave a false "no")
        filter_add = self._grain_filter.add if self._grain_filter is not None else None
        for _, body, held, partition, value, head in prepared:
            spot = _spot(partition)
            if held != partition:
                if held is not None:
                    batch.delete(_STATE_PREFIX + _spot(held) + body)
                elif filter_add is not None:
                    filter_add(body)
                put(_INDEX_PREFIX + body, spot)
            put(_STATE_PREFIX + spot + body, value)
            heads.append((body, head))
        known: dict[GrainId, Located] = {}
        unknown: list[GrainId] = []
        for grain in changes:
            body = _grain_body(grain)
            packed = self._cached(body)
            if packed is None:
                unknown.append(grain)
            else:
                known[grain] = (body, _HEAD.unpack(packed)[1] if packed else None)
        if unknown:
            known.update(self._locations(unknown))
        try:
            for grain, state in changes.items():
                body, held = known[grain]
                if state is None:
                    heads.append((body, _NO_STATE))
                    if held is not None:
                        batch.delete(_STATE_PREFIX + _spot(held) + body)
                        batch.delete(_INDEX_PREFIX + body)
                    continue
                partition = state.partition
                spot = _spot(partition)
                if held != partition:
                    if held is not None:
                        batch.delete(_STATE_PREFIX + _spot(held) + body)
                    elif filter_add is not None:
                        filter_add(body)
                    put(_INDEX_PREFIX + body, spot)
                put(_STATE_PREFIX + spot + body, _pack_state(state))
                heads.append(
                    (body, _HEAD.pack(state.sequence, partition, state.offset, state.shadowed_by))
                )
                if state.shadowed_by >= 0:
                    put(
                        _SHADOW_PREFIX + body,
                        _SHADOW.pack(partition, state.offset, state.shadowed_by),
                    )
        except (struct.error, UnicodeError, OverflowError) as exc:
            raise StoreError(f"cannot encode a grain state for {self.path}: {exc}") from None
        for grain in unshadowed:
            batch.delete(shadow_db_key(grain))
        self._put_checkpoints(batch, checkpoints)
        merged = FoldCounts()
        merged.add(self._counts)
        merged.add(counts)
        batch.put(_COUNTS_KEY, msgpack.packb(merged.as_dict()))
        try:
            self._write(batch)
        except StoreError:
            self._drop_heads()
            raise
        self._counts = merged
        self._store_heads(heads)

    def set_checkpoints(self, checkpoints: Mapping[int, Checkpoint]) -> None:
        batch = WriteBatch(raw_mode=True)
        self._put_checkpoints(batch, checkpoints)
        self._write(batch)

    @staticmethod
    def _put_checkpoints(batch: WriteBatch, checkpoints: Mapping[int, Checkpoint]) -> None:
        for partition, checkpoint in checkpoints.items():
            batch.put(
                _checkpoint_key(partition),
                msgpack.packb([checkpoint.next_offset, checkpoint.caught_up_at_ms]),
            )

    def set_served(self, served: Mapping[int, Served]) -> None:
        batch = WriteBatch(raw_mode=True)
        for partition, record in served.items():
            batch.put(
                _served_key(partition),
                msgpack.packb([record.role, record.lag, record.since_ms, record.updated_ms]),
            )
        self._write(batch)

    def set_last_assignment(self, assignment: LastAssignment) -> None:
        value = [assignment.epoch, sorted(assignment.active), sorted(assignment.standby)]
        batch = WriteBatch(raw_mode=True)
        batch.put(_ASSIGNMENT_KEY, msgpack.packb(value))
        self._write(batch)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer serves: their grains, checkpoints and
        served records (O(1): range deletes, see wipe_partitions)."""
        wanted = set(partitions)
        self.wipe_partitions(wanted)
        batch = WriteBatch(raw_mode=True)
        for partition in wanted:
            batch.delete(_served_key(partition))
        self._write(batch)

    def wipe_partitions(self, partitions: Iterable[int]) -> None:
        """Delete the grains last set from ``partitions``, their shadow marks and
        checkpoints (one batch). The states go with one range delete per partition, whatever
        their number; only the shadow index (small: shadowed grains) is scanned. Their index
        entries stay (they point at a partition that no longer holds the grain), unless no
        other partition holds states: then the whole index goes too, one more range delete."""
        wanted = set(partitions)
        batch = WriteBatch(raw_mode=True)
        emptied = not set(self._state_partitions()) - wanted
        if emptied:
            # No state is left anywhere: every index entry would be a leftover, and each one
            # costs the rebuild a data-block read (a bloom filter cannot rule it out).
            batch.delete_range(_INDEX_PREFIX, _next_prefix(_INDEX_PREFIX))
        for partition in wanted:
            batch.delete_range(
                _partition_prefix(partition), _next_prefix(_partition_prefix(partition))
            )
        for db_key, raw in self._scan(_SHADOW_PREFIX):
            if _SHADOW.unpack(raw)[0] in wanted:
                batch.delete(db_key)
        for partition in wanted:
            batch.delete(_checkpoint_key(partition))
        self._drop_heads()
        self._write(batch)
        if emptied:
            self._start_grain_filter()

    def bind_topic(self, identity: TopicIdentity) -> str | None:
        """Record the topic's identity. When the store already holds another topic (deleted
        and recreated: another ID, or fewer partitions), everything stored is dropped first
        and the reason returned: positions and grains of another log mean nothing here. A
        partition count raised keeps the store (store_records.partitions_added)."""
        known = self.topic_identity()
        reason = None
        if known is not None:
            if (
                known.topic_id is not None
                and identity.topic_id is not None
                and known.topic_id != identity.topic_id
            ):
                reason = (
                    f"topic {self.topic!r} has ID {identity.topic_id}, the store was built "
                    f"from ID {known.topic_id} (deleted and recreated?)"
                )
            elif known.partitions > identity.partitions:  # Kafka only adds: recreated
                reason = (
                    f"topic {self.topic!r} has {identity.partitions} partitions, the store was "
                    f"built from {known.partitions} (deleted and recreated?)"
                )
            elif known == identity:
                return None
        if reason is not None:
            self.wipe_all()
        batch = WriteBatch(raw_mode=True)
        batch.put(_TOPIC_ID_KEY, (identity.topic_id or "").encode())
        batch.put(_PARTITIONS_KEY, str(identity.partitions).encode())
        self._write(batch)
        self._identity = TopicIdentity(identity.topic_id or None, identity.partitions)
        return reason

    def topic_identity(self) -> TopicIdentity | None:
        """As stored; kept in memory by the single writer (the HTTP face asks on every
        read), and changed only by bind_topic."""
        if self._identity is None:
            self._identity = super().topic_identity()
        return self._identity

    def set_group(self, group: str) -> None:
        """Record the consumer group this store's worker runs in (``replay`` checks it)."""
        if self.group() != group:
            batch = WriteBatch(raw_mode=True)
            batch.put(_GROUP_KEY, group.encode())
            self._write(batch)

    def wipe_all(self) -> None:
        """Delete every grain, index entry, shadow mark, checkpoint, served record and the
        last assignment (one batch of range deletes); counters stay."""
        batch = WriteBatch(raw_mode=True)
        batch.delete(_ASSIGNMENT_KEY)
        for prefix in (
            _STATE_PREFIX,
            _INDEX_PREFIX,
            _SHADOW_PREFIX,
            _CHECKPOINT_PREFIX,
            _SERVED_PREFIX,
        ):
            batch.delete_range(prefix, _next_prefix(prefix))
        self._drop_heads()
        self._write(batch)
        self._start_grain_filter()

    def _write(self, batch: WriteBatch) -> None:
        self._writes += 1
        started = time.monotonic()
        try:
            self._db.write(batch, self._write_options)
        except Exception as exc:
            raise StoreError(f"write to state directory {self.path} failed: {exc}") from None
        note_blocking_call("RocksDB batch write", started)

    def grains_of_type(
        self, grain_type: str, prefix: str = "", after: str | None = None
    ) -> Iterator[tuple[str, GrainState]]:
        """Grains of ``grain_type`` whose key starts with ``prefix`` and sorts after ``after``
        (when given), in key order: the HTTP scan's local step. Walks the grain index (grain
        order) and reads each state from its partition; index entries left by a wipe are
        skipped."""
        type_prefix = index_db_key((grain_type, ""))
        start = prefix if after is None or after < prefix else after
        iterator = self._db.iter()
        try:
            iterator.seek(index_db_key((grain_type, start)))
            while iterator.valid():
                db_key = iterator.key()
                if not db_key.startswith(type_prefix):
                    break
                _, grain_key = parse_grain_db_key(_GRAIN_PREFIX + db_key[len(_INDEX_PREFIX) :])
                if not grain_key.startswith(prefix):
                    break  # sorted: every later key is past the prefix too
                if after is None or grain_key > after:
                    raw = self._db.get(_STATE_PREFIX + bytes(iterator.value()) + db_key[1:])
                    if raw is not None:
                        yield grain_key, _unpack_state(raw)
                iterator.next()
        finally:
            del iterator
