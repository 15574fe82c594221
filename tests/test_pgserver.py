"""The suite's PostgreSQL: a throwaway server a test may stop and start, and what happens on
a machine without PostgreSQL (one skip reason; under CI=true, a failure)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import POSTGRES_URL_ENV, SKIP_PREFIX
from tests.pgserver import BINDIR_ENV, ThrowawayPostgres

ROOT = Path(__file__).resolve().parent.parent
# Two PostgreSQL tests of the directory, cheap ones: enough to see their skips folded.
TWO_POSTGRES_TESTS = [
    "tests/tenancy/test_directory.py::test_unknown_region_is_refused_and_nothing_is_created"
    "[postgresql]",
    "tests/tenancy/test_directory.py::test_revoked_or_unknown_key_does_not_authenticate"
    "[postgresql]",
]


def test_a_throwaway_server_comes_back_on_the_same_port_with_its_data(
        throwaway_postgres: ThrowawayPostgres) -> None:
    url = throwaway_postgres.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    throwaway_postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    throwaway_postgres.start()
    assert throwaway_postgres.url() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]


def _pytest_without_postgres(*, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (*POSTGRES_URL_ENV, "CI")}
    env[BINDIR_ENV] = str(ROOT / "no-such-folder")
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TWO_POSTGRES_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_without_postgres_its_tests_skip_with_one_reason() -> None:
    run = _pytest_without_postgres(ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 1, run.stdout
    assert skips[0].startswith("SKIPPED [2] tests/conftest.py:") and SKIP_PREFIX in skips[0]
    assert "apt-get install postgresql" in skips[0] and POSTGRES_URL_ENV[0] in skips[0]


def test_without_postgres_under_ci_its_tests_fail() -> None:
    run = _pytest_without_postgres(ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 errors" in run.stdout and "CI=true" in run.stdout
