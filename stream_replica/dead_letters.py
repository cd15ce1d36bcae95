"""Refused records (Deltas, invalid values): logged, rate-limited, and sent to the
dead-letter topic (``--dlq-topic``) with headers saying what was refused where and why.

The worker sends a poll's refused records, and waits for their acknowledgement, before it
writes the poll: a send that fails stops the worker with nothing of that poll written or
committed. The headers are the contract of schemas/asyncapi.yaml.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from stream_replica.clients import start_client, stop_producer
from stream_replica.errors import FatalError
from stream_replica.fold import Rejection
from stream_replica.logs import RateLimitedLog
from stream_replica.refusals import refusal
from stream_replica.settings import WorkerSettings

# The worker's logger: these lines have always been the worker's.
log = logging.getLogger("stream_replica.worker")
# A flood of bad records must not flood the log: the DLQ and the counters have every one.
refusals = RateLimitedLog(log, burst=20, interval_s=10.0)
DLQ_TIMEOUT_S: Final = 60.0


class DeadLetters:
    """The dead-letter producer of one worker (idempotent, ``acks=all``)."""

    def __init__(self, settings: WorkerSettings, topic: str, dlq_topic: str) -> None:
        self.settings = settings
        self.topic = topic  # the replicated topic, named in the headers
        self.dlq_topic = dlq_topic
        self.producer = AIOKafkaProducer(
            **settings.options("producer"),
            acks="all",
            enable_idempotence=True,
        )

    @classmethod
    def create(cls, settings: WorkerSettings, topic: str) -> DeadLetters | None:
        """None without ``--dlq-topic``: refused records are then only logged and counted."""
        return cls(settings, topic, settings.dlq_topic) if settings.dlq_topic else None

    async def start(self) -> None:
        await start_client(self.settings, self.producer, (self.dlq_topic, "--dlq-topic"))

    async def stop(self, timeout_s: float) -> bool:
        """False: records of a poll that was not written were dropped unacknowledged (they
        are read and sent again after a restart)."""
        return await stop_producer(self.producer, timeout_s)

    async def send(self, rejected: list[Rejection]) -> None:
        try:
            await asyncio.wait_for(self._send_all(self.producer, rejected), DLQ_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            refused = refusal(
                exc,
                self.settings,
                doing="sending refused records to the dead-letter topic",
                topic=self.dlq_topic,
                topic_needs="Write",
                topic_flag="--dlq-topic",
            )
            if refused is not None:
                raise refused from None
            why = (
                f"no acknowledgement within {DLQ_TIMEOUT_S:.0f} s: Kafka unreachable, or fewer "
                "in-sync replicas than the topic's min.insync.replicas (the producer's "
                "warnings above say which)"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            raise FatalError(
                f"dead-letter topic {self.dlq_topic!r}: send failed ({why}); nothing of this "
                "poll was written or committed"
            ) from None

    async def _send_all(self, producer: AIOKafkaProducer, rejected: list[Rejection]) -> None:
        futures = []
        for rejection in rejected:
            record = rejection.record
            headers = [
                ("stream-replica.kind", rejection.kind.encode()),
                ("stream-replica.reason", rejection.reason.encode()),
                ("stream-replica.source-topic", self.topic.encode()),
                ("stream-replica.source-partition", str(record.partition).encode()),
                ("stream-replica.source-offset", str(record.offset).encode()),
            ]
            if rejection.grain is not None:
                headers.append(("stream-replica.grain-type", rejection.grain[0].encode()))
                headers.append(("stream-replica.grain-key", rejection.grain[1].encode()))
            if rejection.shadows_offset is not None:
                # This record is now the last on the key: the state it names is shadowed.
                headers.append(
                    ("stream-replica.shadows-offset", str(rejection.shadows_offset).encode())
                )
            try:
                future = await producer.send(
                    self.dlq_topic, key=record.key, value=record.value, headers=headers
                )
            except MessageSizeTooLargeError:
                # The record plus our headers exceed the producer's limit: keep the evidence.
                headers.append(("stream-replica.value-dropped", b"too large for the DLQ"))
                future = await producer.send(
                    self.dlq_topic, key=record.key, value=None, headers=headers
                )
            futures.append(future)
        await asyncio.gather(*futures)


def log_rejection(topic: str, rejection: Rejection) -> None:
    record = rejection.record
    grain = rejection.grain
    body = record.body
    fields: dict[str, object] = {
        "topic": topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if grain is not None:
        fields |= {"grain_type": grain[0], "grain_key": grain[1]}
    refusals.log(
        logging.ERROR,
        rejection.kind,
        "refused %s record at %s/%d/%d%s%s: %s",
        rejection.kind,
        topic,
        record.partition,
        record.offset,
        f" grain_type={grain[0]!r} grain_key={grain[1]!r}" if grain else "",
        f" sequence={body.sequence}"
        if rejection.kind == "delta" and hasattr(body, "sequence")
        else "",
        rejection.reason,
        **fields,
    )
