"""The admin API's route table: what the router serves and what the OpenAPI document says,
from one source (`ROUTES`), so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .bodies import (
    Confirm,
    NewApiKey,
    NewMember,
    NewOrg,
    NewProject,
    NewToken,
    NewWorkspace,
    OrgChange,
    ProjectChange,
    WorkspaceChange,
)

__all__ = ["ADMIN_PREFIX", "ROUTES", "AdminRoute", "QueryParam"]

ADMIN_PREFIX = "/admin/v1"


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    description: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """One endpoint of `/admin/v1`."""

    method: str
    path: str  # below ADMIN_PREFIX
    handler: str  # the AdminApi method
    summary: str
    body: type[BaseModel] | None = None
    status: int = 200
    body_optional: bool = False  # an empty body is `{}`
    query: tuple[QueryParam, ...] = ()
    # What a success answers, by media type (default: a JSON object).
    media_types: tuple[str, ...] = ("application/json",)
    public: bool = False  # no admin key needed
    audited: bool = False  # appends to an audit chain, naming the admin key as the actor
    immutable_region: str | None = None  # "project"/"workspace": a `region` in the body: 400


_ORG = QueryParam("org_id", "Only those of this org.")
_CHAIN = QueryParam("chain", "Only this chain: `directory` or a region's name.")
_JSONL = ("application/jsonl",)
_ZIP = ("application/zip",)

ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("GET", "/openapi.json", "openapi", "This document.", public=True),
    # orgs
    AdminRoute("GET", "/orgs", "list_orgs", "Every org, oldest first."),
    AdminRoute("POST", "/orgs", "create_org", "Create an org (no training on its content "
               "unless `training_opt_in`).", NewOrg, 201, audited=True),
    AdminRoute("GET", "/orgs/{org_id}", "get_org", "An org."),
    AdminRoute("PATCH", "/orgs/{org_id}", "change_org", "Set the org's training consent (G7).",
               OrgChange, audited=True),
    AdminRoute("GET", "/orgs/{org_id}/residency", "residency_report", "The org's residency "
               "report: where each project and workspace is, what it holds there, which "
               "providers may process it.",
               query=(QueryParam("format", "`json` (default) or `markdown`.",
                                 ("json", "markdown")),),
               media_types=("application/json", "text/markdown")),
    AdminRoute("POST", "/orgs/{org_id}/export", "export_org", "Everything the org holds in "
               "this region, decrypted, as a zip (403 `wrong_region` if it holds content in "
               "another region).", media_types=_ZIP, audited=True),
    AdminRoute("POST", "/orgs/{org_id}/erase", "erase_org", "Erase the org and everything it "
               "owns, in every region (crypto-shredding, G9). Needs `{\"confirm\": true}`.",
               Confirm, audited=True),
    # projects and API keys
    AdminRoute("GET", "/projects", "list_projects", "Projects, oldest first.", query=(_ORG,)),
    AdminRoute("POST", "/projects", "create_project", "Create an API project, pinned to its "
               "region forever (G1).", NewProject, 201, audited=True),
    AdminRoute("GET", "/projects/{project_id}", "get_project", "A project."),
    AdminRoute("PATCH", "/projects/{project_id}", "change_project", "Rename a project or set "
               "its rate limits. Its region never changes: `region` answers 400 "
               "`region_immutable`.", ProjectChange, audited=True, immutable_region="project"),
    AdminRoute("GET", "/projects/{project_id}/usage", "project_usage", "Per-request metadata "
               "of the project (time, key, model, provider, status, tokens; no content)."),
    AdminRoute("POST", "/projects/{project_id}/erase", "erase_project", "Erase the project "
               "(crypto-shredding, G9). Needs `{\"confirm\": true}`.", Confirm, audited=True),
    AdminRoute("GET", "/projects/{project_id}/keys", "list_api_keys", "The project's API keys "
               "(never their secrets)."),
    AdminRoute("POST", "/projects/{project_id}/keys", "create_api_key", "A new `dk-<region>-` "
               "API key, shown once.", NewApiKey, 201, body_optional=True, audited=True),
    AdminRoute("DELETE", "/keys/{key_id}", "revoke_api_key", "Revoke an API key (refused at "
               "every server within a second).", audited=True),
    # workspaces, members, tokens
    AdminRoute("GET", "/workspaces", "list_workspaces", "Workspaces, oldest first.",
               query=(_ORG, QueryParam("region", "Only those of this region."))),
    AdminRoute("POST", "/workspaces", "create_workspace", "Create a chat workspace, pinned to "
               "its region forever (G1).", NewWorkspace, 201, audited=True),
    AdminRoute("GET", "/workspaces/{workspace_id}", "get_workspace", "A workspace."),
    AdminRoute("PATCH", "/workspaces/{workspace_id}", "change_workspace", "Rename a workspace "
               "or set its retention. Its region never changes: `region` answers 400 "
               "`region_immutable`.", WorkspaceChange, audited=True,
               immutable_region="workspace"),
    AdminRoute("GET", "/workspaces/{workspace_id}/members", "list_members", "The workspace's "
               "members."),
    AdminRoute("POST", "/workspaces/{workspace_id}/members", "add_member", "Add a member "
               "(password hashed with argon2id).", NewMember, 201, audited=True),
    AdminRoute("POST", "/workspaces/{workspace_id}/tokens", "create_token", "A `dw-<region>-` "
               "API token for a member, shown once.", NewToken, 201, audited=True),
    AdminRoute("DELETE", "/tokens/{token_id}", "revoke_token", "Revoke a workspace token.",
               audited=True),
    AdminRoute("POST", "/workspaces/{workspace_id}/export", "export_workspace", "Everything "
               "the workspace holds, decrypted, as a zip; served at its region's address "
               "only (403 `wrong_region` elsewhere).", media_types=_ZIP, audited=True),
    AdminRoute("POST", "/workspaces/{workspace_id}/erase", "erase_workspace", "Erase the "
               "workspace (crypto-shredding, G9). Needs `{\"confirm\": true}`.", Confirm,
               audited=True),
    # the trust center
    AdminRoute("GET", "/audit/verify", "audit_verify", "Walk every audit chain (or one): "
               "`ok` only if each is intact; else the first bad entry of each.",
               query=(_CHAIN,)),
    AdminRoute("GET", "/audit/{chain}/entries", "audit_entries", "A chain's entries as JSON "
               "Lines, in order (`directory` or a region's name).",
               query=(QueryParam("since", "Only entries from this ISO date or datetime on "
                                 "(UTC unless it names an offset)."),), media_types=_JSONL),
    AdminRoute("GET", "/audit/{chain}/head", "audit_head", "A signed receipt of the chain's "
               "head, to keep and later check the chain against (409 for a broken chain)."),
    AdminRoute("GET", "/residency/verify", "residency_verify", "Read every row and blob of "
               "every regional store (or one region's): each belongs to a tenant of its "
               "region and opens under its region's keys. `ok` with the violations.",
               query=(QueryParam("region", "Only this region's store."),)),
)
