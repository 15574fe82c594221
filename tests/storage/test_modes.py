"""Every file a site keeps is 0600 and every folder 0700 (SQLite databases and their -wal and
-shm files, blob files and their folders), whatever the umask; anything loosened since is
tightened when a site is opened for serving, and leftover temp blobs are swept then."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from domicile.errors import ConfigError
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from tests.conftest import SiteFactory


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that would leave files 0644 and folders 0755, as a careless shell has."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _loose(root: Path) -> dict[str, str]:
    """Every file not 0600 and every folder not 0700 under `root`, with its mode."""
    found = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            found[path.relative_to(root).as_posix()] = oct(mode)
    return found


def _write_content(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    tenant = TenantRef(project.id, "eu", org.id)
    store = site.store("eu")
    store.put_record(tenant, "response", "resp_1", b"kept")
    store.put_blob(tenant, "file", "file-1", "a.txt", [b"x" * 70_000])
    store.write_usage([])


def test_a_site_keeps_every_file_private(make_site: SiteFactory,
                                         permissive_umask: None) -> None:
    site = make_site("sqlite")
    os.umask(0o022)  # opening the site narrowed it: widen it again, modes must not depend on it
    _write_content(site)
    root = site.settings.data_dir
    names = {p.name for p in root.rglob("*")}
    assert {"store.db", "store.db-wal", "store.db-shm", "directory.db-wal", "blobs"} <= names
    assert _loose(root) == {}


def test_loosened_modes_are_tightened_and_temp_blobs_swept_at_start(
        make_site: SiteFactory, caplog: pytest.LogCaptureFixture) -> None:
    site = make_site("sqlite")
    _write_content(site)
    root = site.settings.data_dir
    blob_dir = root / "eu" / "blobs"
    leftover = next(p for p in blob_dir.rglob("*") if p.is_file()).with_name(
        ".file-2.0123456789ab.tmp")
    leftover.write_bytes(b"an upload a crash interrupted")
    loosened = [root / "eu" / "store.db", root / "directory.db-wal", blob_dir,
                next(p for p in blob_dir.rglob("*") if p.name == "file-1")]
    for path in loosened:
        path.chmod(0o755 if path.is_dir() else 0o644)
    caplog.set_level(logging.INFO, logger="domicile.site")

    site.open_for_serving()

    assert _loose(root) == {}
    assert not leftover.exists()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert "4 files and folders were looser than 0600/0700" in lines[0]
    assert "region eu: removed 1 temporary blobs" in lines[1]
    assert str(root) not in caplog.text and "file-1" not in caplog.text


def test_a_tidy_site_opens_with_one_quiet_line(make_site: SiteFactory,
                                               caplog: pytest.LogCaptureFixture) -> None:
    site = make_site("sqlite")
    caplog.set_level(logging.INFO, logger="domicile.site")
    site.open_for_serving()
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_only_the_sites_own_files_are_tightened(make_site: SiteFactory,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """`data_dir = "."` beside the config: the folder may be a repository or under /etc.
    What Domicile keeps there is tightened; a script, a folder of someone else's, and the
    data folder itself keep their modes."""
    site = make_site("sqlite")
    _write_content(site)
    root = site.settings.data_dir
    root.chmod(0o755)
    script = root / "deploy.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    foreign = root / "docs"
    foreign.mkdir(mode=0o755)
    foreign.chmod(0o755)
    (foreign / "notes.txt").write_text("read me")
    (foreign / "notes.txt").chmod(0o644)
    foreign_modes = {p: stat.S_IMODE(p.stat().st_mode)
                     for p in (root, script, foreign, foreign / "notes.txt")}
    own = [root / "eu", root / "eu" / "store.db",
           root / "eu" / "kek.key.keystore.db", root / "directory.db-wal",
           root / "us" / "blobs"]
    for path in own:
        path.chmod(0o755)
    caplog.set_level(logging.INFO, logger="domicile.site")

    site.open_for_serving()

    assert {p: stat.S_IMODE(p.stat().st_mode) for p in foreign_modes} == foreign_modes
    assert _loose(root) == {".": "0o755", "deploy.sh": "0o755", "docs": "0o755",
                            "docs/notes.txt": "0o644"}
    assert f"{len(own)} files and folders were looser" in caplog.records[0].getMessage()


@pytest.mark.parametrize("key", ["eu/kek.key", "directory.key", "us/audit-signing.key"])
def test_a_key_others_may_read_is_refused_not_tightened(make_site: SiteFactory,
                                                        key: str) -> None:
    """G5: a key file that was readable may have been copied: serving is refused with the file
    named, and its mode is left for the operator to see (never tightened silently)."""
    site = make_site("sqlite")
    site.check_key_files()  # a fresh site's keys are 0600
    path = site.settings.data_dir / key
    if not path.exists():
        path.write_bytes(b"\0" * 32)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600") as refused:
        site.check_key_files()
    assert str(path) in str(refused.value)
    site.open_for_serving()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
