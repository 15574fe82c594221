"""`VaultTransitWrapper` (hvac) against `tests/crypto/vault_server.py`: a STAND-IN speaking
the documented subset of Vault's transit API over real HTTP on loopback, with real AES-GCM.
Neither Vault nor OpenBao installs here, so these tests run against that stand-in."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import hvac
import pytest

from domicile.config import VaultTransitSettings
from domicile.crypto import KeyNotFound
from domicile.crypto.keys import wrap_context
from domicile.crypto.vault_transit import VaultTransitWrapper, transit_context
from domicile.crypto.wrapping import KekRefused, KeyServiceUnavailable, KeyWrapper
from tests.crypto.vault_server import VaultTransitStandIn
from tests.services import free_port

CONTEXT = wrap_context("eu", "ws_a", "dk_1")
REGION_KEY = "domicile-eu"
TENANT_KEY = "customer-ws-a"
TOKEN_ENV = "DOMICILE_TEST_VAULT_TOKEN"


@pytest.fixture
def vault() -> Iterator[VaultTransitStandIn]:
    with VaultTransitStandIn() as server:
        admin = hvac.Client(url=server.url, token=server.root_token)
        for name in (REGION_KEY, TENANT_KEY):
            admin.secrets.transit.create_key(name, derived=True)
        yield server


@pytest.fixture
def token(vault: VaultTransitStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    """Domicile's token (policy: the region's key and the tenant's), in the env var."""
    issued = vault.issue_token({REGION_KEY, TENANT_KEY})
    monkeypatch.setenv(TOKEN_ENV, issued)
    return issued


def settings(url: str, **extra: object) -> VaultTransitSettings:
    return VaultTransitSettings.model_validate(
        {"kind": "vault-transit", "url": url, "key_name": REGION_KEY, "token_env": TOKEN_ENV,
         "timeout_s": 5, **extra})


@pytest.fixture
def wrapper(vault: VaultTransitStandIn, token: str) -> VaultTransitWrapper:
    return VaultTransitWrapper(settings(vault.url))


def test_is_a_key_wrapper(wrapper: VaultTransitWrapper) -> None:
    checked: KeyWrapper = wrapper
    assert issubclass(KekRefused, KeyNotFound)  # callers that know only KeyNotFound see it
    assert checked.kek_id == "vault:transit/domicile-eu"


def test_generate_and_unwrap_round_trip(wrapper: VaultTransitWrapper) -> None:
    dek, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    assert len(dek) == 32
    assert wrapped.startswith(b"vault:v1:")
    assert wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT) == dek
    rewrapped = wrapper.wrap(wrapper.kek_id, dek, CONTEXT)
    assert rewrapped != wrapped
    assert wrapper.unwrap(rewrapped, wrapper.kek_id, CONTEXT) == dek


def test_the_context_is_canonical() -> None:
    shuffled = {"tenant": "ws_a", "key_id": "dk_1", "region": "eu"}
    assert transit_context(shuffled) == transit_context(CONTEXT)
    assert base64.b64decode(transit_context(CONTEXT)) == (
        b'{"key_id":"dk_1","region":"eu","tenant":"ws_a"}')


@pytest.mark.parametrize("other", [
    wrap_context("eu", "ws_b", "dk_1"),   # another tenant
    wrap_context("us", "ws_a", "dk_1"),   # another region
    wrap_context("eu", "ws_a", "dk_2"),   # another data key row
])
def test_a_wrap_is_bound_to_its_context(wrapper: VaultTransitWrapper,
                                        other: dict[str, str]) -> None:
    _, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    with pytest.raises(KekRefused, match="HTTP 400"):
        wrapper.unwrap(wrapped, wrapper.kek_id, other)


def test_a_tenant_key_wraps_that_tenant_only(wrapper: VaultTransitWrapper) -> None:
    tenant_kek = wrapper.kek_for("ws_a", TENANT_KEY)
    assert tenant_kek == "vault:transit/customer-ws-a"
    assert wrapper.kek_for("ws_a", tenant_kek) == tenant_kek
    assert wrapper.kek_for("ws_a", None) == wrapper.kek_id
    dek, wrapped = wrapper.generate(tenant_kek, CONTEXT)
    assert wrapper.unwrap(wrapped, tenant_kek, CONTEXT) == dek
    with pytest.raises(KekRefused):
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)


def test_a_malformed_tenant_key_is_refused_before_use(wrapper: VaultTransitWrapper) -> None:
    with pytest.raises(ValueError, match="not a Vault transit key id"):
        wrapper.kek_for("ws_a", "vault:transit/../x y")


def test_a_revoked_policy_opens_nothing_until_granted(
        wrapper: VaultTransitWrapper, vault: VaultTransitStandIn, token: str) -> None:
    tenant_kek = wrapper.kek_for("ws_a", TENANT_KEY)
    dek, wrapped = wrapper.generate(tenant_kek, CONTEXT)
    vault.revoke_policy(token, TENANT_KEY)
    with pytest.raises(KekRefused, match="HTTP 403") as refused:
        wrapper.unwrap(wrapped, tenant_kek, CONTEXT)
    assert tenant_kek in str(refused.value)
    with pytest.raises(KekRefused, match="HTTP 403"):
        wrapper.generate(tenant_kek, CONTEXT)
    with pytest.raises(KekRefused, match="HTTP 403"):
        wrapper.wrap(tenant_kek, dek, CONTEXT)
    vault.grant_policy(token, TENANT_KEY)
    assert wrapper.unwrap(wrapped, tenant_kek, CONTEXT) == dek


def test_a_deleted_key_opens_nothing(wrapper: VaultTransitWrapper,
                                     vault: VaultTransitStandIn) -> None:
    tenant_kek = wrapper.kek_for("ws_a", TENANT_KEY)
    _, wrapped = wrapper.generate(tenant_kek, CONTEXT)
    admin = hvac.Client(url=vault.url, token=vault.root_token)
    admin.secrets.transit.update_key_configuration(TENANT_KEY, deletion_allowed=True)
    admin.secrets.transit.delete_key(TENANT_KEY)
    with pytest.raises(KekRefused, match="HTTP 400"):
        wrapper.unwrap(wrapped, tenant_kek, CONTEXT)


def test_a_wrong_token_is_refused(vault: VaultTransitStandIn,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "hvs.not-a-token")
    stranger = VaultTransitWrapper(settings(vault.url))
    with pytest.raises(KekRefused, match="HTTP 403"):
        stranger.generate(stranger.kek_id, CONTEXT)


def test_no_token_in_the_environment_is_a_clear_error(
        vault: VaultTransitStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match=TOKEN_ENV):
        VaultTransitWrapper(settings(vault.url))


def test_a_sealed_vault_is_unavailable_not_missing(wrapper: VaultTransitWrapper,
                                                   vault: VaultTransitStandIn) -> None:
    dek, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    vault.seal()
    with pytest.raises(KeyServiceUnavailable, match="HTTP 503") as failed:
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)
    assert not isinstance(failed.value, KeyNotFound)
    vault.unseal()
    assert wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT) == dek


def test_an_unreachable_vault_is_unavailable(token: str) -> None:
    closed = VaultTransitWrapper(settings(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(KeyServiceUnavailable, match="unreachable"):
        closed.generate(closed.kek_id, CONTEXT)


def test_no_key_bytes_or_token_in_reprs_or_errors(
        wrapper: VaultTransitWrapper, vault: VaultTransitStandIn, token: str) -> None:
    dek, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    assert repr(wrapper) == (f"VaultTransitWrapper(url={vault.url!r}, "
                             "kek_id='vault:transit/domicile-eu')")
    with pytest.raises(KekRefused) as refused:
        wrapper.unwrap(wrapped, wrapper.kek_id, wrap_context("us", "ws_a", "dk_1"))
    error = refused.value
    assert error.__cause__ is None and error.__suppress_context__
    shown = " ".join((repr(wrapper), str(wrapper), str(error), repr(error)))
    assert token not in shown
    assert transit_context(CONTEXT) not in shown
    for secret in (dek, wrapped):
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret),
                     secret.decode("latin-1")):
            assert form not in shown
