"""The Makefile's targets, as ``make -n`` prints them (nothing is run)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def demo_command(**env: str) -> str:
    """The line of ``make demo`` that runs the demo, with ``env`` as the only Kafka settings."""
    clean = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_PORT", "KAFKA_BOOTSTRAP_SERVERS")
    }
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "demo"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        check=True,
        timeout=30,
    )
    (line,) = [line for line in result.stdout.splitlines() if "stream-replica demo" in line]
    return line


def test_demo_connects_to_the_port_the_local_broker_was_started_on() -> None:
    """KAFKA_PORT=19092 make demo started the broker on 19092 and ran the demo against
    127.0.0.1:9092."""
    assert demo_command(KAFKA_PORT="19092") == (
        "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/stream-replica demo "
    )


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"KAFKA_BOOTSTRAP_SERVERS": "b:9092"},
        {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_PORT": "19092"},
    ],
)
def test_demo_is_left_to_its_own_default_or_the_given_bootstrap(env: dict[str, str]) -> None:
    assert demo_command(**env) == ".venv/bin/stream-replica demo "
