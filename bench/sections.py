"""`bench/RESULTS.md` is shared by the benchmarks: each writes its own section between
`<!-- <name>:start -->` and `<!-- <name>:end -->` and leaves the others as they are."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RESULTS_MD", "marked_sections", "write_section"]

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, text: str, path: Path = RESULTS_MD) -> None:
    """Put `text` in the section `name` (replaced in place, else appended)."""
    start, end = _markers(name)
    current = path.read_text() if path.exists() else ""
    block = f"{start}\n{text}{end}\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + ("\n\n" if current else "") + block
    path.write_text(current)


def marked_sections(names: tuple[str, ...], path: Path = RESULTS_MD) -> str:
    """The sections `names` as they stand now, markers included (for a benchmark that
    rewrites the rest of the file)."""
    text = path.read_text() if path.exists() else ""
    kept = []
    for name in names:
        start, end = _markers(name)
        if start in text and end in text:
            kept.append(text[text.index(start):text.index(end) + len(end)])
    return "".join("\n" + section + "\n" for section in kept)
