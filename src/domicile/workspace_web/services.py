"""The workspace's services of one region, built once per server from the site's parts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from domicile.compliance.residency import TenantResidency, workspace_residency
from domicile.config import Settings
from domicile.inference.embeddings import Embedder
from domicile.inference.routing import ModelRouter
from domicile.site import Site
from domicile.storage.regional import RegionalStore
from domicile.tenancy.accounts import Accounts
from domicile.tenancy.directory import Directory
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.secrets import CredentialHasher
from domicile.tenancy.sessions import SessionStore
from domicile.tenancy.sso import WorkspaceSsoSettings
from domicile.tenancy.throttle import LoginThrottle
from domicile.workspace.chat import ChatService
from domicile.workspace.conversations import Conversations
from domicile.workspace.files import FileStore
from domicile.workspace.gpts import Gpts
from domicile.workspace.knowledge import Knowledge
from domicile.workspace.library import Library
from domicile.workspace.retention import RetentionSweeper

__all__ = ["WorkspaceServices", "build_workspace_services", "profile"]


@dataclass(frozen=True, slots=True)
class WorkspaceServices:
    settings: Settings
    region: str
    directory: Directory
    store: RegionalStore
    accounts: Accounts
    sessions: SessionStore
    conversations: Conversations
    files: FileStore
    gpts: Gpts
    knowledge: Knowledge
    chat: ChatService
    retention: RetentionSweeper
    library: Library
    # The workspace's part of the residency report (blocking): its admin page shows it.
    residency: Callable[[str], TenantResidency]
    sso: WorkspaceSsoSettings  # workspaces' single sign-on (workspace_web/sso.py)


def build_workspace_services(site: Site, region: str, router: ModelRouter) -> WorkspaceServices:
    """`router` is the region's one router (the gateway's): one set of providers and pools."""
    settings = site.settings
    store = site.store(region)
    hasher = CredentialHasher(site.site_secret)
    sessions = SessionStore(store, hasher, timedelta(hours=settings.workspace.session_hours))
    accounts = Accounts(site.directory, lambda _region: sessions,
                        LoginThrottle(settings.workspace), site.audit_log)
    conversations = Conversations(store)
    files = FileStore(store, settings.workspace)
    gpts = Gpts(store)
    knowledge = Knowledge(store, files, Embedder(router))
    chat = ChatService(region, router, conversations, files, gpts, knowledge,
                       settings.workspace)
    retention = RetentionSweeper(region, site.directory, store, conversations, files, gpts)
    return WorkspaceServices(settings, region, site.directory, store, accounts, sessions,
                             conversations, files, gpts, knowledge, chat, retention,
                             Library(files, gpts, knowledge),
                             functools.partial(workspace_residency, site),
                             WorkspaceSsoSettings(site.directory_engine, site.audit_log,
                                                  site.store))


def profile(services: WorkspaceServices, member: MemberGrant) -> dict[str, Any]:
    """The signed-in member and their workspace as `GET /workspace/api/me` answers it and the
    pages show it: where its content lives, how long it is kept (blocking)."""
    workspace = services.directory.get_workspace(member.workspace_id)
    user = services.directory.get_member(member.workspace_id, member.user_id)
    region = services.settings.region(workspace.region)
    return {
        "id": member.user_id, "object": "workspace.member", "email": user.email,
        "role": member.role,
        "workspace": {
            "id": workspace.id, "name": workspace.name, "region": workspace.region,
            "region_name": region.display_name, "retention_days": workspace.retention_days,
            "training_opt_in": member.training_opt_in,
            "statement": (f"Your content is stored in {region.display_name}, encrypted; "
                          + ("your organisation has opted in to using what is written from "
                             "now on for training." if member.training_opt_in
                             else "it is never used for training.")),
        },
    }
