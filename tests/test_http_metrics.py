"""The HTTP face's own metrics: answers by route name and status, their latency by route,
and forwards to other workers by outcome (a worker app in front of a stub owner whose
behaviour each step sets; aiohttp test servers, no broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream_replica.http_app import HealthRules, build_app
from stream_replica.query_app import QueryConfig, add_query_routes
from stream_replica.store import ReplicaStore
from tests.test_client import PARTITIONS, FrontView, closed_port
from tests.test_http_app import FakeWorker

AUTH = {"Authorization": "Bearer s3cret"}
KEY = "do-not-label-me"


def owner_stub(mode: list[str]) -> web.Application:
    """The partitions' owner: answers a read as ``mode[0]`` says (ok, busy, hang)."""

    async def grain(request: web.Request) -> web.Response:
        if mode[0] == "hang":
            await asyncio.sleep(3600)
        if mode[0] == "busy":
            return web.json_response({"error": "rebuilding"}, status=503)
        return web.json_response({"grain_key": request.match_info["grain_key"]})

    async def local(_: web.Request) -> web.Response:
        return web.json_response({"endpoint": "owner", "partitions": {}})

    app = web.Application()
    app.router.add_get("/grains/{grain_type}/{grain_key}", grain)
    app.router.add_get("/partitions", local)
    return app


async def test_answers_latency_and_forwards_are_counted(tmp_path: Path) -> None:
    mode = ["ok"]
    owner = TestServer(owner_stub(mode))
    await owner.start_server()
    store = ReplicaStore(tmp_path / "db", "t")
    worker = FakeWorker()
    view = FrontView(store, f"127.0.0.1:{owner.port}")
    app = build_app(worker, HealthRules())
    config = QueryConfig(token="s3cret", forward_timeout_s=0.3, _partitions=PARTITIONS)
    add_query_routes(app, view, config, worker.metrics)
    registry = worker.metrics.registry

    def requests(route: str, status: int) -> float | None:
        labels = {"route": route, "status": str(status)}
        return registry.get_sample_value("stream_replica_http_requests_total", labels)

    def forwards(route: str, outcome: str) -> float | None:
        labels = {"route": route, "outcome": outcome}
        return registry.get_sample_value("stream_replica_read_forwards_total", labels)

    try:
        async with TestClient(TestServer(app)) as client:
            config.endpoint = f"127.0.0.1:{client.port}"

            async def status_of(path: str, **kw: Any) -> int:
                async with client.get(path, **kw) as response:
                    await response.read()
                    return response.status

            assert forwards("grain", "answered") == 0  # every series there from the start
            assert await status_of(f"/grains/acct/{KEY}", headers=AUTH) == 200
            mode[0] = "busy"
            assert await status_of(f"/grains/acct/{KEY}", headers=AUTH) == 503
            mode[0] = "hang"
            assert await status_of(f"/grains/acct/{KEY}", headers=AUTH) == 503
            view.owner = closed_port().removeprefix("http://")
            assert await status_of(f"/grains/acct/{KEY}", headers=AUTH) == 503
            assert await status_of(f"/grains/acct/{KEY}") == 401
            assert await status_of("/grains/a%2Fb/c", headers=AUTH) == 400
            assert await status_of("/partitions", headers=AUTH) == 200
            assert await status_of("/openapi.json") == 200
            assert await status_of("/healthz") == 503
            assert await status_of(f"/nope/{KEY}") == 404

            assert requests("grain", 200) == 1
            assert requests("grain", 503) == 3
            assert requests("grain", 401) == 1
            assert requests("grain", 400) == 1
            assert requests("partitions", 200) == 1
            assert requests("openapi", 200) == 1
            assert requests("healthz", 503) == 1
            assert requests("unmatched", 404) == 1
            assert (forwards("grain", "answered"), forwards("grain", "unavailable")) == (1, 1)
            assert (forwards("grain", "timeout"), forwards("grain", "unreachable")) == (1, 1)
            assert forwards("partitions", "unreachable") == 1  # the map names the closed port
            count = registry.get_sample_value(
                "stream_replica_http_request_duration_seconds_count", {"route": "grain"}
            )
            assert count == 6
            slow = registry.get_sample_value(
                "stream_replica_http_request_duration_seconds_bucket",
                {"route": "grain", "le": "0.25"},
            )
            assert slow is not None and slow <= 5  # the forward that timed out took 0.3 s

            async with client.get("/metrics") as response:
                text = await response.text()
            assert 'stream_replica_http_requests_total{route="grain",status="503"} 3.0' in text
            assert KEY not in text and "/grains" not in text  # routes by name, never a path
    finally:
        await owner.close()
        store.close()
