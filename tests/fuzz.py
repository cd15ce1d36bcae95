"""Fuzz the record decoder: ``python -m tests.fuzz [--values N] [--hypothesis N] [--atheris S]``.

Generates N values (default 100,000) of every hostile shape — random bytes, truncated and
bit-flipped msgpack, deeply nested msgpack, huge maps, wrong field types, overlong strings,
invalid UTF-8 in keys and strings, lying length headers, positional (array) values of every
length with wrong field types — and decodes each with both the fast
decoder and the pydantic reference (and the fast fold's canonical_full_state, which may answer
only where the reference gives a FullState of the same fields). Fails (exit 1) on any exception other than ContractError,
on any disagreement between the two decoders, or on a value slower than ``--max-ms``. Prints
figures. Then hypothesis generates structure-aware values (``--hypothesis``, default 100,000)
under the same checks. With ``--atheris`` (if installed) runs coverage-guided fuzzing too.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import struct
import sys
import time
from collections.abc import Callable

import msgpack

from stream_replica.contract import (
    ContractError,
    Entry,
    EntryType,
    canonical_full_state,
    decode,
    validate_with_model,
)

GOOD = {
    "grain_type": "account",
    "grain_key": "a-1",
    "sequence": 3,
    "timestamp_millis": 1_700_000_000_000,
    "source_cluster": "eu-1",
    "entry_type": "FullState",
    "payload": b"state",
}
KEY = b"account/a-1"
POSITIONAL = list(GOOD.values())  # the Rust struct's field order


def _good(rng: random.Random) -> bytes:
    """A valid value in one of the two encodings (named or positional)."""
    packed: bytes = msgpack.packb(GOOD if rng.random() < 0.5 else POSITIONAL)
    return packed


def _wrong_value(rng: random.Random) -> object:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            2**64 - 1,
            -(2**63),
            1.5,
            float("inf"),
            "",
            "x" * 50,
            b"",
            b"\x00" * 10,
            [],
            [1, 2, 300],
            {},
            {"a": 1},
            msgpack.ExtType(5, b"xy"),
            "FullState",
            "Delta",
            0,
            1,
            2,
        ]
    )


def gen_random_bytes(rng: random.Random) -> tuple[bytes | None, bytes]:
    return KEY, rng.randbytes(rng.randint(0, 300))


def gen_truncated(rng: random.Random) -> tuple[bytes | None, bytes]:
    good = _good(rng)
    return KEY, good[: rng.randint(0, len(good) - 1)]


def gen_bitflip(rng: random.Random) -> tuple[bytes | None, bytes]:
    data = bytearray(_good(rng))
    for _ in range(rng.randint(1, 4)):
        index = rng.randrange(len(data))
        data[index] ^= 1 << rng.randrange(8)
    return KEY, bytes(data)


def gen_nested(rng: random.Random) -> tuple[bytes | None, bytes]:
    depth = rng.choice([10, 100, 1000, 5000, 100_000])
    opener = rng.choice([b"\x91", b"\x81\xa1k"])  # fixarray(1) or fixmap(1){"k": ...}
    return KEY, opener * depth + b"\xc0"


def gen_huge_map(rng: random.Random) -> tuple[bytes | None, bytes]:
    if rng.random() < 0.5:
        fields = dict(GOOD)
        fields.update({f"extra{i}": i for i in range(rng.choice([1000, 20_000]))})
        return KEY, msgpack.packb(fields)
    # A map32 header claiming 4 billion entries with almost no data behind it.
    return KEY, b"\xdf" + struct.pack(">I", 2**32 - 1) + b"\xa1a\x01"


def gen_lying_length(rng: random.Random) -> tuple[bytes | None, bytes]:
    header = rng.choice([b"\xc6", b"\xdb", b"\xdd"])  # bin32, str32, array32
    return KEY, header + struct.pack(">I", 2**31) + b"abc"


def gen_wrong_types(rng: random.Random) -> tuple[bytes | None, bytes]:
    fields: dict[object, object] = dict(GOOD)
    for name in rng.sample(list(GOOD), rng.randint(1, 3)):
        if rng.random() < 0.2:
            del fields[name]
        else:
            fields[name] = _wrong_value(rng)
    if rng.random() < 0.1:
        fields[rng.choice([1, b"bin", None, 2.5])] = "non-string map key"
    return KEY, msgpack.packb(fields, use_bin_type=rng.random() < 0.8, strict_types=False)


def gen_positional(rng: random.Random) -> tuple[bytes | None, bytes]:
    """The positional form: any length from empty to trailing extras, fields replaced by
    wrong values, sometimes the map form's alternatives (int entry_type, int-array payload)."""
    items: list[object] = list(POSITIONAL)
    if rng.random() < 0.3:
        items[5] = rng.choice([0, 1, "Delta"])
        items[6] = list(b"state") if rng.random() < 0.5 else b""
    for index in rng.sample(range(7), rng.randint(0, 3)):
        items[index] = _wrong_value(rng)
    roll = rng.random()
    if roll < 0.3:
        items = items[: rng.randint(0, 6)]
    elif roll < 0.5:
        items += [_wrong_value(rng) for _ in range(rng.randint(1, 4))]
    return KEY, msgpack.packb(items, use_bin_type=rng.random() < 0.8, strict_types=False)


def gen_overlong(rng: random.Random) -> tuple[bytes | None, bytes]:
    fields = dict(GOOD)
    size = rng.choice([10_000, 1_000_000])
    fields[rng.choice(["grain_key", "source_cluster", "payload"])] = "k" * size
    key = KEY if rng.random() < 0.5 else b"account/" + b"k" * size
    return key, msgpack.packb(fields)


def gen_bad_utf8(rng: random.Random) -> tuple[bytes | None, bytes]:
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    if rng.random() < 0.5:
        return b"account/" + bad, msgpack.packb(GOOD)
    raw = msgpack.packb({**GOOD, "source_cluster": "QQ"})
    return KEY, raw.replace(b"\xa2QQ", bytes([0xA0 | len(bad)]) + bad)


def gen_bad_key(rng: random.Random) -> tuple[bytes | None, bytes]:
    key = rng.choice([None, b"", b"/", b"account", b"/a-1", b"account/", rng.randbytes(8)])
    return key, msgpack.packb(GOOD)


GENERATORS: dict[str, Callable[[random.Random], tuple[bytes | None, bytes]]] = {
    "random bytes": gen_random_bytes,
    "truncated msgpack": gen_truncated,
    "bit-flipped msgpack": gen_bitflip,
    "nested msgpack": gen_nested,
    "huge maps": gen_huge_map,
    "lying length headers": gen_lying_length,
    "wrong field types": gen_wrong_types,
    "positional values": gen_positional,
    "overlong strings": gen_overlong,
    "invalid UTF-8": gen_bad_utf8,
    "bad keys": gen_bad_key,
}
# Expensive shapes are drawn less often so 100k values stay quick.
WEIGHTS = {"nested msgpack": 0.02, "huge maps": 0.01, "overlong strings": 0.01}


def fast_pass_disagrees(key: bytes | None, value: bytes, reference: object) -> str | None:
    """The fast fold's decode (canonical_full_state) answers only for records the reference
    decodes to a FullState of exactly those fields, and never raises."""
    try:
        fields = canonical_full_state(key, value)
    except Exception as exc:
        return f"canonical_full_state raised {type(exc).__name__}: {exc}"
    if fields is None:
        return None
    if not (
        isinstance(reference, Entry)
        and reference.entry_type is EntryType.FULL_STATE
        and (
            reference.grain_type,
            reference.grain_key,
            reference.sequence,
            reference.timestamp_millis,
            reference.source_cluster,
            reference.payload,
        )
        == (
            fields.grain_type,
            fields.grain_key,
            fields.sequence,
            fields.timestamp_millis,
            fields.source_cluster,
            fields.payload,
        )
    ):
        return f"canonical_full_state accepted what the reference gives as {reference!r}"
    return None


def run(values: int, seed: int, max_ms: float) -> int:
    rng = random.Random(seed)
    names = list(GENERATORS)
    weights = [WEIGHTS.get(name, 1.0) for name in names]
    outcomes: collections.Counter[str] = collections.Counter()
    per_class: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    slowest = (0.0, "")
    started = time.perf_counter()
    for _ in range(values):
        name = rng.choices(names, weights)[0]
        key, value = GENERATORS[name](rng)
        per_class[name] += 1
        results = []
        for decoder in (decode, validate_with_model):
            t0 = time.perf_counter()
            try:
                results.append(decoder(key, value))
            except ContractError as exc:
                results.append(None)
                outcomes[exc.reason.split(":")[0]] += decoder is decode
            except Exception as exc:
                failures.append(f"{name}: {decoder.__name__} raised {type(exc).__name__}: {exc}")
                results.append(None)
            elapsed_ms = (time.perf_counter() - t0) * 1000
            if elapsed_ms > slowest[0]:
                slowest = (elapsed_ms, f"{name} ({len(value)} bytes, {decoder.__name__})")
        if results[0] is not None:
            outcomes["valid"] += 1
        if results[0] != results[1]:
            failures.append(f"{name}: decoders disagree on {value[:60]!r}")
        if (fast := fast_pass_disagrees(key, value, results[1])) is not None:
            failures.append(f"{name}: {fast} ({value[:60]!r})")
    seconds = time.perf_counter() - started
    print(f"fuzzed {values} values in {seconds:.1f} s ({values / seconds:,.0f}/s), seed {seed}")
    for name in names:
        print(f"  {name:<22} {per_class[name]:>7}")
    print("outcomes (fast decoder):")
    for reason, count in outcomes.most_common(12):
        print(f"  {reason[:40]:<40} {count:>7}")
    print(f"slowest value: {slowest[0]:.2f} ms — {slowest[1]}")
    print(f"unexpected exceptions or disagreements: {len(failures)}")
    for failure in failures[:10]:
        print("  FAIL " + failure)
    if slowest[0] > max_ms:
        print(f"FAIL: a value took {slowest[0]:.1f} ms (> {max_ms} ms): possible hang")
        return 1
    return 1 if failures else 0


def run_hypothesis(examples: int) -> int:
    """Structure-aware fuzzing with hypothesis: recursive msgpack documents, contract-shaped
    maps and arrays (positional form) with any field replaced by any msgpack value, arrays
    cut short or extended, truncations, arbitrary keys."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=20)
        | st.binary(max_size=20)
    )
    documents = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=12) | st.integers(0, 3), children, max_size=6)
        ),
        max_leaves=25,
    )
    shaped = st.fixed_dictionaries(
        {name: st.just(value) | documents for name, value in GOOD.items()},
        optional={"extra": documents},
    )
    # The positional form: each of the seven items kept or replaced, then cut short or
    # extended with trailing items.
    shaped_positional = st.tuples(
        st.tuples(*(st.just(value) | documents for value in GOOD.values())),
        st.integers(0, 7),
        st.lists(documents, max_size=3),
        st.booleans(),
    ).map(lambda t: list(t[0]) + t[2] if t[3] else list(t[0])[: t[1]])
    values = st.one_of(
        st.binary(max_size=300),
        documents.map(lambda d: msgpack.packb(d, use_bin_type=True)),
        shaped.map(lambda d: msgpack.packb(d, use_bin_type=True)),
        shaped_positional.map(lambda d: msgpack.packb(d, use_bin_type=True)),
        st.tuples(shaped | shaped_positional, st.integers(0, 200)).map(
            lambda pair: msgpack.packb(pair[0], use_bin_type=True)[: pair[1]]
        ),
    )
    keys = st.just(KEY) | st.none() | st.binary(max_size=30) | st.text(max_size=30).map(str.encode)
    seen = [0]
    failures: list[str] = []

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(keys, values)
    def check(key: bytes | None, value: bytes) -> None:
        seen[0] += 1
        results = []
        for decoder in (decode, validate_with_model):
            try:
                results.append(decoder(key, value))
            except ContractError:
                results.append(None)
            except Exception as exc:
                failures.append(f"{decoder.__name__} raised {type(exc).__name__}: {exc}")
                results.append(None)
        if results[0] != results[1]:
            failures.append(f"decoders disagree on {value[:60]!r}")
        if (fast := fast_pass_disagrees(key, value, results[1])) is not None:
            failures.append(f"{fast} ({value[:60]!r})")

    started = time.perf_counter()
    check()
    seconds = time.perf_counter() - started
    print(f"hypothesis: {seen[0]} generated values in {seconds:.1f} s; failures {len(failures)}")
    for failure in failures[:10]:
        print("  FAIL " + failure)
    return 1 if failures else 0


def run_atheris(seconds: int) -> int:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print("atheris is not installed (pip install atheris); skipped")
        return 0

    def target(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        key = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 40))
        with contextlib.suppress(ContractError):
            decode(key or None, provider.ConsumeBytes(provider.remaining_bytes()))

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}"], target)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--max-ms", type=float, default=1000.0)
    parser.add_argument("--hypothesis", type=int, metavar="EXAMPLES", default=100_000)
    parser.add_argument("--atheris", type=int, metavar="SECONDS", default=0)
    args = parser.parse_args(argv)
    code = run(args.values, args.seed, args.max_ms)
    if args.hypothesis and code == 0:
        code = run_hypothesis(args.hypothesis)
    if args.atheris and code == 0:
        code = run_atheris(args.atheris)
    return code


if __name__ == "__main__":
    sys.exit(main())
