"""Where a grain lives and who serves it (pure; no I/O): the producer's partitioner, the
group's ownership map as every worker learns it from the assignor, and the order in which a
reader tries the replicas of a partition."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiokafka.partitioner import murmur2

from stream_replica.contract import GrainId, encode_key

# How long a worker waits for the worker it forwards a read to (--read-forward-timeout-s),
# and how much longer a client waits for the worker it asked: a client must outwait the
# forward, or it times out on a healthy worker just before that worker's 503 ("the owner did
# not answer") arrives, and takes the healthy worker for a dead one.
FORWARD_TIMEOUT_S: Final = 5.0
CLIENT_TIMEOUT_MARGIN_S: Final = 2.0


def client_timeout_s(forward_timeout_s: float) -> float:
    """A client's per-request timeout against workers forwarding with ``forward_timeout_s``."""
    return forward_timeout_s + CLIENT_TIMEOUT_MARGIN_S


def partition_for(grain: GrainId, partitions: int) -> int:
    """The partition the Java client and aiokafka's default partitioner pick for the grain's
    key (murmur2 of the key bytes, positive, modulo the partition count)."""
    return int(murmur2(encode_key(*grain)) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class ReplicaRef:
    """One replica of a partition: the member's name (instance id or member id), its
    advertised HTTP endpoint (None: it serves no HTTP) and its role."""

    name: str
    endpoint: str | None
    role: str  # "active" or "standby"


@dataclass(frozen=True)
class OwnershipMap:
    """partition → replicas, the active one first. ``epoch`` grows with every assignment."""

    epoch: int = -1
    replicas: Mapping[int, Sequence[ReplicaRef]] = field(default_factory=dict)

    def endpoints(self, partition: int, allow_standby: bool) -> list[ReplicaRef]:
        """Replicas to try for a read, in order: the active owner, then (when the caller
        accepts a possibly staler answer) the standbys; only those with an endpoint."""
        found = [r for r in self.replicas.get(partition, ()) if r.endpoint]
        return [r for r in found if r.role == "active" or allow_standby]


# A worker that did not answer a forward is tried after the other replicas for this long:
# with ?stale=ok a hung owner otherwise costs every read a whole forward timeout before its
# caught-up standby is asked.
UNRESPONSIVE_FOR_S: Final = 10.0


class Unresponsive:
    """Endpoints that lately did not answer a forward (timed out, refused the connection)."""

    def __init__(self, for_s: float = UNRESPONSIVE_FOR_S) -> None:
        self.for_s = for_s
        self._until: dict[str, float] = {}

    def failed(self, endpoint: str) -> None:
        self._until[endpoint] = time.monotonic() + self.for_s

    def answered(self, endpoint: str) -> None:
        self._until.pop(endpoint, None)

    def last(self, replicas: list[ReplicaRef]) -> list[ReplicaRef]:
        """``replicas`` in their order, those that did not answer lately moved to the end
        (still tried: the only replica may be back)."""
        if not self._until:
            return replicas
        now = time.monotonic()
        return sorted(replicas, key=lambda r: self._until.get(r.endpoint or "", 0.0) > now)


def encode_cursor(grain_key: str) -> str:
    """An opaque, URL-safe cursor for paged scans: the last key returned."""
    return base64.urlsafe_b64encode(grain_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        return base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"cursor {cursor!r} is not one this API returned") from None
