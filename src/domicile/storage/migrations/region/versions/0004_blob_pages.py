"""An index for pages of a tenant's blobs (`RegionalStore.page_blobs`, `GET /v1/files`).

A page is read by keyset in (created_at, blob_id) order within (tenant_id, kind); without
this index every read sorted all of the tenant's rows of the kind (a temporary B-tree per
read). Ids and times only: the index holds no content.
"""

from alembic import op

revision = "0004_blob_pages"
down_revision = "0003_trust"


def upgrade() -> None:
    op.create_index("ix_blobs_tenant_kind_created", "blobs",
                    ["tenant_id", "kind", "created_at", "blob_id"])


def downgrade() -> None:
    raise NotImplementedError("the regional store's schema has no downgrade")
