"""GPT knowledge: passages cut on natural boundaries, embedded by the real in-process model
(all-MiniLM-L6-v2, offline), kept as one sealed blob per GPT and searched by meaning.

SQLite only: the store is the same code on PostgreSQL (tests/workspace/test_files.py runs
both), and the model is what takes the time here."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from domicile.config import Capability, ProviderSettings, WorkspaceSettings
from domicile.errors import InvalidInput, NoInRegionProvider, NotFound, UpstreamError
from domicile.inference.embeddings import MAX_BATCH_INPUTS, Embedder
from domicile.inference.providers import local_embeddings
from domicile.inference.providers.base import Provider, ProviderResponse, ProviderUnavailable
from domicile.inference.providers.dev_echo import DevEchoProvider
from domicile.inference.providers.local_embeddings import LocalEmbeddingsProvider
from domicile.inference.routing import ModelRouter
from domicile.site import Site
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.workspace import knowledge as knowledge_module
from domicile.workspace.files import FileStore
from domicile.workspace.knowledge import INDEX_BLOB_KIND, Knowledge, chunk_text
from tests.conftest import scan_for_canary
from tests.storage.test_regional import rows_holding
from tests.workspace.conftest import MemberFactory
from tests.workspace.test_files import image_bytes, pdf_bytes

MODEL = "all-minilm-l6-v2"

CATS = ("Cats need fresh water every day. Feed an adult cat twice a day, and brush long-haired "
        "breeds weekly so their fur does not mat.")
TAXES = ("Individual income tax returns for the previous year must be filed by the 30th of "
         "April. Late filing is charged a penalty of five percent per month.")
GARDEN = ("Tomatoes grow best in full sun. Water them deeply at the roots in the morning and "
          "stake the plants once they are a foot tall.")


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def model() -> Any:
    return local_embeddings.load_model()  # once per process (about 5 s)


def provider_settings(name: str, kind: Any, **extra: Any) -> ProviderSettings:
    return ProviderSettings(name=name, kind=kind, models=(MODEL,), **extra)


@pytest.fixture
async def encoder(model: Any) -> AsyncIterator[LocalEmbeddingsProvider]:
    served = LocalEmbeddingsProvider(provider_settings("emb", "local-embeddings"), "eu")
    await served.start()
    yield served
    await served.aclose()


@pytest.fixture
def embedder(encoder: LocalEmbeddingsProvider) -> Embedder:
    return Embedder(ModelRouter("eu", [encoder]))


@pytest.fixture
def files(eu_store: RegionalStore) -> FileStore:
    return FileStore(eu_store, WorkspaceSettings())


@pytest.fixture
def knowledge(eu_store: RegionalStore, files: FileStore, embedder: Embedder) -> Knowledge:
    return Knowledge(eu_store, files, embedder)


def gpt_id() -> str:
    return f"gpt_{secrets.token_hex(8)}"


# -- passages --------------------------------------------------------------------------------


def test_paragraphs_that_fit_stay_whole() -> None:
    text = "First paragraph, short.\n\nSecond paragraph, also short.\n\n\nThird."
    assert chunk_text(text, size=30, overlap=0) == [
        "First paragraph, short.", "Second paragraph, also short.", "Third."]
    assert chunk_text(text) == [text]  # all of it fits one passage


def test_a_long_paragraph_is_cut_between_sentences() -> None:
    sentences = [f"Sentence number {i} says something." for i in range(12)]
    passages = chunk_text(" ".join(sentences), size=120, overlap=0)
    assert len(passages) > 1
    for passage in passages:
        assert len(passage) <= 120
        assert passage.startswith("Sentence number") and passage.endswith("something.")
    assert " ".join(passages) == " ".join(sentences)  # nothing lost, nothing repeated


def test_passages_overlap_by_whole_sentences() -> None:
    sentences = [f"Fact {i:02d} is here." for i in range(40)]  # 17 characters each
    passages = chunk_text(" ".join(sentences), size=100, overlap=40)
    assert len(passages) > 1 and all(len(p) <= 100 for p in passages)
    for before, after in itertools.pairwise(passages):
        # The longest end of one passage that the next one starts with: whole sentences,
        # at most about `overlap` characters.
        shared = max(n for n in range(len(after) + 1) if before.endswith(after[:n]))
        assert 17 <= shared <= 40 and after[:shared].endswith("is here.")
    assert {s for s in sentences if any(s in p for p in passages)} == set(sentences)


def test_a_sentence_longer_than_a_passage_is_cut_between_words() -> None:
    words = [f"word{i}" for i in range(100)]
    passages = chunk_text(" ".join(words), size=50, overlap=0)
    assert all(len(p) <= 50 for p in passages)
    assert " ".join(passages).split() == words  # no word was cut


def test_a_word_longer_than_a_passage_is_cut_anywhere() -> None:
    assert chunk_text("x" * 250, size=100, overlap=10) == ["x" * 100, "x" * 100, "x" * 50]


def test_nothing_but_whitespace_gives_no_passages() -> None:
    assert chunk_text(" \n\n \t ") == []


# -- the embedder ----------------------------------------------------------------------------


async def test_embeddings_are_unit_float32_rows_in_order(embedder: Embedder) -> None:
    texts = [f"note {i} about {'cats' if i % 2 else 'taxes'}" for i in range(MAX_BATCH_INPUTS + 9)]
    vectors = await embedder.embed(texts, owner="ws_a")
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Two requests were made; the rows are still in input order.
    alone = await embedder.embed([texts[-1]], owner="ws_a")
    assert float(vectors[-1] @ alone[0]) > 0.999


class CannedEmbeddings(Provider):
    """An embeddings provider answering what a test gives it (or being down)."""

    kind = "canned"
    supported: ClassVar[frozenset[Capability]] = frozenset({"embeddings"})

    def __init__(self, name: str, answer: ProviderResponse | None) -> None:
        super().__init__(provider_settings(name, "dev-echo", capabilities=("embeddings",)),
                         "eu")
        self.answer = answer
        self.calls = 0

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any], *,
                         owner: str = "") -> ProviderResponse:
        self.calls += 1
        assert json.loads(body) == parsed  # the body is the request the provider is sent
        if self.answer is None:
            raise ProviderUnavailable(self.name, "ConnectError")
        return self.answer


async def test_the_in_process_model_is_preferred_and_a_provider_down_is_failed_over(
        encoder: LocalEmbeddingsProvider) -> None:
    down = CannedEmbeddings("down", None)
    echo = DevEchoProvider(provider_settings("echo", "dev-echo"), "eu")
    assert Embedder(ModelRouter("eu", [echo, encoder])).model == MODEL
    embedder = Embedder(ModelRouter("eu", [down, encoder]))
    vectors = await embedder.embed(["hello"], owner="ws_a")
    assert down.calls == 1 and vectors.shape == (1, 384)


async def test_a_malformed_answer_is_a_502() -> None:
    bad = CannedEmbeddings("bad", ProviderResponse(200, b'{"data": [{"index": 0}]}'))
    with pytest.raises(UpstreamError) as failed:
        await Embedder(ModelRouter("eu", [bad])).embed(["hello"], owner="ws_a")
    assert failed.value.status == 502 and "bad" in failed.value.message


async def test_no_embedding_provider_in_the_region_is_a_503() -> None:
    chat_only = DevEchoProvider(provider_settings("echo", "dev-echo", capabilities=("chat",)),
                                "eu")
    down = CannedEmbeddings("down", None)
    with pytest.raises(NoInRegionProvider) as none_here:
        await Embedder(ModelRouter("eu", [chat_only])).embed(["hello"], owner="ws_a")
    assert none_here.value.status == 503
    with pytest.raises(NoInRegionProvider):  # the only one is down: the router's 503
        await Embedder(ModelRouter("eu", [down])).embed(["hello"], owner="ws_a")


# -- knowledge -------------------------------------------------------------------------------


async def test_a_paraphrased_question_finds_the_one_file_that_answers_it(
        knowledge: Knowledge, files: FileStore, member: MemberGrant) -> None:
    cats = files.add(member, "cats.md", CATS.encode())
    taxes = files.add(member, "taxes.pdf", pdf_bytes(*TAXES.split(". ")))
    garden = files.add(member, "garden.txt", GARDEN.encode())
    gpt = gpt_id()
    assert await knowledge.index(member.tenant, gpt, [cats.id, taxes.id, garden.id]) == 3
    found = await knowledge.search(
        member.tenant, gpt, "When is the last day to hand in my yearly tax declaration?", 2)
    assert [p.file_id for p in found][:1] == [taxes.id]
    assert found[0].file_name == "taxes.pdf" and "April" in found[0].text
    assert len(found) == 2 and found[0].score > found[1].score
    plants = await knowledge.search(member.tenant, gpt,
                                    "how do I look after my vegetable plants?", 1)
    assert [(p.file_id, p.file_name) for p in plants] == [(garden.id, "garden.txt")]


async def test_the_index_is_one_sealed_blob(site: Site, knowledge: Knowledge, files: FileStore,
                                            member: MemberGrant, eu_store: RegionalStore,
                                            embedder: Embedder) -> None:
    canary = f"CANARY{secrets.token_hex(10)}"
    secret = files.add(member, f"{canary}.txt", f"The vault code is {canary}.".encode())
    gpt = gpt_id()
    await knowledge.index(member.tenant, gpt, [secret.id])
    assert [b.id for b in eu_store.list_blobs(member.tenant, INDEX_BLOB_KIND)] == [gpt]
    assert scan_for_canary([Path(site.settings.data_dir)], canary) == []
    assert rows_holding(site, canary) == []
    # Read back from the store alone (a fresh service, nothing cached): the same passage.
    fresh = Knowledge(eu_store, files, embedder)
    found = await fresh.search(member.tenant, gpt, "what is the code of the vault", 1)
    assert [(p.file_name, p.text) for p in found] == [
        (f"{canary}.txt", f"The vault code is {canary}.")]


async def test_reindexing_replaces_and_no_files_deletes(knowledge: Knowledge, files: FileStore,
                                                        member: MemberGrant,
                                                        eu_store: RegionalStore) -> None:
    cats = files.add(member, "cats.md", CATS.encode())
    taxes = files.add(member, "taxes.txt", TAXES.encode())
    gpt = gpt_id()
    await knowledge.index(member.tenant, gpt, [cats.id, taxes.id])
    assert await knowledge.index(member.tenant, gpt, [cats.id, cats.id]) == 1
    found = await knowledge.search(member.tenant, gpt, "income tax deadline", 5)
    assert [p.file_id for p in found] == [cats.id]
    assert await knowledge.index(member.tenant, gpt, []) == 0
    assert eu_store.get_blob(member.tenant, INDEX_BLOB_KIND, gpt) is None
    assert await knowledge.search(member.tenant, gpt, "cats", 5) == []


async def test_images_add_no_knowledge(knowledge: Knowledge, files: FileStore,
                                       member: MemberGrant, eu_store: RegionalStore) -> None:
    picture = files.add(member, "cat.png", image_bytes())
    gpt = gpt_id()
    assert await knowledge.index(member.tenant, gpt, [picture.id]) == 0
    assert eu_store.get_blob(member.tenant, INDEX_BLOB_KIND, gpt) is None


async def test_delete_forgets_the_index(knowledge: Knowledge, files: FileStore,
                                        member: MemberGrant, eu_store: RegionalStore) -> None:
    cats = files.add(member, "cats.md", CATS.encode())
    gpt = gpt_id()
    await knowledge.index(member.tenant, gpt, [cats.id])
    assert await knowledge.search(member.tenant, gpt, "feeding a cat", 1)  # now cached
    await knowledge.delete(member.tenant, gpt)
    assert await knowledge.search(member.tenant, gpt, "feeding a cat", 1) == []
    assert eu_store.list_blobs(member.tenant, INDEX_BLOB_KIND) == []


async def test_knowledge_stays_in_its_workspace(knowledge: Knowledge, files: FileStore,
                                                make_member: MemberFactory) -> None:
    member = make_member()
    colleague = make_member(workspace_id=member.workspace_id)
    stranger = make_member()
    theirs = files.add(colleague, "cats.md", CATS.encode())
    gpt = gpt_id()
    # A colleague's file may be a GPT's knowledge (the workspace's), a stranger's may not.
    assert await knowledge.index(member.tenant, gpt, [theirs.id]) == 1
    with pytest.raises(NotFound):
        await knowledge.index(stranger.tenant, gpt_id(), [theirs.id])
    assert await knowledge.search(stranger.tenant, gpt, "feeding a cat", 3) == []
    assert len(await knowledge.search(member.tenant, gpt, "feeding a cat", 3)) == 1


async def test_a_long_document_is_searched_passage_by_passage(
        knowledge: Knowledge, files: FileStore, member: MemberGrant) -> None:
    filler = [f"Section {i}. The committee discussed item {i} of the agenda and agreed to "
              f"revisit it at the next meeting." for i in range(60)]
    filler[37] = ("Section 37. The office will be closed on the first Monday of August "
                  "for the summer bank holiday.")
    minutes = files.add(member, "minutes.txt", "\n\n".join(filler).encode())
    gpt = gpt_id()
    passages = await knowledge.index(member.tenant, gpt, [minutes.id])
    assert passages > 3
    found = await knowledge.search(member.tenant, gpt, "is the office open in August?", 1)
    assert "bank holiday" in found[0].text and len(found[0].text) <= 1200


async def test_text_is_cut_off_the_event_loop_and_no_further_than_the_limit(
        knowledge: Knowledge, files: FileStore, member: MemberGrant,
        monkeypatch: pytest.MonkeyPatch, eu_store: RegionalStore) -> None:
    cut_on: set[threading.Thread] = set()
    pulled = 0
    real_passages, real_encode = knowledge_module.iter_passages, knowledge_module._encode_index

    def counted(text: str) -> Iterator[str]:
        nonlocal pulled
        cut_on.add(threading.current_thread())
        for passage in real_passages(text):
            pulled += 1
            yield passage

    def encode(index: Any) -> list[bytes]:
        cut_on.add(threading.current_thread())
        return real_encode(index)

    monkeypatch.setattr(knowledge_module, "iter_passages", counted)
    monkeypatch.setattr(knowledge_module, "_encode_index", encode)
    monkeypatch.setattr(knowledge_module, "MAX_INDEX_PASSAGES", 5)
    cats = files.add(member, "cats.md", CATS.encode())
    book = files.add(member, "book.txt", "\n\n".join([GARDEN] * 8 * 200).encode())
    assert await knowledge.index(member.tenant, gpt_id(), [cats.id]) == 1
    pulled = 0
    with pytest.raises(InvalidInput) as refused:
        await knowledge.index(member.tenant, gpt_id(), [cats.id, book.id])
    assert refused.value.status == 400 and refused.value.param == "file_ids"
    assert "more than 5 passages" in refused.value.message
    # Cats' one passage, then the book's first five: its fifth is one too many, and the
    # other 195 or so are never cut.
    assert pulled == 1 + 5
    assert cut_on and threading.main_thread() not in cut_on  # never on the event loop
    assert len(eu_store.list_blobs(member.tenant, INDEX_BLOB_KIND)) == 1  # the first only


async def test_every_process_sees_a_changed_index(
        knowledge: Knowledge, files: FileStore, member: MemberGrant, eu_store: RegionalStore,
        embedder: Embedder) -> None:
    # Two server processes of one region (`serve --workers 2`): one cache each, one store.
    other_process = Knowledge(eu_store, files, embedder)
    cats = files.add(member, "cats.md", CATS.encode())
    taxes = files.add(member, "taxes.txt", TAXES.encode())
    gpt = gpt_id()
    question = "how often should I feed my cat?"
    await knowledge.index(member.tenant, gpt, [cats.id])
    assert [p.file_id for p in await other_process.search(member.tenant, gpt, question, 3)] == [
        cats.id]  # now cached in the other process
    await knowledge.index(member.tenant, gpt, [taxes.id])
    assert [p.file_id for p in await other_process.search(member.tenant, gpt, question, 3)] == [
        taxes.id]
    await knowledge.delete(member.tenant, gpt)
    assert await other_process.search(member.tenant, gpt, question, 3) == []
    # The version is in the blob's sealed meta, and the cache is used while it holds.
    await knowledge.index(member.tenant, gpt, [cats.id])
    stored = eu_store.get_blob(member.tenant, INDEX_BLOB_KIND, gpt)
    assert stored is not None and len(stored.meta["version"]) == 32
    first = await other_process.search(member.tenant, gpt, question, 1)
    assert await other_process.search(member.tenant, gpt, question, 1) == first
