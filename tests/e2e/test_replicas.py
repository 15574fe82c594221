"""Two replicas of one region behave as one (issue 10): two real `domicile serve --region eu`
processes on one PostgreSQL (content and a shared keystore), one S3 bucket, one KMS key and one
Redis — S3 and KMS emulated by moto's server mode — each on its own address, as two pods
behind a load balancer would be.

Requests are spread over both: what one stores the other reads; a key revoked through one is
refused by the other within the documented bound (1 s, docs/API.md); a rate limit is shared;
a workspace session made on one works on the other; the audit chain verifies after
concurrent appends from both; an erasure through one is seen by the other within the key
cache's bound (`key_cache_s`).
"""

from __future__ import annotations

import base64
import concurrent.futures
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from domicile.config import load_settings
from domicile.site import Site as OpenSite
from tests.conftest import _move_to_postgres, move_to_scale
from tests.e2e.harness import Server, Site, free_port_pair, init_site
from tests.pgserver import PostgresDatabases
from tests.services import MotoServer, moto_environment

STAND_IN = "dev-echo"  # a deterministic stand-in model: these tests are about the platform
PASSWORD = "replica-password-0123"
KEY_CACHE_S = 2.0
REVOCATION_BOUND_S = 1.0  # the gateway's KeyCache ttl (docs/API.md)


@dataclass
class Replicas:
    site: Site          # replica A's config (the site `domicile init` made)
    other: Site         # replica B's config: the same stores, another address
    servers: list[Server]
    moto: MotoServer
    org: str

    def url(self, replica: int) -> str:
        return (self.site, self.other)[replica].url("eu")

    def client(self, replica: int, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url(replica) + "/v1", api_key=key, max_retries=0,
                             timeout=60)

    def project_key(self, *, retention: str = "zero", **options: str) -> tuple[str, str]:
        return self.site.project_key("eu", retention=retention, org=self.org, **options)


def _second_config(site: Site, root: Path) -> Site:
    """Replica B's config: A's, with eu on another address and data_dir pointing at A's
    folder (the directory secret and the audit signing key are shared files, as a mounted
    Secret would be)."""
    port_base = free_port_pair()
    root.mkdir()
    body = site.config.read_text().replace('data_dir = "."', f'data_dir = "{site.root}"')
    for old, new in ((site.port_base, port_base), (site.port_base + 1, port_base + 1)):
        body = body.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    (root / "domicile.toml").write_text(body)
    return Site(root, port_base, env=site.env)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases,
             moto: MotoServer, redis_url: str) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    site = init_site(root / "a")
    site.env.update(moto_environment())
    settings = _move_to_postgres(load_settings(site.config), postgres)
    move_to_scale(settings.config_path, moto, redis_url, regions=("eu",))
    site.set_region_option("eu", "key_cache_s", KEY_CACHE_S)
    body = site.config.read_text()
    # No embedding model: each replica would load it (seconds, memory) for nothing here.
    body = body.replace('[[regions.eu.providers]]\nname = "eu-embeddings"\n'
                        'kind = "local-embeddings"\nmodels = ["all-minilm-l6-v2"]\n', "")
    site.config.write_text(body)
    migrated = OpenSite(load_settings(site.config))  # the new databases, as `init` would
    try:
        migrated.migrate()
    finally:
        migrated.close()
    other = _second_config(site, root / "b")
    org = site.cli("org", "create", "--name", "Replicated")["id"]
    servers = [Server(site, root / "server-a", "--region", "eu"),
               Server(other, root / "server-b", "--region", "eu")]
    try:
        for server in servers:
            server.wait_ready(("eu",))
        yield Replicas(site, other, servers, moto, org)
    finally:
        for server in servers:
            server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_requests_spread_over_both_replicas_are_served_in_the_region(
        replicas: Replicas) -> None:
    _, key = replicas.project_key()
    for replica in (0, 1, 0, 1):
        raw = replicas.client(replica, key).chat.completions.with_raw_response.create(
            model=STAND_IN, messages=[{"role": "user", "content": f"hello {replica}"}])
        assert raw.headers["x-domicile-region"] == "eu"
        assert raw.parse().choices[0].message.content


def test_a_file_stored_through_one_replica_is_read_through_the_other_and_sealed_in_s3(
        replicas: Replicas) -> None:
    _, key = replicas.project_key(retention="regional")
    canary = f"replica-canary-{secrets.token_hex(8)}"
    content = (canary + "\n").encode() * 1000
    stored = replicas.client(0, key).files.create(file=("notes.txt", content), purpose="batch")
    assert replicas.client(1, key).files.content(stored.id).read() == content
    assert [f.id for f in replicas.client(1, key).files.list()] == [stored.id]
    # G5 on S3: every object in the region's bucket is ciphertext.
    s3 = replicas.moto.client("s3")
    bucket = replicas.site.config.read_text().split('blob_url = "s3://', 1)[1].split("/", 1)[0]
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert objects, "the blob is in the bucket"
    forms = [canary.encode(), base64.b64encode(canary.encode())[:16]]
    for listed in objects:
        body = s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
        assert not any(form in body for form in forms), listed["Key"]


def test_a_rate_limit_is_shared_by_the_replicas(replicas: Replicas) -> None:
    _, key = replicas.project_key(rpm_limit="4")
    answers = []
    for replica in (0, 1, 0, 1, 0, 1):
        try:
            replicas.client(replica, key).chat.completions.create(
                model=STAND_IN, messages=[{"role": "user", "content": "count me"}])
            answers.append(200)
        except openai.RateLimitError:
            answers.append(429)
    assert answers == [200, 200, 200, 200, 429, 429]


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(
        replicas: Replicas) -> None:
    _, key = replicas.project_key()
    for replica in (0, 1):  # both have it cached now
        assert replicas.client(replica, key).models.list().data
    key_id = _key_id(replicas, key)
    replicas.site.cli("key", "revoke", key_id)
    time.sleep(REVOCATION_BOUND_S + 0.5)  # the cache's ttl is the bound, by construction
    for replica in (1, 0):
        with pytest.raises(openai.AuthenticationError):
            replicas.client(replica, key).models.list()


def _key_id(replicas: Replicas, key: str) -> str:
    site = OpenSite(load_settings(replicas.site.config))
    try:
        grant = site.directory.authenticate_api_key(key)
        assert grant is not None
        return grant.key_id
    finally:
        site.close()


def _member(replicas: Replicas) -> tuple[str, str, str]:
    workspace = replicas.site.cli("workspace", "create", "--org", replicas.org, "--name",
                                  f"ws-{secrets.token_hex(3)}", "--region", "eu")["id"]
    email = f"m{secrets.token_hex(4)}@example.com"
    user = replicas.site.cli("user", "add", "--workspace", workspace, "--email", email,
                             "--role", "owner", "--password-stdin", stdin=PASSWORD)["id"]
    return workspace, user, email


def test_a_workspace_session_made_on_one_replica_works_on_the_other(
        replicas: Replicas) -> None:
    workspace, user, email = _member(replicas)
    with httpx.Client(base_url=replicas.url(0) + "/workspace/api") as first:
        signed = first.post("/login", json={"email": email, "password": PASSWORD,
                                            "workspace_id": workspace})
        assert signed.status_code == 200, signed.text
        cookie = first.cookies["domicile_session_eu"]
        csrf = signed.json()["csrf_token"]
    with httpx.Client(base_url=replicas.url(1) + "/workspace/api",
                      cookies={"domicile_session_eu": cookie}) as second:
        me = second.get("/me")
        assert me.status_code == 200 and me.json()["id"] == user
        made = second.post("/conversations", headers={"x-csrf-token": csrf})
        assert made.status_code == 201, made.text
        assert second.post("/logout", headers={"x-csrf-token": csrf}).status_code in (200, 204)
    ended = httpx.get(replicas.url(0) + "/workspace/api/me",
                      cookies={"domicile_session_eu": cookie})
    assert ended.status_code == 401  # signed out on B: gone on A too


def test_the_audit_chain_verifies_after_concurrent_appends_from_both_replicas(
        replicas: Replicas) -> None:
    workspace, _user, _email = _member(replicas)
    token = replicas.site.cli("token", "create", "--workspace", workspace, "--user",
                              _user)["token"]

    def upload(index: int) -> int:
        with httpx.Client(base_url=replicas.url(index % 2) + "/workspace/api",
                          headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
            made = api.post("/files", files={"file": (f"n{index}.txt", b"note %d" % index,
                                                      "text/plain")})
            assert made.status_code in (200, 201), made.text
            read = api.get(f"/files/{made.json()['id']}/content")  # content access: audited
            return read.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(upload, range(24))) == [200] * 24
    verified = replicas.site.cli("audit", "verify", "--region", "eu")
    assert verified["ok"] is True, verified


def test_an_erasure_through_one_replica_is_seen_by_the_other_within_the_key_cache_bound(
        replicas: Replicas) -> None:
    project, key = replicas.project_key(retention="regional")
    stored = replicas.client(0, key).files.create(file=("x.txt", b"to be erased"),
                                                  purpose="batch")
    assert replicas.client(1, key).files.content(stored.id).read() == b"to be erased"
    replicas.site.cli("erase", "--project", project, "--yes")
    time.sleep(KEY_CACHE_S + REVOCATION_BOUND_S + 0.5)  # both caches' bounds, by construction
    for replica in (1, 0):
        with pytest.raises(openai.APIStatusError) as refused:
            replicas.client(replica, key).files.content(stored.id).read()
        assert refused.value.status_code in (401, 404, 410)
