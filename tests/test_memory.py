"""The memory budget: how it is split, what it refuses, and a worker staying under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_replica import cli
from stream_replica.memory import (
    DEFAULT_BUDGET_MIB,
    FIXED_MIB,
    GRAIN_FILTER_MAX_BYTES,
    HEAD_ENTRY_BYTES,
    MIB,
    MemoryBudgetError,
    minimum_budget_mib,
    plan_memory,
)
from stream_replica.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("budget", [minimum_budget_mib(), 200, DEFAULT_BUDGET_MIB, 4096])
def test_the_parts_add_up_to_at_most_the_budget(budget: int) -> None:
    plan = plan_memory(budget)
    parts = (
        FIXED_MIB * MIB
        + plan.memtables_bytes
        + plan.block_cache_bytes
        + plan.head_cache_bytes
        + plan.grain_filter_bytes
    )
    assert parts <= budget * MIB
    assert budget * MIB - parts < HEAD_ENTRY_BYTES  # nothing left unused but a rounding
    assert plan.block_cache_bytes >= 8 * MIB


def test_a_bigger_budget_buys_more_head_cache_and_block_cache() -> None:
    small, large = plan_memory(256), plan_memory(1024)
    assert large.head_cache_entries > small.head_cache_entries > 0
    assert large.block_cache_bytes > small.block_cache_bytes


def test_explicit_head_cache_entries_win_and_the_block_cache_gets_the_rest() -> None:
    plan = plan_memory(256, head_cache_entries=10)
    assert plan.head_cache_entries == 10
    assert plan.block_cache_bytes == (
        256 * MIB
        - FIXED_MIB * MIB
        - plan.memtables_bytes
        - 10 * HEAD_ENTRY_BYTES
        - plan.grain_filter_bytes
    )
    assert plan.grain_filter_bytes == plan_memory(256).grain_filter_bytes > 0
    assert plan_memory(256, head_cache_entries=0).head_cache_entries == 0


def test_the_grain_filter_takes_a_share_up_to_its_cap_and_none_at_the_minimum() -> None:
    assert 13 * MIB < plan_memory(DEFAULT_BUDGET_MIB).grain_filter_bytes < 15 * MIB
    assert plan_memory(16_384).grain_filter_bytes == GRAIN_FILTER_MAX_BYTES
    least = plan_memory(minimum_budget_mib())
    assert least.grain_filter_bytes == 0 and least.block_cache_bytes >= 8 * MIB


def test_too_small_a_budget_is_refused_in_one_line() -> None:
    least = minimum_budget_mib()
    with pytest.raises(MemoryBudgetError) as caught:
        plan_memory(least - 1)
    assert "\n" not in str(caught.value) and f"at least {least} MiB" in str(caught.value)
    with pytest.raises(MemoryBudgetError, match="--head-cache-entries 2,000,000"):
        plan_memory(256, head_cache_entries=2_000_000)


def test_settings_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = WorkerSettings(db=Path("db"))
    assert settings.memory_budget_mib == DEFAULT_BUDGET_MIB
    assert settings.memory_plan() == plan_memory(DEFAULT_BUDGET_MIB)
    monkeypatch.setenv("STREAM_REPLICA_MEMORY_BUDGET_MIB", "512")
    assert WorkerSettings(db=Path("db")).memory_plan() == plan_memory(512)


def test_run_refuses_a_budget_too_small_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["run", "--db", str(tmp_path / "db"), "--memory-budget-mib", "64", "--topic", "t"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("stream-replica: --memory-budget-mib 64 is too small to run")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "db").exists()  # refused before the store was touched


@pytest.mark.broker
@pytest.mark.timeout(300)
def test_memory_bench_small_run_stays_under_the_budget(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.memory_bench",
            "--grains",
            "20000",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    report = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-3000:]}"
    assert completed.returncode == 0, report
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    cases = {case["name"].split(" ")[0]: case for case in result["cases"]}
    assert set(cases) == {"build", "rebuild", "raw"}, report
    for name in ("build", "rebuild"):
        assert 0 < cases[name]["peak_rss_mib"] < DEFAULT_BUDGET_MIB, report
        assert cases[name]["longest_stall_ms"] is not None, report
    assert [step["name"] for step in result["steps"]] == [
        "open (ReplicaStore)",
        "close",
        "resume + revoke + stop (worker's longest loop stall)",
        "close after the revoke",
    ], report
