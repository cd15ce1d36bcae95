"""The grain filter: never a false "no", false "maybe"s at the rates the plan counts on, and
the size the plan gives it."""

from __future__ import annotations

import random

import pytest

from stream_replica.grain_filter import new_grain_filter


def _bodies(rng: random.Random, count: int, tag: bytes) -> list[bytes]:
    return [tag + rng.randbytes(10) for _ in range(count)]


def test_every_added_grain_may_be_held_even_when_saturated() -> None:
    rng = random.Random(1)
    grain_filter = new_grain_filter(4096)  # ~1.6 bits per grain below: nearly all "maybe"
    added = _bodies(rng, 20_000, b"a")
    for body in added:
        grain_filter.add(body)
    assert all(body in grain_filter for body in added)


@pytest.mark.parametrize(("bits_per_grain", "most"), [(16, 0.01), (10, 0.03), (6, 0.10)])
def test_false_maybes_stay_under_the_rate_for_their_size(bits_per_grain: int, most: float) -> None:
    rng = random.Random(bits_per_grain)
    count = 50_000
    grain_filter = new_grain_filter(count * bits_per_grain // 8)
    for body in _bodies(rng, count, b"in"):
        grain_filter.add(body)
    others = _bodies(rng, count, b"out")
    rate = sum(body in grain_filter for body in others) / count
    assert rate < most, f"{rate:.4f} false maybes at {bits_per_grain} bits per grain"


@pytest.mark.parametrize("size_bytes", [8, 4096, 7 << 20])
def test_a_new_filter_is_the_size_asked_and_rules_out_everything(size_bytes: int) -> None:
    grain_filter = new_grain_filter(size_bytes)
    assert abs(grain_filter.size_in_bits - 8 * size_bytes) <= 64
    assert b"t\x00a" not in grain_filter
