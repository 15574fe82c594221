"""G9 through the regional store: a per-request-residency tenant erased in a region is refused
a new data key there by a process that never saw the erasure (its tombstone decides)."""

from __future__ import annotations

import pytest

from domicile.errors import TenantDataErased
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from tests.conftest import SiteFactory


def test_an_erased_global_tenant_is_refused_by_a_process_that_did_not_see_the_erasure(
    make_site: SiteFactory, backend: str,
) -> None:
    """On PostgreSQL the region's keystore is the shared one (`ManagedKeyProvider`)."""
    site = make_site(backend)
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "g", "global", per_request_residency=True)
    roaming = TenantRef(project.id, "global", org.id)
    site.store("eu").put_record(roaming, "response", "r", b"before")
    other_process = Site(site.settings)  # a server worker: its own store, keys, caches
    try:
        worker = other_process.store("eu")  # opened before the erasure, knows nothing of it
        site.store("eu").envelope.destroy_tenant_key(roaming.id)

        with pytest.raises(TenantDataErased, match="erased") as refused:
            worker.put_record(roaming, "response", "r2", b"after")
        assert refused.value.status == 410 and refused.value.code == "tenant_erased"
        with pytest.raises(TenantDataErased):
            worker.put_blob(roaming, "file", "f", "f.txt", [b"after"])
        assert not worker.keys.has_tenant(roaming.id)
        # The tenant's other regions are not touched by the eu erasure.
        other_process.store("us").put_record(roaming, "response", "r", b"us")
        assert other_process.store("us").get_record(roaming, "response", "r") == b"us"
    finally:
        other_process.close()
