"""The file blob store: atomic writes, safe keys."""

from __future__ import annotations

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
