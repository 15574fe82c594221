"""Fixtures for `domicile.crypto`: real key files and keystores under tmp_path, no mocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domicile.crypto import Context, Envelope, LocalKeyProvider
from tests.crypto.support import SMALL_SEGMENT, context, make_provider


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[LocalKeyProvider]:
    provider = make_provider(tmp_path)
    yield provider
    provider.close()


@pytest.fixture
def envelope(keys: LocalKeyProvider) -> Envelope:
    env = Envelope(keys, segment_size=SMALL_SEGMENT)
    env.create_tenant_key("ws_a")
    env.create_tenant_key("ws_b")
    return env


@pytest.fixture(scope="module")
def shared_envelope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envelope]:
    """One envelope for property tests (hypothesis reruns a test body many times)."""
    provider = make_provider(tmp_path_factory.mktemp("shared"))
    env = Envelope(provider, segment_size=SMALL_SEGMENT)
    env.create_tenant_key("ws_a")
    env.create_tenant_key("ws_b")
    yield env
    provider.close()


@pytest.fixture
def ctx() -> Context:
    return context()


@pytest.fixture
def reopen(tmp_path: Path) -> Iterator[Callable[..., LocalKeyProvider]]:
    """A second provider on the same files: what another process (worker, CLI) would see."""
    opened: list[LocalKeyProvider] = []

    def _open(region: str = "eu") -> LocalKeyProvider:
        provider = make_provider(tmp_path, region)
        opened.append(provider)
        return provider

    yield _open
    for provider in opened:
        provider.close()
