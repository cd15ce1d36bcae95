"""A repair send is bounded as a whole (no broker: a producer whose send() never returns, as
aiokafka's does while it waits for metadata or buffer space)."""

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
    monkeypatch.setattr(repair, "SEND_TIMEOUT_S", 0.05)
    repairer = repair.ShadowRepairer.__new__(repair.ShadowRepairer)
    repairer._producer = StuckProducer()  # type: ignore[assignment]
    repairer.topic = "t"
    with pytest.raises(KafkaError, match="no acknowledgement within"):
        await asyncio.wait_for(repairer._send(b"k", b"v", 0, []), 5)
