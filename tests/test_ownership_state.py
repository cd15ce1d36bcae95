"""ownership.py and the store's served records without a broker: what a worker reports to
the group (also after a restart), what readers see, and when lost partitions are dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import TopicPartition

from stream_replica.assignor import StoreOffsets
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.membership import GroupAssignment, PartitionOwners, Replica
from stream_replica.ownership import Ownership, is_fenced
from stream_replica.settings import WorkerSettings
from stream_replica.store import Checkpoint, ReplicaReader, ReplicaStore, Served

TOPIC = "t"


def ownership(store: ReplicaStore, grace_ms: int = 60_000) -> Ownership:
    return Ownership(
        store, TOPIC, instance_id="w1", standby_replicas=1, lost_partition_grace_ms=grace_ms
    )


def group_assignment(active: set[int], standby: set[int], epoch: int = 7) -> GroupAssignment:
    me, other = Replica("w1", None), Replica("w2", None)
    owners = {
        TopicPartition(TOPIC, p): PartitionOwners(me if p in active else other, ())
        for p in range(4)
    }
    return GroupAssignment(
        epoch,
        frozenset(TopicPartition(TOPIC, p) for p in active),
        frozenset(TopicPartition(TOPIC, p) for p in standby),
        owners,
    )


def state(partition: int) -> GrainState:
    return GrainState(1, 0, "primary", b"x", partition, 0)


def test_reports_checkpoints_and_claims_back_after_a_restart(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", TOPIC)
    store.set_checkpoints({0: Checkpoint(10, 111), 2: Checkpoint(30, 333)})
    own = ownership(store)
    assert own.local_state().stores == {0: StoreOffsets(10, 111), 2: StoreOffsets(30, 333)}
    assert own.local_state().epoch == 0 and not own.local_state().active

    own._on_group_assignment(group_assignment({0, 1}, {2, 1}))
    standby = own.assigned([0, 1])
    assert standby == {2}  # never standby for its own active partition
    own.revoked([0, 1])  # the eager protocol revokes everything before the next join
    local = own.local_state()
    assert (local.epoch, local.active, local.standby) == (7, {0, 1}, {2})
    assert local.instance_id == "w1"
    store.close()

    restarted = ownership(ReplicaStore(tmp_path / "db", TOPIC))
    local = restarted.local_state()
    assert (local.epoch, local.active, local.standby) == (7, {0, 1}, {2})
    restarted.store.close()


def test_assignment_of_another_protocol_gives_no_standbys(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", TOPIC)
    own = ownership(store)
    own._on_group_assignment(group_assignment({0}, {1}, epoch=3))
    own.assigned([0])
    # Next rebalance ran round-robin (an older member in the group): our callback not called.
    assert own.assigned([0, 3]) == frozenset()
    assert own.local_state().epoch == 3 and own.local_state().active == {0, 3}
    store.close()


def test_readers_see_served_roles_and_lag(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", TOPIC)
    store.apply({("g", "a"): state(0), ("g", "b"): state(1)}, {}, FoldCounts())
    own = ownership(store)
    own._on_group_assignment(group_assignment({0}, {1}))
    own.assigned([0])
    own.report_lag({0: 0, 1: 5}, force=True)
    with ReplicaReader(tmp_path / "db") as reader:
        served = reader.served()
        assert (served[0].role, served[0].lag, served[0].caught_up) == ("active", 0, True)
        assert (served[1].role, served[1].lag, served[1].caught_up) == ("standby", 5, False)
        assert reader.served_for(state(1)) == served[1]
    own.revoked([0])
    own.stopped()
    with ReplicaReader(tmp_path / "db") as reader:
        assert not any(s.serving for s in reader.served().values())
        assert reader.get(("g", "a")) == state(0)  # still readable, marked not served
    store.close()


def test_lost_partitions_are_dropped_after_the_grace_period(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", TOPIC)
    store.apply(
        {("g", "a"): state(0), ("g", "b"): state(1)},
        {0: Checkpoint(1, 1), 1: Checkpoint(1, 1)},
        FoldCounts(),
    )
    own = ownership(store, grace_ms=60_000)
    own.assigned([0])  # 1 is no longer ours
    since = own.served()[1].since_ms
    assert own.expired(store.checkpoints(), now=since + 60_000) == []
    lost = own.expired(store.checkpoints(), now=since + 60_001)
    assert lost == [1]
    store.drop_partitions(lost)
    own.dropped(lost)
    assert store.get(("g", "b")) is None and store.get(("g", "a")) == state(0)
    assert 1 not in store.checkpoints() and 1 not in store.served()

    patient = ownership(store, grace_ms=3_600_000)
    patient.assigned([])
    assert patient.expired(store.checkpoints()) == []  # 0 just stopped being served
    store.close()


def test_wipe_all_forgets_served_records_and_claims(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", TOPIC)
    own = ownership(store)
    own._on_group_assignment(group_assignment({0}, set()))
    own.assigned([0])
    store.wipe_all()
    assert store.served() == {} and store.last_assignment().active == frozenset()
    store.close()


def test_fenced_error_is_recognised() -> None:
    from aiokafka.errors import KafkaError, for_code

    assert is_fenced(for_code(82)())
    assert is_fenced(KafkaError(repr(for_code(82)())))  # how aiokafka wraps a JoinGroup error
    assert not is_fenced(KafkaError("UnknownMemberIdError"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, 10_000), ({"instance_id": "w-1"}, 45_000), ({"session_timeout_ms": 7000}, 7000)],
)
def test_session_timeout_defaults(tmp_path: Path, given: dict[str, object], expected: int) -> None:
    settings = WorkerSettings(db=tmp_path, **given)  # type: ignore[arg-type]
    assert settings.effective_session_timeout_ms == expected


def test_container_name_from_reverse_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from stream_replica import cli

    monkeypatch.setattr(socket, "gethostname", lambda: "3f2a9c1b7d0e")
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, port, family: [(family, 1, 6, "", ("172.18.0.5", 0))]
    )
    names = {"172.18.0.5": "stream-replica-worker-2.stream-replica_default"}
    monkeypatch.setattr(socket, "gethostbyaddr", lambda ip: (names[ip], [], [ip]))
    assert cli.container_name() == "stream-replica-worker-2"
    names["172.18.0.5"] = "3f2a9c1b7d0e"  # no container DNS: only the hostname comes back
    with pytest.raises(cli.UsageError, match="set the instance id explicitly"):
        cli.container_name()


def test_container_name_refusal_names_the_option_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--advertise @container:PORT`` outside a container was refused as ``--instance-id
    @container``, an option the operator had not given."""
    import socket

    from stream_replica import cli

    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, port, family: [(family, 1, 6, "", ("127.0.0.1", 0))]
    )
    monkeypatch.setattr(socket, "gethostbyaddr", lambda ip: ("vm", [], [ip]))
    settings = WorkerSettings(db=Path("/tmp/x"), http="127.0.0.1:8080", advertise="@container:8080")
    with pytest.raises(cli.UsageError) as refused:
        cli.with_container_name(settings, cli.container_name)
    line = str(refused.value)
    assert line.startswith("--advertise @container:8080: no container name found"), line
    assert "--instance-id" not in line and line.endswith("set the address explicitly"), line


def test_reload_after_the_store_was_wiped_forgets_claims_and_roles(tmp_path: Path) -> None:
    """The worker builds its ownership before it binds the store to the topic; when the
    topic was recreated the bind wipes the store, and the ownership must not keep claiming
    the old partitions nor believe roles are recorded that the store no longer has."""
    from stream_replica.store import TopicIdentity

    store = ReplicaStore(tmp_path / "db", TOPIC)
    store.bind_topic(TopicIdentity("id-1", 4))
    store.set_checkpoints({0: Checkpoint(10, 111)})
    own = ownership(store)
    own._on_group_assignment(group_assignment({0}, {1}))
    own.assigned([0])
    restarted = ownership(store)
    assert restarted.local_state().active == {0}

    assert store.bind_topic(TopicIdentity("id-2", 4)) is not None  # recreated: wiped
    restarted.reload()
    local = restarted.local_state()
    assert (local.epoch, local.active, local.standby) == (0, frozenset(), frozenset())
    restarted.assigned([0])
    assert store.served()[0].role == "active"  # written, not skipped as unchanged
    store.close()


def test_served_records_are_rewritten_while_nothing_changes(tmp_path: Path) -> None:
    """A reader takes a record not rewritten for 30 s for a dead worker's (store_records.
    Served.stale): an idle worker, caught up, rewrites its unchanged records every 10 s."""
    store = ReplicaStore(tmp_path / "db", TOPIC)
    own = ownership(store)
    own._on_group_assignment(group_assignment({0}, set()))
    own.assigned([0])
    own.report_lag({0: 0}, force=True)
    written = store.served()[0].updated_ms
    own.report_lag({0: 0}, force=True)  # unchanged, just written: not again
    assert store.served()[0].updated_ms == written
    old = store.served()[0]
    own._served[0] = Served(old.role, old.lag, old.since_ms, old.updated_ms - 11_000)
    own.report_lag({0: 0}, force=True)
    rewritten = own.served()[0]  # (it was set 11 s back just above)
    assert rewritten.updated_ms >= written and store.served()[0] == rewritten
    store.close()
