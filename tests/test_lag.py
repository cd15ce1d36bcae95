"""lag.py without a broker: what a partition's lag is measured against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
