"""One real deployment for the end-to-end tests: `domicile serve` (a child process) for eu and
us, in front of real loopback upstreams (two in eu, one of them over TLS with a test CA; one
in us), with projects and keys made by the real CLI.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import trustme

from tests.e2e.harness import Server, Site, init_site
from tests.gateway.support import LoopThread
from tests.gateway.upstream import FakeUpstream
from tests.pgserver import PostgresUnavailable, ThrowawayPostgres

UPSTREAM_SECRET = "sk-e2e-upstream-secret-0123456789"
MODEL = "llama-test"


@dataclass
class Deployment:
    site: Site
    server: Server
    upstreams: dict[str, FakeUpstream]
    org: str
    keys: dict[str, str]  # eu_zero, eu_regional, us, global, limited
    projects: dict[str, str]

    def client(self, key: str, region: str = "eu") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.site.url(region) + "/v1", api_key=self.keys[key],
                             max_retries=0, timeout=60)

    def reset(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()

    def places(self) -> list[Path]:
        """Where content must never land in plaintext (G4/G5): the site's data folder (its
        databases, usage table included), the server's log and its temp folder."""
        return [self.site.root, self.server.log_path, self.server.tmpdir]


def add_upstream_providers(site: Site, upstreams: dict[str, FakeUpstream], ca_file: Path) -> None:
    site.add_provider("eu", name="eu-a", kind="openai-compatible",
                      base_url=upstreams["eu-a"].base_url, api_key_env="E2E_EU_A_KEY",
                      models=[MODEL], timeout_s=5)
    site.add_provider("eu", name="eu-b", kind="openai-compatible",
                      base_url=upstreams["eu-b"].base_url, ca_file=str(ca_file),
                      models=[MODEL], timeout_s=5)
    site.add_provider("us", name="us-a", kind="openai-compatible",
                      base_url=upstreams["us-a"].base_url, models=[MODEL, "us-only-model"],
                      timeout_s=5)
    site.env["E2E_EU_A_KEY"] = UPSTREAM_SECRET


@pytest.fixture(scope="session")
def upstreams() -> Iterator[tuple[dict[str, FakeUpstream], trustme.CA]]:
    loop = LoopThread()
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    found = {"eu-a": FakeUpstream("eu-a"), "eu-b": FakeUpstream("eu-b", ssl_context=tls),
             "us-a": FakeUpstream("us-a")}
    for upstream in found.values():
        loop.run(upstream.start())
    yield found, ca
    for upstream in found.values():
        loop.run(upstream.stop())
    loop.close()


def deploy(root: Path, upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Deployment:
    found, ca = upstreams
    site = init_site(root / "site")
    ca_file = root / "test-ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    add_upstream_providers(site, found, ca_file)
    org = site.cli("org", "create", "--name", "Acme")["id"]
    projects, keys = {}, {}
    for name, region, retention, extra in (
        ("eu_zero", "eu", "zero", {}),
        ("eu_regional", "eu", "regional", {}),
        ("us", "us", "zero", {}),
        ("global", "global", "zero", {}),
        ("limited", "eu", "zero", {"rpm_limit": "2"}),
    ):
        projects[name], keys[name] = site.project_key(region, retention=retention, org=org,
                                                      **extra)
    server = Server(site, root)
    server.wait_ready()
    return Deployment(site, server, found, org, keys, projects)


@contextlib.contextmanager
def deployed(root: Path, upstreams: tuple[dict[str, FakeUpstream], trustme.CA]
             ) -> Iterator[Deployment]:
    """A deployment for the length of a `with`; its server stopped at the end (stopping is
    idempotent: a test may stop it early to flush and scan)."""
    deployment = deploy(root, upstreams)
    try:
        yield deployment
    finally:
        deployment.server.stop()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory,
               upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("deployment"), upstreams) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this module's own (a test may stop and start it)."""
    try:
        server = ThrowawayPostgres()
    except PostgresUnavailable as exc:
        message = f"PostgreSQL tests not run: {exc}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message} (CI=true: a missing PostgreSQL fails the run)")
        pytest.skip(message)
    server.start()
    yield server
    server.close()


@pytest.fixture
def live(deployment: Deployment) -> Deployment:
    deployment.reset()
    return deployment
