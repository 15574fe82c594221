"""A member's files: types decided by content (real images made with Pillow, real PDFs),
limits, sealed storage, isolation between members and workspaces, deletion and retention."""

from __future__ import annotations

import io
import logging
import secrets
import subprocess
import sys
import threading
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfWriter
from sqlalchemy import func, select, update

from domicile.config import WorkspaceSettings
from domicile.errors import (
    BodyTooLarge,
    InvalidInput,
    NotFound,
    ServerBusy,
    StorageError,
    UnsupportedFile,
)
from domicile.site import Site
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.workspace import files as files_module
from domicile.workspace.files import (
    FILE_BLOB_KIND,
    FILE_TEXT_BLOB_KIND,
    FileStore,
    extract_text,
    sanitize_name,
    sniff,
)
from domicile.workspace.models import FileRow
from tests.conftest import scan_for_canary
from tests.storage.test_regional import rows_holding
from tests.workspace.conftest import MemberFactory

IMAGE_FORMATS = [("PNG", "image/png", "png"), ("JPEG", "image/jpeg", "jpg"),
                 ("WEBP", "image/webp", "webp"), ("GIF", "image/gif", "gif")]


def image_bytes(pillow_format: str = "PNG", size: tuple[int, int] = (16, 12),
                noise: bool = False) -> bytes:
    """A real image; with `noise`, random pixels, so it does not compress to nothing."""
    if noise:
        image = Image.frombytes("RGB", size, secrets.token_bytes(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (200, 30, 30))
    out = io.BytesIO()
    image.save(out, pillow_format)
    return out.getvalue()


def pdf_bytes(*lines: str) -> bytes:
    """A real one-page PDF whose page shows `lines` (ASCII) in Helvetica, written by hand."""
    text_ops = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    return pdf_document(f"BT /F1 12 Tf 72 720 Td {text_ops} ET".encode())


def pdf_document(stream: bytes, *, pages: int = 1, deflate: bool = False,
                 page_extra: bytes = b"") -> bytes:
    """A PDF of `pages` pages that all show the one content `stream` (compressed with
    `deflate`: a few kilobytes can then inflate to megabytes on every page, a PDF bomb);
    `page_extra` goes into each page's dictionary as it is."""
    body = zlib.compress(stream, 9) if deflate else stream
    flate = b" /Filter /FlateDecode" if deflate else b""
    kids = b" ".join(b"%d 0 R" % (5 + page) for page in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(body), flate, body),
    ] + [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
         b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R %s>>" % page_extra] * pages
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def encrypted_pdf_bytes() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt(user_password="open sesame", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def files(eu_store: RegionalStore) -> FileStore:
    return FileStore(eu_store, WorkspaceSettings())


@pytest.fixture
def small_files(eu_store: RegionalStore) -> FileStore:
    """Limits small enough to pass with real files: images 2 KiB, documents 8 KiB."""
    return FileStore(eu_store, WorkspaceSettings(max_image_bytes=2048, max_file_bytes=8192))


def stored_rows(store: RegionalStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(FileRow)) or 0)


def assert_nothing_stored(store: RegionalStore, member: MemberGrant) -> None:
    assert stored_rows(store) == 0
    for kind in (FILE_BLOB_KIND, FILE_TEXT_BLOB_KIND):
        assert store.list_blobs(member.tenant, kind) == []
    assert list(store.blobs.keys()) == []  # no stray bytes


# -- what a file is --------------------------------------------------------------------------


@pytest.mark.parametrize(("pillow_format", "media_type", "extension"), IMAGE_FORMATS)
def test_an_image_is_stored_as_its_type_and_read_back(
        files: FileStore, member: MemberGrant, pillow_format: str, media_type: str,
        extension: str) -> None:
    data = image_bytes(pillow_format)
    added = files.add(member, f"photo.{extension}", data)
    assert (added.media_type, added.is_image, added.has_text) == (media_type, True, False)
    assert files.read(member, added.id) == data
    assert files.text(member.tenant, added.id) is None
    shown = added.to_json()
    assert shown == {"id": added.id, "object": "workspace.file", "name": f"photo.{extension}",
                     "media_type": media_type, "size": len(data), "origin": "upload",
                     "created_at": int(added.created_at.timestamp())}
    assert files.get(member, added.id) == added


@pytest.mark.parametrize("pillow_format", [fmt for fmt, _, _ in IMAGE_FORMATS])
def test_an_image_is_recognised_whatever_its_name(pillow_format: str) -> None:
    expected = {fmt: media_type for fmt, media_type, _ in IMAGE_FORMATS}[pillow_format]
    assert sniff(image_bytes(pillow_format), "upload") == expected


def test_text_and_markdown_are_told_apart_by_name_and_their_text_kept(
        files: FileStore, member: MemberGrant) -> None:
    notes = files.add(member, "notes.md", b"# Plan\n\nShip the **docs** on Friday.")
    plain = files.add(member, "readme", "Grüße aus Köln".encode())
    assert (notes.media_type, plain.media_type) == ("text/markdown", "text/plain")
    assert notes.has_text and not notes.is_image
    assert files.text(member.tenant, notes.id) == "# Plan\n\nShip the **docs** on Friday."
    assert files.text(member.tenant, plain.id) == "Grüße aus Köln"


def test_a_pdfs_text_is_extracted(files: FileStore, member: MemberGrant) -> None:
    data = pdf_bytes("Quarterly report", "Revenue grew by 12 percent")
    added = files.add(member, "report.pdf", data)
    assert added.media_type == "application/pdf" and added.has_text
    text = files.text(member.tenant, added.id)
    assert text is not None
    assert "Quarterly report" in text and "Revenue grew by 12 percent" in text
    assert files.read(member, added.id) == data


def test_a_pdf_without_text_is_stored_without_text(files: FileStore,
                                                   member: MemberGrant) -> None:
    writer = PdfWriter()
    writer.add_blank_page(100, 100)
    out = io.BytesIO()
    writer.write(out)
    added = files.add(member, "scan.pdf", out.getvalue())
    assert (added.media_type, added.has_text) == ("application/pdf", False)
    assert files.text(member.tenant, added.id) is None


@pytest.mark.parametrize(("name", "data", "claimed", "actual"), [
    ("holiday.pdf", image_bytes("PNG"), "PDF", "PNG"),
    ("photo.png", image_bytes("JPEG"), "PNG", "JPEG"),
    ("paper.txt", pdf_bytes("hello"), "text", "PDF"),
    ("cat.gif", b"just some words", "GIF", "text"),
    ("notes.md", image_bytes("WEBP"), "Markdown", "WebP"),
])
def test_a_name_claiming_another_type_is_refused(files: FileStore, member: MemberGrant,
                                                 eu_store: RegionalStore, name: str,
                                                 data: bytes, claimed: str,
                                                 actual: str) -> None:
    with pytest.raises(UnsupportedFile) as refused:
        files.add(member, name, data)
    assert refused.value.status == 400 and refused.value.code == "unsupported_file"
    assert f"says {claimed} " in refused.value.message
    assert f"content is {actual}." in refused.value.message
    assert_nothing_stored(eu_store, member)


@pytest.mark.parametrize("data", [
    b"caf\xe9 au lait",  # Latin-1, not UTF-8
    b"\xff\xfeh\x00i\x00",  # UTF-16
    b"text with a \x00 NUL",
    b"PK\x03\x04\x14\x00\x00\x00",  # a zip (a .docx)
], ids=["latin-1", "utf-16", "nul", "zip"])
def test_what_is_neither_utf8_text_nor_a_known_type_is_refused(
        files: FileStore, member: MemberGrant, eu_store: RegionalStore, data: bytes) -> None:
    with pytest.raises(UnsupportedFile) as refused:
        files.add(member, "upload.bin", data)
    assert "not a supported type" in refused.value.message
    assert_nothing_stored(eu_store, member)


@pytest.mark.parametrize("pillow_format", ["PNG", "GIF", "WEBP", "JPEG"])
def test_a_broken_image_is_refused(files: FileStore, member: MemberGrant,
                                   eu_store: RegionalStore, pillow_format: str) -> None:
    whole = image_bytes(pillow_format, size=(64, 64), noise=True)
    magic = whole[:16]
    with pytest.raises(UnsupportedFile) as refused:
        files.add(member, "broken", magic + b"\x00" * 32)
    assert "is not a valid" in refused.value.message
    assert_nothing_stored(eu_store, member)


@pytest.mark.parametrize(("data", "message"), [
    (b"%PDF-1.7\nthis is no PDF at all", "could not be read"),
    (encrypted_pdf_bytes(), "encrypted"),
], ids=["broken", "encrypted"])
def test_an_unreadable_pdf_is_refused(files: FileStore, member: MemberGrant,
                                      eu_store: RegionalStore, data: bytes,
                                      message: str) -> None:
    with pytest.raises(UnsupportedFile) as refused:
        files.add(member, "secret.pdf", data)
    assert refused.value.status == 400 and message in refused.value.message
    assert_nothing_stored(eu_store, member)


# -- hostile PDFs: read in a child process under limits ---------------------------------------

# One line of text, repeated: about 60 characters of text for every 90 bytes inflated.
BOMB_LINE = b"BT /F1 12 Tf 72 712 Td (" + b"A" * 60 + b") Tj ET\n"


def pdf_bomb(pages: int, inflated_bytes: int) -> bytes:
    """Pages sharing one deflated stream of `inflated_bytes`: a few KB that pypdf must
    inflate and interpret on every page (the review's bomb: 16 KB, 60 pages of 2 MB)."""
    return pdf_document(BOMB_LINE * (inflated_bytes // len(BOMB_LINE)), pages=pages,
                        deflate=True)


def refused_within_limits(files: FileStore, member: MemberGrant, data: bytes) -> str:
    with pytest.raises(UnsupportedFile) as refused:
        files.add(member, "upload.pdf", data)
    assert refused.value.status == 400 and refused.value.code == "unsupported_file"
    assert "could not be read within the limits" in refused.value.message
    return refused.value.message


@pytest.mark.parametrize(("limit", "value", "data"), [
    ("PDF_MAX_CHARS", 100_000, pdf_bomb(pages=60, inflated_bytes=300_000)),
    ("PDF_MAX_PAGES", 3, pdf_document(b"BT /F1 12 Tf 72 712 Td (page) Tj ET", pages=4)),
], ids=["characters", "pages"])
def test_a_pdf_past_the_text_or_page_limit_is_refused_and_nothing_stored(
        files: FileStore, member: MemberGrant, eu_store: RegionalStore,
        monkeypatch: pytest.MonkeyPatch, limit: str, value: int, data: bytes) -> None:
    assert len(data) < 20_000  # small on the wire
    monkeypatch.setattr(files_module, limit, value)
    message = refused_within_limits(files, member, data)
    assert f"{value:,}" in message  # the limit it broke is named
    assert_nothing_stored(eu_store, member)


def test_the_pdf_reader_process_has_a_cpu_limit(files: FileStore, member: MemberGrant,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Every other limit out of reach: 20 pages of 2 MB take pypdf about 40 s of CPU, and only
    # the child's own RLIMIT_CPU (1 s here) ends it.
    for limit, value in (("PDF_MAX_CHARS", 10**9), ("PDF_TIMEOUT_SECONDS", 300),
                         ("PDF_CPU_SECONDS", 1)):
        monkeypatch.setattr(files_module, limit, value)
    refused_within_limits(files, member, pdf_bomb(pages=20, inflated_bytes=2_000_000))


def run_instead(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """The PDF reader's command replaced by a Python script (what a PDF could make of it)."""
    monkeypatch.setattr(files_module, "_pdf_worker_command",
                        lambda: [sys.executable, "-c", script])


def test_a_pdf_reader_out_of_time_is_stopped(files: FileStore, member: MemberGrant,
                                              eu_store: RegionalStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_instead(monkeypatch, "import time; time.sleep(60); print('late text')")
    monkeypatch.setattr(files_module, "PDF_TIMEOUT_SECONDS", 1)
    refused_within_limits(files, member, pdf_bytes("hello"))
    assert_nothing_stored(eu_store, member)


def test_what_the_pdf_reader_says_on_stderr_is_never_heard(
        files: FileStore, member: MemberGrant, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    canary = f"CANARY{secrets.token_hex(10)}"
    caplog.set_level(logging.DEBUG)
    run_instead(monkeypatch, f"import sys; sys.stderr.write('{canary}' * 1000); sys.exit(1)")
    message = refused_within_limits(files, member, pdf_bytes("hello"))
    out, err = capfd.readouterr()
    assert canary not in message + out + err + caplog.text


def test_a_pdfs_content_never_reaches_the_log(
        files: FileStore, member: MemberGrant, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    canary = f"CANARY{secrets.token_hex(10)}"
    caplog.set_level(logging.DEBUG)
    # pypdf warns "Multiple definitions in dictionary ... for key /<canary>" for this.
    data = pdf_document(f"BT /F1 12 Tf 72 712 Td (text {canary}) Tj ET".encode(),
                        page_extra=f"/{canary} 1 /{canary} 2 ".encode())
    added = files.add(member, "canary.pdf", data)
    assert canary in (files.text(member.tenant, added.id) or "")  # it was read
    out, err = capfd.readouterr()
    assert canary not in caplog.text + out + err


# A server process: its log on stderr, then any use of pypdf or Pillow in it (pytest's own
# log capture would hear even a silenced logger, so this runs in a process of its own).
SERVER_USING_THE_PARSERS = """
import io, logging, sys, warnings
logging.basicConfig(level=logging.DEBUG)
import domicile.workspace.files
from pypdf import PdfReader
canary = sys.argv[1]
PdfReader(io.BytesIO(sys.stdin.buffer.read())).pages[0].extract_text()
logging.getLogger("PIL.PngImagePlugin").warning("bad chunk %s", canary)
for module in ("PIL.Image", "pypdf._reader"):
    warnings.warn_explicit(f"bad {canary}", UserWarning, "x.py", 1, module=module)
logging.getLogger("domicile.workspace").warning("still heard")
"""


def test_pypdf_and_pillow_are_silent_in_the_server_process() -> None:
    canary = f"CANARY{secrets.token_hex(10)}"
    # pypdf warns "Multiple definitions in dictionary ... for key /<canary>" for this.
    data = pdf_document(b"BT /F1 12 Tf 72 712 Td (text) Tj ET",
                        page_extra=f"/{canary} 1 /{canary} 2 ".encode())
    server = subprocess.run([sys.executable, "-c", SERVER_USING_THE_PARSERS, canary],
                            input=data, capture_output=True, timeout=60, check=True)
    log_text = (server.stdout + server.stderr).decode()
    assert "still heard" in log_text and canary not in log_text


def test_at_most_two_pdfs_are_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def reader(command: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        entered.release()
        release.wait(timeout=30)  # bounded: a broken limit fails the test, never hangs it
        return subprocess.CompletedProcess(command, 0, stdout=b"the text")

    monkeypatch.setattr(files_module.subprocess, "run", reader)
    monkeypatch.setattr(files_module, "PDF_QUEUE_SECONDS", 0)
    results: list[str | None] = []
    readers = [threading.Thread(target=lambda: results.append(
        extract_text("application/pdf", pdf_bytes("x")))) for _ in range(2)]
    for thread in readers:
        thread.start()
    for _ in readers:
        assert entered.acquire(timeout=30)
    try:
        with pytest.raises(ServerBusy) as busy:  # a third waits its turn, here not at all
            extract_text("application/pdf", pdf_bytes("x"))
        assert busy.value.status == 503
    finally:
        release.set()
        for thread in readers:
            thread.join()
    assert results == ["the text", "the text"]
    assert extract_text("application/pdf", pdf_bytes("x")) == "the text"  # turns given back


def test_extract_text_gives_nothing_for_an_image() -> None:
    assert extract_text("image/png", image_bytes()) is None
    assert extract_text("text/plain", "\ufeffwith a BOM".encode()) == "with a BOM"


# -- limits ----------------------------------------------------------------------------------


def test_each_kind_has_its_own_size_limit(small_files: FileStore, member: MemberGrant,
                                          eu_store: RegionalStore) -> None:
    big_image = image_bytes("PNG", size=(40, 40), noise=True)
    assert 2048 < len(big_image) < 8192
    with pytest.raises(BodyTooLarge) as refused:
        small_files.add(member, "big.png", big_image)
    assert refused.value.status == 413 and "2,048 bytes" in refused.value.message
    with pytest.raises(BodyTooLarge) as refused:
        small_files.add(member, "big.txt", b"a" * 8193)
    assert "8,192 bytes" in refused.value.message
    assert_nothing_stored(eu_store, member)
    # A document as large as the image is within its own (larger) limit.
    assert small_files.add(member, "fine.txt", b"b" * len(big_image)).size == len(big_image)


def test_an_empty_file_is_refused(files: FileStore, member: MemberGrant) -> None:
    with pytest.raises(InvalidInput) as refused:
        files.add(member, "empty.txt", b"")
    assert refused.value.status == 400 and refused.value.param == "file"


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "kept"), [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\notes.txt", "notes.txt"),
    ("in\x00voice\x1b[31m.txt", "invoice[31m.txt"),
    ("evil\u202etxt.exe", "eviltxt.exe"),
    ("  spaced.md  ", "spaced.md"),
    ("..", "untitled"),
    ("dir/", "untitled"),
])
def test_names_are_sanitised(given: str, kept: str) -> None:
    assert sanitize_name(given) == kept


def test_a_long_name_is_cut_to_255_characters_keeping_its_extension(
        files: FileStore, member: MemberGrant) -> None:
    added = files.add(member, "x" * 400 + ".md", b"# long")
    assert len(added.name) == 255 and added.name.endswith("x.md")
    assert added.media_type == "text/markdown"
    assert files.get(member, added.id).name == added.name


def test_the_sanitised_name_decides_markdown(files: FileStore, member: MemberGrant) -> None:
    added = files.add(member, "folder/sub/readme.markdown\x07", b"# hello")
    assert (added.name, added.media_type) == ("readme.markdown", "text/markdown")


# -- failures leave nothing ------------------------------------------------------------------


def test_a_failure_while_storing_leaves_nothing(files: FileStore, member: MemberGrant,
                                                eu_store: RegionalStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    original = eu_store.put_blob
    kinds: list[str] = []

    def failing_on_text(tenant, kind, *args, **kwargs):  # type: ignore[no-untyped-def]
        kinds.append(kind)
        if kind == FILE_TEXT_BLOB_KIND:
            raise StorageError("the disk went away")
        return original(tenant, kind, *args, **kwargs)

    monkeypatch.setattr(eu_store, "put_blob", failing_on_text)
    with pytest.raises(StorageError):
        files.add(member, "notes.txt", b"some words")
    assert kinds == [FILE_BLOB_KIND, FILE_TEXT_BLOB_KIND]  # the original was stored first
    monkeypatch.undo()
    assert_nothing_stored(eu_store, member)
    assert files.list(member) == []


# -- sealed ----------------------------------------------------------------------------------


def test_names_bytes_and_text_are_sealed(site: Site, files: FileStore, member: MemberGrant,
                                         eu_store: RegionalStore) -> None:
    canary = f"CANARY{secrets.token_hex(10)}"
    text_file = files.add(member, f"{canary}.txt", f"the code is {canary}".encode())
    pdf = files.add(member, f"{canary}.pdf", pdf_bytes(f"pdf says {canary}"))
    assert text_file.name == f"{canary}.txt"
    assert canary in (files.text(member.tenant, pdf.id) or "")
    assert scan_for_canary([Path(site.settings.data_dir)], canary) == []
    assert rows_holding(site, canary) == []
    with eu_store.engine.connect() as conn:
        meta = conn.scalar(select(FileRow.meta).where(FileRow.id == text_file.id))
    assert meta and canary.encode() not in meta


# -- who sees what ---------------------------------------------------------------------------


def test_only_the_owner_sees_a_file(files: FileStore, make_member: MemberFactory) -> None:
    owner = make_member()
    colleague = make_member(workspace_id=owner.workspace_id, role="admin")
    stranger = make_member()
    added = files.add(owner, "mine.txt", b"private words")
    for other in (colleague, stranger):
        for attempt in (files.get, files.read, files.content, files.delete):
            with pytest.raises(NotFound) as hidden:
                attempt(other, added.id)
            assert hidden.value.status == 404 and added.id not in hidden.value.message
        assert files.list(other) == []
    with pytest.raises(NotFound):
        files.text(stranger.tenant, added.id)  # another workspace never reaches it
    # The workspace itself does (GPT knowledge, chat), whoever owns the file.
    assert files.text(colleague.tenant, added.id) == "private words"
    assert files.lookup(colleague.tenant, added.id).user_id == owner.user_id
    assert files.read(owner, added.id) == b"private words"


def test_unknown_ids_are_not_found(files: FileStore, member: MemberGrant) -> None:
    with pytest.raises(NotFound):
        files.get(member, "file_0000000000000000")
    with pytest.raises(NotFound):
        files.text(member.tenant, "file_0000000000000000")


def test_content_streams_the_bytes(files: FileStore, member: MemberGrant) -> None:
    data = image_bytes("PNG", size=(300, 300), noise=True)
    added = files.add(member, "big.png", data)
    found, chunks = files.content(member, added.id)
    assert found == added
    assert b"".join(chunks) == data


# -- listing ---------------------------------------------------------------------------------


def test_list_is_newest_first_in_pages(files: FileStore, member: MemberGrant,
                                       eu_store: RegionalStore) -> None:
    added = [files.add(member, f"f{i}.txt", f"file {i}".encode()) for i in range(5)]
    # Distinct times, oldest first, so the order does not rest on the clock's resolution.
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with eu_store.engine.begin() as conn:
        for i, file in enumerate(added):
            conn.execute(update(FileRow).where(FileRow.id == file.id)
                         .values(created_at=start + timedelta(minutes=i)))
    newest_first = [f"f{i}.txt" for i in reversed(range(5))]
    assert [f.name for f in files.list(member)] == newest_first
    first_page = files.list(member, limit=2)
    second_page = files.list(member, limit=2, after=first_page[-1].id)
    last_page = files.list(member, limit=2, after=second_page[-1].id)
    assert [f.name for f in first_page + second_page + last_page] == newest_first
    assert files.list(member, after=last_page[-1].id) == []


def test_list_refuses_a_bad_limit_or_cursor(files: FileStore, make_member: MemberFactory) -> None:
    member = make_member()
    someone_else = make_member()
    theirs = files.add(someone_else, "theirs.txt", b"x")
    with pytest.raises(InvalidInput) as refused:
        files.list(member, limit=0)
    assert refused.value.param == "limit"
    with pytest.raises(InvalidInput) as refused:
        files.list(member, after=theirs.id)
    assert refused.value.param == "after"


# -- deleting --------------------------------------------------------------------------------


def test_delete_removes_the_row_and_both_blobs(files: FileStore, member: MemberGrant,
                                               eu_store: RegionalStore) -> None:
    kept = files.add(member, "kept.txt", b"stays")
    gone = files.add(member, "gone.txt", b"goes away")
    files.delete(member, gone.id)
    with pytest.raises(NotFound):
        files.get(member, gone.id)
    assert [f.id for f in files.list(member)] == [kept.id]
    for kind in (FILE_BLOB_KIND, FILE_TEXT_BLOB_KIND):
        assert [b.id for b in eu_store.list_blobs(member.tenant, kind)] == [kept.id]
    with pytest.raises(NotFound):
        files.delete(member, gone.id)


def test_retention_deletes_old_files_except_knowledge(files: FileStore,
                                                      make_member: MemberFactory,
                                                      eu_store: RegionalStore) -> None:
    member = make_member()
    colleague = make_member(workspace_id=member.workspace_id)
    other_workspace = make_member()
    old = files.add(member, "old.txt", b"old")
    knowledge = files.add(colleague, "manual.txt", b"the manual")
    new = files.add(member, "new.png", image_bytes())
    elsewhere = files.add(other_workspace, "elsewhere.txt", b"far away")
    long_ago = datetime.now(UTC) - timedelta(days=40)
    with eu_store.engine.begin() as conn:
        conn.execute(update(FileRow).where(FileRow.id.in_([old.id, knowledge.id, elsewhere.id]))
                     .values(created_at=long_ago))
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert files.delete_older_than(member.tenant, cutoff, keep={knowledge.id}) == 1
    with pytest.raises(NotFound):
        files.get(member, old.id)
    assert eu_store.get_blob(member.tenant, FILE_BLOB_KIND, old.id) is None
    assert files.get(colleague, knowledge.id).name == "manual.txt"
    assert files.get(member, new.id).name == "new.png"
    assert files.get(other_workspace, elsewhere.id).name == "elsewhere.txt"


def test_generated_files_say_so(files: FileStore, member: MemberGrant) -> None:
    added = files.add(member, "image.png", image_bytes(), origin="generated")
    assert added.origin == "generated" and added.to_json()["origin"] == "generated"
    with pytest.raises(InvalidInput):
        files.add(member, "x.txt", b"x", origin="stolen")  # type: ignore[arg-type]
