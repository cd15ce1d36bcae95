"""The fold: one poll's records → each grain's final state. Pure: no I/O, no clock.

Rules (per grain, records in offset order within a partition):

* FullState with a sequence above the current one (or no current state) becomes the state.
  Equal sequence: an idempotent redelivery, the current state stays (a differing payload
  is reported as a warning). Lower sequence: stale, ignored.
* Tombstone: the grain is removed; a later FullState (any sequence) starts afresh.
* Delta and invalid records: refused, never applied, and they do not stop anything else.

Only the final state of each grain is returned, so intermediates are never written. The result
equals applying the records one by one (tests/test_fold.py proves it with hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from stream_replica.contract import ContractError, Entry, EntryType, GrainId, Tombstone


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3x on the hot path
class GrainState:
    """What the replica holds for one grain; ``offset`` is that of the record that set it."""

    sequence: int
    timestamp_millis: int
    source_cluster: str
    payload: bytes
    partition: int
    offset: int


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3x on the hot path
class Polled:
    """One fetched record after decoding. ``key``/``value`` are the raw bytes (for the DLQ)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    body: Entry | Tombstone | ContractError


RejectKind = Literal["delta", "invalid"]


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3x on the hot path
class Rejection:
    record: Polled
    kind: RejectKind
    reason: str
    grain: GrainId | None


@dataclass(slots=True)
class FoldCounts:
    records: int = 0
    applied: int = 0  # FullStates that became a grain's state
    intermediates_dropped: int = 0  # of those, superseded within the same poll (not written)
    duplicates: int = 0
    stale: int = 0
    tombstones: int = 0
    deltas_refused: int = 0
    invalid: int = 0

    def add(self, other: FoldCounts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class FoldResult:
    # grain → new state, or None to delete it. Only grains whose state changed.
    changes: dict[GrainId, GrainState | None] = field(default_factory=dict)
    # partition → offset after the last record of the poll (the next offset to read)
    next_offsets: dict[int, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    counts: FoldCounts = field(default_factory=FoldCounts)
    warnings: list[str] = field(default_factory=list)


_ABSENT = object()


def fold(records: Iterable[Polled], stored: Mapping[GrainId, GrainState | None]) -> FoldResult:
    """Fold one poll. ``stored`` must hold the current state of every grain the records name
    (missing or None = no state)."""
    result = FoldResult()
    counts = result.counts
    pending: dict[GrainId, GrainState | None] = {}
    # grains whose pending state was set by a FullState of this poll and not yet written
    unwritten_applied: set[GrainId] = set()

    for record in records:
        counts.records += 1
        next_offset = record.offset + 1
        if result.next_offsets.get(record.partition, -1) < next_offset:
            result.next_offsets[record.partition] = next_offset
        body = record.body

        if isinstance(body, ContractError):
            counts.invalid += 1
            result.rejected.append(Rejection(record, "invalid", body.reason, body.grain))
            continue

        grain = body.grain
        current = pending.get(grain, _ABSENT)
        if current is _ABSENT:
            current = stored.get(grain)
        assert current is None or isinstance(current, GrainState)

        if isinstance(body, Tombstone):
            counts.tombstones += 1
            pending[grain] = None
            if grain in unwritten_applied:
                counts.intermediates_dropped += 1
                unwritten_applied.discard(grain)
            continue

        if body.entry_type is EntryType.DELTA:
            counts.deltas_refused += 1
            result.rejected.append(
                Rejection(
                    record,
                    "delta",
                    f"Delta entries are not supported (sequence {body.sequence}); never applied",
                    grain,
                )
            )
            continue

        if current is None or body.sequence > current.sequence:
            counts.applied += 1
            if grain in unwritten_applied:
                counts.intermediates_dropped += 1
            unwritten_applied.add(grain)
            pending[grain] = GrainState(
                body.sequence,
                body.timestamp_millis,
                body.source_cluster,
                body.payload,
                record.partition,
                record.offset,
            )
        elif body.sequence == current.sequence:
            counts.duplicates += 1
            if body.payload != current.payload:
                result.warnings.append(
                    f"grain {grain[0]}/{grain[1]}: sequence {body.sequence} redelivered at "
                    f"partition {record.partition} offset {record.offset} with a different "
                    f"payload; kept the state from offset {current.offset}"
                )
        else:
            counts.stale += 1

    for grain, final in pending.items():
        # Identity, not equality: pending holds either a new GrainState or None (deleted).
        if final is not stored.get(grain):
            result.changes[grain] = final
    return result
