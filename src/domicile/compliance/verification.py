"""Residency verification: read every row and blob of every regional store and check that the
data is where the directory says it must be, and sealed as G5 says (G1, G5, G8).

Per region:
- every table is one the catalog knows, with only the columns the schema gives it;
- every row's tenant is in the directory, of this region (or "global": per-request
  residency), and the row is marked with this region;
- every sealed column opens under this region's keys, bound to its own row
  (`catalog.ContentTable.context_kind`, the row's id column);
- every blob row has its blob file, which opens completely (streamed) and holds the size the
  row says; every blob file has its row;
- the region's audit chain verifies.
And in the directory: every tenant's region is the one its audited creation entry recorded.

The directory is read once; keys are cached by the envelope; rows are streamed in batches.
A violation names the region, table, row id, tenant and what is wrong: never content.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, func, inspect, select

from domicile.compliance.audit import AuditLog
from domicile.compliance.residency import ReportSite
from domicile.crypto import Context, DecryptionError
from domicile.storage.catalog import (
    CONTENT_TABLES,
    METADATA_TABLES,
    blob_key,
    expected_columns,
)
from domicile.storage.models import AUDIT_LOG, RegionBase
from domicile.storage.regional import RegionalStore
from domicile.tenancy import models as directory_models
from domicile.tenancy.directory import DIRECTORY_CHAIN
from domicile.tenancy.grants import GLOBAL_REGION
from domicile.tenancy.models import Project, Workspace

__all__ = ["Progress", "Verification", "VerifySite", "Violation", "planned_work", "verify_site"]

BATCH = 2000  # rows fetched at a time (a server-side cursor on PostgreSQL)
CREATION_ACTIONS = ("project.create", "workspace.create")
# Metadata tables whose rows name a tenant: (tenant column, row id column or None).
_TENANT_METADATA = {"usage": ("project_id", "id"), "ws_sessions": ("workspace_id", None)}

# Called as work is done: (records, blob bytes) since the last call.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Violation:
    region: str  # a region, or "directory"
    table: str
    row: str | None
    tenant: str | None
    problem: str

    def to_json(self) -> dict[str, str | None]:
        return {"region": self.region, "table": self.table, "row": self.row,
                "tenant": self.tenant, "problem": self.problem}

    def __str__(self) -> str:
        where = f"{self.region}/{self.table}"
        if self.row is not None:
            where += f" row {self.row}"
        if self.tenant is not None:
            where += f" (tenant {self.tenant})"
        return f"{where}: {self.problem}"


@dataclass(slots=True)
class Verification:
    regions: list[str]
    records: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    seconds: float = 0.0
    blob_seconds: float = 0.0  # of `seconds`, spent reading and opening blob files
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def records_per_second(self) -> float:
        """Rows per second of the time not spent on blob files."""
        rows_seconds = self.seconds - self.blob_seconds
        return self.records / rows_seconds if rows_seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        """Blob megabytes (10**6 bytes) per second of the time spent on blob files."""
        return self.blob_bytes / 1e6 / self.blob_seconds if self.blob_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "regions": self.regions, "records": self.records,
                "blobs": self.blobs, "blob_bytes": self.blob_bytes,
                "seconds": round(self.seconds, 3), "blob_seconds": round(self.blob_seconds, 3),
                "records_per_second": round(self.records_per_second),
                "megabytes_per_second": round(self.megabytes_per_second, 1),
                "violations": [v.to_json() for v in self.violations]}


@dataclass(frozen=True, slots=True)
class _Tenant:
    kind: str
    region: str
    erased: bool


class VerifySite(ReportSite, Protocol):
    """A `ReportSite` with its audit chains (`domicile.site.Site` is one)."""

    def audit_log(self, chain: str) -> AuditLog: ...


def planned_work(site: ReportSite, regions: Sequence[str]) -> tuple[int, int]:
    """(records, blob bytes) a verification of `regions` will read: for a progress bar."""
    records = blob_bytes = 0
    for region in regions:
        engine = site.store(region).engine
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            for table in CONTENT_TABLES:
                if table.name in tables:
                    records += conn.scalar(select(func.count()).select_from(table.table)) or 0
                    if table.blob:
                        blob_bytes += int(conn.scalar(
                            select(func.coalesce(func.sum(table.table.c.size), 0))) or 0)
    return records, blob_bytes


def verify_site(site: VerifySite, regions: Sequence[str] | None = None, *,
                progress: Progress | None = None,
                clock: Callable[[], float] = time.perf_counter) -> Verification:
    """Verify `regions` (default: every configured region, and the directory's chain)."""
    started = clock()
    names = list(regions) if regions else list(site.settings.regions)
    result = Verification(names)
    tenants = _load_tenants(site.directory_engine)
    _check_creations(site, tenants, names, result, whole_site=not regions)
    for region in names:
        _verify_region(site.store(region), tenants, result, progress or _nothing)
        _check_chain(site.audit_log(region), region, result)
    if not regions:
        _check_chain(site.audit_log(DIRECTORY_CHAIN), DIRECTORY_CHAIN, result)
    result.seconds = clock() - started
    return result


def _nothing(_records: int, _bytes: int) -> None:
    return None


def _load_tenants(engine: Engine) -> dict[str, _Tenant]:
    """Every project and workspace with its region: once, not per row."""
    with engine.connect() as conn:
        projects = conn.execute(select(Project.id, Project.region, Project.erased_at)).all()
        workspaces = conn.execute(
            select(Workspace.id, Workspace.region, Workspace.erased_at)).all()
    tenants = {row.id: _Tenant("project", row.region, row.erased_at is not None)
               for row in projects}
    tenants.update({row.id: _Tenant("workspace", row.region, row.erased_at is not None)
                    for row in workspaces})
    return tenants


def _check_creations(site: VerifySite, tenants: dict[str, _Tenant], regions: Sequence[str],
                     result: Verification, *, whole_site: bool) -> None:
    """Each tenant's region in the directory is the one its audited creation recorded (G1)."""
    created: dict[str, tuple[str, str | None]] = {}  # tenant -> (chain, region recorded)
    sources: list[tuple[str, Engine, Any]] = [
        (DIRECTORY_CHAIN, site.directory_engine, directory_models.AUDIT_LOG)]
    sources += [(region, site.store(region).engine, AUDIT_LOG) for region in site.settings.regions]
    for chain, engine, log in sources:
        with engine.connect() as conn:
            rows = conn.execute(select(log.c.target, log.c.details).where(
                log.c.chain == chain, log.c.action.in_(CREATION_ACTIONS))).all()
        for target, details in rows:
            try:
                region = json.loads(details).get("region")
            except (ValueError, AttributeError):
                region = None
            created.setdefault(target, (chain, region if isinstance(region, str) else None))
    for tenant_id, tenant in sorted(tenants.items()):
        entry = created.get(tenant_id)
        relevant = whole_site or tenant.region in regions or (
            entry is not None and entry[1] in regions)
        if not relevant:
            continue
        table = "projects" if tenant.kind == "project" else "workspaces"
        expected_chain = DIRECTORY_CHAIN if tenant.region == GLOBAL_REGION else tenant.region
        if entry is None:
            problem = f"region {tenant.region!r} has no audited creation entry"
        elif entry[1] != tenant.region:
            problem = (f"region is {tenant.region!r} in the directory, but its audited "
                       f"creation recorded {entry[1]!r}")
        elif entry[0] != expected_chain:
            problem = (f"created in audit chain {entry[0]!r}, not in its region's chain "
                       f"{expected_chain!r}")
        else:
            continue
        result.violations.append(Violation("directory", table, tenant_id, tenant_id, problem))


def _verify_region(store: RegionalStore, tenants: dict[str, _Tenant], result: Verification,
                   progress: Progress) -> None:
    region = store.region
    present = _check_schema(store.engine, region, result)
    listed: set[str] = set()
    for table in CONTENT_TABLES:
        if table.name in present:
            _check_table(store, table, tenants, result, progress, listed)
    for name, (tenant_column, id_column) in _TENANT_METADATA.items():
        if name in present:
            _check_metadata(store, name, tenant_column, id_column, tenants, result)
    try:
        files = list(store.blobs.keys())
    except OSError as exc:
        result.violations.append(Violation(
            region, "blobs", None, None, f"the blob store cannot be listed ({type(exc).__name__})"))
        return
    for key in files:
        if key not in listed:
            tenant_id = key.split("/", 1)[0]
            result.violations.append(Violation(
                region, "blobs", key, tenant_id, "blob file without a row"))


def _check_schema(engine: Engine, region: str, result: Verification) -> set[str]:
    """The store's tables; an unknown table or column is a violation (not Domicile's)."""
    inspector = inspect(engine)
    known = {table.name for table in CONTENT_TABLES} | set(METADATA_TABLES)
    present = set(inspector.get_table_names())
    for name in sorted(present):
        if name not in known:
            result.violations.append(Violation(region, name, None, None,
                                               "a table the catalog does not know"))
            continue
        extra = {c["name"] for c in inspector.get_columns(name)} - expected_columns(name)
        for column in sorted(extra):
            result.violations.append(Violation(
                region, name, None, None,
                f"column {column!r} is not in the schema (added by hand?)"))
    return present


def _rows(engine: Engine, query: Any) -> Iterator[Any]:
    for batch in _batches(engine, query):
        yield from batch


def _batches(engine: Engine, query: Any) -> Iterator[Sequence[Any]]:
    """The rows of `query` in lists of `BATCH` (a server-side cursor on PostgreSQL)."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        yield from result.partitions()


def _tenant_problem(tenant_id: str, tenants: dict[str, _Tenant], region: str,
                    row_region: str | None) -> str | None:
    tenant = tenants.get(tenant_id)
    if tenant is None:
        return "its tenant is not in the directory"
    if tenant.region not in (region, GLOBAL_REGION):
        return f"its tenant is of region {tenant.region!r}, not {region!r}"
    if row_region is not None and row_region != region:
        return f"the row is marked region {row_region!r} in the store of {region!r}"
    return None


def _check_table(store: RegionalStore, table: Any, tenants: dict[str, _Tenant],
                 result: Verification, progress: Progress, listed: set[str]) -> None:
    region, envelope, add = store.region, store.envelope, result.violations.append
    t = table.table
    kind_column = table.kind_column
    columns = [t.c[table.tenant_column], t.c[table.id_column], t.c["region"]]
    columns.append(t.c[kind_column] if kind_column else t.c["region"].label("_kind"))
    columns += [t.c[s.name] for s in table.sealed]
    if table.blob:
        columns.append(t.c["size"])
    # Per (tenant, row region): its problem or None, and whether it is shredded; computed
    # once per tenant, not per row.
    verdicts: dict[tuple[str, str], tuple[str | None, bool]] = {}
    sealed_columns = list(enumerate(table.sealed, start=4))
    for batch in _batches(store.engine, select(*columns)):
        result.records += len(batch)
        for row in batch:
            tenant_id, row_id, row_region, row_kind = row[0], row[1], row[2], row[3]
            verdict = verdicts.get((tenant_id, row_region))
            if verdict is None:
                known = tenants.get(tenant_id)
                verdict = (_tenant_problem(tenant_id, tenants, region, row_region),
                           known is not None and known.erased)
                verdicts[(tenant_id, row_region)] = verdict
            if verdict[0] is not None:
                add(Violation(region, table.name, row_id, tenant_id, verdict[0]))
            if table.blob:
                listed.add(blob_key(tenant_id, row_kind, row_id))
            if verdict[1]:  # crypto-shredded: unreadable by design, and it should be gone
                add(Violation(region, table.name, row_id, tenant_id,
                              "a row of an erased tenant survived its erasure (G9): run "
                              "`domicile erase` for it again"))
                continue
            for at, sealed in sealed_columns:
                kind = sealed.kind or table.context_kind(sealed, row_kind)
                try:
                    envelope.open(row[at], Context(region, tenant_id, kind, row_id))
                except DecryptionError:
                    add(Violation(region, table.name, row_id, tenant_id,
                                  f"column {sealed.name!r} does not open under region "
                                  f"{region!r}'s keys for this row (moved, swapped, altered, "
                                  "or its key gone)"))
                except (ValueError, TypeError):
                    add(Violation(region, table.name, row_id, tenant_id,
                                  f"column {sealed.name!r} is not a ciphertext of this row"))
            if table.blob:
                key = blob_key(tenant_id, row_kind, row_id)
                started = time.perf_counter()
                _check_blob(store, key, Context(region, tenant_id, row_kind, row_id),
                            int(row[-1]), table.name, result, progress)
                result.blob_seconds += time.perf_counter() - started
        progress(len(batch), 0)


def _check_blob(store: RegionalStore, key: str, context: Context, size: int, table: str,
                result: Verification, progress: Progress) -> None:
    result.blobs += 1
    where = (context.region, table, context.record_id, context.tenant)
    try:
        chunks = store.blobs.get(key)
    except KeyError:
        result.violations.append(Violation(*where, "row without its blob file"))
        return
    total = reported = 0
    try:
        for plain in store.envelope.open_stream(chunks, context):
            total += len(plain)
            if total - reported >= 1 << 24:
                progress(0, total - reported)
                reported = total
    except DecryptionError:
        result.violations.append(Violation(
            *where, "blob file does not open completely under this region's keys "
                    "(corrupted, cut, swapped, or its key gone)"))
        return
    finally:
        progress(0, total - reported)
        result.blob_bytes += total
    if total != size:
        result.violations.append(Violation(
            *where, f"blob file holds {total} bytes, its row says {size}"))


def _check_metadata(store: RegionalStore, name: str, tenant_column: str, id_column: str | None,
                    tenants: dict[str, _Tenant], result: Verification) -> None:
    t = RegionBase.metadata.tables[name]
    ident: Any = t.c[id_column] if id_column else t.c[tenant_column].label("_id")
    query = select(t.c[tenant_column], ident, t.c["region"])
    for tenant_id, row_id, row_region in _rows(store.engine, query):
        result.records += 1
        problem = _tenant_problem(tenant_id, tenants, store.region, row_region)
        if problem is not None:
            shown = None if id_column is None else str(row_id)  # a session's digest stays in
            result.violations.append(Violation(store.region, name, shown, tenant_id, problem))


def _check_chain(log: AuditLog, chain: str, result: Verification) -> None:
    problem = log.verify()
    if problem is not None:
        result.violations.append(Violation(chain, "audit_log", str(problem.seq), None,
                                           problem.reason))
