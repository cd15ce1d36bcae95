"""The replicated topic's configs and replicas while the worker runs.

The worker checks the topic once at start (preflight.py): a topic that is not compacted is
refused there. An operator may change it afterwards (``cleanup.policy=delete`` by mistake,
``delete.retention.ms`` tuned, brokers lost): this watch describes the topic every
``CHECK_INTERVAL_S`` and says what changed, once per change.

A topic no longer compacted is an ERROR line and ``stream_replica_topic_compacted 0``, not an
exit: the store already held is still right, and a worker that exits would be refused at its
restart (exit 3), leaving no replica to read. A new ``delete.retention.ms`` is what the next
assignment's resume decision uses (offsets.resume_from).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from aiokafka.errors import KafkaError

from stream_replica.admin import TopicInfo, describe_topic
from stream_replica.errors import StreamReplicaError
from stream_replica.settings import WorkerSettings

log = logging.getLogger("stream_replica.worker")

CHECK_INTERVAL_S: Final = 60.0


class TopicWatch:
    """Compares each description of the topic with the one before and reports the change."""

    def __init__(
        self,
        settings: WorkerSettings,
        first: TopicInfo,
        on_delete_retention_ms: Callable[[int], None],
        on_compacted: Callable[[bool], None],
    ) -> None:
        self.settings = settings
        self._on_delete_retention_ms = on_delete_retention_ms
        self._on_compacted = on_compacted
        self._last = first
        self._warnings = set(first.replica_warnings())  # preflight logged these
        on_compacted(first.compacted)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_INTERVAL_S)
            if stop.is_set():
                return
            try:
                info = await describe_topic(self.settings, self.settings.topic)
            except (StreamReplicaError, KafkaError, OSError, TimeoutError) as exc:
                # An unreachable broker is reported by the consumer's own lines; an ACL
                # revoked since start by the next commit or fetch.
                log.debug("describing topic %r failed: %s", self.settings.topic, exc)
                continue
            if info is not None:  # a deleted topic: the assignment check reports it
                self.compare(info)

    def compare(self, info: TopicInfo) -> None:
        last, self._last = self._last, info
        topic = info.name
        if info.compacted != last.compacted:
            self._on_compacted(info.compacted)
            policy = info.configs.get("cleanup.policy")
            if info.compacted:
                log.info("topic %r is compacted again (cleanup.policy=%s)", topic, policy)
            elif not self.settings.allow_non_compacted:
                log.error(
                    "topic %r is no longer compacted (cleanup.policy=%s): the broker deletes "
                    "records past retention.ms, and a worker rebuilding from the log then "
                    "misses every grain whose last snapshot is gone; this worker keeps its "
                    "store and goes on, a new one refuses the topic (exit 3): set "
                    "cleanup.policy=compact again",
                    topic,
                    policy,
                )
        if info.delete_retention_ms != last.delete_retention_ms:
            self._on_delete_retention_ms(info.delete_retention_ms)
            log.info(
                "topic %r: delete.retention.ms is now %d (was %d); a partition whose "
                "checkpoint is older is rebuilt from the log start when next assigned",
                topic,
                info.delete_retention_ms,
                last.delete_retention_ms,
            )
        warnings = set(info.replica_warnings())
        for warning in sorted(warnings - self._warnings):
            log.warning("%s", warning)
        if self._warnings and not warnings:
            log.info("topic %r: every partition has a leader and its replicas in sync", topic)
        self._warnings = warnings
