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


class AcceptingProducer:
    """Takes every record; its delivery is settled by the test (the broker's answer)."""

    def __init__(self) -> None:
        self.deliveries: list[asyncio.Future[Any]] = []

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        delivery = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery


class Landed:
    offset = 41


async def test_a_deletion_restored_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    """It waited up to ACK_WAIT_S for each acknowledgement, holding up the poll, and said
    "failed: publish a tombstone" for a deletion the producer went on to deliver."""
    producer = AcceptingProducer()
    repairer = repair.ShadowRepairer("t", "g", producer)  # type: ignore[arg-type]
    for _ in range(2):
        await asyncio.wait_for(repairer._restore_deletion(("acct", "a"), 0, 7, 9), 0.5)
    assert len(producer.deliveries) == 2 and repairer.deletions_restored == 0
    assert "re-publishing the deletion failed" not in caplog.text
    landed, lost = producer.deliveries
    landed.set_result(Landed())
    lost.set_exception(KafkaError("the producer stopped"))
    await asyncio.sleep(0)  # the done callbacks run
    assert repairer.deletions_restored == 1
    assert "re-published the deletion at offset 41" in caplog.text
    assert "re-publishing the deletion failed (KafkaError: " in caplog.text
    assert "publish a tombstone for it" in caplog.text
