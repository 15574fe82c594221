"""The admin API is served at every region's address, in front of the gateway, for the whole
directory: a region's server answers `/admin/v1` and still `/healthz`, `/v1` and the
workspace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from domicile.config import load_settings
from domicile.server import build_region_app
from domicile.site import Site, init_site
from tests.admin_api.conftest import admin_keys
from tests.gateway.support import LoopThread, ServedApp


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A site `domicile init` made, without its embedding model (dev-echo only: the servers
    start in a moment)."""
    config = init_site(tmp_path / "site", port_base=18700).config_path
    body = config.read_text()
    for region in ("eu", "us"):
        body = body.replace(f'[[regions.{region}.providers]]\nname = "{region}-embeddings"\n'
                            'kind = "local-embeddings"\nmodels = ["all-minilm-l6-v2"]\n', "")
    assert "local-embeddings" not in body
    config.write_text(body)
    opened = Site(load_settings(config))
    yield opened
    opened.close()


def test_each_regions_address_serves_the_whole_directory(site: Site, loop: LoopThread) -> None:
    key = admin_keys(site).create("mount").secret
    servers = {region: ServedApp(loop, build_region_app(site, region))
               for region in ("eu", "us")}
    try:
        headers = {"Authorization": f"Bearer {key}"}
        made_at_us = httpx.post(servers["us"].url + "/admin/v1/orgs", headers=headers,
                                json={"name": "Made at us"}, timeout=30)
        assert made_at_us.status_code == 201, made_at_us.text
        org = made_at_us.json()["id"]
        for served in servers.values():
            seen = httpx.get(f"{served.url}/admin/v1/orgs/{org}", headers=headers, timeout=30)
            assert seen.status_code == 200 and seen.json()["name"] == "Made at us"
            missing = httpx.get(served.url + "/admin/v1/nope", headers=headers, timeout=30)
            assert missing.json()["error"]["code"] == "not_found"
        eu = servers["eu"].url
        assert httpx.get(eu + "/healthz", timeout=30).json() == {"status": "ok",
                                                                  "region": "eu"}
        gateway = httpx.get(eu + "/v1/models", headers=headers, timeout=30)
        assert gateway.status_code == 401  # an admin key is no API key
        assert gateway.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(eu + "/workspace/api/me", timeout=30).status_code == 401
        assert httpx.get(eu + "/administrator", timeout=30).status_code != 401  # not ours
    finally:
        for served in servers.values():
            served.stop()
