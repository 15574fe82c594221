"""Files and folders of a site that only the server's user may open: 0600 and 0700.

Everything Domicile creates under the data folder is private, whatever the process's umask:
folders are made level by level with mode 0700, files are created with mode 0600 (SQLite's
`-wal`/`-shm`/journal files take the mode of their database file, so a database file made
here keeps its companions private too). `PRIVATE_UMASK` is the belt to those braces, for
anything a library creates. `tighten` is the check at start: it narrows whatever of Domicile's
own has been loosened since, and nothing else (the data folder may be shared, e.g. `.`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["FILE_MODE", "FOLDER_MODE", "PRIVATE_UMASK", "create_private_file",
           "folders_between", "make_private_dirs", "restrict_umask", "tighten",
           "written_whole"]

FILE_MODE = 0o600
FOLDER_MODE = 0o700
PRIVATE_UMASK = 0o077


def restrict_umask() -> None:
    """No group or other bits on anything this process creates from now on."""
    os.umask(PRIVATE_UMASK)


def make_private_dirs(folder: Path) -> None:
    """`mkdir -p` where every folder made is 0700 (`Path.mkdir(parents=True)` would give the
    parents the default mode). Existing folders are left as they are."""
    if folder.is_dir():
        return
    missing: list[Path] = []
    at = folder
    while not at.exists():
        missing.append(at)
        at = at.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=FOLDER_MODE)


def create_private_file(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists (before a library opens it)."""
    make_private_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))


def folders_between(root: Path, path: Path) -> Iterator[Path]:
    """The folders below `root` that hold `path` (neither of them included; none if `path`
    is not below `root`): those `make_private_dirs` made for it."""
    parent = path.parent
    while parent != root and parent.is_relative_to(root):
        yield parent
        parent = parent.parent


def tighten(paths: Iterable[Path], trees: Iterable[Path] = ()) -> tuple[int, int]:
    """Narrow files to 0600 and folders to 0700: each of `paths` (not what a folder holds)
    and each of `trees` with everything in it. Missing paths are skipped.

    Returns (tightened, failed): how many were looser, and how many of those could not be
    changed (not ours). Symbolic links are neither followed nor changed.
    """
    counts = [0, 0]
    for path in paths:
        _tighten_one(path, counts)
    for root in trees:
        _tighten_one(root, counts)
        if root.is_dir() and not root.is_symlink():
            for folder, folders, files in os.walk(root):
                for name in (*folders, *files):
                    _tighten_one(Path(folder, name), counts)
    return counts[0], counts[1]


def _tighten_one(path: Path, counts: list[int]) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        wanted = FOLDER_MODE
    elif stat.S_ISREG(mode):
        wanted = FILE_MODE
    else:
        return  # links, sockets: not ours to change
    if stat.S_IMODE(mode) & ~wanted == 0:
        return
    try:
        os.chmod(path, stat.S_IMODE(mode) & wanted)
    except OSError:
        counts[1] += 1
    else:
        counts[0] += 1


@contextlib.contextmanager
def written_whole(path: Path, *, replace: bool = True) -> Iterator[IO[str]]:
    """A text file written beside `path` (0600), synced, and put in place only once the block
    ends without an error: nothing is ever half-written. `replace=False` never overwrites a
    file (`FileExistsError`, even one made while this one was written)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # atomic, and refuses an existing file
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
