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


def records(bodies: list[Entry | Tombstone | ContractError], partition: int = 0) -> list[Polled]:
    return [Polled(partition, offset, None, None, body) for offset, body in enumerate(bodies)]


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


def test_duplicate_keeps_state_and_warns_on_different_payload() -> None:
    stored: Store = {("t", "a"): GrainState(4, 0, "src", b"orig", 0, 9)}
    result = fold(records([entry("a", 4, b"orig"), entry("a", 4, b"other")]), stored)
    assert result.changes == {}
    assert result.counts.duplicates == 2
    assert len(result.warnings) == 1 and "different payload" in result.warnings[0]


def test_lower_sequence_is_stale() -> None:
    stored: Store = {("t", "a"): GrainState(4, 0, "src", b"orig", 0, 9)}
    result = fold(records([entry("a", 3)]), stored)
    assert result.changes == {}
    assert result.counts.stale == 1


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
