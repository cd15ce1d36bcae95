"""Routing maths: the partitioner matches the producers', cursors round-trip, replica order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_replica.routing import (
    OwnershipMap,
    ReplicaRef,
    decode_cursor,
    encode_cursor,
    partition_for,
)


def test_partition_matches_the_java_client() -> None:
    # Known murmur2 placements (Kafka's DefaultPartitioner / aiokafka for keyed records).
    from aiokafka.partitioner import murmur2

    for key, partitions in ((("account", "a/1"), 6), (("cart", "c"), 3), (("x", "ü/ß"), 12)):
        raw = f"{key[0]}/{key[1]}".encode()
        assert partition_for(key, partitions) == (murmur2(raw) & 0x7FFFFFFF) % partitions
    assert {partition_for(("g", f"k{i}"), 6) for i in range(200)} == set(range(6))


@given(st.text(min_size=1))
def test_cursor_round_trip(key: str) -> None:
    assert decode_cursor(encode_cursor(key)) == key


def test_bad_cursor_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not one this API returned"):
        decode_cursor("%%%")


def test_owner_first_standbys_only_when_allowed() -> None:
    owners = OwnershipMap(
        3,
        {
            0: [
                ReplicaRef("w0", "h0:1", "active"),
                ReplicaRef("w1", "h1:1", "standby"),
                ReplicaRef("w2", None, "standby"),
            ]
        },
    )
    assert [r.name for r in owners.endpoints(0, allow_standby=False)] == ["w0"]
    assert [r.name for r in owners.endpoints(0, allow_standby=True)] == ["w0", "w1"]
    assert owners.endpoints(5, allow_standby=True) == []
