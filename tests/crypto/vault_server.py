"""A STAND-IN for HashiCorp Vault / OpenBao: a real HTTP server on loopback speaking the
documented subset of Vault's transit secrets engine API that `VaultTransitWrapper` uses.
Neither Vault nor OpenBao installs on this machine (no Debian or PyPI package), so tests say
they run against this stand-in, not against Vault.

What it speaks (under `/v1/<mount>/`, JSON bodies, errors as `{"errors": [...]}`):
- `POST keys/<name>` (`derived`), `POST keys/<name>/config` (`deletion_allowed`),
  `DELETE keys/<name>` (400 unless deletion is allowed);
- `POST datakey/plaintext/<name>` (`context`, `bits`): a fresh key and its ciphertext;
- `POST encrypt/<name>` (`plaintext`, `context`), `POST decrypt/<name>` (`ciphertext`,
  `context`): ciphertexts `vault:v1:<base64(nonce || AES-256-GCM)>`.

As Vault does: a derived key's per-context key is HKDF-SHA256(key, info=context), so a wrong
context fails with 400 "cipher: message authentication failed"; a derived key without
context, or a context on a key that is not derived, is 400; an unknown key is 400
"encryption key not found"; the token comes in `X-Vault-Token`, and a missing or unknown
token, or one whose policy does not cover the key, is 403 "permission denied". Tokens carry
the documented Domicile policy (`update` only), so `encrypt` under a missing key is 403, not
Vault's upsert. `seal()` makes every request answer 503 "Vault is sealed".

Not spoken: key versions and rotation, convergent encryption, batch input, namespaces,
anything outside transit.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PREFIX = "vault:v1:"


class VaultError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class TransitKey:
    material: bytes = field(repr=False)
    derived: bool
    deletion_allowed: bool = False

    def cipher(self, context: bytes | None) -> AESGCM:
        if self.derived:
            if not context:
                raise VaultError(400, "missing 'context' for key derivation; the key was "
                                 "created using a derived key, which means additional, "
                                 "per-request information must be included in order to "
                                 "perform operations with the key")
            return AESGCM(HKDF(hashes.SHA256(), 32, None, context).derive(self.material))
        if context:
            raise VaultError(400, "key derivation context is only supported for derived keys")
        return AESGCM(self.material)


class VaultTransitStandIn:
    """`with VaultTransitStandIn() as vault:` → `vault.url`, `vault.root_token`;
    `vault.issue_token(keys)` for a token whose policy covers only `keys`."""

    def __init__(self, mount: str = "transit") -> None:
        self.mount = mount
        self.root_token = "hvs." + secrets.token_urlsafe(24)
        self._tokens: dict[str, frozenset[str] | None] = {self.root_token: None}
        self._keys: dict[str, TransitKey] = {}
        self._lock = threading.Lock()
        self.sealed = False
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("POST")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def _dispatch(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                    if not isinstance(body, dict):
                        raise VaultError(400, "invalid request body")
                    status, answer = stand_in.handle(
                        method, self.path, self.headers.get("X-Vault-Token"), body)
                except VaultError as exc:
                    status, answer = exc.status, {"errors": [str(exc)]}
                except json.JSONDecodeError:
                    status, answer = 400, {"errors": ["failed to parse JSON input"]}
                payload = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def issue_token(self, keys: set[str]) -> str:
        """A token whose policy grants `update` on the transit paths of `keys` only."""
        token = "hvs." + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = frozenset(keys)
        return token

    def revoke_policy(self, token: str, key: str) -> None:
        """Take `key` out of the token's policy (a customer revoking Domicile's access)."""
        with self._lock:
            allowed = self._tokens[token]
            assert allowed is not None, "the root token's policy is everything"
            self._tokens[token] = allowed - {key}

    def grant_policy(self, token: str, key: str) -> None:
        with self._lock:
            allowed = self._tokens[token]
            assert allowed is not None, "the root token's policy is everything"
            self._tokens[token] = allowed | {key}

    def seal(self) -> None:
        self.sealed = True

    def unseal(self) -> None:
        self.sealed = False

    # -- the API ----------------------------------------------------------------------------

    def handle(self, method: str, path: str, token: str | None,
               body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        if self.sealed:
            raise VaultError(503, "Vault is sealed")
        prefix = f"/v1/{self.mount}/"
        if not path.startswith(prefix):
            raise VaultError(404, f"no handler for route \"{path.removeprefix('/v1/')}\". "
                             "route entry not found.")
        route = path[len(prefix):].split("?", 1)[0]
        parts = route.split("/")
        with self._lock:
            allowed = self._tokens.get(token or "", frozenset())
            name = parts[-1] if parts[-1] != "config" else parts[-2]
            if token not in self._tokens or (allowed is not None and name not in allowed):
                raise VaultError(403, "permission denied")
            if parts[0] == "keys" and len(parts) == 2 and method == "POST":
                return self._create(name, body)
            if parts[0] == "keys" and len(parts) == 3 and parts[2] == "config":
                return self._configure(name, body)
            if parts[0] == "keys" and len(parts) == 2 and method == "DELETE":
                return self._delete(name)
            if parts[:2] == ["datakey", "plaintext"] and len(parts) == 3:
                return 200, self._datakey(name, body)
            if parts[0] == "encrypt" and len(parts) == 2:
                if name not in self._keys:  # Vault's upsert needs `create`: not granted
                    raise VaultError(403, "permission denied")
                return 200, self._encrypt(name, body)
            if parts[0] == "decrypt" and len(parts) == 2:
                return 200, self._decrypt(name, body)
        raise VaultError(405, "unsupported operation")

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, None]:
        if name not in self._keys:
            self._keys[name] = TransitKey(secrets.token_bytes(32), bool(body.get("derived")))
        return 204, None

    def _configure(self, name: str, body: dict[str, Any]) -> tuple[int, None]:
        key = self._key(name)
        if "deletion_allowed" in body:
            key.deletion_allowed = bool(body["deletion_allowed"])
        return 204, None

    def _delete(self, name: str) -> tuple[int, None]:
        if not self._key(name).deletion_allowed:
            raise VaultError(400, "deletion is not allowed for this key")
        del self._keys[name]
        return 204, None

    def _key(self, name: str) -> TransitKey:
        key = self._keys.get(name)
        if key is None:
            raise VaultError(400, "encryption key not found")
        return key

    def _datakey(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        bits = int(body.get("bits", 256))
        if bits not in (128, 256, 512):
            raise VaultError(400, "invalid bit length")
        plaintext = secrets.token_bytes(bits // 8)
        sealed = self._seal(name, plaintext, body)
        return _response({"plaintext": base64.b64encode(plaintext).decode(),
                          "ciphertext": sealed, "key_version": 1})

    def _encrypt(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        plaintext = _b64(body.get("plaintext"), "plaintext")
        return _response({"ciphertext": self._seal(name, plaintext, body), "key_version": 1})

    def _decrypt(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        key = self._key(name)
        ciphertext = str(body.get("ciphertext", ""))
        if not ciphertext.startswith(_PREFIX):
            raise VaultError(400, "invalid ciphertext: no prefix")
        try:
            blob = base64.b64decode(ciphertext[len(_PREFIX):], validate=True)
        except binascii.Error:
            raise VaultError(400, "invalid ciphertext: could not decode") from None
        cipher = key.cipher(_context(body))
        try:
            plaintext = cipher.decrypt(blob[:12], blob[12:], None)
        except InvalidTag:
            raise VaultError(400, "cipher: message authentication failed") from None
        return _response({"plaintext": base64.b64encode(plaintext).decode()})

    def _seal(self, name: str, plaintext: bytes, body: dict[str, Any]) -> str:
        cipher = self._key(name).cipher(_context(body))
        nonce = secrets.token_bytes(12)
        return _PREFIX + base64.b64encode(nonce + cipher.encrypt(nonce, plaintext, None)).decode()

    # -- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> VaultTransitStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _context(body: dict[str, Any]) -> bytes | None:
    value = body.get("context")
    return _b64(value, "context") if value else None


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error:
        raise VaultError(400, f"failed to base64-decode {what}") from None


def _response(data: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": secrets.token_hex(8), "lease_id": "", "renewable": False,
            "lease_duration": 0, "data": data, "wrap_info": None, "warnings": None,
            "auth": None}
