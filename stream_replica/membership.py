"""The assignor on the wire: subscription/assignment user data and the aiokafka adapter.

Each member's subscription carries what its store holds and what it owns, so the leader
needs no memory between rebalances (aiokafka's sticky assignor keeps it on the class, shared
by every consumer in the process). Formats and rules: docs/assignor.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgpack
from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from stream_replica.assignor import MemberState, StoreOffsets, assign

log = logging.getLogger("stream_replica.membership")

PROTOCOL_NAME: Final = "stream-replica-state"  # every member must offer the same name
SUBSCRIPTION_VERSION: Final = 1
ASSIGNMENT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class LocalState:
    """What a member reports at each join. ``active``/``standby``/``epoch`` should survive a
    restart (the store's served set), so a restarted member claims its partitions back.
    ``end_offsets``: exact end offsets if the worker has fresh ones; used only when this member
    leads, never sent."""

    topic: str
    instance_id: str | None = None
    endpoint: str | None = None  # "host:port" for query routing
    stores: Mapping[int, StoreOffsets] = field(default_factory=dict)
    active: frozenset[int] = frozenset()
    standby: frozenset[int] = frozenset()
    epoch: int = 0
    end_offsets: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Replica:
    name: str  # instance id, else member id
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class PartitionOwners:
    active: Replica
    standbys: tuple[Replica, ...]  # freshest first: the first is the best takeover


@dataclass(frozen=True, slots=True)
class GroupAssignment:
    """What one member learns from a rebalance: its partitions and who serves every one."""

    epoch: int
    active: frozenset[TopicPartition]
    standby: frozenset[TopicPartition]
    owners: Mapping[TopicPartition, PartitionOwners]


# --- wire formats ----------------------------------------------------------------------------


def _int(x: object) -> int:
    if type(x) is not int or x < 0:  # bool is an int subclass: refuse it too
        raise ValueError(f"not a non-negative integer: {x!r}")
    return x


def _str(x: object, optional: bool = True) -> str | None:
    if (x is None and optional) or isinstance(x, str):
        return x
    raise ValueError(f"not a string: {x!r}")


def _parts(x: object) -> frozenset[int]:
    if not isinstance(x, list):
        raise ValueError(f"not a partition list: {x!r}")
    return frozenset(_int(p) for p in x)


def _check_version(raw: object, version: int) -> None:
    if not isinstance(raw, list) or not raw:
        raise ValueError("not a versioned array")
    if type(raw[0]) is not int or raw[0] != version:  # a newer writer: we cannot read it
        raise ValueError(f"unknown version {raw[0]!r} (this reader knows {version})")


def encode_subscription(state: LocalState) -> bytes:
    stores = {p: [s.next_offset, s.caught_up_at_ms] for p, s in sorted(state.stores.items())}
    return bytes(
        msgpack.packb(
            [
                SUBSCRIPTION_VERSION,
                state.instance_id,
                state.endpoint,
                state.topic,
                state.epoch,
                stores,
                sorted(state.active),
                sorted(state.standby),
            ]
        )
    )


def decode_subscription(data: bytes | None) -> LocalState | None:
    """None (logged) for anything but a valid version-1 subscription: such a member is
    assigned as if it held nothing, and the leader keeps going."""
    try:
        raw = msgpack.unpackb(data or b"", strict_map_key=False, raw=False)
        _check_version(raw, SUBSCRIPTION_VERSION)
        _, instance_id, endpoint, topic, epoch, stores, active, standby = raw
        if not isinstance(stores, dict):
            raise ValueError("stores is not a map")
        held = {}
        for p, offsets in stores.items():
            next_offset, caught_up_at_ms = offsets
            held[_int(p)] = StoreOffsets(_int(next_offset), _int(caught_up_at_ms))
        return LocalState(
            str(_str(topic, optional=False)),
            _str(instance_id),
            _str(endpoint),
            held,
            _parts(active),
            _parts(standby),
            _int(epoch),
        )
    except Exception as exc:  # garbage of any shape must not stop the leader
        log.warning("ignoring a member's subscription data (%s: %s)", type(exc).__name__, exc)
        return None


def encode_assignment(
    epoch: int, you: int, table: list[Replica], owners: Mapping[str, Mapping[int, list[int]]]
) -> bytes:
    """``table``: every member once; ``owners``: topic -> partition -> table indexes, the
    active first. ``you``: the receiving member's index (its standbys follow from it)."""
    rows = [[r.name, r.endpoint] for r in table]
    return bytes(msgpack.packb([ASSIGNMENT_VERSION, epoch, you, rows, owners]))


def decode_assignment(data: bytes | None) -> GroupAssignment | None:
    """None (logged) when not a valid version-1 assignment: no standbys, no ownership map."""
    try:
        raw = msgpack.unpackb(data or b"", strict_map_key=False, raw=False)
        _check_version(raw, ASSIGNMENT_VERSION)
        _, epoch, you, rows, by_topic = raw
        table = [
            Replica(str(_str(name, optional=False)), _str(endpoint)) for name, endpoint in rows
        ]
        owners, active, standby = {}, set(), set()
        for topic, partitions in by_topic.items():
            for p, holders in partitions.items():
                tp = TopicPartition(_str(topic, optional=False), _int(p))
                first, *rest = (_int(i) for i in holders)
                owners[tp] = PartitionOwners(table[first], tuple(table[i] for i in rest))
                if first == you:
                    active.add(tp)
                elif you in rest:
                    standby.add(tp)
        return GroupAssignment(_int(epoch), frozenset(active), frozenset(standby), owners)
    except Exception as exc:
        log.warning("ignoring the assignment's user data (%s: %s)", type(exc).__name__, exc)
        return None


# --- the aiokafka adapter --------------------------------------------------------------------


class StateProvider(Protocol):
    def local_state(self) -> LocalState:
        """Called at every join; must be quick and non-blocking (aiokafka calls it inline)."""
        ...


class StateAwareAssignor:
    """One per worker. Pass ``partition_assignment_strategy=(binding.strategy,)`` to the
    consumer: aiokafka calls assignors as classmethods, so ``strategy`` is a class made for
    this instance alone and two workers in one process never share state."""

    def __init__(
        self,
        provider: StateProvider,
        *,
        standby_replicas: int = 0,
        on_assignment: Callable[[GroupAssignment], None] | None = None,
    ) -> None:
        self.provider = provider
        self.standby_replicas = standby_replicas  # the leader's value applies to the group
        # Set by each assignment of our protocol; stale while the group uses another one (aiokafka
        # then calls that assignor's on_assignment), so actives come from the rebalance listener.
        self.last: GroupAssignment | None = None
        self._listener = on_assignment
        binding = self
        self.strategy: type[Any] = type(
            "StateAwarePartitionAssignor",
            (AbstractPartitionAssignor,),
            {
                "name": PROTOCOL_NAME,
                "version": 0,
                "assign": classmethod(
                    lambda cls, cluster, members: binding.assign(cluster, members)
                ),
                "metadata": classmethod(lambda cls, topics: binding.metadata(topics)),
                "on_assignment": classmethod(
                    lambda cls, assignment: binding.on_assignment(assignment)
                ),
            },
        )

    def metadata(self, topics: Iterable[str]) -> Any:
        try:
            user_data = encode_subscription(self.provider.local_state())
        except Exception:  # a failing provider must not stop the join: report nothing held
            log.exception("state provider failed; joining as a member that holds nothing")
            user_data = b""
        return ConsumerProtocolMemberMetadata(0, sorted(topics), user_data)

    def on_assignment(self, assignment: Any) -> None:
        decoded = decode_assignment(assignment.user_data)
        if decoded is None:  # an old or foreign leader: actives only
            decoded = GroupAssignment(0, frozenset(assignment.partitions()), frozenset(), {})
        self.last = decoded
        if self._listener is not None:
            self._listener(decoded)

    def assign(self, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        subs = {mid: decode_subscription(meta.user_data) for mid, meta in members.items()}
        if not members:
            return {}
        topics = set.intersection(*(set(meta.subscription) for meta in members.values()))
        if any(set(meta.subscription) != topics for meta in members.values()):
            log.warning("members subscribe to different topics; assigning only %s", sorted(topics))
        try:
            own = self.provider.local_state()
        except Exception:
            own = None
        ids = sorted(members, key=lambda mid: (_name(mid, subs[mid]), mid))
        table = [Replica(_name(mid, subs[mid]), _endpoint(subs[mid])) for mid in ids]
        index = {mid: i for i, mid in enumerate(ids)}
        epoch = max((s.epoch for s in subs.values() if s), default=0) + 1
        owners: dict[str, dict[int, list[int]]] = {}
        actives: dict[str, list[tuple[str, list[int]]]] = {mid: [] for mid in ids}
        for topic in sorted(topics):
            partitions = cluster.partitions_for_topic(topic)
            if partitions is None:
                log.warning("no partition metadata for topic %s", topic)
                continue
            states = [_member(mid, subs[mid], topic) for mid in ids]
            ends = own.end_offsets if own is not None and own.topic == topic else None
            plan = assign(
                states, sorted(partitions), standby_replicas=self.standby_replicas, end_offsets=ends
            )
            owners[topic] = {
                p: [index[a], *(index[s] for s in sbs)] for p, (a, sbs) in plan.owners.items()
            }
            for mid, got in plan.members.items():
                if got.active:
                    actives[mid].append((topic, list(got.active)))
        return {
            mid: ConsumerProtocolMemberAssignment(
                0, actives[mid], encode_assignment(epoch, index[mid], table, owners)
            )
            for mid in ids
        }


def _name(member_id: str, sub: LocalState | None) -> str:
    return (sub.instance_id if sub else None) or member_id


def _endpoint(sub: LocalState | None) -> str | None:
    return sub.endpoint if sub else None


def _member(member_id: str, sub: LocalState | None, topic: str) -> MemberState:
    if sub is None or sub.topic != topic:  # garbage, or a store of another topic: nothing held
        return MemberState(member_id, sub.instance_id if sub else None)
    return MemberState(member_id, sub.instance_id, sub.stores, sub.active, sub.standby, sub.epoch)
