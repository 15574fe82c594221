"""A workspace member's files: uploads (documents and images) and generated files.

What a file is, is decided by its content (magic bytes, a Pillow check of images, strict UTF-8
for text), never by its name; a name that claims another type is refused. The original bytes
are a sealed blob ("ws-file"), a document's extracted text another ("ws-file-text"), and the
name a sealed column of the `ws_files` row: no content or name is ever on disk in the clear.

A PDF's text is read by a short-lived child process with hard limits on memory, CPU time,
pages and text (`_pdf_worker`), fed and read through pipes, at most `PDF_MAX_CONCURRENT` at
once per process: a small hostile PDF can take seconds a page and hundreds of megabytes, and
that must cost the member a 400, not the server its threads. The parsers' own warnings quote
the file's content, so pypdf's and Pillow's loggers and warnings are silenced here and the
child's stderr is never read.

A member sees only their own files: anything else is 404, as if it did not exist.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import unicodedata
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from PIL import Image
from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.orm import Session

from domicile.config import WorkspaceSettings
from domicile.errors import BodyTooLarge, InvalidInput, NotFound, ServerBusy, UnsupportedFile
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.secrets import new_id
from domicile.workspace._pdf_worker import EXIT_ENCRYPTED, EXIT_LIMIT, EXIT_UNREADABLE
from domicile.workspace.models import FileRow

__all__ = [
    "DOCUMENT_TYPES",
    "FILE_BLOB_KIND",
    "FILE_META_KIND",
    "FILE_TEXT_BLOB_KIND",
    "IMAGE_TYPES",
    "MAX_NAME_CHARS",
    "FileStore",
    "Origin",
    "WorkspaceFile",
    "extract_text",
    "sanitize_name",
    "sniff",
]

DOCUMENT_TYPES = ("text/plain", "text/markdown", "application/pdf")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")

FILE_BLOB_KIND = "ws-file"
FILE_TEXT_BLOB_KIND = "ws-file-text"
FILE_META_KIND = "ws-file-meta"
MAX_NAME_CHARS = 255
MAX_LIST_LIMIT = 1000
# Blob writes take the bytes in pieces of this size (the sealing is streamed anyway).
_PIECE_BYTES = 1024 * 1024

Origin = Literal["upload", "generated"]
ORIGINS: tuple[Origin, ...] = ("upload", "generated")

log = logging.getLogger("domicile.workspace")

# What one PDF may cost. The child gets a few CPU seconds more than the wall-clock timeout,
# so whichever comes first, it ends.
PDF_TIMEOUT_SECONDS = 20
PDF_CPU_SECONDS = PDF_TIMEOUT_SECONDS + 5
PDF_MAX_ADDRESS_SPACE = 1024 * 1024 * 1024
PDF_MAX_PAGES = 2_000
PDF_MAX_CHARS = 5_000_000
# PDFs read at once by this process; an upload waits this long for its turn, then 503.
PDF_MAX_CONCURRENT = 2
PDF_QUEUE_SECONDS = 2 * PDF_TIMEOUT_SECONDS
_PDF_SLOTS = threading.BoundedSemaphore(PDF_MAX_CONCURRENT)


def _silence_parsers() -> None:
    """pypdf and Pillow log and warn about malformed files quoting their content (a
    dictionary key, a chunk name): none of it may reach the server's log."""
    for name in ("pypdf", "PIL"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
    # Pillow's warnings of stacklevel 2 are told as this module's (which warns nothing).
    warnings.filterwarnings("ignore", module=r"domicile\.workspace\.files$")


_silence_parsers()

# What a name's extension claims; an extension not listed here claims nothing.
_CLAIMED_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "jpe": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "txt": "text/plain",
    "text": "text/plain",
    "md": "text/markdown",
    "markdown": "text/markdown",
}
_MARKDOWN_EXTENSIONS = ("md", "markdown")
_TEXT_TYPES = ("text/plain", "text/markdown")
# The name Pillow gives each image type it opens.
_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP",
                   "image/gif": "GIF"}
_TYPE_LABELS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP",
                "image/gif": "GIF", "application/pdf": "PDF", "text/plain": "text",
                "text/markdown": "Markdown"}
# Right-to-left overrides and their kin make a name display as something it is not.
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _magic_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _extension(filename: str) -> str:
    _, dot, extension = filename.rpartition(".")
    return extension.lower() if dot else ""


def _verify_image(media_type: str, data: bytes) -> None:
    """Pillow must open the image as the type its magic bytes say, and find it intact."""
    label = _TYPE_LABELS[media_type]
    try:
        with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[media_type]]) as image:
            width, height = image.size
            # A decompression bomb: a small file that decodes to gigabytes of pixels.
            if width * height > (Image.MAX_IMAGE_PIXELS or 0) > 0:
                raise UnsupportedFile(f"The {label} image is too large ({width}x{height} "
                                      "pixels).", param="file")
            image.verify()
    except UnsupportedFile:
        raise
    except Exception:  # Pillow raises many kinds for a broken image; which one says nothing
        raise UnsupportedFile(f"The file is not a valid {label} image.", param="file") from None


def sniff(data: bytes, filename: str) -> str:
    """The media type of `data`, decided by its content: PNG, JPEG, WebP, GIF, PDF, or UTF-8
    text without NUL (Markdown when the name ends .md/.markdown). `UnsupportedFile` for
    anything else, and for a name whose extension claims another type than the content."""
    media_type = _magic_type(data)
    extension = _extension(filename)
    if media_type is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\x00" in text:
            raise UnsupportedFile(
                "The file is not a supported type: upload text, Markdown, PDF, PNG, JPEG, WebP "
                "or GIF (text must be UTF-8).", param="file")
        media_type = "text/markdown" if extension in _MARKDOWN_EXTENSIONS else "text/plain"
    claimed = _CLAIMED_BY_EXTENSION.get(extension)
    if claimed is not None and claimed != media_type:
        raise UnsupportedFile(
            f"The file's name says {_TYPE_LABELS[claimed]} (.{extension}) but its content is "
            f"{_TYPE_LABELS[media_type]}.", param="file")
    if media_type in IMAGE_TYPES:
        _verify_image(media_type, data)
    return media_type


def _refuse_pdf(exit_code: int) -> UnsupportedFile:
    if exit_code == EXIT_ENCRYPTED:
        # Opened with a password the member has not given us: we cannot read it.
        return UnsupportedFile("The PDF is encrypted; upload it without a password.",
                               param="file")
    if exit_code == EXIT_UNREADABLE:
        return UnsupportedFile("The PDF could not be read.", param="file")
    # Too many pages or too much text, out of memory or time, or killed by its limits.
    return UnsupportedFile(
        f"The PDF could not be read within the limits (at most {PDF_MAX_PAGES:,} pages, "
        f"{PDF_MAX_CHARS:,} characters of text and {PDF_TIMEOUT_SECONDS} seconds).",
        param="file")


def _pdf_text(data: bytes) -> str:
    """The PDF's text, read by a child process under hard limits (`_pdf_worker`): the bytes
    go through a pipe, never to disk, and the child's stderr is discarded unread (pypdf's
    warnings quote the file's content)."""
    if not _PDF_SLOTS.acquire(timeout=PDF_QUEUE_SECONDS):
        raise ServerBusy("Too many PDFs are being read at the moment; try again shortly.",
                         headers=((b"retry-after", b"5"),))
    try:
        finished = subprocess.run(
            _pdf_worker_command(), input=data, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, timeout=PDF_TIMEOUT_SECONDS, check=False,
            env=_pdf_worker_environment())
    except subprocess.TimeoutExpired:  # the child is killed and reaped by `run`
        raise _refuse_pdf(EXIT_LIMIT) from None
    finally:
        _PDF_SLOTS.release()
    if finished.returncode != 0:
        raise _refuse_pdf(finished.returncode)
    return finished.stdout.decode("utf-8", "replace")


def _pdf_worker_command() -> list[str]:
    # -I: the child sees neither the environment's PYTHON* variables nor the working
    # directory; the package is found where it is installed.
    return [sys.executable, "-I", "-m", "domicile.workspace._pdf_worker", str(PDF_MAX_PAGES),
            str(PDF_MAX_CHARS), str(PDF_CPU_SECONDS),
            str(PDF_MAX_ADDRESS_SPACE)]


def _pdf_worker_environment() -> dict[str, str]:
    # Nothing of the server's environment (its secrets) is the child's business.
    return {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL")
            if name in os.environ}


def extract_text(media_type: str, data: bytes) -> str | None:
    """The text of a document (for knowledge and chat), None for an image or a document
    without any text (a scanned PDF). 400 `unsupported_file` for a PDF that cannot be read
    (broken, encrypted with a password, or beyond the limits of time, memory, pages or
    text); 503 when too many PDFs are being read already. Blocking (a PDF: up to
    `PDF_TIMEOUT_SECONDS` plus its wait for a turn)."""
    if media_type in _TEXT_TYPES:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UnsupportedFile("The text is not valid UTF-8.", param="file") from None
    elif media_type == "application/pdf":
        text = _pdf_text(data)
    else:
        return None
    text = text.replace("\x00", "")
    return text if text.strip() else None


def sanitize_name(name: str) -> str:
    """A file name safe to store and show: the last part of any path, without control or
    bidirectional-override characters, NFC, at most `MAX_NAME_CHARS` characters (the
    extension kept); "untitled" when nothing is left."""
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c) != "Cc")
    name = _BIDI_CONTROLS.sub("", name).strip()
    if name in ("", ".", ".."):
        return "untitled"
    if len(name) > MAX_NAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = stem[:MAX_NAME_CHARS - len(extension) - 1].rstrip() + "." + extension
        else:
            name = name[:MAX_NAME_CHARS].rstrip()
    return name


def _utc(at: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were written in UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class WorkspaceFile:
    id: str
    user_id: str
    name: str
    media_type: str
    size: int
    origin: str
    created_at: datetime
    has_text: bool

    @property
    def is_image(self) -> bool:
        return self.media_type in IMAGE_TYPES

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "workspace.file",
            "name": self.name,
            "media_type": self.media_type,
            "size": self.size,
            "origin": self.origin,
            "created_at": int(self.created_at.timestamp()),
        }


def _pieces(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), _PIECE_BYTES):
        yield bytes(view[start:start + _PIECE_BYTES])


def _not_found() -> NotFound:
    # Never says whose it is, or whether it exists elsewhere: another member's file and a
    # file that never was look the same.
    return NotFound("No such file.", param="file_id")


class FileStore:
    """The workspace's files in a region's store. Blocking: the front door calls it in a
    thread."""

    def __init__(self, store: RegionalStore, settings: WorkspaceSettings) -> None:
        self.store = store
        self.settings = settings

    # -- adding -----------------------------------------------------------------------------

    def add(self, member: MemberGrant, name: str, data: bytes, *,
            origin: Origin = "upload") -> WorkspaceFile:
        """Store a file of `member`'s: its type decided by its content, its text extracted.
        On any failure nothing of it is left."""
        if origin not in ORIGINS:
            raise InvalidInput("origin must be upload or generated", param="origin")
        if not data:
            raise InvalidInput("The file is empty.", param="file")
        largest = max(self.settings.max_file_bytes, self.settings.max_image_bytes)
        if len(data) > largest:  # before any parsing: a cheap refusal of the hopeless
            raise BodyTooLarge(f"The file is larger than {largest:,} bytes.", param="file")
        name = sanitize_name(name)
        media_type = sniff(data, name)
        limit = (self.settings.max_image_bytes if media_type in IMAGE_TYPES
                 else self.settings.max_file_bytes)
        if len(data) > limit:
            kind = "an image" if media_type in IMAGE_TYPES else "a document"
            raise BodyTooLarge(f"The file is larger than {limit:,} bytes, the limit for "
                               f"{kind}.", param="file")
        text = extract_text(media_type, data)
        encoded_text = None if text is None else text.encode("utf-8")

        tenant = member.tenant
        file_id = new_id("file")
        created_at = datetime.now(UTC)
        meta = {"name": name, "text_size": None if encoded_text is None else len(encoded_text)}
        sealed_meta = self.store.seal(tenant, FILE_META_KIND, file_id,
                                      json.dumps(meta).encode("utf-8"))
        stored: list[str] = []
        try:
            self.store.put_blob(tenant, FILE_BLOB_KIND, file_id, name, _pieces(data),
                                {"media_type": media_type})
            stored.append(FILE_BLOB_KIND)
            if encoded_text is not None:
                self.store.put_blob(tenant, FILE_TEXT_BLOB_KIND, file_id, name,
                                    _pieces(encoded_text), {"media_type": "text/plain"})
                stored.append(FILE_TEXT_BLOB_KIND)
            with self.store.engine.begin() as conn:
                conn.execute(insert(FileRow).values(
                    id=file_id, workspace_id=tenant.id, user_id=member.user_id,
                    region=self.store.region, media_type=media_type, size=len(data),
                    origin=origin, created_at=created_at, meta=sealed_meta,
                    training_consent=tenant.training_consent))
        except BaseException:
            for kind in stored:
                self._delete_blob_quietly(tenant, kind, file_id)
            raise
        return WorkspaceFile(file_id, member.user_id, name, media_type, len(data), origin,
                             created_at, encoded_text is not None)

    def _delete_blob_quietly(self, tenant: TenantRef, kind: str, file_id: str) -> None:
        """Undo a blob of a failed add; the original error is the one the caller gets."""
        try:
            self.store.delete_blob(tenant, kind, file_id)
        except Exception:
            log.exception("region %s: a blob of a failed upload could not be removed",
                          self.store.region)

    # -- reading ----------------------------------------------------------------------------

    def _row(self, tenant: TenantRef, file_id: str, user_id: str | None) -> FileRow:
        query = select(FileRow).where(FileRow.id == file_id, FileRow.workspace_id == tenant.id)
        if user_id is not None:
            query = query.where(FileRow.user_id == user_id)
        with Session(self.store.engine) as session:
            row = session.scalar(query)
        if row is None:
            raise _not_found()
        return row

    def _file(self, tenant: TenantRef, row: FileRow) -> WorkspaceFile:
        meta = json.loads(self.store.open(tenant, FILE_META_KIND, row.id, row.meta))
        return WorkspaceFile(row.id, row.user_id, meta["name"], row.media_type, row.size,
                             row.origin, _utc(row.created_at), meta["text_size"] is not None)

    def get(self, member: MemberGrant, file_id: str) -> WorkspaceFile:
        tenant = member.tenant
        return self._file(tenant, self._row(tenant, file_id, member.user_id))

    def lookup(self, tenant: TenantRef, file_id: str) -> WorkspaceFile:
        """A file of the workspace whoever owns it (no owner check: for GPT knowledge and
        chat, which have checked access their own way)."""
        return self._file(tenant, self._row(tenant, file_id, None))

    def _open(self, tenant: TenantRef, kind: str, file_id: str) -> Iterator[bytes]:
        try:
            return self.store.open_blob(tenant, kind, file_id)
        except KeyError:  # the row outlived its bytes (an interrupted delete)
            raise _not_found() from None

    def read(self, member: MemberGrant, file_id: str) -> bytes:
        self.get(member, file_id)
        return b"".join(self._open(member.tenant, FILE_BLOB_KIND, file_id))

    def content(self, member: MemberGrant, file_id: str
                ) -> tuple[WorkspaceFile, Iterator[bytes]]:
        """The file and its bytes, decrypted as they are read (for a download)."""
        found = self.get(member, file_id)
        return found, self._open(member.tenant, FILE_BLOB_KIND, file_id)

    def text(self, tenant: TenantRef, file_id: str) -> str | None:
        """The file's extracted text (None for an image or a document without text). No owner
        check: for GPT knowledge and chat."""
        found = self.lookup(tenant, file_id)
        if not found.has_text:
            return None
        return b"".join(self._open(tenant, FILE_TEXT_BLOB_KIND, file_id)).decode("utf-8")

    def list(self, member: MemberGrant, *, limit: int = 100,
             after: str | None = None) -> list[WorkspaceFile]:
        """`member`'s files, newest first; `after` = the id of the last file of the page
        before."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be 1 to {MAX_LIST_LIMIT}", param="limit")
        tenant = member.tenant
        query = select(FileRow).where(FileRow.workspace_id == tenant.id,
                                      FileRow.user_id == member.user_id)
        if after is not None:
            try:
                last = self._row(tenant, after, member.user_id)
            except NotFound:
                raise InvalidInput("after is not a file of yours", param="after") from None
            query = query.where(tuple_(FileRow.created_at, FileRow.id)
                                < tuple_(last.created_at, last.id))
        query = query.order_by(FileRow.created_at.desc(), FileRow.id.desc()).limit(limit)
        with Session(self.store.engine) as session:
            rows = list(session.scalars(query))
        return [self._file(tenant, row) for row in rows]

    # -- deleting ---------------------------------------------------------------------------

    def _delete(self, tenant: TenantRef, file_id: str) -> None:
        # The bytes first, the row last: a failure leaves the file listed, to delete again,
        # never unlisted content nobody can reach to delete.
        self.store.delete_blob(tenant, FILE_TEXT_BLOB_KIND, file_id)
        self.store.delete_blob(tenant, FILE_BLOB_KIND, file_id)
        with self.store.engine.begin() as conn:
            conn.execute(delete(FileRow).where(FileRow.id == file_id,
                                               FileRow.workspace_id == tenant.id))

    def delete(self, member: MemberGrant, file_id: str) -> None:
        self.get(member, file_id)
        self._delete(member.tenant, file_id)

    def delete_older_than(self, tenant: TenantRef, cutoff: datetime,
                          keep: Collection[str]) -> int:
        """Retention: delete the workspace's files created before `cutoff`, except those in
        `keep` (the knowledge files of its GPTs). Returns how many were deleted."""
        keep = frozenset(keep)
        with self.store.engine.connect() as conn:
            ids = list(conn.scalars(select(FileRow.id).where(
                FileRow.workspace_id == tenant.id, FileRow.created_at < cutoff.astimezone(UTC))))
        deleted = 0
        for file_id in ids:
            if file_id in keep:
                continue
            self._delete(tenant, file_id)
            deleted += 1
        return deleted

