"""The image's HEALTHCHECK script (deploy/docker/healthcheck.py), run as the image runs it
(`python <script>`, only the standard library) against a real `domicile serve` on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT
from tests.e2e.harness import Server, Site, init_site

SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"


def healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", str(SCRIPT)], capture_output=True, text=True,
                          timeout=30, env={"DOMICILE_HEALTHCHECK_URL": url})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("healthcheck")
    site = init_site(root / "site")
    # Without the in-process embedding model the server is up in a second or two rather than
    # after the model's load: what is checked here is the script, not the model.
    config = site.config.read_text()
    embeddings = '[[regions.eu.providers]]\nname = "eu-embeddings"\nkind = "local-embeddings"\n'
    assert embeddings in config
    site.config.write_text(config.replace(embeddings, '[[regions.eu.providers]]\n'
                                          'name = "eu-embeddings"\nkind = "dev-echo"\n'))
    server = Server(site, root, "--region", "eu")
    try:
        server.wait_ready(("eu",), timeout=120)
        yield site
    finally:
        server.stop()


def test_a_serving_region_is_healthy(served: Site) -> None:
    done = healthcheck(served.url("eu") + "/healthz")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_region_that_does_not_answer_is_unhealthy(served: Site) -> None:
    # The site's us port: configured, but this server serves eu only.
    done = healthcheck(served.url("us") + "/healthz")
    assert done.returncode == 1
    assert "did not answer" in done.stderr


def test_an_answer_that_is_not_ok_is_unhealthy(served: Site) -> None:
    done = healthcheck(served.url("eu") + "/v1/models")  # 401 without a key
    assert done.returncode == 1
    assert "answered 401" in done.stderr


def test_only_loopback_is_asked(tmp_path: Path) -> None:
    for url in ("http://example.com/healthz", "file:///etc/passwd", "https://10.0.0.1/healthz"):
        done = healthcheck(url)
        assert done.returncode == 1 and "on loopback" in done.stderr
