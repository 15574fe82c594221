"""The residency report: where each project and workspace of an org is, what it holds there,
under which keys, and who may process it (G1, G2, G5). Built as data; rendered separately.

Every figure is read from the stores themselves, not from configuration claims: the counts and
bytes from the rows and blobs, the key ids from the headers of the ciphertexts (record:
`0x01 | len | key id | ...`, blob: `0x02 | len | key id | ...`). Only the providers and the
eligible endpoints come from the configuration, since that is what decides them.

The eligible-endpoint rule lives here too (the gateway's `/v1/residency` answers with it), so
the report and the gateway cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, func, or_, select

from domicile.config import Settings
from domicile.errors import NotFound
from domicile.storage.catalog import CONTENT_TABLES, DATA_CLASSES, ContentTable, blob_key
from domicile.storage.models import AUDIT_LOG, UsageRow
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import GLOBAL_REGION
from domicile.tenancy.models import Org, Project, Workspace
from domicile.workspace import models as _workspace_tables  # noqa: F401 - the ws_* tables in the catalog

__all__ = [
    "ClassHoldings",
    "ProviderEntry",
    "RegionHoldings",
    "ReportSite",
    "ResidencyReport",
    "TenantResidency",
    "build_report",
    "eligible_endpoints",
    "key_id_of",
    "render_markdown",
    "stores_content",
    "workspace_features",
]

# What a key-id header read finds when a ciphertext is not in a known format.
UNREADABLE_KEY = "(unreadable)"
_RECORD_VERSION, _BLOB_VERSION = 0x01, 0x02
_HEADER_READ = 2 + 255  # version, length, the longest key id


class ReportSite(Protocol):
    """What the report and verification read of a site (`domicile.site.Site` is one)."""

    settings: Settings

    @property
    def directory_engine(self) -> Engine: ...

    def store(self, region: str) -> RegionalStore: ...


# -- the endpoint rule (the gateway's /v1/residency answers with it) --------------------------

def stores_content(retention: str, has_store: bool) -> bool:
    """May a project use the endpoints that keep content (files, uploads, batches, stored
    responses)? Only with
    regional retention and a content store in the region (G4)."""
    return retention == "regional" and has_store


def eligible_endpoints(capabilities: Collection[str], *, retention: str,
                       has_store: bool) -> list[str]:
    """The API endpoints a project may call in a region whose providers offer
    `capabilities`: content is never sent to a provider of another region (G2)."""
    endpoints = ["/v1/models", "/v1/residency"]
    if "chat" in capabilities:
        endpoints += ["/v1/chat/completions", "/v1/responses"]
    if "embeddings" in capabilities:
        endpoints.append("/v1/embeddings")
    if "images" in capabilities:
        endpoints.append("/v1/images/generations")
    if stores_content(retention, has_store):
        endpoints += ["/v1/files", "/v1/uploads", "/v1/batches", "/v1/responses/{response_id}"]
    return endpoints


def workspace_features(capabilities: Collection[str]) -> list[str]:
    """What a workspace's members can do in a region whose providers offer `capabilities`."""
    features = ["conversations", "file uploads", "custom GPTs"]
    if "chat" in capabilities:
        features.append("chat")
    if "vision" in capabilities:
        features.append("image input")
    if "embeddings" in capabilities:
        features.append("GPT knowledge search")
    if "images" in capabilities:
        features.append("image generation")
    return features


def key_id_of(sealed: bytes | memoryview) -> str:
    """The data key id written in a record's or blob's header (evidence of the key used)."""
    data = bytes(sealed[:_HEADER_READ])
    if len(data) < 2 or data[0] not in (_RECORD_VERSION, _BLOB_VERSION):
        return UNREADABLE_KEY
    raw = data[2:2 + data[1]]
    if len(raw) != data[1]:
        return UNREADABLE_KEY
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return UNREADABLE_KEY


# -- the report as data ---------------------------------------------------------------------

@dataclass(slots=True)
class ClassHoldings:
    """One data class of a tenant in a region. `records`: rows; `blobs`: blobs (each a row
    and its file);
    `bytes`: sealed column bytes plus blob content bytes (None: not content, not counted)."""

    data_class: str
    records: int = 0
    blobs: int = 0
    bytes: int | None = 0
    key_ids: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"data_class": self.data_class, "records": self.records, "blobs": self.blobs,
                "bytes": self.bytes, "key_ids": sorted(self.key_ids)}


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    name: str
    kind: str
    region: str
    models: tuple[str, ...]
    capabilities: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "region": self.region,
                "models": list(self.models), "capabilities": list(self.capabilities)}


@dataclass(slots=True)
class RegionHoldings:
    """What a tenant holds in one region, and who may process it there."""

    region: str
    display_name: str
    public_url: str
    classes: dict[str, ClassHoldings]
    providers: tuple[ProviderEntry, ...]
    eligible: tuple[str, ...]  # endpoints (projects) or features (workspaces)

    @property
    def key_ids(self) -> list[str]:
        return sorted({key for held in self.classes.values() for key in held.key_ids})

    @property
    def holds_data(self) -> bool:
        return any(held.records or held.blobs for held in self.classes.values())

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "display_name": self.display_name,
                "public_url": self.public_url,
                "data": [held.to_json() for held in self.classes.values()],
                "key_ids": self.key_ids,
                "providers": [provider.to_json() for provider in self.providers],
                "eligible": list(self.eligible)}


@dataclass(slots=True)
class TenantResidency:
    kind: str  # "project" | "workspace"
    id: str
    name: str
    region: str  # the pinned region, or "global" (per-request residency)
    retention: str
    created_at: datetime
    erased: bool
    regions: list[RegionHoldings]
    # Data found in a region the tenant is not pinned to: should never happen (see verify).
    misplaced: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "name": self.name, "region": self.region,
                "retention": self.retention, "created_at": self.created_at.isoformat(),
                "erased": self.erased, "misplaced_in": self.misplaced,
                "regions": [held.to_json() for held in self.regions]}


@dataclass(frozen=True, slots=True)
class ResidencyReport:
    org_id: str
    org_name: str
    training_opt_in: bool
    generated_at: datetime
    tenants: tuple[TenantResidency, ...]

    def to_json(self) -> dict[str, Any]:
        return {"org": {"id": self.org_id, "name": self.org_name,
                        "training_opt_in": self.training_opt_in},
                "generated_at": self.generated_at.isoformat(),
                "data_classes": list(DATA_CLASSES),
                "tenants": [tenant.to_json() for tenant in self.tenants]}


# -- building it ----------------------------------------------------------------------------

def build_report(site: ReportSite, org_id: str, *,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 only: Collection[str] | None = None) -> ResidencyReport:
    """The residency report of `org_id` (NotFound for an unknown org); with `only`, of those
    of its projects and workspaces only (a workspace's admin page shows its own)."""
    with site.directory_engine.connect() as conn:
        org = conn.execute(select(Org.id, Org.name, Org.training_opt_in)
                           .where(Org.id == org_id)).first()
        if org is None:
            raise NotFound(f"no org {org_id}", param="org")
        projects = conn.execute(select(
            Project.id, Project.name, Project.region, Project.retention, Project.created_at,
            Project.erased_at).where(Project.org_id == org_id)
            .order_by(Project.created_at, Project.id)).all()
        workspaces = conn.execute(select(
            Workspace.id, Workspace.name, Workspace.region, Workspace.retention_days,
            Workspace.created_at, Workspace.erased_at).where(Workspace.org_id == org_id)
            .order_by(Workspace.created_at, Workspace.id)).all()
    settings = site.settings
    tenants: list[TenantResidency] = []
    for p in projects:
        tenants.append(TenantResidency("project", p.id, p.name, p.region, p.retention,
                                       _utc(p.created_at), p.erased_at is not None, []))
    for w in workspaces:
        retention = ("kept until deleted" if w.retention_days is None
                     else f"{w.retention_days} days")
        tenants.append(TenantResidency("workspace", w.id, w.name, w.region, retention,
                                       _utc(w.created_at), w.erased_at is not None, []))
    if only is not None:
        tenants = [tenant for tenant in tenants if tenant.id in only]
    ids = [tenant.id for tenant in tenants]
    found: dict[tuple[str, str], dict[str, ClassHoldings]] = {}
    for region in settings.regions:
        for tenant_id, held in _holdings(site.store(region), ids).items():
            found[(tenant_id, region)] = held
    for tenant in tenants:
        for region, config in settings.regions.items():
            classes: dict[str, ClassHoldings] | None = found.get((tenant.id, region))
            pinned_here = tenant.region in (region, GLOBAL_REGION)
            if not pinned_here:
                if classes is not None and any(h.records or h.blobs for h in classes.values()):
                    tenant.misplaced.append(region)
                continue
            capabilities = {c for p in config.providers for c in p.effective_capabilities}
            eligible = (eligible_endpoints(capabilities, retention=tenant.retention,
                                           has_store=True)
                        if tenant.kind == "project" else workspace_features(capabilities))
            tenant.regions.append(RegionHoldings(
                region, config.display_name, config.public_url,
                classes or _empty_classes(),
                tuple(ProviderEntry(p.name, p.kind, region, tuple(p.models),
                                    tuple(sorted(p.effective_capabilities)))
                      for p in config.providers),
                tuple(eligible)))
    return ResidencyReport(org.id, org.name, bool(org.training_opt_in), now(), tuple(tenants))


def workspace_residency(site: ReportSite, workspace_id: str) -> TenantResidency:
    """One workspace's part of its org's report (NotFound for an unknown workspace)."""
    with site.directory_engine.connect() as conn:
        org_id = conn.scalar(select(Workspace.org_id).where(Workspace.id == workspace_id))
    if org_id is None:
        raise NotFound(f"no workspace {workspace_id}", param="workspace")
    (tenant,) = build_report(site, org_id, only={workspace_id}).tenants
    return tenant


def _empty_classes() -> dict[str, ClassHoldings]:
    classes = {name: ClassHoldings(name) for name in DATA_CLASSES}
    classes["usage metadata"].bytes = None
    classes["audit entries"].bytes = None
    return classes


def _holdings(store: RegionalStore, tenant_ids: list[str]) -> dict[str, dict[str, ClassHoldings]]:
    """Per tenant of `tenant_ids`: its data classes in `store`, read from the rows."""
    held: dict[str, dict[str, ClassHoldings]] = {}

    def classes_of(tenant_id: str) -> dict[str, ClassHoldings]:
        if tenant_id not in held:
            held[tenant_id] = _empty_classes()
        return held[tenant_id]

    def holding(tenant_id: str, data_class: str) -> ClassHoldings:
        classes = classes_of(tenant_id)
        if data_class not in classes:  # a kind the catalog does not name: shown, not hidden
            classes[data_class] = ClassHoldings(data_class)
        return classes[data_class]

    if not tenant_ids:
        return held
    with store.engine.connect() as conn:
        for table in CONTENT_TABLES:
            for row in conn.execute(_header_query(table, tenant_ids)):
                tenant_id, kind = row[0], row[1]
                entry = holding(tenant_id, table.data_class_of(kind))
                if not table.blob:  # a blob's row is counted as its blob
                    entry.records += 1
                for at in range(len(table.sealed)):
                    header, size = row[3 + 2 * at], row[4 + 2 * at]
                    entry.bytes = (entry.bytes or 0) + int(size or 0)
                    if header is not None:
                        entry.key_ids.add(key_id_of(header))
                if table.blob:
                    _count_blob(store, entry, tenant_id, kind, row[2], conn_size=row[-1])
        usage = conn.execute(select(UsageRow.project_id, func.count())
                             .where(UsageRow.project_id.in_(tenant_ids))
                             .group_by(UsageRow.project_id)).all()
        for tenant_id, count in usage:
            holding(tenant_id, "usage metadata").records += int(count)
        _count_audit(conn, store.region, tenant_ids, holding)
    return held


def _header_query(table: ContentTable, tenant_ids: list[str]) -> Any:
    """Per row: tenant, kind, id, then (first bytes, length) of each sealed column, then the
    row's blob size (blob tables). Only the headers leave the database."""
    t = table.table
    kind = t.c[table.kind_column] if table.kind_column else None
    columns: list[Any] = [t.c[table.tenant_column],
                          kind if kind is not None else t.c[table.tenant_column].label("k"),
                          t.c[table.id_column]]
    for sealed in table.sealed:
        column = t.c[sealed.name]
        columns += [func.substr(column, 1, _HEADER_READ), func.length(column)]
    if table.blob:
        columns.append(t.c["size"])
    return select(*columns).where(t.c[table.tenant_column].in_(tenant_ids))


def _count_blob(store: RegionalStore, entry: ClassHoldings, tenant_id: str, kind: str,
                blob_id: str, *, conn_size: int) -> None:
    entry.blobs += 1
    entry.bytes = (entry.bytes or 0) + int(conn_size or 0)
    try:
        chunks = store.blobs.get(blob_key(tenant_id, kind, blob_id))
    except KeyError:
        entry.key_ids.add("(blob file missing)")
        return
    head = b""
    for chunk in chunks:
        head += bytes(chunk)
        if len(head) >= _HEADER_READ:
            break
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
    entry.key_ids.add(key_id_of(head))


def _count_audit(conn: Any, chain: str, tenant_ids: Iterable[str],
                 holding: Callable[[str, str], ClassHoldings]) -> None:
    """Entries of the region's chain that name the tenant: as target or in their details."""
    log = AUDIT_LOG
    for tenant_id in tenant_ids:
        count = conn.scalar(select(func.count()).select_from(log).where(
            log.c.chain == chain,
            or_(log.c.target == tenant_id, log.c.details.like(f'%"{tenant_id}"%'))))
        if count:
            holding(tenant_id, "audit entries").records += int(count)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# -- rendering ------------------------------------------------------------------------------

def render_markdown(report: ResidencyReport) -> str:
    """The report for humans (and auditors): one section per project and workspace."""
    lines = [
        f"# Residency report: {_md(report.org_name)}",
        "",
        f"- Org: `{report.org_id}`",
        f"- Generated: {report.generated_at.isoformat(timespec='seconds')}",
        f"- Training on this org's content: {'opted in' if report.training_opt_in else 'no'}",
        f"- Projects: {sum(t.kind == 'project' for t in report.tenants)}, workspaces: "
        f"{sum(t.kind == 'workspace' for t in report.tenants)}",
        "",
        "Counts, bytes and key ids are read from the stores (key ids from the headers of the "
        "ciphertexts themselves); providers and eligible endpoints from the configuration. "
        "Bytes are the sealed bytes of rows plus the content bytes of blobs.",
    ]
    if not report.tenants:
        lines += ["", "This org has no projects or workspaces."]
    for tenant in report.tenants:
        lines += ["", f"## {tenant.kind.capitalize()} {_md(tenant.name)} (`{tenant.id}`)", ""]
        pinned = ("global: per-request residency, each request processed and kept in the "
                  "region it called" if tenant.region == GLOBAL_REGION else tenant.region)
        lines += [f"- Region: **{pinned}**",
                  f"- Retention: {tenant.retention}",
                  f"- Created: {tenant.created_at.isoformat(timespec='seconds')}"]
        if tenant.erased:
            lines.append("- Erased: its data keys are destroyed (crypto-shredded)")
        if tenant.misplaced:
            lines.append(f"- **Data found outside its region: {', '.join(tenant.misplaced)}** "
                         "(run `domicile residency verify`)")
        for held in tenant.regions:
            lines += ["", f"### In region {held.region} ({_md(held.display_name)}, "
                          f"{held.public_url})", ""]
            if tenant.region == GLOBAL_REGION and not held.holds_data:
                lines += ["No data held in this region.", ""]
            lines += ["| Data class | Records | Blobs | Bytes | Key ids |",
                      "|---|---:|---:|---:|---|"]
            for entry in held.classes.values():
                size = "n/a" if entry.bytes is None else f"{entry.bytes:,}"
                keys = ", ".join(f"`{k}`" for k in sorted(entry.key_ids)) or (
                    "not content: not encrypted" if entry.bytes is None else "-")
                lines.append(f"| {entry.data_class} | {entry.records:,} | {entry.blobs:,} | "
                             f"{size} | {keys} |")
            lines += ["", "Sub-processors allowed to process its content here:", "",
                      "| Provider | Kind | Region | Models | Capabilities |",
                      "|---|---|---|---|---|"]
            for p in held.providers:
                lines.append(f"| {p.name} | {p.kind} | {p.region} | {', '.join(p.models)} | "
                             f"{', '.join(p.capabilities)} |")
            if not held.providers:
                lines.append("| (none: requests needing a model fail closed) | | | | |")
            what = "Endpoints eligible" if tenant.kind == "project" else "Features available"
            lines += ["", f"{what} under residency: "
                          + ", ".join(f"`{e}`" for e in held.eligible)]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """A name as Markdown text: its table and emphasis characters escaped."""
    for special in ("\\", "|", "*", "_", "`", "#", "[", "]", "<", ">"):
        text = text.replace(special, "\\" + special)
    return " ".join(text.split())
