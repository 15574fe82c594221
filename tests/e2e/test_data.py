"""G9 on a running `domicile serve`: a file uploaded through the API comes back byte for byte
in `domicile export`; after `domicile erase` the project's key is refused and nothing of the
file is left in the data folder, while the server keeps serving."""

from __future__ import annotations

import json
import secrets
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import scan_for_canary
from tests.e2e.harness import Server, Site, init_site


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Site]:
    site = init_site(tmp_path / "site")
    server = Server(site, tmp_path)
    try:
        server.wait_ready(("eu",))
        yield site
    finally:
        server.stop()


def test_export_then_erase_through_a_running_server(served: Site, tmp_path: Path) -> None:
    site = served
    org = site.cli("org", "create", "--name", "Acme")["id"]
    _project, key = site.project_key("eu", retention="regional", org=org)
    client = openai.OpenAI(api_key=key, base_url=site.url("eu") + "/v1", max_retries=0)
    canary = f"canary-{secrets.token_hex(8)}"
    data = f"report of {canary}\n".encode() * 100
    uploaded = client.files.create(file=("report.txt", data), purpose="assistants")

    out = tmp_path / "acme.zip"
    summary = site.cli("export", "--org", org, "--out", str(out))
    assert summary["counts"] == {"files": 1}
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        (entry,) = manifest["entries"]
        assert entry["path"].endswith(f"/api-files/{uploaded.id}/report.txt")
        assert archive.read(entry["path"]) == data

    report = site.cli("erase", "--org", org, "--yes")
    assert report["data_keys_destroyed"] == 1 and report["api_keys_revoked"] == 1

    # A revoked key stops working within the credential cache's second on every worker.
    deadline = time.monotonic() + 30
    while True:
        try:
            client.files.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the erased project's key still works"
        time.sleep(0.2)
    assert scan_for_canary([site.root], canary) == []
    # The server still serves the others.
    other = openai.OpenAI(api_key=site.project_key("eu", retention="regional")[1],
                          base_url=site.url("eu") + "/v1", max_retries=0)
    assert other.files.create(file=("b.txt", b"other"), purpose="assistants").id
