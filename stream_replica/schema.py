"""JSON Schema (2020-12) of a replication record's value, generated from the reference model.

``python -m stream_replica.schema`` writes ``schemas/replication-entry.schema.json``;
``--check`` exits 1 when that file differs from what the model generates (run in CI).

The value is msgpack, not JSON: the schema describes the msgpack value after decoding, which
is one of two forms (contract 1.1): ``NamedForm``, a map of the fields by name (the model's own
schema), or ``PositionalForm``, an array of the fields in the Rust struct's order (what
``rmp_serde::to_vec`` writes), each item referring to the named form's field. pydantic only
sees the canonical field types, so two alternatives the decoders also accept are added here
(both are what Rust serde + rmp-serde can emit): ``entry_type`` as the variant index 0/1, and
``payload`` as an array of ints 0..255 (a ``Vec<u8>`` without ``serde_bytes``). Apart from
``prefixItems`` (2020-12; a draft-07 reader ignores it and sees an array of at least seven
items), the keywords used are the subset shared with draft-07, so AsyncAPI tooling can read
the file as is.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Final

from stream_replica.contract import (
    CONTRACT_REVISION,
    CONTRACT_VERSION,
    MAX_SEQUENCE,
    POSITIONAL_FIELDS,
    ReplicationEntry,
)

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID: Final = f"urn:stream-replica:replication-entry:v{CONTRACT_VERSION}"
ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_PATH: Final = ROOT / "schemas" / "replication-entry.schema.json"

_DESCRIPTIONS: Final = {
    "grain_type": (
        "Kind of grain. Non-empty, no '/'. Must equal the grain_type of the record key "
        "'{grain_type}/{grain_key}'."
    ),
    "grain_key": (
        "Identity of the grain within its type. Non-empty, may contain '/'. Must equal the "
        "grain_key of the record key."
    ),
    "sequence": (
        "Per-grain version, 1 <= sequence < 2**64 (msgpack uint64 at most). A replica applies "
        "a FullState only when its sequence is above the one it holds."
    ),
    "timestamp_millis": (
        "Milliseconds since the Unix epoch at the source, a signed 64-bit integer "
        "(may be negative)."
    ),
    "source_cluster": "Name of the cluster that produced the entry. Non-empty.",
}

_ENTRY_TYPE_NOTE: Final = (
    "'FullState' (the grain's complete state) or 'Delta' (refused by replicas). The integers "
    "0 (FullState) and 1 (Delta) are accepted too: the variant index rmp-serde writes when "
    "asked for integer variants. Booleans are not integers here."
)
_PAYLOAD_NOTE: Final = (
    "Opaque state bytes, encoded as msgpack bin (bin 8/16/32). An array of integers 0..255 "
    "is accepted too: what rmp-serde writes for a Vec<u8> without serde_bytes."
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a replication value: the model's schema plus the msgpack notes."""
    base = copy.deepcopy(ReplicationEntry.model_json_schema())
    properties: dict[str, Any] = base["properties"]
    expected = set(ReplicationEntry.model_fields)
    if set(properties) != expected or set(base["required"]) != expected:
        raise RuntimeError(
            f"model schema properties {sorted(properties)} / required {base['required']} "
            f"do not match the model fields {sorted(expected)}; update stream_replica/schema.py"
        )

    for name, text in _DESCRIPTIONS.items():
        properties[name]["description"] = text

    if properties["sequence"].get("exclusiveMaximum") != MAX_SEQUENCE:
        raise RuntimeError("sequence bound changed in the model; update stream_replica/schema.py")

    entry_type = properties["entry_type"]
    if entry_type.get("enum") != ["FullState", "Delta"]:
        raise RuntimeError(
            "entry_type values changed in the model; update stream_replica/schema.py"
        )
    properties["entry_type"] = {
        "title": entry_type.get("title", "Entry Type"),
        "description": _ENTRY_TYPE_NOTE,
        "anyOf": [
            {"type": "string", "enum": ["FullState", "Delta"]},
            {"type": "integer", "enum": [0, 1]},
        ],
    }

    payload = properties["payload"]
    if payload.get("format") != "binary":
        raise RuntimeError(
            "payload is no longer bytes in the model; update stream_replica/schema.py"
        )
    properties["payload"] = {
        "title": payload.get("title", "Payload"),
        "description": _PAYLOAD_NOTE,
        "anyOf": [
            {"type": "string", "format": "binary", "description": "msgpack bin"},
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
        ],
    }

    if list(properties) != list(POSITIONAL_FIELDS):
        raise RuntimeError(
            f"model field order {list(properties)} is not the positional order "
            f"{list(POSITIONAL_FIELDS)}; update stream_replica/schema.py"
        )
    named = {
        **base,
        "title": "NamedForm",
        "description": (
            "The fields by name: a msgpack map with string keys (rmp_serde::to_vec_named). "
            "Field order carries no meaning; fields not listed are ignored."
        ),
        "additionalProperties": True,
    }
    positional = {
        "title": "PositionalForm",
        "description": (
            f"The fields by position (contract {CONTRACT_REVISION}): a msgpack array whose "
            "first seven items are, in this order, "
            + ", ".join(POSITIONAL_FIELDS)
            + " (the Rust struct's field order; rmp_serde::to_vec). Items after the seventh "
            "are ignored (fields a later struct version appended); a shorter array is "
            "invalid, missing the field at its end."
        ),
        "type": "array",
        "minItems": len(POSITIONAL_FIELDS),
        "prefixItems": [
            {"$ref": f"#/$defs/NamedForm/properties/{name}"} for name in POSITIONAL_FIELDS
        ],
        "items": True,
    }
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "$comment": base.pop("$comment"),
        "title": f"ReplicationEntry (stream-replica wire contract {CONTRACT_REVISION})",
        "description": (
            "Value of a record on the grain replication topic, described here as decoded: a "
            "msgpack map of the fields by name (NamedForm) or a msgpack array of them by "
            "position (PositionalForm), with the same rules per field. The record key is the "
            "UTF-8 string '{grain_type}/{grain_key}' and must name the same grain as the "
            "value; a null value is a tombstone. Generated from "
            "stream_replica.contract.ReplicationEntry by `python -m stream_replica.schema`; "
            "see schemas/README.md."
        ),
        "anyOf": [{"$ref": "#/$defs/NamedForm"}, {"$ref": "#/$defs/PositionalForm"}],
        "$defs": {"NamedForm": named, "PositionalForm": positional},
    }


def render() -> str:
    """The schema file's exact text: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_replica.schema",
        description="Write (or --check) the JSON Schema of the replication value.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from the generated schema",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_PATH, help=f"default: {DEFAULT_PATH}"
    )
    args = parser.parse_args(argv)
    path: Path = args.output
    text = render()
    if args.check:
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            what = "is missing" if current is None else "is out of date"
            print(
                f"{path} {what}; regenerate it with `python -m stream_replica.schema`",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
