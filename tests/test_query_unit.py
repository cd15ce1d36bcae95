"""The read API's parts without a broker: the store's per-type key-ordered scan, the client's
routing, and a scan's fallback to a standby when an owner answers 503 (stub peers)."""

from __future__ import annotations

from pathlib import Path

from stream_replica.client import _Router
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.routing import partition_for
from stream_replica.store import ReplicaStore


def state(sequence: int) -> GrainState:
    return GrainState(sequence, 0, "primary", b"p", 0, sequence)


def test_grains_of_type_is_key_ordered_with_prefix_and_cursor(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", "t")
    try:
        grains = {("a", "x"), ("acct", "1"), ("acct", "10"), ("acct", "2"), ("acct", "2/b"),
                  ("acct", "20"), ("acct", "ü"), ("acctx", "1"), ("b", "1")}  # fmt: skip
        store.apply({g: state(i + 1) for i, g in enumerate(sorted(grains))}, {}, FoldCounts())
        keys = [k for k, _ in store.grains_of_type("acct")]
        assert keys == ["1", "10", "2", "2/b", "20", "ü"]
        assert [k for k, _ in store.grains_of_type("acct", prefix="2")] == ["2", "2/b", "20"]
        assert [k for k, _ in store.grains_of_type("acct", after="2")] == ["2/b", "20", "ü"]
        assert [k for k, _ in store.grains_of_type("acct", "2", after="2/b")] == ["20"]
        assert [k for k, _ in store.grains_of_type("acct", "2", after="1")] == ["2", "2/b", "20"]
        assert list(store.grains_of_type("none")) == []
    finally:
        store.close()


def test_client_tries_the_owner_first_then_standbys_only_for_stale_reads() -> None:
    router = _Router(["http://a:1"])
    grain = ("acct", "42")
    partition = partition_for(grain, 3)
    replicas = {
        str(p): {"replicas": [{"endpoint": "b:1", "role": "active"}, {"endpoint": "c:1", "role": "standby"}]}
        if p == partition
        else {"replicas": [{"endpoint": "a:1", "role": "active"}]}
        for p in range(3)
    }  # fmt: skip
    router.learn({"partition_count": 3, "partitions": replicas})
    assert router.order(grain, stale=False)[0] == "http://b:1"
    assert router.order(grain, stale=True)[:2] == ["http://b:1", "http://c:1"]
    assert sorted(router.bases) == ["http://a:1", "http://b:1", "http://c:1"]
    router.mark_down("http://b:1")
    assert router.order(grain, stale=False)[-1] == "http://b:1"  # down: tried last
    assert router.stale_map  # and the map is learned again before the next read


async def test_scan_passes_a_503_owners_partitions_to_the_standby(tmp_path: Path) -> None:
    """The owner of partition 1 answers 503 (e.g. rebuilding): with ?stale=ok the scan asks
    partition 1's standby; without, a 503 naming partition 1. Peers are stub servers."""
    from typing import Any

    from aiohttp import web
    from aiohttp.test_utils import TestServer
    from aiokafka.structs import TopicPartition

    from stream_replica.membership import GroupAssignment, PartitionOwners, Replica
    from stream_replica.query_app import QueryConfig, add_query_routes
    from stream_replica.status import PartitionRow

    asked: list[tuple[str, str]] = []

    def stub(name: str, status: int, keys: list[str]) -> web.Application:
        async def scan(request: web.Request) -> web.Response:
            asked.append((name, request.query["partitions"]))
            if status != 200:
                return web.json_response({"error": f"{name} is rebuilding"}, status=status)
            return web.json_response({"items": [{"grain_key": k} for k in keys]})

        app = web.Application()
        app.router.add_get("/grains/{grain_type}", scan)
        return app

    owner0 = TestServer(stub("owner0", 200, ["a", "c"]))
    owner1 = TestServer(stub("owner1", 503, []))
    standby1 = TestServer(stub("standby1", 200, ["b"]))
    for server in (owner0, owner1, standby1):
        await server.start_server()
    store = ReplicaStore(tmp_path / "db", "t")

    def endpoint(server: TestServer) -> str:
        return f"127.0.0.1:{server.port}"

    class View:
        topic = "t"

        def __init__(self) -> None:
            self.store = store

        def partition_rows(self) -> dict[int, PartitionRow]:
            return {}  # serves nothing itself

        def group_assignment(self) -> GroupAssignment:
            def owners(active: TestServer, *standbys: TestServer) -> PartitionOwners:
                return PartitionOwners(
                    Replica("a", endpoint(active)),
                    tuple(Replica("s", endpoint(s)) for s in standbys),
                )

            return GroupAssignment(
                1, frozenset(), frozenset(),
                {TopicPartition("t", 0): owners(owner0), TopicPartition("t", 1): owners(owner1, standby1)},
            )  # fmt: skip

    app = web.Application()
    config = QueryConfig(endpoint="127.0.0.1:1", _partitions=2)
    add_query_routes(app, View(), config)
    scanner = TestServer(app)
    await scanner.start_server()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:

            async def get(query: str) -> tuple[int, dict[str, Any], str | None]:
                async with session.get(scanner.make_url(f"/grains/x{query}")) as response:
                    return (
                        response.status,
                        await response.json(),
                        response.headers.get("Retry-After"),
                    )

            status, page, _ = await get("?stale=ok")
            assert status == 200, page
            assert [i["grain_key"] for i in page["items"]] == ["a", "b", "c"]
            assert ("owner1", "1") in asked and ("standby1", "1") in asked

            asked.clear()
            status, refusal, retry_after = await get("")
            assert status == 503 and retry_after == "1"
            assert refusal["partitions"] == [1] and "items" not in refusal
            assert (
                "partition 1 of t" in refusal["error"]
                and "owner1 is rebuilding" in refusal["error"]
            )
            assert ("standby1", "1") not in asked  # a plain scan does not read a standby
    finally:
        await scanner.close()
        for server in (owner0, owner1, standby1):
            await server.close()
        store.close()
