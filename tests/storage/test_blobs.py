"""The file blob store: atomic writes, staged writes invisible until committed, safe keys,
private modes, and the sweep of temp files that crashed writers left."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from domicile.storage.blobs import FileBlobStore


def test_put_get_delete(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    assert store.put("t/file/a", [b"one", b"two"]) == 6
    assert b"".join(store.get("t/file/a")) == b"onetwo"
    assert list(store.keys("t/")) == ["t/file/a"]
    assert store.delete("t/file/a") and not store.exists("t/file/a")
    with pytest.raises(KeyError):
        store.get("t/file/a")


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    store.put("t/file/a", [b"old"])

    def broken() -> Iterator[bytes]:
        yield b"new"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.put("t/file/a", broken())
    assert b"".join(store.get("t/file/a")) == b"old"
    assert sorted(p.name for p in (tmp_path / "blobs" / "t" / "file").iterdir()) == ["a"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "a b"])
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        FileBlobStore(tmp_path).put(key, [b"x"])


def test_a_staged_blob_is_invisible_until_committed(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    pending = store.stage("t/file/a", [b"one", b"two"])
    assert pending.size == 6
    assert not store.exists("t/file/a") and list(store.keys()) == []
    pending.commit()
    assert b"".join(store.get("t/file/a")) == b"onetwo"
    assert [p.name for p in (tmp_path / "blobs" / "t" / "file").iterdir()] == ["a"]


def test_a_staged_files_descriptor_is_closed_once_whoever_releases_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancelled upload's commit thread and the upload's own discard release at once: the
    second must not close the fd again (by then it may be another file's). The discard is run,
    on its own thread, at the worst moment: while the commit is closing the fd."""
    store = FileBlobStore(tmp_path / "blobs")
    pending = store.stage("t/file/a", [b"x"])
    staged_fd = pending._fd
    staged = os.fstat(staged_fd)
    real_close = os.close
    closes: list[int] = []

    def is_staged(fd: int) -> bool:
        """The staged file's fd (not another file's that reused its number later), or an fd
        closed already."""
        try:
            found = os.fstat(fd)
        except OSError:
            return True
        return (found.st_dev, found.st_ino) == (staged.st_dev, staged.st_ino)

    def close(fd: int) -> None:
        if fd == staged_fd and is_staged(fd):
            closes.append(fd)
            if len(closes) == 1:
                racing = threading.Thread(target=pending.discard)
                racing.start()
                racing.join(timeout=30)
                assert not racing.is_alive()
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    pending.commit()
    pending.discard()
    monkeypatch.undo()
    assert closes == [staged_fd]


def test_a_discarded_blob_leaves_nothing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    pending = store.stage("t/file/a", [b"x" * 100_000])
    pending.discard()
    pending.discard()  # idempotent
    assert list((tmp_path / "blobs" / "t" / "file").iterdir()) == []


def test_the_sweep_takes_abandoned_temp_files_only(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    store.put("t/file/kept", [b"kept"])
    live = store.stage("t/file/live", [b"a write in progress"])  # its writer holds the lock
    folder = tmp_path / "blobs" / "t" / "file"
    abandoned = [folder / ".dead.0123456789ab.tmp", tmp_path / "blobs" / ".x.fedcba987654.tmp"]
    for path in abandoned:
        path.write_bytes(b"left by a crash")  # nobody holds it: its writer is gone
    (folder / ".not-a-temp").write_bytes(b"")
    assert store.sweep_staged() == 2
    assert not any(path.exists() for path in abandoned)
    assert (folder / ".not-a-temp").exists()
    live.commit()
    assert sorted(store.keys()) == ["t/file/kept", "t/file/live"]


def test_blob_files_and_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = FileBlobStore(tmp_path / "blobs")
        store.put("t/file/a", [b"x"])
        pending = store.stage("t/file/b", [b"y"])
        temps = [p for p in (tmp_path / "blobs" / "t" / "file").iterdir() if p.name[0] == "."]
        modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
                 for p in [*temps, *(tmp_path / "blobs").rglob("*"), tmp_path / "blobs"]}
        pending.discard()
    finally:
        os.umask(old)
    assert len(temps) == 1
    assert modes == {name: 0o700 if (tmp_path / name).is_dir() else 0o600 for name in modes}


@pytest.mark.parametrize("key", [".hidden", "t/.a.0123456789ab.tmp", "t/file/.x"])
def test_keys_cannot_take_the_names_of_temp_files(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        FileBlobStore(tmp_path).put(key, [b"x"])
