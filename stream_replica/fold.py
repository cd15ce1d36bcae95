"""The fold: one poll's records → each grain's final state. Pure: no I/O, no clock.

Rules (per grain, records in offset order within a partition):

* FullState with a sequence above the current one (or no current state) becomes the state.
  Equal sequence: a redelivery; the later record wins, as it does when the log cleaner
  keeps only the last record of a key (a differing payload is reported as a warning).
  Lower sequence: stale, ignored.
* Tombstone: the grain is removed; a later FullState (any sequence) starts afresh.
* Delta and invalid records: refused, never applied, and they do not stop anything else.

Shadowing: a record the fold refuses or ignores (Delta, invalid value, lower sequence) that
comes after a grain's state on the same key *shadows* that state: once the cleaner runs, the
log's last record for the key is one a rebuild will not turn into that state. The fold marks
the state (``shadowed_by``) and reports it; the worker counts it, and can repair it by
re-publishing the state (``--repair-shadowed``). With equal sequences resolved as the cleaner
does, a replica rebuilt from a compacted log equals the live one for every grain that is not
shadowed (tests/test_compaction.py checks it on a broker whose cleaner really runs).

Only the final state of each grain is returned, so intermediates are never written. The result
equals applying the records one by one (tests/test_fold.py proves it with hypothesis).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
    # Offset of the latest record on this grain's key that the fold refused or ignored after
    # this state was set (-1: none). Not part of equality: it is bookkeeping about the log,
    # not the grain's state.
    shadowed_by: int = field(default=-1, compare=False)

    @property
    def shadowed(self) -> bool:
        return self.shadowed_by >= 0


def grain_json(grain: GrainId, state: GrainState) -> dict[str, Any]:
    """The JSON form of a grain's state, as ``get``, ``dump`` and the HTTP API show it."""
    return {
        "grain_type": grain[0],
        "grain_key": grain[1],
        "sequence": state.sequence,
        "timestamp_millis": state.timestamp_millis,
        "source_cluster": state.source_cluster,
        "payload": base64.b64encode(state.payload).decode(),
        "partition": state.partition,
        "offset": state.offset,
        **({"shadowed_by_offset": state.shadowed_by} if state.shadowed else {}),
    }


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
    shadows_offset: int | None = None  # offset of the grain state this record shadows


ShadowKind = Literal["delta", "invalid", "stale"]


@dataclass(slots=True, frozen=True)
class Shadowing:
    """A held state became shadowed: the record at ``by_offset`` is now the last on the key."""

    grain: GrainId
    partition: int
    state_offset: int
    by_offset: int
    kind: ShadowKind
    first: bool  # the state was not shadowed before (log once per grain)


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
    shadowed: int = 0  # times a held state became shadowed (see the module docstring)

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
    # states that became shadowed in this poll (a grain may appear once per shadowing record)
    shadowed: list[Shadowing] = field(default_factory=list)
    # grains whose stored state was shadowed and no longer is (new state, repair or deletion)
    unshadowed: set[GrainId] = field(default_factory=set)


_ABSENT = object()


def fold(records: Iterable[Polled], stored: Mapping[GrainId, GrainState | None]) -> FoldResult:
    """Fold one poll. ``stored`` must hold the current state of every grain the records name
    (missing or None = no state)."""
    result = FoldResult()
    counts = result.counts
    pending: dict[GrainId, GrainState | None] = {}
    # grains whose pending state was set by a FullState of this poll and not yet written
    unwritten_applied: set[GrainId] = set()

    def shadow(grain: GrainId, current: GrainState, record: Polled, kind: ShadowKind) -> bool:
        """The refused or ignored ``record`` is now the last on the key of ``current``."""
        if record.partition != current.partition:
            return False  # another partition's log: compacting it cannot remove the state
        if record.offset <= current.offset:
            return False  # re-read from before the state (a replay): the state is the later
        first = not current.shadowed
        counts.shadowed += first
        result.shadowed.append(
            Shadowing(grain, record.partition, current.offset, record.offset, kind, first)
        )
        pending[grain] = replace(current, shadowed_by=record.offset)
        return True

    for record in records:
        counts.records += 1
        next_offset = record.offset + 1
        if result.next_offsets.get(record.partition, -1) < next_offset:
            result.next_offsets[record.partition] = next_offset
        body = record.body

        if isinstance(body, ContractError):
            counts.invalid += 1
            rejection = Rejection(record, "invalid", body.reason, body.grain)
            result.rejected.append(rejection)
            if body.grain is not None:
                held = _current(body.grain, pending, stored)
                if held is not None and shadow(body.grain, held, record, "invalid"):
                    rejection.shadows_offset = held.offset
            continue

        grain = body.grain
        current = _current(grain, pending, stored)

        if isinstance(body, Tombstone):
            counts.tombstones += 1
            pending[grain] = None
            if grain in unwritten_applied:
                counts.intermediates_dropped += 1
                unwritten_applied.discard(grain)
            continue

        if body.entry_type is EntryType.DELTA:
            counts.deltas_refused += 1
            rejection = Rejection(
                record,
                "delta",
                f"Delta entries are not supported (sequence {body.sequence}); never applied",
                grain,
            )
            result.rejected.append(rejection)
            if current is not None and shadow(grain, current, record, "delta"):
                rejection.shadows_offset = current.offset
            continue

        if current is None or body.sequence > current.sequence:
            counts.applied += 1
            if grain in unwritten_applied:
                counts.intermediates_dropped += 1
            unwritten_applied.add(grain)
        elif body.sequence == current.sequence:
            counts.duplicates += 1
            if record.partition == current.partition and record.offset <= current.offset:
                continue  # re-read from before the state (a replay): the state is the later
            if body.payload != current.payload:
                result.warnings.append(
                    f"grain {grain[0]}/{grain[1]}: sequence {body.sequence} redelivered at "
                    f"partition {record.partition} offset {record.offset} with a different "
                    f"payload; the later record wins (as in a compacted log), replacing the "
                    f"state from offset {current.offset}"
                )
        else:
            counts.stale += 1
            shadow(grain, current, record, "stale")
            continue
        pending[grain] = GrainState(
            body.sequence,
            body.timestamp_millis,
            body.source_cluster,
            body.payload,
            record.partition,
            record.offset,
        )

    for grain, final in pending.items():
        # Identity, not equality: pending holds either a new GrainState or None (deleted).
        before = stored.get(grain)
        if final is not before:
            result.changes[grain] = final
            if before is not None and before.shadowed and (final is None or not final.shadowed):
                result.unshadowed.add(grain)
    return result


def _current(
    grain: GrainId,
    pending: Mapping[GrainId, GrainState | None],
    stored: Mapping[GrainId, GrainState | None],
) -> GrainState | None:
    current = pending.get(grain, _ABSENT)
    if current is _ABSENT:
        return stored.get(grain)
    assert current is None or isinstance(current, GrainState)
    return current
