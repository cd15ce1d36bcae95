"""Replay: move a store's checkpoints and the group's committed offsets (optionally wiping the
partitions' grains first). Refused while the group has live members."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream_replica.admin import AdminError, describe_topic, group_members, offsets_reader
from stream_replica.clients import start_client
from stream_replica.errors import StreamReplicaError
from stream_replica.offsets import READ_COMMITTED
from stream_replica.refusals import refusal
from stream_replica.settings import ReplaySettings
from stream_replica.store import Checkpoint, ReplicaStore
from stream_replica.worker import now_ms

log = logging.getLogger("stream_replica.replay")


class ReplayError(StreamReplicaError):
    """A replay refused as asked (live members, a store it would corrupt): exit 2."""

    exit_code = 2


def parse_offsets(text: str) -> dict[int, int]:
    """``"0:15,3:200"`` → ``{0: 15, 3: 200}``."""
    result: dict[int, int] = {}
    for item in text.split(","):
        partition, sep, offset = item.strip().partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ReplayError(f"--offsets: {item!r} is not PARTITION:OFFSET")
        result[int(partition)] = int(offset)
    return result


async def replay(
    settings: ReplaySettings,
    *,
    from_beginning: bool = False,
    from_timestamp: datetime | None = None,
    offsets: dict[int, int] | None = None,
    partitions: list[int] | None = None,
    rebuild: bool = False,
) -> dict[str, Any]:
    if sum((from_beginning, from_timestamp is not None, offsets is not None)) != 1:
        raise ReplayError("give exactly one of --from-beginning, --from-timestamp, --offsets")
    info = await describe_topic(settings, settings.topic)
    if info is None:
        raise AdminError(f"topic {settings.topic!r} does not exist")
    members = await group_members(settings, settings.group)
    if members:
        raise ReplayError(
            f"group {settings.group!r} has {len(members)} live member(s); stop its workers "
            "before replaying"
        )
    if partitions is None:
        partitions = sorted(offsets) if offsets is not None else list(range(info.partitions))
    unknown = [p for p in partitions if not 0 <= p < info.partitions]
    if unknown:
        raise ReplayError(f"topic {settings.topic!r} has no partition(s) {unknown}")
    tps = [TopicPartition(settings.topic, p) for p in partitions]

    # The ends the workers see: reading committed records only, nothing past a transaction
    # still open (a checkpoint past it would be taken for one of another log, and rebuilt).
    async with offsets_reader(settings, **READ_COMMITTED) as reader:
        beginnings = {tp.partition: o for tp, o in (await reader.beginning_offsets(tps)).items()}
        ends = {tp.partition: o for tp, o in (await reader.end_offsets(tps)).items()}
        if from_beginning:
            targets = dict(beginnings)
        elif from_timestamp is not None:
            millis = int(from_timestamp.timestamp() * 1000)
            found = await reader.offsets_for_times({tp: millis for tp in tps})
            targets = {
                tp.partition: (ends[tp.partition] if hit is None else hit.offset)
                for tp, hit in found.items()
            }
        else:
            assert offsets is not None
            targets = {}
            for p in partitions:
                if p not in offsets:
                    raise ReplayError(f"--offsets names no offset for partition {p}")
                if not beginnings[p] <= offsets[p] <= ends[p]:
                    raise ReplayError(
                        f"offset {offsets[p]} for partition {p} is outside "
                        f"{beginnings[p]}..{ends[p]} (the end: what the workers can read, "
                        "before any transaction still open)"
                    )
                targets[p] = offsets[p]

    if not rebuild and not (settings.db / "CURRENT").exists():
        raise ReplayError(f"no replica store at {settings.db}; pass --rebuild to start one there")
    store = ReplicaStore(settings.db, settings.topic)
    try:
        known = store.group()
        if known is not None and known != settings.group:
            # A typo would commit a new group's offsets and leave the workers' own as they are.
            raise ReplayError(
                f"the store at {settings.db} belongs to group {known!r} (its last worker's), "
                f"not {settings.group!r}: check --group (a worker run with another --group "
                "records that one)"
            )
        checkpoints = _moved_checkpoints(store, targets, beginnings, rebuild=rebuild)
        # The group's offsets first: a refused commit (an ACL, the broker gone) then leaves the
        # store as it was, and the one line it ends with is the whole story.
        await _commit(settings, tps, targets)
        wiped = 0
        if rebuild:
            wiped = store.count_grains(partitions)  # a key scan: fine offline, for the summary
            store.wipe_partitions(partitions)
        store.set_checkpoints(checkpoints)
        store.set_group(settings.group)
    finally:
        store.close()
    if rebuild and not from_beginning:
        log.warning(
            "--rebuild from an offset other than the beginning: the store will hold only "
            "what those partitions' records from that offset on produce"
        )
    return {
        "topic": settings.topic,
        "group": settings.group,
        "partitions": {str(p): targets[p] for p in sorted(targets)},
        "rebuild": rebuild,
        "grains_wiped": wiped,
    }


def _moved_checkpoints(
    store: ReplicaStore, targets: dict[int, int], beginnings: dict[int, int], *, rebuild: bool
) -> dict[int, Checkpoint]:
    """The store's checkpoints after the replay; refuses to move one forward without a
    rebuild."""
    current = store.checkpoints()
    now = now_ms()
    checkpoints = {}
    for partition, target in targets.items():
        held = current.get(partition)
        held_offset = held.next_offset if held is not None else beginnings[partition]
        if not rebuild and target > held_offset:
            raise ReplayError(
                f"partition {partition}: moving the store forward from {held_offset} to "
                f"{target} would claim records it never applied; use --rebuild"
            )
        # A rebuild reads from scratch; otherwise keep when the store last caught up, so
        # the tombstone-retention check still applies to what it already holds.
        caught_up = now if rebuild or held is None else held.caught_up_at_ms
        checkpoints[partition] = Checkpoint(target, caught_up)
    return checkpoints


async def _commit(
    settings: ReplaySettings, tps: list[TopicPartition], targets: dict[int, int]
) -> None:
    committer = AIOKafkaConsumer(
        **settings.options("consumer"), group_id=settings.group, enable_auto_commit=False
    )
    await start_client(settings, committer)
    try:
        committer.assign(tps)
        await committer.commit({TopicPartition(settings.topic, p): o for p, o in targets.items()})
    except KafkaError as exc:
        refused = refusal(
            exc, settings, doing="committing offsets", topic=settings.topic, group=settings.group
        )
        if refused is not None:
            raise refused from None
        raise
    finally:
        await committer.stop()
