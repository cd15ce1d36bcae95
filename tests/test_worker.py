"""Worker semantics against the real broker (in-process workers; subprocess ones in
test_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_replica import admin
from stream_replica.contract import EntryType
from stream_replica.preflight import Stopped
from stream_replica.publisher import Publisher
from stream_replica.store import Checkpoint, ReplicaReader, ReplicaStore, StoreError
from stream_replica.workload import invalid_values
from tests.helpers import (
    InProcessWorker,
    TopicFactory,
    cli,
    finish,
    publish_unchecked,
    read_until,
    wait_until,
    without_report_age,
    worker_command,
)
from tests.oracle import read_oracle


class Crash(BaseException):
    """Simulated process death: not an Exception, so no handler in the worker catches it."""


def stored_grains(store: ReplicaStore) -> dict[Any, Any]:
    return dict(store.grains())


async def produce_mixed(publisher: Publisher) -> None:
    """Several grains in one partition, Delta in the middle of a poll, FullState after the
    Delta, duplicates, lower sequences, tombstone then re-create, and invalid records."""
    p = publisher
    await p.publish_snapshot("acct", "a", b"a1", sequence=1)
    await p.publish_snapshot("acct", "b", b"b1", sequence=1)
    await publish_unchecked(p, "acct", "a", b"a-delta", 2, EntryType.DELTA)
    await p.publish_snapshot("acct", "c", b"c1", sequence=5)
    await p.publish_snapshot("acct", "a", b"a3", sequence=3)  # FullState after the Delta
    await p.publish_snapshot("acct", "b", b"b1", sequence=1)  # duplicate
    await publish_unchecked(p, "acct", "c", b"c-old", 4)  # lower: stale
    await p.publish_snapshot("acct", "d", b"d9", sequence=9)
    await p.publish_tombstone("acct", "d")
    await p.publish_snapshot("acct", "d", b"d-again", sequence=1)  # re-create after tombstone
    await p.publish_snapshot("acct", "e", b"e1", sequence=1)
    await p.publish_tombstone("acct", "e")
    import random

    for op in invalid_values(random.Random(1), "acct", "z"):
        await p.publish_raw(op.key, op.value)
    await p.publish_snapshot("acct", "b", b"b2", sequence=2)
    await p.flush()


async def test_semantics_and_dlq(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=1)
    dlq = await make_topic(partitions=1, compacted=False, prefix="dlq")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await produce_mixed(publisher)
    oracle = await read_oracle(kafka_bootstrap, topic, 1)
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", dlq_topic=dlq
    ).start()
    await wait_until(lambda: worker.caught_up(oracle.end_offsets()), 60, what="catch-up")
    grains = stored_grains(worker.store)
    counts = worker.worker.counts
    await worker.stop()

    assert grains == oracle.expected()
    assert {g[1]: s.payload for g, s in grains.items()} == {
        "a": b"a3",
        "b": b"b2",
        "c": b"c1",
        "d": b"d-again",
    }
    assert counts.deltas_refused == 1
    assert counts.invalid == 9
    assert counts.duplicates == 1 and counts.stale == 1 and counts.tombstones == 2

    # The DLQ holds every refused record with its origin in the headers.
    consumer = AIOKafkaConsumer(
        dlq, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    dead = []
    try:
        while len(dead) < 10:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"DLQ has only {len(dead)} records"
            for records in batch.values():
                dead.extend(records)
    finally:
        await consumer.stop()
    by_offset = {}
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["stream-replica.source-topic"] == topic
        assert headers["stream-replica.source-partition"] == "0"
        by_offset[int(headers["stream-replica.source-offset"])] = (record, headers)
    assert set(by_offset) == {o for _, o in oracle.rejected()}
    delta_record, delta_headers = by_offset[2]
    assert delta_headers["stream-replica.kind"] == "delta"
    assert delta_headers["stream-replica.grain-key"] == "a"
    assert msgpack.unpackb(delta_record.value)["payload"] == b"a-delta"
    reasons = [
        h["stream-replica.reason"]
        for _, h in by_offset.values()
        if h["stream-replica.kind"] == "invalid"
    ]
    assert any("not valid msgpack" in r for r in reasons)
    assert any("key/value mismatch" in r for r in reasons)
    assert any("has no '/'" in r for r in reasons)


async def test_small_polls_give_the_same_result(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=3)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for round_index in range(5):
            for i in range(60):
                await publisher.publish_snapshot("t", f"k{i}", f"{round_index}".encode())
            await publisher.publish_tombstone("t", f"k{round_index}")
    oracle = await read_oracle(kafka_bootstrap, topic, 3)
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", max_records=7
    ).start()
    await wait_until(lambda: worker.caught_up(oracle.end_offsets()), 60, what="catch-up")
    grains = stored_grains(worker.store)
    await worker.stop()
    assert grains == oracle.expected()
    committed = await admin.committed_offsets(kafka_bootstrap, worker.settings.group, topic)
    assert committed == oracle.end_offsets()


async def test_crash_between_write_and_commit(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """The store is written before the commit; a worker dying in between restarts from the
    store's checkpoint: nothing is lost, nothing is re-read from the older group offset."""
    topic = await make_topic(partitions=1)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(500):
            await publisher.publish_snapshot("t", f"k{i % 10}", f"v{i}".encode())
    oracle = await read_oracle(kafka_bootstrap, topic, 1)

    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db", max_records=20)
    real_apply = first.store.apply

    def apply_then_die(*args: Any) -> None:
        real_apply(*args)
        raise Crash  # the process dies right after the write, before the commit

    first.store.apply = apply_then_die  # type: ignore[method-assign]
    first.start()
    assert first.task is not None
    with pytest.raises(Crash):
        await asyncio.wait_for(first.task, 60)
    checkpoint = first.store.checkpoints()[0].next_offset
    first.store.close()
    assert checkpoint == 20  # one poll of 20 records was written ...
    committed = await admin.committed_offsets(kafka_bootstrap, group, topic)
    assert committed.get(0, -1) < checkpoint  # ... and not committed

    second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db", max_records=20)
    second.start()
    await wait_until(lambda: second.caught_up(oracle.end_offsets()), 60, what="catch-up")
    grains = stored_grains(second.store)
    records_read = second.worker.counts.records
    await second.stop()
    assert records_read == 500 - checkpoint  # resumed from the store, not from the group offset
    assert grains == oracle.expected()
    assert await admin.committed_offsets(kafka_bootstrap, group, topic) == {0: 500}


async def test_restart_commits_a_written_but_uncommitted_checkpoint(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """Crash after the last write, before its commit, with nothing new to read: the restarted
    worker still brings the group's offset up to its store's checkpoint."""
    topic = await make_topic(partitions=1)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(10):
            await publisher.publish_snapshot("t", f"k{i}", b"v")
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db")
    written = asyncio.Event()

    async def die_before_commit(consumer: Any, offsets: Any) -> bool:
        written.set()
        await asyncio.Event().wait()
        return False

    first.worker.commits._commit_offsets = die_before_commit  # type: ignore[method-assign]
    first.start()
    await asyncio.wait_for(written.wait(), 60)
    await first.kill()
    assert await admin.committed_offsets(kafka_bootstrap, group, topic) in ({}, {0: -1})

    second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()

    async def committed_to_end() -> bool:
        return await admin.committed_offsets(kafka_bootstrap, group, topic) == {0: 10}

    await wait_until(committed_to_end, 60, what="commit of the stored checkpoint")
    assert second.worker.counts.records == 0  # nothing re-read
    await second.stop()


async def test_new_store_rebuilds_from_beginning_despite_group_offsets(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=2)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(40):
            await publisher.publish_snapshot("t", f"k{i}", b"x")
    oracle = await read_oracle(kafka_bootstrap, topic, 2)
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db1").start()
    await wait_until(lambda: first.caught_up(oracle.end_offsets()), 60, what="catch-up")
    await first.stop()
    assert await admin.committed_offsets(kafka_bootstrap, group, topic) == oracle.end_offsets()

    fresh = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db2").start()
    await wait_until(lambda: fresh.caught_up(oracle.end_offsets()), 60, what="rebuild")
    grains = stored_grains(fresh.store)
    await fresh.stop()
    assert grains == oracle.expected() and len(grains) == 40


async def test_checkpoint_older_than_delete_retention_is_rebuilt(
    kafka_bootstrap: str, tmp_path: Path, unique: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("short-retention")
    configs = admin.replication_topic_configs(1, delete_retention_ms=60_000)
    await admin.create_topic(kafka_bootstrap, topic, 1, 1, configs)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await publisher.publish_snapshot("t", "gone", b"x", sequence=1)
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: first.caught_up({0: 1}), 60, what="catch-up")
    await first.stop()
    # Pretend the store was last written two minutes ago, then the grain was deleted.
    with ReplicaStore(tmp_path / "db", topic) as store:
        old = store.checkpoints()[0]
        store.set_checkpoints({0: Checkpoint(1, old.caught_up_at_ms - 120_000)})
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await publisher.publish_snapshot("t", "new", b"y", sequence=1)
    caplog.set_level("INFO", "stream_replica")
    second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: second.caught_up({0: 2}), 60, what="rebuild")
    records_read = second.worker.counts.records
    await second.stop()
    assert "delete.retention.ms" in caplog.text and "wiping and rebuilding" in caplog.text
    assert records_read == 2  # re-read from offset 0, not resumed from offset 1


def test_wrong_topic_store_refused(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "db", "topic-a")
    store.set_checkpoints({0: Checkpoint(5, 0)})  # it replicated something of topic-a
    store.close()
    with pytest.raises(StoreError, match="holds a replica of topic 'topic-a'"):
        ReplicaStore(tmp_path / "db", "topic-b")
    result = cli("run", "--db", str(tmp_path / "db"), "--topic", "topic-b", "--group", "g")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert (
        "holds a replica of topic 'topic-a', not 'topic-b': pass --topic topic-a" in result.stderr
    )


def test_a_store_that_never_reached_its_topic_takes_another(
    kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    """A run refused before it reached its topic (a typo in --topic) leaves a directory with
    only the topic's name: the next run, with the right topic, takes it."""
    result = cli("run", "--db", str(tmp_path / "db"), "--topic", unique("typo"), "--group", "g",
                 "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert result.returncode != 0
    with ReplicaReader(tmp_path / "db") as reader:
        assert str(reader.topic).startswith("typo")
    store = ReplicaStore(tmp_path / "db", "right")
    assert store.topic == "right"
    store.close()


def test_store_of_another_format_refused(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    ReplicaStore(tmp_path / "db", "t").close()
    options = Options(raw_mode=True)
    db = Rdict(str(tmp_path / "db"), options)
    db[b"m:format"] = b"1"  # an older layout
    db.close()
    with pytest.raises(StoreError, match="uses store format 1"):
        ReplicaStore(tmp_path / "db", "t")


def test_locked_store_refused(tmp_path: Path) -> None:
    with ReplicaStore(tmp_path / "db", "t"):
        result = cli("run", "--db", str(tmp_path / "db"), "--topic", "t", "--group", "g")
    assert result.returncode == 2
    assert "in use by another worker" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


async def test_missing_or_non_compacted_topic_refused(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """run and topic describe give the same exit code for the same problem (README "Exit
    codes"): 2 for a topic that does not exist, 3 for one not compacted; run also 2 for a
    missing dead-letter topic. run's INFO lines come first; the error is the last line."""

    def run(topic: str, db: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return cli(
            "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group",
            "fix-conn-g", "--db", str(tmp_path / db), *extra,
        )  # fmt: skip

    def describe(topic: str) -> subprocess.CompletedProcess[str]:
        return cli("topic", "describe", "--bootstrap-servers", kafka_bootstrap, "--topic", topic)

    def last_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
        assert result.returncode == code, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("stream-replica: ") and text in last, result.stderr[-2000:]

    nope = unique("fix-conn-nope")
    last_line(run(nope, "a"), 2, f"topic {nope!r} does not exist")
    last_line(describe(nope), 2, f"topic {nope!r} does not exist")
    plain = await make_topic(compacted=False, prefix="fix-conn-plain")
    last_line(run(plain, "b"), 3, f"topic {plain!r} is not compacted")
    last_line(describe(plain), 3, f"topic {plain!r} is NOT compacted")
    assert "a dead-letter topic for run --dlq-topic is right without" in describe(plain).stderr
    compacted = await make_topic(prefix="fix-conn-t")
    no_dlq = run(compacted, "c", "--dlq-topic", unique("fix-conn-none"))
    last_line(no_dlq, 2, "dead-letter topic")
    assert "--cleanup-policy delete`" in no_dlq.stderr  # how to create it


async def test_a_compacted_dead_letter_topic_is_warned_about(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dead letters of one grain share a key: a compacted DLQ keeps only the last."""
    from stream_replica.settings import WorkerSettings
    from stream_replica.worker import check_topic

    topic = await make_topic()
    compacted = await make_topic(prefix="dlq")
    plain = await make_topic(compacted=False, prefix="dlq")
    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap, topic=topic, db=tmp_path / "db", dlq_topic=compacted
    )
    with caplog.at_level(logging.WARNING, logger="stream_replica.worker"):
        await check_topic(settings, asyncio.Event())
        warned = [r for r in caplog.records if "dead-letter" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert (
            warned[0]
            .getMessage()
            .startswith(
                f"dead-letter topic {compacted!r} is compacted (cleanup.policy=compact): dead "
                "letters of one grain will replace each other at compaction"
            )
        )
        assert "topic create --cleanup-policy delete" in warned[0].getMessage()
        caplog.clear()
        await check_topic(settings.model_copy(update={"dlq_topic": plain}), asyncio.Event())
        assert not [r for r in caplog.records if "dead-letter" in r.getMessage()]


def test_bad_option_is_one_line(tmp_path: Path) -> None:
    result = cli("run", "--db", str(tmp_path / "db"), "--max-records", "0")
    assert result.returncode == 2
    assert "--max-records (env STREAM_REPLICA_MAX_RECORDS): " in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_the_replicated_topic_as_dead_letter_topic_is_refused(tmp_path: Path) -> None:
    """Refused records sent to the topic they came from are read back and refused again:
    the topic grew from 430 to 61,225 records in 5 s."""
    result = cli("run", "--db", str(tmp_path / "db"), "--topic", "t", "--dlq-topic", "t")
    assert result.returncode == 2, result.stderr
    assert "the dead-letter topic is the replicated topic 't'" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "db").exists()  # refused before anything was opened


async def test_reader_cli_while_worker_runs(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=2)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        await publisher.publish_snapshot("cart", "c/1", b"hello", sequence=3)
        await publisher.publish_snapshot("acct", "z", b"x", sequence=1)
    oracle = await read_oracle(kafka_bootstrap, topic, 2)
    worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db").start()
    await wait_until(lambda: worker.caught_up(oracle.end_offsets()), 60, what="catch-up")

    def reported_caught_up() -> bool:
        with ReplicaReader(tmp_path / "db") as reader:
            return all(s.caught_up for s in reader.served().values()) and len(reader.served()) == 2

    await wait_until(reported_caught_up, 30, what="the worker to report its partitions caught up")
    fresh = {"role": "active", "lag": 0, "caught_up": True}
    try:
        got = cli("get", "--db", str(tmp_path / "db"), "cart", "c/1")
        assert got.returncode == 0, got.stderr
        obj = without_report_age(json.loads(got.stdout))
        state = oracle.expected()[("cart", "c/1")]
        assert obj == {
            "grain_type": "cart",
            "grain_key": "c/1",
            "sequence": 3,
            "timestamp_millis": state.timestamp_millis,
            "source_cluster": "primary",
            "payload": "aGVsbG8=",
            "partition": state.partition,
            "offset": state.offset,
            "served": fresh,
        }
        absent = cli("get", "--db", str(tmp_path / "db"), "cart", "nope")
        assert absent.returncode == 1 and "not in" in absent.stderr
        dump = cli("dump", "--db", str(tmp_path / "db"))
        rows = [json.loads(line) for line in dump.stdout.splitlines()]
        assert [(r["grain_type"], r["grain_key"]) for r in rows] == [("acct", "z"), ("cart", "c/1")]
        checkpoints = without_report_age(
            json.loads(cli("checkpoints", "--db", str(tmp_path / "db")).stdout)
        )
        assert checkpoints == {
            "topic": topic,
            "partitions": {str(p): e for p, e in oracle.end_offsets().items() if e},
            "served": {str(p): fresh for p, e in oracle.end_offsets().items() if e},
        }
    finally:
        await worker.stop()
    # Stopped: the copy is still readable, and says nobody keeps it current.
    stale = json.loads(cli("get", "--db", str(tmp_path / "db"), "cart", "c/1").stdout)
    assert stale["served"] is None and stale["payload"] == "aGVsbG8="
    assert cli("dump", "--db", str(tmp_path / "db"), "--served-only").stdout == ""
    assert len(cli("dump", "--db", str(tmp_path / "db")).stdout.splitlines()) == 2


async def test_sigterm_finishes_commits_and_leaves_group(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    topic = await make_topic(partitions=2)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(3000):
            await publisher.publish_snapshot("t", f"k{i % 300}", b"x" * 200)
    db = tmp_path / "db"
    process = subprocess.Popen(
        worker_command(kafka_bootstrap, topic, group, db, "--max-records", "10"),
        stderr=subprocess.PIPE,
    )

    def progressed() -> bool:
        try:
            with ReplicaReader(db) as reader:
                return sum(c.next_offset for c in reader.checkpoints().values()) > 0
        except StoreError:
            return False

    await wait_until(progressed, 60, what="first write")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    with ReplicaReader(db) as reader:
        stored = {p: c.next_offset for p, c in reader.checkpoints().items()}
    # Clean stop: the group's position equals what the store applied, and it left the group.
    assert await admin.committed_offsets(kafka_bootstrap, group, topic) == stored
    assert await admin.group_members(kafka_bootstrap, group) == []


def test_sigterm_while_waiting_for_broker_exits_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        worker_command("127.0.0.1:1", "t", "g", tmp_path / "db"),
        stderr=subprocess.PIPE,
        text=True,
    )
    read_until(process, "connection refused); check")  # the worker is up and backing off
    process.send_signal(signal.SIGTERM)
    rest = finish(process, 30)
    assert process.returncode == 0, rest
    assert "Traceback" not in rest


async def test_the_status_says_why_kafka_is_not_reached_until_it_is(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    waiting = InProcessWorker("127.0.0.1:1", "t", "g", tmp_path / "a")
    # From the start (/healthz is 200 on it): an attempt at a silent address takes ~13 s.
    assert waiting.worker.status().waiting_for_kafka == "connecting to Kafka at 127.0.0.1:1"
    waiting.start()
    try:

        def reason() -> bool:
            return "(connection refused)" in str(waiting.worker.status().waiting_for_kafka)

        await wait_until(reason, 30, 0.05, what="a retry")
    finally:
        waiting.stop_event.set()
        with pytest.raises(Stopped):  # stopped before the broker was reached
            await asyncio.wait_for(waiting.task, 30)  # type: ignore[arg-type]
        waiting.store.close()
    topic, group = await make_topic(partitions=1), unique("g")
    reached = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "b").start()
    try:

        def joining() -> bool:
            return reached.worker.status().waiting_for_kafka == f"joining group {group}"

        await wait_until(joining, 30, 0.01, what="the group's turn")
        await wait_until(lambda: reached.worker.status().last_poll_age_s is not None, 30, 0.05)
        assert reached.worker.status().waiting_for_kafka is None
    finally:
        await reached.stop()


def test_an_unknown_host_is_retried_and_said_so(tmp_path: Path) -> None:
    """DNS can fail for a while (a broker pod not up yet): retried, but not reported as
    'connection refused or timed out'."""
    process = subprocess.Popen(
        worker_command("nosuchhost.invalid:9092", "t", "g", tmp_path / "db"),
        stderr=subprocess.PIPE,
        text=True,
    )
    read_until(process, "cannot resolve host 'nosuchhost.invalid'")
    read_until(process, "retrying in")
    process.send_signal(signal.SIGTERM)
    rest = finish(process, 30)
    assert process.returncode == 0, rest


class _HangUp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass  # the server closes the connection when this returns


def test_a_listener_that_hangs_up_is_retried(tmp_path: Path) -> None:
    """A broker shutting down (or a load balancer with none behind it) accepts and closes:
    an outage, retried, never taken for a protocol mismatch (diagnosis.py's probes)."""
    with socketserver.TCPServer(("127.0.0.1", 0), _HangUp) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        process = subprocess.Popen(
            worker_command(f"127.0.0.1:{port}", "t", "g", tmp_path / "db"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            read_until(process, "retrying in")
        finally:
            process.send_signal(signal.SIGTERM)
            rest = finish(process, 30)
            server.shutdown()
    assert process.returncode == 0, rest  # still running when signalled


def test_sasl_against_a_plaintext_listener_ends_run_with_one_line(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """It was retried forever as 'no Kafka broker answered ... (connection refused or timed
    out)', although the broker had answered."""
    started = time.monotonic()
    result = cli(
        "run", "--bootstrap-servers", kafka_bootstrap, "--topic", "fix-conn-t", "--db",
        str(tmp_path / "db"), "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism",
        "PLAIN", "--sasl-username", "u", env={"STREAM_REPLICA_SASL_PASSWORD": "p"}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("stream-replica: the broker at ") and (
        "answered, but the SASL handshake failed" in last
    ), result.stderr[-2000:]
    assert "retrying" not in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


async def test_sigterm_during_a_long_rebalance_exits_promptly(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """A member killed with a 30 s session holds the next rebalance for 30 s, and aiokafka's
    getmany waits for the rebalance. A worker stopped meanwhile must not wait as well."""
    topic = await make_topic(partitions=2)
    group = unique("g")

    def start(name: str) -> subprocess.Popen[str]:
        command = worker_command(
            kafka_bootstrap, topic, group, tmp_path / name, "--session-timeout-ms", "30000"
        )
        return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)

    dead, member = start("dead"), start("member")
    joiner: subprocess.Popen[str] | None = None
    try:
        read_until(dead, "assigned partitions")
        read_until(member, "assigned partitions")
        dead.kill()
        joiner = start("joiner")  # its join starts a rebalance that waits for the dead member
        read_until(member, "released partitions")
        member.send_signal(signal.SIGTERM)
        started = time.monotonic()
        rest = finish(member, 60)
        assert member.returncode == 0, rest
        assert time.monotonic() - started < 15, rest  # not held until the dead member expires
        # It stopped while the rebalance went on: nothing assigned after the signal. (The
        # rebalance may have handed it a partition just before; finish() now shows such a
        # line, which the raw-pipe read used to lose.)
        after_signal = rest[rest.index("signal SIGTERM") :]
        assert "assigned partitions" not in after_signal, rest
    finally:
        for process in (dead, member, joiner):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)


async def test_group_offset_ahead_of_store_is_never_used(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """The group has committed far ahead of this store (another worker's store). On
    assignment the fetcher may already have fetched from the group's offset before our
    seek; those records must not be applied (found by the chaos run)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = 6
    topic = await make_topic(partitions=partitions)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(6000):
            await publisher.publish_snapshot("t", f"k{i % 300}", f"v{i}".encode())
    oracle = await read_oracle(kafka_bootstrap, topic, partitions)
    ends = oracle.end_offsets()

    for attempt in range(2):
        committer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await committer.start()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committer.assign(tps)
        await committer.commit({tp: ends[tp.partition] * 3 // 4 for tp in tps})
        await committer.stop()
        worker = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / f"db{attempt}")
        real_seek = worker.worker.rebalance.seek_assigned

        async def slow_seek(*args: Any, real_seek: Any = real_seek) -> Any:
            # A slow assignment callback lets the fetcher run ahead from the group offset.
            await asyncio.sleep(1.0)
            return await real_seek(*args)

        worker.worker.rebalance.seek_assigned = slow_seek  # type: ignore[method-assign]
        worker.start()
        await wait_until(lambda worker=worker: worker.caught_up(ends), 60, what="catch-up")
        records = worker.worker.counts.records
        grains = stored_grains(worker.store)
        await worker.stop()
        assert records == sum(ends.values()), f"attempt {attempt}: read {records} records"
        assert grains == oracle.expected()


async def test_checkpoint_below_log_start_is_rebuilt(
    kafka_bootstrap: str, tmp_path: Path, unique: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Records before the store's checkpoint were deleted (log start moved past it): the
    partition's grains are wiped and rebuilt from the new log start."""
    from aiokafka import TopicPartition
    from aiokafka.admin import RecordsToDelete

    topic = unique("log-start")
    configs = {**admin.replication_topic_configs(1), "cleanup.policy": "compact,delete"}
    await admin.create_topic(kafka_bootstrap, topic, 1, 1, configs)
    group = unique("g")
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(30):
            await publisher.publish_snapshot("t", f"old{i}", b"x", sequence=1)
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: first.caught_up({0: 30}), 60, what="catch-up")
    await first.stop()
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(70):
            await publisher.publish_snapshot("t", f"new{i}", b"y", sequence=1)
    async with admin.admin_client(kafka_bootstrap) as client:
        await client.delete_records({TopicPartition(topic, 0): RecordsToDelete(60)})
    oracle = await read_oracle(kafka_bootstrap, topic, 1)  # reads from the new log start
    assert oracle.records[0][0].offset == 60

    caplog.set_level("INFO", "stream_replica")
    second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    await wait_until(lambda: second.caught_up({0: 100}), 60, what="rebuild")
    grains = stored_grains(second.store)
    records = second.worker.counts.records
    await second.stop()
    assert "below the log start 60" in caplog.text
    assert records == 40
    assert grains == oracle.expected()  # the 30 old grains were wiped with the partition


def test_c_record_parser_is_loaded() -> None:
    from stream_replica.worker import c_parser_loaded

    assert c_parser_loaded(), "aiokafka fell back to its pure-Python record parser"


async def test_failed_assignment_stops_the_worker_without_applying(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    from stream_replica.worker import FatalError

    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(50):
            await publisher.publish_snapshot("t", f"k{i}", b"x")
    worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db")

    async def broken_seek(*args: Any) -> None:
        raise RuntimeError("ListOffsets timed out")

    worker.worker.rebalance.seek_assigned = broken_seek  # type: ignore[method-assign]
    worker.start()
    assert worker.task is not None
    with pytest.raises(FatalError, match="could not position the assigned partitions"):
        await asyncio.wait_for(worker.task, 60)
    assert worker.store.checkpoints() == {}  # nothing applied from an unsought position
    assert worker.worker.counts.records == 0
    worker.store.close()


async def test_an_empty_poll_after_a_failure_writes_nothing(tmp_path: Path) -> None:
    """No broker needed: once the worker has failed (a failed assignment, a refused
    commit), an empty poll must not step a checkpoint over transaction markers either."""
    from stream_replica.worker import FatalError

    worker = InProcessWorker("127.0.0.1:1", "t", "g", tmp_path / "db")
    worker.worker._fatal = FatalError("could not position the assigned partitions")
    consumer: Any = object()  # never reached
    with pytest.raises(FatalError):
        await worker.worker._step_over_markers(consumer, worker.worker.positions.seek_epoch)
    assert worker.store.checkpoints() == {}
    worker.store.close()


class _SeekingConsumer:
    """The consumer calls an assignment makes for partition 0 of "t" (at its log start 0,
    end 5, no committed offset); ``meanwhile`` runs during the committed-offset round trip,
    where the event loop runs other tasks (the worker's loop, its periodic work)."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        self.sought: dict[TopicPartition, int] = {}
        self.meanwhile = meanwhile

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0)}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    async def beginning_offsets(self, tps: Any) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: Any) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 5)

    async def committed(self, tp: TopicPartition) -> int | None:
        await asyncio.sleep(0)
        self.meanwhile()
        return None

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def pause(self, *tps: Any) -> None: ...


async def test_a_partition_given_back_is_not_dropped_while_its_assignment_reads_it(
    tmp_path: Path,
) -> None:
    """Lost longer than the grace period but not dropped yet, then given back: the periodic
    drop ran while the assignment awaited Kafka, between reading the checkpoint and seeking
    to it, and the partition resumed from a checkpoint whose grains were gone for good."""
    from stream_replica.fold import FoldCounts, GrainState
    from stream_replica.ownership import now_ms
    from stream_replica.settings import WorkerSettings
    from stream_replica.store import Served
    from stream_replica.worker import ReplicaWorker

    store = ReplicaStore(tmp_path / "db", "t")
    store.apply(
        {("g", "k"): GrainState(1, 1, "eu", b"x", 0, 2)}, {0: Checkpoint(3, now_ms())}, FoldCounts()
    )
    lost_at = now_ms() - 60_000
    store.set_served({0: Served("", -1, lost_at, lost_at)})  # lost 60 s ago, grace 30 s
    settings = WorkerSettings(db=tmp_path / "db", topic="t", lost_partition_grace_ms=30_000)
    worker = ReplicaWorker(settings, store, asyncio.Event())
    worker.rebalance.ever_assigned = True  # assigned before (it served partition 0 then)
    worker.rebalance.delete_retention_ms = 86_400_000
    consumer: Any = _SeekingConsumer(worker._drop_lost_partitions)
    try:
        await worker.rebalance.assigned(consumer, {TopicPartition("t", 0)})
        assert consumer.sought[TopicPartition("t", 0)] == 3  # resumed from its checkpoint...
        assert store.get(("g", "k")) is not None  # ...with the grains it stands for
        assert store.checkpoints()[0].next_offset == 3
    finally:
        store.close()


@pytest.mark.parametrize("log_format", ["human", "json"])
async def test_second_signal_exits_at_once(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any, log_format: str
) -> None:
    topic = await make_topic(partitions=1)
    process = subprocess.Popen(
        worker_command(
            kafka_bootstrap, topic, unique("g"), tmp_path / "db", "--log-format", log_format
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    read_until(process, "replicating topic")
    # Two different signals, so the kernel cannot merge them into one.
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGINT)
    rest = finish(process, 30)
    assert process.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), rest
    assert "second signal, exiting at once" in rest
    if log_format == "json":  # every line a JSON line, the last one too
        last = json.loads(rest.strip().splitlines()[-1])
        assert last["message"] == "second signal, exiting at once", last


async def test_far_behind_partitions_are_caught_up_one_after_another(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --catch-up-partitions 1 a worker reads one far-behind partition at a time (the
    others paused), hands on when it gets within MIN_LAG, and still ends with every partition
    caught up and equal to the log's fold (catchup.py)."""
    from stream_replica import catchup

    monkeypatch.setattr(catchup, "MIN_LAG", 20)
    topic = await make_topic(partitions=3)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for round_index in range(3):
            for i in range(90):
                await publisher.publish_snapshot("t", f"k{i}", f"{round_index}".encode())
    oracle = await read_oracle(kafka_bootstrap, topic, 3)
    assert all(end > 20 for end in oracle.end_offsets().values())  # all three far behind
    caplog.set_level("INFO", "stream_replica")
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", max_records=7, catch_up_partitions=1
    ).start()
    await wait_until(lambda: worker.caught_up(oracle.end_offsets()), 60, what="catch-up")
    grains = stored_grains(worker.store)
    await worker.stop()
    assert grains == oracle.expected()
    assert worker.worker.counts.records == sum(oracle.end_offsets().values())
    messages = [r.getMessage() for r in caplog.records if r.name == "stream_replica.worker"]
    first = [m for m in messages if m.startswith("catching up partitions")]
    assert len(first) == 1 and first[0].endswith("paused until then"), messages
    handed_on = [m for m in messages if ": catching up (next: " in m]
    assert len(handed_on) == 2, messages  # the two paused partitions, one after the other


async def test_a_catch_up_lets_other_tasks_run_between_polls(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """getmany answers at once while aiokafka holds fetched records and a clean poll awaits
    nothing, so a catch-up could run poll after poll without giving heartbeats, fetches,
    commits or HTTP reads a turn (it held the loop for 130-160 ms once). Every poll must let
    a task that is ready run first."""
    topic = await make_topic(partitions=2)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(3000):
            await publisher.publish_snapshot("t", f"k{i % 500}", b"x" * 200)
    oracle = await read_oracle(kafka_bootstrap, topic, 2)
    worker = InProcessWorker(
        kafka_bootstrap, topic, unique("g"), tmp_path / "db", max_records=10
    ).start()
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []
    process = worker.worker._process

    async def recording(*args: Any) -> None:
        seen.append(turns)
        await process(*args)

    worker.worker._process = recording  # type: ignore[method-assign]
    ticking = asyncio.create_task(ticker())
    try:
        await wait_until(lambda: worker.caught_up(oracle.end_offsets()), 60, what="catch-up")
    finally:
        ticking.cancel()
        await worker.stop()
    assert len(seen) >= 100  # many polls of 10 records, most answered from aiokafka's buffer
    stuck = [n for n, (a, b) in enumerate(itertools.pairwise(seen)) if b <= a]
    assert not stuck, f"no other task ran between polls {stuck[:5]} of {len(seen)}"


async def test_a_failed_revocation_still_fences_polls_fetched_before_it(tmp_path: Path) -> None:
    """No broker needed: the revocation callback itself. Whatever step fails in it, a poll
    fetched before the revocation must not be applied (the seek epoch moves) nor committed
    with the old generation (rebalancing is set)."""
    from aiokafka import TopicPartition

    worker = InProcessWorker("127.0.0.1:1", "t", "g", tmp_path / "db")
    replica = worker.worker

    def broken(partitions: Any) -> None:
        raise RuntimeError("store gone")

    replica.ownership.revoked = broken  # type: ignore[method-assign]
    epoch = replica.positions.seek_epoch
    await replica.on_partitions_revoked({TopicPartition("t", 0)})
    assert replica.positions.rebalancing is True and replica.positions.seek_epoch == epoch + 1
    worker.store.close()


async def test_a_transactional_producers_log_is_caught_up_and_aborted_records_never_applied(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """A transactional producer ends each transaction with a control record (a commit or
    abort marker) that the consumer steps over without returning it: the store's next offset
    must still reach the end offset (caught up, committed, lag 0), and an aborted
    transaction's records must never reach the replica."""
    from aiokafka import AIOKafkaProducer

    from stream_replica.contract import Entry, encode_key, encode_value

    topic = await make_topic(partitions=1)

    def record(grain_key: str, sequence: int, payload: bytes) -> dict[str, Any]:
        entry = Entry("t", grain_key, sequence, 1, "eu", EntryType.FULL_STATE, payload)
        return {"key": encode_key("t", grain_key), "value": encode_value(entry), "partition": 0}

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send(topic, **record(f"g{i}", 1, b"committed"))
        await producer.begin_transaction()
        await producer.send(topic, **record("g0", 2, b"aborted"))
        await producer.abort_transaction()
    finally:
        await producer.stop()
    ends = await admin.end_offsets(kafka_bootstrap, topic, 1)
    assert ends == {0: 6}  # 3 records, a commit marker, 1 aborted record, an abort marker
    group = unique("g")
    worker = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "db").start()
    try:
        await wait_until(lambda: worker.caught_up(ends), 60, 0.1, what="next offset 6")
        rows = worker.worker.partition_rows()
        assert rows[0].caught_up and rows[0].lag == 0
        state = worker.store.get(("t", "g0"))
        assert state is not None and (state.sequence, state.payload) == (1, b"committed")

        async def committed() -> bool:
            return await admin.committed_offsets(kafka_bootstrap, group, topic) == ends

        await wait_until(committed, 30, 0.2, what="offset 6 committed")
    finally:
        await worker.stop()


async def test_a_transactional_producer_writing_all_the_time_leaves_the_worker_caught_up(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """Transactions back to back: every poll ends with records and the commit marker after
    them is stepped over, no poll comes back empty. The partition must still catch up (its
    next offset past the marker); it stayed one short for good, so reads of it were refused
    as "being rebuilt (1 records left)" for as long as the producer wrote."""
    from aiokafka import AIOKafkaProducer

    topic = await make_topic(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    writing = asyncio.Event()
    written = 0

    async def write_all_the_time() -> None:
        nonlocal written
        while True:
            async with producer.transaction():
                for i in range(5):
                    written += 1
                    await producer.send(topic, **_transactional_record(0, f"g{i}", written))
            writing.set()

    task = asyncio.create_task(write_all_the_time())
    worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db").start()
    try:
        await asyncio.wait_for(writing.wait(), 30)

        async def caught_up_while_writing() -> bool:
            assert not task.done(), task
            row = worker.worker.partition_rows().get(0)
            return row is not None and row.caught_up and written > 100

        await wait_until(caught_up_while_writing, 30, 0.05, what="caught up while writing")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await producer.stop()
        await worker.stop()


async def test_a_transaction_held_open_leaves_the_worker_caught_up_with_what_it_can_read(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """A transaction left open (a producer between its writes and its commit, up to its
    transaction.timeout.ms; a hung one) keeps every record from its start on, a plain
    producer's too, from a consumer reading committed records. Measured against the high
    watermark, a partition assigned meanwhile never "reached the end": reads of it were
    refused as "being rebuilt (4 records left)" for as long as the transaction was open (for
    good with two producers whose transactions overlap). Caught up is caught up with what
    can be read; what the transaction holds back is reported apart."""
    from aiokafka import AIOKafkaProducer

    topic = await make_topic(partitions=1)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(5):
            await publisher.publish_snapshot("t", f"g{i}", b"plain")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    worker = None
    try:
        await producer.begin_transaction()
        for i in range(3):  # offsets 5-7
            await (await producer.send(topic, **_transactional_record(0, f"g{i}", 2**60)))
        async with Publisher(kafka_bootstrap, topic) as publisher:  # offset 8: after its start
            await publisher.publish_snapshot("t", "g4", b"plain, after the transaction began")
        worker = InProcessWorker(kafka_bootstrap, topic, unique("g"), tmp_path / "db").start()

        def caught_up() -> bool:
            row = worker.worker.partition_rows().get(0)
            return row is not None and row.caught_up

        await wait_until(caught_up, 30, 0.1, what="caught up, the transaction open")
        row = worker.worker.partition_rows()[0]
        assert (row.end_offset, row.lag, row.rebuild_remaining, row.held_back) == (5, 0, 0, 4)
        assert worker.worker.lag.lags(worker.worker._consumer) == {0: 0}
        assert worker.store.checkpoints()[0].next_offset == 5
        state = worker.store.get(("t", "g0"))
        assert state is not None and state.payload == b"plain"  # nothing of the transaction

        await producer.commit_transaction()  # its marker: offset 9

        def all_read() -> bool:
            row = worker.worker.partition_rows()[0]
            return row.caught_up and row.end_offset == 10 and row.held_back == 0

        await wait_until(all_read, 30, 0.1, what="the committed transaction read")
        assert worker.store.checkpoints()[0].next_offset == 10
        state = worker.store.get(("t", "g4"))
        assert state is not None and state.payload == b"plain, after the transaction began"
        state = worker.store.get(("t", "g0"))
        assert state is not None and state.sequence == 2**60
    finally:
        await producer.stop()
        if worker is not None:
            await worker.stop()


async def test_a_quiet_partition_steps_over_its_marker_while_another_partition_is_busy(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path, unique: Any
) -> None:
    """A poll that ends exactly at a transaction's last record (max_records) leaves its
    commit marker for the next fetch, which steps over it and returns nothing of that
    partition. While another partition is written all the time, no poll comes back empty,
    so the quiet partition stayed one short of its end (reads refused as "being rebuilt (1
    records left)") for as long as the other was busy."""
    from aiokafka import AIOKafkaProducer

    topic = await make_topic(partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        async with producer.transaction():  # partition 0: offsets 0-9, the marker 10
            for i in range(10):
                await producer.send(topic, **_transactional_record(0, f"q{i}", 1))
    finally:
        await producer.stop()
    # Each poll waits up to 5 s: once the other partition is written, none comes back empty.
    worker = InProcessWorker(
        kafka_bootstrap,
        topic,
        unique("g"),
        tmp_path / "db",
        max_records=10,
        poll_timeout_ms=5_000,
    ).start()
    busy_writes = 0

    async def write_all_the_time() -> None:
        nonlocal busy_writes
        async with Publisher(kafka_bootstrap, topic) as publisher:
            while True:
                busy_writes += 1
                await publisher.publish_raw(
                    **_transactional_record(1, f"b{busy_writes % 20}", busy_writes)
                )
                await asyncio.sleep(0.005)

    busy = None
    try:
        await wait_until(lambda: worker.caught_up({0: 10}), 60, 0.005, what="partition 0 read")
        busy = asyncio.create_task(write_all_the_time())

        def past_the_marker() -> bool:
            assert not busy.done(), busy
            row = worker.worker.partition_rows().get(0)
            return row is not None and row.checkpoint == 11 and row.caught_up

        await wait_until(past_the_marker, 20, 0.1, what="partition 0 past its commit marker")
        assert busy_writes > 100  # the other partition was written all along
    finally:
        if busy is not None:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
        await worker.stop()


def _transactional_record(partition: int, grain_key: str, sequence: int) -> dict[str, Any]:
    from stream_replica.contract import Entry, encode_key, encode_value

    entry = Entry("t", grain_key, sequence, 1, "eu", EntryType.FULL_STATE, b"v")
    return {"key": encode_key("t", grain_key), "value": encode_value(entry), "partition": partition}


@pytest.mark.parametrize("tail", ["aborted", "open"])
async def test_a_focused_partition_ending_in_what_cannot_be_read_hands_on(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
    tail: str,
) -> None:
    """The focused partition's tail is an aborted transaction (the consumer steps over it
    and returns nothing) or a transaction still open (nothing past it is returned until it
    ends): the paused partition must be resumed all the same. It stayed paused for ever (or
    for the transaction's timeout): never read, never caught up."""
    from aiokafka import AIOKafkaProducer

    from stream_replica import catchup

    monkeypatch.setattr(catchup, "MIN_LAG", 20)
    topic = await make_topic(partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    worker = None
    try:
        async with producer.transaction():  # partition 0 first (the lower number): 30 records
            for i in range(30):
                await producer.send(topic, **_transactional_record(0, f"a{i}", 1))
        async with producer.transaction():  # partition 1: 40 records, far behind
            for i in range(40):
                await producer.send(topic, **_transactional_record(1, f"b{i}", 1))
        await producer.begin_transaction()  # then 50 on partition 0 never committed
        for i in range(50):
            await producer.send(topic, **_transactional_record(0, f"a{i}", 2))
        await producer.flush()
        if tail == "aborted":
            await producer.abort_transaction()
        ends = await admin.end_offsets(kafka_bootstrap, topic, 2)
        # Both far behind at the assignment (its lags count what read_committed can read).
        assert ends[0] > 80 and ends[1] > 20
        readable = {1: ends[1]}  # partition 1 whole; partition 0 up to what can be read
        worker = InProcessWorker(
            kafka_bootstrap, topic, unique("g"), tmp_path / "db", max_records=7,
            catch_up_partitions=1,
        ).start()  # fmt: skip
        await wait_until(lambda: worker.caught_up(readable), 30, 0.1, what="partition 1 read")
        state = worker.store.get(("t", "a0"))
        assert state is not None and state.sequence == 1  # never the uncommitted records
    finally:
        if worker is not None:
            await worker.stop()
        if tail == "open":
            await producer.abort_transaction()
        await producer.stop()


async def test_lost_partitions_are_dropped_without_an_instance_id(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    tmp_path: Path,
    unique: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that lost a partition to another drops its grains after
    --lost-partition-grace-ms. Dynamic members (no --instance-id) never did: the drop waited
    for the duplicate-instance check's first join, which only static members record."""
    from stream_replica import worker as worker_module

    monkeypatch.setattr(worker_module, "PROGRESS_INTERVAL_S", 0.2)
    topic = await make_topic(partitions=2)
    async with Publisher(kafka_bootstrap, topic) as publisher:
        for i in range(200):
            await publisher.publish_snapshot("t", f"k{i}", b"v")
    ends = await admin.end_offsets(kafka_bootstrap, topic, 2)
    group = unique("g")
    options: dict[str, Any] = {"standby_replicas": 0, "lost_partition_grace_ms": 500}
    first = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "a", **options).start()
    second = None
    try:
        await wait_until(lambda: first.caught_up(ends), 30, 0.1, what="the first worker")
        second = InProcessWorker(kafka_bootstrap, topic, group, tmp_path / "b", **options).start()

        def one_each() -> bool:
            kept = set(first.store.checkpoints())
            return len(kept) == 1 and kept.isdisjoint(second.store.checkpoints())

        await wait_until(one_each, 60, 0.1, what="the lost partition dropped")
        (lost,) = set(second.store.checkpoints())
        assert all(state.partition != lost for _, state in first.store.grains())
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


def test_the_group_waits_for_the_longest_revocation() -> None:
    """The rebalance timeout covers what a revocation may wait for: the in-flight poll's
    dead-letter sends (or a repair sweep's) and two commits."""
    from stream_replica.repair import LONGEST_WAIT_S
    from stream_replica.worker import COMMIT_TIMEOUT_S, DLQ_TIMEOUT_S, REBALANCE_TIMEOUT_MS

    longest_s = DLQ_TIMEOUT_S + LONGEST_WAIT_S + 2 * COMMIT_TIMEOUT_S + 1
    assert longest_s + 10 < REBALANCE_TIMEOUT_MS / 1000  # and room for the flush and the write
