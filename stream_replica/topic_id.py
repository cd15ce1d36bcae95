"""Kafka's topic ID (KIP-516) over the Kafka protocol.

aiokafka speaks Metadata up to version 5, which predates topic IDs (version 10+). A store
must know the ID to tell a topic from one deleted and recreated under the same name, so this
module adds Metadata version 12 (Kafka >= 3.x; flexible encoding) on top of aiokafka's own
protocol types and asks any broker. Brokers that do not know version 12 leave the ID unknown.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable
from io import BytesIO
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

log = logging.getLogger("stream_replica.topic_id")

_METADATA_API_KEY: Final = 3
_ZERO_UUID: Final = "AAAAAAAAAAAAAAAAAAAAAA"


class _Uuid(AbstractType[str]):  # type: ignore[misc]
    """A 16-byte UUID, shown as Kafka's tools show topic IDs (URL-safe base64, no padding)."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        return base64.urlsafe_b64decode(value + "==")

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class _MetadataResponseV12(Response):  # type: ignore[misc]
    API_KEY = _METADATA_API_KEY
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _MetadataRequestV12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = _METADATA_API_KEY
    API_VERSION = 12
    RESPONSE_TYPE = _MetadataResponseV12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicIdRequest(Request[_MetadataRequestV12]):  # type: ignore[misc]
    API_KEY = _METADATA_API_KEY

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def build(self, request_struct_class: type[_MetadataRequestV12]) -> _MetadataRequestV12:
        return request_struct_class([(_ZERO_UUID, self._topic, {})], False, False, {})


async def fetch_topic_id(client: AIOKafkaAdminClient, topic: str) -> str | None:
    """The topic's ID, or None when the broker cannot say (too old, or the topic is gone)."""
    return await _topic_id(client._send_request(_TopicIdRequest(topic)), topic)


async def fetch_topic_id_with(client: AIOKafkaClient, topic: str) -> str | None:
    """The same through a consumer's own client (``consumer._client``): a running worker
    asks without opening an admin connection."""
    return await _topic_id(client.send(client.get_random_node(), _TopicIdRequest(topic)), topic)


async def _topic_id(request: Awaitable[Any], topic: str) -> str | None:
    try:
        response: Any = await request
    except Exception as exc:  # an old broker refuses the version: the ID stays unknown
        log.debug("topic ID of %s not available (%s: %s)", topic, type(exc).__name__, exc)
        return None
    for error_code, name, topic_id, *_ in response.topics:
        if name == topic and error_code == 0 and topic_id != _ZERO_UUID:
            return str(topic_id)
    return None
