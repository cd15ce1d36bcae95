"""State-aware partition assignment: pure maths, no Kafka, no clock (docs/assignor.md).

Actives: each partition gets exactly one owner; counts are balanced (max - min <= 1). A
partition stays with the member that reports owning it when balance allows (the newest
claim wins a conflict); the rest go to the member whose store is freshest for them. Only the
partitions balance forces off their owners move, so joins and leaves move the minimum.

Standbys: each partition gets min(N, members - 1) other members, kept where they were when
possible, else the freshest stores, with standby counts balanced the same way.

Everything iterates in sorted order, so the result depends on the input's content only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

# (has a usable store, offset it holds, caught-up time): larger is fresher.
Freshness = tuple[int, int, int]
_NOTHING: Freshness = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class StoreOffsets:
    """What a member's store holds for one partition (its checkpoint)."""

    next_offset: int
    caught_up_at_ms: int


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as the leader sees it. ``active``/``standby``/``epoch``: what the member
    itself reports owning and the epoch of the assignment that gave it (0: none)."""

    member_id: str
    instance_id: str | None = None
    stores: Mapping[int, StoreOffsets] = field(default_factory=dict)
    active: frozenset[int] = frozenset()
    standby: frozenset[int] = frozenset()
    epoch: int = 0

    @property
    def name(self) -> str:
        """Stable across restarts for static members (their member id is new each time)."""
        return self.instance_id or self.member_id


@dataclass(frozen=True, slots=True)
class MemberAssignment:
    active: tuple[int, ...]
    standby: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """``members``: member id -> its partitions. ``owners``: partition -> (active member id,
    standby member ids, freshest first: the first is the best takeover candidate)."""

    epoch: int
    members: dict[str, MemberAssignment]
    owners: dict[int, tuple[str, tuple[str, ...]]]


def freshness(store: StoreOffsets | None, end_offset: int | None) -> Freshness:
    """A store past the partition's end belongs to an older incarnation of the topic (it
    would be wiped), so it counts as nothing; caught-up stores tie on the offset."""
    if store is None or (end_offset is not None and store.next_offset > end_offset):
        return _NOTHING
    held = store.next_offset if end_offset is None else min(store.next_offset, end_offset)
    return (1, held, store.caught_up_at_ms)


def assign(
    members: Iterable[MemberState],
    partitions: int | Iterable[int],
    *,
    standby_replicas: int = 0,
    end_offsets: Mapping[int, int] | None = None,
) -> Plan:
    """The assignment for one rebalance. ``partitions``: a count (0..n-1) or the ids.
    ``end_offsets``: exact end offsets when known (stale ones would mis-rank stores)."""
    parts = sorted(set(range(partitions) if isinstance(partitions, int) else partitions))
    ms = sorted(members, key=lambda m: (m.name, m.member_id))
    if len({m.member_id for m in ms}) != len(ms):
        raise ValueError("member ids must be unique")
    epoch = max((m.epoch for m in ms), default=0) + 1
    if not ms:
        return Plan(epoch, {}, {})
    ends = end_offsets or {}
    fresh = {
        (i, p): freshness(m.stores.get(p), ends.get(p))
        for i, m in enumerate(ms)
        for p in parts
        if p in m.stores
    }

    def rank(i: int, p: int) -> tuple[int, int, int, int]:
        f = fresh.get((i, p), _NOTHING)
        return (-f[0], -f[1], -f[2], i)  # freshest first, then member order

    # Conflicting active claims (a member that missed a rebalance): newest epoch, then freshest.
    claimant: dict[int, int] = {}
    for i, m in enumerate(ms):
        for p in sorted(m.active.intersection(parts)):
            j = claimant.get(p)
            if j is None or (-m.epoch, rank(i, p)) < (-ms[j].epoch, rank(j, p)):
                claimant[p] = i
    claims: list[list[int]] = [[] for _ in ms]
    for p, i in claimant.items():
        claims[i].append(p)
    active = _distribute(parts, 1, claims, lambda i, p: True, rank)
    owner = {p: i for i, held in enumerate(active) for p in held}

    copies = max(0, min(standby_replicas, len(ms) - 1))
    sb_claims: list[list[int]] = [[] for _ in ms]
    if copies:
        for p in parts:  # at most `copies` kept claims per partition, the freshest
            who = sorted(
                (i for i, m in enumerate(ms) if p in m.standby and owner[p] != i),
                key=lambda i: rank(i, p),
            )
            for i in who[:copies]:
                sb_claims[i].append(p)
    standby = _distribute(parts, copies, sb_claims, lambda i, p: owner[p] != i, rank)

    owners = {
        p: (
            ms[owner[p]].member_id,
            tuple(
                ms[i].member_id
                for i in sorted(
                    (i for i, s in enumerate(standby) if p in s), key=lambda i: rank(i, p)
                )
            ),
        )
        for p in parts
    }
    result = {
        m.member_id: MemberAssignment(tuple(sorted(active[i])), tuple(sorted(standby[i])))
        for i, m in enumerate(ms)
    }
    return Plan(epoch, result, owners)


def _distribute(
    parts: list[int],
    copies: int,
    claims: list[list[int]],
    eligible: Callable[[int, int], bool],
    rank: Callable[[int, int], tuple[int, int, int, int]],
) -> list[set[int]]:
    """Place ``copies`` holders per partition on distinct eligible members, counts within one
    of each other. Claims are kept up to each member's quota; the rest go freshest-first."""
    n = len(claims)
    base, extra = divmod(len(parts) * copies, n)
    held: list[set[int]] = [set() for _ in range(n)]
    if not copies:
        return held
    claims = [[p for p in c if eligible(i, p)] for i, c in enumerate(claims)]
    # Quota base+1 goes to members claiming more than base (most claims first): this keeps
    # the largest possible number of claims, i.e. moves the fewest partitions.
    over = sorted(
        (i for i in range(n) if len(claims[i]) > base), key=lambda i: (-len(claims[i]), i)
    )
    quota = [base] * n
    for i in over[:extra]:
        quota[i] = base + 1
    for i in range(n):
        mine = sorted(claims[i], key=lambda p: (rank(i, p), p))
        held[i].update(mine[: quota[i]])
    need = {p: copies - sum(p in h for h in held) for p in parts}
    spare = extra - sum(len(h) > base for h in held)  # base+1 quotas still free

    def room(i: int) -> bool:
        return len(held[i]) < base or (len(held[i]) == base and spare > 0)

    def grow(i: int) -> None:  # i's count goes up by one
        nonlocal spare
        spare -= len(held[i]) == base

    edges = sorted((rank(i, p), p) for p in parts if need[p] for i in range(n) if eligible(i, p))
    for (*_, i), p in edges:
        if need[p] and p not in held[i] and room(i):
            grow(i)
            held[i].add(p)
            need[p] -= 1
    for p in parts:
        while need[p]:
            # Every eligible member is full: breadth-first, x0 takes p and hands q0 to x1, which
            # hands q1 on ... to a member with room. Each member on the path gains one
            # partition and loses a different one; only the last one's count grows.
            came: dict[int, tuple[int, int] | None] = {
                i: None for i in range(n) if p not in held[i] and eligible(i, p)
            }
            queue = deque(came)
            while queue and not room(queue[0]):
                x = queue.popleft()
                for q in sorted(held[x]):
                    for y in range(n):
                        if y not in came and q not in held[y] and eligible(y, q):
                            came[y] = (x, q)
                            queue.append(y)
            if not queue:
                raise AssertionError(f"no balanced placement for partition {p}")  # pragma: no cover
            y = queue[0]
            grow(y)
            while (step := came[y]) is not None:
                x, q = step
                held[x].discard(q)
                held[y].add(q)
                y = x
            held[y].add(p)
            need[p] -= 1
    return held
