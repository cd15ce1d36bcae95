"""/openapi.json is a valid OpenAPI 3.1 document, and it is true: real answers of a running
app (the worker's HTTP face and the read API over a real store; aiohttp's test server, no
broker) have the statuses, content types and fields it documents. A field an answer has
that the document lacks fails, as does a documented required field an answer lacks."""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.jsonschema
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.structs import TopicPartition
from openapi_spec_validator import validate

from stream_replica.fold import FoldCounts, GrainState
from stream_replica.grain_waits import GrainWaits
from stream_replica.http_app import HealthRules, build_app
from stream_replica.membership import GroupAssignment, PartitionOwners, Replica
from stream_replica.openapi import openapi
from stream_replica.query_app import QueryConfig, add_query_routes
from stream_replica.routing import partition_for
from stream_replica.status import PartitionRow
from stream_replica.store import ReplicaStore
from tests.test_http_app import FakeWorker

PARTITIONS = 3
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC_URI = "urn:stream-replica:openapi"


def test_the_document_is_valid_openapi() -> None:
    validate(openapi())


def strict(spec: dict[str, Any]) -> dict[str, Any]:
    """The document with every object schema closed (no field beyond those documented; the
    components' and those written in a route, as /healthz's): what the tests hold real
    answers to. The served document stays open, so clients keep working when a field is
    added."""
    spec = copy.deepcopy(spec)
    pending: list[Any] = [*spec["components"]["schemas"].values(), spec["paths"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return spec


class App:
    """A worker (FakeWorker's snapshot and metrics) whose read API serves every partition
    from a real store, and whose map also names a standby without an endpoint and one that
    is down."""

    topic = "t"

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store
        self.grain_waits = GrainWaits()
        self.worker = FakeWorker()
        self.metrics = self.worker.metrics
        self.rows = {p: PartitionRow("active", 10, 10, True) for p in range(PARTITIONS)}
        self.endpoint = ""
        self.down = ""
        self.peer = ""  # when set: partition 0's active owner, not this worker

    def status(self) -> Any:
        return self.worker.status()

    def partition_rows(self) -> dict[int, PartitionRow]:
        return self.rows

    def group_assignment(self) -> GroupAssignment:
        owners = PartitionOwners(
            Replica("me", self.endpoint), (Replica("s1", None), Replica("s2", self.down))
        )
        tps = {TopicPartition("t", p): owners for p in range(PARTITIONS)}
        if self.peer:
            tps[TopicPartition("t", 0)] = PartitionOwners(Replica("peer", self.peer), ())
        return GroupAssignment(7, frozenset(tps), frozenset(), tps)


def key_in(partition: int, prefix: str) -> str:
    return next(
        f"{prefix}{i}"
        for i in range(1000)
        if partition_for(("acct", f"{prefix}{i}"), PARTITIONS) == partition
    )


PLAIN, SHADOWED, REBUILDING = key_in(0, "plain"), key_in(1, "shadowed"), key_in(2, "rebuilt")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, TestClient[Any, Any]]]:
    store = ReplicaStore(tmp_path / "db", "t")
    store.apply(
        {
            ("acct", PLAIN): GrainState(5, 1000, "primary", b"p", 0, 4),
            ("acct", SHADOWED): GrainState(6, 1000, "primary", b"s", 1, 8, shadowed_by=9),
            ("acct", REBUILDING): GrainState(7, 1000, "primary", b"r", 2, 3),
        },
        {},
        FoldCounts(),
    )
    view = App(store)
    web_app = build_app(view, HealthRules(5.0, 100))
    config = QueryConfig(token=TOKEN, _partitions=PARTITIONS)
    add_query_routes(web_app, view, config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        view.down = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    async with TestClient(TestServer(web_app)) as client:
        config.endpoint = view.endpoint = f"127.0.0.1:{client.port}"
        yield view, client
    store.close()


class Checker:
    """Checks an answer against the document: its status and content type documented for
    the route, its JSON body valid under the documented schema (closed, see strict)."""

    def __init__(self) -> None:
        self.spec = strict(openapi())
        resource = referencing.Resource.from_contents(
            self.spec, default_specification=referencing.jsonschema.DRAFT202012
        )
        self.registry: referencing.Registry[Any] = referencing.Registry().with_resource(
            SPEC_URI, resource
        )
        self.seen: set[tuple[str, str]] = set()

    async def check(
        self, client: TestClient[Any, Any], template: str, path: str, status: int, **kw: Any
    ) -> Any:
        response = await client.get(path, **kw)
        body = await response.read()
        assert response.status == status, (path, body[:300])
        documented = self.spec["paths"][template]["get"]["responses"]
        assert str(status) in documented, f"{template}: {status} not documented"
        content = documented[str(status)]["content"]
        media = response.content_type
        assert media in content, f"{template} {status}: {media} not documented"
        for header in documented[str(status)].get("headers", {}):
            assert header in response.headers, f"{template} {status}: no {header} header"
        self.seen.add((template, str(status)))
        if media != "application/json":
            return body
        found = await response.json()
        pointer = (
            "/paths/" + template.replace("~", "~0").replace("/", "~1")
            + f"/get/responses/{status}/content/application~1json/schema"
        )  # fmt: skip
        validator = jsonschema.Draft202012Validator(
            {"$ref": SPEC_URI + "#" + pointer}, registry=self.registry
        )
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(found)]
        assert not errors, f"{path} ({status}) does not match the document: {errors}"
        return found


async def test_real_answers_match_the_document(
    app: tuple[App, TestClient[Any, Any]], tmp_path: Path
) -> None:
    view, client = app
    c = Checker()
    grain, scan = "/grains/{grain_type}/{grain_key}", "/grains/{grain_type}"

    plain = await c.check(client, grain, f"/grains/acct/{PLAIN}", 200, headers=AUTH)
    assert "shadowed_by_offset" not in plain
    shadowed = await c.check(client, grain, f"/grains/acct/{SHADOWED}", 200, headers=AUTH)
    assert shadowed["shadowed_by_offset"] == 9
    raw = await c.check(
        client, grain, f"/grains/acct/{PLAIN}", 200,
        headers=AUTH | {"Accept": "application/octet-stream"},
    )  # fmt: skip
    assert raw == b"p"
    missing = await c.check(client, grain, "/grains/acct/none", 404, headers=AUTH)
    assert missing["caught_up"] is True
    await c.check(client, grain, f"/grains/acct/{PLAIN}?wait_ms=60001", 400, headers=AUTH)
    await c.check(client, grain, f"/grains/acct/{PLAIN}?stale=yes", 400, headers=AUTH)
    await c.check(client, grain, f"/grains/acct/{PLAIN}", 401)
    waited = await c.check(
        client, grain, f"/grains/acct/{PLAIN}?min_sequence=6&wait_ms=1", 504, headers=AUTH
    )
    assert waited["sequence"] == 5

    page = await c.check(client, scan, "/grains/acct?limit=1", 200, headers=AUTH)
    assert len(page["items"]) == 1 and page["next_cursor"]
    page = await c.check(client, scan, "/grains/acct?limit=1000", 200, headers=AUTH)
    assert len(page["items"]) == 3 and page["next_cursor"] is None
    assert any("shadowed_by_offset" in item for item in page["items"])
    # a page that ends the scan exactly at its limit says so (no empty page after it)
    page = await c.check(client, scan, "/grains/acct?limit=3", 200, headers=AUTH)
    assert len(page["items"]) == 3 and page["next_cursor"] is None
    page = await c.check(client, scan, "/grains/acct?limit=2", 200, headers=AUTH)
    assert len(page["items"]) == 2 and page["next_cursor"]
    # a fan-out's step (one worker's partitions) is a page like any other
    step = await c.check(client, scan, "/grains/acct?limit=2&partitions=0", 200, headers=AUTH)
    assert step["more"] == (step["next_cursor"] is not None)
    await c.check(client, scan, "/grains/acct?limit=0", 400, headers=AUTH)
    await c.check(client, scan, "/grains/acct?limit=1001", 400, headers=AUTH)
    await c.check(client, scan, "/grains/acct", 401)

    view.rows[2] = PartitionRow("active", 1, 10, False, rebuild_remaining=9)
    await c.check(client, grain, f"/grains/acct/{REBUILDING}", 503, headers=AUTH)
    await c.check(client, scan, "/grains/acct", 503, headers=AUTH)
    view.rows[2] = PartitionRow("active", 10, 10, True)

    # Partition 0 on a peer whose token differs: the caller's token was right, so not a 401
    # (which told the caller its own token was wrong) but a 502 naming the peer.
    peer_store = ReplicaStore(tmp_path / "peer", "t")
    peer_app = web.Application()
    add_query_routes(peer_app, App(peer_store), QueryConfig(token="other", _partitions=PARTITIONS))
    async with TestServer(peer_app) as peer:
        view.peer = f"127.0.0.1:{peer.port}"
        del view.rows[0]
        for template, path in ((grain, f"/grains/acct/{PLAIN}"), (scan, "/grains/acct")):
            refused = await c.check(client, template, path, 502, headers=AUTH)
            assert view.peer in refused["error"] and "token" in refused["error"], refused
        view.peer = ""
        view.rows[0] = PartitionRow("active", 10, 10, True)
    peer_store.close()

    found = await c.check(client, "/partitions", "/partitions", 200, headers=AUTH)
    replicas = found["partitions"]["0"]["replicas"]
    assert [r["reachable"] for r in replicas] == [True, False, False]
    assert "checkpoint" in replicas[0] and "checkpoint" not in replicas[2]
    await c.check(client, "/partitions", "/partitions", 401)
    assert await c.check(client, "/openapi.json", "/openapi.json", 200) == openapi()

    await c.check(client, "/healthz", "/healthz", 503)
    await c.check(client, "/readyz", "/readyz", 503)
    view.worker.snapshot.waiting_for_kafka = "no Kafka broker answered at 127.0.0.1:1"
    waiting = await c.check(client, "/healthz", "/healthz", 200)
    assert waiting["waiting_for_kafka"].startswith("no Kafka broker answered")
    view.worker.snapshot.last_poll_age_s = 0.1
    view.worker.snapshot.assigned = True
    await c.check(client, "/healthz", "/healthz", 200)
    await c.check(client, "/readyz", "/readyz", 200)
    # not ready: a list of partitions (the document said an integer, as in the 200)
    view.worker.snapshot.partitions = {0: PartitionRow("active", 10, 10, False)}  # no fetch yet
    assert (await c.check(client, "/readyz", "/readyz", 503))["partitions"] == [0]
    view.worker.snapshot.partitions[0] = PartitionRow("active", 10, 10, False, 0, 99.0)
    assert (await c.check(client, "/readyz", "/readyz", 503))["partitions"] == [0]
    view.worker.snapshot.partitions[0] = PartitionRow("active", 10, 5000, False, 0, 0.1)
    assert (await c.check(client, "/readyz", "/readyz", 503))["lag"] == {"0": 4990}
    view.worker.snapshot.partitions = {}
    await c.check(client, "/metrics", "/metrics", 200)
    await c.check(client, "/status.json", "/status.json", 200)
    await c.check(client, "/", "/", 200)

    # Every route the app serves is documented, and every documented answer was seen.
    served = {
        r.resource.canonical
        for r in client.app.router.routes()
        if r.method == "GET" and r.resource is not None
    }
    paths = c.spec["paths"]
    assert {p.replace("{grain_key:[\\s\\S]+}", "{grain_key}") for p in served} == set(paths)
    documented = {(p, s) for p in paths for s in paths[p]["get"]["responses"]}
    assert documented - c.seen == set(), "documented answers no test produced"
