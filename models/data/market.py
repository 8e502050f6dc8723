"""Reader for the Market-1501 folder layout (also used by the shared CUHK03 copy)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"([-\d]+)_c(\d)")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Sample:
    """One crop: where it lives, its identity label and its camera (0-based)."""

    path: Path
    pid: int
    camid: int


@dataclass(frozen=True)
class ReIDSplit:
    """Train (relabelled 0..N-1), query and gallery (original identities)."""

    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]

    @property
    def num_train_ids(self) -> int:
        return len({s.pid for s in self.train})


def parse_folder(folder: Path, *, relabel: bool = False) -> list[Sample]:
    """Parse every image in ``folder``; junk identity -1 is dropped, distractor 0 kept."""
    if not folder.is_dir():
        raise FileNotFoundError(f"not a Market-1501 folder: {folder}")
    raw: list[tuple[Path, int, int]] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        match = _NAME.search(path.name)
        if match is None:
            raise ValueError(f"file name does not follow PPPP_cC...: {path.name}")
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            continue
        raw.append((path, pid, cam - 1))
    if relabel:
        mapping = {pid: i for i, pid in enumerate(sorted({p for _, p, _ in raw}))}
        return [Sample(path, mapping[pid], cam) for path, pid, cam in raw]
    return [Sample(path, pid, cam) for path, pid, cam in raw]


def read_market_split(root: str | Path) -> ReIDSplit:
    """Read ``bounding_box_train``, ``query`` and ``bounding_box_test`` under ``root``."""
    root = Path(root)
    return ReIDSplit(
        root=root,
        train=parse_folder(root / "bounding_box_train", relabel=True),
        query=parse_folder(root / "query"),
        gallery=parse_folder(root / "bounding_box_test"),
    )
