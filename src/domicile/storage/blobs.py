"""Blob stores: opaque (already encrypted) bytes by key, written atomically.

`FileBlobStore` is the embedded default. A write is staged first: its bytes go to a temp file
beside the key (`.<name>.<12 hex>.tmp`, mode 0600, locked by its writer) and are fsynced;
committing renames the temp file into place and fsyncs the folder, so a reader sees a whole
blob or none, and a staged write that is never committed is never seen. Temp files whose
writer died (a crash, kill -9) are removed by `sweep_staged`; a live writer holds its temp
file's lock, so a sweep never takes a write in progress. `open_blob_store` opens it for
`file://`, and the S3-compatible store (domicile.storage.s3) for `s3://`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from domicile.errors import ConfigError
from domicile.storage.interfaces import BlobStore, PendingBlob
from domicile.storage.private import FILE_MODE, make_private_dirs

__all__ = ["FileBlobStore", "PendingFile", "check_range", "open_blob_store"]

# No segment starts with a dot: those names are the store's own (temp files).
KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
TEMP_NAME = re.compile(r"^\.[A-Za-z0-9_-][A-Za-z0-9_.-]*\.[0-9a-f]{12}\.tmp$")
READ_SIZE = 1 << 16
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class PendingFile:
    """A staged write: the whole blob in a locked temp file, not yet under its key."""

    def __init__(self, key: str, path: Path, temp: Path, fd: int, size: int) -> None:
        self.key = key
        self.size = size
        self._path = path
        self._temp = temp
        self._fd = fd  # open, and locked, until committed or discarded
        # A cancelled commit's thread and the upload's own discard can release at once: the
        # fd is taken under the lock, so it is closed once (never a reused fd of another).
        self._fd_lock = threading.Lock()

    def commit(self) -> None:
        """Make the staged bytes the blob of `key` (replacing any blob there)."""
        os.replace(self._temp, self._path)
        self._release()
        _fsync_dir(self._path.parent)

    def discard(self) -> None:
        """Remove the staged bytes (idempotent; what cannot be removed now, a sweep will)."""
        with contextlib.suppress(OSError):
            self._temp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        with self._fd_lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:  # an abandoned stage leaves its temp file to the sweep
        self._release()


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        make_private_dirs(root)

    def _path(self, key: str) -> Path:
        if not KEY.match(key):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def stage(self, key: str, chunks: Iterable[bytes]) -> PendingFile:
        """Write `chunks` to a temp file beside `key`, fsynced; nothing is visible yet."""
        path = self._path(key)
        make_private_dirs(path.parent)
        temp, fd = _create_temp(path)
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                size += len(chunk)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        return PendingFile(key, path, temp, fd, size)

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        return committed(self.stage(key, chunks))

    def get(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The blob's bytes `[start, end)` (to its end if `end` is None; none past its end);
        KeyError if there is none."""
        check_range(start, end)
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise KeyError(key) from None
        if start:
            handle.seek(start)
        return _read(handle, None if end is None else end - start)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str = "") -> Iterator[str]:
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def sweep_staged(self) -> int:
        """Remove the temp files of writers that are gone; returns how many were removed."""
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if TEMP_NAME.match(name) and _remove_if_abandoned(Path(folder, name)):
                    removed += 1
        return removed


def committed(pending: PendingBlob) -> int:
    """Commit a staged write (discarding it if the commit fails); its size. Every store's
    `put` is its `stage` then this."""
    try:
        pending.commit()
    except BaseException:
        pending.discard()
        raise
    return pending.size


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new temp file for `path`, open and locked by us."""
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(temp, _CREATE, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A sweep may have taken the file between its creation and our lock: start over.
            if os.fstat(fd).st_nlink:
                return temp, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _remove_if_abandoned(temp: Path) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # gone meanwhile (committed or discarded), or not a plain file
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive
        temp.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def check_range(start: int, end: int | None) -> None:
    """ValueError unless `[start, end)` is a range of byte offsets (`end` None: to the end)."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range [{start}, {end})")


def _read(handle: BinaryIO, remaining: int | None) -> Iterator[bytes]:
    with handle as stream:
        while remaining is None or remaining > 0:
            chunk = stream.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_blob_store(url: str, *, field: str = "blob_url") -> BlobStore:
    """The blob store a region's `blob_url` names (after config resolution); `field` names
    the setting in errors."""
    if url.startswith("file://"):
        return FileBlobStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        from domicile.storage.s3 import S3BlobStore

        return S3BlobStore.from_url(url, field=field)
    raise ConfigError(field, f"unsupported blob store {url.split(':', 1)[0]}://")
