"""The child process that reads a PDF's text: `python -m domicile.workspace._pdf_worker`.

A PDF is a program of sorts: a few kilobytes can make pypdf inflate gigabytes or spin for
minutes (one 16 KB file of 60 pages sharing one 2 MB stream took seconds a page). So its text
is read here, in a short-lived process of its own with hard operating-system limits, never in
the server: the server only waits on the pipes (see `files.extract_text`).

Protocol: the PDF's bytes on stdin; the arguments are the limits (pages, characters, CPU
seconds, address-space bytes). On success the text, UTF-8, on stdout and exit 0; otherwise an
exit code saying why (`EXIT_*`), and nothing else: stderr is discarded by the parent, and
warnings and log records are silenced here anyway, because pypdf's quote the file's content.
Nothing is written to disk: no files (RLIMIT_FSIZE 0), no core dump, no bytecode.

Only the standard library is imported before the limits are in place.
"""

from __future__ import annotations

import resource
import signal
import sys

__all__ = ["EXIT_ENCRYPTED", "EXIT_LIMIT", "EXIT_UNREADABLE", "main"]

EXIT_UNREADABLE = 2  # not a PDF pypdf can parse
EXIT_ENCRYPTED = 3  # needs a password
EXIT_LIMIT = 4  # more pages or text than allowed, or out of memory


def _apply_limits(cpu_seconds: int, address_space: int) -> None:
    # SIGXCPU (default action: terminate) at the soft CPU limit, SIGKILL at the hard one.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    # No core dump (it would hold the PDF) and no file written at all.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    sys.dont_write_bytecode = True


def _quiet() -> None:
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")


def _extract(data: bytes, max_pages: int, max_chars: int) -> int:
    import io

    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            return EXIT_ENCRYPTED
        if len(reader.pages) > max_pages:
            return EXIT_LIMIT
        texts: list[str] = []
        total = 0
        for page in reader.pages:
            text = (page.extract_text() or "").strip()
            total += len(text)
            if total > max_chars:  # stop at once: the rest is not worth reading
                return EXIT_LIMIT
            if text:
                texts.append(text)
    except MemoryError:
        return EXIT_LIMIT
    except Exception:  # a malformed PDF raises anything
        return EXIT_UNREADABLE
    sys.stdout.buffer.write("\n\n".join(texts).encode("utf-8", "replace"))
    sys.stdout.buffer.flush()
    return 0


def main(argv: list[str]) -> int:
    max_pages, max_chars, cpu_seconds, address_space = (int(arg) for arg in argv)
    _apply_limits(cpu_seconds, address_space)
    _quiet()
    return _extract(sys.stdin.buffer.read(), max_pages, max_chars)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
