"""Fixtures for `domicile.crypto`: real key files and keystores under tmp_path, no mocks.

`keys`, `envelope` and `reopen` open the embedded `LocalKeyProvider` (a SQLite keystore beside
the KEK file) unless a test is marked `@both_providers`: it then also runs against a
`ManagedKeyProvider` whose keystore is a real PostgreSQL database (the shared keystore of a
postgresql:// region) and whose KEK is the same kind of local file (`LocalFileWrapper`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from domicile.crypto import Context, Envelope, KeyProvider, LocalKeyProvider, write_new_kek
from domicile.crypto.keystore import LocalFileWrapper, ManagedKeyProvider
from tests.crypto.support import SMALL_SEGMENT, context, make_provider

PROVIDER_KINDS = ("local", "managed")
# Runs a test once per provider kind: the embedded one, and the shared keystore on PostgreSQL.
both_providers = pytest.mark.parametrize("provider_kind", PROVIDER_KINDS, indirect=True)

OpenKeys = Callable[..., KeyProvider]


@pytest.fixture
def provider_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "local"))


@pytest.fixture
def open_keys(
    tmp_path: Path, provider_kind: str, request: pytest.FixtureRequest
) -> Iterator[OpenKeys]:
    """`open_keys(region="eu", **limits)`: a provider on this test's keystore of `region`;
    each call is another process's view (its own connections, nothing shared in memory)."""
    opened: list[Any] = []
    keystores: dict[str, str] = {}

    def _open(region: str = "eu", **limits: int) -> KeyProvider:
        if provider_kind == "local":
            make_provider(tmp_path, region).close()  # the key file
            provider: KeyProvider = LocalKeyProvider(
                region, tmp_path / region / "kek.key", **limits)
        else:
            kek = tmp_path / region / "kek.key"
            kek.parent.mkdir(parents=True, exist_ok=True)
            if not kek.exists():
                write_new_kek(kek)
            if region not in keystores:
                keystores[region] = request.getfixturevalue("postgres").create(f"{region}keys")
            provider = ManagedKeyProvider(region, keystores[region], LocalFileWrapper(kek),
                                          **limits)
        opened.append(provider)
        return provider

    yield _open
    for provider in opened:
        provider.close()


@pytest.fixture
def keys(open_keys: OpenKeys) -> KeyProvider:
    return open_keys()


@pytest.fixture
def envelope(keys: KeyProvider) -> Envelope:
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
def reopen(open_keys: OpenKeys) -> OpenKeys:
    """A second provider on the same keystore: what another process (worker, CLI, replica)
    would see."""
    return open_keys
