"""A repair read back restores a deletion it undid, and only then (repair_watch.py, the
records it reads, without a broker). The broker test is in tests/test_compaction.py."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from stream_replica.fold import GrainState
from stream_replica.repair import REPAIR_HEADER
from stream_replica.repair_watch import RepairWatch

KEY = b"acct/a"
GRAIN = ("acct", "a")
TP = TopicPartition("t", 0)


class Record:
    def __init__(
        self, key: bytes, offset: int, value: bytes | None, headers: tuple[Any, ...] = ()
    ) -> None:
        self.key, self.offset, self.value, self.headers = key, offset, value, headers


OTHER_GROUPS_REPAIR = ((REPAIR_HEADER, b"1"),)


def AT_END(partition: int) -> bool:  # the partition is read to its end
    return True


class OneGrainStore:
    """The grain's state is the record at ``offset`` (-1: none)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def get(self, grain: Any) -> Any:
        return None if self.offset < 0 else GrainState(1, 1, "c", b"p", 0, self.offset)


def watch() -> tuple[RepairWatch, list[tuple[Any, ...]]]:
    restored: list[tuple[Any, ...]] = []

    async def restore(*args: Any) -> None:
        restored.append(args)

    return RepairWatch(restore), restored


@pytest.mark.parametrize("acknowledged_first", [True, False])
@pytest.mark.parametrize(
    ("window", "state_offset", "restored_at"),
    [
        ([], 10, None),  # nothing on the key between the decision and the repair
        ([(7, None)], 10, 7),  # deleted just before the repair landed
        ([(7, None), (8, b"v")], 10, None),  # deleted and set again: the repair is stale
        ([(7, None)], 11, None),  # set again after the repair
        ([(7, None)], -1, None),  # deleted again after the repair
        ([(4, None)], 10, None),  # a deletion the decision had already seen
    ],
)
async def test_a_repair_read_back_restores_only_a_deletion_it_undid(
    window: list[tuple[int, bytes | None]],
    state_offset: int,
    restored_at: int | None,
    acknowledged_first: bool,
) -> None:
    """The acknowledgement and the read of the repair come in either order."""
    repairs, restored = watch()
    store: Any = OneGrainStore(state_offset)
    repairs.expect(KEY, GRAIN, 0, since=5)
    if acknowledged_first:
        repairs.landed(KEY, 10)
    records = [Record(KEY, o, v) for o, v in window] + [Record(b"acct/other", 9, None)]
    await repairs.read_back({TP: records}, store, AT_END)  # type: ignore[dict-item]
    assert repairs.watching  # the repair itself not read yet
    await repairs.read_back({TP: [Record(KEY, 10, b"repair")]}, store, AT_END)  # type: ignore[dict-item]
    if not acknowledged_first:
        assert repairs.watching and not restored  # read, but where it landed is not known
        repairs.landed(KEY, 10)
        await repairs.read_back({}, store, AT_END)
    assert not repairs.watching
    assert restored == ([] if restored_at is None else [(GRAIN, 0, restored_at, 10)])


async def test_a_repair_not_published_is_not_watched() -> None:
    repairs, _ = watch()
    repairs.expect(KEY, GRAIN, 0, since=5)
    repairs.cancel(KEY)
    assert not repairs.watching


@pytest.mark.parametrize(
    ("window", "after", "state_offset", "restored_at"),
    [
        ([(7, None, ()), (8, b"r", OTHER_GROUPS_REPAIR)], [], 10, 7),  # its repair first
        ([(7, None, ())], [(11, b"r", OTHER_GROUPS_REPAIR)], 11, 7),  # its repair after
        ([(7, None, ())], [(11, None, OTHER_GROUPS_REPAIR)], -1, None),  # it restored it
        ([(7, None, ())], [(11, b"v", ())], 11, None),  # the primary set it again
    ],
)
async def test_another_groups_repair_is_no_write_of_the_primary(
    window: list[tuple[int, bytes | None, tuple[Any, ...]]],
    after: list[tuple[int, bytes | None, tuple[Any, ...]]],
    state_offset: int,
    restored_at: int | None,
) -> None:
    """Two replica groups repair the grain the primary deleted: both repairs land after the
    tombstone, in either order, and each group restores the deletion (not: each takes the
    other's repair for the grain set again, and the deletion stays undone)."""
    repairs, restored = watch()
    store: Any = OneGrainStore(state_offset)
    repairs.expect(KEY, GRAIN, 0, since=5)
    repairs.landed(KEY, 10)
    records = [Record(KEY, o, v, h) for o, v, h in [*window, (10, b"r", OTHER_GROUPS_REPAIR)]]
    records += [Record(KEY, o, v, h) for o, v, h in after]
    await repairs.read_back({TP: records}, store, AT_END)  # type: ignore[dict-item]
    assert not repairs.watching
    assert restored == ([] if restored_at is None else [(GRAIN, 0, restored_at, 10)])


async def test_the_decision_waits_until_the_partition_is_read_to_its_end() -> None:
    """A poll that ends just after the repair says nothing of what the primary wrote after
    it (a new start of the grain, which a re-published deletion would delete)."""
    repairs, restored = watch()
    repairs.expect(KEY, GRAIN, 0, since=5)
    repairs.landed(KEY, 10)
    read = [Record(KEY, 7, None), Record(KEY, 10, b"r", OTHER_GROUPS_REPAIR)]
    await repairs.read_back({TP: read}, OneGrainStore(10), lambda p: False)  # type: ignore[dict-item,arg-type]
    assert repairs.watching and not restored
    await repairs.read_back({TP: [Record(KEY, 11, b"v")]}, OneGrainStore(11), AT_END)  # type: ignore[dict-item,arg-type]
    assert not repairs.watching and not restored
