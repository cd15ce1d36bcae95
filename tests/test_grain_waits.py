"""Reads waiting for a grain's write (grain_waits.py): woken by the write of that grain, on
their own and through the read API (no broker: the store is written directly)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream_replica import grain_waits
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.grain_waits import GrainWaits
from stream_replica.query_app import QueryConfig, add_query_routes
from stream_replica.store import ReplicaStore
from tests.helpers import wait_until
from tests.test_query_request import _View

GRAIN = ("acct", "k")


@pytest.fixture(autouse=True)
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a wake can end a wait early: the periodic re-check is pushed out of reach."""
    monkeypatch.setattr(grain_waits, "RECHECK_S", 3600.0)


async def test_a_write_of_the_grain_wakes_its_waiters_only() -> None:
    waits = GrainWaits()
    waiting = asyncio.create_task(waits.wait(GRAIN, 60))
    other = asyncio.create_task(waits.wait(("acct", "other"), 60))
    await asyncio.sleep(0)  # both registered
    assert waits
    waits.written([("acct", "unrelated"), GRAIN])
    await asyncio.wait_for(waiting, 5)
    assert not other.done()
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert not waits  # nothing left behind, cancelled or woken
    await asyncio.wait_for(waits.wait(GRAIN, 0.01), 5)  # the timeout ends it too


async def test_a_read_waiting_for_a_sequence_answers_once_it_is_written(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", "t")
    view = _View(store)
    app = web.Application()
    add_query_routes(app, view, QueryConfig(endpoint="here:1", _partitions=3))
    try:
        async with TestClient(TestServer(app)) as client:

            async def read() -> Any:
                response = await client.get("/grains/acct/k?min_sequence=2&wait_ms=60000")
                return response.status, await response.json()

            reading = asyncio.create_task(read())
            waits = view.grain_waits
            await wait_until(lambda: bool(waits), 10, 0.01, what="the read to wait")
            store.apply({GRAIN: GrainState(2, 0, "src", b"v2", 0, 7)}, {}, FoldCounts())
            view.grain_waits.written([GRAIN])
            status, body = await asyncio.wait_for(reading, 10)
            assert status == 200 and body["sequence"] == 2
    finally:
        store.close()
