"""A read request's parts checked before anything is read (query_request.py), unit by unit
and through the real routes on a one-worker app over a real store (no broker: the view is a
stub that serves every partition, caught up)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream_replica.fold import FoldCounts, GrainState
from stream_replica.grain_waits import GrainWaits
from stream_replica.membership import GroupAssignment
from stream_replica.query_app import QueryConfig, add_query_routes
from stream_replica.query_request import (
    ReadError,
    bearer_matches,
    grain_of,
    header_value,
    int_param,
    partitions_param,
    stale_param,
)
from stream_replica.status import PartitionRow
from stream_replica.store import ReplicaStore

PARTITIONS = 3
TOKEN = "s3cret"


def test_int_param_takes_ascii_digits_within_bounds_only() -> None:
    assert int_param({}, "limit", 7, 1, 10) == 7
    assert int_param({"limit": "10"}, "limit", 7, 1, 10) == 10
    for raw in ("²", "\u0661", "-1", "11", "1.5", " 3", "abc"):
        with pytest.raises(ReadError) as caught:
            int_param({"limit": raw}, "limit", 7, 1, 10)
        assert caught.value.status == 400 and f"limit={raw!r}" in str(caught.value)


def test_stale_accepts_ok_and_refuses_other_values() -> None:
    assert stale_param({}) is False and stale_param({"stale": ""}) is False
    assert stale_param({"stale": "ok"}) is True
    for raw in ("yes", "true", "1", "OK"):
        with pytest.raises(ReadError, match="the only value is 'ok'"):
            stale_param({"stale": raw})


def test_grain_of_applies_the_contract() -> None:
    assert grain_of({"grain_type": "acct", "grain_key": "a/b\n"}) == ("acct", "a/b\n")
    with pytest.raises(ReadError, match="contains '/'") as caught:
        grain_of({"grain_type": "a/b", "grain_key": "c"})
    assert caught.value.status == 400
    with pytest.raises(ReadError):
        grain_of({"grain_type": "acct", "grain_key": "\udc80"})  # not encodable as UTF-8


def test_partitions_param_names_partitions_of_the_topic() -> None:
    assert partitions_param("0,2,", 3) == {0, 2}
    for raw in ("3", "-1", "x", "1,99"):
        with pytest.raises(ReadError, match=r"expected partitions 0\.\.2"):
            partitions_param(raw, 3)


def test_bearer_scheme_is_case_insensitive_and_the_token_exact() -> None:
    assert bearer_matches("Bearer s3cret", TOKEN) and bearer_matches("bearer  s3cret ", TOKEN)
    assert not bearer_matches("Bearer s3cre", TOKEN) and not bearer_matches("s3cret", TOKEN)
    assert not bearer_matches("Basic s3cret", TOKEN) and not bearer_matches("", TOKEN)


def test_header_values_stay_ascii_and_decode_back() -> None:
    assert header_value("g-0001/x y") == "g-0001/x y"  # printable ASCII untouched
    for text in ("ünï/cödé", "crlf\r\nX-Evil: 1", "100%"):
        encoded = header_value(text)
        assert encoded.isascii() and encoded.isprintable() and unquote(encoded) == text


class _View:
    topic = "t"

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store
        self.grain_waits = GrainWaits()

    def partition_rows(self) -> dict[int, PartitionRow]:
        return {p: PartitionRow("active", 10, 10, True) for p in range(PARTITIONS)}

    def group_assignment(self) -> GroupAssignment | None:
        return None


GRAINS = {("acct", "ünï"): 3, ("acct", "crlf\r\nX-Evil: 1"): 4, ("acct", "plain"): 5}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    store = ReplicaStore(tmp_path / "db", "t")
    store.apply(
        {g: GrainState(s, 0, "primary", b"p", 0, s) for g, s in GRAINS.items()}, {}, FoldCounts()
    )
    app = web.Application()
    add_query_routes(app, _View(store), QueryConfig(endpoint="here:1", token=TOKEN, _partitions=3))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    store.close()


AUTH = {"Authorization": "bearer s3cret"}  # lower-case scheme: accepted


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/grains/a%2Fb/c", "contains '/'"),
        ("/grains/acct/plain?wait_ms=%C2%B2", "wait_ms='²'"),
        ("/grains/acct/plain?min_sequence=%D9%A1", "min_sequence='\u0661'"),
        ("/grains/acct/plain?stale=yes", "stale='yes'"),
        ("/grains/acct?limit=%C2%B2", "limit='²'"),
        ("/grains/a%2Fb?limit=1", "contains '/'"),
        ("/grains/acct?partitions=99", "partitions='99'"),
    ],
)
async def test_bad_requests_get_a_400_naming_the_parameter(
    client: TestClient[Any, Any], path: str, names: str
) -> None:
    response = await client.get(path, headers=AUTH)
    body = await response.json()
    assert response.status == 400, body
    assert names in body["error"]


async def test_any_key_is_readable_and_its_headers_are_percent_encoded(
    client: TestClient[Any, Any],
) -> None:
    for (grain_type, grain_key), sequence in GRAINS.items():
        path = f"/grains/{grain_type}/{quote(grain_key, safe='')}"
        response = await client.get(path, headers=AUTH)
        body = await response.json()
        assert response.status == 200, body
        assert body["grain_key"] == grain_key and body["sequence"] == sequence
        raw = await client.get(path, headers=AUTH | {"Accept": "application/octet-stream"})
        assert raw.status == 200 and await raw.read() == b"p"
        assert unquote(raw.headers["X-Grain-Key"]) == grain_key
    wrong = await client.get("/grains/acct/plain", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401


async def test_a_shadowed_grain_says_so_in_every_answer_form(tmp_path: Path) -> None:
    """The JSON answer had shadowed_by_offset (the state may be stale); the octet-stream
    answer and the Python client's GrainRead lost it."""
    from stream_replica.client import GrainRead

    store = ReplicaStore(tmp_path / "db", "t")
    shadowed = GrainState(5, 0, "primary", b"p", 0, 5, shadowed_by=42)
    store.apply(
        {("acct", "s"): shadowed, ("acct", "plain"): GrainState(5, 0, "primary", b"p", 0, 6)},
        {},
        FoldCounts(),
    )
    app = web.Application()
    add_query_routes(app, _View(store), QueryConfig(endpoint="here:1", token=TOKEN, _partitions=3))
    try:
        async with TestClient(TestServer(app)) as http:
            body = await (await http.get("/grains/acct/s", headers=AUTH)).json()
            assert body["shadowed_by_offset"] == 42
            assert GrainRead.from_json(body).shadowed_by_offset == 42
            raw = await http.get(
                "/grains/acct/s", headers=AUTH | {"Accept": "application/octet-stream"}
            )
            assert raw.headers["X-Grain-Shadowed-By-Offset"] == "42"
            plain = await http.get(
                "/grains/acct/plain", headers=AUTH | {"Accept": "application/octet-stream"}
            )
            assert "X-Grain-Shadowed-By-Offset" not in plain.headers
            assert (
                GrainRead.from_json(
                    await (await http.get("/grains/acct/plain", headers=AUTH)).json()
                ).shadowed_by_offset
                is None
            )
    finally:
        store.close()


async def test_a_method_not_allowed_says_which_are(client: TestClient[Any, Any]) -> None:
    """The JSON 405 dropped aiohttp's Allow header (RFC 9110: a 405 must name the methods)."""
    response = await client.post("/grains/acct/plain", headers=AUTH)
    body = await response.json()
    assert response.status == 405 and "POST" in body["error"], body
    assert "GET" in response.headers["Allow"]
