"""benchmarks/scale_bench.py's figures, computed from given times (no broker)."""

from __future__ import annotations

from aiohttp import ClientSession, web

from benchmarks.common import Prefill, Workload
from benchmarks.scale_bench import ProgressProbe, ScaleCase, ScaleResult, WorkerRun, _free_port


def test_scale_out_rate_after_the_second_worker_joined() -> None:
    """1 -> 2: the group's rate from the newcomer's first assignment to done is the records
    left then over that time, and its ratio is to the one-worker case before it."""
    one = ScaleCase("1 worker", 1000, 100.0, 110.0, [WorkerRun("w0", 99.0)], None)
    two = [WorkerRun("w0", 199.0), WorkerRun("w1", 201.0)]
    scaled = ScaleCase("1 -> 2", 1000, 200.0, 206.0, two, None)
    scaled.joined_at_fraction, scaled.joined_at = 0.4, 202.0  # 600 records left in 4 s
    result = ScaleResult(Prefill("t", 6, 1000, 0, 0.0, {}, Workload(1000, 10)), [one, scaled], "")
    assert scaled.rate_after_join == 150.0
    assert result.ratio_after_join(scaled) == 1.5  # one worker: 1000 records in 10 s
    assert "from then on 150 records/s = 1.50x one worker" in result.table()


def test_scale_out_bound_is_the_longer_of_the_two_workers_shares() -> None:
    """1 -> 2: the newcomer reads its partitions from offset 0 while the first worker finishes
    its own; the group after the join can at best do the records left in the time of the
    longer share, at one worker's rate each."""
    two = [WorkerRun("w0", 199.0), WorkerRun("w1", 201.0)]
    scaled = ScaleCase("1 -> 2", 1000, 200.0, 206.0, two, None)
    scaled.joined_at_fraction, scaled.joined_at = 0.5, 202.0  # 500 records left
    scaled.newcomer_reads, scaled.first_left = 500, 0  # the first had finished its own
    assert scaled.bound_after_join == 1.0
    scaled.newcomer_reads, scaled.first_left = 250, 250  # an even split: twice one worker
    assert scaled.bound_after_join == 2.0
    result = ScaleResult(Prefill("t", 6, 1000, 0, 0.0, {}, Workload(1000, 10)), [scaled], "")
    assert "bound 2.00x at one worker's rate each: the newcomer reads its partitions from " in (
        result.table()
    )


async def test_progress_probe_reads_the_active_checkpoints_of_a_worker_metrics() -> None:
    """1 -> 2 launches the second worker from the first one's own progress: the active
    partitions' checkpoint gauges of its /metrics; nothing (not an error) while it is not up."""
    exposition = (
        "# HELP stream_replica_partition_checkpoint The store's next offset for the partition\n"
        "# TYPE stream_replica_partition_checkpoint gauge\n"
        'stream_replica_partition_checkpoint{partition="0",role="active"} 1200.0\n'
        'stream_replica_partition_checkpoint{partition="3",role="active"} 7.0\n'
        'stream_replica_partition_checkpoint{partition="4",role="standby"} 999.0\n'
        'stream_replica_partition_lag_records{partition="0",role="active"} 5.0\n'
    )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=exposition, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    port = _free_port()
    async with ClientSession() as session:
        probe = ProgressProbe(session, port)
        assert await probe.checkpoints() == {}  # nothing listening yet
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            assert await probe.checkpoints() == {0: 1200, 3: 7}
        finally:
            await runner.cleanup()
