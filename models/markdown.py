"""Tables written into Markdown documents between a pair of marker comments."""

from __future__ import annotations

from pathlib import Path


def replace_between_markers(path: Path, start: str, end: str, block: str) -> None:
    """Replace what lies between ``start`` and ``end`` in ``path`` with ``block`` (or write the block alone)."""
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        path.write_text(f"{head}{start}\n{block}\n{end}{tail}")
    else:
        path.write_text(block + "\n")
