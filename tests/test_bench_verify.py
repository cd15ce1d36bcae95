"""The bench's "identical results" check (benchmarks/verify.py): the expected state is the fold
of the log, and a contender's state must equal it grain by grain. Pure: no broker, no Java."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from benchmarks import verify
from benchmarks.verify import GrainDigest
from stream_replica.contract import ContractError, Entry, EntryType, Tombstone
from stream_replica.fold import Polled


def full(grain: str, sequence: int, payload: bytes) -> Entry:
    grain_type, grain_key = grain.split("/")
    return Entry(grain_type, grain_key, sequence, 1000 + sequence, "primary",
                 EntryType.FULL_STATE, payload)  # fmt: skip


def delta(grain: str, sequence: int) -> Entry:
    grain_type, grain_key = grain.split("/")
    return Entry(grain_type, grain_key, sequence, 1, "primary", EntryType.DELTA, b"d")


def polled(partition: int, bodies: list[Entry | Tombstone | ContractError]) -> list[Polled]:
    return [Polled(partition, offset, None, None, body) for offset, body in enumerate(bodies)]


def want(sequence: int, payload: bytes) -> GrainDigest:
    return GrainDigest(sequence, 1000 + sequence, "primary", hashlib.sha256(payload).hexdigest())


LOG = {
    0: polled(
        0,
        [
            full("a/1", 1, b"one"),
            full("a/1", 3, b"three"),
            full("a/1", 2, b"stale"),  # lower sequence: ignored
            delta("a/1", 4),  # refused
            full("a/2", 5, b"first"),
            full("a/2", 5, b"again"),  # equal sequence: the later record wins
            ContractError("value: not valid msgpack", ("a", "2")),
            full("a/3", 9, b"gone"),
            Tombstone("a", "3"),  # deleted
            Tombstone("a", "4"),
            full("a/4", 1, b"reborn"),  # after a tombstone any sequence starts afresh
        ],
    ),
    1: polled(1, [full("b/1", 2, b"b"), Tombstone("b", "1"), full("b/2", 7, b"seven")]),
}
EXPECTED = {
    "a/1": want(3, b"three"),
    "a/2": want(5, b"again"),
    "a/4": want(1, b"reborn"),
    "b/2": want(7, b"seven"),
}


def test_expected_is_the_fold_of_each_partition() -> None:
    assert verify.expected_from_partitions(LOG) == EXPECTED


def test_folding_in_chunks_gives_the_same_state(monkeypatch: pytest.MonkeyPatch) -> None:
    for chunk in (1, 2, 3):
        monkeypatch.setattr(verify, "FOLD_CHUNK", chunk)
        assert verify.expected_from_partitions(LOG) == EXPECTED


def test_identical_state_verifies() -> None:
    outcome = verify.compare(EXPECTED, list(EXPECTED.items()))
    assert outcome.ok
    assert outcome.summary() == "verified: 4 grains, 0 mismatches"


def test_every_kind_of_difference_is_a_mismatch() -> None:
    actual = [
        ("a/1", want(3, b"three")),
        ("a/2", want(5, b"first")),  # the earlier record of an equal sequence: differs
        ("a/3", want(9, b"gone")),  # deleted by a tombstone: extra
        ("b/2", want(7, b"seven")),
        ("b/2", want(7, b"seven")),  # twice
    ]  # and a/4 is missing
    outcome = verify.compare(EXPECTED, actual, limit=10)
    assert not outcome.ok
    assert outcome.mismatches == 4
    text = outcome.summary()
    assert text.startswith("NOT verified: 4 grains, 4 mismatches")
    for part in ("a/2: has sequence 5", "a/3: extra", "b/2: appears twice", "a/4: missing"):
        assert part in text


def test_a_different_timestamp_or_source_is_a_mismatch() -> None:
    base = EXPECTED["b/2"]
    for changed in (
        GrainDigest(base.sequence, base.timestamp_millis + 1, base.source_cluster,
                    base.payload_sha256),
        GrainDigest(base.sequence, base.timestamp_millis, "other", base.payload_sha256),
    ):  # fmt: skip
        assert verify.compare({"b/2": base}, [("b/2", changed)]).mismatches == 1


def test_examples_are_limited() -> None:
    outcome = verify.compare(EXPECTED, [], limit=2)
    assert outcome.mismatches == 4
    assert len(outcome.examples) == 2


def test_dump_file_round_trip(tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    digest = want(7, b"seven")
    dump.write_text(
        '{"grain": "b/2", "sequence": 7, "timestamp_millis": 1007, "source_cluster": '
        f'"primary", "payload_sha256": "{digest.payload_sha256}"}}\n\n'
    )
    assert verify.dump_file(dump) == [("b/2", digest)]
    dump.write_text('{"grain": "b/2"}\n')
    with pytest.raises(ValueError, match=r"dump.jsonl:1: not a grain line"):
        verify.dump_file(dump)
