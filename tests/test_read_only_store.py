"""Readers (``ReplicaReader``; ``get``, ``dump``, ``checkpoints``, ``stats``) need read
permission on the store directory and nothing more: they write nothing into it, so a
read-only account or mount serves (README "Command line", Readers).

Root ignores file modes, and CI runs as root: there the tests check that the store tree is
left exactly as it was (no file created, removed or written), and run the command line as
``nobody`` (setpriv) where it can, so that the modes bind for real."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest

import stream_replica
from stream_replica import store_reader
from stream_replica.cli import main
from stream_replica.fold import FoldCounts, GrainState
from stream_replica.ownership import now_ms
from stream_replica.store import Checkpoint, ReplicaReader, ReplicaStore, Served, StoreError
from tests.helpers import without_report_age

ROOT = Path(stream_replica.__file__).resolve().parent.parent
NOBODY = 65534
# A time no write can give a file: every entry of a frozen store gets it (see _freeze)
FROZEN_NS = 1_000_000_000 * 10**9


def state(sequence: int, partition: int = 0) -> GrainState:
    return GrainState(sequence, 1000 + sequence, "eu", b"payload-%d" % sequence, partition, 10)


GRAINS = {("cart", "c/1"): state(3, 0), ("cart", "c/2"): state(5, 1), ("user", "u"): state(7, 1)}
CHECKPOINTS = {0: Checkpoint(11, 100), 1: Checkpoint(22, 200)}


def make_store(db: Path) -> None:
    store = ReplicaStore(db, "orders")
    try:
        store.apply(GRAINS, CHECKPOINTS, FoldCounts(records=9, applied=3))
        now = now_ms()
        store.set_served({0: Served("active", 0, 1, now), 1: Served("standby", 4, 1, now)})
    finally:
        store.close()


def _tree(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry of the tree: mode, size, mtime (ns). A file created, removed or written
    (its mtime: see _freeze), or a directory gaining or losing an entry, shows."""
    entries = {}
    for path in _tree(root):
        found = path.lstat()
        entries[str(path.relative_to(root))] = (found.st_mode, found.st_size, found.st_mtime_ns)
    return entries


@contextmanager
def frozen(root: Path) -> Iterator[None]:
    """The tree made read-only (``chmod -R a-w``), every mtime set to FROZEN_NS first, so
    that a write shows even within the clock tick of the last one; writable again after, so
    that the test's directory can be removed."""
    for path in _tree(root):
        os.utime(path, ns=(FROZEN_NS, FROZEN_NS))
    for path in reversed(_tree(root)):  # a directory's entries before the directory itself
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    try:
        yield
    finally:
        for path in _tree(root):
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)


def grain_line(grain: tuple[str, str], served: dict[str, object] | None) -> dict[str, object]:
    """What ``get`` and ``dump`` print for a grain of GRAINS."""
    held = GRAINS[grain]
    return {
        "grain_type": grain[0],
        "grain_key": grain[1],
        "sequence": held.sequence,
        "timestamp_millis": held.timestamp_millis,
        "source_cluster": "eu",
        "payload": base64.b64encode(held.payload).decode(),
        "partition": held.partition,
        "offset": 10,
        "served": served,
    }


ACTIVE = {"role": "active", "lag": 0, "caught_up": True}
STANDBY = {"role": "standby", "lag": 4, "caught_up": False}


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def lines(self) -> list[dict[str, object]]:
        assert self.code == 0, self.err
        return [without_report_age(json.loads(line)) for line in self.out.splitlines()]


def run_here(*argv: str) -> Ran:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return Ran(code, out.getvalue(), err.getvalue())


Runner = Callable[..., Ran]


def check_cli_answers(run: Runner, db: Path) -> None:
    """get, dump, checkpoints and stats answer from the store ``make_store`` made."""
    assert run("get", "--db", str(db), "cart", "c/2").lines() == [
        grain_line(("cart", "c/2"), STANDBY)
    ]
    assert run("dump", "--db", str(db)).lines() == [
        grain_line(("cart", "c/1"), ACTIVE),
        grain_line(("cart", "c/2"), STANDBY),
        grain_line(("user", "u"), STANDBY),
    ]
    assert run("checkpoints", "--db", str(db)).lines() == [
        {
            "topic": "orders",
            "partitions": {"0": 11, "1": 22},
            "served": {"0": ACTIVE, "1": STANDBY},
        }
    ]
    (stats,) = run("stats", "--db", str(db)).lines()
    assert (stats["topic"], stats["records"], stats["applied"]) == ("orders", 9, 3)


# --- any account: the store tree is left as it was -------------------------------------------


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir the readers put their scratch directories in, this test's own."""
    place = tmp_path / "tmp"
    place.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(place))
    return place


def test_the_reader_api_writes_nothing_into_a_read_only_store(
    tmp_path: Path, scratch_tmp: Path
) -> None:
    db = tmp_path / "db"
    make_store(db)
    with frozen(db):
        before = listing(db)
        with ReplicaReader(db) as reader:
            assert reader.topic == "orders"
            assert reader.get(("user", "u")) == GRAINS[("user", "u")]
            assert reader.get(("user", "nope")) is None
            assert dict(reader.grains()) == GRAINS
            assert reader.checkpoints() == CHECKPOINTS
            assert reader.served()[1].role == "standby" and reader.served()[1].lag == 4
            assert reader.counts().records == 9
            # what the reader writes (rocksdict's config, RocksDB's info log) is in its scratch
            assert list(scratch_tmp.iterdir()) != []
        after = listing(db)
    assert after == before
    assert list(scratch_tmp.iterdir()) == []  # removed at close


def test_the_cli_readers_write_nothing_into_a_read_only_store(
    tmp_path: Path, scratch_tmp: Path
) -> None:
    db = tmp_path / "db"
    make_store(db)
    with frozen(db):
        before = listing(db)
        check_cli_answers(run_here, db)
        after = listing(db)
    assert after == before
    assert list(scratch_tmp.iterdir()) == []


def test_readers_see_what_a_writer_still_open_wrote(tmp_path: Path) -> None:
    """The normal case: the worker holds the store open. Readers see its writes whether
    they are in table files or only in the write-ahead log, and its reopening (a new
    MANIFEST) does not stop them."""
    db = tmp_path / "db"
    make_store(db)
    store = ReplicaStore(db, "orders")  # reopened: a new MANIFEST
    try:
        store.apply({("cart", "c/9"): state(9)}, {0: Checkpoint(12, 101)}, FoldCounts())
        with ReplicaReader(db) as reader:  # c/9 only in the WAL
            assert reader.get(("cart", "c/9")) == state(9)
            assert reader.checkpoints()[0] == Checkpoint(12, 101)
        asyncio.run(store.flush_async())
        store.apply({("cart", "c/9"): None}, {0: Checkpoint(13, 102)}, FoldCounts())
        with ReplicaReader(db) as reader:  # c/9 in a table file, its deletion in the WAL
            assert reader.get(("cart", "c/9")) is None
            assert reader.checkpoints()[0] == Checkpoint(13, 102)
            assert dict(reader.grains()) == GRAINS
        assert run_here("checkpoints", "--db", str(db)).lines()[0]["partitions"] == {
            "0": 13,
            "1": 22,
        }
    finally:
        store.close()


# --- an account without write permission, for real -------------------------------------------


@pytest.fixture
def as_reader(tmp_path: Path) -> Iterator[tuple[Path, Runner]]:
    """A directory for a store and how to run the CLI as an account that may not write in
    it: this process when it is not root (modes bind it), else ``nobody`` in a subprocess
    (setpriv), the store directory in a temp dir ``nobody`` can reach. Skipped when root
    cannot become ``nobody`` or ``nobody`` cannot import this checkout."""
    if os.geteuid() != 0:
        yield tmp_path, run_here
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot read as an account without write")
    command = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run(
        [*command, sys.executable, "-c", "import stream_replica.cli"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout's CLI: {probe.stderr.strip()[-200:]}")

    def run_as_nobody(*argv: str) -> Ran:
        done = subprocess.run(
            [*command, sys.executable, "-m", "stream_replica", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            timeout=120,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    place = Path(tempfile.mkdtemp(prefix="stream-replica-ro-test-"))
    place.chmod(0o755)
    try:
        yield place, run_as_nobody
    finally:
        shutil.rmtree(place)


def _writable(root: Path) -> None:
    for path in _tree(root):
        path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IRWXU)


def test_an_account_without_write_permission_runs_every_cli_reader(
    as_reader: tuple[Path, Runner],
) -> None:
    place, run = as_reader
    db = place / "db"
    make_store(db)
    with frozen(db):
        check_cli_answers(run, db)


def test_an_account_without_write_permission_reads_while_the_writer_runs(
    as_reader: tuple[Path, Runner],
) -> None:
    """The sidecar case: the worker writes the store, the reader may only read it. (Not as
    root, reader and writer are one account: then only the live writer is tested.)"""
    place, run = as_reader
    db = place / "db"
    make_store(db)
    store = ReplicaStore(db, "orders")
    try:
        store.apply({("cart", "c/9"): state(9)}, {0: Checkpoint(12, 101)}, FoldCounts())
        got = run("get", "--db", str(db), "cart", "c/9").lines()
        assert got[0]["sequence"] == 9
        assert run("checkpoints", "--db", str(db)).lines()[0]["partitions"] == {
            "0": 12,
            "1": 22,
        }
    finally:
        store.close()


@pytest.mark.parametrize(
    ("pattern", "mode", "message"),
    [
        (".", 0o311, "no read permission on the directory"),
        (".", 0o644, "no execute (search) permission on the directory"),
        ("CURRENT", 0o200, "no read permission on {db}/CURRENT"),
        ("*.sst", 0o200, "no read permission on {db}/0"),  # table files: 000009.sst, ...
    ],
)
def test_a_store_the_reader_cannot_read_is_one_clear_line(
    as_reader: tuple[Path, Runner], pattern: str, mode: int, message: str
) -> None:
    place, run = as_reader
    db = place / "db"
    make_store(db)
    targets = [db] if pattern == "." else list(db.glob(pattern))
    assert targets, pattern
    for target in targets:
        target.chmod(mode)
    try:
        failed = run("checkpoints", "--db", str(db))
    finally:
        _writable(db)
    assert failed.code == 2 and failed.out == ""
    assert failed.err.count("\n") == 1, failed.err
    expected = f"stream-replica: cannot read state directory {db}: " + message.format(db=db)
    assert failed.err.startswith(expected), failed.err


def test_a_reader_error_does_not_leave_its_scratch_behind(
    tmp_path: Path, scratch_tmp: Path
) -> None:
    db = tmp_path / "db"
    make_store(db)
    (db / "CURRENT").write_text("MANIFEST-999999\n")  # names a MANIFEST that is not there
    with pytest.raises(StoreError, match=f"cannot open state directory {db}: "):
        ReplicaReader(db)
    assert list(scratch_tmp.iterdir()) == []


def _writer_reopening(
    db: Path, monkeypatch: pytest.MonkeyPatch, times: int
) -> list[frozenset[str]]:
    """Each of the reader's first ``times`` links is followed by the writer opening the store
    (as a restarted worker does): RocksDB then starts a new MANIFEST and deletes the one just
    linked. The MANIFEST names each link saw are returned."""
    linked: list[frozenset[str]] = []
    link = store_reader._link_state_files

    def link_then_writer_opens(store: str, stand_in: str) -> frozenset[str]:
        manifests = link(store, stand_in)
        linked.append(manifests)
        if len(linked) <= times:
            ReplicaStore(db, "orders").close()
        return manifests

    monkeypatch.setattr(store_reader, "_link_state_files", link_then_writer_opens)
    return linked


def test_a_reader_links_again_when_the_writer_starts_a_new_manifest(
    tmp_path: Path, scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    make_store(db)
    linked = _writer_reopening(db, monkeypatch, times=2)
    reader = ReplicaReader(db)
    try:
        assert reader.checkpoints() == CHECKPOINTS
        assert reader.get(next(iter(GRAINS))) == next(iter(GRAINS.values()))
    finally:
        reader.close()
    assert len(linked) == 3 and len(set(linked)) == 3, linked
    assert list(scratch_tmp.iterdir()) == []


def test_a_reader_racing_a_writer_gives_up_with_one_line(
    tmp_path: Path, scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    make_store(db)
    linked = _writer_reopening(db, monkeypatch, times=store_reader._OPEN_ATTEMPTS)
    with pytest.raises(StoreError, match=f"cannot open state directory {db}: ") as failed:
        ReplicaReader(db)
    assert "\n" not in str(failed.value)
    assert len(linked) == store_reader._OPEN_ATTEMPTS
    assert list(scratch_tmp.iterdir()) == []


def test_the_cli_readers_work_on_a_read_only_mount(tmp_path: Path) -> None:
    """A read-only bind mount of the store (as a sidecar mounting the worker's volume
    ``readOnly``): root is refused writes there too. Needs root and ``unshare``."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("a read-only mount needs root and unshare")
    db, mount = tmp_path / "db", tmp_path / "mnt"
    make_store(db)
    mount.mkdir()
    # the mount lives in a private mount namespace, gone when the command exits
    script = (
        'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" || exit 98; '
        'if touch "$2/probe" 2>/dev/null; then exit 97; fi; shift 2; exec "$@"'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run_on_mount(*argv: str) -> Ran:
        command = [unshare, "-m", "sh", "-c", script, "sh", str(db), str(mount)]
        done = subprocess.run(
            [*command, sys.executable, "-m", "stream_replica", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if done.returncode == 98:
            pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
        assert done.returncode != 97, "the read-only mount took a write"
        return Ran(done.returncode, done.stdout, done.stderr)

    before = listing(db)
    check_cli_answers(run_on_mount, mount)
    assert listing(db) == before


def test_a_served_record_its_worker_stopped_rewriting_is_stale() -> None:
    """A killed worker's records said "active, caught up" for ever: `get` on its store
    claimed a fresh copy while the topic had moved on. A running worker rewrites them at
    least every 10 s; one older than 30 s is never caught up."""
    now = now_ms()
    assert Served("active", 0, 1, now - 1_000).caught_up
    dead = Served("active", 0, 1, now - 31_000)
    assert dead.stale and not dead.caught_up and dead.age_ms(now) == 31_000
    assert not Served("", 0, 1, now - 31_000).stale  # not served: nothing to be stale about
