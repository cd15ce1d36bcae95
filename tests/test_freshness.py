"""Freshness while Kafka is unreachable: a worker cut off from its broker keeps answering
reads, but no longer calls them caught up, /readyz fails, /metrics shows the end offsets'
age, and the store's caught-up time stays at the broker's last word (the tombstone-retention
check on the next assignment trusts it). A broker of its own (dev/kafka/kafka.sh on free
ports), since the test stops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream_replica import admin
from stream_replica.publisher import Publisher
from stream_replica.store import ReplicaReader
from tests.helpers import wait_until, worker_command
from tests.test_kafka_script import SCRIPT, _free_ports, needs_kafka

pytestmark = [needs_kafka, pytest.mark.timeout(420)]

MAX_AGE_S = 2.0


class OwnBroker:
    def __init__(self, run_dir: Path) -> None:
        port, controller = _free_ports(2)
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = os.environ | {
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_RUN_DIR": str(run_dir),
        }

    def run(self, command: str) -> None:
        subprocess.run(
            [str(SCRIPT), command], env=self.env, check=True, capture_output=True, timeout=240
        )


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "kafka")
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop")


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, json.loads(await response.read())


async def test_a_worker_cut_off_from_kafka_stops_calling_itself_caught_up(
    own_broker: OwnBroker, tmp_path: Path
) -> None:
    bootstrap, topic = own_broker.bootstrap, "fresh"
    await admin.create_topic(bootstrap, topic, 2, 1, admin.replication_topic_configs(1))
    async with Publisher(bootstrap, topic) as publisher:
        for i in range(50):
            await publisher.publish_snapshot("acct", f"k{i}", b"v")
        await publisher.flush()
    port = _free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "db"
    command = worker_command(bootstrap, topic, "g", db, "--http", f"127.0.0.1:{port}",
                             "--end-offset-max-age-s", str(MAX_AGE_S))  # fmt: skip
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        async with aiohttp.ClientSession() as session:

            async def caught_up() -> bool:
                try:
                    status, grain = await get_json(session, f"{base}/grains/acct/k7")
                except aiohttp.ClientConnectionError:
                    return False  # not listening yet
                return status == 200 and grain["caught_up"] is True

            await wait_until(caught_up, 60, 0.2, what="the worker to catch up")
            status, grain = await get_json(session, f"{base}/grains/acct/k7")
            assert grain["end_offset_age_s"] < MAX_AGE_S
            assert (await get_json(session, f"{base}/readyz"))[0] == 200

            own_broker.run("stop")
            cut_off_ms = time.time_ns() // 1_000_000  # the broker is down: no word after this

            async def not_ready() -> bool:
                status, _ = await get_json(session, f"{base}/readyz")
                return status == 503

            await wait_until(not_ready, 60, 0.2, what="/readyz to fail")
            status, body = await get_json(session, f"{base}/readyz")
            assert "has not confirmed the end offsets of partitions [0, 1]" in body["reason"]
            status, grain = await get_json(session, f"{base}/grains/acct/k7")
            # still answered from the replica, but not called caught up any more
            assert status == 200 and grain["caught_up"] is False, grain
            assert grain["end_offset_age_s"] > MAX_AGE_S
            # A page is no 404's better: grains the log took since are not in it, and an
            # empty page said nothing at all (200 with no freshness to judge it by).
            status, page = await get_json(session, f"{base}/grains/acct?prefix=k7")
            assert status == 503 and page["partitions"], page
            assert "its end offset was confirmed" in page["error"], page
            status, page = await get_json(session, f"{base}/grains/acct?prefix=k7&stale=ok")
            assert status == 200 and [i["grain_key"] for i in page["items"]] == ["k7"], page
            assert page["items"][0]["caught_up"] is False
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
            ages = [
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("stream_replica_partition_end_offset_age_seconds{")
            ]
            assert len(ages) == 2 and min(ages) > MAX_AGE_S, ages
            # said once in the worker's own log, not only by aiokafka's connection errors
            silent = "Kafka has not confirmed the end offset of partitions [0, 1] for "
            await wait_until(lambda: silent in log_path.read_text(), 30, 0.2, what="its line")

        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 120) == 0, log_path.read_text()
        # aiokafka logs each failed request (~30 lines a second while the broker is down):
        # one line per message per 10 s gets through
        library_lines = [line for line in log_path.read_text().splitlines() if " aiokafka" in line]
        assert len(library_lines) < 30, "\n".join(library_lines)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # Stopping wrote each partition's caught-up time: the broker's last word before the cut,
    # not the moment of the stop (a broker unreachable past delete.retention.ms may have
    # dropped tombstones this store never saw; the next assignment must rebuild then).
    with ReplicaReader(db) as reader:
        checkpoints = reader.checkpoints()
    assert sorted(checkpoints) == [0, 1]
    for partition, checkpoint in checkpoints.items():
        assert 0 < checkpoint.caught_up_at_ms <= cut_off_ms, (partition, checkpoint, cut_off_ms)


async def test_a_worker_says_when_kafka_goes_silent_and_when_it_answers_again(
    own_broker: OwnBroker, tmp_path: Path
) -> None:
    """Only aiokafka's rate-limited connection errors said so, and nothing said when the
    outage ended."""
    bootstrap, topic = own_broker.bootstrap, "silent"
    await admin.create_topic(bootstrap, topic, 1, 1, admin.replication_topic_configs(1))
    async with Publisher(bootstrap, topic) as publisher:
        await publisher.publish_snapshot("acct", "k", b"v")
    command = worker_command(bootstrap, topic, "g", tmp_path / "db",
                             "--end-offset-max-age-s", str(MAX_AGE_S))  # fmt: skip
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
    try:

        async def read() -> bool:  # fetched, written, committed: an end offset confirmed
            return (await admin.committed_offsets(bootstrap, "g", topic)).get(0) == 1

        await wait_until(read, 60, 0.2, what="the record read")
        own_broker.run("stop")
        silent = "Kafka has not confirmed the end offset of partitions [0] for "
        await wait_until(lambda: silent in log_path.read_text(), 60, 0.2, what="silent")
        own_broker.run("start")
        again = "Kafka confirms the end offsets of every served partition again"
        await wait_until(lambda: again in log_path.read_text(), 90, 0.2, what="again")
        assert log_path.read_text().count(silent) == 1
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 120) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


PAUSE_S = 4.0


async def send_get(port: int, path: str) -> Callable[[], Awaitable[tuple[int, Any]]]:
    """Write one GET on a connection of its own; the answer's status and JSON body, awaited
    later. Once the write is drained the request is in the worker's socket on loopback (the
    kernel accepts the connection of a paused process too), so a paused worker finds it
    waiting as it resumes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()

    async def answer() -> tuple[int, Any]:
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    return answer


async def test_an_answer_right_after_a_pause_is_not_called_caught_up(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """A worker paused (SIGSTOP here; a frozen VM or container, a swapped-out process) while
    the topic took a newer state answered, as it resumed, with the old state, caught_up true,
    replica_lag 0 and end_offset_age_s 0.0: the fetch answer that had waited in its socket
    through the pause carried the end offset of before the pause, and was stamped as
    confirmed when it was read. It is as old as the fetch that asked for it."""
    topic = await make_topic(partitions=1)
    port = _free_ports(1)[0]
    path = "/grains/acct/k"
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await publisher.publish_snapshot("acct", "k", b"old", sequence=1)
        await publisher.flush()
        command = worker_command(kafka_bootstrap, topic, "g", tmp_path / "db", "--http",
                                 f"127.0.0.1:{port}", "--end-offset-max-age-s", "2")  # fmt: skip
        log_path = tmp_path / "worker.log"
        with log_path.open("wb") as log_file:
            worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            async with aiohttp.ClientSession() as session:

                async def fresh(sequence: int) -> bool:
                    try:
                        status, grain = await get_json(session, f"http://127.0.0.1:{port}{path}")
                    except aiohttp.ClientConnectionError:
                        return False  # not listening yet
                    return status == 200 and grain["sequence"] == sequence and grain["caught_up"]

                await wait_until(lambda: fresh(1), 60, 0.1, what="the worker to catch up")
            worker.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(PAUSE_S)  # the pause itself, not a wait for something
                await publisher.publish_snapshot("acct", "k", b"new", sequence=2)
                await publisher.flush()
                answer = await send_get(port, path)  # waits in the paused worker's socket
            finally:
                worker.send_signal(signal.SIGCONT)
            status, grain = await asyncio.wait_for(answer(), 30)
            assert status == 200, grain
            if grain["sequence"] == 1:  # the state of before the pause: not called fresh
                assert grain["caught_up"] is False, grain
                assert grain["end_offset_age_s"] >= PAUSE_S - 0.5, grain
            async with aiohttp.ClientSession() as session:
                await wait_until(lambda: fresh(2), 30, 0.1, what="the new state")
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(worker.wait, 60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
