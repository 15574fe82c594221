"""A regional store's tables. Content columns hold only envelope ciphertext (G5)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, LargeBinary, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from domicile.storage.schema import audit_tables

__all__ = ["BlobRow", "RecordRow", "RegionBase", "StoreIdentity", "UsageRow"]


class RegionBase(DeclarativeBase):
    metadata = MetaData()


AUDIT_LOG, AUDIT_HEAD = audit_tables(RegionBase.metadata)


class StoreIdentity(RegionBase):
    """One row: the region this database belongs to. Inserts of another region's rows fail."""

    __tablename__ = "store_identity"
    region: Mapped[str] = mapped_column(String(16), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RecordRow(RegionBase):
    __tablename__ = "records"
    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    region: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[bytes] = mapped_column(LargeBinary)  # sealed
    # G7: the org's training consent when the row was written (see migration 0003_trust).
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False)


class BlobRow(RegionBase):
    __tablename__ = "blobs"
    # Pages by keyset in (created_at, id) order (see migration 0004_blob_pages).
    __table_args__ = (Index("ix_blobs_tenant_kind_created", "tenant_id", "kind", "created_at",
                            "blob_id"),)
    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    blob_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    region: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    meta: Mapped[bytes] = mapped_column(LargeBinary)  # sealed JSON: filename and metadata
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False)  # G7


class UsageRow(RegionBase):
    """Per-request metadata: who, when, which model and provider, tokens. No content."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_project_at", "project_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    region: Mapped[str] = mapped_column(String(16))
    project_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(80))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    request_id: Mapped[str] = mapped_column(String(40), default="")
