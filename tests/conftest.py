"""Shared fixtures: sites on SQLite and on a real PostgreSQL server, and a canary scanner."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from domicile.config import Settings, load_settings
from domicile.site import Site, init_site

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PG_ADMIN_URL = os.environ.get("DOMICILE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


class PostgresDatabases:
    """Creates throwaway databases (`domicile_test_<name>_<random>`) and drops them after."""

    def __init__(self) -> None:
        self._admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self._created: list[str] = []
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self._base = base.replace("postgresql+psycopg://", "postgresql://")

    def create(self, name: str) -> str:
        database = f"domicile_test_{name}_{secrets.token_hex(4)}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        self._created.append(database)
        return f"{self._base}/{database}"

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            for database in self._created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        self._admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    try:
        with databases._admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # the suite must run against PostgreSQL, never skip it
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    yield databases
    databases.drop_all()


SiteFactory = Callable[..., Site]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SiteFactory]:
    """`make_site(backend="sqlite"|"postgresql", port_base=...)` → an initialised, open Site."""
    sites: list[Site] = []

    def factory(backend: str = "sqlite", port_base: int = 18400) -> Site:
        root = tmp_path / f"site{len(sites)}"
        settings = init_site(root, port_base=port_base)
        if backend == "postgresql":
            settings = _move_to_postgres(settings, request.getfixturevalue("postgres"))
        site = Site(settings)
        site.migrate()
        sites.append(site)
        return site

    yield factory
    for site in sites:
        site.close()


def _move_to_postgres(settings: Settings, postgres: PostgresDatabases) -> Settings:
    config = settings.config_path
    body = config.read_text()
    body = body.replace('"sqlite:///directory.db"', f'"{postgres.create("dir")}"')
    for region in settings.regions:
        body = body.replace(f'"sqlite:///{region}/store.db"', f'"{postgres.create(region)}"')
    config.write_text(body)
    return load_settings(config)


@pytest.fixture
def site(make_site: SiteFactory, backend: str) -> Site:
    return make_site(backend)


def canary_forms(canary: str) -> list[bytes]:
    raw = canary.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode(), raw.decode().encode("utf-16-le")]
    # base64 of the canary at each of the three alignments it can take inside a longer text
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + raw)
        forms.append(encoded[4 if shift else 0: -4])
        encoded = base64.urlsafe_b64encode(b"\x00" * shift + raw)
        forms.append(encoded[4 if shift else 0: -4])
    return [f for f in forms if len(f) >= 8]


def scan_for_canary(roots: list[Path], canary: str) -> list[str]:
    """Every file under `roots` holding the canary in plain, hex or base64 form."""
    forms = canary_forms(canary)
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            for form in forms:
                if form in data:
                    hits.append(f"{path}: {form[:16]!r}")
    return hits
