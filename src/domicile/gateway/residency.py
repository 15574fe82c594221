"""Where a caller's content may be processed and kept.

`GET /v1/residency` is answered from the gateway's own router and configuration, so it cannot
drift from what the gateway does. `content_store_for` is the one gate in front of every
feature that keeps content (files, stored responses): refused for zero-retention projects
(G4), and kept in this region's store under a tenant of this region.
"""

from __future__ import annotations

from typing import Any

from domicile.compliance.residency import eligible_endpoints
from domicile.compliance.residency import stores_content as _stores_content
from domicile.errors import ContentStoreUnavailable, ZeroRetentionViolation
from domicile.inference.routing import ModelRouter
from domicile.storage.interfaces import ContentStore, TenantRef
from domicile.tenancy.grants import GLOBAL_REGION, ApiKeyGrant

__all__ = [
    "content_store_for",
    "residency_answer",
    "stores_content",
    "tenant_of",
]


def tenant_of(grant: ApiKeyGrant, region: str) -> TenantRef:
    """The tenant as this region's store sees it: a per-request-residency project keeps what
    it stores in the region it called."""
    # A global tenant is keyed per region on its first write there (`RegionalStore`).
    home = GLOBAL_REGION if grant.region == GLOBAL_REGION else region
    return TenantRef(id=grant.project_id, region=home, org_id=grant.org_id,
                     training_consent=grant.training_opt_in)


def content_store_for(grant: ApiKeyGrant, store: ContentStore | None,
                      feature: str) -> ContentStore:
    if grant.retention != "regional":
        raise ZeroRetentionViolation(
            f"{feature} stores content, and this project has zero data retention: nothing "
            "of its requests may be kept. Use a project with regional retention.")
    if store is None:
        raise ContentStoreUnavailable(
            f"{feature} needs this region's content store, which this server does not have.")
    return store


def stores_content(grant: ApiKeyGrant, has_store: bool) -> bool:
    """May this caller use the endpoints that keep content (files, stored responses)?"""
    return _stores_content(grant.retention, has_store)


def residency_answer(grant: ApiKeyGrant, router: ModelRouter, *,
                     has_store: bool) -> dict[str, Any]:
    # The rule is the residency report's too (compliance.residency): one copy.
    capabilities = {c for provider in router.providers for c in provider.capabilities}
    endpoints = eligible_endpoints(capabilities, retention=grant.retention, has_store=has_store)
    return {
        "project": grant.project_id,
        "org": grant.org_id,
        "region": grant.region,
        "processing_region": router.region,
        "retention": grant.retention,
        "per_request_residency": grant.per_request_residency,
        "endpoints": endpoints,
        "providers": [provider.describe() for provider in router.providers],
    }
