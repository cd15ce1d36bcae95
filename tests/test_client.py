"""Both Python clients (ReplicaClient, AsyncReplicaClient) against aiohttp test servers: a
real read API (add_query_routes) in front of stub owners, or stubs alone. No broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka.structs import TopicPartition

from stream_replica.client import (
    AsyncReplicaClient,
    ReplicaClient,
    ReplicaClientError,
    SequenceTimeout,
)
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.grain_waits import GrainWaits
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

    # A deadline past the forward timeout (5 s): the 503 comes within it; the next attempt
    # is cut short by the deadline, which does not make the front a dead worker either.
    def sync() -> tuple[ReplicaClientError, set[str]]:
        with ReplicaClient([front], deadline_s=7) as client:
            with pytest.raises(ReplicaClientError) as caught:
                client.get("acct", "1")
            return caught.value, set(client.router.down)

    async def aio() -> tuple[ReplicaClientError, set[str]]:
        async with AsyncReplicaClient([front], deadline_s=7) as client:
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


# --- the same retry rules and errors in both clients -------------------------------------

KINDS = ("sync", "async")


async def scan_with(
    kind: str, endpoints: list[str], grain_type: str = "acct", **options: Any
) -> tuple[list[dict[str, Any]], set[str]]:
    """Every item of a scan with either client (the sync one in a thread, as the servers
    run on this loop); and the endpoints the client saw down."""
    if kind == "sync":

        def scan() -> tuple[list[dict[str, Any]], set[str]]:
            with ReplicaClient(endpoints, **options) as client:
                return list(client.scan(grain_type, limit=1)), set(client.router.down)

        return await asyncio.to_thread(scan)
    async with AsyncReplicaClient(endpoints, **options) as client:
        return [item async for item in client.scan(grain_type, limit=1)], set(client.router.down)


async def get_with(kind: str, endpoints: list[str], **options: Any) -> Any:
    if kind == "sync":

        def get() -> Any:
            with ReplicaClient(endpoints, **options) as client:
                return client.get("acct", "plain")

        return await asyncio.to_thread(get)
    async with AsyncReplicaClient(endpoints, **options) as client:
        return await client.get("acct", "plain")


def scripted(answers: list[tuple[int, dict[str, Any]]]) -> web.Application:
    """A worker answering reads and scan pages with ``answers`` in turn (the last one from
    then on); its /partitions says nothing useful (no partition count)."""
    left = list(answers)

    async def answer(_: web.Request) -> web.Response:
        status, body = left.pop(0) if len(left) > 1 else left[0]
        headers = {"Retry-After": "1"} if status == 503 else {}
        return web.json_response(body, status=status, headers=headers)

    async def partitions(_: web.Request) -> web.Response:
        return web.json_response({"partition_count": None, "partitions": {}})

    app = web.Application()
    app.router.add_get("/partitions", partitions)
    app.router.add_get("/grains/{grain_type}", answer)
    app.router.add_get("/grains/{grain_type}/{grain_key}", answer)
    return app


def closed_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


BUSY = (503, {"error": "partition 1 is being rebuilt"})


def page(key: str, cursor: str | None) -> tuple[int, dict[str, Any]]:
    return 200, {"items": [{"grain_key": key}], "next_cursor": cursor}


@pytest.mark.parametrize("kind", KINDS)
async def test_scan_retries_a_503_and_passes_over_a_down_worker(kind: str, serve: Started) -> None:
    flaky = await serve(scripted([BUSY, BUSY, page("a", "YQ"), BUSY, page("b", None)]))
    dead = closed_port()
    items, down = await scan_with(kind, [dead, str(flaky.make_url("")).rstrip("/")])
    assert [i["grain_key"] for i in items] == ["a", "b"]
    assert down == {dead}


@pytest.mark.parametrize("kind", KINDS)
async def test_scan_and_get_give_up_at_the_deadline_with_the_last_status(
    kind: str, serve: Started
) -> None:
    busy = await serve(scripted([BUSY]))
    base = str(busy.make_url("")).rstrip("/")
    started = time.monotonic()
    with pytest.raises(ReplicaClientError) as caught:
        await scan_with(kind, [base], deadline_s=0.5)
    assert 0.3 <= time.monotonic() - started < 5  # retried (gives up when a pause would pass it)
    assert caught.value.status == 503
    assert "no answer within" in str(caught.value) and "being rebuilt" in str(caught.value)
    with pytest.raises(ReplicaClientError) as caught:
        await get_with(kind, [base], deadline_s=0.5)
    assert caught.value.status == 503 and "being rebuilt" in str(caught.value)
    dead = closed_port()
    with pytest.raises(ReplicaClientError) as caught:
        await scan_with(kind, [dead], deadline_s=0.3)
    assert caught.value.status is None and dead in str(caught.value)  # nobody answered


def answering_only(grain_key: str) -> web.Application:
    """A worker holding one grain of type "weird" under ``grain_key``; any other key is not
    found."""

    async def answer(request: web.Request) -> web.Response:
        if request.match_info["grain_key"] != grain_key:
            return web.json_response(
                {"error": "not found", "served_by": "w", "role": "active", "replica_lag": 0,
                 "caught_up": True, "end_offset_age_s": 0.1},
                status=404,
            )  # fmt: skip
        return web.json_response(
            {
                "grain_type": "weird", "grain_key": grain_key, "sequence": 5,
                "timestamp_millis": 1, "source_cluster": "eu", "payload": "eA==",
                "partition": 0, "offset": 0, "served_by": "w", "role": "active",
                "replica_lag": 0, "caught_up": True,
            }
        )  # fmt: skip

    async def partitions(_: web.Request) -> web.Response:
        return web.json_response({"partition_count": None, "partitions": {}})

    app = web.Application()
    app.router.add_get("/partitions", partitions)
    app.router.add_get("/grains/{grain_type}/{grain_key}", answer)
    return app


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grain_key", ["..", ".", "a.b"])
async def test_keys_of_dots_reach_the_worker(kind: str, grain_key: str, serve: Started) -> None:
    """A key ".." read as absent, "." as a scan page (KeyError): HTTP clients remove dot
    segments from a path, so their dots must go percent-encoded."""
    worker = await serve(answering_only(grain_key))
    base = str(worker.make_url("")).rstrip("/")
    if kind == "sync":

        def get() -> Any:
            with ReplicaClient([base], deadline_s=2) as client:
                return client.get("weird", grain_key)

        read = await asyncio.to_thread(get)
    else:
        async with AsyncReplicaClient([base], deadline_s=2) as client:
            read = await client.get("weird", grain_key)
    assert read is not None and read.grain_key == grain_key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grain", [("account", ""), ("", "k"), ("a/b", "k")])
async def test_a_grain_the_contract_refuses_is_a_400_before_any_request(
    kind: str, grain: tuple[str, str]
) -> None:
    """It raised ContractError from the router instead of the documented status 400."""
    nobody = closed_port()  # never asked
    with pytest.raises(ReplicaClientError) as caught:
        if kind == "sync":
            with ReplicaClient([nobody], deadline_s=1) as client:
                client.get(*grain)
        else:
            async with AsyncReplicaClient([nobody], deadline_s=1) as client:
                await client.get(*grain)
    assert caught.value.status == 400, caught.value


class StandbyFrontView(FrontView):
    """A front whose partitions have ``owner`` active and ``standby`` as their standby."""

    def __init__(self, store: ReplicaStore, owner: str, standby: str) -> None:
        super().__init__(store, owner)
        self.standby = standby

    def group_assignment(self) -> GroupAssignment:
        owners = PartitionOwners(Replica("owner", self.owner), (Replica("spare", self.standby),))
        return GroupAssignment(
            1, frozenset(), frozenset(), {TopicPartition("t", p): owners for p in range(PARTITIONS)}
        )


async def test_a_stale_read_asks_the_standby_first_once_the_owner_did_not_answer(
    serve: Started, tmp_path: Path
) -> None:
    """?stale=ok with a hung owner cost every read a whole forward timeout before the
    caught-up standby was asked."""
    owner, standby = await serve(silent_owner()), await serve(answering_only("k"))
    store = ReplicaStore(tmp_path / "front", "t")
    app = web.Application()
    view = StandbyFrontView(store, f"127.0.0.1:{owner.port}", f"127.0.0.1:{standby.port}")
    add_query_routes(app, view, QueryConfig(_partitions=PARTITIONS, forward_timeout_s=1.0))
    front = await serve(app)
    took = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                started = time.monotonic()
                async with session.get(str(front.make_url("/grains/weird/k?stale=ok"))) as answer:
                    assert answer.status == 200, await answer.text()
                took.append(time.monotonic() - started)
    finally:
        store.close()
    assert took[0] >= 1.0  # the owner's forward timed out first
    assert took[1] < 0.5, took  # then the standby first, while the owner stays silent


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hung_worker_does_not_hold_a_read_past_its_deadline(
    kind: str, serve: Started
) -> None:
    """Each request took the whole request timeout (7 s), whatever was left of the deadline:
    deadline_s=15 gave up after 28.8 s."""
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"error": "late"}, status=503)

    app = web.Application()
    app.router.add_get("/partitions", hang)
    app.router.add_get("/grains/{grain_type}/{grain_key}", hang)
    hung = await serve(app)
    base = str(hung.make_url("")).rstrip("/")
    started = time.monotonic()
    try:
        with pytest.raises(ReplicaClientError) as caught:
            await get_with(kind, [base], deadline_s=1.5)
    finally:
        release.set()
    took = time.monotonic() - started
    assert took < 4, took  # the request timeout alone is ~7 s
    assert "no answer within 2 s" in str(caught.value)  # (deadline_s rounded)


class LocalView:
    """A worker serving every partition, caught up, from a real store."""

    topic = "t"

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store
        self.grain_waits = GrainWaits()

    def partition_rows(self) -> dict[int, PartitionRow]:
        return {
            p: PartitionRow("active", 10, 10, True, end_offset_age_s=0.25)
            for p in range(PARTITIONS)
        }

    def group_assignment(self) -> GroupAssignment | None:
        return None


@pytest.mark.parametrize("kind", KINDS)
async def test_refusals_carry_their_status(kind: str, serve: Started, tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", "t")
    app = web.Application()
    config = QueryConfig(endpoint="here:1", token="s3cret", _partitions=PARTITIONS)
    add_query_routes(app, LocalView(store), config)
    base = str((await serve(app)).make_url("")).rstrip("/")
    try:
        for call in (get_with, scan_with):
            with pytest.raises(ReplicaClientError) as caught:
                await call(kind, [base], token="wrong")
            assert caught.value.status == 401, call
            assert "bearer token" in str(caught.value)
        with pytest.raises(ReplicaClientError) as caught:
            await scan_with(kind, [base], grain_type="a/b", token="s3cret")
        assert caught.value.status == 400 and "contains '/'" in str(caught.value)
    finally:
        store.close()


async def local_worker(serve: Started, tmp_path: Path) -> tuple[str, ReplicaStore]:
    """A real read API serving every partition from a store holding acct/plain at sequence
    5; its base URL."""
    store = ReplicaStore(tmp_path / "db", "t")
    store.apply({("acct", "plain"): GrainState(5, 1, "eu", b"p", 0, 4)}, {}, FoldCounts())
    app = web.Application()
    config = QueryConfig(endpoint="here:1", _partitions=PARTITIONS)
    add_query_routes(app, LocalView(store), config)
    return str((await serve(app)).make_url("")).rstrip("/"), store


async def read_with(kind: str, endpoints: list[str], options: dict[str, Any], **read: Any) -> Any:
    """``get("acct", "plain", **read)`` with either client (the sync one in a thread)."""
    if kind == "sync":

        def get() -> Any:
            with ReplicaClient(endpoints, **options) as client:
                return client.get("acct", "plain", **read)

        return await asyncio.to_thread(get)
    async with AsyncReplicaClient(endpoints, **options) as client:
        return await client.get("acct", "plain", **read)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_wait_longer_than_the_deadline_ends_in_a_sequence_timeout(
    kind: str, serve: Started, tmp_path: Path
) -> None:
    """wait_ms past deadline_s (15 s by default; the API takes up to 60 s) was cut short at
    the deadline and raised "no answer within 15 s (...: ReadTimeout)", status None, from a
    healthy worker: the app took the cluster for down."""
    base, store = await local_worker(serve, tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(SequenceTimeout) as caught:
            await read_with(kind, [base], {"deadline_s": 0.5}, min_sequence=9, wait_ms=1500)
    finally:
        store.close()
    assert time.monotonic() - started >= 1.5
    assert caught.value.status == 504 and caught.value.sequence == 5  # what the replica holds


@pytest.mark.parametrize("kind", KINDS)
async def test_a_read_has_every_freshness_field_of_the_answer(
    kind: str, serve: Started, tmp_path: Path
) -> None:
    """GrainRead lacked end_offset_age_s: how old the end offset that caught_up and
    replica_lag are measured against is (a worker cut off from Kafka, or one that just
    woke from a pause, answers against an old one)."""
    base, store = await local_worker(serve, tmp_path)
    try:
        read = await read_with(kind, [base], {})
    finally:
        store.close()
    assert read is not None
    assert (read.served_by, read.role, read.replica_lag, read.caught_up) == (
        "here:1", "active", 0, True
    )  # fmt: skip
    assert read.end_offset_age_s == 0.25


def impostor(status: int, body: bytes, content_type: str) -> web.Application:
    """Something that is not a worker at a worker's address (another service, a proxy in
    front of a worker that is gone): every GET gets ``status`` with ``body``."""

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


IMPOSTORS = {
    "404 page": (404, b"<html>Not Found</html>", "text/html"),
    "404 json": (404, b'{"error": "no such route"}', "application/json"),
    "200 page": (200, b"<html>welcome</html>", "text/html"),
    "200 json": (200, b'{"status": "ok"}', "application/json"),
    "500": (500, b"Internal Server Error", "text/plain"),
    "502": (502, b"<html>Bad Gateway</html>", "text/html"),
    "504 proxy": (504, b"<html>Gateway Timeout</html>", "text/html"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(IMPOSTORS))
async def test_an_answer_that_is_not_a_workers_is_not_taken_for_one(
    kind: str, case: str, serve: Started, tmp_path: Path
) -> None:
    """A 404 from anything at a worker's address was "the grain does not exist" (None); a
    200 without a grain raised KeyError or JSONDecodeError; a 500/502 ended the read at once
    instead of asking the next worker; a proxy's 504 was a SequenceTimeout."""
    status = IMPOSTORS[case][0]
    other = await serve(impostor(*IMPOSTORS[case]))
    odd = str(other.make_url("")).rstrip("/")
    base, store = await local_worker(serve, tmp_path)
    try:
        with pytest.raises(ReplicaClientError) as caught:
            await read_with(kind, [odd], {"deadline_s": 0.3})
        assert type(caught.value) is ReplicaClientError
        assert caught.value.status == status and odd in str(caught.value), caught.value
        for endpoints in ([odd, base], [base, odd]):  # either first: the worker answers
            read = await read_with(kind, endpoints, {"deadline_s": 2})
            assert read is not None and read.sequence == 5
        assert await read_with(kind, [odd, base], {"deadline_s": 2}, min_sequence=5) is not None
        with pytest.raises(ReplicaClientError) as caught:
            await scan_with(kind, [odd], deadline_s=0.3)
        assert odd in str(caught.value), caught.value
        items, _ = await scan_with(kind, [odd, base], deadline_s=2)
        assert [i["grain_key"] for i in items] == ["plain"]
    finally:
        store.close()


class StandbyHereView(LocalView):
    """A worker that holds every partition as a standby copy, caught up."""

    def partition_rows(self) -> dict[int, PartitionRow]:
        return {
            p: PartitionRow("standby", 10, 10, True, end_offset_age_s=0.25)
            for p in range(PARTITIONS)
        }


async def test_a_plain_read_forwarded_to_a_copy_that_became_a_standby_is_refused(
    serve: Started, tmp_path: Path
) -> None:
    """The sender's map (of before a rebalance) names this worker the active owner; it now
    holds only a standby copy. A read without ?stale=ok got the standby's answer (role
    "standby"), which the API promises only to callers that accept one; now a 503 that sends
    the caller back for the new owner. With ?stale=ok the standby answers, as before."""
    store = ReplicaStore(tmp_path / "db", "t")
    store.apply({("acct", "plain"): GrainState(5, 1, "eu", b"p", 0, 4)}, {}, FoldCounts())
    app = web.Application()
    add_query_routes(
        app, StandbyHereView(store), QueryConfig(endpoint="here:1", _partitions=PARTITIONS)
    )
    moved = await serve(app)
    front, front_store = await front_of(serve, tmp_path, moved)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{front}/grains/acct/plain") as answer:
                body = await answer.json()
                assert answer.status == 503, body
                assert "standby" in body["error"] and answer.headers["Retry-After"]
            async with session.get(f"{front}/grains/acct/plain?stale=ok") as answer:
                body = await answer.json()
                assert answer.status == 200 and body["role"] == "standby", body
    finally:
        store.close()
        front_store.close()
