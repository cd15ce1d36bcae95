"""Write the hand-made golden vectors of the wire contract (1.1): ``valid/`` and ``invalid/``
beside this file, or under the directory given as the only argument. (The vectors made by the
real Rust crates are in ``rust/``, written by ``rust-gen/``.)

    .venv/bin/python schemas/vectors/generate.py [OUT_DIR]

Deterministic: the same contract gives the same bytes. Every case is run through the real
decoders (``stream_replica.contract.decode`` and ``validate_with_model``) while generating, and
the script stops with an error if a case does not behave as intended, so a vector never records
a behaviour by accident. ``tests/test_schemas.py`` re-runs this script and compares the files.

Each case is ``<name>.json`` (the description) plus ``<name>.msgpack`` (the record value,
absent for a tombstone). See ``schemas/README.md`` for the JSON fields.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from stream_replica.contract import (
    ContractError,
    Entry,
    EntryType,
    Tombstone,
    decode,
    encode_value,
    validate_with_model,
)

HERE = Path(__file__).resolve().parent
FIELDS = (
    "grain_type",
    "grain_key",
    "sequence",
    "timestamp_millis",
    "source_cluster",
    "entry_type",
    "payload",
)


class VectorError(Exception):
    """A case does not behave as intended."""


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    key: bytes | None
    value: bytes | None
    # valid: the fields the decoders must produce (None for a tombstone)
    expected: dict[str, Any] | None = None
    # invalid: a substring of the fast decoder's ContractError.reason
    reason_contains: str | None = None

    @property
    def valid(self) -> bool:
        return self.reason_contains is None


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------

PAYLOAD = b"\x00\x01\x7f\x80\xfe\xff state bytes"
BASE: dict[str, Any] = {
    "grain_type": "account",
    "grain_key": "acct-0001",
    "sequence": 7,
    "timestamp_millis": 1_700_000_000_123,
    "source_cluster": "eu-west-1",
    "entry_type": "FullState",
    "payload": PAYLOAD,
}
KEY = b"account/acct-0001"


def fields(**changes: Any) -> dict[str, Any]:
    out = dict(BASE)
    out.update(changes)
    return out


def positional(**changes: Any) -> list[Any]:
    """The positional form: the fields as an array in the Rust struct's order."""
    out = fields(**changes)
    return [out[name] for name in FIELDS]


def without(name: str) -> dict[str, Any]:
    out = dict(BASE)
    del out[name]
    return out


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def raw_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map from already-encoded keys and values (for encodings msgpack-python
    would never choose itself)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def expect(**changes: Any) -> dict[str, Any]:
    """Intended decoded fields (entry_type as its string, payload as bytes)."""
    out = fields(**changes)
    return {name: out[name] for name in FIELDS}


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------


def valid_cases() -> list[Case]:
    canonical = Entry(
        BASE["grain_type"],
        BASE["grain_key"],
        BASE["sequence"],
        BASE["timestamp_millis"],
        BASE["source_cluster"],
        EntryType.FULL_STATE,
        PAYLOAD,
    )
    array_payload = bytes(range(0, 256, 13))  # 20 bytes: array 16, fixints and uint 8
    nonminimal = raw_map(
        [
            (pack("grain_type"), pack(BASE["grain_type"])),
            (pack("grain_key"), pack(BASE["grain_key"])),
            (pack("sequence"), b"\xcf" + struct.pack(">Q", 1)),  # uint 64 holding 1
            (pack("timestamp_millis"), b"\xd3" + struct.pack(">q", 5)),  # int 64 holding 5
            (pack("source_cluster"), b"\xd9\x09" + b"eu-west-1"),  # str 8, not fixstr
            (pack("entry_type"), pack("FullState")),
            (pack("payload"), b"\xc6" + struct.pack(">I", 3) + b"abc"),  # bin 32
        ]
    )
    return [
        Case(
            "full_state_canonical",
            "The canonical encoding (stream_replica.contract.encode_value): a FullState with "
            "entry_type as a string and payload as bin. A replica applies it when its sequence "
            "is above the one it holds.",
            KEY,
            encode_value(canonical),
            expect(),
        ),
        Case(
            "delta",
            "A Delta entry: valid on the wire, but replicas (v1) never apply it; they refuse it "
            "and send it to the dead-letter topic with stream-replica.kind=delta.",
            KEY,
            pack(fields(entry_type="Delta", sequence=8)),
            expect(entry_type="Delta", sequence=8),
        ),
        Case(
            "entry_type_int_0",
            "entry_type as the integer 0 (variant index, as rmp-serde may write it): FullState.",
            KEY,
            pack(fields(entry_type=0)),
            expect(entry_type="FullState"),
        ),
        Case(
            "entry_type_int_1",
            "entry_type as the integer 1 (variant index, as rmp-serde may write it): Delta.",
            KEY,
            pack(fields(entry_type=1)),
            expect(entry_type="Delta"),
        ),
        Case(
            "payload_int_array",
            "payload as an array of integers 0..255, what rmp-serde writes for a Vec<u8> "
            "without serde_bytes (array 16; items as positive fixint or uint 8). Decodes to "
            "the same bytes as bin would.",
            KEY,
            pack(fields(payload=list(array_payload))),
            expect(payload=array_payload),
        ),
        Case(
            "payload_empty_int_array",
            "payload as an empty array (rmp-serde, empty Vec<u8>): empty bytes.",
            KEY,
            pack(fields(payload=[])),
            expect(payload=b""),
        ),
        Case(
            "rmp_serde_style",
            "Everything rmp-serde to_vec_named may emit for the Rust struct without "
            "serde_bytes: fields in declaration order, entry_type as index 0, payload as an "
            "array of ints.",
            KEY,
            pack(fields(entry_type=0, payload=list(b"rust"))),
            expect(payload=b"rust"),
        ),
        Case(
            "extra_unknown_fields",
            "Fields the contract does not name are ignored, whatever their type "
            "(an int, a nested map, nil).",
            KEY,
            pack({**BASE, "schema_version": 2, "trace": {"id": "abc", "hops": [1, 2]}, "x": None}),
            expect(),
        ),
        Case(
            "field_order_shuffled",
            "Map order carries no meaning: the same fields in reverse order.",
            KEY,
            pack(dict(reversed(list(BASE.items())))),
            expect(),
        ),
        Case(
            "nonminimal_int_and_str_encodings",
            "Any msgpack integer/string/bin family is accepted, not only the shortest: "
            "sequence 1 as uint 64, timestamp_millis 5 as int 64, source_cluster as str 8, "
            "payload as bin 32.",
            KEY,
            nonminimal,
            expect(sequence=1, timestamp_millis=5, payload=b"abc"),
        ),
        Case(
            "grain_key_with_slash",
            "grain_key may contain '/': the key is split at the first '/' only.",
            b"order/eu/2024/000042",
            pack(fields(grain_type="order", grain_key="eu/2024/000042")),
            expect(grain_type="order", grain_key="eu/2024/000042"),
        ),
        Case(
            "max_sequence",
            "The largest sequence, 2**64-1 (msgpack uint 64).",
            KEY,
            pack(fields(sequence=2**64 - 1)),
            expect(sequence=2**64 - 1),
        ),
        Case(
            "negative_timestamp",
            "A timestamp before the epoch (1969-12-31T00:00:00Z).",
            KEY,
            pack(fields(timestamp_millis=-86_400_000)),
            expect(timestamp_millis=-86_400_000),
        ),
        Case(
            "timestamp_min_int64",
            "The smallest timestamp_millis, -2**63 (msgpack int 64).",
            KEY,
            pack(fields(timestamp_millis=-(2**63))),
            expect(timestamp_millis=-(2**63)),
        ),
        Case(
            "timestamp_max_int64",
            "The largest timestamp_millis, 2**63-1.",
            KEY,
            pack(fields(timestamp_millis=2**63 - 1)),
            expect(timestamp_millis=2**63 - 1),
        ),
        Case(
            "empty_payload",
            "An empty payload (bin 8 of length 0) is a valid state.",
            KEY,
            pack(fields(payload=b"")),
            expect(payload=b""),
        ),
        Case(
            "unicode_grain",
            "Non-ASCII grain_type and grain_key; the key is their UTF-8.",
            "заказ/客户-🚀".encode(),
            pack(fields(grain_type="заказ", grain_key="客户-🚀")),
            expect(grain_type="заказ", grain_key="客户-🚀"),
        ),
        Case(
            "positional_canonical",
            "The positional form (contract 1.1): the seven fields as a msgpack array in the "
            "order of the Rust struct, what rmp_serde::to_vec writes (with serde_bytes on the "
            "payload). Same rules per field as the map form.",
            KEY,
            pack(positional()),
            expect(),
        ),
        Case(
            "positional_alternatives",
            "The positional form with the map form's alternatives: entry_type as the index 1 "
            "(Delta), payload as an array of ints (a Vec<u8> without serde_bytes).",
            KEY,
            pack(positional(entry_type=1, sequence=8, payload=list(b"rust"))),
            expect(entry_type="Delta", sequence=8, payload=b"rust"),
        ),
        Case(
            "positional_trailing_elements",
            "The positional form with two more elements after payload (fields a later "
            "struct version appended): ignored, whatever their type.",
            KEY,
            pack([*positional(), None, {"trace": [1, 2]}]),
            expect(),
        ),
        Case(
            "positional_order_matters",
            "Positions, not values, say which field is which: with sequence and "
            "timestamp_millis swapped, the timestamp is read as the sequence and the sequence "
            "as the timestamp (both in range, so the entry is valid).",
            KEY,
            pack(
                positional()[:2] + [BASE["timestamp_millis"], BASE["sequence"]] + positional()[4:]
            ),
            expect(sequence=BASE["timestamp_millis"], timestamp_millis=BASE["sequence"]),
        ),
        Case(
            "positional_array_32",
            "The positional form in an array 32 header (not fixarray): any array family.",
            KEY,
            b"\xdd" + struct.pack(">I", 7) + b"".join(pack(v) for v in positional()),
            expect(),
        ),
        Case(
            "tombstone",
            "A null value: the grain named by the key is deleted from the replica; a later "
            "FullState with any sequence starts it afresh.",
            KEY,
            None,
            None,
        ),
        Case(
            "tombstone_grain_key_with_slash",
            "A tombstone whose grain_key contains '/'.",
            b"order/eu/2024/000042",
            None,
            None,
        ),
    ]


def invalid_cases() -> list[Case]:
    canonical = pack(BASE)
    cases = [
        Case(
            "not_msgpack",
            "The byte 0xc1 is never used by msgpack.",
            KEY,
            b"\xc1",
            reason_contains="value: not valid msgpack",
        ),
        Case(
            "empty_value",
            "A zero-length value is not a tombstone (that is a null value): it is not msgpack.",
            KEY,
            b"",
            reason_contains="value: not valid msgpack",
        ),
        Case(
            "json_instead_of_msgpack",
            "The value written as JSON text instead of msgpack.",
            KEY,
            json.dumps({**BASE, "payload": "AAF/gP7/"}).encode(),
            reason_contains="value: not valid msgpack",
        ),
        Case(
            "truncated",
            "The canonical value with its last 3 bytes cut off.",
            KEY,
            canonical[:-3],
            reason_contains="value: not valid msgpack",
        ),
        Case(
            "trailing_garbage",
            "A valid map followed by one more msgpack object (nil): one value is one object.",
            KEY,
            canonical + b"\xc0",
            reason_contains="value: not valid msgpack (ExtraData",
        ),
        Case(
            "not_a_map",
            "A value that is neither a map nor an array: a msgpack string.",
            KEY,
            pack("account/acct-0001"),
            reason_contains="value: expected a msgpack map or array, got a string",
        ),
        Case(
            "positional_empty",
            "The positional form with no elements: grain_type, the first field, is missing.",
            KEY,
            pack([]),
            reason_contains="grain_type: Field required (the positional form has 0 of the 7",
        ),
        Case(
            "positional_short",
            "The positional form with only its first three elements: timestamp_millis, the "
            "first field past the end, is missing.",
            KEY,
            pack([BASE[name] for name in FIELDS[:3]]),
            reason_contains="timestamp_millis: Field required (the positional form has 3 of",
        ),
        Case(
            "positional_missing_payload",
            "The positional form with six elements: payload is missing.",
            KEY,
            pack([BASE[name] for name in FIELDS[:6]]),
            reason_contains="payload: Field required (the positional form has 6 of the 7",
        ),
        Case(
            "positional_sequence_string",
            "The positional form follows the per-field rules of the map form: sequence as a "
            "string.",
            KEY,
            pack(positional(sequence="7")),
            reason_contains="sequence: expected an integer, got a string",
        ),
        Case(
            "positional_key_value_mismatch",
            "The positional form naming another grain_key than the key.",
            KEY,
            pack(positional(grain_key="acct-0002")),
            reason_contains="key/value mismatch",
        ),
        Case(
            "positional_map_inside",
            "An array holding the map form as its only element is not the positional form.",
            KEY,
            pack([BASE]),
            reason_contains="grain_key: Field required (the positional form has 1 of the 7",
        ),
        Case(
            "non_string_map_key",
            "A map key that is an integer.",
            KEY,
            pack({**BASE, 1: "one"}),
            reason_contains="value: map key 1 is an integer, expected a string",
        ),
        Case(
            "invalid_utf8_in_value_string",
            "source_cluster as a msgpack str whose bytes are not UTF-8.",
            KEY,
            raw_map(
                [(pack(name), pack(BASE[name])) for name in FIELDS if name != "source_cluster"]
                + [(pack("source_cluster"), b"\xa2\xff\xfe")]
            ),
            reason_contains="value: not valid msgpack (UnicodeDecodeError",
        ),
    ]
    for name in FIELDS:
        cases.append(
            Case(
                f"missing_{name}",
                f"The field {name} is absent.",
                KEY,
                pack(without(name)),
                reason_contains=f"{name}: Field required",
            )
        )
    wrong: list[tuple[str, str, dict[str, Any], str]] = [
        (
            "sequence_string",
            "sequence as a string.",
            {"sequence": "7"},
            "sequence: expected an integer, got a string",
        ),
        (
            "sequence_bool",
            "sequence as a boolean (true is not 1).",
            {"sequence": True},
            "sequence: expected an integer, got a boolean",
        ),
        (
            "sequence_float",
            "sequence as a float, even an integral one.",
            {"sequence": 7.0},
            "sequence: expected an integer, got a float",
        ),
        ("sequence_zero", "sequence 0: sequences start at 1.", {"sequence": 0}, "sequence: 0 is"),
        (
            "sequence_negative",
            "A negative sequence (2**64 and above cannot be encoded in msgpack at all).",
            {"sequence": -1},
            "sequence: -1 is outside 1..2**64-1",
        ),
        (
            "timestamp_float",
            "timestamp_millis as a float.",
            {"timestamp_millis": 1_700_000_000_123.0},
            "timestamp_millis: expected an integer, got a float",
        ),
        (
            "timestamp_msgpack_ext",
            "timestamp_millis as the msgpack timestamp extension (type -1), not an integer.",
            {"timestamp_millis": msgpack.Timestamp(1_700_000_000, 123_000_000)},
            "timestamp_millis: expected an integer",
        ),
        (
            "timestamp_out_of_range",
            "timestamp_millis 2**63 (uint 64): above the signed 64-bit range.",
            {"timestamp_millis": 2**63},
            "timestamp_millis: 9223372036854775808 is not a signed 64-bit int",
        ),
        (
            "grain_type_not_string",
            "grain_type as an integer.",
            {"grain_type": 5},
            "grain_type: expected a string, got an integer",
        ),
        (
            "source_cluster_empty",
            "An empty source_cluster.",
            {"source_cluster": ""},
            "source_cluster: is empty",
        ),
        (
            "source_cluster_nil",
            "source_cluster as nil.",
            {"source_cluster": None},
            "source_cluster: expected a string, got nil",
        ),
        (
            "payload_string",
            "payload as a msgpack str instead of bin.",
            {"payload": "state"},
            "payload: expected bin (or an array of ints 0..255), got a string",
        ),
        (
            "payload_array_256",
            "payload as an array of ints with one item above 255.",
            {"payload": [1, 2, 256]},
            "payload: expected bin (or an array of ints 0..255), got an array",
        ),
        (
            "payload_array_negative",
            "payload as an array of ints with a negative item.",
            {"payload": [1, -1]},
            "payload: expected bin (or an array of ints 0..255), got an array",
        ),
        (
            "payload_nil",
            "payload as nil (an Option::None, say).",
            {"payload": None},
            "payload: expected bin (or an array of ints 0..255), got nil",
        ),
        (
            "entry_type_unknown_string",
            "entry_type 'Snapshot' is not a variant.",
            {"entry_type": "Snapshot"},
            "entry_type: 'Snapshot' is not 'FullState'/'Delta' (or 0/1)",
        ),
        (
            "entry_type_wrong_case",
            "entry_type names are case-sensitive.",
            {"entry_type": "fullstate"},
            "entry_type: 'fullstate' is not",
        ),
        (
            "entry_type_2",
            "entry_type 2 is not a variant index.",
            {"entry_type": 2},
            "entry_type: 2 is not 'FullState'/'Delta' (or 0/1)",
        ),
        (
            "entry_type_bool",
            "entry_type true (a boolean) is not the index 1.",
            {"entry_type": True},
            "entry_type: True is not 'FullState'/'Delta' (or 0/1)",
        ),
    ]
    for name, description, changes, reason in wrong:
        cases.append(Case(name, description, KEY, pack(fields(**changes)), reason_contains=reason))
    cases += [
        Case(
            "grain_type_with_slash_in_value",
            "The key a/b/c names grain_type 'a', grain_key 'b/c'; a value with grain_type "
            "'a/b' is refused (grain_type may not contain '/').",
            b"a/b/c",
            pack(fields(grain_type="a/b", grain_key="c")),
            reason_contains="grain_type: contains '/'",
        ),
        Case(
            "key_value_mismatch_grain_type",
            "The value names another grain_type than the key.",
            KEY,
            pack(fields(grain_type="customer")),
            reason_contains="key/value mismatch",
        ),
        Case(
            "key_value_mismatch_grain_key",
            "The value names another grain_key than the key.",
            KEY,
            pack(fields(grain_key="acct-0002")),
            reason_contains="key/value mismatch",
        ),
        Case(
            "key_without_slash",
            "A key without '/'.",
            b"account",
            canonical,
            reason_contains="has no '/' between grain_type and grain_key",
        ),
        Case(
            "key_empty_grain_type",
            "A key starting with '/'.",
            b"/acct-0001",
            canonical,
            reason_contains="has an empty grain_type",
        ),
        Case(
            "key_empty_grain_key",
            "A key ending right after the first '/'.",
            b"account/",
            canonical,
            reason_contains="has an empty grain_key",
        ),
        Case(
            "null_key",
            "A record without a key (only possible on a topic that is not compacted).",
            None,
            canonical,
            reason_contains="key: missing (null key)",
        ),
        Case(
            "non_utf8_key",
            "A key whose bytes are not UTF-8.",
            b"account/acct-\xff\xfe",
            canonical,
            reason_contains="key: not valid UTF-8",
        ),
        Case(
            "tombstone_null_key",
            "A null value with a null key: a tombstone must name its grain.",
            None,
            None,
            reason_contains="key: missing (null key)",
        ),
        Case(
            "tombstone_key_without_slash",
            "A null value whose key has no '/'.",
            b"account",
            None,
            reason_contains="has no '/' between grain_type and grain_key",
        ),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# checking and writing
# ---------------------------------------------------------------------------------------------


def key_grain(key: bytes | None) -> tuple[str, str] | None:
    """The grain a key names, by the key rule, independently of the decoder."""
    if key is None:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    grain_type, sep, grain_key = text.partition("/")
    return (grain_type, grain_key) if sep and grain_type and grain_key else None


def entry_fields(entry: Entry) -> dict[str, Any]:
    return {
        "grain_type": entry.grain_type,
        "grain_key": entry.grain_key,
        "sequence": entry.sequence,
        "timestamp_millis": entry.timestamp_millis,
        "source_cluster": entry.source_cluster,
        "entry_type": entry.entry_type.value,
        "payload": entry.payload,
    }


def check_valid(case: Case) -> dict[str, Any]:
    try:
        got = decode(case.key, case.value)
    except ContractError as exc:
        raise VectorError(f"valid/{case.name}: decode refused it: {exc.reason}") from None
    grain = key_grain(case.key)
    if grain is None:
        raise VectorError(f"valid/{case.name}: the key does not name a grain")
    if case.value is None:
        if got != Tombstone(*grain):
            raise VectorError(f"valid/{case.name}: expected a tombstone of {grain}, got {got!r}")
        return {"tombstone": True, "grain_type": grain[0], "grain_key": grain[1]}
    if not isinstance(got, Entry):
        raise VectorError(f"valid/{case.name}: expected an entry, got {got!r}")
    assert case.expected is not None
    if entry_fields(got) != case.expected:
        raise VectorError(f"valid/{case.name}: decode gave {got!r}, intended {case.expected!r}")
    if (got.grain_type, got.grain_key) != grain:
        raise VectorError(f"valid/{case.name}: key {case.key!r} does not match the value")
    try:
        model = validate_with_model(case.key, case.value)
    except ContractError as exc:
        raise VectorError(f"valid/{case.name}: the model refused it: {exc.reason}") from None
    if model != got:
        raise VectorError(f"valid/{case.name}: the model gave {model!r}, decode gave {got!r}")
    out = dict(case.expected)
    out["payload"] = base64.b64encode(case.expected["payload"]).decode("ascii")
    return out


def check_invalid(case: Case) -> tuple[str, tuple[str, str] | None]:
    assert case.reason_contains is not None
    try:
        got = decode(case.key, case.value)
    except ContractError as exc:
        if case.reason_contains not in exc.reason:
            raise VectorError(
                f"invalid/{case.name}: reason {exc.reason!r} does not contain "
                f"{case.reason_contains!r}"
            ) from None
        if exc.grain != key_grain(case.key):
            raise VectorError(
                f"invalid/{case.name}: error names grain {exc.grain!r}, the key names "
                f"{key_grain(case.key)!r}"
            ) from None
        reason, grain = exc.reason, exc.grain
    except Exception as exc:
        raise VectorError(f"invalid/{case.name}: decode raised {exc!r}, not ContractError") from exc
    else:
        raise VectorError(f"invalid/{case.name}: decode accepted it: {got!r}")
    if case.value is not None:
        try:
            model = validate_with_model(case.key, case.value)
        except ContractError:
            pass
        except Exception as exc:
            raise VectorError(
                f"invalid/{case.name}: the model raised {exc!r}, not ContractError"
            ) from exc
        else:
            raise VectorError(f"invalid/{case.name}: the model accepted it: {model!r}")
    return reason, grain


def key_fields(key: bytes | None) -> dict[str, Any]:
    if key is None:
        return {"key": None}
    try:
        return {"key": key.decode("utf-8")}
    except UnicodeDecodeError:
        return {"key_hex": key.hex()}


def describe(case: Case) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": case.description, **key_fields(case.key)}
    doc["value_file"] = None if case.value is None else f"{case.name}.msgpack"
    if case.valid:
        doc["expected"] = check_valid(case)
    else:
        assert case.reason_contains is not None
        _, grain = check_invalid(case)
        doc["reason_contains"] = case.reason_contains
        doc["grain"] = None if grain is None else {"grain_type": grain[0], "grain_key": grain[1]}
    return doc


def all_cases() -> dict[str, list[Case]]:
    groups = {"valid": valid_cases(), "invalid": invalid_cases()}
    for group, cases in groups.items():
        names = [case.name for case in cases]
        if len(set(names)) != len(names):
            raise VectorError(f"{group}: duplicate case names")
        for case in cases:
            if case.valid != (group == "valid"):
                raise VectorError(f"{group}/{case.name}: in the wrong group")
    return groups


def write(out_dir: Path) -> dict[str, int]:
    groups = all_cases()
    documents = {
        group: [(case, describe(case)) for case in cases] for group, cases in groups.items()
    }
    counts = {}
    for group, items in documents.items():
        folder = out_dir / group
        folder.mkdir(parents=True, exist_ok=True)
        for stale in sorted(folder.iterdir()):
            if stale.is_file() and stale.suffix in (".json", ".msgpack"):
                stale.unlink()
        for case, doc in items:
            text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            (folder / f"{case.name}.json").write_text(text, encoding="utf-8")
            if case.value is not None:
                (folder / f"{case.name}.msgpack").write_bytes(case.value)
        counts[group] = len(items)
    return counts


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: generate.py [OUT_DIR]", file=sys.stderr)
        return 2
    out_dir = Path(argv[0]) if argv else HERE
    try:
        counts = write(out_dir)
    except VectorError as exc:
        print(f"generate.py: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {counts['valid']} valid and {counts['invalid']} invalid vectors to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
