"""A GPT's knowledge: its files' text cut into passages, embedded, and searched by meaning.

A GPT's index is ONE sealed blob ("ws-gpt-index", id = the GPT's id) holding the passages'
texts, their files' ids and names and the float32 matrix of their embeddings; it is replaced
whole on every `index`. A search embeds the question and ranks every passage by the dot
product with it (rows are unit length: cosine similarity). The decrypted index is kept in
memory only, for the GPTs searched most recently.

The format of the blob (no pickle: a blob is data, never code): `MAGIC`, the length of a JSON
header (4 bytes, big-endian), the header {"dim", "files": [[id, name], ...], "passages":
[[file index, text], ...]}, then the matrix as little-endian float32, one row per passage.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from domicile.errors import InvalidInput, StorageError
from domicile.inference.embeddings import Embedder, Vectors
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore

from .files import FileStore

__all__ = [
    "INDEX_BLOB_KIND",
    "MAX_INDEX_PASSAGES",
    "Knowledge",
    "Passage",
    "chunk_text",
]

INDEX_BLOB_KIND = "ws-gpt-index"
MAGIC = b"DWKI1\n"
# Passages one GPT's knowledge may hold (about 10 MB of text): indexing more would keep the
# region's encoder busy for minutes.
MAX_INDEX_PASSAGES = 10_000

# The boundaries to cut on, the most natural first: paragraphs, sentences, words.
_BOUNDARIES = (
    re.compile(r"\n[ \t\r\f\v]*\n\s*"),
    re.compile(r"(?<=[.!?])\s+"),
    re.compile(r"\s+"),
)


def _units(text: str, start: int, end: int, size: int, level: int = 0
           ) -> Iterator[tuple[int, int]]:
    """Spans of `text[start:end]` of at most `size` characters, without surrounding
    whitespace, cut on the most natural boundary that makes them small enough."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return
    if end - start <= size:
        yield start, end
        return
    if level == len(_BOUNDARIES):  # one "word" longer than a passage: cut it anywhere
        for cut in range(start, end, size):
            yield cut, min(cut + size, end)
        return
    piece_start = start
    for boundary in _BOUNDARIES[level].finditer(text, start, end):
        yield from _units(text, piece_start, boundary.start(), size, level + 1)
        piece_start = boundary.end()
    yield from _units(text, piece_start, end, size, level + 1)


def chunk_text(text: str, *, size: int = 1200, overlap: int = 200) -> list[str]:
    """`text` as passages of at most `size` characters, cut on paragraph, else sentence, else
    word boundaries; each passage repeats about the last `overlap` characters of the one
    before (whole sentences or words), so a passage is not lost across a cut."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("chunk_text needs size >= 1 and 0 <= overlap < size")
    units = list(_units(text, 0, len(text), size))
    passages: list[str] = []
    first = 0
    while first < len(units):
        start = units[first][0]
        last = first
        while last + 1 < len(units) and units[last + 1][1] - start <= size:
            last += 1
        passages.append(text[start:units[last][1]])
        if last + 1 == len(units):
            break
        # The next passage starts at the units that end this one within `overlap`, as far
        # back as still leaves room for the next unit not in this one.
        end, following = units[last][1], units[last + 1][1]
        next_first = last + 1
        while (next_first - 1 > first and units[next_first - 1][0] >= end - overlap
               and following - units[next_first - 1][0] <= size):
            next_first -= 1
        first = next_first
    return passages


@dataclass(frozen=True)
class Passage:
    file_id: str
    file_name: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class _Index:
    files: tuple[tuple[str, str], ...]  # (id, name)
    passages: tuple[tuple[int, str], ...]  # (index into files, text)
    matrix: Vectors  # one unit row per passage


def _encode_index(index: _Index) -> list[bytes]:
    header = json.dumps({
        "dim": int(index.matrix.shape[1]),
        "files": [list(file) for file in index.files],
        "passages": [list(passage) for passage in index.passages],
    }, ensure_ascii=False).encode("utf-8")
    matrix = np.ascontiguousarray(index.matrix, dtype="<f4")
    return [MAGIC, struct.pack(">I", len(header)), header, matrix.tobytes()]


def _decode_index(data: bytes) -> _Index:
    try:
        if not data.startswith(MAGIC):
            raise ValueError("magic")
        offset = len(MAGIC)
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        header = json.loads(data[offset:offset + length])
        offset += length
        files = tuple((str(file_id), str(name)) for file_id, name in header["files"])
        passages = tuple((int(file), str(text)) for file, text in header["passages"])
        matrix = np.frombuffer(data, dtype="<f4", offset=offset).astype(np.float32)
        matrix = matrix.reshape(len(passages), int(header["dim"]))
    except (ValueError, KeyError, TypeError, struct.error):
        # Sealed, so never tampered with: only a bug could write such a blob.
        raise StorageError("a GPT's knowledge index is not in the expected format") from None
    return _Index(files, passages, matrix)


class Knowledge:
    """GPT knowledge indexes of a region's store. Async: embedding awaits the encoder, and
    the blocking store calls run in threads."""

    def __init__(self, store: RegionalStore, files: FileStore, embedder: Embedder,
                 cache_size: int = 64) -> None:
        self.store = store
        self.files = files
        self.embedder = embedder
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], _Index] = OrderedDict()
        # Bumped by every change of an index: a load that raced a change is not cached.
        self._changes = 0

    async def index(self, tenant: TenantRef, gpt_id: str, file_ids: Sequence[str]) -> int:
        """(Re)build the GPT's index from the text of `file_ids` (files without text, such as
        images, add nothing); returns how many passages it holds. No files (or no text):
        the index is deleted. 404 for a file that is not the workspace's."""
        files: list[tuple[str, str]] = []
        passages: list[tuple[int, str]] = []
        for file_id in dict.fromkeys(file_ids):  # each once, in order
            found = await asyncio.to_thread(self.files.lookup, tenant, file_id)
            text = await asyncio.to_thread(self.files.text, tenant, file_id)
            if text is None:
                continue
            chunks = chunk_text(text)
            if not chunks:
                continue
            files.append((found.id, found.name))
            passages.extend((len(files) - 1, chunk) for chunk in chunks)
            if len(passages) > MAX_INDEX_PASSAGES:
                raise InvalidInput(
                    f"The knowledge files hold too much text: more than {MAX_INDEX_PASSAGES:,} "
                    "passages.", param="file_ids")
        if not passages:
            await self.delete(tenant, gpt_id)
            return 0
        matrix = await self.embedder.embed([text for _, text in passages], owner=tenant.id)
        built = _Index(tuple(files), tuple(passages), matrix)
        await asyncio.to_thread(self.store.put_blob, tenant, INDEX_BLOB_KIND, gpt_id,
                                "knowledge-index", _encode_index(built))
        self._changes += 1
        self._remember((tenant.id, gpt_id), built)
        return len(passages)

    def _remember(self, key: tuple[str, str], index: _Index) -> None:
        self._cache[key] = index
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _load(self, tenant: TenantRef, gpt_id: str) -> _Index | None:
        try:
            sealed = self.store.open_blob(tenant, INDEX_BLOB_KIND, gpt_id)
        except KeyError:
            return None
        return _decode_index(b"".join(sealed))

    async def _index_of(self, tenant: TenantRef, gpt_id: str) -> _Index | None:
        key = (tenant.id, gpt_id)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        changes = self._changes
        loaded = await asyncio.to_thread(self._load, tenant, gpt_id)
        if loaded is not None and changes == self._changes:
            self._remember(key, loaded)
        return loaded

    async def search(self, tenant: TenantRef, gpt_id: str, query: str, k: int
                     ) -> list[Passage]:
        """The `k` passages of the GPT's knowledge closest in meaning to `query`, best first
        (none when the GPT has no knowledge)."""
        if k < 1 or not query.strip():
            return []
        index = await self._index_of(tenant, gpt_id)
        if index is None or not index.passages:
            return []
        question = await self.embedder.embed([query], owner=tenant.id)
        scores = index.matrix @ question[0]
        k = min(k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        found = []
        for row in best:
            file_index, text = index.passages[int(row)]
            file_id, file_name = index.files[file_index]
            found.append(Passage(file_id, file_name, text, float(scores[row])))
        return found

    async def delete(self, tenant: TenantRef, gpt_id: str) -> None:
        """The GPT's index, from the store and from memory (none: nothing to do)."""
        self._changes += 1
        self._cache.pop((tenant.id, gpt_id), None)
        await asyncio.to_thread(self.store.delete_blob, tenant, INDEX_BLOB_KIND, gpt_id)
