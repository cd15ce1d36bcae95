"""The read API's pure parts: the store's per-type key-ordered scan and the client's routing."""

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
