"""Training export (G7): an org's content leaves for training only if the org opted in, and
then only what was written while it was opted in.

Every content row keeps the org's consent at the moment it was written (`training_consent`,
set from the credential that wrote it). The export:

- refuses an org that is not opted in now (`TrainingNotConsented`, exit 2), whatever its
  rows say: withdrawing consent stops every export at once;
- reads only rows written with consent; a conversation is cut after its last message written
  without consent, so nothing from before the opt-in is exported, not even as context;
- never reads zero-retention projects (they store no content; and were promised none), nor
  erased tenants;
- writes JSON Lines in the chat fine-tuning format, `{"messages": [{"role", "content"}...]}`,
  to a temp file renamed at the end (nothing half-written), mode 0600;
- is audited: in the directory's chain (the org's decision) and in each region it read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domicile.errors import InvalidInput
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from domicile.storage.models import RecordRow
from domicile.storage.private import written_whole
from domicile.tenancy.directory import DIRECTORY_CHAIN
from domicile.tenancy.grants import GLOBAL_REGION
from domicile.tenancy.models import Org, Project, Workspace
from domicile.workspace.conversations import MESSAGE_KIND
from domicile.workspace.models import ConversationRow, MessageRow

__all__ = ["TrainingExport", "TrainingExportResult", "TrainingNotConsented"]

RESPONSE_KIND = "response"  # gateway.responses.KIND (a front door: not imported from here)


class TrainingNotConsented(InvalidInput):
    code = "training_not_consented"


@dataclass(slots=True)
class TrainingExportResult:
    org_id: str
    out: Path
    conversations: int = 0
    stored_responses: int = 0
    rows_without_consent_skipped: int = 0
    regions: set[str] = field(default_factory=set)

    @property
    def examples(self) -> int:
        return self.conversations + self.stored_responses

    def to_json(self) -> dict[str, Any]:
        return {"org_id": self.org_id, "out": str(self.out), "examples": self.examples,
                "conversations": self.conversations, "stored_responses": self.stored_responses,
                "rows_without_consent_skipped": self.rows_without_consent_skipped,
                "regions": sorted(self.regions)}


class TrainingExport:
    def __init__(self, site: Site) -> None:
        self._site = site

    def export(self, org_id: str, out: Path, *, actor: str = "cli") -> TrainingExportResult:
        with Session(self._site.directory_engine) as session:
            org = session.get(Org, org_id)
            if org is None or org.erased_at is not None:
                raise InvalidInput(f"No org {org_id!r}.", param="org")
            if not org.training_opt_in:
                raise TrainingNotConsented(
                    f"Org {org_id} has not opted in to training: nothing of its content may be "
                    f"exported for training. An admin opts in with `domicile org set {org_id} "
                    "--training-opt-in true`; only content written after that is exported.",
                    param="org")
            workspaces = list(session.scalars(select(Workspace).where(
                Workspace.org_id == org_id, Workspace.erased_at.is_(None))))
            projects = list(session.scalars(select(Project).where(
                Project.org_id == org_id, Project.erased_at.is_(None),
                Project.retention != "zero")))
        if out.exists():
            raise InvalidInput(f"{out} exists; choose another --out.", param="out")
        result = TrainingExportResult(org_id, out)
        try:
            with written_whole(out, replace=False) as sink:
                for workspace in workspaces:
                    tenant = TenantRef(workspace.id, workspace.region, org_id)
                    for example in self._conversations(tenant, result):
                        sink.write(json.dumps({"messages": example}) + "\n")
                for project in projects:
                    regions = (list(self._site.settings.regions)
                               if project.region == GLOBAL_REGION else [project.region])
                    for region in regions:
                        tenant = TenantRef(project.id, project.region, org_id)
                        for example in self._responses(region, tenant, result):
                            sink.write(json.dumps({"messages": example}) + "\n")
        except FileExistsError:
            raise InvalidInput(f"{out} exists; choose another --out.", param="out") from None
        details = {"examples": result.examples, "conversations": result.conversations,
                   "stored_responses": result.stored_responses}
        for region in sorted(result.regions):
            self._site.store(region).audit.append(actor, "training.export", org_id, details)
        self._site.audit_log(DIRECTORY_CHAIN).append(actor, "training.export", org_id, details)
        return result

    def _conversations(self, tenant: TenantRef,
                       result: TrainingExportResult) -> Iterator[list[dict[str, Any]]]:
        store = self._site.store(tenant.region)
        with store.engine.connect() as conn:
            conversations = conn.execute(
                select(ConversationRow.id, ConversationRow.current_message_id)
                .where(ConversationRow.workspace_id == tenant.id)
                .order_by(ConversationRow.created_at)).all()
        for conversation_id, leaf in conversations:
            with store.engine.connect() as conn:
                rows = {row.id: row for row in conn.execute(
                    select(MessageRow.id, MessageRow.parent_id, MessageRow.role,
                           MessageRow.status, MessageRow.body, MessageRow.training_consent)
                    .where(MessageRow.conversation_id == conversation_id))}
            path = []  # the branch the member last saw, root first
            while leaf is not None and leaf in rows:
                path.append(rows[leaf])
                leaf = rows[leaf].parent_id
            path.reverse()
            # Only what was written with consent, and no earlier context either.
            consented_from = max((i + 1 for i, row in enumerate(path)
                                  if not row.training_consent), default=0)
            result.rows_without_consent_skipped += consented_from
            messages = [
                {"role": row.role,
                 "content": json.loads(store.open(tenant, MESSAGE_KIND, row.id,
                                                  row.body))["content"]}
                for row in path[consented_from:] if row.status == "complete"]
            while messages and messages[0]["role"] != "user":
                messages.pop(0)
            if _is_example(messages):
                result.conversations += 1
                result.regions.add(tenant.region)
                yield messages

    def _responses(self, region: str, tenant: TenantRef,
                   result: TrainingExportResult) -> Iterator[list[dict[str, Any]]]:
        store = self._site.store(region)
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(RecordRow.record_id, RecordRow.body, RecordRow.training_consent)
                .where(RecordRow.tenant_id == tenant.id, RecordRow.kind == RESPONSE_KIND)
                .order_by(RecordRow.created_at)).all()
        records = {record_id: (body, bool(consented)) for record_id, body, consented in rows}
        opened: dict[str, dict[str, Any]] = {}

        def record(record_id: str) -> dict[str, Any]:
            if record_id not in opened:
                loaded = json.loads(store.open(tenant, RESPONSE_KIND, record_id,
                                               records[record_id][0]))
                opened[record_id] = loaded if isinstance(loaded, dict) else {}
            return opened[record_id]

        def consented_from(record_id: str) -> int | None:
            """Where the part written with consent starts in the record's conversation: a
            response continued from another (`previous_response_id`) carries that one's
            conversation, which must not be exported if it was written without consent.
            None: its history cannot be traced, so nothing of it is exported."""
            seen = {record_id}
            current = record_id
            while True:
                response = record(current).get("response")
                previous = response.get("previous_response_id") if isinstance(
                    response, dict) else None
                if previous is None:
                    return 0
                if previous not in records or previous in seen:
                    return None
                if not records[previous][1]:
                    conversation = record(previous).get("conversation")
                    return len(conversation) if isinstance(conversation, list) else None
                seen.add(previous)
                current = previous

        for record_id, (_body, consented) in records.items():
            start = consented_from(record_id) if consented else None
            if start is None:
                result.rows_without_consent_skipped += 1
                continue
            conversation = record(record_id).get("conversation", [])
            messages = [{"role": m["role"], "content": m["content"]}
                        for m in conversation[start:]
                        if isinstance(m, dict) and m.get("role") in (
                            "system", "user", "assistant")]
            while messages and messages[0]["role"] == "assistant":
                messages.pop(0)
            if _is_example(messages):
                result.stored_responses += 1
                result.regions.add(region)
                yield messages


def _is_example(messages: list[dict[str, Any]]) -> bool:
    """A fine-tuning example needs something asked and something answered."""
    roles = {message["role"] for message in messages}
    return "user" in roles and messages[-1]["role"] == "assistant"
