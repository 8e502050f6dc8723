"""``reid-gallery enroll DIR`` and ``reid-gallery search IMAGE``: the client on the command line (no torch)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("REID_URL", DEFAULT_URL), help="service base URL (env REID_URL)")
    parser.add_argument("--api-key", default=os.environ.get("REID_API_KEY"), help="integrator key rk_… (env REID_API_KEY)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--max-retries", type=int, default=5, help="retries of 429/503 answers (honouring Retry-After)")


def add_enroll_parser(sub: Any) -> None:
    p = sub.add_parser(
        "enroll",
        help="enroll a folder of crops (batched, concurrent, resumable)",
        description="Enroll every JPEG/PNG/WebP crop in DIR. Metadata per crop comes from a sidecar (CSV or JSON, rows keyed by "
        "'file'), else from Market-1501 style names PPPP_cCsS_FFFFFF_NN.jpg (camera c{C}, track {PPPP}_c{C}, external id = file "
        "name). captured_at comes from the sidecar, else it is the file's modification time in UTC. Acknowledged crops are "
        "recorded in a state file; a rerun skips them.",
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    add_connection_arguments(p)
    p.add_argument("--sidecar", type=Path, help="metadata CSV/JSON (default: DIR/metadata.csv or DIR/metadata.json when present)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per request (default 32)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--recursive", action="store_true", help="also enroll crops in sub-folders")
    p.add_argument("--state", type=Path, help="state file of acknowledged crops (default: under ~/.cache/reid-gallery/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_search_parser(sub: Any) -> None:
    p = sub.add_parser("search", help="search the gallery with a query crop (several: one person's query track); hits as a table or JSON")
    p.add_argument("image", type=Path, metavar="IMAGE", nargs="+", help="query crop(s); several crops of one person are averaged into one query")
    add_connection_arguments(p)
    p.add_argument("-k", type=int, default=10, help="hits (default 10)")
    p.add_argument("--group-by", choices=["track_ref", "subject_ref"], help="rank tracks or subjects instead of single crops")
    p.add_argument("--camera-ids", help="comma-separated camera ids")
    p.add_argument("--captured-from", help="RFC 3339 time with a timezone")
    p.add_argument("--captured-to", help="RFC 3339 time with a timezone")
    p.add_argument("--min-score", type=float)
    p.add_argument("--subject-ref")
    p.add_argument("--json", action="store_true", help="print the service's answer as JSON")


def _require_key(args: argparse.Namespace) -> str:
    if not args.api_key:
        sys.exit("reid-gallery: an integrator key is needed: --api-key rk_… or REID_API_KEY")
    return str(args.api_key)


def enroll_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from reid_client.bulk import SIDECAR_NAMES, EnrollState, MetadataError, default_state_path, enroll_directory, find_images, load_sidecar
    from reid_client.client import AsyncReidClient, RetryPolicy
    from reid_client.errors import ReidError

    key = _require_key(args)
    directory: Path = args.directory
    if not directory.is_dir():
        sys.exit(f"reid-gallery: {directory} is not a folder")
    sidecar_path = args.sidecar or next((directory / n for n in SIDECAR_NAMES if (directory / n).is_file()), None)
    state = EnrollState(args.state or default_state_path(args.url, key, directory))
    total = len(find_images(directory, recursive=args.recursive))

    async def run() -> Any:
        sidecar = load_sidecar(sidecar_path) if sidecar_path else None
        client = AsyncReidClient(args.url, api_key=key, timeout=args.timeout, retry=RetryPolicy(max_retries=args.max_retries))
        with tqdm(total=total, unit="crop", disable=args.no_progress, desc="enroll", dynamic_ncols=True) as bar:
            async with client:
                return await enroll_directory(
                    client,
                    directory,
                    state=state,
                    sidecar=sidecar,
                    batch_size=args.batch_size,
                    concurrency=args.concurrency,
                    recursive=args.recursive,
                    progress=bar.update,
                )

    try:
        report = asyncio.run(run())
    except (MetadataError, ReidError) as exc:
        print(f"reid-gallery: {exc} (acknowledged crops are kept in {state.path}; rerun to resume)", file=sys.stderr)
        return 1
    summary = {
        "total": report.total,
        "skipped_already_enrolled": report.skipped,
        "enrolled": report.enrolled,
        "failed": len(report.failed),
        "seconds": round(report.seconds, 2),
        "crops_per_second": round(report.rate, 1),
        "state_file": str(state.path),
        "failures": report.failed[:20],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"enrolled {report.enrolled} crops in {report.seconds:.1f} s ({report.rate:.1f} crops/s); "
            f"{report.skipped} already enrolled; {len(report.failed)} failed; state: {state.path}"
        )
        for failure in report.failed[:20]:
            print(f"  failed {failure['file']}: {failure['error']}: {failure['message']}")
    return 1 if report.failed else 0


def search_command(args: argparse.Namespace) -> int:
    from reid_client.client import ReidClient, RetryPolicy
    from reid_client.errors import ReidError
    from reid_client.models import GroupedSearchResult

    key = _require_key(args)
    filters: dict[str, Any] = {
        "camera_ids": [c for c in (args.camera_ids or "").split(",") if c] or None,
        "captured_from": args.captured_from,
        "captured_to": args.captured_to,
        "min_score": args.min_score,
        "subject_ref": args.subject_ref,
    }
    try:
        with ReidClient(args.url, api_key=key, timeout=args.timeout, retry=RetryPolicy(max_retries=args.max_retries)) as client:
            result = client.search(list(args.image), k=args.k, group_by=args.group_by, **filters)
    except (ReidError, OSError) as exc:
        print(f"reid-gallery: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    if isinstance(result, GroupedSearchResult):
        rows = [
            [
                str(i),
                f"{h.score:.4f}",
                h.key,
                str(h.count),
                ",".join(h.cameras),
                _time(h.first_seen),
                _time(h.last_seen),
            ]
            for i, h in enumerate(result.hits, 1)
        ]
        print(_table(["rank", "score", result.group_by, "crops", "cameras", "first_seen", "last_seen"], rows))
    else:
        rows = [
            [str(i), f"{h.score:.4f}", str(h.id), h.camera_id, _time(h.captured_at), h.track_ref or "-", h.subject_ref or "-", h.external_id or "-"]
            for i, h in enumerate(result.hits, 1)
        ]
        print(_table(["rank", "score", "id", "camera", "captured_at", "track_ref", "subject_ref", "external_id"], rows))
    return 0


def _time(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "no hits"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
