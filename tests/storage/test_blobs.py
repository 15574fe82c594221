"""The blob stores, file and S3 (moto's server mode, an emulator), by the same tests: atomic
writes, staged writes invisible until committed, safe keys, ranged reads; then the file store's
own: private modes, the sweep of temp files that crashed writers left, a staged file's fd.
(The S3 store's own tests: tests/storage/test_s3.py.)"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from domicile.storage.blobs import FileBlobStore, open_blob_store
from domicile.storage.interfaces import BlobStore
from domicile.storage.s3 import S3BlobStore


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each store in turn: a folder's, and a fresh bucket's on moto's S3 emulator."""
    if request.param == "file":
        return open_blob_store(f"file://{tmp_path / 'blobs'}")
    return open_blob_store(request.getfixturevalue("s3_bucket"))


def staged_leftovers(store: BlobStore) -> list[str]:
    """What staged writes left in the store: temp files, or multipart uploads."""
    if isinstance(store, FileBlobStore):
        return [p.name for p in store.root.rglob(".*")]
    assert isinstance(store, S3BlobStore)
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [upload["Key"] for upload in uploads]


def test_put_get_delete(store: BlobStore) -> None:
    assert store.put("t/file/a", [b"one", b"two"]) == 6
    assert b"".join(store.get("t/file/a")) == b"onetwo"
    assert list(store.keys("t/")) == ["t/file/a"]
    assert list(store.keys("u/")) == []
    assert store.delete("t/file/a") and not store.exists("t/file/a")
    assert not store.delete("t/file/a")
    with pytest.raises(KeyError):
        store.get("t/file/a")


def test_keys_are_listed_in_order_under_their_prefix(store: BlobStore) -> None:
    for key in ["t/file/b", "t/file/a", "t/image/c", "u/file/d"]:
        store.put(key, [key.encode()])
    assert list(store.keys()) == ["t/file/a", "t/file/b", "t/image/c", "u/file/d"]
    assert list(store.keys("t/file/")) == ["t/file/a", "t/file/b"]


@pytest.mark.parametrize("size", [0, 1, 65536, 200_001])
def test_sizes_round_trip_in_bounded_chunks(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    assert store.put("t/file/a", [data[i:i + 7000] for i in range(0, size, 7000)]) == size
    chunks = list(store.get("t/file/a"))
    assert b"".join(chunks) == data
    assert all(len(chunk) <= 1 << 16 for chunk in chunks)


def test_a_failed_write_leaves_nothing_behind(store: BlobStore) -> None:
    store.put("t/file/a", [b"old"])

    def broken() -> Iterator[bytes]:
        yield b"new"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.put("t/file/a", broken())
    assert b"".join(store.get("t/file/a")) == b"old"
    assert list(store.keys()) == ["t/file/a"] and staged_leftovers(store) == []


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "a b", "", "a/"])
def test_keys_cannot_escape_the_root(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, [b"x"])
    with pytest.raises(ValueError):
        store.get(key)


def test_a_staged_blob_is_invisible_until_committed(store: BlobStore) -> None:
    pending = store.stage("t/file/a", [b"one", b"two"])
    assert pending.size == 6
    assert not store.exists("t/file/a") and list(store.keys()) == []
    with pytest.raises(KeyError):
        store.get("t/file/a")
    pending.commit()
    assert b"".join(store.get("t/file/a")) == b"onetwo"
    assert list(store.keys()) == ["t/file/a"] and staged_leftovers(store) == []


def test_a_discarded_blob_leaves_nothing(store: BlobStore) -> None:
    pending = store.stage("t/file/a", [b"x" * 100_000])
    pending.discard()
    pending.discard()  # idempotent
    assert list(store.keys()) == [] and staged_leftovers(store) == []
    assert not store.exists("t/file/a")


def test_a_commit_replaces_the_blob_there(store: BlobStore) -> None:
    store.put("t/file/a", [b"old"])
    pending = store.stage("t/file/a", [b"new"])
    assert b"".join(store.get("t/file/a")) == b"old"
    pending.commit()
    assert b"".join(store.get("t/file/a")) == b"new"


@pytest.mark.parametrize(("start", "end"), [
    (0, None), (0, 0), (1, 2), (65535, 65537), (70_000, None), (0, 200_000), (199_999, None),
    (200_000, None), (250_000, None), (5, 250_000), (200_000, 200_000),
])
def test_ranged_reads(store: BlobStore, start: int, end: int | None) -> None:
    data = os.urandom(200_000)
    store.put("t/file/a", [data])
    chunks = list(store.get("t/file/a", start, end))
    assert b"".join(chunks) == data[start:end]
    assert all(len(chunk) <= 1 << 16 for chunk in chunks)


def test_ranged_reads_of_an_empty_or_absent_blob(store: BlobStore) -> None:
    store.put("t/file/empty", [])
    assert b"".join(store.get("t/file/empty", 0, 10)) == b""
    assert b"".join(store.get("t/file/empty", 3)) == b""
    for start, end in [(0, None), (0, 0), (5, 9)]:
        with pytest.raises(KeyError):
            store.get("t/file/none", start, end)


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4)])
def test_a_range_must_be_one(store: BlobStore, start: int, end: int | None) -> None:
    store.put("t/file/a", [b"abcdef"])
    with pytest.raises(ValueError):
        store.get("t/file/a", start, end)


@pytest.mark.parametrize("key", [".hidden", "t/.a.0123456789ab.tmp", "t/file/.x"])
def test_keys_cannot_take_the_names_of_temp_files(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, [b"x"])


# -- the file store's own ------------------------------------------------------------------


def test_a_failed_file_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    store.put("t/file/a", [b"old"])

    def broken() -> Iterator[bytes]:
        yield b"new"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.put("t/file/a", broken())
    assert sorted(p.name for p in (tmp_path / "blobs" / "t" / "file").iterdir()) == ["a"]


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
