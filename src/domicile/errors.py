"""Domicile's errors: one model for the HTTP API (OpenAI's error shape) and the CLI (exit codes).

Handlers and commands raise these; one renderer per surface turns them into a response or an
exit code. Messages must never carry request content or secrets: they are written to logs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

# Extra response headers an error carries (raw ASGI pairs), e.g. `x-ratelimit-*` on a 429.
ErrorHeaders = Sequence[tuple[bytes, bytes]]

__all__ = [
    "BodyTooLarge",
    "ConfigError",
    "Conflict",
    "ContentStoreUnavailable",
    "CrossRegionWrite",
    "CsrfFailed",
    "DomicileError",
    "Forbidden",
    "HeadersTimeout",
    "HeadersTooLarge",
    "InsufficientStorage",
    "InvalidApiKey",
    "InvalidCredentials",
    "InvalidInput",
    "LoginThrottled",
    "MethodNotAllowed",
    "ModelNotFound",
    "NoInRegionProvider",
    "NotFound",
    "RateLimited",
    "RegionBusy",
    "RegionImmutable",
    "ReplyInProgress",
    "RequestTimeout",
    "ServerBusy",
    "StorageError",
    "StoreUnavailable",
    "TenantDataErased",
    "TokenRateLimited",
    "UnsupportedFile",
    "UpstreamError",
    "WrongRegion",
    "ZeroRetentionViolation",
]


class DomicileError(Exception):
    """Base of every error Domicile reports to a user."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    type: ClassVar[str] = "server_error"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, param: str | None = None,
                 headers: ErrorHeaders = ()) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers

    def to_openai(self) -> dict[str, object]:
        """The body OpenAI's API returns for an error, so the SDK raises the right class."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        """`to_openai` as an HTTP body. ASCII-escaped on purpose: a message may quote client
        text holding a lone surrogate, which has no UTF-8 encoding."""
        return json.dumps(self.to_openai()).encode()


class InvalidInput(DomicileError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"
    exit_code = 2


class BodyTooLarge(InvalidInput):
    status = 413
    code = "request_too_large"


class ConfigError(InvalidInput):
    """A configuration that cannot be used; the message names the field."""

    code = "invalid_config"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", param=field)
        self.field = field


class NotFound(DomicileError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"
    exit_code = 2


class MethodNotAllowed(InvalidInput):
    """A known path asked with a method it does not serve; carries `allow`."""

    status = 405
    code = "method_not_allowed"


class ModelNotFound(NotFound):
    code = "model_not_found"


class InvalidApiKey(DomicileError):
    status = 401
    code = "invalid_api_key"
    type = "invalid_request_error"
    exit_code = 2


class Forbidden(DomicileError):
    status = 403
    code = "forbidden"
    type = "invalid_request_error"
    exit_code = 2


class WrongRegion(Forbidden):
    """G3: a credential of region A presented at region B."""

    code = "wrong_region"


class Conflict(InvalidInput):
    """The request conflicts with the current state of its object; it may succeed later."""

    status = 409
    code = "conflict"


class ReplyInProgress(Conflict):
    """A message to a conversation whose reply is still being written."""

    code = "reply_in_progress"


class RequestTimeout(InvalidInput):
    """A request body that stopped arriving (an upload idle past its bound): nothing stored."""

    status = 408
    code = "request_timeout"


class ZeroRetentionViolation(InvalidInput):
    """G4: a feature that must store content, asked of a zero-retention project."""

    code = "zero_retention"


class RegionImmutable(InvalidInput):
    """G1: an attempt to change a tenant's region."""

    code = "region_immutable"


class TenantDataErased(DomicileError):
    """G9: a write for a tenant whose data was erased (crypto-shredded) in this region."""

    status = 410
    code = "tenant_erased"
    type = "invalid_request_error"
    exit_code = 2


class CrossRegionWrite(DomicileError):
    """A store asked to keep a record of a tenant of another region (G1/G2 defence in depth)."""

    code = "cross_region_write"


class RateLimited(DomicileError):
    """Over a key's requests per minute; carries OpenAI's `x-ratelimit-*` headers."""

    status = 429
    code = "rate_limit_exceeded"
    type = "requests"
    exit_code = 1


class TokenRateLimited(RateLimited):
    type = "tokens"


class NoInRegionProvider(DomicileError):
    """G2: nothing in the tenant's region can serve; fail closed."""

    status = 503
    code = "no_in_region_provider"
    type = "server_error"


class ContentStoreUnavailable(DomicileError):
    """A regional project's storing feature, at a server that has no content store."""

    status = 503
    code = "content_store_unavailable"
    type = "server_error"


class RegionBusy(DomicileError):
    """Every in-region provider's connection pool is full: capacity, not an outage. Carries
    `retry-after`."""

    status = 503
    code = "region_busy"
    type = "server_error"


class HeadersTooLarge(InvalidInput):
    """A request line and headers past `server.max_header_bytes`; the connection is closed."""

    status = 431
    code = "request_header_fields_too_large"


class HeadersTimeout(InvalidInput):
    """A request's headers not complete within `server.header_timeout_s`; closed."""

    status = 408
    code = "request_timeout"


class ServerBusy(DomicileError):
    """A connection past `server.max_connections` of a region's server; closed at once."""

    status = 503
    code = "server_busy"
    type = "server_error"


class UpstreamError(DomicileError):
    """An upstream answered something that is not a valid answer (malformed JSON, a stream
    broken off): never relayed as if it were one."""

    status = 502
    code = "upstream_error"
    type = "server_error"


class StoreUnavailable(DomicileError):
    """The region's database or blob store cannot be reached now; nothing was changed."""

    status = 503
    code = "store_unavailable"
    type = "server_error"


class InsufficientStorage(DomicileError):
    """The region's disk is full; nothing new was stored. Deletes still work, to free space."""

    status = 507
    code = "insufficient_storage"
    type = "server_error"


class StorageError(DomicileError):
    code = "storage_error"


class UnsupportedFile(InvalidInput):
    """An upload whose content is not a supported document or image, or whose name claims
    another type than its content."""

    code = "unsupported_file"


class InvalidCredentials(InvalidApiKey):
    """A sign-in whose email or password is wrong: one message either way, so an answer
    never tells whether an address has an account."""

    code = "invalid_credentials"


class LoginThrottled(RateLimited):
    """Too many failed sign-ins for an account or from an address; carries `retry-after`."""

    code = "too_many_login_attempts"


class CsrfFailed(Forbidden):
    """A cookie-authenticated unsafe request without the session's CSRF token, or from
    another origin."""

    code = "csrf_failed"
