"""The admin API under test: a real site (SQLite by default; PostgreSQL where a test asks),
its admin app served by uvicorn on loopback, driven with httpx, and the real `domicile`
command for what only the command line does (making admin keys)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from domicile.admin_api import create_admin_app
from domicile.site import Site, init_site
from domicile.tenancy.admin_keys import AdminKeys
from domicile.tenancy.secrets import CredentialHasher
from tests.gateway.support import LoopThread, ServedApp


def admin_keys(site: Site) -> AdminKeys:
    return AdminKeys(site.directory_engine, CredentialHasher(site.site_secret),
                     site.directory_audit)


@dataclass
class Admin:
    """A site with its admin API served at region eu's address, and a live admin key."""

    site: Site
    served: ServedApp
    key_id: str
    key: str
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.served.url

    def http(self, key: str | None = None) -> httpx.Client:
        """A client sending `Bearer <key>` (default: the live admin key; "": no header)."""
        headers = {} if key == "" else {"Authorization": f"Bearer {key or self.key}"}
        client = httpx.Client(base_url=self.url + "/admin/v1", headers=headers, timeout=30)
        self._clients.append(client)
        return client

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http().request(method, path, **kwargs)

    def org(self, name: str = "Acme") -> str:
        answer = self.call("POST", "/orgs", json={"name": name})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def _admin(root: Path, loop: LoopThread, region: str = "eu") -> Admin:
    settings = init_site(root, port_base=18600)
    site = Site(settings)
    created = admin_keys(site).create("tests")
    return Admin(site, ServedApp(loop, create_admin_app(site, region)), created.id,
                 created.secret)


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, loop: LoopThread) -> Iterator[Admin]:
    """One site and server for a module (tests make their own orgs, so they do not meet)."""
    made = _admin(tmp_path_factory.mktemp("admin"), loop)
    yield made
    for client in made._clients:
        client.close()
    made.served.stop()
    made.site.close()
