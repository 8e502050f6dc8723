"""Tables written into Markdown documents between a pair of marker comments."""

from __future__ import annotations

from pathlib import Path


def replace_between_markers(path: Path, start: str, end: str, block: str) -> None:
    """Replace what lies between ``start`` and ``end`` in ``path`` with ``block``; a missing file gets the block alone.

    An existing file without both markers is refused (``ValueError``) rather than overwritten by the block."""
    if not path.exists():
        path.write_text(block + "\n")
        return
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} / {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{block}\n{end}{tail}")
