"""G4 for observability: a canary sent through the gateway (chat, embeddings, a file upload,
a Responses call) and through the workspace (a message, a file) of a real `domicile serve`
with two workers and `log_format = "json"` never reaches `/metrics`, a log line, or a file of
the data folder or the server's temp folder, in plain, hex or base64 form.

Also: every log line is one JSON object, `/metrics` of either worker counts both workers'
requests (prometheus_client's multiprocess mode), and its private folder is gone at exit.
dev-echo is a deterministic stand-in (not a model) that echoes the canary back, so the
answers hold it too; embeddings come from the in-process model."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import scan_for_canary
from tests.e2e.harness import Server, init_site
from tests.observability.conftest import value

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


def test_a_canary_reaches_no_metric_log_or_file(tmp_path: Path) -> None:
    canary = "CANARY" + secrets.token_hex(12)
    site = init_site(tmp_path / "site")
    site.config.write_text(site.config.read_text()
                           + '\n[observability]\nlog_format = "json"\n')
    org = site.cli("org", "create", "--name", "Acme")["id"]
    _, key = site.project_key("eu", retention="regional", org=org)
    workspace = site.cli("workspace", "create", "--org", org, "--name", "Canary",
                         "--region", "eu")["id"]
    user = site.cli("user", "add", "--workspace", workspace, "--email", "c@example.com",
                    "--role", "owner", "--password-stdin", stdin=PASSWORD + "\n")["id"]
    token = site.cli("token", "create", "--workspace", workspace, "--user", user)["token"]
    server = Server(site, tmp_path, "--workers", "2", "--region", "eu")
    try:
        server.wait_ready(("eu",), timeout=180)
        metrics_folders = list(server.tmpdir.glob("domicile-metrics-*"))
        assert len(metrics_folders) == 1 and metrics_folders[0].stat().st_mode & 0o777 == 0o700
        client = openai.OpenAI(base_url=site.url("eu") + "/v1", api_key=key, max_retries=0,
                               timeout=120)
        chat = client.chat.completions.create(
            model="dev-echo", messages=[{"role": "user", "content": f"say {canary}"}])
        assert canary in (chat.choices[0].message.content or "")
        for _ in client.chat.completions.create(
                model="dev-echo", stream=True,
                messages=[{"role": "user", "content": f"stream {canary}"}]):
            pass
        client.embeddings.create(model="all-minilm-l6-v2", input=f"embed {canary}")
        client.files.create(file=(f"{canary}.jsonl", f"file {canary}\n".encode()),
                            purpose="user_data")
        client.responses.create(model="dev-echo", input=f"respond {canary}")
        with httpx.Client(base_url=site.url("eu") + "/workspace/api", timeout=120,
                          headers={"authorization": f"Bearer {token}"}) as workspace_api:
            conversation = workspace_api.post("/conversations", json={
                "title": f"title {canary}"}).json()["id"]
            reply = workspace_api.post(f"/conversations/{conversation}/messages",
                                       json={"content": f"prompt {canary}",
                                             "model": "dev-echo"})
            assert canary in reply.json()["content"]
            assert workspace_api.post("/files", files={
                "file": (f"{canary}.txt", f"a file {canary}".encode())}).status_code == 201
        # Either worker may answer: each must count both workers' requests.
        scrapes = [httpx.get(site.url("eu") + "/metrics", timeout=30).text for _ in range(6)]
    finally:
        server.stop()
    for text in scrapes:
        assert value(text, "domicile_requests_total", region="eu",
                     route="/v1/chat/completions", method="POST", status="200") == 2
        assert value(text, "domicile_requests_total", region="eu", route="/v1/files",
                     method="POST", status="200") == 1
        assert value(text, "domicile_tokens_total", region="eu", provider="eu-dev",
                     kind="prompt") > 0
    workspace_routes = {line.split('route="')[1].split('"')[0] for line in scrapes[-1].splitlines()
                        if line.startswith("domicile_requests_total{")
                        and "/workspace/" in line}
    assert "/workspace/api/conversations/{conversation_id}/messages" in workspace_routes
    assert not list(server.tmpdir.glob("domicile-metrics-*"))  # removed at exit

    (tmp_path / "metrics.txt").write_text("\n".join(scrapes))
    hits = scan_for_canary([site.root, server.tmpdir, server.log_path,
                            tmp_path / "metrics.txt"], canary)
    assert hits == []

    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    logged = [json.loads(line) for line in lines]  # every line, start-up lines too
    for line in logged:
        assert {"time", "level", "logger", "message"} <= set(line)
    assert any(line["logger"].startswith("uvicorn") for line in logged)
    assert sum(line["message"].startswith("serving eu on ") for line in logged) == 2
