"""The primary cluster's side: publish grain snapshots and tombstones per the contract."""

from __future__ import annotations

import asyncio
import inspect
import time
from types import TracebackType
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from stream_replica.clients import start_client
from stream_replica.connection import ConnectionSettings
from stream_replica.contract import Entry, EntryType, GrainId, encode_key, encode_value
from stream_replica.errors import StreamReplicaError


def max_request_size(connection: ConnectionSettings) -> int:
    """The largest request the producer sends (bytes): ``--kafka-option max_request_size``,
    else aiokafka's default (1 MiB, as Kafka's max.message.bytes)."""
    given = connection.options("producer").get("max_request_size")
    if given is None:
        given = inspect.signature(AIOKafkaProducer).parameters["max_request_size"].default
    return int(given)


def now_millis() -> int:
    return time.time_ns() // 1_000_000


class PublishError(ValueError, StreamReplicaError):
    """A snapshot the publisher refuses to put on the compacted topic."""


class Publisher:
    """Idempotent producer (acks=all, idempotence on) keyed by grain.

    It never emits what would shadow a replica's state once the log is compacted (fold.py):
    Delta entries are refused, and so is a sequence below one this publisher already sent for
    the grain. ``publish_raw`` sends bytes unchecked, for tooling and tests.

    When no sequence is given, a per-grain increasing one is assigned. The first automatic
    sequence of a grain in this process is the current time in microseconds, so a restarted
    publisher keeps increasing (as long as a grain changes less than once per microsecond);
    callers that own a real version counter should pass it explicitly.
    """

    FLUSH_EVERY: Final = 10_000  # records queued: publish_raw then waits for them (flush)

    def __init__(
        self,
        cluster: str | ConnectionSettings,
        topic: str,
        source_cluster: str = "primary",
        **producer_options: Any,
    ) -> None:
        """``cluster``: bootstrap servers (security settings from the environment) or a full
        :class:`ConnectionSettings`."""
        self.topic = topic
        self.source_cluster = source_cluster
        self._connection = (
            cluster
            if isinstance(cluster, ConnectionSettings)
            else ConnectionSettings(bootstrap_servers=cluster)
        )
        options: dict[str, Any] = {"linger_ms": 5, "max_batch_size": 256 * 1024}
        options.update(self._connection.options("producer"))
        options.update(producer_options)
        self._producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
        self._last_sequence: dict[GrainId, int] = {}
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        """Raises :class:`~stream_replica.errors.StreamReplicaError` (one line) when the
        cluster cannot be reached or refuses the credentials; nothing is left open then."""
        await start_client(self._connection, self._producer, (self.topic, "--topic"))

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def next_sequence(self, grain: GrainId) -> int:
        last = self._last_sequence.get(grain)
        sequence = time.time_ns() // 1000 if last is None else last + 1
        self._last_sequence[grain] = sequence
        return sequence

    async def publish_snapshot(
        self,
        grain_type: str,
        grain_key: str,
        payload: bytes,
        sequence: int | None = None,
        entry_type: EntryType = EntryType.FULL_STATE,
        timestamp_millis: int | None = None,
    ) -> int:
        """Queue one snapshot; call :meth:`flush` to wait for acknowledgement. Returns its
        sequence (the one given, or the one chosen): a read of your write passes it as
        ``min_sequence``. Raises :class:`PublishError` for a Delta or a sequence below the
        grain's last one."""
        sequence, _ = await self.send_snapshot(
            grain_type, grain_key, payload, sequence, entry_type, timestamp_millis
        )
        return sequence

    async def send_snapshot(
        self,
        grain_type: str,
        grain_key: str,
        payload: bytes,
        sequence: int | None = None,
        entry_type: EntryType = EntryType.FULL_STATE,
        timestamp_millis: int | None = None,
    ) -> tuple[int, asyncio.Future[Any]]:
        """As :meth:`publish_snapshot`; also the record's delivery future (its RecordMetadata
        once acknowledged, or the broker's refusal)."""
        grain = (grain_type, grain_key)
        if entry_type is not EntryType.FULL_STATE:
            raise PublishError(
                f"grain {grain_type}/{grain_key}: {entry_type.value} entries are not published "
                "to the compacted topic (replicas refuse them, and as the last record of the key "
                "one would erase the grain's snapshot at compaction); publish the full state"
            )
        last = self._last_sequence.get(grain)
        if sequence is None:
            sequence = self.next_sequence(grain)
        elif last is not None and sequence < last:
            raise PublishError(
                f"grain {grain_type}/{grain_key}: sequence {sequence} is below {last}, already "
                "published; a lower sequence would be ignored by replicas and shadow their state"
            )
        else:
            self._last_sequence[grain] = sequence
        entry = Entry(
            grain_type,
            grain_key,
            sequence,
            now_millis() if timestamp_millis is None else timestamp_millis,
            self.source_cluster,
            entry_type,
            payload,
        )
        delivery = await self.publish_raw(encode_key(grain_type, grain_key), encode_value(entry))
        return sequence, delivery

    async def publish_tombstone(self, grain_type: str, grain_key: str) -> asyncio.Future[Any]:
        self._last_sequence.pop((grain_type, grain_key), None)
        return await self.publish_raw(encode_key(grain_type, grain_key), None)

    async def publish_raw(
        self, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Send bytes as they are (tests and tooling use it for invalid records). Returns the
        record's delivery future (its RecordMetadata once acknowledged)."""
        future: asyncio.Future[Any] = await self._producer.send(
            self.topic, value=value, key=key, partition=partition
        )
        self._pending.append(future)
        if len(self._pending) >= self.FLUSH_EVERY:
            await self.flush()
        return future

    async def flush(self) -> None:
        """Wait until everything queued is acknowledged; raises the first send error."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
