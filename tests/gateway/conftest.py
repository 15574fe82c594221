"""The gateway under test: real uvicorn servers for regions eu and us on loopback, in front of
real loopback fake upstreams (plain and TLS), driven by the official `openai` SDK and httpx.

One stack per session (the embedding model loads once); every test that takes `stack` gets
fresh upstream behaviour, an empty usage sink and an empty content store.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from domicile.gateway import GatewayApp, create_gateway_app
from tests.gateway.support import (
    DictAuthenticator,
    LoopThread,
    MemoryContentStore,
    MemoryUsageSink,
    ServedApp,
    grant,
    make_settings,
    provider,
)
from tests.gateway.upstream import FakeUpstream

EU_ZERO_KEY = "dk-eu-zero000000000000000000"
EU_REGIONAL_KEY = "dk-eu-regional0000000000000"
US_KEY = "dk-us-zero000000000000000000"
GLOBAL_KEY = "dk-global-roaming0000000000"
GLOBAL_PINNED_KEY = "dk-global-pinned00000000000"
MISFILED_KEY = "dk-eu-misfiled00000000000000"  # says eu, but its project lives in us
UPSTREAM_SECRET = "sk-upstream-secret-for-eu-a"


def _tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    loop: LoopThread
    upstreams: dict[str, FakeUpstream]
    eu: ServedApp
    us: ServedApp
    auth: DictAuthenticator
    sink: MemoryUsageSink
    store: MemoryContentStore
    ca_file: Path
    _http: list[httpx.Client] = field(default_factory=list)

    @property
    def eu_app(self) -> GatewayApp:
        return self.eu.app  # type: ignore[no-any-return]

    def client(self, key: str = EU_ZERO_KEY, served: ServedApp | None = None) -> openai.OpenAI:
        # Strict: every answer must validate against the SDK's own types (exact shapes).
        return openai.OpenAI(base_url=(served or self.eu).url + "/v1", api_key=key,
                             max_retries=0, timeout=20, _strict_response_validation=True)

    def http(self) -> httpx.Client:
        client = httpx.Client(base_url=self.eu.url, timeout=20)
        self._http.append(client)
        return client

    def reset(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()
        for served in (self.eu, self.us):  # what earlier tests left in the buffers
            self.loop.run(served.app.usage.flush())
        self.sink.clear()
        self.store.records.clear()
        self.store.blobs.clear()
        self.store.chunk_counts.clear()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway")
    loop = LoopThread()
    ca, rogue_ca = trustme.CA(), trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    upstreams = {
        "eu-a": FakeUpstream("eu-a"),
        "eu-b": FakeUpstream("eu-b"),
        "eu-solo": FakeUpstream("eu-solo"),
        "us-solo": FakeUpstream("us-solo"),
        "eu-tls": FakeUpstream("eu-tls", ssl_context=_tls_server_context(ca)),
        "eu-rogue": FakeUpstream("eu-rogue", ssl_context=_tls_server_context(rogue_ca)),
    }
    for upstream in upstreams.values():
        loop.run(upstream.start())
    os.environ["EU_A_UPSTREAM_KEY"] = UPSTREAM_SECRET
    compat = "openai-compatible"
    settings = make_settings(
        tmp,
        eu=[
            provider("eu-dev", "dev-echo", ["dev-echo"]),
            provider("eu-embeddings", "local-embeddings", ["all-minilm-l6-v2"]),
            provider("eu-a", compat, ["fo-model"], base_url=upstreams["eu-a"].base_url,
                     api_key_env="EU_A_UPSTREAM_KEY"),
            provider("eu-b", compat, ["fo-model"], base_url=upstreams["eu-b"].base_url),
            provider("eu-solo", compat, ["solo-model"], base_url=upstreams["eu-solo"].base_url),
            provider("eu-impatient", compat, ["impatient-model"], timeout_s=0.3,
                     base_url=upstreams["eu-solo"].base_url),
            provider("eu-tls", compat, ["tls-model"], base_url=upstreams["eu-tls"].base_url,
                     ca_file=str(ca_file)),
            provider("eu-rogue", compat, ["rogue-model"], ca_file=str(ca_file),
                     base_url=upstreams["eu-rogue"].base_url),
            provider("eu-dead", compat, ["dead-model"],
                     base_url=f"http://127.0.0.1:{_closed_port()}/v1"),
            provider("eu-vectors", compat, ["remote-embedder"], capabilities=["embeddings"],
                     base_url=upstreams["eu-solo"].base_url),
        ],
        us=[
            provider("us-dev", "dev-echo", ["dev-echo"]),
            provider("us-solo", compat, ["solo-model", "us-only-model"],
                     base_url=upstreams["us-solo"].base_url),
        ],
    )
    auth = DictAuthenticator({
        EU_ZERO_KEY: grant("key_eu_zero"),
        EU_REGIONAL_KEY: grant("key_eu_regional", retention="regional"),
        US_KEY: grant("key_us", region="us"),
        GLOBAL_KEY: grant("key_global", region="global", per_request_residency=True),
        GLOBAL_PINNED_KEY: grant("key_global_pinned", region="global"),
        MISFILED_KEY: grant("key_misfiled", region="us"),
    })
    sink = MemoryUsageSink()
    store = MemoryContentStore(region="eu")
    eu = ServedApp(loop, create_gateway_app(settings, "eu", authenticator=auth,
                                            usage_sink=sink, content_store=store))
    us = ServedApp(loop, create_gateway_app(settings, "us", authenticator=auth,
                                            usage_sink=sink))
    stack = Stack(loop, upstreams, eu, us, auth, sink, store, ca_file)
    yield stack
    for client in stack._http:
        client.close()
    eu.stop()
    us.stop()
    for upstream in upstreams.values():
        loop.run(upstream.stop())
    loop.close()


@pytest.fixture
def stack(served: Stack) -> Stack:
    served.reset()
    return served
