"""Bulk enrollment of a folder of crops: metadata, batching, concurrency, resumable state (no torch)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reid_client.client import AsyncReidClient
from reid_client.errors import ReidError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# Market-1501 / CUHK03-detected names: PPPP_cCsS_FFFFFF_NN.jpg (person, camera, sequence, frame, box).
MARKET_NAME = re.compile(r"^(?P<person>-?\d+)_c(?P<camera>\d+)s(?P<sequence>\d+)_(?P<frame>\d+)_(?P<box>\d+)\.\w+$")
SIDECAR_NAMES = ("metadata.csv", "metadata.json")
FATAL_STATUSES = {0, 401, 403, 429, 503}  # unreachable, bad key, still limited after the client's retries
METADATA_FIELDS = ("camera_id", "captured_at", "subject_ref", "track_ref", "external_id", "attributes")


class MetadataError(ValueError):
    """A crop has no usable metadata (named in the message)."""


def find_images(directory: Path, *, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in directory.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_sidecar(path: Path) -> dict[str, dict[str, Any]]:
    """Rows keyed by ``file`` (a path relative to the folder, or a bare file name).

    CSV: a header row with ``file`` and any of camera_id, captured_at, subject_ref, track_ref, external_id, attributes
    (a JSON object in the cell). JSON: a list of such objects, or an object mapping file → metadata.
    """
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = [{"file": name, **meta} for name, meta in data.items()] if isinstance(data, dict) else list(data)
    else:
        with path.open(newline="") as handle:
            rows = [dict(row) for row in csv.DictReader(handle)]
    table: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(rows, 1):
        name = row.get("file")
        if not name:
            raise MetadataError(f"{path}: row {number} has no 'file'")
        meta = {k: v for k, v in row.items() if k in METADATA_FIELDS and v not in (None, "")}
        if isinstance(meta.get("attributes"), str):
            meta["attributes"] = json.loads(meta["attributes"])
        table[str(name)] = meta
    return table


def market_metadata(path: Path) -> dict[str, Any] | None:
    """camera c{C}, track {PPPP}_c{C} (a person's crops per camera), external id the file name; None if not such a name."""
    match = MARKET_NAME.match(path.name)
    if match is None:
        return None
    camera = f"c{int(match['camera'])}"
    return {"camera_id": camera, "track_ref": f"{match['person']}_{camera}", "external_id": path.name}


def file_time(path: Path) -> str:
    """The file's modification time in UTC (RFC 3339): the capture time when nothing better is known."""
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat().replace("+00:00", "Z")


def metadata_for(path: Path, root: Path, sidecar: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Sidecar row (by relative path, then name), else Market-1501 name; captured_at defaults to the file's mtime."""
    meta: dict[str, Any] | None = None
    if sidecar is not None:
        meta = sidecar.get(path.relative_to(root).as_posix()) or sidecar.get(path.name)
    if meta is None:
        meta = market_metadata(path)
    if meta is None or not meta.get("camera_id"):
        raise MetadataError(f"{path.name}: no camera_id (not in the sidecar and not a Market-1501 style name PPPP_cCsS_FFFFFF_NN.jpg)")
    meta = dict(meta)
    meta.setdefault("captured_at", file_time(path))
    meta.setdefault("external_id", path.name)
    return meta


def default_state_path(url: str, api_key: str, directory: Path) -> Path:
    """One state file per (service, tenant key prefix, folder), under the user's cache directory."""
    key_prefix = api_key.split("_")[1] if api_key.count("_") >= 2 else hashlib.sha256(api_key.encode()).hexdigest()[:12]
    digest = hashlib.sha256(f"{url.rstrip('/')}|{key_prefix}|{directory.resolve()}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "reid-gallery" / f"enroll-{digest}.jsonl"


class EnrollState:
    """Append-only record of acknowledged crops (relative path → gallery id); fsynced after every batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, int] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a crash: that batch was not recorded
                    continue
                self.done.update(zip(entry["files"], entry["ids"], strict=True))

    def record(self, files: Sequence[str], ids: Sequence[int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"files": list(files), "ids": list(ids)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done.update(zip(files, ids, strict=True))


@dataclass
class EnrollReport:
    total: int = 0
    skipped: int = 0  # acknowledged by an earlier run
    enrolled: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.enrolled / self.seconds if self.seconds > 0 else 0.0


def _batches(items: Sequence[tuple[str, Path, dict[str, Any]]], size: int) -> Iterable[Sequence[tuple[str, Path, dict[str, Any]]]]:
    """Batches of at most ``size`` that keep each track's crops together where the track fits in one: the service
    releases the crops of one track sent in one request as one noisy mean (pooled, n times less noise for the track).
    Tracks are taken in the order they first appear; crops without a ``track_ref`` fill batches in order."""
    groups: dict[str, list[tuple[str, Path, dict[str, Any]]]] = {}
    for index, item in enumerate(items):
        track = item[2].get("track_ref")
        groups.setdefault(f"t:{track}" if track else f"i:{index}", []).append(item)
    batch: list[tuple[str, Path, dict[str, Any]]] = []
    for group in groups.values():
        for start in range(0, len(group), size):
            part = group[start : start + size]
            if len(batch) + len(part) > size:
                yield batch
                batch = []
            batch.extend(part)
    if batch:
        yield batch


async def enroll_directory(
    client: AsyncReidClient,
    directory: Path,
    *,
    state: EnrollState,
    sidecar: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    recursive: bool = False,
    progress: Callable[[int], None] | None = None,
) -> EnrollReport:
    """Enroll every crop of ``directory`` not yet in ``state``; batches of ``batch_size``, ``concurrency`` at a time, a
    track's crops kept in one batch where they fit (``_batches``).

    A batch the service refuses because of particular crops (their indexes in the error details) is sent again
    without them; those crops are reported as failed. Other refusals fail the batch's crops and the run goes on.
    """
    started = time.perf_counter()
    report = EnrollReport()
    images = find_images(directory, recursive=recursive)
    report.total = len(images)
    pending = []
    for path in images:
        rel = path.relative_to(directory).as_posix()
        if rel in state.done:
            report.skipped += 1
            continue
        pending.append((rel, path, metadata_for(path, directory, sidecar)))
    if progress is not None and report.skipped:
        progress(report.skipped)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def send(batch: Sequence[tuple[str, Path, dict[str, Any]]]) -> None:
        async with gate:
            batch = list(batch)
            while batch:
                try:
                    payload = await asyncio.to_thread(lambda b=batch: [(p.name, p.read_bytes()) for _, p, _ in b])  # type: ignore[misc]
                    result = await client.enroll(payload, [meta for _, _, meta in batch])
                except ReidError as exc:
                    if exc.status in FATAL_STATUSES:  # no later batch can do better: stop; a rerun resumes
                        raise
                    bad = (
                        {d["item"] for d in exc.details if isinstance(d, dict) and isinstance(d.get("item"), int) and 0 <= d["item"] < len(batch)}
                        if isinstance(exc.details, list)
                        else set()
                    )
                    if bad and len(bad) < len(batch):
                        for i in sorted(bad):
                            report.failed.append({"file": batch[i][0], "error": exc.error_code, "message": exc.message})
                        if progress is not None:
                            progress(len(bad))
                        batch = [entry for i, entry in enumerate(batch) if i not in bad]
                        continue
                    report.failed.extend({"file": rel, "error": exc.error_code, "message": exc.message} for rel, _, _ in batch)
                    if progress is not None:
                        progress(len(batch))
                    return
                state.record([rel for rel, _, _ in batch], result.ids)
                report.enrolled += len(batch)
                if progress is not None:
                    progress(len(batch))
                return

    await asyncio.gather(*(send(batch) for batch in _batches(pending, max(1, batch_size))))
    report.seconds = time.perf_counter() - started
    return report
