"""A repair send is bounded as a whole (no broker: a producer whose send() never returns, as
aiokafka's does while it waits for metadata or buffer space); a repair read back restores a
deletion it undid, and only then (the records it reads, without a broker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from stream_replica import repair
from stream_replica.fold import GrainState


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


class Record:
    def __init__(self, key: bytes, offset: int, value: bytes | None) -> None:
        self.key, self.offset, self.value = key, offset, value


class OneGrainStore:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def get(self, grain: Any) -> Any:
        return None if self.offset < 0 else GrainState(1, 1, "c", b"p", 0, self.offset)


class Sent:
    def __init__(self) -> None:
        self.values: list[tuple[bytes, bytes | None]] = []

    async def __call__(self, key: bytes, value: bytes | None, *args: Any) -> int:
        self.values.append((key, value))
        return 99


def watching(since: int, repair_offset: int) -> tuple[repair.ShadowRepairer, Sent]:
    repairer = repair.ShadowRepairer.__new__(repair.ShadowRepairer)
    repairer.topic, repairer.group = "t", "g"
    repairer.deletions_restored = 0
    sent = Sent()
    repairer._send = sent  # type: ignore[method-assign,assignment]
    repairer._watches = {
        KEY: repair._Watch(("acct", "a"), 0, since, repair_offset, time.monotonic())
    }
    return repairer, sent


KEY = b"acct/a"
TP = TopicPartition("t", 0)


@pytest.mark.parametrize(
    ("window", "state_offset", "restored"),
    [
        ([], 10, False),  # nothing on the key between the decision and the repair
        ([(7, None)], 10, True),  # deleted just before the repair landed
        ([(7, None), (8, b"v")], 10, False),  # deleted and set again: the repair is stale
        ([(7, None)], 11, False),  # set again after the repair
        ([(7, None)], -1, False),  # deleted again after the repair
        ([(4, None)], 10, False),  # a deletion the decision had already seen
    ],
)
async def test_a_repair_read_back_restores_only_a_deletion_it_undid(
    window: list[tuple[int, bytes | None]], state_offset: int, restored: bool
) -> None:
    repairer, sent = watching(since=5, repair_offset=10)
    records = [Record(KEY, o, v) for o, v in window] + [Record(b"acct/other", 9, None)]
    await repairer.read_back({TP: records}, OneGrainStore(state_offset))  # type: ignore[arg-type]
    assert repairer.watching  # the repair itself not read yet
    await repairer.read_back(
        {TP: [Record(KEY, 10, b"repair")]},
        OneGrainStore(state_offset),  # type: ignore[arg-type]
    )
    assert not repairer.watching
    assert sent.values == ([(KEY, None)] if restored else [])
    assert repairer.deletions_restored == int(restored)
