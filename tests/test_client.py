"""Both Python clients (ReplicaClient, AsyncReplicaClient) against aiohttp test servers: a
real read API (add_query_routes) in front of stub owners, or stubs alone. No broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka.structs import TopicPartition

from stream_replica.client import AsyncReplicaClient, ReplicaClient, ReplicaClientError
from stream_replica.membership import GroupAssignment, PartitionOwners, Replica
from stream_replica.query_app import FORWARDED_HEADER, QueryConfig, add_query_routes
from stream_replica.routing import CLIENT_TIMEOUT_MARGIN_S
from stream_replica.settings import WorkerSettings
from stream_replica.status import PartitionRow
from stream_replica.store import ReplicaStore

PARTITIONS = 3


class FrontView:
    """A worker that serves no partition itself: every partition's owner is ``owner``."""

    topic = "t"

    def __init__(self, store: ReplicaStore, owner: str) -> None:
        self.store = store
        self.owner = owner

    def partition_rows(self) -> dict[int, PartitionRow]:
        return {}

    def group_assignment(self) -> GroupAssignment:
        owners = PartitionOwners(Replica("owner", self.owner), ())
        return GroupAssignment(
            1,
            frozenset(),
            frozenset(),
            {TopicPartition("t", p): owners for p in range(PARTITIONS)},
        )


def silent_owner() -> web.Application:
    """An owner that is stopped (SIGSTOP) as far as forwarded reads see: it never answers
    them; a client's own connection to it is dropped at once (so the test does not wait out
    the client's timeout on it too). Its ``/partitions?local=1`` answers (nothing served)."""

    async def grain(request: web.Request) -> web.StreamResponse:
        if FORWARDED_HEADER in request.headers:
            await asyncio.sleep(3600)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async def local(_: web.Request) -> web.Response:
        return web.json_response({"endpoint": "owner", "partitions": {}})

    app = web.Application()
    app.router.add_get("/partitions", local)
    app.router.add_get("/grains/{grain_type}/{grain_key}", grain)
    return app


Started = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Started]:
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def front_of(
    serve: Started, tmp_path: Path, owner: TestServer, **config: Any
) -> tuple[str, ReplicaStore]:
    """A real read API in front of ``owner``; its base URL."""
    store = ReplicaStore(tmp_path / "front", "t")
    app = web.Application()
    query = QueryConfig(_partitions=PARTITIONS, **config)
    add_query_routes(app, FrontView(store, f"127.0.0.1:{owner.port}"), query)
    server = await serve(app)
    query.endpoint = f"127.0.0.1:{server.port}"
    return f"http://{query.endpoint}", store


def test_the_client_timeout_outwaits_the_forward_timeout() -> None:
    forward = WorkerSettings.model_fields["read_forward_timeout_s"].default
    assert forward == QueryConfig().forward_timeout_s
    with ReplicaClient(["http://a:1"]) as client:
        assert client.request_timeout_s == forward + CLIENT_TIMEOUT_MARGIN_S
        client.router.learn({"partition_count": 3, "forward_timeout_s": 12.5, "partitions": {}})
        assert client.request_timeout_s == 12.5 + CLIENT_TIMEOUT_MARGIN_S
    with ReplicaClient(["http://a:1"], timeout_s=1.5) as client:
        assert client.request_timeout_s == 1.5  # given: kept as it is
    assert AsyncReplicaClient(["http://a:1"]).request_timeout_s == forward + CLIENT_TIMEOUT_MARGIN_S


async def test_clients_learn_the_forward_timeout_from_partitions(
    serve: Started, tmp_path: Path
) -> None:
    owner = await serve(silent_owner())
    front, store = await front_of(serve, tmp_path, owner, forward_timeout_s=0.25)
    try:
        async with AsyncReplicaClient([front]) as client:
            await client.refresh()
            assert client.request_timeout_s == 0.25 + CLIENT_TIMEOUT_MARGIN_S

        def sync() -> float:
            with ReplicaClient([front]) as client:
                client.refresh()
                return client.request_timeout_s

        assert await asyncio.to_thread(sync) == 0.25 + CLIENT_TIMEOUT_MARGIN_S
    finally:
        store.close()


async def test_a_forwarding_workers_503_arrives_before_the_client_gives_up_on_it(
    serve: Started, tmp_path: Path
) -> None:
    """The owner hangs (as under SIGSTOP); the client reads through a healthy worker whose
    forward times out after the default --read-forward-timeout-s. The client must get that
    worker's 503 (not time out on it first) and must not take it for a dead worker."""
    owner = await serve(silent_owner())
    front, store = await front_of(serve, tmp_path, owner)  # the default forward timeout
    started = time.monotonic()

    def sync() -> tuple[ReplicaClientError, set[str]]:
        with ReplicaClient([front], deadline_s=1) as client:
            with pytest.raises(ReplicaClientError) as caught:
                client.get("acct", "1")
            return caught.value, set(client.router.down)

    async def aio() -> tuple[ReplicaClientError, set[str]]:
        async with AsyncReplicaClient([front], deadline_s=1) as client:
            with pytest.raises(ReplicaClientError) as caught:
                await client.get("acct", "1")
            return caught.value, set(client.router.down)

    try:
        answers = await asyncio.gather(asyncio.to_thread(sync), aio())
    finally:
        store.close()
    for error, down in answers:
        assert "did not answer (TimeoutError)" in str(error), error
        assert front not in down and down == {f"http://127.0.0.1:{owner.port}"}
    assert time.monotonic() - started < 15
