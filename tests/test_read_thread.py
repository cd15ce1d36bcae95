"""The store's read thread on its own: results, errors, order, cancellation, close."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stream_replica.read_thread import ReadPlacement, ReadThread


async def test_reads_run_on_one_other_thread_in_order() -> None:
    seen: list[tuple[int, int]] = []

    def read(n: int) -> int:
        seen.append((n, threading.get_ident()))
        return n * n

    reads = ReadThread(read, "test-read")
    try:
        assert await asyncio.gather(*(reads.read(n) for n in range(5))) == [0, 1, 4, 9, 16]
        assert [n for n, _ in seen] == [0, 1, 2, 3, 4]
        threads = {thread for _, thread in seen}
        assert len(threads) == 1 and threading.get_ident() not in threads
    finally:
        reads.close()


async def test_an_error_reaches_the_caller_and_the_thread_reads_on() -> None:
    def read(n: int) -> int:
        if n < 0:
            raise ValueError(f"negative: {n}")
        return n

    reads = ReadThread(read, "test-read")
    try:
        with pytest.raises(ValueError, match="negative: -1"):
            await reads.read(-1)
        assert await reads.read(2) == 2
    finally:
        reads.close()


async def test_close_waits_for_a_read_whose_caller_was_cancelled() -> None:
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def read(n: int) -> int:
        entered.set()
        assert release.wait(30)
        finished.set()
        return n

    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    reads = ReadThread(read, "test-read")
    task = asyncio.create_task(reads.read(1))
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closer = threading.Thread(target=reads.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and not finished.is_set()
    release.set()
    closer.join(30)
    assert not closer.is_alive() and finished.is_set()
    await asyncio.sleep(0)  # the thread's hand-over callback runs: it drops the result
    assert loop_errors == []


async def test_a_closed_reader_starts_again_when_asked() -> None:
    reads = ReadThread(lambda n: n + 1, "test-read")
    assert await reads.read(1) == 2
    reads.close()
    reads.close()  # twice is fine
    assert await reads.read(2) == 3
    reads.close()


def test_placement_moves_reads_off_the_loop_at_the_first_slow_read_and_back_after_fast_ones() -> (
    None
):
    placement = ReadPlacement(slow_s=0.002, fast_s=0.0005, fast_in_a_row=3)
    placement.took(0.002)  # not slower than slow_s
    assert not placement.on_thread
    placement.took(0.0021)
    assert placement.on_thread and placement.moves_to_thread == 1
    for took in (0.0001, 0.0001, 0.001, 0.0001, 0.0001):  # a slower read restarts the count
        placement.took(took)
        assert placement.on_thread
    placement.took(0.0005)
    assert not placement.on_thread
    assert placement.moves_to_thread == 1
