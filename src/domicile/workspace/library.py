"""A workspace's GPTs and the files they know, kept in step.

A GPT's row and its knowledge index change together: a GPT whose knowledge cannot be indexed
(a file gone, too much text, no embedding model in the region) is not created, and a change
whose index fails is undone. A deleted file leaves every GPT that used it, and their indexes
are rebuilt without it: "deleted" means no model sees its text again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from domicile.errors import DomicileError
from domicile.tenancy.grants import MemberGrant

from .files import FileStore
from .gpts import Gpt, Gpts
from .knowledge import Knowledge

__all__ = ["Library"]

log = logging.getLogger("domicile.workspace")


class Library:
    def __init__(self, files: FileStore, gpts: Gpts, knowledge: Knowledge) -> None:
        self.files = files
        self.gpts = gpts
        self.knowledge = knowledge

    async def create_gpt(self, member: MemberGrant, **fields: Any) -> Gpt:
        gpt = await asyncio.to_thread(self.gpts.create, member, **fields)
        try:
            await self.knowledge.index(member.tenant, gpt.id, gpt.file_ids)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self.gpts.delete, member, gpt.id))
            raise
        return gpt

    async def update_gpt(self, member: MemberGrant, gpt_id: str, **changes: Any) -> Gpt:
        before = await asyncio.to_thread(self.gpts.get, member, gpt_id)
        gpt = await asyncio.to_thread(self.gpts.update, member, gpt_id, **changes)
        if gpt.file_ids == before.file_ids:
            return gpt
        try:
            await self.knowledge.index(member.tenant, gpt.id, gpt.file_ids)
        except BaseException:
            # The files go back to what the index still holds.
            await asyncio.shield(asyncio.to_thread(
                self.gpts.update, member, gpt_id, file_ids=before.file_ids))
            raise
        return gpt

    async def delete_gpt(self, member: MemberGrant, gpt_id: str) -> None:
        await asyncio.to_thread(self.gpts.delete, member, gpt_id)
        await self.knowledge.delete(member.tenant, gpt_id)

    async def delete_file(self, member: MemberGrant, file_id: str) -> None:
        """Delete the member's file and its text from every GPT's knowledge. The GPTs' old
        indexes (holding the file's passages) go before the file does, so that no failure
        later (the embedding model down, say) leaves its text where a model can read it; a
        GPT whose index cannot be rebuilt then is left without one (logged, by ids) until it
        is next changed."""
        await asyncio.to_thread(self.files.get, member, file_id)  # 404 before any change
        changed = await asyncio.to_thread(self.gpts.forget_file, member.tenant, file_id)
        for gpt in changed:
            await self.knowledge.delete(member.tenant, gpt.id)
        await asyncio.to_thread(self.files.delete, member, file_id)
        for gpt in changed:
            try:
                await self.knowledge.index(member.tenant, gpt.id, gpt.file_ids)
            except DomicileError as error:
                log.warning("workspace %s: GPT %s has no knowledge index after a file was "
                            "deleted (%s)", member.workspace_id, gpt.id, error.code)
