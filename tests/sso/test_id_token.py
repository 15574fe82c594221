"""The ID token checks (`verify_id_token`) and discovery, on tokens and keys the real
oidc-provider issued (conftest.py): the audience, nonce, issuer, expiry and signature each
refuse on their own; a token for the right client passes (so each refusal is that check's)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from domicile.errors import UpstreamError
from domicile.workspace_web.sso import ProviderDirectory, ProviderInfo, verify_id_token

from .conftest import CLIENT_SECRETS, SsoSite, through_provider

NONCE = "the-flow-nonce-0123456789"


def issue_id_token(sso: SsoSite, client_id: str, nonce: str = NONCE) -> dict[str, Any]:
    """A code flow with PKCE for `client_id`, run by hand: the provider's token response."""
    verifier = secrets.token_urlsafe(32)
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": sso.callback,
        "scope": "openid email", "state": secrets.token_urlsafe(8), "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256"})
    with sso.browser() as browser:
        callback = through_provider(browser, f"{sso.provider.issuer}/auth?{query}",
                                    "carol@example.com", sso.callback)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        answer = browser.post(f"{sso.provider.issuer}/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": sso.callback,
            "code_verifier": verifier}, auth=(client_id, CLIENT_SECRETS[client_id]))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.fixture(scope="module")
def token_b(sso: SsoSite) -> str:
    return str(issue_id_token(sso, "domicile-b")["id_token"])


@pytest.fixture
async def provider(sso: SsoSite) -> ProviderInfo:
    return await ProviderDirectory().get(sso.provider.issuer)


def check(provider: ProviderInfo, token: str, **changes: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"issuer": provider.issuer, "client_id": "domicile-b",
                               "nonce": NONCE, **changes}
    return verify_id_token(token, provider.jwks, **options)


async def test_a_token_for_this_client_passes(provider: ProviderInfo, token_b: str) -> None:
    claims = check(provider, token_b)
    assert claims["sub"] == "carol@example.com"
    assert claims["aud"] == "domicile-b"


async def test_a_token_of_another_client_is_refused(provider: ProviderInfo,
                                                    token_b: str) -> None:
    with pytest.raises(JoseError):
        check(provider, token_b, client_id="domicile-a")


async def test_a_wrong_nonce_is_refused(provider: ProviderInfo, token_b: str) -> None:
    with pytest.raises(JoseError):
        check(provider, token_b, nonce="another-flow")


async def test_another_issuer_is_refused(provider: ProviderInfo, token_b: str) -> None:
    with pytest.raises(JoseError):
        check(provider, token_b, issuer="https://idp.example.com")


async def test_an_expired_token_is_refused(provider: ProviderInfo, token_b: str) -> None:
    exp = int(check(provider, token_b)["exp"])
    with pytest.raises(JoseError):
        check(provider, token_b, now=exp + 3600)


async def test_a_changed_token_is_refused(provider: ProviderInfo, token_b: str) -> None:
    header, payload, signature = token_b.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    with pytest.raises(JoseError):
        check(provider, f"{header}.{payload}.{flipped}")


async def test_a_token_signed_with_a_shared_secret_is_refused(provider: ProviderInfo,
                                                              token_b: str) -> None:
    """HS256 under the client secret is not accepted (refused twice over: the algorithm is
    not one we take, and a JWKS holds no symmetric key to check it with)."""
    claims = check(provider, token_b)
    forged = jwt.encode({"alg": "HS256"}, claims,
                        OctKey.import_key(CLIENT_SECRETS["domicile-b"].encode()))
    with pytest.raises(JoseError):
        check(provider, forged)


async def test_discovery_is_cached_for_its_ttl(sso: SsoSite) -> None:
    now = [1000.0]
    directory = ProviderDirectory(ttl=300, clock=lambda: now[0])
    first = await directory.get(sso.provider.issuer)
    assert first.token_endpoint == f"{sso.provider.issuer}/token"
    now[0] += 299
    assert await directory.get(sso.provider.issuer) is first
    now[0] += 2
    again = await directory.get(sso.provider.issuer)
    assert again is not first and again.fetched_at == now[0]
    assert len(directory) == 1


async def test_discovery_refuses_an_issuer_that_names_another(sso: SsoSite) -> None:
    """The document must name the issuer it was fetched for (here `localhost`, not the IP)."""
    other = sso.provider.issuer.replace("127.0.0.1", "localhost")
    with pytest.raises(UpstreamError):
        await ProviderDirectory().get(other)
