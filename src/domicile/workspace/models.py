"""The workspace's tables in a regional store (schema: migration `0002_workspace`).

Content columns (`title`, `body`, `meta`) hold only envelope ciphertext, sealed with
`RegionalStore.seal` under the workspace's data key and bound to (region, workspace, kind,
row id) (G5). The other columns are what queries need, never content.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from domicile.storage.models import RegionBase

__all__ = ["ConversationRow", "FileRow", "GptRow", "MessageRow", "SessionRow"]


class SessionRow(RegionBase):
    """A browser session: server-side, found by the HMAC of the cookie's secret."""

    __tablename__ = "ws_sessions"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40))
    region: Mapped[str] = mapped_column(String(16))
    csrf_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConversationRow(RegionBase):
    __tablename__ = "ws_conversations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40))
    region: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))
    gpt_id: Mapped[str | None] = mapped_column(String(40))
    # The leaf of the branch the member last saw: editing or regenerating starts a branch,
    # and the earlier one stays.
    current_message_id: Mapped[str | None] = mapped_column(String(40))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    title: Mapped[bytes] = mapped_column(LargeBinary)  # sealed
    # G7: the org's training consent when the row was written.
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False)


class MessageRow(RegionBase):
    __tablename__ = "ws_messages"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("ws_conversations.id", ondelete="CASCADE"))
    workspace_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40))
    region: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[bytes] = mapped_column(LargeBinary)  # sealed JSON
    # G7: the org's training consent when the row was written.
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False)


class FileRow(RegionBase):
    """An uploaded or generated file. Its bytes (and its extracted text) are sealed blobs."""

    __tablename__ = "ws_files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40))
    region: Mapped[str] = mapped_column(String(16))
    media_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    origin: Mapped[str] = mapped_column(String(16))  # upload | generated
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    meta: Mapped[bytes] = mapped_column(LargeBinary)  # sealed JSON
    # G7: the org's training consent when the row was written.
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False)


class GptRow(RegionBase):
    __tablename__ = "ws_gpts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40))  # the owner
    region: Mapped[str] = mapped_column(String(16))
    sharing: Mapped[str] = mapped_column(String(16))  # private | workspace
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[bytes] = mapped_column(LargeBinary)  # sealed JSON
    # G7: the org's training consent when the row was written.
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False)
