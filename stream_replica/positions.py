"""Where the active loop stands on each owned partition, shared by the loop, the rebalance
callbacks, the commits and the lag reports (worker.py composes them).

Two fences guard what a poll may do (docs/operations.md, "Partition ownership and recovery"):

* the seek epoch: a batch fetched before a seek is stale and must not be applied;
* ``rebalancing``: between a revocation and the next assignment nothing is applied or
  committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(slots=True)
class Positions:
    topic: str
    # Next offset to apply per owned partition, and a counter bumped whenever the
    # callbacks seek: a batch fetched before a seek is stale and must not be applied.
    next: dict[int, int] = field(default_factory=dict)
    seek_epoch: int = 0
    # Between a revocation and the next assignment: nothing is applied or committed. A
    # commit sent then carries the old generation; if the group has moved on when it
    # arrives, aiokafka resets the member and rejoins once more (a spurious rebalance,
    # and another on the other members: they ping-ponged every 1-2 s while catching up).
    rebalancing: bool = False
    caught_up_at: dict[int, int] = field(default_factory=dict)  # see store.Checkpoint
    # End offsets listed at the assignment: what a partition's lag is measured against until
    # a fetch of it brings one (a partition paused for a catch-up is not fetched for long).
    listed_ends: dict[int, int] = field(default_factory=dict)

    def seek(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        consumer.seek(tp, offset)
        self.next[tp.partition] = offset

    def reseek(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            if tp.topic == self.topic and tp.partition in self.next:
                consumer.seek(tp, self.next[tp.partition])


def owned(consumer: AIOKafkaConsumer | None, topic: str) -> list[int]:
    """The partitions of ``topic`` the consumer is assigned (in the assignment's order)."""
    if consumer is None:
        return []
    return [tp.partition for tp in consumer.assignment() if tp.topic == topic]
