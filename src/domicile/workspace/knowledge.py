"""A GPT's knowledge: its files' text cut into passages, embedded, and searched by meaning.

A GPT's index is ONE sealed blob ("ws-gpt-index", id = the GPT's id) holding the passages'
texts, their files' ids and names and the float32 matrix of their embeddings; it is replaced
whole on every `index`. A search embeds the question and ranks every passage by the dot
product with it (rows are unit length: cosine similarity). The decrypted index is kept in
memory only, for the GPTs searched most recently, and used only while its version (random,
new with every `index`, in the blob's sealed meta) is still the stored one.

The format of the blob (no pickle: a blob is data, never code): `MAGIC`, the length of a JSON
header (4 bytes, big-endian), the header {"version", "dim", "files": [[id, name], ...],
"passages": [[file index, text], ...]}, then the matrix as little-endian float32, one row per
passage.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
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
    "iter_passages",
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


def iter_passages(text: str, *, size: int = 1200, overlap: int = 200) -> Iterator[str]:
    """`chunk_text`, one passage at a time: lazily, so a caller may stop as soon as it has
    enough (a huge file is not cut whole only to be refused)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("chunk_text needs size >= 1 and 0 <= overlap < size")
    units = _units(text, 0, len(text), size)
    # The units from the first of the current passage on: at most about one passage's worth.
    window: list[tuple[int, int]] = []

    def have(count: int) -> bool:
        while len(window) < count:
            unit = next(units, None)
            if unit is None:
                return False
            window.append(unit)
        return True

    if not have(1):
        return
    while True:
        start = window[0][0]
        last = 0
        while have(last + 2) and window[last + 1][1] - start <= size:
            last += 1
        yield text[start:window[last][1]]
        if not have(last + 2):
            return
        # The next passage starts at the units that end this one within `overlap`, as far
        # back as still leaves room for the next unit not in this one.
        end, following = window[last][1], window[last + 1][1]
        next_first = last + 1
        while (next_first - 1 > 0 and window[next_first - 1][0] >= end - overlap
               and following - window[next_first - 1][0] <= size):
            next_first -= 1
        del window[:next_first]


def chunk_text(text: str, *, size: int = 1200, overlap: int = 200) -> list[str]:
    """`text` as passages of at most `size` characters, cut on paragraph, else sentence, else
    word boundaries; each passage repeats about the last `overlap` characters of the one
    before (whole sentences or words), so a passage is not lost across a cut."""
    return list(iter_passages(text, size=size, overlap=overlap))


def _passages_within(text: str, room: int) -> list[str] | None:
    """The passages of `text`, or None as soon as there are more than `room`."""
    passages: list[str] = []
    for passage in iter_passages(text):
        if len(passages) == room:
            return None
        passages.append(passage)
    return passages


@dataclass(frozen=True)
class Passage:
    file_id: str
    file_name: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class _Index:
    version: str  # random, new with every `index`; also in the blob's meta
    files: tuple[tuple[str, str], ...]  # (id, name)
    passages: tuple[tuple[int, str], ...]  # (index into files, text)
    matrix: Vectors  # one unit row per passage


def _encode_index(index: _Index) -> list[bytes]:
    header = json.dumps({
        "version": index.version,
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
        version = str(header.get("version", ""))
        files = tuple((str(file_id), str(name)) for file_id, name in header["files"])
        passages = tuple((int(file), str(text)) for file, text in header["passages"])
        matrix = np.frombuffer(data, dtype="<f4", offset=offset).astype(np.float32)
        matrix = matrix.reshape(len(passages), int(header["dim"]))
    except (ValueError, KeyError, TypeError, AttributeError, struct.error):
        # Sealed, so never tampered with: only a bug could write such a blob.
        raise StorageError("a GPT's knowledge index is not in the expected format") from None
    return _Index(version, files, passages, matrix)


def _too_much_text() -> InvalidInput:
    return InvalidInput(f"The knowledge files hold too much text: more than "
                        f"{MAX_INDEX_PASSAGES:,} passages.", param="file_ids")


class Knowledge:
    """GPT knowledge indexes of a region's store. Async: embedding awaits the encoder, and
    the blocking work (store calls, cutting text, encoding the index) runs in threads.

    The decrypted indexes are cached per process, and a region may run several server
    processes: every `index` writes a new random version into the blob's (sealed) meta, and
    a search uses its cached index only while that is still the stored version (one small
    query), so no process keeps searching knowledge another one has replaced."""

    def __init__(self, store: RegionalStore, files: FileStore, embedder: Embedder,
                 cache_size: int = 64) -> None:
        self.store = store
        self.files = files
        self.embedder = embedder
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], _Index] = OrderedDict()

    async def index(self, tenant: TenantRef, gpt_id: str, file_ids: Sequence[str]) -> int:
        """(Re)build the GPT's index from the text of `file_ids` (files without text, such as
        images, add nothing); returns how many passages it holds. No files (or no text):
        the index is deleted. 404 for a file that is not the workspace's; 400 for more than
        `MAX_INDEX_PASSAGES` passages in all."""
        files: list[tuple[str, str]] = []
        passages: list[tuple[int, str]] = []
        for file_id in dict.fromkeys(file_ids):  # each once, in order
            found = await asyncio.to_thread(self.files.lookup, tenant, file_id)
            text = await asyncio.to_thread(self.files.text, tenant, file_id)
            if text is None:
                continue
            # Cutting megabytes of text takes a while: not on the event loop, and no further
            # than the limit.
            chunks = await asyncio.to_thread(_passages_within, text,
                                             MAX_INDEX_PASSAGES - len(passages))
            del text
            if chunks is None:
                raise _too_much_text()
            if not chunks:
                continue
            files.append((found.id, found.name))
            passages.extend((len(files) - 1, chunk) for chunk in chunks)
        if not passages:
            await self.delete(tenant, gpt_id)
            return 0
        matrix = await self.embedder.embed([text for _, text in passages], owner=tenant.id)
        built = _Index(secrets.token_hex(16), tuple(files), tuple(passages), matrix)
        encoded = await asyncio.to_thread(_encode_index, built)
        await asyncio.to_thread(self.store.put_blob, tenant, INDEX_BLOB_KIND, gpt_id,
                                "knowledge-index", encoded, {"version": built.version})
        self._remember((tenant.id, gpt_id), built)
        return len(passages)

    def _remember(self, key: tuple[str, str], index: _Index) -> None:
        self._cache[key] = index
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _current(self, tenant: TenantRef, gpt_id: str, cached: _Index | None
                 ) -> _Index | None:
        """The stored index: `cached` while its version is the stored one, else read anew."""
        stored = self.store.get_blob(tenant, INDEX_BLOB_KIND, gpt_id)
        if stored is None:
            return None
        version = stored.meta.get("version")
        if cached is not None and version and cached.version == version:
            return cached
        try:
            sealed = self.store.open_blob(tenant, INDEX_BLOB_KIND, gpt_id)
        except KeyError:  # deleted in between
            return None
        return _decode_index(b"".join(sealed))

    async def _index_of(self, tenant: TenantRef, gpt_id: str) -> _Index | None:
        key = (tenant.id, gpt_id)
        cached = self._cache.get(key)
        current = await asyncio.to_thread(self._current, tenant, gpt_id, cached)
        if current is None:
            self._cache.pop(key, None)
        elif current is cached:
            self._cache.move_to_end(key)
        elif current.version:
            # Cached under the version its own bytes carry: if the blob changed again
            # between the meta and the bytes, the next search sees the mismatch and reloads.
            self._remember(key, current)
        return current

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
        self._cache.pop((tenant.id, gpt_id), None)
        await asyncio.to_thread(self.store.delete_blob, tenant, INDEX_BLOB_KIND, gpt_id)
