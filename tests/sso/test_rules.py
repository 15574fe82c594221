"""The rules of a workspace's SSO settings (domicile.tenancy.sso), without a provider."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domicile.errors import InvalidInput
from domicile.tenancy.sso import (
    SsoConfig,
    check_client_id,
    check_endpoint,
    check_issuer,
    check_provider_endpoint,
    email_domain,
    parse_domains,
    sso_email,
)


@pytest.mark.parametrize("issuer", [
    "http://idp.example.com",  # G6: plain http off loopback
    "http://10.1.2.3:8080",
    "http://[2001:db8::1]/",
    "ftp://127.0.0.1",
    "https://user:pw@idp.example.com",
    "https://idp.example.com/?tenant=1",
    "https://idp.example.com/#x",
    "idp.example.com",
    "https://idp.example.com:99999",
])
def test_these_issuers_are_refused(issuer: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_issuer(issuer)
    assert raised.value.param == "issuer"


@pytest.mark.parametrize("issuer", [
    "https://idp.example.com", "https://login.example.org/realms/acme/",
    "http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:9000",
])
def test_these_issuers_are_kept_exactly(issuer: str) -> None:
    assert check_issuer(issuer) == issuer


def test_discovered_endpoints_follow_the_same_rule() -> None:
    with pytest.raises(InvalidInput):
        check_endpoint("http://idp.example.com/token", "token_endpoint")
    assert check_endpoint("https://idp.example.com/token", "t") == "https://idp.example.com/token"


@pytest.mark.parametrize("field", ["authorization_endpoint", "token_endpoint", "jwks_uri",
                                   "userinfo_endpoint"])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8080/token", "http://localhost/x",
                                      "http://[::1]:9/jwks", "http://idp.example.com/token"])
def test_a_remote_issuers_endpoints_must_be_https(field: str, endpoint: str) -> None:
    """A remote https issuer's document cannot send the code and client secret (or a token)
    to plain http on this machine's loopback."""
    with pytest.raises(InvalidInput) as raised:
        check_provider_endpoint(endpoint, field, "https://idp.example.com")
    assert raised.value.param == field


def test_a_loopback_issuers_endpoints_may_be_http_to_loopback() -> None:
    for issuer in ("http://127.0.0.1:4000", "https://localhost:4000"):
        assert check_provider_endpoint("http://127.0.0.1:4000/token", "token_endpoint",
                                       issuer) == "http://127.0.0.1:4000/token"
        with pytest.raises(InvalidInput):  # still never plain http off loopback
            check_provider_endpoint("http://idp.example.com/token", "token_endpoint", issuer)
    assert check_provider_endpoint("https://idp.example.com/jwks", "jwks_uri",
                                   "https://idp.example.com") == "https://idp.example.com/jwks"


def test_sso_emails_are_kept_as_the_directory_keeps_them() -> None:
    assert sso_email(" Ann@Example.COM ") == "ann@example.com"
    assert sso_email("ann@example.com.") == "ann@example.com"  # the same host: one member
    assert sso_email("ann@example.com..") == "ann@example.com"


@pytest.mark.parametrize("email", ["a@b@example.com", "ann@example", "ann@.", "@example.com",
                                   "ann smith@example.com", "ann@", "example.com", ""])
def test_sso_emails_the_directory_would_refuse_are_refused(email: str) -> None:
    assert sso_email(email) is None


def test_domains_are_lowercase_once_each_in_order() -> None:
    assert parse_domains(" Example.COM, @b.org,example.com,, ") == ("example.com", "b.org")
    assert parse_domains(["A.example"]) == ("a.example",)


@pytest.mark.parametrize("domains", ["", " , ", "*.example.com", "bob@example.com",
                                     "localhost", "exa mple.com", "-a.com",
                                     ",".join(f"d{i}.com" for i in range(51))])
def test_these_domain_lists_are_refused(domains: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_domains(domains)
    assert raised.value.param == "allowed_domains"


def test_an_email_matches_its_exact_domain_only() -> None:
    now = datetime.now(UTC)
    config = SsoConfig("ws_1", "org_1", "eu", "https://idp.example.com", "c",
                       ("example.com",), None, now, now)
    assert config.allows("Ann@Example.com")
    assert not config.allows("ann@sub.example.com")
    assert not config.allows("ann@example.com.evil.org")
    assert not config.allows("example.com")
    assert not config.allows("ann@example.org@example.com.x")
    assert email_domain("a@b@example.com") == "example.com"
    assert email_domain("@example.com") is None


def test_client_ids_are_printable() -> None:
    assert check_client_id(" domicile ") == "domicile"
    for bad in ("", "a b", "x" * 256, "é"):
        with pytest.raises(InvalidInput):
            check_client_id(bad)


def test_a_config_repr_shows_no_secret() -> None:
    now = datetime.now(UTC)
    config = SsoConfig("ws_1", "org_1", "eu", "https://i", "c", ("example.com",),
                       b"sealed-bytes", now, now)
    assert "sealed-bytes" not in repr(config)
    assert config.to_json()["client_secret"] == "sealed"
