"""Administration helpers: what they raise when the cluster cannot be used."""

from __future__ import annotations

import pytest

from stream_replica import admin
from stream_replica.errors import KafkaUnavailableError


async def test_waiting_for_an_unreachable_broker_ends_as_unavailable_not_misconfigured() -> None:
    """Exit 1 (errors.py), where it was an AdminError that the command line exits 2 with."""
    with pytest.raises(KafkaUnavailableError, match=r"127\.0\.0\.1:1") as unavailable:
        await admin.wait_for_broker("127.0.0.1:1", timeout_s=0.5)
    assert unavailable.value.exit_code == 1


def test_admin_and_replay_refusals_exit_2_in_every_command() -> None:
    """main() mapped them to 2, but run used the class's code (1) for the same error."""
    from stream_replica.replay import ReplayError

    assert admin.AdminError("x").exit_code == 2 and ReplayError("x").exit_code == 2


def test_replica_warnings_name_the_partitions_and_what_each_state_stops() -> None:
    def partition(number: int, leader: int, isr: tuple[int, ...]) -> admin.PartitionReplicas:
        return admin.PartitionReplicas(number, leader, (1, 2, 3), isr)

    info = admin.TopicInfo(
        "grains",
        4,
        3,
        {"min.insync.replicas": "2"},
        replica_sets=(
            partition(0, 1, (1, 2, 3)),
            partition(1, -1, ()),
            partition(2, 2, (2,)),
            partition(3, 3, (3, 1)),
        ),
    )
    assert info.leaderless() == [1]
    assert info.below_min_insync() == [1, 2]
    assert info.under_replicated() == [1, 2, 3]
    leaderless, below, under = info.replica_warnings()
    assert "partitions [1] have no leader" in leaderless
    assert "partitions [2] have fewer in-sync replicas than min.insync.replicas=2" in below
    assert "partitions [3] are under-replicated" in under
    assert info.as_json()["replicas"][1] == {
        "partition": 1,
        "leader": None,
        "replicas": [1, 2, 3],
        "isr": [],
    }
    healthy = admin.TopicInfo("grains", 1, 3, {}, replica_sets=(partition(0, 1, (1, 2, 3)),))
    assert healthy.replica_warnings() == []
