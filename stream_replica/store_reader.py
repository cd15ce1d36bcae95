"""The replica store's reader: a read-only view of a store that a worker may be writing,
which writes nothing into the store directory."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Final

from rocksdict import AccessType, DBPath, Rdict

from stream_replica import store_options
from stream_replica.store_options import _open_error
from stream_replica.store_records import StoreError
from stream_replica.store_view import _StoreView


class ReplicaReader(_StoreView):
    """Read-only view that works while a worker writes the same directory: a RocksDB
    *secondary* instance (files kept open), caught up with the writer once at open, so
    compactions by the writer cannot pull files from under it.

    It writes nothing into the store directory, so read permission on it and its files is
    all it needs (a read-only account or mount). RocksDB is pointed at a stand-in directory
    in a scratch directory under the temp dir, removed at close: rocksdict (0.3.29) writes
    its ``rocksdict-config.json`` into the directory it opens, whatever the access type, and
    the secondary instance keeps its info log in its own directory. The stand-in holds links
    to the files that name the store's state (CURRENT, IDENTITY, MANIFEST); table files and
    write-ahead logs are read from the store directory itself (``db_paths``, ``wal_dir``), so
    files the writer creates meanwhile are found."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        _check_readable(self.path)
        try:
            self._scratch = tempfile.mkdtemp(prefix="stream-replica-reader-")
        except OSError as exc:
            raise StoreError(
                f"cannot make a reader's scratch directory under {tempfile.gettempdir()} "
                f"(set TMPDIR to a writable directory): {exc}"
            ) from None
        try:
            self._db = self._open_secondary()
            self._check_format()
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise

    def _open_secondary(self) -> Rdict:
        store = os.path.abspath(self.path)
        attempt = 0
        while True:
            attempt += 1
            stand_in = os.path.join(self._scratch, f"db-{attempt}")
            manifests = _link_state_files(store, stand_in)
            options = store_options._options()
            options.create_if_missing(False)
            options.set_max_open_files(-1)  # required by secondary instances
            options.set_wal_dir(store)
            options.set_db_paths([DBPath(store, _NO_SIZE_LIMIT)])
            secondary = os.path.join(self._scratch, f"secondary-{attempt}")
            try:
                db = Rdict(stand_in, options, access_type=AccessType.secondary(secondary))
                try:
                    db.try_catch_up_with_primary()
                except BaseException:
                    db.close()
                    raise
                return db
            except Exception as exc:
                # The writer started a new MANIFEST after the links were made (it does at
                # each open): link again.
                if attempt < _OPEN_ATTEMPTS and _manifests(store) != manifests:
                    continue
                raise _reader_open_error(self.path, stand_in, exc) from None

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)


# Opens a reader tries, linking the MANIFESTs again each time the writer started a new one
# meanwhile (ReplicaReader._open_secondary); that is rare (the writer's open, a huge MANIFEST).
_OPEN_ATTEMPTS: Final = 5
# db_paths' target size: only matters to a writer placing new files
_NO_SIZE_LIMIT: Final = 1 << 62
_DENIED: Final = re.compile(r"(\S+): Permission denied")


def _check_readable(path: Path) -> None:
    """StoreError (one line) unless ``path`` is a store whose directory this process may
    list and whose files it may open."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(f"no replica store at {path}") from None
    except PermissionError:
        raise StoreError(
            f"cannot read state directory {path}: no read permission on the directory "
            "(readers need read and execute on it and read on its files)"
        ) from None
    if "CURRENT" not in names:
        raise StoreError(f"no replica store at {path}")
    try:
        (path / "CURRENT").stat()
    except PermissionError:
        raise StoreError(
            f"cannot read state directory {path}: no execute (search) permission on the "
            "directory (readers need read and execute on it and read on its files)"
        ) from None
    try:
        with (path / "CURRENT").open("rb"):
            pass
    except PermissionError:
        raise StoreError(
            f"cannot read state directory {path}: no read permission on {path / 'CURRENT'} "
            "(readers need read on every file of the store)"
        ) from None


def _manifests(store: str) -> frozenset[str]:
    return frozenset(name for name in os.listdir(store) if name.startswith("MANIFEST-"))


def _link_state_files(store: str, stand_in: str) -> frozenset[str]:
    """Make ``stand_in`` a directory of symlinks to the files of ``store`` that a secondary
    instance opens by the DB's name (the rest it finds through db_paths and wal_dir). CURRENT
    is a link, so that it names the writer's MANIFEST of the moment. The MANIFEST names
    linked are returned."""
    os.mkdir(stand_in)
    names = os.listdir(store)
    manifests = frozenset(name for name in names if name.startswith("MANIFEST-"))
    for name in names:
        if name in ("CURRENT", "IDENTITY") or name in manifests:
            os.symlink(os.path.join(store, name), os.path.join(stand_in, name))
    return manifests


def _reader_open_error(path: Path, stand_in: str, exc: Exception) -> StoreError:
    # RocksDB names the file it opened, a stand-in link or not: name the store's file
    text = str(exc).replace(stand_in, os.path.abspath(path))
    denied = _DENIED.search(text)
    if denied is not None:
        return StoreError(
            f"cannot read state directory {path}: no read permission on {denied.group(1)} "
            "(readers need read on every file of the store)"
        )
    return _open_error(path, Exception(text))
