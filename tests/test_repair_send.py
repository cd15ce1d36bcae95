"""A repair's hand-off to the producer is bounded (no broker: a producer whose send() never
returns, as aiokafka's does while it waits for metadata or buffer space)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from stream_replica import repair


class StuckProducer:
    async def send(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()  # never: metadata or buffer space never comes


async def test_a_send_that_never_returns_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repair, "HAND_OFF_TIMEOUT_S", 0.05)
    repairer = repair.ShadowRepairer("t", "g", StuckProducer())  # type: ignore[arg-type]
    with pytest.raises(KafkaError, match="the producer took no record within"):
        await asyncio.wait_for(repairer._hand_off(b"k", b"v", 0, []), 5)
