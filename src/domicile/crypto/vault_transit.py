"""HashiCorp Vault / OpenBao transit engine as a region's KEK: `key_provider = { kind =
"vault-transit", url = "...", key_name = "...", mount = "transit", token_env = "VAULT_TOKEN" }`.

- data keys: `POST <mount>/datakey/plaintext/<key>` (a fresh 256-bit key and its wrap);
- unwrap: `POST <mount>/decrypt/<key>`; rewrap: `POST <mount>/encrypt/<key>`;
- every call carries `context` = base64 of the canonical JSON of `{"region", "tenant",
  "key_id"}` (`keys.wrap_context`). Transit derives a per-context key from it, so a wrap moved
  to another tenant or region does not decrypt.

The transit keys must therefore be created DERIVED (`derived=true`; Vault refuses a context
on a key that is not, and a derived key without one), for example:

    vault write -f transit/keys/domicile-eu derived=true

Domicile's token needs `update` (not `create`, so an encrypt never silently makes a missing
key) on `<mount>/datakey/plaintext/<key>`, `<mount>/encrypt/<key>` and
`<mount>/decrypt/<key>` for the region's key and each tenant's own key. The token is read
from the environment variable `token_env` names, never from the config file.

Per-tenant customer-managed keys: `tenant_kek` names another transit key on the same Vault
(`key_name`, or the full `vault:<mount>/<key_name>`). The customer revokes Domicile's policy
on it, or deletes it, and the tenant can no longer be read (docs/KEYS.md).

Failures: Vault refusing (400: wrong context, unknown or deleted key, not a wrap; 401/403:
permission denied; 404: no such mount) raises `KekRefused` (a `KeyNotFound`; under a tenant's
own key opening its content then fails with `TenantKeyRefused`, a 403; under the region's own
key, an expired token for one, the keystore makes it `KeyServiceUnavailable`); connection
errors, timeouts, 429 and 5xx (sealed, standby, down) raise `KeyServiceUnavailable` (a 503).
Messages name the key id, the operation and the HTTP status; never a plaintext, a ciphertext, a
context or the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import hvac
import hvac.exceptions
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from domicile.config import VaultTransitSettings

from .wrapping import KekRefused, KeyServiceUnavailable

__all__ = ["VaultTransitWrapper", "transit_context"]

DATA_KEY_BYTES = 32
_KEK_PREFIX = "vault:"
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")
# Vault's "this key will not open that" answers; everything else may pass.
_REFUSALS: tuple[type[hvac.exceptions.VaultError], ...] = (
    hvac.exceptions.InvalidRequest,   # 400: wrong context, no such key, not a wrap
    hvac.exceptions.Unauthorized,     # 401
    hvac.exceptions.Forbidden,        # 403: the key's policy was revoked
    hvac.exceptions.InvalidPath,      # 404: no such mount or path
)
# A connection refused, or a 429 / 502 / 503 / 504, is tried twice more with a short backoff
# (all transit calls are safe to repeat); a request that reached Vault and timed out is not.
_RETRY = Retry(total=2, connect=2, read=0, status=2, backoff_factor=0.2,
               status_forcelist=(429, 502, 503, 504), allowed_methods=None,
               raise_on_status=False, respect_retry_after_header=False)


def transit_context(context: Mapping[str, str]) -> str:
    """The transit `context` for a wrap context: base64 of its canonical JSON (sorted keys,
    no spaces), so the same context always derives the same key."""
    canonical = json.dumps(dict(context), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return base64.b64encode(canonical.encode()).decode()


class VaultTransitWrapper:
    """Wraps and unwraps a region's data keys with Vault transit; holds no key material."""

    def __init__(self, settings: VaultTransitSettings, *,
                 client: hvac.Client | None = None) -> None:
        self._url = settings.url
        self._mount = settings.mount
        self._key_name = settings.key_name
        if client is None:
            token = settings.token()
            if token is None:
                raise ValueError(f"vault-transit: the environment variable "
                                 f"{settings.token_env} holding the Vault token is not set")
            session = requests.Session()
            adapter = HTTPAdapter(max_retries=_RETRY)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            client = hvac.Client(
                url=settings.url, token=token.get_secret_value(),
                namespace=settings.namespace,
                verify=str(settings.ca_file) if settings.ca_file is not None else True,
                timeout=settings.timeout_s, session=session)
        self._client = client

    def __repr__(self) -> str:
        return f"VaultTransitWrapper(url={self._url!r}, kek_id={self.kek_id!r})"

    @property
    def kek_id(self) -> str:
        return f"{_KEK_PREFIX}{self._mount}/{self._key_name}"

    def kek_for(self, tenant: str, tenant_kek: str | None) -> str:
        """The tenant's own transit key when it has one (a key name on this region's mount,
        or a full `vault:<mount>/<key_name>`), else the region's."""
        if tenant_kek is None:
            return self.kek_id
        if not tenant_kek.startswith(_KEK_PREFIX):
            tenant_kek = f"{_KEK_PREFIX}{self._mount}/{tenant_kek}"
        _split_kek_id(tenant_kek)  # a ValueError for a malformed one, before anything is made
        return tenant_kek

    def generate(self, kek_id: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        mount, name = _split_kek_id(kek_id)
        data = self._call("datakey", kek_id, lambda: self._client.secrets.transit
                          .generate_data_key(name, key_type="plaintext", bits=256,
                                             context=transit_context(context),
                                             mount_point=mount))
        dek = _decode_plaintext(data, "datakey", kek_id)
        if len(dek) != DATA_KEY_BYTES or not isinstance(data.get("ciphertext"), str):
            raise KeyServiceUnavailable(
                f"Vault datakey under {kek_id} returned a {len(dek)}-byte data key, "
                f"not {DATA_KEY_BYTES}")
        return dek, str(data["ciphertext"]).encode("ascii")

    def wrap(self, kek_id: str, dek: bytes, context: Mapping[str, str]) -> bytes:
        if len(dek) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes")
        mount, name = _split_kek_id(kek_id)
        data = self._call("encrypt", kek_id, lambda: self._client.secrets.transit
                          .encrypt_data(name, plaintext=base64.b64encode(dek).decode(),
                                        context=transit_context(context), mount_point=mount))
        if not isinstance(data.get("ciphertext"), str):
            raise KeyServiceUnavailable(f"Vault encrypt under {kek_id} returned no ciphertext")
        return str(data["ciphertext"]).encode("ascii")

    def unwrap(self, wrapped: bytes, kek_id: str, context: Mapping[str, str]) -> bytes:
        mount, name = _split_kek_id(kek_id)
        try:
            ciphertext = wrapped.decode("ascii")
        except UnicodeDecodeError:
            raise KekRefused(f"Vault key {kek_id}: the wrap is not a transit "
                              "ciphertext") from None
        data = self._call("decrypt", kek_id, lambda: self._client.secrets.transit
                          .decrypt_data(name, ciphertext=ciphertext,
                                        context=transit_context(context), mount_point=mount))
        dek = _decode_plaintext(data, "decrypt", kek_id)
        if len(dek) != DATA_KEY_BYTES:
            raise KekRefused(f"Vault key {kek_id}: the wrap holds no {DATA_KEY_BYTES}-byte "
                              "data key")
        return dek

    def _call(self, operation: str, kek_id: str, request: Any) -> dict[str, Any]:
        """`request()`'s `data`, its failures mapped (the originals are not chained: their
        text can carry the request URL and Vault's words, this message is enough)."""
        try:
            answer = request()
        except hvac.exceptions.VaultError as exc:
            _raise_mapped(exc, operation, kek_id)
        except requests.RequestException as exc:
            raise KeyServiceUnavailable(f"Vault {operation} under {kek_id} unreachable "
                                        f"({type(exc).__name__})") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise KeyServiceUnavailable(f"Vault {operation} under {kek_id}: no data in the "
                                        "answer")
        return data


def _split_kek_id(kek_id: str) -> tuple[str, str]:
    """`vault:<mount>/<key_name>` → (mount, key_name); ValueError if it is not one."""
    if kek_id.startswith(_KEK_PREFIX):
        mount, _, name = kek_id[len(_KEK_PREFIX):].rpartition("/")
        if _MOUNT.match(mount) and _KEY_NAME.match(name):
            return mount, name
    raise ValueError(f"not a Vault transit key id (vault:<mount>/<key_name>): {kek_id!r}")


def _decode_plaintext(data: dict[str, Any], operation: str, kek_id: str) -> bytes:
    try:
        return base64.b64decode(str(data["plaintext"]), validate=True)
    except (KeyError, binascii.Error):
        raise KeyServiceUnavailable(f"Vault {operation} under {kek_id}: no plaintext in the "
                                    "answer") from None


def _raise_mapped(exc: hvac.exceptions.VaultError, operation: str, kek_id: str) -> NoReturn:
    status = _STATUS.get(type(exc), "?")
    if isinstance(exc, _REFUSALS):
        raise KekRefused(f"Vault key {kek_id} refused {operation} (HTTP {status})") from None
    raise KeyServiceUnavailable(
        f"Vault {operation} under {kek_id} failed (HTTP {status})") from None


_STATUS: dict[type[hvac.exceptions.VaultError], int] = {
    hvac.exceptions.InvalidRequest: 400, hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403, hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.PreconditionFailed: 412, hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500, hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502, hvac.exceptions.VaultDown: 503,
}
