"""The contract artefacts in schemas/ stay in step with the code: the JSON Schema file, the
golden vectors (decoded by both decoders, and byte-equal to what their generator writes), and
the AsyncAPI document."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_replica import schema
from stream_replica.contract import (
    ContractError,
    Entry,
    Tombstone,
    decode,
    validate_with_model,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
SCHEMA_FILE = SCHEMAS / "replication-entry.schema.json"
VECTORS = SCHEMAS / "vectors"
GENERATE = VECTORS / "generate.py"
ASYNCAPI = SCHEMAS / "asyncapi.yaml"
DEAD_LETTERS = ROOT / "stream_replica" / "dead_letters.py"

REGENERATE_SCHEMA = "run `.venv/bin/python -m stream_replica.schema` and commit the result"
REGENERATE_VECTORS = "run `.venv/bin/python schemas/vectors/generate.py` and commit the result"


# ---------------------------------------------------------------------------------------------
# (a) the JSON Schema file
# ---------------------------------------------------------------------------------------------


def test_schema_file_matches_the_model() -> None:
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE} is missing; {REGENERATE_SCHEMA}"
    on_disk = SCHEMA_FILE.read_text(encoding="utf-8")
    assert on_disk == schema.render(), f"{SCHEMA_FILE} is out of date; {REGENERATE_SCHEMA}"
    assert json.loads(on_disk) == schema.json_schema()


FIELD_ORDER = [
    "grain_type",
    "grain_key",
    "sequence",
    "timestamp_millis",
    "source_cluster",
    "entry_type",
    "payload",
]


def test_schema_describes_both_forms() -> None:
    generated = schema.json_schema()
    assert generated["anyOf"] == [
        {"$ref": "#/$defs/NamedForm"},
        {"$ref": "#/$defs/PositionalForm"},
    ]
    named = generated["$defs"]["NamedForm"]
    positional = generated["$defs"]["PositionalForm"]
    assert named["type"] == "object" and named["additionalProperties"] is True
    assert positional["type"] == "array"
    assert positional["minItems"] == 7
    assert positional["items"] is True  # trailing items are ignored
    refs = [item["$ref"] for item in positional["prefixItems"]]
    assert refs == [f"#/$defs/NamedForm/properties/{name}" for name in FIELD_ORDER]
    for ref in refs:  # each position resolves to the named form's field schema
        node: Any = generated
        for part in ref[2:].split("/"):
            node = node[part]
        assert node is named["properties"][ref.rsplit("/", 1)[1]]
    assert "rmp_serde::to_vec" in positional["description"]
    assert "1.1" in generated["title"]


def test_schema_describes_the_msgpack_alternatives() -> None:
    generated = schema.json_schema()["$defs"]["NamedForm"]
    assert schema.json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    props = generated["properties"]
    assert (
        set(generated["required"])
        == set(props)
        == {
            "grain_type",
            "grain_key",
            "sequence",
            "timestamp_millis",
            "source_cluster",
            "entry_type",
            "payload",
        }
    )
    entry_type_enums = [alt["enum"] for alt in props["entry_type"]["anyOf"]]
    assert entry_type_enums == [["FullState", "Delta"], [0, 1]]
    payload_types = [alt["type"] for alt in props["payload"]["anyOf"]]
    assert payload_types == ["string", "array"]
    assert props["payload"]["anyOf"][1]["items"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 255,
    }
    assert props["sequence"]["minimum"] == 1
    assert props["sequence"]["exclusiveMaximum"] == 2**64
    assert "bin" in props["payload"]["description"]
    assert "0" in props["entry_type"]["description"]


def test_schema_main_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.schema.json"
    assert schema.main(["--check", "--output", str(target)]) == 1  # missing
    assert schema.main(["--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == schema.render()
    assert target.read_text(encoding="utf-8").endswith("}\n")
    assert schema.main(["--check", "--output", str(target)]) == 0
    target.write_text(schema.render().replace("FullState", "Full"), encoding="utf-8")
    assert schema.main(["--check", "--output", str(target)]) == 1
    assert "python -m stream_replica.schema" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# (b) golden vectors decode as described
# ---------------------------------------------------------------------------------------------


def _cases(group: str) -> list[Path]:
    return sorted((VECTORS / group).glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _key(doc: dict[str, Any]) -> bytes | None:
    if "key_hex" in doc:
        assert "key" not in doc, "a case has either key or key_hex"
        return bytes.fromhex(str(doc["key_hex"]))
    key = doc["key"]
    return None if key is None else str(key).encode()


def _value(path: Path, doc: dict[str, Any]) -> bytes | None:
    name = doc["value_file"]
    if name is None:
        return None
    value_path = path.parent / str(name)
    assert value_path.is_file(), f"{path.name}: value_file {name} is missing"
    return value_path.read_bytes()


def _fields(entry: Entry) -> dict[str, Any]:
    return {
        "grain_type": entry.grain_type,
        "grain_key": entry.grain_key,
        "sequence": entry.sequence,
        "timestamp_millis": entry.timestamp_millis,
        "source_cluster": entry.source_cluster,
        "entry_type": entry.entry_type.value,
        "payload": base64.b64encode(entry.payload).decode("ascii"),
    }


REQUIRED_VALID = {
    "full_state_canonical",
    "delta",
    "entry_type_int_0",
    "entry_type_int_1",
    "payload_int_array",
    "extra_unknown_fields",
    "grain_key_with_slash",
    "max_sequence",
    "negative_timestamp",
    "empty_payload",
    "unicode_grain",
    "tombstone",
    "positional_canonical",
    "positional_alternatives",
    "positional_trailing_elements",
    "positional_order_matters",
}
REQUIRED_INVALID = {
    "not_msgpack",
    "truncated",
    "trailing_garbage",
    "not_a_map",
    "non_string_map_key",
    *(
        f"missing_{name}"
        for name in (
            "grain_type",
            "grain_key",
            "sequence",
            "timestamp_millis",
            "source_cluster",
            "entry_type",
            "payload",
        )
    ),
    "sequence_string",
    "sequence_bool",
    "timestamp_float",
    "payload_string",
    "payload_array_256",
    "entry_type_unknown_string",
    "entry_type_2",
    "source_cluster_empty",
    "sequence_zero",
    "sequence_negative",
    "timestamp_out_of_range",
    "key_value_mismatch_grain_type",
    "key_value_mismatch_grain_key",
    "key_without_slash",
    "key_empty_grain_type",
    "key_empty_grain_key",
    "null_key",
    "non_utf8_key",
    "invalid_utf8_in_value_string",
    "positional_empty",
    "positional_short",
    "positional_missing_payload",
    "positional_sequence_string",
    "positional_key_value_mismatch",
}


@pytest.mark.parametrize(
    ("group", "required"), [("valid", REQUIRED_VALID), ("invalid", REQUIRED_INVALID)]
)
def test_vector_inventory(group: str, required: set[str]) -> None:
    folder = VECTORS / group
    names = {path.stem for path in _cases(group)}
    assert required <= names, f"{group} vectors missing: {sorted(required - names)}"
    referenced = {_load(path)["value_file"] for path in _cases(group)} - {None}
    on_disk = {path.name for path in folder.glob("*.msgpack")}
    assert referenced == on_disk, (
        f"{group}: unreferenced {sorted(on_disk - referenced)}, "
        f"missing {sorted(referenced - on_disk)}"
    )
    for path in _cases(group):
        doc = _load(path)
        assert isinstance(doc.get("description"), str) and doc["description"], path.name
        assert doc["value_file"] in (None, f"{path.stem}.msgpack"), path.name
        assert ("expected" in doc) == (group == "valid"), path.name
        assert ("reason_contains" in doc) == (group == "invalid"), path.name


@pytest.mark.parametrize("path", _cases("valid"), ids=lambda p: p.stem)
def test_valid_vector_decodes(path: Path) -> None:
    doc = _load(path)
    key, value = _key(doc), _value(path, doc)
    expected = doc["expected"]
    decoded = decode(key, value)
    if expected.get("tombstone"):
        assert value is None
        assert decoded == Tombstone(expected["grain_type"], expected["grain_key"])
        return
    assert value is not None, f"{path.name}: a non-tombstone needs a value_file"
    assert isinstance(decoded, Entry)
    assert _fields(decoded) == expected
    assert _fields(validate_with_model(key, value)) == expected


@pytest.mark.parametrize("path", _cases("invalid"), ids=lambda p: p.stem)
def test_invalid_vector_is_refused(path: Path) -> None:
    doc = _load(path)
    key, value = _key(doc), _value(path, doc)
    with pytest.raises(ContractError) as fast:
        decode(key, value)
    assert doc["reason_contains"] in fast.value.reason
    grain = doc["grain"]
    assert fast.value.grain == (
        None if grain is None else (grain["grain_type"], grain["grain_key"])
    )
    if value is not None:  # the model validates values; a null value has none
        with pytest.raises(ContractError):
            validate_with_model(key, value)


# ---------------------------------------------------------------------------------------------
# (c) the vectors on disk are what generate.py writes
# ---------------------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for group in ("valid", "invalid")
        for path in sorted((folder / group).glob("*"))
        if path.is_file()
    }


def test_vectors_match_generator(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATE), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"generate.py failed:\n{done.stdout}{done.stderr}"
    generated, on_disk = _tree(tmp_path), _tree(VECTORS)
    assert len(generated) > 0
    assert sorted(generated) == sorted(on_disk), (
        f"vector files differ: extra {sorted(set(on_disk) - set(generated))}, "
        f"missing {sorted(set(generated) - set(on_disk))}; {REGENERATE_VECTORS}"
    )
    changed = sorted(name for name in generated if generated[name] != on_disk[name])
    assert not changed, f"vector files out of date: {changed}; {REGENERATE_VECTORS}"


# ---------------------------------------------------------------------------------------------
# (d) the AsyncAPI document
# ---------------------------------------------------------------------------------------------


def _asyncapi() -> dict[str, Any]:
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``#/...`` references (with JSON-pointer escapes)."""
    while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/"):
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(target, dict) and part in target, f"dangling $ref {node['$ref']}"
            target = target[part]
        node = target
    return node


def _channel(doc: dict[str, Any], address: str | None) -> dict[str, Any]:
    found = [
        _resolve(doc, channel)
        for channel in doc["channels"].values()
        if _resolve(doc, channel).get("address") == address
    ]
    assert len(found) == 1, f"expected one channel with address {address!r}, found {len(found)}"
    channel: dict[str, Any] = found[0]
    return channel


def _messages(doc: dict[str, Any], channel: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: _resolve(doc, msg) for name, msg in channel["messages"].items()}


def test_asyncapi_replication_channel() -> None:
    doc = _asyncapi()
    assert str(doc["asyncapi"]).startswith("3."), doc["asyncapi"]
    channel = _channel(doc, "grain-replication")
    kafka = channel["bindings"]["kafka"]
    assert kafka["topicConfiguration"]["cleanup.policy"] == ["compact"]

    messages = _messages(doc, channel)
    with_payload = [m for m in messages.values() if m["payload"].get("type") != "null"]
    tombstones = [m for m in messages.values() if m["payload"].get("type") == "null"]
    assert len(with_payload) == 1 and len(tombstones) == 1

    entry = with_payload[0]
    assert entry["contentType"] == "application/msgpack"
    assert "map" in entry["summary"] and "array" in entry["summary"]
    assert ", ".join(FIELD_ORDER) in " ".join(entry["description"].split())
    payload = entry["payload"]
    ref = payload.get("$ref") or payload.get("schema", {}).get("$ref")
    assert ref, "the entry message's payload must $ref the JSON schema file"
    target = (ASYNCAPI.parent / ref).resolve()
    assert target.is_file(), f"payload $ref {ref} points to a missing file"
    assert target == SCHEMA_FILE.resolve()
    assert json.loads(target.read_text(encoding="utf-8"))["$id"] == schema.SCHEMA_ID

    # The key schema accepts exactly the keys the vectors say are valid.
    keys = [_resolve(doc, m["bindings"]["kafka"]["key"]) for m in messages.values()]
    assert keys[0] == keys[1]
    pattern = re.compile(keys[0]["pattern"])
    for path in _cases("valid"):
        key = _load(path)["key"]
        assert pattern.fullmatch(key), f"{key!r} ({path.name}) should match the key pattern"
    for name in ("key_without_slash", "key_empty_grain_type", "key_empty_grain_key"):
        key = _load(VECTORS / "invalid" / f"{name}.json")["key"]
        assert not pattern.fullmatch(key), f"{key!r} ({name}) should not match the key pattern"


def test_asyncapi_dead_letter_headers_match_the_worker() -> None:
    doc = _asyncapi()
    channel = _channel(doc, None)
    (message,) = _messages(doc, channel).values()
    headers = _resolve(doc, message["headers"])
    documented = set(headers["properties"])
    sent = set(re.findall(r'"(stream-replica\.[a-z-]+)"', DEAD_LETTERS.read_text(encoding="utf-8")))
    assert len(sent) == 9, sorted(sent)
    assert documented == sent, f"documented {sorted(documented)}, worker sends {sorted(sent)}"
    assert set(headers["required"]) == sent - {
        "stream-replica.grain-type",
        "stream-replica.grain-key",
        "stream-replica.value-dropped",
        "stream-replica.shadows-offset",
    }
    assert headers["properties"]["stream-replica.kind"]["enum"] == ["delta", "invalid"]
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    missing = sorted(name for name in sent if f"`{name}`" not in readme)
    assert not missing, f"schemas/README.md does not document {missing}"
    operations = [_resolve(doc, op) for op in doc["operations"].values()]
    actions = {(op["action"], id(_resolve(doc, op["channel"]))) for op in operations}
    assert ("send", id(channel)) in actions
    assert ("receive", id(_channel(doc, "grain-replication"))) in actions
