"""The chat workspace's content: sessions, conversations and messages, files, GPTs.

Content columns (`title`, `body`, `meta`) hold only envelope ciphertext (G5); the rest is
what a query needs (ids, owners, times, sizes) and no content. Every table records its region
and refuses a row of another (G1/G2 defence in depth, as the first schema's tables).
"""

import sqlalchemy as sa
from alembic import op

from domicile.storage.migrations.audit_ddl import refuse_foreign_region

revision = "0002_workspace"
down_revision = "0001_region"

WORKSPACE_TABLES = ("ws_sessions", "ws_conversations", "ws_messages", "ws_files", "ws_gpts")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _owner() -> list[sa.Column[object]]:
    return [
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("region", sa.String(16), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "ws_sessions",
        # HMAC of the session secret: a copy of the store cannot sign anyone in.
        sa.Column("digest", sa.String(64), primary_key=True),
        *_owner(),
        sa.Column("csrf_digest", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("last_seen_at"),
    )
    op.create_index("ix_ws_sessions_user", "ws_sessions", ["workspace_id", "user_id"])
    op.create_table(
        "ws_conversations",
        sa.Column("id", sa.String(40), primary_key=True),
        *_owner(),
        sa.Column("model", sa.String(200)),
        sa.Column("gpt_id", sa.String(40)),
        sa.Column("current_message_id", sa.String(40)),
        sa.Column("message_count", sa.Integer, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.Column("title", sa.LargeBinary, nullable=False),  # sealed
    )
    op.create_index("ix_ws_conversations_newest", "ws_conversations",
                    ["workspace_id", "user_id", "updated_at", "id"])
    op.create_table(
        "ws_messages",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40),
                  sa.ForeignKey("ws_conversations.id", ondelete="CASCADE"), nullable=False),
        *_owner(),
        sa.Column("parent_id", sa.String(40)),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        sa.Column("body", sa.LargeBinary, nullable=False),  # sealed
    )
    op.create_index("ix_ws_messages_conversation", "ws_messages", ["conversation_id", "seq"])
    op.create_table(
        "ws_files",
        sa.Column("id", sa.String(40), primary_key=True),
        *_owner(),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),  # upload | generated
        _ts("created_at"),
        sa.Column("meta", sa.LargeBinary, nullable=False),  # sealed: name, extracted text size
    )
    op.create_index("ix_ws_files_owner", "ws_files", ["workspace_id", "user_id", "created_at"])
    op.create_table(
        "ws_gpts",
        sa.Column("id", sa.String(40), primary_key=True),
        *_owner(),  # user_id: the GPT's owner
        sa.Column("sharing", sa.String(16), nullable=False),  # private | workspace
        _ts("created_at"),
        _ts("updated_at"),
        sa.Column("body", sa.LargeBinary, nullable=False),  # sealed
    )
    op.create_index("ix_ws_gpts_workspace", "ws_gpts", ["workspace_id", "updated_at"])
    for table in WORKSPACE_TABLES:
        refuse_foreign_region(table)


def downgrade() -> None:
    raise NotImplementedError("the workspace schema has no downgrade")
