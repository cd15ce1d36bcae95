"""What this worker owns, told to the group and to readers.

* To the group: ``local_state()`` (the ``StateProvider`` of membership.py) reports the
  store's checkpoints and the last assignment received, persisted in the store, so a
  restarted worker claims its partitions back and the leader gives each partition to the
  freshest store (docs/assignor.md).
* To readers: the store's served records (active/standby/not served, with lag) are kept
  current, so ``get``/``dump``/``ReplicaReader`` can say whether an answer is fresh.
* Partitions lost for good: their data is dropped once not served for the grace period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Final

import aiokafka.errors
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_replica.assignor import StoreOffsets
from stream_replica.errors import FatalError
from stream_replica.membership import GroupAssignment, LocalState, StateAwareAssignor
from stream_replica.settings import WorkerSettings
from stream_replica.store import LastAssignment, ReplicaStore, Served
from stream_replica.store_records import SERVED_REFRESH_MS

log = logging.getLogger("stream_replica.ownership")

# Lag figures are rewritten at most this often; role changes are written at once.
SERVED_WRITE_INTERVAL_S: Final = 1.0
# A worker whose instance id another member takes within this long of its first join is the
# newcomer of two workers sharing an id (see DuplicateInstanceCheck). Long enough for the
# taking back to reach it (the other's next heartbeat, its rejoin, then ours: ~1-2 s, more
# while a revocation waits for a poll); short, because an established worker older than this
# keeps going, and two started within it both stop.
NEWCOMER_WINDOW_S: Final = 10.0


class FencedInstanceIdError(aiokafka.errors.BrokerResponseError):  # type: ignore[misc]
    """FENCED_INSTANCE_ID: another member now holds our group instance id."""

    errno = 82
    message = "FENCED_INSTANCE_ID"
    description = "another live member uses this group instance id"


# aiokafka has no class for error 82 and reports it as UnknownError inside a generic
# KafkaError; registered, its name shows in that error's text and is_fenced can find it.
aiokafka.errors.kafka_errors.setdefault(FencedInstanceIdError.errno, FencedInstanceIdError)


def is_fenced(exc: BaseException) -> bool:
    return isinstance(exc, FencedInstanceIdError) or "FencedInstanceIdError" in str(exc)


def fenced_line(settings: WorkerSettings) -> str:
    return (
        f"instance id {settings.instance_id!r} is in use by another live worker of group "
        f"{settings.group!r}; give each worker its own --instance-id"
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ownership:
    def __init__(
        self,
        store: ReplicaStore,
        topic: str,
        *,
        instance_id: str | None,
        standby_replicas: int,
        lost_partition_grace_ms: int,
    ) -> None:
        self.store = store
        self.topic = topic
        self.instance_id = instance_id
        self.grace_ms = lost_partition_grace_ms
        self.binding = StateAwareAssignor(
            self, standby_replicas=standby_replicas, on_assignment=self._on_group_assignment
        )
        # Claimed at the next join: the last assignment received (from the store after a
        # restart). Not cleared on revocation: the eager protocol revokes everything before
        # each join, and the claim must survive that.
        # This worker's advertised HTTP endpoint ("host:port", None: no HTTP), sent in the
        # subscription so every member learns partition -> endpoints (node.py sets it).
        self.endpoint: str | None = None
        self.claims: LastAssignment = store.last_assignment()
        self._fresh: GroupAssignment | None = None
        self._served: dict[int, Served] = store.served()
        self._dirty: dict[int, Served] = {}
        self._last_write = 0.0

    def reload(self) -> None:
        """Read claims and served records from the store again: it was wiped (the topic was
        recreated or repartitioned) after this object read them. Stale copies would claim
        the old partitions at the first join and skip writing roles the store no longer
        has (readers would see those partitions as not served)."""
        self.claims = self.store.last_assignment()
        self._served = self.store.served()
        self._dirty = {}

    # --- the group side ------------------------------------------------------------------

    def local_state(self) -> LocalState:
        stores = {
            p: StoreOffsets(c.next_offset, c.caught_up_at_ms)
            for p, c in self.store.checkpoints().items()
        }
        return LocalState(
            self.topic,
            instance_id=self.instance_id,
            endpoint=self.endpoint,
            stores=stores,
            active=self.claims.active,
            standby=self.claims.standby,
            epoch=self.claims.epoch,
        )

    def _on_group_assignment(self, assignment: GroupAssignment) -> None:
        # Called by aiokafka just before the rebalance listener's on_partitions_assigned,
        # only when the group runs our protocol; consumed there.
        self._fresh = assignment

    def assigned(self, active: Iterable[int]) -> frozenset[int]:
        """Record a new assignment (actives from the rebalance listener, the source of truth);
        returns this worker's standby partitions (none unless the group runs our protocol)."""
        actives = frozenset(active)
        fresh, self._fresh = self._fresh, None
        if fresh is not None:
            standby = (
                frozenset(tp.partition for tp in fresh.standby if tp.topic == self.topic) - actives
            )
            epoch = fresh.epoch
        else:
            standby, epoch = frozenset(), self.claims.epoch
        self.claims = LastAssignment(epoch, actives, standby)
        self.store.set_last_assignment(self.claims)
        roles = {p: "active" for p in actives} | {p: "standby" for p in standby}
        # Held partitions without a served record (a store from an older version) start
        # their grace period now.
        unknown = {p: "" for p in self.store.checkpoints() if p not in roles}
        self._set_roles(unknown | roles, drop_others=True)
        return standby

    def revoked(self, partitions: Iterable[int]) -> None:
        self._set_roles({p: "" for p in partitions})

    def stopped(self) -> None:
        """A stopping worker serves nothing; its claims stay for the restart."""
        self._set_roles({p: "" for p, s in self._served.items() if s.serving})

    def owners_of(self, assignment: GroupAssignment | None = None) -> Mapping[int, str]:
        chosen = assignment or self.binding.last
        if chosen is None:
            return {}
        return {
            tp.partition: o.active.name for tp, o in chosen.owners.items() if tp.topic == self.topic
        }

    # --- the reader side -----------------------------------------------------------------

    def _set_roles(self, roles: Mapping[int, str], drop_others: bool = False) -> None:
        now = now_ms()
        changed = {}
        targets = dict(roles)
        if drop_others:
            targets |= {p: "" for p, s in self._served.items() if s.serving and p not in roles}
        for partition, role in targets.items():
            old = self._served.get(partition)
            if old is not None and old.role == role:
                continue
            lag = old.lag if old is not None and role else -1
            changed[partition] = Served(role, lag, now, now)
        if changed:
            self._served.update(changed)
            for partition in changed:
                self._dirty.pop(partition, None)
            self.store.set_served(changed)

    def report_lag(self, lags: Mapping[int, int], force: bool = False) -> None:
        """Lags of served partitions (records behind the high watermark); written at most
        once per SERVED_WRITE_INTERVAL_S unless ``force``."""
        now = now_ms()
        for partition, lag in lags.items():
            old = self._served.get(partition)
            if old is None or not old.serving:
                continue
            if old.lag == lag and now - old.updated_ms < SERVED_REFRESH_MS:
                continue  # (rewritten now and then all the same: a reader's sign of life)
            self._dirty[partition] = Served(old.role, lag, old.since_ms, now)
            self._served[partition] = self._dirty[partition]
        clock = time.monotonic()
        if self._dirty and (force or clock - self._last_write >= SERVED_WRITE_INTERVAL_S):
            self.store.set_served(self._dirty)
            self._dirty = {}
            self._last_write = clock

    def served(self) -> Mapping[int, Served]:
        return self._served

    def expired(self, holding: Iterable[int], now: int | None = None) -> list[int]:
        """Partitions whose data may be dropped: held in the store (``holding``), not
        served for longer than the grace period."""
        now = now_ms() if now is None else now
        held = set(holding)
        return sorted(
            p
            for p, s in self._served.items()
            if p in held and not s.serving and now - s.since_ms > self.grace_ms
        )

    def dropped(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._served.pop(partition, None)
            self._dirty.pop(partition, None)


def partitions_of(tps: Iterable[TopicPartition], topic: str) -> list[int]:
    return sorted(tp.partition for tp in tps if tp.topic == topic)


class DuplicateInstanceCheck:
    """Detect a second live worker with our instance id. The broker lets a joining
    static member replace the one holding its id, and aiokafka then rejoins (replacing
    the other in turn) instead of surfacing FENCED_INSTANCE_ID: two such workers would
    take the partitions from each other forever. The newcomer notices it was replaced
    early in its life, within NEWCOMER_WINDOW_S of its first join (a restart after a crash
    is not replaced: the old process is dead), and stops; the established worker, older
    than that when the newcomer takes its id, keeps going and takes it back."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        # Static membership: the member id the broker gave at the last join, and when this
        # process first joined.
        self.member_id: str | None = None
        self.first_join: float | None = None

    def check(self, consumer: AIOKafkaConsumer | None) -> None:
        if consumer is None or self.settings.instance_id is None:
            return
        member_id = getattr(getattr(consumer, "_coordinator", None), "member_id", None)
        now = time.monotonic()
        if self.first_join is None:
            self.first_join = now
        elif member_id != self.member_id and now - self.first_join < NEWCOMER_WINDOW_S:
            raise FatalError(fenced_line(self.settings))
        self.member_id = member_id
