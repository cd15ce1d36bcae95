"""The grain filter: never a false "no", and false "maybe"s at the rates the plan counts on."""

from __future__ import annotations

import random

import pytest

from stream_replica.grain_filter import GrainFilter


def _bodies(rng: random.Random, count: int, tag: bytes) -> list[bytes]:
    return [tag + rng.randbytes(10) for _ in range(count)]


def test_every_added_grain_may_be_held() -> None:
    rng = random.Random(1)
    grain_filter = GrainFilter(4096)
    added = _bodies(rng, 20_000, b"a")  # ~1.6 bits per grain: saturated, still no false "no"
    for body in added:
        grain_filter.add(body)
    assert all(map(grain_filter.may_hold, added))
    assert grain_filter.added == 20_000


@pytest.mark.parametrize(("bits_per_grain", "most"), [(16, 0.01), (10, 0.03), (6, 0.10)])
def test_false_maybes_stay_under_the_rate_for_their_size(bits_per_grain: int, most: float) -> None:
    rng = random.Random(bits_per_grain)
    count = 50_000
    grain_filter = GrainFilter(count * bits_per_grain // 8)
    for body in _bodies(rng, count, b"in"):
        grain_filter.add(body)
    others = _bodies(rng, count, b"out")
    rate = sum(map(grain_filter.may_hold, others)) / count
    assert rate < most, f"{rate:.4f} false maybes at {bits_per_grain} bits per grain"


def test_an_empty_filter_rules_out_everything_and_sizes_round_to_words() -> None:
    grain_filter = GrainFilter(20)
    assert grain_filter.size_bytes == 16
    assert not grain_filter.may_hold(b"t\x00a")
    assert GrainFilter(0).size_bytes == 8
