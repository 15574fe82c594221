"""What the directory tells a data plane about a presented credential.

The gateway's only question to the control plane is "whose key is this?"; the answer is an
`ApiKeyGrant`: ids, region, retention and limits. It holds no secret and no content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from domicile.storage.interfaces import TenantRef

__all__ = [
    "GLOBAL_REGION",
    "ROLES",
    "ApiKeyGrant",
    "KeyAuthenticator",
    "MemberGrant",
    "Retention",
    "Role",
    "key_region",
]

Retention = Literal["zero", "regional"]
Role = Literal["owner", "admin", "member"]
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
GLOBAL_REGION = "global"


@dataclass(frozen=True, slots=True)
class ApiKeyGrant:
    key_id: str
    project_id: str
    org_id: str
    region: str  # a configured region, or "global" (per-request residency)
    retention: Retention
    per_request_residency: bool
    rpm_limit: int | None  # requests per minute per key; None = unlimited
    tpm_limit: int | None  # tokens per minute per key; None = unlimited
    training_opt_in: bool = False  # the org's consent (G7), as of this check

    def may_use_region(self, region: str) -> bool:
        """G1/G2: a pinned project is processed only in its own region."""
        if self.region == GLOBAL_REGION:
            return self.per_request_residency
        return self.region == region


@dataclass(frozen=True, slots=True)
class MemberGrant:
    """A signed-in workspace member, as the workspace sees them: through a `dw-` token
    (`token_id`) or a browser session (`session`, the digest of the session's secret)."""

    workspace_id: str
    org_id: str
    user_id: str
    region: str  # the workspace's region (G1: fixed at its creation)
    role: Role
    token_id: str | None = None
    session: str | None = None
    training_opt_in: bool = False  # the org's consent (G7), as of this check

    @property
    def tenant(self) -> TenantRef:
        """The workspace as the regional store knows it: content is sealed per workspace."""
        return TenantRef(self.workspace_id, self.region, self.org_id, self.training_opt_in)

    @property
    def is_admin(self) -> bool:
        return self.role in ("owner", "admin")


class KeyAuthenticator(Protocol):
    def authenticate_api_key(self, secret: str) -> ApiKeyGrant | None:
        """The grant of a live key; None when the key is unknown or revoked."""
        ...


def key_region(secret: str, prefix: str = "dk") -> str | None:
    """The region a credential names in its prefix (`dk-eu-…` → "eu"), without any lookup."""
    head, sep, rest = secret.partition("-")
    if head != prefix or not sep:
        return None
    region, sep, _ = rest.partition("-")
    return region if sep and region else None
