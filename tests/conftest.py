"""Shared fixtures: sites on SQLite and on a real PostgreSQL server (a throwaway one unless
DOMICILE_TEST_POSTGRES_URL names one; see tests/pgserver.py), and a canary scanner."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from domicile.config import Settings, load_settings
from domicile.site import Site, init_site
from tests.pgserver import (
    PostgresDatabases,
    PostgresFailed,
    PostgresUnavailable,
    ThrowawayPostgres,
)
from tests.services import MotoServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# moto (S3, KMS) and Redis fixtures: tests/services.py
pytest_plugins = ["tests.services"]

BACKENDS = ("sqlite", "postgresql")
# An admin URL of a server to use instead of a throwaway one (DOMICILE_TEST_PG: its old name).
POSTGRES_URL_ENV = ("DOMICILE_TEST_POSTGRES_URL", "DOMICILE_TEST_PG")
HOW_TO_GET_POSTGRES = (
    "install PostgreSQL's server binaries (Debian: `apt-get install postgresql`; no running "
    f"server needed) or set {POSTGRES_URL_ENV[0]} to an admin URL such as "
    "postgresql://postgres@127.0.0.1:5432/postgres")


SKIP_PREFIX = "PostgreSQL tests not run: "


def _postgres_missing(reason: str) -> NoReturn:
    """Skip the test, loudly; under CI=true fail it: CI must not pass without PostgreSQL."""
    message = f"{SKIP_PREFIX}{reason}; {HOW_TO_GET_POSTGRES}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: a missing PostgreSQL fails the run)", pytrace=False)
    pytest.skip(message)


def _started_throwaway() -> ThrowawayPostgres:
    try:
        server = ThrowawayPostgres()
    except PostgresUnavailable as exc:
        _postgres_missing(str(exc))
    try:
        server.start()
    except PostgresFailed as exc:  # binaries present but broken: an error, never a skip
        server.close()
        pytest.fail(f"the throwaway PostgreSQL server did not start: {exc}", pytrace=False)
    return server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every skip for a missing PostgreSQL at one location, so `-ra` folds them into one line
    (pytest would name each test's own line)."""
    report: pytest.TestReport = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and SKIP_PREFIX in longrepr[2]:
        report.longrepr = (__file__, _postgres_missing.__code__.co_firstlineno, longrepr[2])
    return report


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """Databases on the server of DOMICILE_TEST_POSTGRES_URL, else on one throwaway server
    for the whole session (started on first use, about 2 s), else the test is skipped with
    one reason (failed under CI=true). Pytest caches a session fixture's skip or failure, so
    the server is tried once and the summary names the reason once."""
    given = next((os.environ[name] for name in POSTGRES_URL_ENV if os.environ.get(name)), None)
    server = None
    if given is None:
        server = _started_throwaway()
        given = server.url()
    databases = PostgresDatabases(given)
    try:
        databases.check()
    except Exception as exc:  # a server the user named but cannot be reached: an error
        if server is not None:
            server.close()
        pytest.fail(f"PostgreSQL is not reachable at {databases.admin_url}: "
                    f"{type(exc).__name__}: {exc}", pytrace=False)
    yield databases
    if server is not None:
        databases.dispose()
        server.close()  # its folder goes whole: dropping each database first only costs time
    else:
        databases.drop_all()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A started PostgreSQL server of this test's own, which it may `stop()` and `start()`
    (same port) to simulate an outage; `url(database)` gives an admin URL. Needs the
    binaries even when DOMICILE_TEST_POSTGRES_URL is set (a shared server is not stopped)."""
    server = _started_throwaway()
    yield server
    server.close()


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
        if backend in ("postgresql", "scale"):
            settings = _move_to_postgres(settings, request.getfixturevalue("postgres"))
        if backend == "scale":
            settings = move_to_scale(settings.config_path, request.getfixturevalue("moto"),
                                     request.getfixturevalue("redis_url"))
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
        # A postgresql region keeps its wrapped data keys in a shared keystore database.
        body = body.replace(f'database_url = "sqlite:///{region}/store.db"',
                            f'database_url = "{postgres.create(region)}"\n'
                            f'keystore_url = "{postgres.create(region + "keys")}"')
    config.write_text(body)
    return load_settings(config)


def move_to_scale(config: Path, moto: MotoServer, redis_url: str,
                  regions: tuple[str, ...] = ("eu", "us")) -> Settings:
    """Put `regions` of a site already on PostgreSQL on the rest of the scale-out parts: blobs
    in an S3 bucket, the KEK in KMS, rate limits in Redis (moto's server mode emulates S3 and
    KMS). The region's keystore stays the PostgreSQL one `_move_to_postgres` named."""
    body = config.read_text()
    for region in regions:
        old_blobs = f'blob_url = "file://{region}/blobs"'
        old_keys = f'key_provider = {{ kind = "local", path = "{region}/kek.key" }}'
        assert old_blobs in body and old_keys in body, "not a config `domicile init` wrote"
        bucket = moto.bucket()
        body = body.replace(old_blobs, f'blob_url = "s3://{bucket}/{region}?endpoint_url='
                                       f'{moto.endpoint_url}&region={moto.region}"')
        body = body.replace(old_keys, f'key_provider = {{ kind = "aws-kms", key_id = '
                                      f'"{moto.kms_key()}", region = "{moto.region}", '
                                      f'endpoint_url = "{moto.endpoint_url}" }}\n'
                                      f'redis_url = "{redis_url}"')
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
