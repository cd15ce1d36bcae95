"""Prometheus metrics of one worker (prometheus_client, its own registry, so several workers
in one process — tests, embedding — never share series).

Names follow Prometheus conventions: ``stream_replica_`` prefix, ``_total`` for counters,
base units (seconds, bytes), labels for bounded dimensions only (partition, role, kind).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stream_replica.fold import FoldCounts
from stream_replica.status import PartitionRow

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# No *_created series: noise for the scrapers of a long-running worker.
disable_created_metrics()  # type: ignore[no-untyped-call]
_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
_BATCH_BUCKETS: Final = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
# HTTP answers: a read may wait up to 60 s (?wait_ms), a forward up to its timeout.
_HTTP_BUCKETS: Final = (*_LATENCY_BUCKETS, 10, 30, 60)
# What a forward to another worker came to: any answer but a 503, a 503, none in time, none.
FORWARD_OUTCOMES: Final = ("answered", "unavailable", "timeout", "unreachable")
FORWARDING_ROUTES: Final = ("grain", "scan", "partitions")

# FoldCounts field → (metric name, help). Refusals get one metric with a ``kind`` label.
_FOLD_COUNTERS: Final = {
    "records": ("records_read", "Records read from the replicated topic"),
    "applied": ("records_applied", "FullState records that became a grain's state"),
    "intermediates_dropped": (
        "intermediates_dropped",
        "Applied states superseded within the same poll (never written)",
    ),
    "duplicates": ("duplicates", "FullState records with the sequence already held"),
    "stale": ("stale", "FullState records with a lower sequence (ignored)"),
    "tombstones": ("tombstones", "Tombstones (grain deletions) read"),
    "shadowed": (
        "shadowed",
        "Times a held state became shadowed (a refused or stale record after it on its key)",
    ),
}


class Metrics:
    def __init__(self, topic: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.topic = topic
        r = self.registry
        self._fold = {
            field: Counter(f"stream_replica_{name}", text, registry=r)
            for field, (name, text) in _FOLD_COUNTERS.items()
        }
        self.refused = Counter(
            "stream_replica_records_refused",
            "Records refused (never applied), by kind: delta or invalid",
            ["kind"],
            registry=r,
        )
        for kind in ("delta", "invalid"):
            self.refused.labels(kind)
        self.dlq_sends = Counter(
            "stream_replica_dead_letters_sent", "Records sent to the dead-letter topic", registry=r
        )
        self.repairs = Counter(
            "stream_replica_repairs", "Shadowed states re-published (--repair-shadowed)", registry=r
        )
        self.rebalances = Counter(
            "stream_replica_rebalances", "Partition assignments received", registry=r
        )
        self.poll_records = Histogram(
            "stream_replica_poll_records",
            "Records per non-empty poll",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.poll_seconds = Histogram(
            "stream_replica_poll_duration_seconds",
            "Time to process one non-empty poll (decode, fold, DLQ, write)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_grains = Histogram(
            "stream_replica_write_batch_grains",
            "Grain changes per RocksDB write batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.write_seconds = Histogram(
            "stream_replica_write_duration_seconds",
            "Time to write one poll's RocksDB batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "stream_replica_commit_duration_seconds",
            "Time of a successful offset commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_stall_max = Gauge(
            "stream_replica_loop_stall_max_seconds",
            "Longest event-loop stall since start (how late a 50 ms timer woke up)",
            registry=r,
        )
        self.wal_on = Gauge(
            "stream_replica_store_wal_on",
            "1 while the store writes through RocksDB's write-ahead log, 0 while a catch-up "
            "writes without it (--wal-off-lag)",
            registry=r,
        )
        self.reads_on_thread = Gauge(
            "stream_replica_store_reads_on_thread",
            "1 while the store's RocksDB reads run on its reader thread (one was slow: a cold "
            "store), 0 while they run on the event loop",
            registry=r,
        )
        labels = ["partition", "role"]
        self.end_offset = Gauge(
            "stream_replica_partition_end_offset",
            "The partition's end offset at the last fetch: its high watermark, or reading "
            "committed records, its last stable offset while a transaction is open",
            labels,
            registry=r,
        )
        self.checkpoint = Gauge(
            "stream_replica_partition_checkpoint",
            "The store's next offset for the partition",
            labels,
            registry=r,
        )
        self.lag = Gauge(
            "stream_replica_partition_lag_records",
            "Records the store is behind the partition's end offset",
            labels,
            registry=r,
        )
        self.end_offset_age = Gauge(
            "stream_replica_partition_end_offset_age_seconds",
            "Time since the broker last confirmed the partition's end offset (grows while "
            "Kafka is unreachable; past --end-offset-max-age-s the partition is not caught up)",
            labels,
            registry=r,
        )
        self.rebuilding = Gauge(
            "stream_replica_partition_rebuild_remaining_records",
            "Records left to read while a partition is rebuilt from the log start (0: caught up)",
            labels,
            registry=r,
        )
        self.topic_compacted = Gauge(
            "stream_replica_topic_compacted",
            "1 while the replicated topic has cleanup.policy=compact (checked at start and "
            "every minute), 0 once it has not",
            registry=r,
        )
        self.held_back = Gauge(
            "stream_replica_partition_held_back_records",
            "Records past the partition's end offset that an open transaction keeps from "
            "every consumer reading committed records (its own and all written after its "
            "start; readable once it ends: a hung transactional producer shows here)",
            labels,
            registry=r,
        )
        self.store_bytes = Gauge(
            "stream_replica_store_size_bytes",
            "Size of the state directory on disk (measured every 10 s)",
            registry=r,
        )
        self.shadowed_now = Gauge(
            "stream_replica_shadowed_grains",
            "Grains whose state is shadowed now (not yet repaired), by the role of their "
            "partition here (active, standby, none: no longer served)",
            ["role"],
            registry=r,
        )
        self.last_poll = Gauge(
            "stream_replica_last_poll_timestamp_seconds",
            "Unix time of the last completed poll (also empty ones)",
            registry=r,
        )
        # The HTTP face (http_metrics.py): ``route`` is a route's name (grain, scan,
        # partitions, openapi, metrics, healthz, readyz, status, page; unmatched), never a path.
        self.http_requests = Counter(
            "stream_replica_http_requests",
            "HTTP requests answered, by route name and status code",
            ["route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "stream_replica_http_request_duration_seconds",
            "Time to answer an HTTP request, by route name (a read's wait_ms and forwards "
            "included)",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.forwards = Counter(
            "stream_replica_read_forwards",
            "Requests sent to another worker for a read, by route and outcome: answered (any "
            "status but 503), unavailable (503), timeout (--read-forward-timeout-s), "
            "unreachable (no connection)",
            ["route", "outcome"],
            registry=r,
        )
        for route in FORWARDING_ROUTES:
            for outcome in FORWARD_OUTCOMES:
                self.forwards.labels(route, outcome)

    def add_fold(self, counts: FoldCounts) -> None:
        for field, counter in self._fold.items():
            value = getattr(counts, field)
            if value:
                counter.inc(value)
        if counts.deltas_refused:
            self.refused.labels("delta").inc(counts.deltas_refused)
        if counts.invalid:
            self.refused.labels("invalid").inc(counts.invalid)

    def set_partitions(self, rows: Mapping[int, PartitionRow]) -> None:
        """Replace the per-partition gauges: partitions no longer served disappear."""
        gauges = (
            self.end_offset,
            self.end_offset_age,
            self.checkpoint,
            self.lag,
            self.rebuilding,
            self.held_back,
        )
        for gauge in gauges:
            gauge.clear()
        for partition, row in rows.items():
            labels = (str(partition), row.role)
            if row.end_offset is not None:
                self.end_offset.labels(*labels).set(row.end_offset)
            if row.end_offset_age_s is not None:
                self.end_offset_age.labels(*labels).set(row.end_offset_age_s)
            self.checkpoint.labels(*labels).set(row.checkpoint)
            self.lag.labels(*labels).set(row.lag)
            self.rebuilding.labels(*labels).set(row.rebuild_remaining)
            self.held_back.labels(*labels).set(row.held_back)

    def set_shadowed(
        self, per_partition: Mapping[int, int], rows: Mapping[int, PartitionRow]
    ) -> None:
        """Shadowed grains by role: summed over workers, ``role="active"`` counts each grain
        once (a standby's copy holds the same marks)."""
        by_role = dict.fromkeys(("active", "standby", "none"), 0)
        for partition, count in per_partition.items():
            row = rows.get(partition)
            by_role[row.role if row is not None else "none"] += count
        for role, count in by_role.items():
            self.shadowed_now.labels(role).set(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
