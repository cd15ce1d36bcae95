"""The worker's HTTP face on a snapshot (the worker-backed tests use real workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp.test_utils import TestClient, TestServer

from stream_replica.fold import FoldCounts
from stream_replica.http_app import HealthRules, build_app
from stream_replica.metrics import CONTENT_TYPE, Metrics
from stream_replica.status import NodeStatus, PartitionRow


@dataclass
class FakeWorker:
    metrics: Metrics = field(default_factory=lambda: Metrics("t"))
    snapshot: NodeStatus = field(
        default_factory=lambda: NodeStatus("w1", "t", "g", 0.0, None, False)
    )

    status_calls: int = 0

    def status(self) -> NodeStatus:
        self.status_calls += 1
        return self.snapshot


async def client_for(worker: FakeWorker) -> TestClient:  # type: ignore[type-arg]
    client = TestClient(TestServer(build_app(worker, HealthRules(5.0, 100))))
    await client.start_server()
    return client


async def test_health_and_readiness_follow_the_loop_and_the_lag() -> None:
    worker = FakeWorker()
    client = await client_for(worker)
    try:
        assert (await client.get("/healthz")).status == 503  # no poll yet
        assert (await client.get("/readyz")).status == 503  # no assignment yet
        worker.snapshot.last_poll_age_s = 0.2
        worker.snapshot.assigned = True
        # Partition 0 at the end listed at its assignment, but no fetch has said so yet.
        worker.snapshot.partitions = {0: PartitionRow("active", 100, 100, False)}
        unfetched = await client.get("/readyz")
        assert unfetched.status == 503 and (await unfetched.json())["partitions"] == [0]
        worker.snapshot.partitions = {
            0: PartitionRow("active", 90, 100, False, end_offset_age_s=0.5),
            1: PartitionRow("active", 10, 500, False, rebuild_remaining=490, end_offset_age_s=0.5),
        }
        assert (await client.get("/healthz")).status == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status == 503
        assert (await not_ready.json())["lag"] == {"1": 490}
        worker.snapshot.partitions[1] = PartitionRow("active", 450, 500, False, 0, 0.5)
        assert (await client.get("/readyz")).status == 200
        worker.snapshot.last_poll_age_s = 6.0  # the loop stalled
        stalled = await client.get("/healthz")
        assert stalled.status == 503 and "last poll 6.0 s ago" in (await stalled.json())["reason"]
    finally:
        await client.close()


async def test_a_worker_retrying_an_unreachable_kafka_before_its_first_poll_is_alive() -> None:
    """The README promises 200 while Kafka is unreachable (a restart would not help): a new
    pod whose Kafka is down got 503 from its first second, and a liveness probe would have
    restarted it in a loop."""
    worker = FakeWorker()
    worker.snapshot.waiting_for_kafka = "no Kafka broker answered at b:9092 (connection refused)"
    client = await client_for(worker)
    try:
        health = await client.get("/healthz")
        assert health.status == 200
        assert (await health.json())["waiting_for_kafka"].endswith("(connection refused)")
        status = await (await client.get("/status.json")).json()
        assert status["waiting_for_kafka"] == worker.snapshot.waiting_for_kafka
        assert (await client.get("/readyz")).status == 503  # but not ready
    finally:
        await client.close()


async def test_metrics_exposition_and_status() -> None:
    worker = FakeWorker()
    counts = FoldCounts(records=10, applied=6, deltas_refused=2, invalid=1, shadowed=1)
    worker.metrics.add_fold(counts)
    worker.metrics.set_partitions({3: PartitionRow("standby", 40, 42, True)})
    worker.snapshot.counts = counts
    worker.snapshot.partitions = {3: PartitionRow("standby", 40, 42, True)}
    client = await client_for(worker)
    try:
        scrape = await client.get("/metrics")
        assert scrape.headers["Server"] == "stream-replica"  # not Python's and aiohttp's versions
        missing = await client.get("/no-such-route")
        assert missing.status == 404 and missing.headers["Server"] == "stream-replica"
        # prometheus_client's own content type (with its format version and the charset)
        assert scrape.headers["Content-Type"] == CONTENT_TYPE
        assert "charset=utf-8" in CONTENT_TYPE
        text = await scrape.text()
        # A scrape alone (as Prometheus does) refreshes the snapshot behind the gauges.
        assert worker.status_calls == 1
        assert "stream_replica_records_read_total 10.0" in text
        assert 'stream_replica_records_refused_total{kind="delta"} 2.0' in text
        assert 'stream_replica_partition_lag_records{partition="3",role="standby"} 2.0' in text
        status = await (await client.get("/status.json")).json()
        assert status["health_max_poll_age_s"] == 5.0  # the page's health dot needs it
        assert status["partitions"]["3"] == {
            "role": "standby",
            "checkpoint": 40,
            "end_offset": 42,
            "end_offset_age_s": None,
            "lag": 2,
            "caught_up": True,
            "rebuild_remaining": 0,
            "held_back": 0,
        }
        page = await client.get("/")
        assert page.status == 200 and "status.json" in await page.text()
    finally:
        await client.close()


def test_shadowed_grains_are_counted_by_the_role_of_their_partition() -> None:
    """Summed over workers, the gauge counted a grain once per copy (active and standby):
    the dashboard showed twice the shadowed grains with one standby replica."""
    metrics = Metrics("t")
    rows = {0: PartitionRow("active", 1, 1, True), 1: PartitionRow("standby", 1, 1, True)}
    metrics.set_shadowed({0: 3, 1: 2, 5: 1}, rows)
    text = metrics.exposition().decode()
    assert 'stream_replica_shadowed_grains{role="active"} 3.0' in text
    assert 'stream_replica_shadowed_grains{role="standby"} 2.0' in text
    assert 'stream_replica_shadowed_grains{role="none"} 1.0' in text  # lost, not yet dropped
    metrics.set_shadowed({}, rows)  # repaired: every role back to 0
    assert 'stream_replica_shadowed_grains{role="standby"} 0.0' in metrics.exposition().decode()
