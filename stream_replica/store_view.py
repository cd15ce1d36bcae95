"""The replica store's shared read side: what the reader (store_reader.py) and the writer
(store.py) both read, on an open RocksDB handle."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgpack
from rocksdict import Rdict

from stream_replica.contract import GrainId
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.store_layout import (
    _ASSIGNMENT_KEY,
    _CHECKPOINT_PREFIX,
    _COUNTS_KEY,
    _FORMAT_KEY,
    _GRAIN_PREFIX,
    _GROUP_KEY,
    _MIGRATABLE,
    _PARTITION,
    _PARTITIONS_KEY,
    _SERVED_PREFIX,
    _SHADOW,
    _SHADOW_PREFIX,
    _STATE_KEY_HEAD,
    _STATE_PREFIX,
    _TOPIC_ID_KEY,
    _TOPIC_KEY,
    STORE_FORMAT,
    _partition_prefix,
    _served_key,
    _unpack_state,
    index_db_key,
    parse_grain_db_key,
)
from stream_replica.store_records import (
    Checkpoint,
    LastAssignment,
    Served,
    ShadowMark,
    StoreError,
    TopicIdentity,
)


class _StoreView:
    _db: Rdict
    path: Path

    @property
    def topic(self) -> str | None:
        raw = self._db.get(_TOPIC_KEY)
        return None if raw is None else bytes(raw).decode()

    def get(self, grain: GrainId) -> GrainState | None:
        # Two single-key gets: a one-grain multi-get costs ~2x in list building (HTTP reads).
        index_key = index_db_key(grain)
        spot = self._db.get(index_key)
        if not spot:
            return None
        raw = self._db.get(_STATE_PREFIX + bytes(spot) + index_key[1:])
        return None if raw is None else _unpack_state(raw)

    def get_many(self, grains: Iterable[GrainId]) -> dict[GrainId, GrainState | None]:
        grain_list = list(dict.fromkeys(grains))
        if not grain_list:
            return {}
        result: dict[GrainId, GrainState | None] = dict.fromkeys(grain_list)
        spots: list[bytes | None] = self._db.get([index_db_key(g) for g in grain_list])  # type: ignore[assignment]
        located = [(g, spot) for g, spot in zip(grain_list, spots, strict=True) if spot]
        if located:
            raws: list[bytes | None] = self._db.get(  # type: ignore[assignment]
                [_STATE_PREFIX + bytes(spot) + index_db_key(g)[1:] for g, spot in located]
            )
            for (grain, _), raw in zip(located, raws, strict=True):
                if raw is not None:
                    result[grain] = _unpack_state(raw)
        return result

    def grains(self) -> Iterator[tuple[GrainId, GrainState]]:
        """Every grain, sorted by (grain_type, grain_key): the partitions' ranges merged."""
        ranges = [self._scan(_partition_prefix(p)) for p in self._state_partitions()]
        for db_key, raw in heapq.merge(*ranges, key=lambda item: item[0][_STATE_KEY_HEAD:]):
            yield parse_grain_db_key(_GRAIN_PREFIX + db_key[_STATE_KEY_HEAD:]), _unpack_state(raw)

    def _state_partitions(self) -> list[int]:
        """The partitions holding at least one state (one seek per partition)."""
        found = []
        iterator = self._db.iter()
        try:
            iterator.seek(_STATE_PREFIX)
            while iterator.valid():
                key = iterator.key()
                if not key.startswith(_STATE_PREFIX):
                    break
                (partition,) = _PARTITION.unpack_from(key, len(_STATE_PREFIX))
                found.append(partition)
                if partition == 0xFFFFFFFF:
                    break
                iterator.seek(_partition_prefix(partition + 1))
        finally:
            del iterator
        return found

    def count_grains(self, partitions: Iterable[int] | None = None) -> int:
        """Grains held (of ``partitions``: all when None). A key scan: for tools, not the loop."""
        wanted = self._state_partitions() if partitions is None else sorted(set(partitions))
        return sum(1 for p in wanted for _ in self._scan(_partition_prefix(p)))

    def checkpoints(self) -> dict[int, Checkpoint]:
        result = {}
        for db_key, raw in self._scan(_CHECKPOINT_PREFIX):
            (partition,) = _PARTITION.unpack(db_key[len(_CHECKPOINT_PREFIX) :])
            next_offset, caught_up_at = msgpack.unpackb(raw)
            result[partition] = Checkpoint(next_offset, caught_up_at)
        return result

    def served(self) -> dict[int, Served]:
        """Per partition, whether the worker serves it (partitions never served: absent)."""
        result = {}
        for db_key, raw in self._scan(_SERVED_PREFIX):
            (partition,) = _PARTITION.unpack(db_key[len(_SERVED_PREFIX) :])
            role, lag, since_ms, updated_ms = msgpack.unpackb(raw)
            result[partition] = Served(role, lag, since_ms, updated_ms)
        return result

    def served_for(self, state: GrainState) -> Served | None:
        """Whether the grain's partition is served here (None: it never was)."""
        raw = self._db.get(_served_key(state.partition))
        if raw is None:
            return None
        return Served(*msgpack.unpackb(raw))

    def last_assignment(self) -> LastAssignment:
        raw = self._db.get(_ASSIGNMENT_KEY)
        if raw is None:
            return LastAssignment(0, frozenset(), frozenset())
        epoch, active, standby = msgpack.unpackb(raw)
        return LastAssignment(epoch, frozenset(active), frozenset(standby))

    def shadowed_per_partition(self) -> Counter[int]:
        """Shadowed grains per partition of their state."""
        return Counter(_SHADOW.unpack(raw)[0] for _, raw in self._scan(_SHADOW_PREFIX))

    def shadowed(self) -> Iterator[tuple[GrainId, ShadowMark]]:
        """Every grain whose state is shadowed, sorted by grain."""
        for db_key, raw in self._scan(_SHADOW_PREFIX):
            grain = parse_grain_db_key(_GRAIN_PREFIX + db_key[len(_SHADOW_PREFIX) :])
            yield grain, ShadowMark(*_SHADOW.unpack(raw))

    def group(self) -> str | None:
        """The consumer group of the last worker that ran on this store (None: none did)."""
        raw = self._db.get(_GROUP_KEY)
        return None if raw is None else bytes(raw).decode()

    def topic_identity(self) -> TopicIdentity | None:
        partitions = self._db.get(_PARTITIONS_KEY)
        if partitions is None:
            return None
        topic_id = self._db.get(_TOPIC_ID_KEY)
        return TopicIdentity(
            None if not topic_id else bytes(topic_id).decode(), int(bytes(partitions))
        )

    def counts(self) -> FoldCounts:
        raw = self._db.get(_COUNTS_KEY)
        counts = FoldCounts()
        if raw is not None:
            for name, value in msgpack.unpackb(raw).items():
                if hasattr(counts, name):
                    setattr(counts, name, value)
        return counts

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        try:
            iterator.seek(prefix)
            while iterator.valid():
                key = iterator.key()
                if not key.startswith(prefix):
                    break
                yield key, iterator.value()
                iterator.next()
        finally:
            del iterator  # iterators pin the DB: drop them before close, or the lock stays

    def _check_format(self, migrate: bool = False) -> None:
        stored = self._db.get(_FORMAT_KEY)
        if stored == _MIGRATABLE and not migrate:
            self._db.close()
            raise StoreError(
                f"state directory {self.path} uses store format {_MIGRATABLE.decode()}; this "
                f"version reads format {STORE_FORMAT.decode()}: start the worker on it once "
                "(`stream-replica run`) to migrate it in place"
            )
        if stored != STORE_FORMAT and not (migrate and stored == _MIGRATABLE):
            self._db.close()
            found = "unknown" if stored is None else bytes(stored).decode(errors="replace")
            raise StoreError(
                f"state directory {self.path} uses store format {found}, this version writes "
                f"format {STORE_FORMAT.decode()}; delete it (the worker rebuilds from the topic)"
            )

    def close(self) -> None:
        try:
            self._db.close()
        except Exception as exc:  # e.g. the WAL hit a full disk earlier
            raise StoreError(f"closing state directory {self.path} failed: {exc}") from None

    def __enter__(self) -> _StoreView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
