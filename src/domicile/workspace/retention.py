"""Retention: each workspace keeps its content forever, or deletes conversations and files
older than its `retention_days`. Deletions are real: rows, their sealed blobs, and the
knowledge index of nothing (a GPT's knowledge files are part of the GPT and stay while it
does). `domicile serve` sweeps periodically; `domicile retention sweep` on demand. Each sweep of
a workspace with a policy is audited (G8), with counts, never content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.directory import Directory

from .conversations import Conversations
from .files import FileStore
from .gpts import Gpts

__all__ = ["RetentionSweeper", "SweepResult", "sweeper_for"]


@dataclass(frozen=True, slots=True)
class SweepResult:
    region: str
    workspaces: int  # workspaces with a retention policy
    conversations: int
    files: int

    def to_json(self) -> dict[str, object]:
        return {"region": self.region, "workspaces_swept": self.workspaces,
                "conversations_deleted": self.conversations, "files_deleted": self.files}


class RetentionSweeper:
    def __init__(self, region: str, directory: Directory, store: RegionalStore,
                 conversations: Conversations, files: FileStore, gpts: Gpts,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.region = region
        self.directory = directory
        self.store = store
        self.conversations = conversations
        self.files = files
        self.gpts = gpts
        self._clock = clock

    def sweep(self, *, actor: str = "retention") -> SweepResult:
        """Delete what every workspace of this region keeps past its retention (blocking)."""
        now = self._clock()
        swept = conversations = files = 0
        for workspace in self.directory.list_workspaces(self.region):
            if workspace.retention_days is None:
                continue
            swept += 1
            tenant = TenantRef(workspace.id, workspace.region, workspace.org_id)
            cutoff = now - timedelta(days=workspace.retention_days)
            gone_conversations = self.conversations.delete_older_than(tenant, cutoff)
            keep = self.gpts.knowledge_file_ids(tenant)
            gone_files = self.files.delete_older_than(tenant, cutoff, keep)
            conversations += gone_conversations
            files += gone_files
            self.store.audit.append(actor, "retention.sweep", workspace.id, {
                "retention_days": workspace.retention_days,
                "conversations_deleted": gone_conversations, "files_deleted": gone_files,
            })
        return SweepResult(self.region, swept, conversations, files)


def sweeper_for(site: Site, region: str) -> RetentionSweeper:
    """The sweeper of `region`, for a command (no server, no model needed)."""
    store = site.store(region)
    return RetentionSweeper(region, site.directory, store, Conversations(store),
                            FileStore(store, site.settings.workspace), Gpts(store))
