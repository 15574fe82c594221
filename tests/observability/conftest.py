"""A region's gateway under a real uvicorn server on loopback, with the `[observability]`
table a test asks for: dev-echo (a deterministic stand-in, not a model) and a provider whose
port is closed (a real connection refusal) in front of it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from domicile.config import Settings, parse_settings
from domicile.gateway import GatewayApp, create_gateway_app
from tests.gateway.support import (
    EU_URL,
    US_URL,
    DictAuthenticator,
    LoopThread,
    MemoryContentStore,
    MemoryUsageSink,
    ServedApp,
    grant,
    provider,
    region_table,
)

ZERO_KEY = "dk-obs-zero00000000000000000"
REGIONAL_KEY = "dk-obs-regional0000000000000"
US_KEY = "dk-obs-us000000000000000000000"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def observed_settings(tmp: Path, **observability: Any) -> Settings:
    eu = [provider("eu-dead", "openai-compatible", ["dev-echo"],
                   base_url=f"http://127.0.0.1:{closed_port()}/v1"),
          provider("eu-dev", "dev-echo", ["dev-echo"])]
    raw = {
        "directory": {"database_url": "sqlite:///directory.db"},
        "regions": {"eu": region_table("eu", 1, EU_URL, eu),
                    "us": region_table("us", 2, US_URL, [provider("us-dev", "dev-echo",
                                                                  ["dev-echo"])])},
        "observability": observability,
    }
    return parse_settings(raw, config_path=tmp / "domicile.toml", check_files=False)


def gateway(settings: Settings) -> GatewayApp:
    auth = DictAuthenticator({
        ZERO_KEY: grant("key_obs_zero"),
        REGIONAL_KEY: grant("key_obs_regional", retention="regional"),
        US_KEY: grant("key_obs_us", region="us"),
    })
    return create_gateway_app(settings, "eu", authenticator=auth, usage_sink=MemoryUsageSink(),
                              content_store=MemoryContentStore(region="eu"))


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def served_gateway(loop: LoopThread, tmp_path: Path) -> Iterator[ServedApp]:
    """The eu gateway with metrics on (the default), served on loopback."""
    served = ServedApp(loop, gateway(observed_settings(tmp_path)))
    yield served
    served.stop()
