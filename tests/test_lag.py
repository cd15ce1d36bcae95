"""lag.py without a broker: what a partition's lag is measured against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream_replica.lag import LagTracker
from stream_replica.ownership import now_ms
from stream_replica.positions import Positions
from stream_replica.store import ReplicaStore

TOPIC = "t"


class FetchedSome:
    """A consumer that has fetched partition 0 (end 100) and not partition 1 (paused)."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}

    def highwater(self, tp: TopicPartition) -> int | None:
        return 100 if tp.partition == 0 else None

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.highwater(tp)  # no transaction open

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return now_ms() if tp.partition == 0 else None


class NoStandbys:
    def marks(self) -> dict[int, Any]:
        return {}

    def lags(self) -> dict[int, int]:
        return {}


def test_a_partition_not_fetched_yet_lags_behind_the_end_listed_at_assignment(
    tmp_path: Path,
) -> None:
    """A partition paused for a catch-up reported lag 0 (no fetch, no end offset): lag
    alerts and dashboards saw half the backlog during every rebuild."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    try:
        positions = Positions(TOPIC, next={0: 40, 1: 0}, listed_ends={0: 90, 1: 30_000})
        tracker = LagTracker(TOPIC, store, positions, NoStandbys(), 15.0)  # type: ignore[arg-type]
        consumer: Any = FetchedSome()
        rows = tracker.rows(consumer)
        assert (rows[0].end_offset, rows[0].lag, rows[0].end_offset_age_s is not None) == (
            100,
            60,
            True,
        )  # a fetch's end offset wins over the listed one
        paused = rows[1]
        assert (paused.end_offset, paused.lag, paused.rebuild_remaining) == (30_000, 30_000, 30_000)
        # Not confirmed by a fetch: neither caught up nor taken for an unreachable broker.
        assert paused.end_offset_age_s is None and not paused.caught_up
        assert tracker.lags(consumer) == {0: 60, 1: 30_000}
    finally:
        store.close()


class UnconfirmedFor20s(FetchedSome):
    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return now_ms() - 20_000 if tp.partition == 0 else None


def test_readers_are_told_the_lag_is_unknown_while_the_broker_does_not_confirm_it(
    tmp_path: Path,
) -> None:
    """Kafka unreachable: /readyz says so, and the served records a store's readers see
    (`get`, `dump`) must not go on saying "lag 0, caught up"."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    try:
        positions = Positions(TOPIC, next={0: 100, 1: 0}, listed_ends={1: 30})
        tracker = LagTracker(TOPIC, store, positions, NoStandbys(), 15.0)  # type: ignore[arg-type]
        lags = {0: 0, 1: 30}
        assert tracker.for_readers(FetchedSome(), lags) == {0: 0, 1: 30}  # type: ignore[arg-type]
        assert tracker.for_readers(UnconfirmedFor20s(), lags) == {0: -1, 1: 30}  # type: ignore[arg-type]
    finally:
        store.close()


def test_a_lag_of_0_no_fetch_confirmed_is_unknown_to_readers(tmp_path: Path) -> None:
    """Assigned at its end, Kafka gone before the first fetch: readers were told "lag 0,
    caught up" on the strength of the end listed at the assignment."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    try:
        positions = Positions(TOPIC, next={0: 100, 1: 100}, listed_ends={1: 100})
        tracker = LagTracker(TOPIC, store, positions, NoStandbys(), 15.0)  # type: ignore[arg-type]
        consumer: Any = FetchedSome()  # partition 0 fetched (end 100), partition 1 not
        assert tracker.for_readers(consumer, tracker.lags(consumer)) == {0: 0, 1: -1}
        assert not tracker.rows(consumer)[1].caught_up
    finally:
        store.close()


class TransactionOpen(FetchedSome):
    """Partition 0 (high watermark 100) holds a transaction open from offset 90 on: the
    broker reports the last stable offset 90."""

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return 90 if tp.partition == 0 else None


@pytest.mark.parametrize("committed_only", [True, False])
def test_a_transaction_held_open_is_not_waited_for_reading_committed_records(
    tmp_path: Path, committed_only: bool
) -> None:
    """Reading committed records, nothing past the last stable offset is returned until the
    transaction ends (up to its producer's transaction timeout; for good with overlapping
    transactions): the partition was "10 records behind", reads of it refused as "being
    rebuilt" all that time. Caught up is caught up with what can be read; the records held
    back are reported apart. Reading uncommitted records, the high watermark stays the end."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    try:
        positions = Positions(TOPIC, next={0: 90, 1: 0}, listed_ends={1: 0})
        tracker = LagTracker(
            TOPIC,
            store,
            positions,
            NoStandbys(),  # type: ignore[arg-type]
            15.0,
            committed_only=committed_only,
        )
        consumer: Any = TransactionOpen()
        row = tracker.rows(consumer)[0]
        if committed_only:
            assert (row.end_offset, row.lag, row.caught_up, row.rebuild_remaining) == (
                90,
                0,
                True,
                0,
            )
            assert row.held_back == 10 and row.as_json()["held_back"] == 10
            assert tracker.lags(consumer)[0] == 0
            assert tracker.is_caught_up(consumer, 0, 90)
        else:
            assert (row.end_offset, row.lag, row.caught_up, row.held_back) == (100, 10, False, 0)
            assert tracker.lags(consumer)[0] == 10
            assert not tracker.is_caught_up(consumer, 0, 90)
        # The repair watch still waits for the high watermark (repair_watch.py).
        assert not tracker.read_to_log_end(consumer, 0, 90)
        assert tracker.read_to_log_end(consumer, 0, 100)
    finally:
        store.close()
