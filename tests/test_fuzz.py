"""The decoder fuzz run (tests/fuzz.py) at full size: 100,000 hostile values."""

from __future__ import annotations

import pytest

from tests import fuzz


def test_decoder_survives_100k_hostile_values(capsys: pytest.CaptureFixture[str]) -> None:
    # max_ms is a hang detector (a value taking seconds), not a speed target.
    assert fuzz.run(values=100_000, seed=20261126, max_ms=2000.0) == 0
    out = capsys.readouterr().out
    assert "fuzzed 100000 values" in out
    assert "unexpected exceptions or disagreements: 0" in out


def test_decoder_survives_structured_hypothesis_values(capsys: pytest.CaptureFixture[str]) -> None:
    # CI-sized; `make fuzz` runs 100,000.
    assert fuzz.run_hypothesis(examples=5_000) == 0
    assert "failures 0" in capsys.readouterr().out
