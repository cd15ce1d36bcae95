"""The state-aware assignor, pure and broker-free: balance, stickiness, freshest-wins,
minimal moves, standby rules, determinism; the wire formats and the aiokafka adapter."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_replica.assignor import MemberState, Plan, StoreOffsets, assign, freshness

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
