"""Publisher and topic admin against the real broker."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer

from stream_replica import admin
from stream_replica.contract import EntryType, Tombstone, decode
from stream_replica.publisher import Publisher, PublishError
from tests.helpers import TopicFactory, cli


async def read_all(bootstrap: str, topic: str, expected: int) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records = []
    try:
        while len(records) < expected:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(records)} of {expected} records arrived"
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def test_publish_round_trip_and_grain_partitioning(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = await make_topic(partitions=6)
    returned: dict[str, list[int]] = defaultdict(list)
    async with Publisher(kafka_bootstrap, topic, source_cluster="eu-1") as publisher:
        for i in range(40):
            for _ in range(3):
                # the sequence it chose: what a read-your-writes read waits for (min_sequence)
                sequence = await publisher.publish_snapshot(
                    "account", f"a/{i}", f"state-{i}".encode()
                )
                returned[f"a/{i}"].append(sequence)
        with pytest.raises(PublishError, match=r"grain account/a/0: Delta entries are not"):
            await publisher.publish_snapshot("account", "a/0", b"d", entry_type=EntryType.DELTA)
        assert await publisher.publish_snapshot("account", "a/0", b"v9", sequence=2**62) == 2**62
        returned["a/0"].append(2**62)
        with pytest.raises(PublishError, match=r"sequence 5 is below 4611686018427387904"):
            await publisher.publish_snapshot("account", "a/0", b"old", sequence=5)
        await publisher.publish_tombstone("account", "a/1")

    records = await read_all(kafka_bootstrap, topic, 122)
    partitions_by_grain: dict[bytes, set[int]] = defaultdict(set)
    sequences: dict[str, list[int]] = defaultdict(list)
    tombstones = []
    for record in records:
        partitions_by_grain[record.key].add(record.partition)
        body = decode(record.key, record.value)
        if isinstance(body, Tombstone):
            tombstones.append(body.grain)
            assert record.value is None
            continue
        assert record.key == f"{body.grain_type}/{body.grain_key}".encode()
        assert body.source_cluster == "eu-1"
        if body.entry_type is EntryType.FULL_STATE:
            sequences[body.grain_key].append(body.sequence)
    assert tombstones == [("account", "a/1")]
    assert all(len(p) == 1 for p in partitions_by_grain.values()), "a grain spans partitions"
    assert len({p for ps in partitions_by_grain.values() for p in ps}) > 1
    for seqs in sequences.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "auto sequence not increasing"
    assert sequences == returned


async def test_topic_created_compacted(kafka_bootstrap: str, unique: object) -> None:
    name = f"compacted-{id(unique)}"
    result = cli(
        "topic",
        "create",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        name,
        "--partitions",
        "3",
    )
    assert result.returncode == 0, result.stderr
    info = await admin.describe_topic(kafka_bootstrap, name)
    assert info is not None
    assert info.partitions == 3
    assert info.replication_factor == 1  # one broker: one copy (3 on a cluster)
    assert info.configs["cleanup.policy"] == "compact"
    assert int(info.configs["segment.ms"]) < 7 * 24 * 3600 * 1000
    assert "delete.retention.ms" in info.configs
    described = cli(
        "topic",
        "describe",
        env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAM_REPLICA_TOPIC": name},
    )
    assert described.returncode == 0, described.stderr
    description = json.loads(described.stdout)
    assert description["compacted"] is True
    # where each partition lives: one broker, leader and in sync
    leader = description["replicas"][0]["leader"]
    assert description["replicas"] == [
        {"partition": p, "leader": leader, "replicas": [leader], "isr": [leader]}
        for p in range(description["partitions"])
    ]
    assert description["leaderless"] == description["below_min_insync"] == []
    assert "WARNING" not in described.stderr
    again = cli("topic", "create", "--bootstrap-servers", kafka_bootstrap, "--topic", name)
    assert again.returncode == 0 and json.loads(again.stdout)["created"] is False
    await admin.delete_topic(kafka_bootstrap, name)


async def test_describe_reports_non_compacted(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = await make_topic(compacted=False)
    result = cli("topic", "describe", "--bootstrap-servers", kafka_bootstrap, "--topic", topic)
    assert result.returncode == 3
    assert "NOT compacted" in result.stderr
    assert json.loads(result.stdout)["compacted"] is False


async def test_cli_publish_json_lines(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    topic = await make_topic(partitions=2)
    lines = "\n".join(
        [
            json.dumps(
                {
                    "grain_type": "cart",
                    "grain_key": "c1",
                    "payload": base64.b64encode(b"hello").decode(),
                    "sequence": 7,
                }
            ),
            json.dumps({"grain_type": "cart", "grain_key": "c1", "delete": True}),
            "not json",
            json.dumps({"grain_type": "cart", "grain_key": "c2", "payload": "!!", "sequence": 1}),
            json.dumps(
                {"grain_type": "cart", "grain_key": "c3", "payload": "", "entry_type": "Delta"}
            ),
        ]
    )
    result = cli("publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, input=lines)
    assert result.returncode == 1  # three bad lines reported, the rest published
    assert "stdin line 3" in result.stderr and "stdin line 4" in result.stderr
    assert "stdin line 5: grain cart/c3: Delta entries are not published" in result.stderr
    assert json.loads(result.stdout)["published"] == 2
    records = await read_all(kafka_bootstrap, topic, 2)
    bodies = sorted((decode(r.key, r.value) for r in records), key=lambda b: b.grain_key)
    first = bodies[0]
    assert not isinstance(first, Tombstone) or first.grain_key == "c1"
    assert any(isinstance(b, Tombstone) for b in bodies)
    assert not any(getattr(b, "entry_type", None) is EntryType.DELTA for b in bodies)
    assert any(getattr(b, "sequence", None) == 7 and b.payload == b"hello" for b in bodies)  # type: ignore[union-attr]


def _snapshot_line(grain_key: str) -> str:
    payload = base64.b64encode(b"state").decode()
    return json.dumps({"grain_type": "cart", "grain_key": grain_key, "payload": payload})


async def test_cli_publish_stops_at_a_line_longer_than_the_cap(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """A line was read whole however long: ``publish < /dev/zero`` grew to 22 GB and was
    killed. What came before the long line is published, the summary printed, then one line
    (exit 2); nothing after it is read."""
    from stream_replica.publish_lines import publish_line_cap

    topic = await make_topic()
    cap = publish_line_cap(1_048_576)  # aiokafka's default max_request_size
    assert cap == 1_463_640
    lines = [_snapshot_line("c1"), "x" * (cap + 1), _snapshot_line("c3")]
    result = cli(
        "publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, input="\n".join(lines)
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"stream-replica: stdin line 2 is longer than {cap} characters, the most a line can be "
        "(a payload of the producer's max_request_size, 1048576 bytes, in base64, plus 64 KiB "
        "for the other fields; --kafka-option max_request_size=N raises it); stopped reading there"
    ]
    assert json.loads(result.stdout) == {"topic": topic, "published": 1, "rejected_lines": 1}
    (record,) = await read_all(kafka_bootstrap, topic, 1)
    assert decode(record.key, record.value).grain_key == "c1"


async def test_cli_publish_line_cap_follows_max_request_size(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """A line of exactly the cap is read; the cap follows --kafka-option max_request_size
    (base64: in steps of 3 bytes)."""
    from stream_replica.publish_lines import publish_line_cap

    topic = await make_topic()
    cap = publish_line_cap(3_000_000)
    line = _snapshot_line("c1")
    line = line[:-1] + " " * (cap - len(line)) + "}"  # JSON allows the spaces
    assert len(line) == cap
    base = ("publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic)
    result = cli(*base, "--kafka-option", "max_request_size=3000000", input=line)
    assert result.returncode == 0, result.stderr
    result = cli(*base, "--kafka-option", "max_request_size=2999997", input=line + "\n")
    assert result.returncode == 2 and "stdin line 1 is longer than" in result.stderr


async def test_cli_publish_reads_dev_zero_in_bounded_memory(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """The operator's report: ``publish < /dev/zero``, here under a 1 GiB address-space
    limit (it reached a MemoryError, exit 1, before the cap)."""
    import resource

    topic = await make_topic()

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    zero = os.open("/dev/zero", os.O_RDONLY)
    try:
        result = cli(
            "publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
            stdin=zero, preexec_fn=limit_memory, timeout=60,
        )  # fmt: skip
    finally:
        os.close(zero)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("stream-replica: stdin line 1 is longer than 1463640 ")
    assert json.loads(result.stdout)["published"] == 0


async def test_cli_publish_a_record_too_large_to_send_is_a_rejected_line(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """A payload under the line cap can still make a record over the producer's
    max_request_size: that ended the command with aiokafka's bare MessageSizeTooLargeError,
    naming no line, printing no summary (the lines before it were published all the same)."""
    topic = await make_topic()
    big = json.dumps(
        {
            "grain_type": "cart",
            "grain_key": "big",
            "payload": base64.b64encode(b"x" * 20_000).decode(),
        }
    )
    lines = [_snapshot_line("c1"), big, _snapshot_line("c3")]
    result = cli(
        "publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
        "--kafka-option", "max_request_size=10000", input="\n".join(lines),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(
        r"stream-replica: stdin line 2: grain cart/big: the record \(\d+ bytes serialized\) is "
        r"larger than the producer's max_request_size; --kafka-option max_request_size=N "
        r"raises it, up to the topic's max.message.bytes",
        line,
    ), line
    assert json.loads(result.stdout) == {"topic": topic, "published": 2, "rejected_lines": 1}
    records = await read_all(kafka_bootstrap, topic, 2)
    assert sorted(decode(r.key, r.value).grain_key for r in records) == ["c1", "c3"]


async def test_cli_publish_a_record_the_broker_refuses_is_named_and_counted(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """A record over the topic's max.message.bytes (the producer's max_request_size raised
    past it) fails at the broker, after its line was sent: the command ended with
    ``MessageSizeTooLargeError: [Error 10] MessageSizeTooLargeError`` and no summary."""
    topic = unique("small-records")
    configs = admin.replication_topic_configs(1) | {"max.message.bytes": "4000"}
    await admin.create_topic(kafka_bootstrap, topic, 1, 1, configs)
    big = json.dumps(
        {
            "grain_type": "cart",
            "grain_key": "big",
            "payload": base64.b64encode(b"x" * 8_000).decode(),
        }
    )
    lines = ["", big]  # alone: the broker refuses a whole batch, records beside it too
    result = cli(
        "publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, input="\n".join(lines)
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "stream-replica: stdin line 2: not published: the broker refused the record as too "
        "large (MessageSizeTooLargeError): over the topic's max.message.bytes, which "
        "`stream-replica topic describe` shows"
    ]
    assert json.loads(result.stdout) == {"topic": topic, "published": 0, "rejected_lines": 1}
    async with admin.admin_client(kafka_bootstrap) as client:
        await client.delete_topics([topic])


async def test_cli_publish_sends_lines_as_they_come_and_stops_at_one_ctrl_c(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """A read blocked on stdin held the event loop: the producer sent nothing until more lines
    or the end of the input came, and a SIGINT, which only cancels the command's task
    (asyncio.Runner's handler), went unnoticed as long."""
    import signal
    import subprocess
    import sys

    topic = await make_topic()
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_replica", "publish",
         "--bootstrap-servers", kafka_bootstrap, "--topic", topic],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdin is not None
        process.stdin.write(_snapshot_line("c1") + "\n")
        process.stdin.flush()
        await read_all(kafka_bootstrap, topic, 1)  # published before the input ends
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130, process.stderr.read() if process.stderr else ""
    finally:
        process.kill()
        process.communicate()


class _NoPublisher:
    async def publish_tombstone(self, grain_type: str, grain_key: str) -> None:
        raise AssertionError("nothing should be published")

    async def send_snapshot(self, *args: object) -> None:
        raise AssertionError("nothing should be published")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "not json",
            "not JSON (Expecting value: line 1 column 1 (char 0)): expected one JSON object "
            "per line",
        ),
        ("[1]", "expected a JSON object, got an array [1]"),
        ('{"grain_key": "k", "payload": ""}', "field 'grain_type' is missing: expected a string"),
        (
            '{"grain_type": "t", "grain_key": 3}',
            "field 'grain_key': expected a string, got a number 3",
        ),
        (
            '{"grain_type": "t", "grain_key": "k"}',
            "field 'payload' is missing: expected the state as a base64 string "
            '(or "delete": true for a tombstone)',
        ),
        (
            '{"grain_type": "t", "grain_key": "k", "payload": null}',
            "field 'payload': expected a base64 string, got null",
        ),
        (
            '{"grain_type": "t", "grain_key": "k", "payload": "!!"}',
            "field 'payload': expected standard base64 (A-Z a-z 0-9 + /, '=' padding), got "
            "'!!' (Only base64 data is allowed)",
        ),
        (
            '{"grain_type": "t", "grain_key": "k", "payload": "", "sequence": "3"}',
            "field 'sequence': expected an integer in 1..2**64-1, got '3'",
        ),
        (
            '{"grain_type": "t", "grain_key": "k", "payload": "", "entry_type": "Snap"}',
            "field 'entry_type': expected 'FullState' or 'Delta', got 'Snap'",
        ),
    ],
)
async def test_a_bad_stdin_line_names_the_field_and_what_was_expected(
    line: str, message: str
) -> None:
    from stream_replica.publish_lines import _publish_line

    with pytest.raises(ValueError) as err:
        await _publish_line(_NoPublisher(), line)
    assert str(err.value) == message


def test_a_stdin_line_that_is_not_utf8_is_refused_saying_so() -> None:
    """stdin is read as bytes: a line that is not UTF-8 is a rejected line (it was decoded
    with surrogate escapes, then refused as "'utf-8' codec can't encode character '\\udcff'")."""
    from stream_replica.publish_lines import _utf8

    assert _utf8('{"grain_key": "é"}'.encode()) == '{"grain_key": "é"}'
    with pytest.raises(ValueError, match=r"^not UTF-8 \(invalid start byte at byte 15\)$"):
        _utf8(b'{"grain_key": "\xff"}')


def test_publish_to_a_missing_topic_is_one_line_at_once(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """The producer waited 40 s for the topic, logging "not found" ~400 times, then raised
    UnknownTopicOrPartitionError."""
    topic = unique("missing")
    started = time.monotonic()
    result = cli("publish", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--demo", "5")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"stream-replica: topic {topic!r} does not exist on {kafka_bootstrap}; create it with "
        f"`stream-replica topic create --topic {topic} [--partitions N]` "
        "(same connection settings)"
    ]
    assert result.stdout == ""
    assert time.monotonic() - started < 20


async def test_topic_partitions_never_creates_the_topic(
    kafka_bootstrap: str, make_topic: TopicFactory, unique: Callable[[str], str]
) -> None:
    assert await admin.topic_partitions(kafka_bootstrap, await make_topic(partitions=3)) == 3
    missing = unique("missing")
    assert await admin.topic_partitions(kafka_bootstrap, missing) is None
    assert await admin.describe_topic(kafka_bootstrap, missing) is None


async def test_topic_create_on_an_existing_topic_that_differs_says_so(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """It exited 0 with only "already existed; left as it is"."""
    topic = await make_topic(partitions=3)
    base = ("topic", "create", "--bootstrap-servers", kafka_bootstrap, "--topic", topic)
    same = cli(*base, "--partitions", "3")
    assert same.returncode == 0, same.stderr
    assert "already existed (3 partitions, cleanup.policy=compact); left as it is" in same.stderr
    unasked = cli(*base)  # the default partition count is no request
    assert unasked.returncode == 0, unasked.stderr
    differs = cli(*base, "--partitions", "6", "--replication-factor", "1")
    assert differs.returncode == 3
    assert differs.stderr.strip().splitlines()[-1] == (
        f"stream-replica: topic {topic!r} already exists with 3 partitions (asked 6); "
        "left unchanged (topic create never alters an existing topic)"
    )
    assert json.loads(differs.stdout)["partitions"] == 3
    info = await admin.describe_topic(kafka_bootstrap, topic)
    assert info is not None and info.partitions == 3

    plain = await make_topic(partitions=2, compacted=False)
    policy = cli("topic", "create", "--bootstrap-servers", kafka_bootstrap, "--topic", plain)
    assert policy.returncode == 3
    assert "already exists with cleanup.policy=delete (asked compact); left unchanged" in (
        policy.stderr
    )


async def test_topic_create_makes_a_dead_letter_topic(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """topic create always made a compacted topic; a dead-letter topic must not be one."""
    name = unique("dlq")
    base = ("topic", "create", "--bootstrap-servers", kafka_bootstrap, "--topic", name)
    try:
        created = cli(*base, "--cleanup-policy", "delete", "--partitions", "1")
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["created"] is True
        info = await admin.describe_topic(kafka_bootstrap, name)
        assert info is not None and not info.compacted and info.partitions == 1
        assert info.configs["cleanup.policy"] == "delete"
        again = cli(*base, "--cleanup-policy", "delete")
        assert again.returncode == 0, again.stderr
        as_replicated = cli(*base)
        assert as_replicated.returncode == 3
        assert "cleanup.policy=delete (asked compact)" in as_replicated.stderr
        env = {"STREAM_REPLICA_CLEANUP_POLICY": "delete"}  # like every setting
        assert cli(*base, env=env).returncode == 0
    finally:
        await admin.delete_topic(kafka_bootstrap, name)
