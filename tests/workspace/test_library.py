"""A GPT's row and its knowledge index change together, and a deleted file leaves every GPT's
knowledge. Embeddings come from `dev-echo` (a deterministic stand-in, not a model) where the
test is about the platform, and from a provider that is down where it is about failure."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from domicile.config import ProviderSettings, WorkspaceSettings
from domicile.errors import NoInRegionProvider, NotFound
from domicile.inference.embeddings import Embedder
from domicile.inference.providers import OpenAICompatibleProvider
from domicile.inference.providers.dev_echo import DevEchoProvider
from domicile.inference.routing import ModelRouter
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.workspace.files import FileStore
from domicile.workspace.gpts import Gpts
from domicile.workspace.knowledge import Knowledge
from domicile.workspace.library import Library
from tests.workspace.conftest import MemberFactory

MODEL = "dev-echo"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def files(eu_store: RegionalStore) -> FileStore:
    return FileStore(eu_store, WorkspaceSettings())


@pytest.fixture
def library(eu_store: RegionalStore, files: FileStore) -> Library:
    stand_in = DevEchoProvider(ProviderSettings(name="eu-dev", kind="dev-echo",
                                                models=(MODEL,)), "eu")
    knowledge = Knowledge(eu_store, files, Embedder(ModelRouter("eu", [stand_in])))
    return Library(files, Gpts(eu_store), knowledge)


@pytest.fixture
async def unreachable_library(eu_store: RegionalStore, files: FileStore
                              ) -> AsyncIterator[Library]:
    """The same workspace, but the region's embedding provider is down (nothing listens)."""
    down = OpenAICompatibleProvider(ProviderSettings(
        name="eu-down", kind="openai-compatible", base_url="http://127.0.0.1:1/v1",
        models=("emb",), capabilities=("embeddings",), timeout_s=5), "eu")
    await down.start()
    yield Library(files, Gpts(eu_store), Knowledge(eu_store, files,
                                                   Embedder(ModelRouter("eu", [down]))))
    await down.aclose()


def add(files: FileStore, member: MemberGrant, name: str, text: str) -> str:
    return files.add(member, name, text.encode()).id


async def test_a_deleted_file_leaves_the_gpt_and_its_passages(
        library: Library, files: FileStore, member: MemberGrant) -> None:
    payroll = add(files, member, "payroll.txt", "Salaries are paid on the 25th.")
    menu = add(files, member, "menu.txt", "Soup on Mondays.")
    gpt = await library.create_gpt(member, name="HR", instructions="Help.", model=MODEL,
                                   file_ids=(payroll, menu), sharing="workspace")
    found = await library.knowledge.search(member.tenant, gpt.id, "when is pay day", 5)
    assert {p.file_id for p in found} == {payroll, menu}

    await library.delete_file(member, payroll)

    assert library.gpts.get(member, gpt.id).file_ids == (menu,)
    found = await library.knowledge.search(member.tenant, gpt.id, "when is pay day", 5)
    assert {p.file_id for p in found} == {menu}


async def test_a_gpt_whose_knowledge_cannot_be_indexed_is_not_created(
        unreachable_library: Library, files: FileStore, member: MemberGrant) -> None:
    manual = add(files, member, "manual.txt", "Press the red button.")
    with pytest.raises(NoInRegionProvider):
        await unreachable_library.create_gpt(member, name="Ops", instructions="Help.",
                                             model=MODEL, file_ids=(manual,))
    assert unreachable_library.gpts.list(member) == []


async def test_a_change_whose_index_fails_is_undone(
        library: Library, unreachable_library: Library, files: FileStore,
        member: MemberGrant) -> None:
    first = add(files, member, "first.txt", "The first manual.")
    second = add(files, member, "second.txt", "The second manual.")
    gpt = await library.create_gpt(member, name="Ops", instructions="Help.", model=MODEL,
                                   file_ids=(first,))
    with pytest.raises(NoInRegionProvider):
        await unreachable_library.update_gpt(member, gpt.id, file_ids=(first, second))
    assert library.gpts.get(member, gpt.id).file_ids == (first,)
    found = await library.knowledge.search(member.tenant, gpt.id, "manual", 5)
    assert {p.file_id for p in found} == {first}
    # Control: with the embedding model up, the same change is made.
    changed = await library.update_gpt(member, gpt.id, file_ids=(first, second))
    assert changed.file_ids == (first, second)


async def test_a_deleted_files_text_is_gone_even_when_the_index_cannot_be_rebuilt(
        library: Library, unreachable_library: Library, files: FileStore,
        member: MemberGrant) -> None:
    payroll = add(files, member, "payroll.txt", "Salaries are paid on the 25th.")
    menu = add(files, member, "menu.txt", "Soup on Mondays.")
    gpt = await library.create_gpt(member, name="HR", instructions="Help.", model=MODEL,
                                   file_ids=(payroll, menu))
    assert await library.knowledge.search(member.tenant, gpt.id, "pay day", 5)  # warm cache

    await unreachable_library.delete_file(member, payroll)  # the embedding model is down

    assert library.gpts.get(member, gpt.id).file_ids == (menu,)
    found = await library.knowledge.search(member.tenant, gpt.id, "pay day", 5)
    assert payroll not in {p.file_id for p in found}
    with pytest.raises(NotFound):
        files.get(member, payroll)


async def test_a_file_of_someone_else_changes_no_gpt(
        library: Library, files: FileStore, member: MemberGrant,
        make_member: MemberFactory) -> None:
    manual = add(files, member, "manual.txt", "Press the red button.")
    gpt = await library.create_gpt(member, name="Ops", instructions="Help.", model=MODEL,
                                   file_ids=(manual,), sharing="workspace")
    colleague = make_member(member.workspace_id)
    with pytest.raises(NotFound):
        await library.delete_file(colleague, manual)
    assert library.gpts.get(member, gpt.id).file_ids == (manual,)
