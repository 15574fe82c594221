"""The gateway's door (G3): who is calling, and may they be processed in this region?

Checked before the request body is read, in this order:

1. The key's prefix names another configured region (`dk-us-…` at eu): 403 `wrong_region`,
   naming that region's public URL. No lookup is needed to refuse it.
2. The directory does not know the key (or it is revoked): 401 `invalid_api_key`.
3. The key's project is pinned to another region: 403 `wrong_region`, naming its URL. A
   `global` project with per-request residency may call any region.

Lookups go through `KeyCache`: a positive answer is reused for `ttl` seconds (1 s by
default), a negative one never, so a revoked key stops working within 1 s on every worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from domicile.config import Settings
from domicile.errors import InvalidApiKey, WrongRegion
from domicile.tenancy.cache import CredentialCache
from domicile.tenancy.grants import GLOBAL_REGION, ApiKeyGrant, KeyAuthenticator, key_region

from .http import Scope, header

__all__ = ["Doorkeeper", "KeyCache", "bearer_secret", "mask_secret"]

_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def mask_secret(secret: str) -> str:
    """Never more than a key's first 8 characters in an error or a log."""
    return secret[:8] + "…"


def bearer_secret(scope: Scope) -> str:
    value = header(scope, b"authorization")
    if value is None:
        raise InvalidApiKey(_MISSING_KEY)
    scheme, _, secret = value.partition(b" ")
    secret = secret.strip()
    if scheme.lower() != b"bearer" or not secret:
        raise InvalidApiKey(_MISSING_KEY)
    try:
        return secret.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidApiKey("The API key is malformed.") from None


class KeyCache(CredentialCache[ApiKeyGrant]):
    """API-key grants, remembered for `ttl` seconds (see `CredentialCache`)."""

    def __init__(self, authenticator: KeyAuthenticator, *, ttl: float = 1.0,
                 max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(authenticator.authenticate_api_key, ttl=ttl,
                         max_entries=max_entries, clock=clock)


class Doorkeeper:
    """Applies the three checks above for one region."""

    def __init__(self, settings: Settings, region: str, cache: KeyCache) -> None:
        self._region = region
        self._cache = cache
        self._urls = {name: r.public_url for name, r in settings.regions.items()}

    async def admit(self, scope: Scope) -> ApiKeyGrant:
        secret = bearer_secret(scope)
        named = key_region(secret)
        if named is not None and named != self._region and named in self._urls:
            raise WrongRegion(self._wrong_door(named))
        grant = self._cache.peek(secret) or await self._cache.lookup(secret)
        if grant is None:
            raise InvalidApiKey(f"Incorrect API key provided: {mask_secret(secret)}. "
                                "The key is unknown or has been revoked.")
        if not grant.may_use_region(self._region):
            raise WrongRegion(self._wrong_door(grant.region))
        return grant

    def _wrong_door(self, home: str) -> str:
        url = self._urls.get(home)
        if url is not None:
            return (f"This key belongs to region {home}; call {url} instead. "
                    f"Region {self._region} does not process its data.")
        if home == GLOBAL_REGION:
            return (f"This key's project has no per-request residency; region {self._region} "
                    "may not process its data.")
        return f"This key belongs to region {home}, which region {self._region} does not serve."
