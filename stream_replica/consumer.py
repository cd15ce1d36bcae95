"""The active consumer: its configuration, one fetch (getmany) that a stop interrupts, and
when a fetch answer confirms an end offset (for every consumer of the topic: the standby's too).

The worker's loop fetches through ``StoppableFetch``; positions, commits and rebalances are
the other modules' (positions.py, commits.py, rebalance.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_replica.memory import FETCH_MAX_BYTES
from stream_replica.offsets import READ_COMMITTED
from stream_replica.settings import WorkerSettings

log = logging.getLogger(__name__)

# How long the group waits for a member to rejoin, so the longest revocation: the in-flight
# poll (its dead-letter sends, DLQ_TIMEOUT_S, or its repairs', repair.LONGEST_WAIT_S), the
# background commit it awaits and the revocation's own (COMMIT_TIMEOUT_S each, +1 s): ~91 s
# at worst, well under a second normally. A member still revoking is not evicted meanwhile.
REBALANCE_TIMEOUT_MS: Final = 120_000
# Two requests a second per member: nothing for a coordinator, and a join or a leave is
# noticed by the group within half a second (also a duplicate instance id).
HEARTBEAT_INTERVAL_MS: Final = 500
# While catching up, about half the partitions are read (catchup.py): 2 MiB each keeps the
# bytes per fetch where 1 MiB x every partition had them, and keeps fetching and folding
# overlapped (aiokafka fetches no partition of a broker while another's buffered data is
# under 100 ms old: with 1 MiB, three partitions drain in ~70 ms and every fetch stalls).
PARTITION_FETCH_BYTES: Final = 2 * 1024 * 1024
# How often the consumer refreshes its metadata when nothing else makes it: partitions added
# to the topic are assigned (and a recreated topic is noticed) only after a refresh, which
# aiokafka's default (5 min) left unread and routed by the old count that long. One small
# metadata request per 30 s.
METADATA_MAX_AGE_MS: Final = 30_000


def confirm_end_offsets_at_send(consumer: AIOKafkaConsumer) -> bool:
    """Make the time a fetch answer confirms its partitions' end offsets (offsets.end_offset,
    ``last_poll_timestamp``) the time the fetch was sent, not the time its answer was read.

    aiokafka stamps the end offset (high watermark) of a fetch answer when it reads it. An
    answer that waited in the socket while the process did not run (paused: SIGSTOP, a frozen
    VM or container, swapped out; or a loop stalled that long) carries the end offset of
    before the pause, and was stamped as confirmed just now: the worker answered reads of
    the old state as caught up, with replica_lag 0 and end_offset_age_s 0.0, while the log
    held newer ones. The broker read the end offset after the fetch was sent, so the send
    time never makes it look newer than it is. Call once the consumer is started (its
    fetcher exists); False when this aiokafka has no such fetcher (a warning says so, and
    the stamps stay aiokafka's own)."""
    fetcher = getattr(consumer, "_fetcher", None)
    process = getattr(fetcher, "_proc_fetch_request", None)
    if process is None:
        log.warning(
            "this aiokafka's fetcher has no _proc_fetch_request: an end offset's age is "
            "counted from when its fetch answer was read (after a pause, younger than it is)"
        )
        return False
    if getattr(process, "confirms_at_send", False):
        return True

    async def at_send(assignment: Any, node_id: int, request: Any) -> Any:
        sent_ms = int(time.time() * 1000)
        try:
            return await process(assignment, node_id, request)
        finally:
            # No await between aiokafka stamping the answer's partitions and this: nothing
            # read the later stamp.
            _stamp(assignment, request, sent_ms)

    at_send.confirms_at_send = True  # type: ignore[attr-defined]
    fetcher._proc_fetch_request = at_send  # type: ignore[union-attr]
    return True


def _stamp(assignment: Any, request: Any, sent_ms: int) -> None:
    """The end offsets a fetch confirmed, stamped ``sent_ms`` (when stamped later)."""
    try:
        for topic, partitions in request.topics:
            for partition_data in partitions:
                state = assignment.state_value(TopicPartition(topic, partition_data[0]))
                stamped = getattr(state, "timestamp", None)
                if stamped is not None and stamped > sent_ms:
                    state.timestamp = sent_ms
    except (AttributeError, IndexError, TypeError, ValueError):
        pass  # a request of another shape (another aiokafka): its stamps stay


def reads_committed_only(settings: WorkerSettings) -> bool:
    """Whether the worker's consumers read committed records only (the default; an
    ``isolation_level`` passthrough option may say otherwise)."""
    options = READ_COMMITTED | settings.options("consumer")
    return bool(options["isolation_level"] == "read_committed")


def active_consumer(settings: WorkerSettings, strategy: type[Any]) -> AIOKafkaConsumer:
    """The group member's consumer; ``strategy``: our state-aware assignor (membership.py)."""
    session_timeout_ms = settings.effective_session_timeout_ms
    return AIOKafkaConsumer(
        # --kafka-option metadata_max_age_ms=... still wins
        **(
            {"metadata_max_age_ms": METADATA_MAX_AGE_MS}
            | READ_COMMITTED
            | settings.options("consumer")
        ),
        group_id=settings.group,
        client_id=f"stream-replica-{settings.group}",
        enable_auto_commit=False,
        auto_offset_reset="none",  # positions come from the store; out-of-range is handled
        group_instance_id=settings.instance_id,
        session_timeout_ms=session_timeout_ms,
        # A member learns that another joined (or left) only from its next heartbeat; until
        # then the joiner waits idle in JoinGroup (issue #12: 2 s of a 3 s catch-up).
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        # Ours only. Offering round-robin as well (for upgrades member by member) made
        # aiokafka members rejoin in a loop: groups never settled (docs/assignor.md).
        partition_assignment_strategy=(strategy,),
        max_poll_interval_ms=300_000,
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,  # part of the memory budget's fixed share
    )


class StoppableFetch:
    """The loop's getmany, cancelled by one watcher task when the worker is stopped."""

    def __init__(self, stop: asyncio.Event, poll_timeout_ms: int, max_records: int) -> None:
        self.stop = stop
        self._poll_timeout_ms = poll_timeout_ms
        self._max_records = max_records
        self.last_poll: float | None = None  # monotonic time of the last completed poll
        self._in_fetch = False
        self._fetch_cancelled = False
        self._stop_watcher: asyncio.Task[None] | None = None

    async def fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]] | None:
        """One getmany, or None when the worker is stopped meanwhile. aiokafka's getmany waits
        without a timeout while a rebalance is under way, which can last the rebalance timeout
        (or more, on a broker that is starting): a SIGTERM must not wait for it. One watcher
        for the whole run cancels this task while (and only while) it waits in getmany; a
        task per poll raced against a stop waiter cost ~0.4 µs per record (~6 % of a
        catch-up)."""
        if self.stop.is_set():
            return None
        if self._stop_watcher is None:
            self._stop_watcher = asyncio.create_task(
                self._cancel_fetch_on_stop(asyncio.current_task())
            )
        self._in_fetch = True
        try:
            result: dict[TopicPartition, list[Any]] = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_records
            )
        except asyncio.CancelledError:
            if self._fetch_cancelled:
                self._fetch_cancelled = False
                task = asyncio.current_task()
                if task is not None and task.uncancel() == 0:
                    return None  # the watcher's cancel, and nobody else's
            raise
        finally:
            self._in_fetch = False
        self.last_poll = time.monotonic()
        return result

    async def _cancel_fetch_on_stop(self, fetching_task: asyncio.Task[Any] | None) -> None:
        await self.stop.wait()
        # _in_fetch is True only while that task is suspended inside getmany (nothing else is
        # awaited between setting and clearing it), so the cancel lands there.
        if self._in_fetch and fetching_task is not None:
            self._fetch_cancelled = True
            fetching_task.cancel()

    async def close(self) -> None:
        if self._stop_watcher is not None:
            self._stop_watcher.cancel()
            await asyncio.wait({self._stop_watcher})  # gone before the loop is
