"""The demo empties only a workdir it made and deletes only the topics it created."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_replica import admin
from stream_replica.demo import MARKER, DemoWorkdir
from stream_replica.errors import ConfigurationError
from tests.helpers import cli


def claim(root: Path) -> None:
    with DemoWorkdir.claim(root):
        pass


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError) as err:
        claim(home)
    assert str(err.value) == (
        f"--workdir {home}: not empty and not made by the demo (no {MARKER} in it; it holds "
        "notes.txt, projects); the demo empties its workdir, so give a new or empty directory"
    )
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt", "projects"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="exists and is not a directory"):
        claim(tmp_path / "file")


def test_its_own_workdir_is_emptied_and_records_the_run(tmp_path: Path) -> None:
    root = tmp_path / "new" / ".demo"
    with DemoWorkdir.claim(root) as workdir:
        assert workdir.previous_topics == []
        (root / "worker-0.db").mkdir()
        (root / "worker-0.log").write_text("log")
        workdir.reset("b:9092", ["demo-grains-1", "demo-grains-1-dlq"])
        (root / "worker-0.db").mkdir()
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep").write_text("x")
        (root / "link").symlink_to(outside)
        with pytest.raises(ConfigurationError, match="another demo is running in it"):
            claim(root)
    assert json.loads((root / MARKER).read_text())["topics"] == [
        "demo-grains-1",
        "demo-grains-1-dlq",
    ]
    with DemoWorkdir.claim(root) as again:
        assert again.previous_topics == ["demo-grains-1", "demo-grains-1-dlq"]
        again.reset("b:9092", ["demo-grains-2"])
        assert [p.name for p in root.iterdir()] == [MARKER]
    assert (outside / "keep").exists(), "a symlink in the workdir was followed"


def test_a_workdir_of_an_older_demo_is_taken(tmp_path: Path) -> None:
    """Before the marker, the workdir held only the workers' stores and logs."""
    (tmp_path / "worker-0.db").mkdir()
    (tmp_path / "worker-0.log").write_text("log")
    with DemoWorkdir.claim(tmp_path) as workdir:
        assert workdir.previous_topics == []


def test_a_marker_names_only_demo_topics(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text(json.dumps({"topics": ["payments", "demo-grains-x", 3]}))
    with DemoWorkdir.claim(tmp_path) as workdir:
        assert workdir.previous_topics == ["demo-grains-x"]


async def test_refused_workdir_deletes_no_topic(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """The demo deleted every demo-grains-* topic on the broker, then the workdir."""
    bystander = unique("demo-grains-fix-ops")  # another user's demo
    await admin.create_topic(kafka_bootstrap, bystander, 1)
    try:
        (tmp_path / "notes.txt").write_text("mine")
        result = cli("demo", "--bootstrap-servers", kafka_bootstrap, "--workdir", str(tmp_path))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"stream-replica: --workdir {tmp_path}: not empty and not made by the demo (no "
            f"{MARKER} in it; it holds notes.txt); the demo empties its workdir, so give a new "
            "or empty directory"
        ]
        assert (tmp_path / "notes.txt").read_text() == "mine"
        assert await admin.topic_partitions(kafka_bootstrap, bystander) == 1
    finally:
        await admin.delete_topic(kafka_bootstrap, bystander)


@pytest.mark.timeout(240)
async def test_a_second_run_deletes_the_first_runs_topics_only(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bystander = unique("demo-grains-fix-ops")
    await admin.create_topic(kafka_bootstrap, bystander, 1)
    workdir = tmp_path / "demo"
    run = ("demo", "--bootstrap-servers", kafka_bootstrap, "--workdir", str(workdir))
    first_topics: list[str] = []
    try:
        first = cli(*run, "--grains", "20", "--workers", "1", timeout=180)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "verified: all" in first.stderr
        first_topics = json.loads((workdir / MARKER).read_text())["topics"]
        assert len(first_topics) == 2
        for topic in first_topics:
            assert await admin.topic_partitions(kafka_bootstrap, topic) is not None
        second = cli(*run, "--grains", "5", "--workers", "1", timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        for topic in first_topics:
            assert await admin.topic_partitions(kafka_bootstrap, topic) is None, topic
        assert await admin.topic_partitions(kafka_bootstrap, bystander) == 1
    finally:
        recorded = json.loads((workdir / MARKER).read_text())["topics"]
        async with admin.admin_client(kafka_bootstrap) as client:
            existing = set(await client.list_topics())
            await client.delete_topics(
                [t for t in {bystander, *first_topics, *recorded} if t in existing]
            )
