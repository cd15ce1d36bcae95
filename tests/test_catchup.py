"""Catching up a few partitions at a time (catchup.py), and why: with the assignor, a worker
joining meanwhile is given only partitions nobody has read yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_replica.assignor import MemberState, StoreOffsets, assign
from stream_replica.catchup import CatchUpFocus
from stream_replica.consumer import reads_committed_only
from stream_replica.offsets import readable_end
from stream_replica.settings import WorkerSettings


def test_half_of_the_partitions_far_behind_are_read_first_the_most_advanced_first() -> None:
    focus = CatchUpFocus(None, min_lag=100)
    lags = {0: 500, 1: 500, 2: 50, 3: 500, 4: 500, 5: 500, 6: 500}
    paused = focus.assigned(lags, held={3: 40, 4: 10, 6: 5})
    # 2 is within min_lag (read at once); of the six far behind, half: the most advanced.
    assert focus.focus == [3, 4, 6]
    assert paused == frozenset({0, 1, 5}) == focus.paused
    # Three far behind: none is left to be read alone at the end, so nothing is paused.
    assert CatchUpFocus(None).assigned({0: 10**6, 1: 10**6, 2: 10**6}) == frozenset()
    five = CatchUpFocus(None, min_lag=0)
    assert five.assigned({p: 9 for p in range(5)}) == frozenset({2, 3, 4})
    assert five.progressed({0: 0}) == [2]
    assert five.progressed({1: 0}) == [3, 4]  # not 4 alone after the others
    assert five.paused == frozenset()


def test_a_partition_within_min_lag_hands_its_place_on() -> None:
    focus = CatchUpFocus(1, min_lag=100)
    assert focus.assigned({0: 1000, 1: 1000, 2: 1000}) == frozenset({1, 2})
    assert focus.progressed({0: 101}) == []
    assert focus.progressed({0: 100}) == [1]
    assert focus.progressed({0: 0, 1: 5}) == [2]
    assert focus.paused == frozenset()
    assert focus.progressed({2: 0}) == []


def test_width_zero_pauses_nothing_and_revocation_forgets() -> None:
    assert CatchUpFocus(0).assigned({0: 10**9, 1: 10**9}) == frozenset()
    focus = CatchUpFocus(1, min_lag=0)
    focus.assigned({0: 5, 1: 5, 2: 5})
    focus.revoked([1])
    assert focus.paused == frozenset({2})
    with pytest.raises(ValueError):
        CatchUpFocus(-1)


@settings(max_examples=300, deadline=None)
@given(
    partitions=st.integers(min_value=1, max_value=24),
    members=st.integers(min_value=1, max_value=4),
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=24, max_size=24),
    steps=st.lists(st.integers(min_value=0, max_value=23), max_size=200),
)
def test_a_joiner_is_given_only_partitions_nobody_read(
    partitions: int, members: int, sizes: list[int], steps: list[int]
) -> None:
    """n members each catch up their share of fresh partitions with CatchUpFocus(None),
    reading in any interleaving; at any moment a new member with no store joins. The
    assignor moves to it none of the partitions a member has read whenever that member has
    read no more partitions than it may keep: at most half of its share, i.e. until it has
    finished half of it."""
    n = min(members, partitions)
    ends = {p: 20 + sizes[p] * 10 for p in range(partitions)}
    shares = [list(range(partitions))[i::n] for i in range(n)]
    focus = [CatchUpFocus(None, min_lag=10) for _ in range(n)]
    for i, share in enumerate(shares):
        focus[i].assigned({p: ends[p] for p in share})
    offsets: dict[int, int] = {}
    for step in steps:
        member = step % n
        reading = [p for p in shares[member] if p not in focus[member].paused]
        behind = [p for p in reading if offsets.get(p, 0) < ends[p]]
        if not behind:
            continue
        p = behind[step % len(behind)]
        offsets[p] = min(ends[p], offsets.get(p, 0) + 7)
        focus[member].progressed({p: ends[p] - offsets[p]})
        # At most the focus width (half the share, rounded up) is part read at any time.
        part_read = [q for q in shares[member] if 0 < offsets.get(q, 0) < ends[q] - 10]
        assert len(part_read) <= max(2, len(shares[member]) // 2) + 1

    states = [
        MemberState(
            f"m{i}",
            stores={p: StoreOffsets(offsets[p], 0) for p in share if p in offsets},
            active=frozenset(share),
            epoch=1,
        )
        for i, share in enumerate(shares)
    ]
    joiner = MemberState("zz-joiner")
    plan = assign([*states, joiner], partitions, end_offsets=ends)
    given_to_joiner = set(plan.members["zz-joiner"].active)
    keep = partitions // (n + 1)  # what every member may keep at least
    for i, share in enumerate(shares):
        read = {p for p in share if p in offsets}
        if len(read) <= keep:
            assert not (read & given_to_joiner), (i, read, given_to_joiner)


class _OpenTransaction:
    """What the broker reports with a transaction of 5 records open: the last stable offset
    0, for either isolation level."""

    def highwater(self, tp: TopicPartition) -> int:
        return 5

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return 0


def test_the_readable_end_is_the_last_stable_offset_only_reading_committed_records() -> None:
    consumer: Any = _OpenTransaction()
    tp = TopicPartition("t", 0)
    assert readable_end(consumer, tp, committed_only=True) == 0
    assert readable_end(consumer, tp, committed_only=False) == 5


def test_the_worker_reads_committed_records_unless_told_otherwise(tmp_path: Path) -> None:
    assert reads_committed_only(WorkerSettings(db=tmp_path / "db"))
    given_otherwise = ["isolation_level=read_uncommitted"]
    assert not reads_committed_only(
        WorkerSettings(db=tmp_path / "db", kafka_option=given_otherwise)
    )
