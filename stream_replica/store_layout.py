"""The replica store's on-disk format: its keys and the encodings of its values.

Key layout (one column family, ordered so that a prefix scan is a range):

* ``m:topic``          → the topic this store replicates (a store never serves two topics)
* ``m:counts``         → cumulative fold counters (msgpack map), written with the data
* ``c`` + u32 BE part. → checkpoint: msgpack ``[next_offset, caught_up_at_ms]``
* ``m:topic_id``       → Kafka's topic ID (KIP-516) and ``m:partitions`` its partition count,
  so a store is never resumed against a topic deleted and recreated under the same name
* ``p`` + u32 BE partition + type + key → grain state, under the partition of the record
  that set it: a struct header (sequence, timestamp, partition, offset, shadowed-by offset,
  source length), the source cluster and the payload. ``type`` is escaped (NUL → NUL 0xFF)
  and terminated by NUL, so within a partition byte order is (grain_type, grain_key) order;
  ``grains()`` merges the partitions in that order. Partition-major so that wiping or dropping
  a partition is one range delete (O(1), no scan), whatever the number of grains.
* ``i`` + type + key   → u32 BE partition: where the grain's state is. Written when a state
  lands in another partition than the entry says (or there is none), deleted with the state.
  A wipe leaves the entries of the wiped partition behind (an entry whose partition holds no
  state for the grain means "no state"), so lookups by grain check both; such leftovers are
  at most one per grain of the topic and are overwritten when the grain is written again.
* ``s`` + type + key   → index of the grains whose state is shadowed (see fold.py): a struct
  (partition, state offset, shadowed-by offset). Small; written only when shadowing happens.
* ``o`` + u32 BE part. → served record: msgpack ``[role, lag, since_ms, updated_ms]``; role is
  ``active``, ``standby`` or ``""`` (not served since ``since_ms``). Written by the worker
  (ownership.py) so readers can tell a served, caught-up partition from a leftover copy.
* ``m:assignment``     → the last group assignment: msgpack ``[epoch, [active], [standby]]``,
  claimed back at the next join (a restarted member gets its partitions back).
* ``m:group``          → the consumer group of the last worker that ran on the store (UTF-8),
  so that ``replay`` moves that group's offsets and not a mistyped one's.

Grain values and the writer's cached heads are packed with struct (see below).
"""

from __future__ import annotations

import functools
import struct
from typing import Final, Literal

from stream_replica.contract import GrainId
from stream_replica.fold import GrainState

# 4: shadowed-by offset in grain values, shadow index, topic ID. 5: partition-major states
# (``p``) + grain index (``i``); a format-4 store is migrated in place when the writer opens it.
STORE_FORMAT: Final = b"5"
_MIGRATABLE: Final = b"4"
_TOPIC_KEY: Final = b"m:topic"
_FORMAT_KEY: Final = b"m:format"
_COUNTS_KEY: Final = b"m:counts"
_TOPIC_ID_KEY: Final = b"m:topic_id"
_PARTITIONS_KEY: Final = b"m:partitions"
_CHECKPOINT_PREFIX: Final = b"c"
_GRAIN_PREFIX: Final = b"g"  # the grain-ordered key form (format 4 stored states under it)
_STATE_PREFIX: Final = b"p"
_INDEX_PREFIX: Final = b"i"
_SHADOW_PREFIX: Final = b"s"
_SERVED_PREFIX: Final = b"o"
_ASSIGNMENT_KEY: Final = b"m:assignment"
_GROUP_KEY: Final = b"m:group"
_SHADOW: Final = struct.Struct(">IQQ")
_PARTITION: Final = struct.Struct(">I")


# --- key/value codecs -------------------------------------------------------------------------


def _grain_body(grain: GrainId) -> bytes:
    """The grain part of its keys: escaped type, NUL, key (byte order = grain order)."""
    grain_type, grain_key = grain
    return grain_type.encode().replace(b"\x00", b"\x00\xff") + b"\x00" + grain_key.encode()


def grain_body_of_key(key: bytes, grain: GrainId) -> bytes:
    """:func:`_grain_body` of ``grain`` from its Kafka key (``type/key`` in UTF-8): the key
    with its first "/" made the NUL separator, unless a NUL needs escaping."""
    if b"\x00" in key:
        return _grain_body(grain)
    return key.replace(b"/", b"\x00", 1)


@functools.lru_cache(maxsize=4096)
def grain_db_key(grain: GrainId) -> bytes:
    return _GRAIN_PREFIX + _grain_body(grain)


# The writer's cached head of a grain: sequence, partition, offset, shadowed_by, key body.
Head = tuple[int, int, int, int, bytes]
# In the cache a head is the grain's key body → struct(sequence, partition, offset,
# shadowed_by), b"" for "no state": bytes only, so the dict holds no object the garbage
# collector tracks and stays untracked itself. With tuples, every full collection walked the
# whole cache (30-50 ms of CPU per 300k entries, a loop stall at each one) and each entry cost
# ~380 B instead of ~200 B.
_HEAD: Final = struct.Struct("=QIqq")
_NO_STATE: Final = b""
# What the cache says of a grain: (sequence, partition, offset, shadowed_by) of its state, None
# (no state) or False (not known: read it).
HeadLookup = tuple[int, int, int, int] | None | Literal[False]
# Where the store holds a grain: its key body and the partition of its state (None: no state).
Located = tuple[bytes, int | None]
# A new, unshadowed state the fast fold has encoded for apply(): grain, key body, partition
# of the state it replaces (None: none), its partition, value (_pack_state), head (_HEAD).
Prepared = tuple[GrainId, bytes, int | None, int, bytes, bytes]


def parse_grain_db_key(db_key: bytes) -> GrainId:
    body = db_key[len(_GRAIN_PREFIX) :]
    index = 0
    while True:
        index = body.index(b"\x00", index)
        if body[index + 1 : index + 2] != b"\xff":
            break
        index += 2
    grain_type = body[:index].replace(b"\x00\xff", b"\x00").decode()
    return grain_type, body[index + 1 :].decode()


def shadow_db_key(grain: GrainId) -> bytes:
    return _SHADOW_PREFIX + grain_db_key(grain)[len(_GRAIN_PREFIX) :]


def _partition_prefix(partition: int) -> bytes:
    return _STATE_PREFIX + _PARTITION.pack(partition)


def state_db_key(partition: int, grain: GrainId) -> bytes:
    return _partition_prefix(partition) + grain_db_key(grain)[len(_GRAIN_PREFIX) :]


def index_db_key(grain: GrainId) -> bytes:
    return _INDEX_PREFIX + grain_db_key(grain)[len(_GRAIN_PREFIX) :]


_STATE_KEY_HEAD: Final = len(_STATE_PREFIX) + _PARTITION.size


# Grain value: fixed header (sequence, timestamp, partition, offset, shadowed-by offset,
# u32 len(source)), then the source cluster (UTF-8) and the payload. struct is ~3x faster
# than msgpack here.
_STATE_HEADER: Final = struct.Struct(">QqIQqI")
_SOURCES: dict[str, bytes] = {}  # source cluster → its UTF-8
_SPOTS: dict[int, bytes] = {}  # partition → _PARTITION.pack(partition)


def _source_bytes(source: str) -> bytes:
    encoded = source.encode()
    if len(_SOURCES) < 1024:  # a handful of clusters in practice
        _SOURCES[source] = encoded
    return encoded


def _spot(partition: int) -> bytes:
    """_PARTITION.pack(partition), cached: the partition part of every state key."""
    spot = _SPOTS.get(partition)
    if spot is None:
        spot = _PARTITION.pack(partition)
        if len(_SPOTS) < 65536:
            _SPOTS[partition] = spot
    return spot


def _pack_value(
    sequence: int,
    timestamp_millis: int,
    source_cluster: str,
    payload: bytes,
    partition: int,
    offset: int,
    shadowed_by: int,
) -> bytes:
    source = _SOURCES.get(source_cluster) or _source_bytes(source_cluster)
    header = _STATE_HEADER.pack(
        sequence, timestamp_millis, partition, offset, shadowed_by, len(source)
    )
    return header + source + payload


def _pack_state(state: GrainState) -> bytes:
    return _pack_value(
        state.sequence,
        state.timestamp_millis,
        state.source_cluster,
        state.payload,
        state.partition,
        state.offset,
        state.shadowed_by,
    )


def encode_new_state(
    sequence: int,
    timestamp_millis: int,
    source_cluster: str,
    payload: bytes,
    partition: int,
    offset: int,
) -> tuple[bytes, bytes]:
    """The stored value and the cached head of an unshadowed state (see Prepared)."""
    value = _pack_value(sequence, timestamp_millis, source_cluster, payload, partition, offset, -1)
    return value, _HEAD.pack(sequence, partition, offset, -1)


def _unpack_state(raw: bytes) -> GrainState:
    sequence, timestamp, partition, offset, shadowed_by, source_length = _STATE_HEADER.unpack_from(
        raw
    )
    start = _STATE_HEADER.size
    source = raw[start : start + source_length].decode()
    return GrainState(
        sequence, timestamp, source, raw[start + source_length :], partition, offset, shadowed_by
    )


def _checkpoint_key(partition: int) -> bytes:
    return _CHECKPOINT_PREFIX + _PARTITION.pack(partition)


def _served_key(partition: int) -> bytes:
    return _SERVED_PREFIX + _PARTITION.pack(partition)


def _next_prefix(prefix: bytes) -> bytes:
    """The smallest key above every key starting with ``prefix`` (prefix not all 0xFF)."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1])
