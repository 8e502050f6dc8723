"""Grouped search (``group_by=track_ref``) latency at gallery sizes beyond the shared split, in process.

The tenant's grouped-record cache is filled with synthetic released records (random unit features plus Gaussian noise
at ε = 32's σ, ``--records-per-track`` records per track, four cameras), SQL is skipped (the cache's sync is what the
service pays once per change, not per query), and ``GroupSearch.search`` is timed on clean queries, with the shipped
checkpoint's likelihood scorer and with cosine, with and without a camera filter. Scores are not meaningful (random
features); only the time is.

    python benchmarks/group_search_scale.py --records 10000 100000 400000 --json docs/group_search_scale.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import numpy as np

from app.services.groups import GroupFilters, GroupSearch
from models import DEFAULT_CHECKPOINT


def filled_search(records: int, per_track: int, dim: int, sigma: float, seed: int = 0) -> GroupSearch:
    """A GroupSearch whose tenant-1 ``track_ref`` cache holds ``records`` synthetic released records."""
    rng = np.random.default_rng(seed)
    search = GroupSearch()
    entry = search._entry(1, "track_ref")
    clean = np.abs(rng.standard_normal((records, dim))).astype(np.float32)
    clean /= np.linalg.norm(clean, axis=1, keepdims=True)
    entry.ids = np.arange(1, records + 1, dtype=np.int64)
    entry.keys = np.array([f"track-{i // per_track:07d}" for i in range(records)], dtype=object)
    entry.subjects = np.array([None] * records, dtype=object)
    entry.cameras = np.array([f"cam-{i % 4}" for i in range(records)], dtype=object)
    entry.times = np.arange(records, dtype=np.int64) * 1_000_000 + 1_700_000_000_000_000
    entry.sigmas = np.full(records, sigma)
    entry.scales = np.ones(records)
    entry.features = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    entry.sync = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no SQL here
    return search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000, 400_000])
    parser.add_argument("--records-per-track", type=int, default=4)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--sigma", type=float, default=0.290, help="noise σ per coordinate (0.290: ε = 32, δ = 1e-5, split-sign)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from models.checkpoint import load_encoder

    embedder = load_encoder(DEFAULT_CHECKPOINT, "cpu")
    scorer = embedder.track_scorer
    assert scorer is not None, "the default checkpoint carries a track scorer"
    dim = embedder.embedding_dim
    rng = np.random.default_rng(1)
    queries = np.abs(rng.standard_normal((args.queries, dim))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results: list[dict[str, Any]] = []
    for records in args.records:
        search = filled_search(records, args.records_per_track, dim, args.sigma)
        for scoring, camera in (("likelihood", None), ("cosine", None), ("likelihood", ["cam-1", "cam-2"])):
            filters = GroupFilters(camera_ids=camera)
            times = []
            for q in queries:
                started = time.perf_counter()
                hits, used = search.search(
                    nullcontext,  # type: ignore[arg-type]  # sync is stubbed: no SQL session is opened
                    1,
                    "track_ref",
                    q,
                    10,
                    filters,
                    scorer=scorer if scoring == "likelihood" else None,
                    split_sign=True,
                )
                times.append(time.perf_counter() - started)
                assert used == scoring and len(hits) == 10
            row = {
                "records": records,
                "tracks": -(-records // args.records_per_track),
                "scoring": scoring,
                "camera_filter": camera is not None,
                "median_ms": round(1000 * statistics.median(times), 1),
                "max_ms": round(1000 * max(times), 1),
            }
            results.append(row)
            print(row, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
