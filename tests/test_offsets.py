"""offsets.py without a broker: resume rules, caught-up bookkeeping, and the commit book
(the group's committed offset never moves backwards)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_replica.offsets import (
    CommitBook,
    EndOffset,
    Flushing,
    Resume,
    advance,
    resume_from,
)
from stream_replica.store import Checkpoint

HOUR_MS = 3_600_000


def test_resume_from_the_checkpoint_or_rebuild() -> None:
    now = 10 * HOUR_MS
    fresh = Checkpoint(50, now - 1000)
    assert resume_from(fresh, 0, 80, now, HOUR_MS) == Resume(50, False, None)
    missing = resume_from(None, 7, 80, now, HOUR_MS)
    assert (missing.offset, missing.wipe) == (7, False) and "no local state" in str(missing.reason)
    assert "rebuilding from the beginning" in str(missing.reason)
    empty = resume_from(None, 7, 7, now, HOUR_MS)  # nothing to rebuild, none said
    assert empty == Resume(7, False, "no local state, the partition is empty (offset 7)")
    below = resume_from(Checkpoint(3, now), 7, 80, now, HOUR_MS)
    assert (below.offset, below.wipe) == (7, True) and "below the log start" in str(below.reason)
    past = resume_from(Checkpoint(90, now), 0, 80, now, HOUR_MS)
    assert past.wipe and "past the end offset" in str(past.reason)
    old = Checkpoint(50, now - 2 * HOUR_MS)
    assert resume_from(old, 0, 80, now, HOUR_MS).wipe  # tombstones may be gone
    assert resume_from(Checkpoint(80, now - 2 * HOUR_MS), 0, 80, now, HOUR_MS).reason is None


def test_advance_refreshes_caught_up_time_at_the_high_watermark() -> None:
    caught_up_at = {0: 5, 1: 5, 3: 5}
    # 3: the broker confirmed its end at 400, then went quiet (unreachable): caught up as of
    # 400, not as of now
    marks = {0: EndOffset(100, 1_000), 1: EndOffset(300, 1_000), 3: EndOffset(7, 400)}
    checkpoints = advance({0: 100, 1: 200, 2: 9, 3: 7}, marks.get, caught_up_at, 1_000)
    assert checkpoints == {
        0: Checkpoint(100, 1_000),
        1: Checkpoint(200, 5),
        2: Checkpoint(9, 1_000),
        3: Checkpoint(7, 400),
    }
    assert caught_up_at == {0: 1_000, 1: 5, 2: 1_000, 3: 400}  # 2: first seen, from now


def test_a_store_behind_the_group_commits_only_once_past_it() -> None:
    book = CommitBook()
    book.assigned(0, 500)  # the previous owner committed 500
    book.written(0, 120)  # this store is at 120: reads from there ...
    assert book.behind(0, 120) == 380
    assert book.due([0]) == {} and not book  # ... and does not rewind the group
    book.written(0, 500)
    assert book.due([0]) == {}
    book.written(0, 501)
    assert book.due([0]) == {0: 501}
    book.committed({0: 501})
    assert book.due([0]) == {} and book.floor(0) == 501


def test_never_committed_partition_commits_its_first_write() -> None:
    book = CommitBook()
    book.assigned(3, None)
    book.written(3, 0)
    assert book.due([3]) == {3: 0}


def test_partitions_no_longer_owned_are_not_committed() -> None:
    book = CommitBook()
    for p in (0, 1):
        book.assigned(p, None)
        book.written(p, 10)
    assert book.due([1]) == {1: 10}
    assert book.due([0, 1]) == {1: 10}  # 0 was forgotten when it was no longer owned
    assert book.due([1], partitions=[0]) == {}


def test_a_later_write_during_a_commit_stays_pending() -> None:
    book = CommitBook()
    book.assigned(0, None)
    book.written(0, 10)
    due = book.due([0])
    book.written(0, 20)  # the next poll, written while the commit of 10 was in flight
    book.committed(due)
    assert book.due([0]) == {0: 20}


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("assigned"), st.integers(-1, 1_000)),
            st.tuples(st.just("written"), st.integers(0, 1_000)),
            st.tuples(st.just("commit"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_committed_offsets_never_go_backwards(ops: list[tuple[str, int]]) -> None:
    """Whatever the order of assignments (with the group's offset then), writes and commits,
    the offsets handed out for commit only rise above what the group had."""
    book = CommitBook()
    group = -1  # the group's committed offset as the broker holds it
    for op, value in ops:
        if op == "assigned":
            group = max(group, value)  # another owner may have moved it meanwhile
            book.assigned(0, None if group < 0 else group)
        elif op == "written":
            book.written(0, value)
        else:
            due = book.due([0])
            if due:
                assert due[0] > group, (due, group)
                group = due[0]
                book.committed(due)


def test_while_held_only_flushed_offsets_are_due() -> None:
    book = CommitBook()
    book.assigned(0, 5)
    book.hold()  # the store writes without its WAL
    book.written(0, 10)
    assert book.due([0]) == {} and not book
    flushing = book.flushing()  # a flush starts: it persists offset 10
    book.written(0, 20)  # written during the flush: not covered by it
    book.persisted(flushing)
    assert book.due([0]) == {0: 10} and book
    book.committed({0: 10})
    assert book.due([0]) == {} and not book  # 20 waits for the next flush
    book.release()  # flushed and the WAL on again: everything written is durable
    assert book.due([0]) == {0: 20}


def test_a_reassigned_partition_forgets_what_was_flushed() -> None:
    book = CommitBook()
    book.assigned(0, None)
    book.hold()
    book.written(0, 10)
    book.persisted(book.flushing())
    book.assigned(0, None)  # revoked and assigned again: its store may read from elsewhere
    book.written(0, 4)
    assert book.due([0]) == {}


@pytest.mark.parametrize("moved", ["assigned", "forgotten"])
def test_a_flush_begun_before_a_reassignment_does_not_cover_the_new_tenure(moved: str) -> None:
    """A flush snapshot taken while the partition was at offset 10; the partition is revoked
    (its commit failed) and assigned again, its store wiped and rebuilt to 12 without the WAL.
    The flush finishing now persisted the old store, not the rebuilt one: nothing is due."""
    book = CommitBook()
    book.assigned(0, None)
    book.hold()
    book.written(0, 10)
    flushing = book.flushing()
    if moved == "forgotten":
        book.forget(0)
    book.assigned(0, None)
    book.written(0, 12)
    book.persisted(flushing)
    assert book.due([0]) == {} and not book
    book.persisted(book.flushing())  # a flush begun in this tenure covers it
    assert book.due([0]) == {0: 12}


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("assigned"), st.integers(-1, 1_000)),
            st.tuples(st.just("written"), st.integers(0, 1_000)),
            st.sampled_from(
                [
                    (op, 0)
                    for op in (
                        *("commit", "hold", "flush", "release", "forget"),
                        *("flush_start", "flush_end"),
                    )
                ]
            ),
        ),
        max_size=40,
    )
)
def test_commits_are_never_ahead_of_a_flush_while_held(ops: list[tuple[str, int]]) -> None:
    """With the WAL off, an offset is committed only if a flush covered it; with it on, any
    written offset is; either way the group's offset only rises. A flush that spans an
    assignment or a forget covers nothing of the new tenure."""
    book = CommitBook()
    group = -1
    held = False
    flushed = -1  # the highest offset a flush since the assignment persisted
    in_flight: Flushing | None = None  # a flush begun, not yet finished
    in_flight_current = False  # no assignment nor forget since it began
    for op, value in ops:
        if op in ("assigned", "forget"):
            if op == "assigned":
                group = max(group, value)
                book.assigned(0, None if group < 0 else group)
            else:
                book.forget(0)
            flushed = -1
            in_flight_current = False
        elif op == "flush_start" and in_flight is None:
            in_flight, in_flight_current = book.flushing(), True
        elif op == "flush_end" and in_flight is not None:
            book.persisted(in_flight)
            if in_flight_current:
                flushed = max(flushed, in_flight.offset(0))
            in_flight = None
        elif op == "written":
            book.written(0, value)
        elif op == "hold":
            held = True
            book.hold()
        elif op == "release":
            held = False
            book.release()
        elif op == "flush":
            snapshot = book.flushing()
            book.persisted(snapshot)
            flushed = max(flushed, snapshot.offset(0))
        else:
            due = book.due([0])
            assert bool(book) == bool(due)
            if due:
                assert due[0] > group, (due, group)
                if held:
                    assert due[0] <= flushed, (due, flushed)
                group = due[0]
                book.committed(due)


async def test_past_control_records_takes_positions_only_where_the_consumer_is_ahead() -> None:
    from aiokafka import TopicPartition

    from stream_replica.offsets import past_control_records

    class Consumer:
        ends = {0: 10, 1: 10, 2: 10, 3: None}
        positions = {0: 10, 1: 7, 2: 10, 3: 5}

        def highwater(self, tp: TopicPartition) -> int | None:
            return self.ends[tp.partition]

        async def position(self, tp: TopicPartition) -> int:
            return self.positions[tp.partition]

    held = {0: 9, 1: 7, 2: 10, 3: 4}  # 0: a marker at 9; 1: nothing stepped over; 2: at end
    moved = await past_control_records(Consumer(), "t", held, [0, 1, 2, 3])  # type: ignore[arg-type]
    assert moved == {0: 10}  # 3: end offset unknown yet, left alone
