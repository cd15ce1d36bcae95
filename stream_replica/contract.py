"""The wire contract (version 1.1) of the grain replication topic.

Key: UTF-8 of ``"{grain_type}/{grain_key}"``. Value: a msgpack map of the fields by name, or
(since 1.1) a msgpack array of the fields by position, what Rust's ``rmp_serde::to_vec`` writes
(see ``schemas/README.md``); or null for a tombstone. Everything that does not fit is an
*invalid record*: decoding reports it as a :class:`ContractError` whose ``reason`` names the
field and the problem, and never raises anything else, whatever the bytes.

Two validators implement the value rules:

* :class:`ReplicationEntry` (pydantic) is the reference model; the JSON Schema in ``schemas/``
  is generated from it.
* :func:`decode_value` is a hand-written fast path used on the hot path of the worker. A test
  proves it accepts and rejects exactly what the pydantic model does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgpack
import msgspec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBytes,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

CONTRACT_VERSION: Final = 1
CONTRACT_REVISION: Final = "1.1"  # 1.1: the positional (array) form of the value
MAX_SEQUENCE: Final = 2**64  # exclusive
MIN_TIMESTAMP: Final = -(2**63)
MAX_TIMESTAMP: Final = 2**63 - 1

GrainId = tuple[str, str]


class ContractError(ValueError):
    """A record that does not follow the contract. ``reason`` says which field and why."""

    def __init__(self, reason: str, grain: GrainId | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.grain = grain


class EntryType(enum.StrEnum):
    FULL_STATE = "FullState"
    DELTA = "Delta"


# rmp-serde encodes a unit enum variant by index when asked to; accept both forms.
_ENTRY_TYPE_BY_INT: Final = {0: EntryType.FULL_STATE, 1: EntryType.DELTA}
_ENTRY_TYPE_BY_STR: Final = {e.value: e for e in EntryType}


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3x on the hot path
class Entry:
    """A decoded, valid replication entry (FullState or Delta)."""

    grain_type: str
    grain_key: str
    sequence: int
    timestamp_millis: int
    source_cluster: str
    entry_type: EntryType
    payload: bytes

    @property
    def grain(self) -> GrainId:
        return (self.grain_type, self.grain_key)


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3x on the hot path
class Tombstone:
    """A null value: the grain was removed."""

    grain_type: str
    grain_key: str

    @property
    def grain(self) -> GrainId:
        return (self.grain_type, self.grain_key)


# ---------------------------------------------------------------------------------------------
# Key
# ---------------------------------------------------------------------------------------------


def encode_key(grain_type: str, grain_key: str) -> bytes:
    check_grain(grain_type, grain_key)
    return f"{grain_type}/{grain_key}".encode()


def check_grain(grain_type: str, grain_key: str) -> None:
    if not grain_type:
        raise ContractError("grain_type is empty")
    if "/" in grain_type:
        raise ContractError(f"grain_type {grain_type!r} contains '/'")
    if not grain_key:
        raise ContractError(f"grain_key is empty (grain_type {grain_type!r})")


def check_grain_text(grain_type: str, grain_key: str) -> GrainId:
    """A grain named by a person (an HTTP path, the command line): :func:`check_grain`, and
    text that encodes as UTF-8 (a lone surrogate does not: an undecodable byte of argv, or
    of a percent-encoded path)."""
    check_grain(grain_type, grain_key)
    for name, text in (("grain_type", grain_type), ("grain_key", grain_key)):
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise ContractError(f"{name} {text!r} is not UTF-8 text ({exc.reason})") from None
    return grain_type, grain_key


def parse_key(key: bytes | None) -> GrainId:
    if key is None:
        raise ContractError("key: missing (null key)")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"key: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    grain_type, sep, grain_key = text.partition("/")
    if not sep:
        raise ContractError(f"key: {_short(text)!r} has no '/' between grain_type and grain_key")
    if not grain_type:
        raise ContractError(f"key: {_short(text)!r} has an empty grain_type")
    if not grain_key:
        raise ContractError(f"key: {_short(text)!r} has an empty grain_key")
    return grain_type, grain_key


# ---------------------------------------------------------------------------------------------
# Value: msgpack framing shared by both validators
# ---------------------------------------------------------------------------------------------

# The fields in the order of the Rust struct: the positions of the positional (array) form.
_REQUIRED: Final = (
    "grain_type",
    "grain_key",
    "sequence",
    "timestamp_millis",
    "source_cluster",
    "entry_type",
    "payload",
)
_POSITIONAL_LEN: Final = len(_REQUIRED)
POSITIONAL_FIELDS: Final = _REQUIRED


# What msgpack's exceptions mean: FormatError and StackError carry no message at all, which
# left reasons such as "(FormatError: )" in logs and dead-letter headers.
_MSGPACK_MEANINGS: Final = {
    "FormatError": "malformed: a byte that starts no msgpack type, or bad framing",
    "StackError": "nested too deeply",
    "ExtraData": "extra bytes after the value",
    "BufferFull": "value too large",
    "OutOfData": "truncated: the value ends early",
}


def msgpack_failure(exc: Exception) -> str:
    """``Type: message`` for a msgpack unpacking failure, with the type's meaning when the
    exception says nothing itself."""
    text = str(exc).strip()
    if not text:
        text = _MSGPACK_MEANINGS.get(type(exc).__name__, "no detail given by msgpack")
    return f"{type(exc).__name__}: {text}"


def unpack_fields(value: bytes) -> dict[str, Any] | list[Any]:
    """Unpack a msgpack value that must be a map with string keys (the named form) or an
    array (the positional form, checked by the validator)."""
    try:
        obj = msgpack.unpackb(value, raw=False, strict_map_key=False, timestamp=0)
    except Exception as exc:  # msgpack raises many unrelated types on malformed input
        raise ContractError(f"value: not valid msgpack ({msgpack_failure(exc)})") from None
    if type(obj) is list:
        return obj
    if not isinstance(obj, dict):
        raise ContractError(f"value: expected a msgpack map or array, got {_type_name(obj)}")
    for field_name in obj:
        if not isinstance(field_name, str):
            raise ContractError(
                f"value: map key {_short(repr(field_name))} is {_type_name(field_name)}, "
                "expected a string"
            )
    return obj


# ---------------------------------------------------------------------------------------------
# Reference validator: the pydantic model (source of the JSON Schema)
# ---------------------------------------------------------------------------------------------


def _entry_type_before(value: object) -> object:
    # Exact type checks: bool is an int subclass and must not pass as 0/1.
    if type(value) is int and value in _ENTRY_TYPE_BY_INT:
        return _ENTRY_TYPE_BY_INT[value].value
    return value


def _payload_before(value: object) -> object:
    if isinstance(value, list):
        if all(type(item) is int and 0 <= item <= 255 for item in value):
            return bytes(value)
        raise ValueError("array items must be integers 0..255")
    return value


class ReplicationEntry(BaseModel):
    """Value of a replication record (contract version 1.1): a map of the fields by name, or
    a list of them by position (the Rust struct's field order; items past the seventh are
    ignored, a shorter list lacks the fields after its end)."""

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        frozen=True,
        title="ReplicationEntry",
        json_schema_extra={"$comment": "msgpack map or array; see schemas/README.md"},
    )

    @model_validator(mode="before")
    @classmethod
    def _positional(cls, data: object) -> object:
        if type(data) is list:
            return dict(zip(_REQUIRED, data, strict=False))
        return data

    grain_type: StrictStr = Field(min_length=1, pattern=r"^[^/]+$")
    grain_key: StrictStr = Field(min_length=1)
    sequence: StrictInt = Field(ge=1, lt=MAX_SEQUENCE)
    timestamp_millis: StrictInt = Field(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP)
    source_cluster: StrictStr = Field(min_length=1)
    entry_type: Annotated[Literal["FullState", "Delta"], BeforeValidator(_entry_type_before)]
    payload: Annotated[StrictBytes, BeforeValidator(_payload_before)]


def validate_with_model(key: bytes | None, value: bytes) -> Entry:
    """Decode with the pydantic reference model. Slower; used by tests and tooling."""
    grain_type, grain_key = parse_key(key)
    grain = (grain_type, grain_key)
    fields = _with_grain(unpack_fields, value, grain)
    try:
        model = ReplicationEntry.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or "value"
        raise ContractError(f"{loc}: {first['msg']}", grain) from None
    _check_key_match(model.grain_type, model.grain_key, grain)
    return Entry(
        model.grain_type,
        model.grain_key,
        model.sequence,
        model.timestamp_millis,
        model.source_cluster,
        EntryType(model.entry_type),
        model.payload,
    )


# ---------------------------------------------------------------------------------------------
# Fast validator: the hot path
# ---------------------------------------------------------------------------------------------


def decode(key: bytes | None, value: bytes | None) -> Entry | Tombstone:
    """Decode one record. Raises :class:`ContractError` (only) for an invalid record."""
    if value is None:
        grain_type, grain_key = parse_key(key)
        return Tombstone(grain_type, grain_key)
    return decode_value(key, value)


_REQUIRED_SET: Final = frozenset(_REQUIRED)
_FAST_ENTRY_TYPES: Final[dict[str | int, EntryType]] = {
    "FullState": EntryType.FULL_STATE,
    "Delta": EntryType.DELTA,
    0: EntryType.FULL_STATE,
    1: EntryType.DELTA,
}


class _CanonicalMap(msgspec.Struct, forbid_unknown_fields=True):
    """The canonical named form, decoded by msgspec in C straight from the msgpack bytes:
    exactly the seven fields, strict types (no bool for int, bin for the payload). Anything
    it refuses goes the msgpack.unpackb way below, which decides (and words) the outcome, so
    msgspec only ever makes the common case faster, never a different verdict."""

    grain_type: str
    grain_key: str
    sequence: int
    timestamp_millis: int
    source_cluster: str
    entry_type: str | int
    payload: bytes


_CANONICAL_DECODER: Final = msgspec.msgpack.Decoder(_CanonicalMap)


def decode_value(key: bytes | None, value: bytes) -> Entry:
    """Canonical named form via msgspec (see _CanonicalMap); then the general path."""
    grain = parse_key(key)
    try:
        f = _CANONICAL_DECODER.decode(value)
    except Exception:  # msgspec.ValidationError/DecodeError, or anything on hostile input
        return _decode_value_unpacked(grain, value)
    if (
        f.grain_type == grain[0]
        and f.grain_key == grain[1]
        and 1 <= f.sequence < MAX_SEQUENCE
        and MIN_TIMESTAMP <= f.timestamp_millis <= MAX_TIMESTAMP
        and f.source_cluster
    ):
        entry_type = _FAST_ENTRY_TYPES.get(f.entry_type)
        if entry_type is not None and type(f.entry_type) is not bool:
            return Entry(
                grain[0],
                grain[1],
                f.sequence,
                f.timestamp_millis,
                f.source_cluster,
                entry_type,
                f.payload,
            )
    return _decode_value_unpacked(grain, value)


class CanonicalFullState(msgspec.Struct, forbid_unknown_fields=True):
    """A FullState in the canonical named form with every field within the contract's bounds,
    checked by msgspec in C while decoding (msgpack integers never reach 2**64, nor below
    -2**63, so only the other bounds need saying). What is left for Python: no "/" in the
    grain type, and the Kafka key."""

    grain_type: Annotated[str, msgspec.Meta(min_length=1)]
    grain_key: Annotated[str, msgspec.Meta(min_length=1)]
    sequence: Annotated[int, msgspec.Meta(ge=1)]
    timestamp_millis: Annotated[int, msgspec.Meta(le=MAX_TIMESTAMP)]
    source_cluster: Annotated[str, msgspec.Meta(min_length=1)]
    entry_type: Literal["FullState", 0]  # msgspec gives no bool for an int
    payload: bytes


_FULL_STATE_DECODER: Final = msgspec.msgpack.Decoder(CanonicalFullState)


def canonical_full_state(key: bytes | None, value: bytes | None) -> CanonicalFullState | None:
    """The record's fields when :func:`decode` would return a FullState :class:`Entry` of
    exactly these fields and the value is in the canonical named form; None for anything else
    (a tombstone, a Delta, another form, an invalid record), which only :func:`decode` may
    judge. The fast fold's first step: no key parse, no Entry, one C decode."""
    if key is None or value is None:
        return None
    try:
        f = _FULL_STATE_DECODER.decode(value)
    except Exception:  # msgspec.ValidationError/DecodeError, or anything on hostile input
        return None
    grain_type = f.grain_type
    if "/" in grain_type:
        return None
    # parse_key(key) == (grain_type, grain_key) exactly when the key is their UTF-8 joined by
    # the first "/" (grain_type holds none).
    try:
        return f if key == f"{grain_type}/{f.grain_key}".encode() else None
    except UnicodeEncodeError:
        return None


def _decode_value_unpacked(grain: GrainId, value: bytes) -> Entry:
    """The general path for every value msgspec did not take: the canonical forms (bin payload, str or int entry_type; by name with no
    extra field, or by position with any trailing items); anything else goes to the detailed validator, which accepts the
    alternative forms and words the reason of a rejection."""
    try:
        fields = msgpack.unpackb(value, raw=False, strict_map_key=False, timestamp=0)
    except Exception as exc:  # msgpack raises many unrelated types on malformed input
        raise ContractError(f"value: not valid msgpack ({msgpack_failure(exc)})", grain) from None
    if type(fields) is dict:
        if fields.keys() != _REQUIRED_SET:
            return _decode_fields(fields, grain)
        grain_type = fields["grain_type"]
        grain_key = fields["grain_key"]
        sequence = fields["sequence"]
        timestamp = fields["timestamp_millis"]
        source_cluster = fields["source_cluster"]
        raw_type = fields["entry_type"]
        payload = fields["payload"]
    elif type(fields) is list and len(fields) >= _POSITIONAL_LEN:
        # Items past the seventh are fields a later struct version appended: ignored.
        grain_type, grain_key, sequence, timestamp, source_cluster, raw_type, payload = fields[
            :_POSITIONAL_LEN
        ]
    else:
        return _decode_fields(fields, grain)
    if (
        grain_type == grain[0]
        and grain_key == grain[1]
        and type(sequence) is int
        and 1 <= sequence < MAX_SEQUENCE
        and type(timestamp) is int
        and MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP
        and type(source_cluster) is str
        and source_cluster
        and (type(raw_type) is str or type(raw_type) is int)  # not bool, not float
        and type(payload) is bytes
    ):
        entry_type = _FAST_ENTRY_TYPES.get(raw_type)
        if entry_type is not None:
            return Entry(
                grain[0], grain[1], sequence, timestamp, source_cluster, entry_type, payload
            )
    return _decode_fields(fields, grain)


def _decode_fields(fields: Any, grain: GrainId) -> Entry:
    if type(fields) is list:
        if len(fields) < _POSITIONAL_LEN:
            raise ContractError(
                f"{_REQUIRED[len(fields)]}: Field required (the positional form has "
                f"{len(fields)} of the {_POSITIONAL_LEN} fields)",
                grain,
            )
        fields = dict(zip(_REQUIRED, fields, strict=False))
    if not isinstance(fields, dict):
        raise ContractError(
            f"value: expected a msgpack map or array, got {_type_name(fields)}", grain
        )
    for field_name in fields:
        if not isinstance(field_name, str):
            raise ContractError(
                f"value: map key {_short(repr(field_name))} is {_type_name(field_name)}, "
                "expected a string",
                grain,
            )
    for name in _REQUIRED:
        if name not in fields:
            raise ContractError(f"{name}: Field required", grain)

    grain_type = _string(fields, "grain_type", grain)
    if "/" in grain_type:
        raise ContractError("grain_type: contains '/'", grain)
    grain_key = _string(fields, "grain_key", grain)

    sequence = fields["sequence"]
    if type(sequence) is not int:
        raise ContractError(f"sequence: expected an integer, got {_type_name(sequence)}", grain)
    if not 1 <= sequence < MAX_SEQUENCE:
        raise ContractError(f"sequence: {sequence} is outside 1..2**64-1", grain)

    timestamp = fields["timestamp_millis"]
    if type(timestamp) is not int:
        raise ContractError(
            f"timestamp_millis: expected an integer, got {_type_name(timestamp)}", grain
        )
    if not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
        raise ContractError(f"timestamp_millis: {timestamp} is not a signed 64-bit int", grain)

    source_cluster = _string(fields, "source_cluster", grain)

    raw_type = fields["entry_type"]
    entry_type: EntryType | None
    if type(raw_type) is str:
        entry_type = _ENTRY_TYPE_BY_STR.get(raw_type)
    elif type(raw_type) is int:
        entry_type = _ENTRY_TYPE_BY_INT.get(raw_type)
    else:
        entry_type = None
    if entry_type is None:
        raise ContractError(
            f"entry_type: {_short(repr(raw_type))} is not 'FullState'/'Delta' (or 0/1)", grain
        )

    payload = fields["payload"]
    if type(payload) is not bytes:
        if type(payload) is list and all(type(b) is int and 0 <= b <= 255 for b in payload):
            payload = bytes(payload)
        else:
            raise ContractError(
                f"payload: expected bin (or an array of ints 0..255), got {_type_name(payload)}",
                grain,
            )

    _check_key_match(grain_type, grain_key, grain)
    return Entry(grain_type, grain_key, sequence, timestamp, source_cluster, entry_type, payload)


def encode_value(entry: Entry) -> bytes:
    """Canonical encoding: str entry_type, bin payload."""
    check_grain(entry.grain_type, entry.grain_key)
    return msgpack.packb(  # type: ignore[no-any-return]
        {
            "grain_type": entry.grain_type,
            "grain_key": entry.grain_key,
            "sequence": entry.sequence,
            "timestamp_millis": entry.timestamp_millis,
            "source_cluster": entry.source_cluster,
            "entry_type": entry.entry_type.value,
            "payload": entry.payload,
        },
        use_bin_type=True,
    )


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _with_grain(unpack: Any, value: bytes, grain: GrainId) -> dict[str, Any]:
    try:
        result: dict[str, Any] = unpack(value)
    except ContractError as exc:
        raise ContractError(exc.reason, grain) from None
    return result


def _string(fields: dict[str, Any], name: str, grain: GrainId) -> str:
    value = fields[name]
    if type(value) is not str:
        raise ContractError(f"{name}: expected a string, got {_type_name(value)}", grain)
    if not value:
        raise ContractError(f"{name}: is empty", grain)
    return value


def _check_key_match(grain_type: str, grain_key: str, grain: GrainId) -> None:
    if (grain_type, grain_key) != grain:
        raise ContractError(
            f"key/value mismatch: key names {grain[0]!r}/{_short(grain[1])!r} but value names "
            f"{grain_type!r}/{_short(grain_key)!r}",
            grain,
        )


def _type_name(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        bytes: "bin",
        list: "an array",
        dict: "a map",
        type(None): "nil",
    }
    return names.get(type(value), type(value).__name__)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
