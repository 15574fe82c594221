"""What the admin API's handlers call: the same services as the `domicile` command (the
directory, export, erasure, the residency report, the audit chains), opened over one `Site`,
and the JSON shapes of what they return. No rule of the product is decided here: the
directory and compliance modules decide; this module only adapts.

Any region's address serves the whole directory (it is global). The regional parts read the
region they are about: a project's usage, a chain's entries and a residency report read the
stores of the regions concerned (metadata only, never content). Content leaves only through
its own region's door: an export is served at the address of the region that holds it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domicile.compliance.audit import AuditLog
from domicile.compliance.erasure import Erasure
from domicile.compliance.export import Exporter
from domicile.compliance.receipts import chain_signer
from domicile.compliance.residency import build_report, render_markdown
from domicile.compliance.verification import verify_site
from domicile.errors import Conflict, NotFound, WrongRegion
from domicile.failures import describe
from domicile.site import Site
from domicile.storage.regional import RegionalStore
from domicile.tenancy.admin_keys import AdminKeys
from domicile.tenancy.directory import DIRECTORY_CHAIN, Directory, ErasureScope
from domicile.tenancy.grants import GLOBAL_REGION
from domicile.tenancy.models import ApiKey, Org, Project, User, Workspace
from domicile.tenancy.secrets import CredentialHasher

__all__ = ["AdminServices", "ExportFile"]

# Where an export is written before it is streamed back: memory (tmpfs) where the machine
# has it, so the decrypted content never reaches a disk; unlinked before the first byte goes.
_MEMORY_DIRS = (Path("/dev/shm"),)  # noqa: S108 - a private mkdtemp folder (0700) inside


@dataclass
class ExportFile:
    """An export ready to stream: an open file whose name is already gone."""

    handle: Any
    size: int
    filename: str

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        try:
            while chunk := self.handle.read(size):
                yield chunk
        finally:
            self.handle.close()


class AdminServices:
    """The site's services for the admin API served at `region`'s address."""

    def __init__(self, site: Site, region: str) -> None:
        self.site = site
        self.settings = site.settings
        self.region = site.settings.region(region).name
        self.admin_keys = AdminKeys(site.directory_engine, CredentialHasher(site.site_secret),
                                    site.directory_audit)
        self._stores = threading.Lock()  # handlers run in threads; a store opens once

    @property
    def directory(self) -> Directory:
        return self.site.directory

    def store(self, region: str) -> RegionalStore:
        with self._stores:
            return self.site.store(region)

    def audit_log(self, chain: str) -> AuditLog:
        if chain != DIRECTORY_CHAIN and chain not in self.settings.regions:
            raise NotFound(f"no audit chain {chain} (chains: "
                           f"{', '.join(self.chain_names())})", param="chain")
        with self._stores:
            return self.site.audit_log(chain)

    def chain_names(self) -> list[str]:
        return [DIRECTORY_CHAIN, *self.settings.regions]

    # -- usage ----------------------------------------------------------------------------------

    def project_usage(self, project_id: str) -> dict[str, Any]:
        """As `domicile usage --project`: per-request metadata, from the project's region's
        store (every region's, for a per-request-residency project)."""
        project = self.directory.get_project(project_id)
        regions = list(self.settings.regions) if project.region == GLOBAL_REGION else [
            project.region]
        rows = sorted((row for region in regions for row in self.store(region).usage(project_id)),
                      key=lambda row: row.at)
        requests: list[dict[str, Any]] = [{
            "at": _iso(row.at), "region": row.region, "key_id": row.key_id,
            "endpoint": row.endpoint, "model": row.model, "provider": row.provider,
            "status": row.status, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "latency_ms": round(row.latency_ms, 3), "request_id": row.request_id,
        } for row in rows]
        totals = {"requests": len(requests),
                  "prompt_tokens": sum(r["prompt_tokens"] for r in requests),
                  "completion_tokens": sum(r["completion_tokens"] for r in requests)}
        return {"project_id": project_id, "totals": totals, "requests": requests}

    # -- audit ----------------------------------------------------------------------------------

    def audit_lines(self, chain: str, since: datetime | None) -> list[bytes]:
        """The chain's entries from `since` on, as `domicile audit export` writes them."""
        return [entry.json_line().encode() for entry in self.audit_log(chain).entries(since)]

    def verify_chains(self, chain: str | None) -> dict[str, Any]:
        """As `domicile audit verify [--region]`: each chain walked; `ok` only if all are
        intact. A chain that cannot be read is reported as not ok, with why."""
        names = [chain] if chain is not None else self.chain_names()
        logs = [(name, self.audit_log(name)) for name in names]  # an unknown chain: 404 first
        results: list[dict[str, Any]] = []
        for name, log in logs:
            try:
                problem = log.verify()
            except Exception as exc:
                results.append({"chain": name, "ok": False, "first_bad_seq": None,
                                "problem": f"chain {name} cannot be read: {describe(exc)}"})
                continue
            results.append({"chain": name, "ok": problem is None,
                            "first_bad_seq": None if problem is None else problem.seq,
                            "problem": None if problem is None else str(problem)})
        return {"ok": all(result["ok"] for result in results), "chains": results}

    def audit_head(self, chain: str) -> dict[str, Any]:
        """As `domicile audit head`: a signed receipt of the chain's head (refused, 409, for a
        chain that does not verify). Appends nothing."""
        walked = self.audit_log(chain).check()
        if walked.problem is not None:
            raise Conflict(f"not signing a broken chain: {walked.problem}", param="chain")
        receipt = chain_signer(self.settings, chain).sign(walked.seq, walked.hash)
        parsed: dict[str, Any] = json.loads(receipt.to_json())
        return parsed

    # -- residency ------------------------------------------------------------------------------

    def residency_report(self, org_id: str, markdown: bool) -> dict[str, Any] | str:
        with self._stores:  # the report opens every region's store
            report = build_report(self.site, org_id)
        return render_markdown(report) if markdown else report.to_json()

    def residency_verify(self, region: str | None) -> dict[str, Any]:
        regions = [self.settings.region(region).name] if region is not None else None
        with self._stores:
            return verify_site(self.site, regions).to_json()

    # -- export and erasure ---------------------------------------------------------------------

    def export(self, scope: ErasureScope, scope_id: str, actor: str) -> ExportFile:
        """The export of an org or workspace, served only at the address of the region that
        holds its content (403 `wrong_region` naming that address otherwise). Audited, with
        `actor`, in each region it read."""
        ownership = self.directory.owned_tenants(scope, scope_id)
        elsewhere = sorted({tenant.region for tenant in ownership.tenants
                            if tenant.erased_at is None
                            and tenant.region not in (self.region, GLOBAL_REGION)})
        if elsewhere:
            urls = ", ".join(self.settings.regions[r].public_url for r in elsewhere)
            raise WrongRegion(f"{scope} {scope_id} holds content in {', '.join(elsewhere)}: "
                              f"content leaves only through its own region's address ({urls})"
                              + ("" if scope == "workspace" else "; export its workspaces "
                                 "there, or run `domicile export` on the operator's machine"),
                              param=scope)
        folder = Path(tempfile.mkdtemp(prefix="domicile-export-", dir=_scratch_dir()))
        out = folder / f"{scope_id}.zip"
        try:
            Exporter(self.directory, self.store, [self.region]).export(
                scope, scope_id, out, actor=actor)
            handle = out.open("rb")
            size = os.fstat(handle.fileno()).st_size
        finally:
            out.unlink(missing_ok=True)  # an open handle keeps reading it
            shutil.rmtree(folder, ignore_errors=True)
        return ExportFile(handle, size, f"{scope}-{scope_id}.zip")

    def erase(self, scope: ErasureScope, scope_id: str, actor: str) -> dict[str, Any]:
        erasure = Erasure(self.directory, self.store, list(self.settings.regions),
                          self.site.directory_engine)
        report: dict[str, Any] = erasure.erase(scope, scope_id, actor=actor).to_json()
        return report


def _scratch_dir() -> str | None:
    for folder in _MEMORY_DIRS:
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return str(folder)
    return None


# -- JSON shapes --------------------------------------------------------------------------------

def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).isoformat()


def org_json(org: Org) -> dict[str, Any]:
    return {"id": org.id, "object": "org", "name": org.name,
            "training_opt_in": org.training_opt_in,
            "training_opt_in_since": _iso(org.training_opt_in_since),
            "created_at": _iso(org.created_at), "erased_at": _iso(org.erased_at)}


def project_json(project: Project) -> dict[str, Any]:
    return {"id": project.id, "object": "project", "org_id": project.org_id,
            "name": project.name, "region": project.region, "retention": project.retention,
            "per_request_residency": project.per_request_residency,
            "rpm_limit": project.rpm_limit, "tpm_limit": project.tpm_limit,
            "created_at": _iso(project.created_at), "erased_at": _iso(project.erased_at)}


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "object": "api_key", "project_id": key.project_id, "name": key.name,
            "hint": key.hint, "created_at": _iso(key.created_at),
            "revoked_at": _iso(key.revoked_at)}


def workspace_json(workspace: Workspace) -> dict[str, Any]:
    return {"id": workspace.id, "object": "workspace", "org_id": workspace.org_id,
            "name": workspace.name, "region": workspace.region,
            "retention_days": workspace.retention_days,
            "created_at": _iso(workspace.created_at), "erased_at": _iso(workspace.erased_at)}


def member_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "object": "member", "workspace_id": user.workspace_id,
            "email": user.email, "role": user.role, "created_at": _iso(user.created_at)}
