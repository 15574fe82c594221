"""Blob stores: opaque (already encrypted) bytes by key, written atomically.

`FileBlobStore` is the embedded default: a temp file in the target folder, fsync, rename,
fsync of the folder, so a reader sees a whole blob or none. An S3 store fills the same
`BlobStore` protocol for deployments past one machine.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["FileBlobStore", "open_blob_store"]

KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
READ_SIZE = 1 << 16


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        if not KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        size = 0
        try:
            with open(temp, "xb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return size

    def get(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise KeyError(key) from None
        return _read(handle)

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


def _read(handle: object) -> Iterator[bytes]:
    with handle as stream:  # type: ignore[attr-defined]
        while chunk := stream.read(READ_SIZE):
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_blob_store(url: str) -> FileBlobStore:
    """The blob store a region's `blob_url` names (after config resolution)."""
    if url.startswith("file://"):
        return FileBlobStore(Path(url.removeprefix("file://")))
    raise NotImplementedError(f"blob store {url.split(':', 1)[0]}:// is not available yet")
