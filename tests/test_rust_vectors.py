"""The golden vectors written by the real Rust crates (schemas/vectors/rust/, by
schemas/vectors/rust-gen/): every one decodes as described with both decoders, the set covers
every form, and (with cargo) the program still writes exactly the committed files."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from stream_replica.contract import ContractError, Entry, decode, validate_with_model
from tests.helpers import ROOT, cargo

RUST_GEN = ROOT / "schemas" / "vectors" / "rust-gen"
RUST_VECTORS = ROOT / "schemas" / "vectors" / "rust"
REGENERATE = (
    "run `cd schemas/vectors/rust-gen && CARGO_TARGET_DIR=../../../.cache/cargo-target "
    "cargo run --release --locked -- ../rust` and commit the result"
)


def _cases(group: str) -> list[Path]:
    return sorted((RUST_VECTORS / group).glob("*.json"))


def _load(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    value_path = path.parent / doc["value_file"]
    assert value_path.is_file(), f"{path.name}: value_file {doc['value_file']} is missing"
    return doc, str(doc["key"]).encode(), value_path.read_bytes()


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


def _msgpack_family(value: bytes) -> str:
    first = value[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "map"
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "array"
    return f"byte 0x{first:02x}"


def test_rust_vectors_cover_every_form() -> None:
    names = {path.stem for path in _cases("valid")}
    required = {
        f"{form}_{payload}_{entry_type}"
        for form in ("named", "positional")
        for payload in ("vec", "bytes")
        for entry_type in ("full_state", "delta")
    } | {
        f"{form}_{edge}"
        for form in ("named", "positional")
        for edge in (
            "max_sequence",
            "min_timestamp",
            "negative_timestamp",
            "empty_payload_vec",
            "empty_payload_bytes",
            "non_ascii",
            "grain_key_with_slash",
            "appended_field",
        )
    }
    assert required <= names, f"Rust vectors missing: {sorted(required - names)}; {REGENERATE}"
    invalid = {path.stem for path in _cases("invalid")}
    assert {"named_missing_payload", "positional_missing_payload"} <= invalid
    on_disk = {p.name for group in ("valid", "invalid") for p in (RUST_VECTORS / group).iterdir()}
    referenced = {
        name
        for group in ("valid", "invalid")
        for path in _cases(group)
        for name in (path.name, _load(path)[0]["value_file"])
    }
    assert on_disk == referenced, f"unreferenced files: {sorted(on_disk - referenced)}"


def test_rust_vectors_record_their_versions() -> None:
    versions = json.loads((RUST_VECTORS / "versions.json").read_text(encoding="utf-8"))
    assert versions["rustc"].startswith("rustc 1."), versions
    crates = versions["crates"]
    assert crates["serde"].startswith("1."), crates
    assert crates["rmp-serde"].startswith("1."), crates
    assert crates["serde_bytes"].startswith("0.11."), crates
    lock = (RUST_GEN / "Cargo.lock").read_text(encoding="utf-8")
    for name, version in crates.items():
        assert f'name = "{name}"\nversion = "{version}"' in lock, (
            f"versions.json says {name} {version}, Cargo.lock disagrees; {REGENERATE}"
        )


@pytest.mark.parametrize("path", _cases("valid"), ids=lambda p: p.stem)
def test_rust_valid_vector_decodes(path: Path) -> None:
    doc, key, value = _load(path)
    # The file names say which encoding made it: check the bytes agree.
    expected_family = "array" if path.stem.startswith("positional_") else "map"
    assert _msgpack_family(value) == expected_family, path.name
    raw = msgpack.unpackb(value, raw=False)
    payload = raw["payload"] if expected_family == "map" else raw[6]
    words = path.stem.split("_")
    if "vec" in words:  # a Vec<u8> without serde_bytes: an array of ints
        assert type(payload) is list, path.name
    if "bytes" in words:  # with serde_bytes: bin
        assert type(payload) is bytes, path.name
    fast = decode(key, value)
    assert isinstance(fast, Entry)
    assert _fields(fast) == doc["expected"]
    assert _fields(validate_with_model(key, value)) == doc["expected"]


@pytest.mark.parametrize("path", _cases("invalid"), ids=lambda p: p.stem)
def test_rust_invalid_vector_is_refused(path: Path) -> None:
    doc, key, value = _load(path)
    with pytest.raises(ContractError) as fast:
        decode(key, value)
    assert doc["reason_contains"] in fast.value.reason
    grain = doc["grain"]
    assert fast.value.grain == (grain["grain_type"], grain["grain_key"])
    with pytest.raises(ContractError) as model:
        validate_with_model(key, value)
    assert doc["reason_contains"] in model.value.reason


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for group in ("valid", "invalid")
        for path in sorted((folder / group).glob("*"))
        if path.is_file()
    }


def test_rust_vectors_match_the_rust_program(tmp_path: Path) -> None:
    """Rebuild and rerun rust-gen (skipped without cargo) and compare byte for byte."""
    done = cargo(RUST_GEN, "run", "--release", "--locked", "--quiet", "--", str(tmp_path))
    assert "Rust vectors" in done.stdout, done.stdout
    generated, committed = _tree(tmp_path), _tree(RUST_VECTORS)
    assert generated, "rust-gen wrote no vectors"
    assert sorted(generated) == sorted(committed), (
        f"Rust vector files differ: extra {sorted(set(committed) - set(generated))}, "
        f"missing {sorted(set(generated) - set(committed))}; {REGENERATE}"
    )
    changed = sorted(name for name in generated if generated[name] != committed[name])
    assert not changed, f"Rust vectors drifted: {changed}; {REGENERATE}"
    new = json.loads((tmp_path / "versions.json").read_text(encoding="utf-8"))
    old = json.loads((RUST_VECTORS / "versions.json").read_text(encoding="utf-8"))
    # Another rustc may run the test; the crates (pinned by Cargo.lock) must be the same.
    new_rustc, old_rustc = new.pop("rustc"), old.pop("rustc")
    assert new == old, f"versions.json differs: {new} vs {old}; {REGENERATE}"
    if new_rustc != old_rustc:
        print(f"note: vectors committed by {old_rustc}; this run used {new_rustc} (same bytes)")
