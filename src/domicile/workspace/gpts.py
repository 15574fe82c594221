"""Custom GPTs: instructions, a model, knowledge files and conversation starters, kept sealed.

A GPT belongs to the member who made it; `sharing` says who may use it: the owner only
("private") or the whole workspace ("workspace"). Anything a member may not see answers
`NotFound` (another workspace's GPT, another member's private one); a GPT a member can see
but not change answers `Forbidden`. Everything but the owner, the sharing and the times is
sealed in one body (G5). A change of sharing is audited (G8), with ids only.

Knowledge files must be the acting member's own files: a GPT cannot be used to read a
colleague's private file. The knowledge index itself is `Knowledge`'s (kept beside, by id).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from domicile.errors import Forbidden, InvalidInput, NotFound
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.secrets import new_id

from .conversations import AnyRow, as_utc
from .models import FileRow, GptRow

__all__ = ["GPT_FIELDS", "GPT_KIND", "SHARINGS", "Gpt", "Gpts"]

GPT_KIND = "ws-gpt"
SHARINGS = ("private", "workspace")
# What `Gpts.update` may change (`starters` is the JSON's `conversation_starters`).
GPT_FIELDS = ("name", "description", "instructions", "model", "file_ids", "starters", "sharing")
MAX_NAME_CHARS = 100
MAX_DESCRIPTION_CHARS = 500
MAX_INSTRUCTIONS_CHARS = 16_000
MAX_MODEL_CHARS = 200
MAX_STARTERS = 4
MAX_STARTER_CHARS = 200
MAX_FILES = 20
_AUDIT_ATTEMPTS = 5  # a concurrent audit append (PostgreSQL) makes a write try again
T = TypeVar("T")

GPT_COLUMNS = (GptRow.id, GptRow.user_id, GptRow.sharing, GptRow.created_at, GptRow.updated_at,
               GptRow.body)


@dataclass(frozen=True, slots=True)
class Gpt:
    id: str
    owner_id: str
    name: str
    description: str
    instructions: str
    model: str
    file_ids: tuple[str, ...]
    starters: tuple[str, ...]
    sharing: str  # one of SHARINGS
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "workspace.gpt",
            "owner_id": self.owner_id,
            "name": self.name,
            "description": self.description,
            "instructions": self.instructions,
            "model": self.model,
            "file_ids": list(self.file_ids),
            "conversation_starters": list(self.starters),
            "sharing": self.sharing,
            "created_at": int(self.created_at.timestamp()),
            "updated_at": int(self.updated_at.timestamp()),
        }

    def _sealed_body(self) -> bytes:
        # ASCII JSON: a lone surrogate in the text cannot break the encoding.
        return json.dumps({
            "name": self.name, "description": self.description,
            "instructions": self.instructions, "model": self.model,
            "file_ids": list(self.file_ids), "starters": list(self.starters),
        }).encode()


# -- validation (params named as in the JSON API) ------------------------------------------------

def _text(value: object, param: str, *, limit: int, required: bool) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"`{param}` must be a string.", param=param)
    if required and not value.strip():
        raise InvalidInput(f"`{param}` is empty.", param=param)
    if len(value) > limit:
        raise InvalidInput(f"`{param}` is longer than {limit} characters.", param=param)
    return value


def _strings(value: object, param: str) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput(f"`{param}` must be a list of strings.", param=param)
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise InvalidInput(f"`{param}` must be a list of strings.", param=param)
    return items


def _validated(gpt: Gpt) -> Gpt:
    """`gpt` with its fields checked and tidied; InvalidInput naming the first bad one."""
    name = _text(gpt.name, "name", limit=MAX_NAME_CHARS, required=True).strip()
    description = _text(gpt.description, "description", limit=MAX_DESCRIPTION_CHARS,
                        required=False)
    instructions = _text(gpt.instructions, "instructions", limit=MAX_INSTRUCTIONS_CHARS,
                         required=False)
    model = _text(gpt.model, "model", limit=MAX_MODEL_CHARS, required=True)
    file_ids = tuple(dict.fromkeys(_strings(gpt.file_ids, "file_ids")))
    if len(file_ids) > MAX_FILES:
        raise InvalidInput(f"A GPT has at most {MAX_FILES} knowledge files.", param="file_ids")
    starters = tuple(s.strip() for s in _strings(gpt.starters, "conversation_starters"))
    if len(starters) > MAX_STARTERS or not all(0 < len(s) <= MAX_STARTER_CHARS
                                               for s in starters):
        raise InvalidInput(f"At most {MAX_STARTERS} conversation starters, each of 1 to "
                           f"{MAX_STARTER_CHARS} characters.", param="conversation_starters")
    if gpt.sharing not in SHARINGS:
        raise InvalidInput("`sharing` must be private or workspace.", param="sharing")
    return replace(gpt, name=name, description=description, instructions=instructions,
                   model=model, file_ids=file_ids, starters=starters)


def _not_found() -> NotFound:
    return NotFound("No such GPT.", param="gpt_id")


class Gpts:
    """A region's custom GPTs (blocking; SQLAlchemy on the store's engine)."""

    def __init__(self, store: RegionalStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"Gpts(region={self.store.region!r})"

    @staticmethod
    def _visible(member: MemberGrant) -> ColumnElement[bool]:
        return and_(GptRow.workspace_id == member.workspace_id,
                    or_(GptRow.user_id == member.user_id, GptRow.sharing == "workspace"))

    def _gpt(self, tenant: TenantRef, row: AnyRow) -> Gpt:
        body = json.loads(self.store.open(tenant, GPT_KIND, row.id, row.body))
        return Gpt(id=row.id, owner_id=row.user_id, name=body["name"],
                   description=body["description"], instructions=body["instructions"],
                   model=body["model"], file_ids=tuple(body["file_ids"]),
                   starters=tuple(body["starters"]), sharing=row.sharing,
                   created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at))

    def _transact(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction, tried again when a concurrent audit append took the
        chain's next entry (PostgreSQL; SQLite serialises writers)."""
        for attempt in range(_AUDIT_ATTEMPTS):
            try:
                with self.store.engine.begin() as conn:
                    return work(conn)
            except IntegrityError:
                if attempt == _AUDIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _check_files(conn: Connection, member: MemberGrant, file_ids: Iterable[str]) -> None:
        """Every one of `file_ids` is a file of the member's own."""
        wanted = set(file_ids)
        if not wanted:
            return
        owned = set(conn.scalars(select(FileRow.id).where(
            FileRow.id.in_(wanted), FileRow.workspace_id == member.workspace_id,
            FileRow.user_id == member.user_id)))
        if wanted - owned:
            raise NotFound("No such file.", param="file_ids")

    def _audit_sharing(self, conn: Connection, member: MemberGrant, gpt: Gpt) -> None:
        self.store.audit.append(member.user_id, "gpt.sharing", gpt.id, {"sharing": gpt.sharing},
                                connection=conn)

    # -- the API -----------------------------------------------------------------------------

    def create(self, member: MemberGrant, *, name: str, instructions: str, model: str,
               description: str = "", file_ids: Iterable[str] = (),
               starters: Iterable[str] = (), sharing: str = "private") -> Gpt:
        now = datetime.now(UTC)
        gpt = _validated(Gpt(
            id=new_id("gpt"), owner_id=member.user_id, name=name, description=description,
            instructions=instructions, model=model,
            file_ids=tuple(_strings(file_ids, "file_ids")),
            starters=tuple(_strings(starters, "conversation_starters")), sharing=sharing,
            created_at=now, updated_at=now))
        sealed = self.store.seal(member.tenant, GPT_KIND, gpt.id, gpt._sealed_body())

        def insert_gpt(conn: Connection) -> Gpt:
            self._check_files(conn, member, gpt.file_ids)
            conn.execute(insert(GptRow).values(
                id=gpt.id, workspace_id=member.workspace_id, user_id=member.user_id,
                region=self.store.region, sharing=gpt.sharing, created_at=now,
                updated_at=now, body=sealed,
                training_consent=member.tenant.training_consent))
            if gpt.sharing != "private":  # made visible to the workspace: a sharing change
                self._audit_sharing(conn, member, gpt)
            return gpt

        return self._transact(insert_gpt)

    def list(self, member: MemberGrant) -> list[Gpt]:
        """The member's own GPTs and those shared with the workspace, newest change first."""
        tenant = member.tenant
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(*GPT_COLUMNS).where(self._visible(member))
                                .order_by(GptRow.updated_at.desc(), GptRow.id.desc())).all()
        return [self._gpt(tenant, row) for row in rows]

    def get(self, member: MemberGrant, gpt_id: str) -> Gpt:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(*GPT_COLUMNS)
                               .where(GptRow.id == gpt_id, self._visible(member))).first()
        if row is None:
            raise _not_found()
        return self._gpt(member.tenant, row)

    def _changeable(self, conn: Connection, member: MemberGrant, gpt_id: str) -> Gpt:
        """The GPT, locked for a change by `member`: 404 unless they can see it, 403 unless
        they own it or are a workspace admin."""
        row = conn.execute(select(*GPT_COLUMNS).with_for_update()
                           .where(GptRow.id == gpt_id, self._visible(member))).first()
        if row is None:
            raise _not_found()
        if row.user_id != member.user_id and not member.is_admin:
            raise Forbidden("Only the GPT's owner or a workspace admin can change it.")
        return self._gpt(member.tenant, row)

    def update(self, member: MemberGrant, gpt_id: str, **fields: object) -> Gpt:
        """Change some of GPT_FIELDS; a field given as None is left as it is. Knowledge
        files added must be the acting member's own."""
        unknown = sorted(set(fields) - set(GPT_FIELDS))
        if unknown:
            raise InvalidInput("That field of a GPT cannot be changed.", param=unknown[0])
        changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        for name, param in (("file_ids", "file_ids"), ("starters", "conversation_starters")):
            if name in changes:
                changes[name] = tuple(_strings(changes[name], param))

        def change(conn: Connection) -> Gpt:
            current = self._changeable(conn, member, gpt_id)
            now = datetime.now(UTC)
            gpt = _validated(replace(current, **changes, updated_at=now))
            self._check_files(conn, member,
                              [f for f in gpt.file_ids if f not in current.file_ids])
            sealed = self.store.seal(member.tenant, GPT_KIND, gpt_id, gpt._sealed_body())
            conn.execute(update(GptRow).where(GptRow.id == gpt_id)
                         .values(sharing=gpt.sharing, updated_at=now, body=sealed,
                                 training_consent=member.tenant.training_consent))
            if gpt.sharing != current.sharing:
                self._audit_sharing(conn, member, gpt)
            return gpt

        return self._transact(change)

    def knowledge_file_ids(self, tenant: TenantRef) -> frozenset[str]:
        """The knowledge files of every GPT of the workspace: retention keeps them."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(*GPT_COLUMNS)
                                .where(GptRow.workspace_id == tenant.id)).all()
        return frozenset(file_id for row in rows for file_id in self._gpt(tenant, row).file_ids)

    def forget_file(self, tenant: TenantRef, file_id: str) -> tuple[Gpt, ...]:
        """Take a deleted file out of every GPT of the workspace that used it; the GPTs
        changed (their knowledge is then `Knowledge.index`'s to rebuild)."""

        def forget(conn: Connection) -> tuple[Gpt, ...]:
            rows = conn.execute(select(*GPT_COLUMNS).with_for_update()
                                .where(GptRow.workspace_id == tenant.id)).all()
            changed = []
            now = datetime.now(UTC)
            for row in rows:
                gpt = self._gpt(tenant, row)
                if file_id not in gpt.file_ids:
                    continue
                gpt = replace(gpt, file_ids=tuple(f for f in gpt.file_ids if f != file_id),
                              updated_at=now)
                sealed = self.store.seal(tenant, GPT_KIND, gpt.id, gpt._sealed_body())
                conn.execute(update(GptRow).where(GptRow.id == gpt.id)
                             .values(updated_at=now, body=sealed,
                                     training_consent=tenant.training_consent))
                changed.append(gpt)
            return tuple(changed)

        return self._transact(forget)

    def delete(self, member: MemberGrant, gpt_id: str) -> None:
        """Delete the GPT (its owner or a workspace admin). Its knowledge index is
        `Knowledge.delete`'s to remove."""
        with self.store.engine.begin() as conn:
            self._changeable(conn, member, gpt_id)
            conn.execute(delete(GptRow).where(GptRow.id == gpt_id))
