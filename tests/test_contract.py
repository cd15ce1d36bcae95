"""The wire contract: round trips, every invalid class with its reason, and the fast decoder
agreeing exactly with the pydantic reference model."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_replica.contract import (
    ContractError,
    Entry,
    EntryType,
    Tombstone,
    decode,
    decode_value,
    encode_key,
    encode_value,
    parse_key,
    validate_with_model,
)

KEY = b"account/a-1"
GOOD: dict[str, Any] = {
    "grain_type": "account",
    "grain_key": "a-1",
    "sequence": 3,
    "timestamp_millis": 1_700_000_000_000,
    "source_cluster": "eu-1",
    "entry_type": "FullState",
    "payload": b"\x00\x01state",
}


def pack(**changes: Any) -> bytes:
    fields = {**GOOD, **changes}
    return msgpack.packb({k: v for k, v in fields.items() if v is not DROP})


DROP = object()


def test_round_trip_canonical() -> None:
    entry = Entry("account", "a/b/c", 2**64 - 1, -(2**63), "eu", EntryType.DELTA, b"\xff" * 3)
    key = encode_key(entry.grain_type, entry.grain_key)
    assert key == b"account/a/b/c"
    assert decode(key, encode_value(entry)) == entry
    assert validate_with_model(key, encode_value(entry)) == entry


def test_grain_key_splits_at_first_slash() -> None:
    assert parse_key(b"cart/x/y/") == ("cart", "x/y/")


def test_tombstone() -> None:
    assert decode(KEY, None) == Tombstone("account", "a-1")


def test_rmp_serde_alternatives_accepted() -> None:
    # rmp-serde without serde_bytes: payload as an array of ints, entry_type as variant index.
    entry = decode(KEY, pack(entry_type=1, payload=[0, 1, 255]))
    assert entry.entry_type is EntryType.DELTA
    assert entry.payload == b"\x00\x01\xff"
    assert decode(KEY, pack(entry_type=0)).entry_type is EntryType.FULL_STATE


POSITIONAL = list(GOOD.values())  # GOOD is in the Rust struct's field order


def positional(**changes: Any) -> bytes:
    fields = {**GOOD, **changes}
    return msgpack.packb(list(fields.values()), use_bin_type=True)


def test_positional_form_decodes_like_the_named_form() -> None:
    # What rmp_serde::to_vec writes: the fields as an array in the struct's order.
    assert list(GOOD) == [
        "grain_type",
        "grain_key",
        "sequence",
        "timestamp_millis",
        "source_cluster",
        "entry_type",
        "payload",
    ]
    expected = decode(KEY, pack())
    for value in (positional(), msgpack.packb([*POSITIONAL, None, {"later": 1}])):
        assert decode(KEY, value) == expected
        assert validate_with_model(KEY, value) == expected


def test_positional_alternatives_accepted() -> None:
    entry = decode(KEY, positional(entry_type=1, payload=[0, 1, 255]))
    assert entry.entry_type is EntryType.DELTA
    assert entry.payload == b"\x00\x01\xff"
    assert validate_with_model(KEY, positional(entry_type=1, payload=[0, 1, 255])) == entry


@pytest.mark.parametrize("length", range(7))
def test_short_positional_form_names_the_first_missing_field(length: int) -> None:
    value = msgpack.packb(POSITIONAL[:length], use_bin_type=True)
    missing = list(GOOD)[length]
    with pytest.raises(ContractError) as fast:
        decode(KEY, value)
    assert fast.value.reason == (
        f"{missing}: Field required (the positional form has {length} of the 7 fields)"
    )
    assert fast.value.grain == ("account", "a-1")
    with pytest.raises(ContractError) as model:
        validate_with_model(KEY, value)
    assert model.value.reason.startswith(f"{missing}: Field required")


def test_positional_form_follows_the_field_rules() -> None:
    with pytest.raises(ContractError, match="sequence: 0 is outside"):
        decode(KEY, positional(sequence=0))
    with pytest.raises(ContractError, match="key/value mismatch"):
        decode(KEY, positional(grain_key="a-2"))
    with pytest.raises(ContractError, match="entry_type: True is not"):
        decode(KEY, positional(entry_type=True))


def test_unknown_fields_ignored() -> None:
    assert decode(KEY, pack(new_field={"x": 1})).sequence == 3


INVALID_CASES = [
    ("not msgpack", KEY, b"\xc1", "value: not valid msgpack"),
    ("truncated", KEY, pack()[:-3], "value: not valid msgpack"),
    ("trailing bytes", KEY, pack() + b"\x01", "value: not valid msgpack"),
    ("not a map", KEY, msgpack.packb("x"), "expected a msgpack map or array, got a string"),
    ("short array", KEY, msgpack.packb([1, 2]), "sequence: Field required (the positional"),
    ("non-string map key", KEY, msgpack.packb({**GOOD, 1: 2}), "map key 1 is an integer"),
    ("missing sequence", KEY, pack(sequence=DROP), "sequence: Field required"),
    ("missing payload", KEY, pack(payload=DROP), "payload: Field required"),
    ("sequence as string", KEY, pack(sequence="3"), "sequence: expected an integer"),
    ("sequence bool", KEY, pack(sequence=True), "sequence: expected an integer, got a boolean"),
    ("sequence zero", KEY, pack(sequence=0), "sequence: 0 is outside"),
    ("sequence negative", KEY, pack(sequence=-5), "sequence: -5 is outside"),
    ("timestamp float", KEY, pack(timestamp_millis=1.5), "timestamp_millis: expected an integer"),
    (
        "timestamp too big",
        KEY,
        pack(timestamp_millis=2**63),
        "timestamp_millis: 9223372036854775808",
    ),
    ("empty source", KEY, pack(source_cluster=""), "source_cluster: is empty"),
    ("entry type name", KEY, pack(entry_type="Snapshot"), "entry_type: 'Snapshot' is not"),
    ("entry type int 2", KEY, pack(entry_type=2), "entry_type: 2 is not"),
    ("payload string", KEY, pack(payload="text"), "payload: expected bin"),
    ("payload big ints", KEY, pack(payload=[1, 256]), "payload: expected bin"),
    ("grain_key mismatch", KEY, pack(grain_key="a-2"), "key/value mismatch"),
    ("grain_type mismatch", KEY, pack(grain_type="cart"), "key/value mismatch"),
    ("null key", None, pack(), "key: missing"),
    ("key without slash", b"account", pack(), "has no '/'"),
    ("key empty type", b"/a-1", pack(), "empty grain_type"),
    ("key empty grain_key", b"account/", pack(), "empty grain_key"),
    ("key bad utf-8", b"acc\xffount/a-1", pack(), "key: not valid UTF-8"),
    ("value bad utf-8 str", KEY, pack()[:-1] + b"", "value: not valid msgpack"),
]


@pytest.mark.parametrize(
    ("case", "key", "value", "reason"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_records_are_rejected_with_reason(
    case: str, key: bytes | None, value: bytes, reason: str
) -> None:
    with pytest.raises(ContractError) as fast:
        decode(key, value)
    assert reason in fast.value.reason, (case, fast.value.reason)
    with pytest.raises(ContractError):
        validate_with_model(key, value)


def test_invalid_utf8_inside_value_string() -> None:
    raw = msgpack.packb({**GOOD, "source_cluster": "X"}).replace(b"\xa1X", b"\xa1\xff")
    with pytest.raises(ContractError, match="not valid msgpack"):
        decode(KEY, raw)


def test_reason_carries_grain_when_key_is_valid() -> None:
    with pytest.raises(ContractError) as err:
        decode(KEY, pack(sequence=0))
    assert err.value.grain == ("account", "a-1")


def test_encode_key_refuses_bad_grain() -> None:
    with pytest.raises(ContractError):
        encode_key("a/b", "k")
    with pytest.raises(ContractError):
        encode_key("a", "")


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=40)))
def test_random_bytes_raise_only_contract_error(value: bytes, key: bytes | None) -> None:
    with contextlib.suppress(ContractError):
        decode(key, value)


# Values of every shape a field could take, to compare the two validators.
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["FullState", "Delta", "", "account", "a-1", "fullstate"]),
    st.sampled_from([0, 1, 2, -1, 2**63, 2**64 - 1]),
    st.binary(max_size=8),
    st.lists(st.integers(min_value=-2, max_value=300), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
)


@settings(max_examples=4000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(list(GOOD)),
        field_values,
        max_size=len(GOOD),
    ),
    st.sets(st.sampled_from(list(GOOD)), max_size=2),
)
def test_fast_decoder_matches_pydantic_model(overrides: dict[str, Any], dropped: set[str]) -> None:
    fields = {**GOOD, **overrides}
    for name in dropped:
        fields.pop(name, None)
    value = msgpack.packb(fields, use_bin_type=True)
    outcomes = []
    for decoder in (decode_value, validate_with_model):
        try:
            outcomes.append(decoder(KEY, value))
        except ContractError:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1], (fields, outcomes)


@settings(max_examples=4000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(POSITIONAL), field_values), max_size=9),
    st.dictionaries(st.integers(0, 6), field_values, max_size=3),
)
def test_fast_decoder_matches_pydantic_model_positional(
    items: list[Any], overrides: dict[int, Any]
) -> None:
    # Mostly-valid arrays (the good fields with a few replaced) and arbitrary ones, of every
    # length from empty to two trailing elements.
    for candidate in (POSITIONAL + items[7:], items):
        fields = list(candidate)
        for index, replacement in overrides.items():
            if index < len(fields):
                fields[index] = replacement
        value = msgpack.packb(fields, use_bin_type=True)
        outcomes = []
        for decoder in (decode_value, validate_with_model):
            try:
                outcomes.append(decoder(KEY, value))
            except ContractError:
                outcomes.append(None)
        assert outcomes[0] == outcomes[1], (fields, outcomes)


@pytest.mark.parametrize(
    ("value", "meaning"),
    [
        (b"\xc1", "FormatError: malformed: a byte that starts no msgpack type, or bad framing"),
        (b"\x91" * 2000, "StackError: nested too deeply"),
    ],
    ids=["format-error", "stack-error"],
)
def test_a_msgpack_error_without_a_message_still_says_what_is_wrong(
    value: bytes, meaning: str
) -> None:
    """msgpack raises FormatError and StackError with an empty message: the reason (logs and
    the dead-letter header) said "(FormatError: )"."""
    for validator in (decode, validate_with_model):
        with pytest.raises(ContractError) as err:
            validator(KEY, value)
        assert err.value.reason == f"value: not valid msgpack ({meaning})", validator
