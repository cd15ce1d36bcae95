"""The state-aware assignor, pure and broker-free: balance, stickiness, freshest-wins,
minimal moves, standby rules, determinism; the wire formats and the aiokafka adapter."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence

import msgpack
import pytest
from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.protocol.metadata import MetadataResponse_v0
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_replica.assignor import MemberState, Plan, StoreOffsets, assign, freshness
from stream_replica.membership import (
    PROTOCOL_NAME,
    GroupAssignment,
    LocalState,
    Replica,
    StateAwareAssignor,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)

PARTITIONS = st.integers(min_value=0, max_value=24)
STANDBYS = st.integers(min_value=0, max_value=4)


@st.composite
def groups(draw: st.DrawFn, claims: bool = True) -> tuple[list[MemberState], int, dict[int, int]]:
    """Members with random stores and (optionally) random, possibly conflicting, claims."""
    n_parts = draw(PARTITIONS)
    n_members = draw(st.integers(min_value=1, max_value=7))
    part = st.integers(min_value=0, max_value=max(0, n_parts + 1))  # a few unknown ids too
    store = st.builds(StoreOffsets, st.integers(min_value=0, max_value=50), st.integers(0, 10**6))
    members = []
    for k in range(n_members):
        members.append(
            MemberState(
                member_id=f"m{k}-{draw(st.uuids()).hex[:6]}",
                instance_id=draw(st.none() | st.just(f"worker-{k}")),
                stores=draw(st.dictionaries(part, store, max_size=n_parts + 1)),
                active=frozenset(draw(st.sets(part))) if claims else frozenset(),
                standby=frozenset(draw(st.sets(part))) if claims else frozenset(),
                epoch=draw(st.integers(min_value=0, max_value=3)) if claims else 0,
            )
        )
    ends = draw(st.dictionaries(part, st.integers(min_value=0, max_value=50)))
    return members, n_parts, ends


def spread(counts: Sequence[int]) -> int:
    return max(counts) - min(counts)


def fed_back(members: list[MemberState], plan: Plan) -> list[MemberState]:
    """The members as they report themselves after applying ``plan``."""
    out = []
    for m in members:
        got = plan.members[m.member_id]
        out.append(
            MemberState(
                m.member_id,
                m.instance_id,
                m.stores,
                frozenset(got.active),
                frozenset(got.standby),
                plan.epoch,
            )
        )
    return out


def check_valid(plan: Plan, members: list[MemberState], n_parts: int, standbys: int) -> None:
    ids = {m.member_id for m in members}
    assert set(plan.members) == ids
    actives = Counter(p for a in plan.members.values() for p in a.active)
    assert actives == Counter(range(n_parts))  # every partition exactly once
    assert spread([len(a.active) for a in plan.members.values()]) <= 1
    copies = min(standbys, len(members) - 1)
    for p in range(n_parts):
        active, sbs = plan.owners[p]
        assert p in plan.members[active].active
        assert len(sbs) == len(set(sbs)) == copies
        assert active not in sbs
        for s in sbs:
            assert p in plan.members[s].standby
    assert sum(len(a.standby) for a in plan.members.values()) == n_parts * copies
    assert spread([len(a.standby) for a in plan.members.values()]) <= 1


@settings(max_examples=400)
@given(groups(), STANDBYS)
def test_every_partition_once_balanced_and_standbys_valid(
    group: tuple[list[MemberState], int, dict[int, int]], standbys: int
) -> None:
    members, n_parts, ends = group
    plan = assign(members, n_parts, standby_replicas=standbys, end_offsets=ends)
    check_valid(plan, members, n_parts, standbys)
    assert plan.epoch == max(m.epoch for m in members) + 1


@settings(max_examples=300)
@given(groups(), STANDBYS)
def test_sticky_rerun_moves_nothing(
    group: tuple[list[MemberState], int, dict[int, int]], standbys: int
) -> None:
    members, n_parts, ends = group
    first = assign(members, n_parts, standby_replicas=standbys, end_offsets=ends)
    again = assign(fed_back(members, first), n_parts, standby_replicas=standbys, end_offsets=ends)
    assert again.members == first.members
    assert again.owners == first.owners


@settings(max_examples=300)
@given(groups(claims=False), STANDBYS)
def test_freshest_wins_without_owner(
    group: tuple[list[MemberState], int, dict[int, int]], standbys: int
) -> None:
    """No claims: a partition not on its freshest member is there only because moving it to
    any fresher member would break the balance."""
    members, n_parts, ends = group
    plan = assign(members, n_parts, standby_replicas=standbys, end_offsets=ends)
    count = {m: len(a.active) for m, a in plan.members.items()}
    for p in range(n_parts):
        owner = plan.owners[p][0]
        mine = freshness(
            next(m for m in members if m.member_id == owner).stores.get(p), ends.get(p)
        )
        for m in members:
            if freshness(m.stores.get(p), ends.get(p)) > mine:
                moved = {**count, owner: count[owner] - 1, m.member_id: count[m.member_id] + 1}
                assert spread(list(moved.values())) > 1


def test_freshest_store_takes_an_orphan_and_past_end_stores_count_as_nothing() -> None:
    members = [
        MemberState("a", stores={0: StoreOffsets(90, 5)}),
        MemberState("b", stores={0: StoreOffsets(120, 1)}),
        MemberState("c", stores={0: StoreOffsets(100, 9)}),
    ]
    assert assign(members, 1).owners[0][0] == "b"
    # The end is 100: b's store is from an older topic; a and c are both caught up, c later.
    assert assign(members, 1, end_offsets={0: 100}).owners[0][0] == "c"
    # Its owner left: the freshest of the others wins.
    gone = [MemberState("a", stores={0: StoreOffsets(90, 5)}), members[2]]
    assert assign(gone, 1).owners[0][0] == "c"


def test_standbys_prefer_the_freshest_stores() -> None:
    fresh = StoreOffsets(100, 1)
    members = [
        MemberState("a", active=frozenset({0}), stores={1: fresh}, epoch=1),
        MemberState("b", active=frozenset({1}), stores={2: fresh}, epoch=1),
        MemberState("c", active=frozenset({2}), stores={0: fresh}, epoch=1),
    ]
    plan = assign(members, 3, standby_replicas=1)
    assert plan.owners == {0: ("a", ("c",)), 1: ("b", ("a",)), 2: ("c", ("b",))}


def test_newest_claim_wins_a_conflict() -> None:
    members = [
        MemberState("old", active=frozenset({0, 1}), epoch=4),
        MemberState("new", active=frozenset({0}), epoch=5),
    ]
    assert assign(members, 2).owners[0][0] == "new"


def min_moves(claims: list[int], n_parts: int) -> int:
    """Brute force: the fewest claimed partitions that must leave their owners for balance."""
    n = len(claims)
    base, extra = divmod(n_parts, n)
    return min(
        sum(max(0, c - base - (i in bigger)) for i, c in enumerate(claims))
        for bigger in map(set, itertools.combinations(range(n), extra))
    )


@settings(max_examples=200)
@given(
    PARTITIONS,
    st.integers(min_value=1, max_value=5),
    st.lists(st.booleans(), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_join_and_leave_sequences_move_the_minimum(
    n_parts: int, start: int, joins: list[bool], rnd: random.Random
) -> None:
    members = [MemberState(f"m{k}", instance_id=f"w{k}") for k in range(start)]
    plan = assign(members, n_parts)
    serial = start
    for join in joins:
        members = fed_back(members, plan)
        if join:
            members.append(MemberState(f"m{serial}", instance_id=f"w{serial}"))
            serial += 1
        elif len(members) > 1:
            members.pop(rnd.randrange(len(members)))
        before = {p: o for p, (o, _) in plan.owners.items()}
        present = {m.member_id for m in members}
        plan = assign(members, n_parts)
        check_valid(plan, members, n_parts, 0)
        moved = sum(1 for p, o in before.items() if o in present and plan.owners[p][0] != o)
        claims = [len(m.active) for m in members]
        assert moved == min_moves(claims, n_parts)
        if join:  # one joiner among balanced members takes exactly its fair share
            assert moved == n_parts // len(members)
        else:
            assert moved == 0


def test_restarted_static_member_keeps_its_partitions() -> None:
    """A new member id with the same instance id and the served set its store reports."""
    first = assign([MemberState("a-1", "a"), MemberState("b-1", "b")], 6)
    b_had = first.members["b-1"].active
    members = [
        MemberState("a-1", "a", active=frozenset(first.members["a-1"].active), epoch=first.epoch),
        MemberState("b-2", "b", active=frozenset(b_had), epoch=first.epoch),
    ]
    assert assign(members, 6).members["b-2"].active == b_had


@settings(max_examples=200)
@given(groups(), STANDBYS, st.randoms(use_true_random=False))
def test_deterministic_under_permutation(
    group: tuple[list[MemberState], int, dict[int, int]], standbys: int, rnd: random.Random
) -> None:
    members, n_parts, ends = group
    plan = assign(members, n_parts, standby_replicas=standbys, end_offsets=ends)

    def shuffled_dict(d: dict[int, StoreOffsets]) -> dict[int, StoreOffsets]:
        items = list(d.items())
        rnd.shuffle(items)
        return dict(items)

    again = [
        MemberState(
            m.member_id, m.instance_id, shuffled_dict(dict(m.stores)), m.active, m.standby, m.epoch
        )
        for m in members
    ]
    rnd.shuffle(again)
    parts = list(range(n_parts))
    rnd.shuffle(parts)
    other = assign(again, parts, standby_replicas=standbys, end_offsets=ends)
    assert repr(other) == repr(plan)


# --- wire formats and the aiokafka adapter ---------------------------------------------------

OFFSET = st.integers(min_value=0, max_value=2**63 - 1)
NAME = st.none() | st.text(max_size=20)
LOCAL_STATES = st.builds(
    LocalState,
    topic=st.text(min_size=1, max_size=20),
    instance_id=NAME,
    endpoint=NAME,
    stores=st.dictionaries(st.integers(0, 10_000), st.builds(StoreOffsets, OFFSET, OFFSET)),
    active=st.frozensets(st.integers(0, 10_000)),
    standby=st.frozensets(st.integers(0, 10_000)),
    epoch=OFFSET,
)
MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text()
    | st.binary()
    | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.integers(-(2**63), 2**63 - 1) | st.text(), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(LOCAL_STATES)
def test_subscription_round_trip(state: LocalState) -> None:
    assert decode_subscription(encode_subscription(state)) == state


@settings(max_examples=500)
@given(st.binary(max_size=200) | MSGPACK_VALUES.map(msgpack.packb))
def test_garbage_user_data_is_tolerated(data: bytes) -> None:
    got = decode_subscription(data)
    assert got is None or isinstance(got, LocalState)
    assigned = decode_assignment(data)
    assert assigned is None or isinstance(assigned, GroupAssignment)


@settings(max_examples=300)
@given(st.lists(MSGPACK_VALUES, min_size=8, max_size=8))
def test_version_one_shaped_garbage_is_tolerated(fields: list[object]) -> None:
    """The right version and field count, anything inside."""
    got = decode_subscription(msgpack.packb([1, *fields[:7]]))
    assert got is None or isinstance(got, LocalState)
    assigned = decode_assignment(msgpack.packb([1, *fields[:4]]))
    assert assigned is None or isinstance(assigned, GroupAssignment)


def test_newer_version_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    state = LocalState("grains", "w1", "h:1", {0: StoreOffsets(5, 6)})
    newer = msgpack.packb(
        [2, *msgpack.unpackb(encode_subscription(state), strict_map_key=False)[1:], "more"]
    )
    assert decode_subscription(newer) is None
    assert "unknown version 2" in caplog.text
    assert decode_subscription(None) is None
    table = [Replica("a", None)]
    assert decode_assignment(encode_assignment(1, 0, table, {"t": {0: [0]}})) is not None
    assert decode_assignment(msgpack.packb([2, 1, 0, [["a", None]], {}])) is None


def cluster(topic: str, partitions: int) -> ClusterMetadata:
    """Real aiokafka metadata, filled from a metadata response instead of a broker."""
    meta = ClusterMetadata()
    meta.update_metadata(
        MetadataResponse_v0(
            [(0, "localhost", 9092)],
            [(0, topic, [(0, p, 0, [0], [0]) for p in range(partitions)])],
        )
    )
    return meta


class Worker:
    """A worker's side of the interface: its store's checkpoints plus what it last got."""

    def __init__(self, name: str, stores: dict[int, StoreOffsets], standbys: int = 1) -> None:
        self.name, self.stores = name, stores
        self.binding = StateAwareAssignor(self, standby_replicas=standbys)

    def local_state(self) -> LocalState:
        last = self.binding.last
        return LocalState(
            topic="grains",
            instance_id=self.name,
            endpoint=f"{self.name}:8080",
            stores=self.stores,
            active=frozenset(tp.partition for tp in last.active) if last else frozenset(),
            standby=frozenset(tp.partition for tp in last.standby) if last else frozenset(),
            epoch=last.epoch if last else 0,
        )


def rebalance(
    workers: list[Worker], meta: ClusterMetadata, garbage: bool = False
) -> dict[str, bytes]:
    """One join/sync round through the real wire structs; workers[0] leads."""
    joined = {}
    for k, w in enumerate(workers):
        sent = w.binding.strategy.metadata({"grains"}).encode()
        joined[f"{w.name}-member-{k}"] = ConsumerProtocol.METADATA.decode(sent)
    if garbage:
        joined["zombie"] = ConsumerProtocol.METADATA(0, ["grains"], b"\xc1 not msgpack")
    result = workers[0].binding.strategy.assign(meta, joined)
    assert set(result) == set(joined)
    for k, w in enumerate(workers):
        got = ConsumerProtocol.ASSIGNMENT.decode(result[f"{w.name}-member-{k}"].encode())
        w.binding.strategy.on_assignment(got)
        assert w.binding.last is not None
        assert w.binding.last.active == set(got.partitions())
    return {mid: a.encode() for mid, a in result.items()}


def test_adapter_assigns_with_standbys_and_an_ownership_map() -> None:
    fresh = StoreOffsets(1000, 7)
    workers = [Worker("w0", {}), Worker("w1", {0: fresh, 1: fresh}), Worker("w2", {2: fresh})]
    assert workers[0].binding.strategy is not workers[1].binding.strategy  # no shared state
    assert issubclass(workers[0].binding.strategy, AbstractPartitionAssignor)
    assert workers[0].binding.strategy.name == PROTOCOL_NAME
    meta = cluster("grains", 6)
    rebalance(workers, meta, garbage=True)
    lasts = [w.binding.last for w in workers]
    assert all(last is not None for last in lasts)
    first = lasts[0]
    assert first is not None
    assert {tp.partition for tp in workers[1].binding.last.active} >= {0, 1}  # type: ignore[union-attr]
    assert TopicPartition("grains", 2) in workers[2].binding.last.active  # type: ignore[union-attr]
    assert len(first.owners) == 6 and all(last.owners == first.owners for last in lasts)  # type: ignore[union-attr]
    for tp, owners in first.owners.items():
        assert len(owners.standbys) == 1 and owners.standbys[0] != owners.active
        if owners.active.name == "zombie":  # assigned like an empty member, no endpoint
            assert owners.active.endpoint is None
            continue
        holder = next(w for w in workers if w.name == owners.active.name)
        assert owners.active.endpoint == f"{holder.name}:8080"
        assert tp in holder.binding.last.active  # type: ignore[union-attr]
    # The garbage member is assigned like an empty one; the next round moves nothing.
    before = {tp: o.active.name for tp, o in first.owners.items()}
    rebalance(workers, meta)
    after = workers[2].binding.last
    assert after is not None and after.epoch == first.epoch + 1
    assert {tp: o.active.name for tp, o in after.owners.items() if before[tp] != "zombie"} == {
        tp: n for tp, n in before.items() if n != "zombie"
    }


def test_adapter_restart_of_a_static_member_keeps_ownership() -> None:
    workers = [Worker("w0", {}), Worker("w1", {})]
    meta = cluster("grains", 4)
    rebalance(workers, meta)
    had = workers[1].binding.last
    assert had is not None
    # A new process: new member id, same instance id, served set restored from its store.
    restarted = Worker("w1", {})
    restarted.binding.last = GroupAssignment(had.epoch, had.active, had.standby, {})
    workers[1] = restarted
    rebalance(workers, meta)
    assert restarted.binding.last is not None and restarted.binding.last.active == had.active


def test_adapter_falls_back_when_the_leader_is_not_ours() -> None:
    worker = Worker("w0", {})
    plain = ConsumerProtocol.ASSIGNMENT(0, [("grains", [0, 1])], b"")
    worker.binding.strategy.on_assignment(plain)
    assert worker.binding.last == GroupAssignment(
        0, frozenset({TopicPartition("grains", 0), TopicPartition("grains", 1)}), frozenset(), {}
    )
