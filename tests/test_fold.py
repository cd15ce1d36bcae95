"""The pure fold: batch result == applying records one by one, whatever the batch boundaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_replica.contract import ContractError, Entry, EntryType, GrainId, Tombstone
from stream_replica.fold import GrainState, Polled, fold
from tests.oracle import apply_one

Store = dict[GrainId, GrainState]


def entry(grain: str, sequence: int, payload: bytes = b"p", delta: bool = False) -> Entry:
    kind = EntryType.DELTA if delta else EntryType.FULL_STATE
    return Entry("t", grain, sequence, sequence * 10, "src", kind, payload)


def records(
    bodies: list[Entry | Tombstone | ContractError], partition: int = 0, start: int = 0
) -> list[Polled]:
    return [
        Polled(partition, offset, None, None, body) for offset, body in enumerate(bodies, start)
    ]


def apply_batch(store: Store, batch: list[Polled]) -> None:
    result = fold(batch, store)
    for grain, state in result.changes.items():
        if state is None:
            store.pop(grain, None)
        else:
            store[grain] = state


def test_delta_in_the_middle_does_not_block_other_grains() -> None:
    batch = records([entry("a", 1), entry("b", 1), entry("a", 2, delta=True), entry("c", 1)])
    result = fold(batch, {})
    assert set(result.changes) == {("t", "a"), ("t", "b"), ("t", "c")}
    assert result.changes[("t", "a")].sequence == 1  # type: ignore[union-attr]
    assert result.counts.deltas_refused == 1
    assert [r.record.offset for r in result.rejected] == [2]
    assert result.next_offsets == {0: 4}


def test_full_state_after_delta_is_applied() -> None:
    result = fold(records([entry("a", 5, delta=True), entry("a", 6, b"new")]), {})
    state = result.changes[("t", "a")]
    assert state is not None and state.sequence == 6 and state.payload == b"new"


def test_only_final_state_is_written_and_intermediates_counted() -> None:
    result = fold(records([entry("a", 1), entry("a", 2), entry("a", 3)]), {})
    assert result.changes[("t", "a")].offset == 2  # type: ignore[union-attr]
    assert result.counts.applied == 3
    assert result.counts.intermediates_dropped == 2


def test_equal_sequence_later_record_wins_and_warns_on_different_payload() -> None:
    # As in a compacted log, where only the last record of the key survives.
    stored: Store = {("t", "a"): GrainState(4, 0, "src", b"orig", 0, 9)}
    result = fold(records([entry("a", 4, b"orig"), entry("a", 4, b"other")], start=10), stored)
    state = result.changes[("t", "a")]
    assert state is not None and state.payload == b"other" and state.offset == 11
    assert result.counts.duplicates == 2
    assert len(result.warnings) == 1 and "different payload" in result.warnings[0]


def test_lower_sequence_is_stale_and_shadows_the_state() -> None:
    stored: Store = {("t", "a"): GrainState(4, 0, "src", b"orig", 0, 0)}
    result = fold(records([entry("a", 1), entry("a", 3)], start=1), stored)
    state = result.changes[("t", "a")]
    assert state is not None and state.sequence == 4 and state.payload == b"orig"
    assert state.shadowed_by == 2
    assert result.counts.stale == 2
    assert result.counts.shadowed == 1  # a grain's state counts once until it changes
    assert [(s.state_offset, s.by_offset, s.kind) for s in result.shadowed] == [
        (0, 1, "stale"),
        (0, 2, "stale"),
    ]


def test_delta_and_invalid_after_a_state_shadow_it_and_name_its_offset() -> None:
    bad = ContractError("payload: expected bin", ("t", "a"))
    result = fold(records([entry("a", 1), entry("a", 2, delta=True), bad]), {})
    state = result.changes[("t", "a")]
    assert state is not None and state.sequence == 1 and state.shadowed_by == 2
    assert [r.shadows_offset for r in result.rejected] == [0, 0]
    assert [s.kind for s in result.shadowed] == ["delta", "invalid"]


def test_refused_record_without_a_held_state_shadows_nothing() -> None:
    bad = ContractError("payload: expected bin", ("t", "a"))
    result = fold(records([entry("a", 2, delta=True), bad, Tombstone("t", "b")]), {})
    assert result.changes == {} and result.shadowed == []
    assert [r.shadows_offset for r in result.rejected] == [None, None]


def test_a_new_state_or_a_tombstone_clears_shadowing() -> None:
    shadowed = GrainState(4, 0, "src", b"orig", 0, 0, shadowed_by=1)
    for body, expected in (
        (entry("a", 4, b"orig"), 4),
        (entry("a", 5), 5),
        (Tombstone("t", "a"), None),
    ):
        result = fold([Polled(0, 2, None, None, body)], {("t", "a"): shadowed})
        state = result.changes[("t", "a")]
        assert (state.sequence if state else None) == expected
        assert state is None or not state.shadowed
        assert result.unshadowed == {("t", "a")}


def test_records_of_another_partition_do_not_shadow() -> None:
    stored: Store = {("t", "a"): GrainState(4, 0, "src", b"orig", 0, 0)}
    result = fold(records([entry("a", 2, delta=True), entry("a", 1)], partition=1), stored)
    assert result.changes == {} and result.shadowed == []


def test_tombstone_then_recreate_with_any_sequence() -> None:
    stored: Store = {("t", "a"): GrainState(40, 0, "src", b"orig", 0, 9)}
    result = fold(records([Tombstone("t", "a"), entry("a", 1, b"fresh")]), stored)
    state = result.changes[("t", "a")]
    assert state is not None and state.sequence == 1 and state.payload == b"fresh"
    assert fold(records([Tombstone("t", "a")]), stored).changes == {("t", "a"): None}


def test_invalid_record_is_rejected_and_offset_advances() -> None:
    bad = ContractError("sequence: Field required", ("t", "a"))
    result = fold(records([bad, entry("b", 1)]), {})
    assert result.counts.invalid == 1
    assert result.rejected[0].kind == "invalid" and result.rejected[0].grain == ("t", "a")
    assert result.next_offsets == {0: 2}


# --- property: batching never changes the outcome ---------------------------------------------

bodies = st.one_of(
    st.builds(
        entry,
        st.sampled_from("abcd"),
        st.integers(1, 6),
        st.sampled_from([b"x", b"y"]),
        st.booleans(),
    ),
    st.builds(Tombstone, st.just("t"), st.sampled_from("abcd")),
    st.builds(ContractError, st.just("bad"), st.none()),
)
# Every record names a grain through its key (the cleaner compacts by key).
keyed_bodies = st.one_of(
    st.builds(
        entry,
        st.sampled_from("abc"),
        st.integers(1, 4),
        st.sampled_from([b"x", b"y"]),
        st.booleans(),
    ),
    st.builds(Tombstone, st.just("t"), st.sampled_from("abc")),
    st.builds(lambda k: ContractError("bad", ("t", k)), st.sampled_from("abc")),
)


@settings(max_examples=600)
@given(
    st.lists(st.tuples(st.integers(0, 2), bodies), max_size=60),
    st.lists(st.integers(1, 12), min_size=1, max_size=30),
)
def test_fold_equals_sequential_application(
    stream: list[tuple[int, Entry | Tombstone | ContractError]], cuts: list[int]
) -> None:
    offsets: dict[int, int] = {}
    polled = []
    for partition, body in stream:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        polled.append(Polled(partition, offset, None, None, body))

    expected: Store = {}
    for record in polled:
        apply_one(expected, record)

    actual: Store = {}
    position, cut_index = 0, 0
    while position < len(polled):
        size = cuts[cut_index % len(cuts)]
        apply_batch(actual, polled[position : position + size])
        position += size
        cut_index += 1
    assert actual == expected
    assert {g: s.shadowed_by for g, s in actual.items()} == shadow_marks(polled)


def shadow_marks(polled: list[Polled]) -> dict[GrainId, int]:
    """Independent model of shadowing: a grain's state is shadowed by the last record on its
    key (same partition) after the record that set it, when that record is not a state."""
    expected: Store = {}
    for record in polled:
        apply_one(expected, record)
    marks = {}
    for grain, state in expected.items():
        later = [
            r.offset
            for r in polled
            if r.partition == state.partition and r.offset > state.offset and _grain_of(r) == grain
        ]
        marks[grain] = max(later, default=-1)
    return marks


def _grain_of(record: Polled) -> GrainId | None:
    return record.body.grain


# --- property: a rebuild from the compacted log equals the live replica -----------------------


def compacted(polled: list[Polled]) -> list[Polled]:
    """What the log cleaner leaves at most: the last record of each key (per partition)."""
    last: dict[tuple[int, GrainId | None], Polled] = {}
    for record in polled:
        grain = _grain_of(record)
        if grain is None:
            continue  # unparseable keys: not a key any grain's record has
        last[(record.partition, grain)] = record
    return sorted(last.values(), key=lambda r: (r.partition, r.offset))


@settings(max_examples=600)
@given(st.lists(keyed_bodies, max_size=50))
def test_rebuild_after_compaction_equals_live_except_shadowed_grains(
    stream: list[Entry | Tombstone | ContractError],
) -> None:
    offsets: dict[int, int] = {}
    polled = []
    for body in stream:
        grain = _grain_of(Polled(0, 0, None, None, body))
        assert grain is not None
        partition = {"a": 0, "b": 1, "c": 0}[grain[1]]  # a key always maps to one partition
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        polled.append(Polled(partition, offset, None, None, body))
    live: Store = {}
    apply_batch(live, polled)
    rebuilt: Store = {}
    apply_batch(rebuilt, compacted(polled))
    healthy = {g: s for g, s in live.items() if not s.shadowed}
    assert {g: s for g, s in rebuilt.items() if g in healthy or g not in live} == healthy
    for grain, state in live.items():
        if state.shadowed:  # what a rebuild would get is not the live state: reported
            assert rebuilt.get(grain) != state


def test_records_re_read_from_before_the_state_change_nothing() -> None:
    """A replay without --rebuild re-reads records older than the held state: a lower or
    equal sequence, a Delta or an invalid record there neither shadows the state (it comes
    before it in the log, so compaction keeps the state) nor replaces it."""
    held = GrainState(7, 0, "src", b"later", 0, 30)
    stored: Store = {("t", "a"): held}
    bodies: list[Entry | Tombstone | ContractError] = [
        entry("a", 5),
        entry("a", 6, delta=True),
        ContractError("bad", ("t", "a")),
        entry("a", 7, payload=b"earlier"),
    ]
    result = fold(records(bodies), stored)  # offsets 0..3, all before 30
    assert result.changes == {} and result.shadowed == [] and result.warnings == []
    assert [r.shadows_offset for r in result.rejected] == [None, None]
    assert (result.counts.stale, result.counts.duplicates) == (1, 1)
    after = Polled(0, 31, None, None, entry("a", 5))  # after the state: it does shadow it
    assert [s.by_offset for s in fold([after], stored).shadowed] == [31]
