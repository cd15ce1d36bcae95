"""Scans when a partition's owner is down (real worker processes, one killed with -9 before the
group notices): ``?stale=ok`` pages come whole from the standbys; plain pages are a JSON 503
with Retry-After naming the dead owner's partitions, never a partial page. The async client
passes over the dead endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from stream_replica.client import AsyncReplicaClient
from stream_replica.routing import partition_for
from tests.helpers import TopicFactory, wait_until
from tests.oracle import read_oracle
from tests.test_query import (
    PARTITIONS,
    Node,
    http_get,
    nodes_cleanup,
    publish_scenario,
    settled,
    start_nodes,
)

pytestmark = pytest.mark.broker
__all__ = ["nodes_cleanup"]  # the fixture, imported for pytest


async def test_scan_with_a_dead_owner(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, nodes_cleanup: list[Node]
) -> None:
    topic = await make_topic(partitions=PARTITIONS)
    await publish_scenario(kafka_bootstrap, topic)
    oracle = await read_oracle(kafka_bootstrap, topic, PARTITIONS)
    expected = oracle.expected()
    ends = oracle.end_offsets()
    # a long session timeout: the group keeps the dead member (and its map) while we scan
    nodes = start_nodes(
        kafka_bootstrap, topic, tmp_path, 3, "--standby-replicas", "1",
        "--session-timeout-ms", "30000",
    )  # fmt: skip
    nodes_cleanup.extend(nodes)
    victim, scanner = nodes[1], nodes[0]
    types = sorted({t for t, _ in expected})
    grain_type = max(types, key=lambda t: sum(1 for g in expected if g[0] == t))
    keys = sorted(k for t, k in expected if t == grain_type)
    async with aiohttp.ClientSession() as session:

        async def with_standbys() -> bool:
            if not await settled(session, nodes, ends):
                return False
            found = json.loads((await http_get(session, scanner.base + "/partitions"))[1])
            return all(len(e["replicas"]) == 2 for e in found["partitions"].values())

        await wait_until(with_standbys, 60, what="3 workers with standbys to settle")
        found = json.loads((await http_get(session, scanner.base + "/partitions"))[1])
        owned = sorted(
            int(p)
            for p, e in found["partitions"].items()
            if e["replicas"][0]["endpoint"] == victim.endpoint
        )
        assert owned, "the victim owns no partition"
        in_owned = [k for k in keys if partition_for((grain_type, k), PARTITIONS) in owned]
        assert in_owned, "no grain of the scanned type lives on the victim"
        epoch = found["epoch"]
        victim.kill9()

        scan = f"{scanner.base}/grains/{grain_type}?limit=1000"
        status, body, headers = await http_get(session, scan + "&stale=ok")
        assert status == 200, body
        page = json.loads(body)
        assert [i["grain_key"] for i in page["items"]] == keys
        assert page["next_cursor"] is None
        assert all(i["served_by"] != victim.endpoint for i in page["items"])

        status, body, headers = await http_get(session, scan)
        assert status == 503, body
        refusal = json.loads(body)
        assert refusal["partitions"] == owned
        assert headers["Retry-After"] == "1"
        assert "items" not in refusal
        assert (
            f"partition{'s' if len(owned) > 1 else ''} {', '.join(map(str, owned))} "
            in (refusal["error"])
        )
        assert victim.endpoint in refusal["error"] and "?stale=ok" in refusal["error"]

        found = json.loads((await http_get(session, scanner.base + "/partitions"))[1])
        assert found["epoch"] == epoch, "the group rebalanced during the scans: nothing shown"

    victim_grain = (grain_type, in_owned[0])
    async with AsyncReplicaClient([victim.base, scanner.base]) as client:
        read = await client.get(*victim_grain, stale=True)
        assert read is not None and read.sequence == expected[victim_grain].sequence
        assert read.role == "standby" and read.served_by != victim.endpoint
