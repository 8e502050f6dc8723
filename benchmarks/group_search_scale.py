"""Grouped search (``group_by=track_ref``) latency at gallery sizes beyond the shared split, in process, on SQLite.

A fresh SQLite database gets one tenant with ``--records`` synthetic released records (random non-negative unit
features plus Gaussian noise at ε = 32's σ, ``--records-per-track`` records per track, four cameras), written as the
service writes them (items, change log head). ``GroupSearch.search`` — what ``POST /v1/search`` with
``group_by=track_ref`` runs in a worker thread — is then timed on clean queries with the shipped checkpoint's
likelihood scorer:

- ``cold``: the first search (reads every grouped record from SQL, groups and prepares the tracks);
- ``warm``: later searches with nothing changed (one read of the change-log head, then the cached tracks);
- ``after_enrolment``: a search after each of ``--write-rounds`` writes of 32 records (reads the log since the last
  search, loads the new rows, prepares the changed tracks only); the first and the median;
- ``camera_filter``: a record filter (grouped on every call from the cached records), and the most memory one such
  search allocates at once (``tracemalloc``, which sees numpy's buffers);
- ``cosine``: the same searches without the scorer (a noise-free tenant).

Scores are meaningless (random features); only time is measured. HTTP, the encoder and the JSON answer are not included.

    python benchmarks/group_search_scale.py --records 10000 100000 400000 --json docs/group_search_scale.json  # --k 100: the API maximum
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, insert, update
from sqlalchemy.orm import sessionmaker

from app.db.tables import Base, GalleryChange, GalleryHead, GalleryItem, Tenant
from app.services.groups import GroupFilters, GroupSearch
from models import DEFAULT_CHECKPOINT

START = datetime(2026, 11, 1, tzinfo=UTC)


def add_records(sessions: sessionmaker, first: int, count: int, per_track: int, dim: int, sigma: float, rng: np.random.Generator) -> None:
    """``count`` released records (ids from ``first``) and the change-log head moved past them, as an enrolment does."""
    clean = np.abs(rng.standard_normal((count, dim)))
    clean /= np.linalg.norm(clean, axis=1, keepdims=True)
    noisy = (clean + rng.normal(0, sigma, clean.shape)).astype("<f4")
    with sessions() as session:
        for start in range(0, count, 20_000):
            rows = [
                {
                    "tenant_id": 1,
                    "camera_id": f"cam-{(first + i) % 4}",
                    "captured_at": START + timedelta(seconds=first + i),
                    "track_ref": f"track-{(first + i) // per_track:07d}",
                    "feature": noisy[i].tobytes(),
                    "mechanism": "gaussian",
                    "epsilon": 32.0,
                    "delta": 1e-5,
                    "sensitivity": 2**0.5,
                    "sigma": sigma,
                    "clip_norm": 1.0,
                    "noise_library": "benchmark",
                }
                for i in range(start, min(count, start + 20_000))
            ]
            ids = session.scalars(insert(GalleryItem).returning(GalleryItem.id, sort_by_parameter_order=True), rows).all()
            now = datetime.now(UTC)
            seqs = session.scalars(
                insert(GalleryChange).returning(GalleryChange.seq), [{"tenant_id": 1, "item_id": i, "op": "add", "at": now} for i in ids]
            ).all()
            session.execute(update(GalleryHead).where(GalleryHead.tenant_id == 1).values(seq=max(seqs)))
        session.commit()


def timed(search: GroupSearch, sessions: sessionmaker, query: np.ndarray, filters: GroupFilters, scorer: Any, k: int) -> float:
    started = time.perf_counter()
    hits, scoring = search.search(sessions, 1, "track_ref", query, k, filters, scorer=scorer, split_sign=True)
    elapsed = time.perf_counter() - started
    assert len(hits) == k and scoring == ("likelihood" if scorer is not None else "cosine")
    return 1000 * elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000, 400_000])
    parser.add_argument("--records-per-track", type=int, default=4)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--write-rounds", type=int, default=10, help="rounds of (32 records written, one search)")
    parser.add_argument("--sigma", type=float, default=0.290, help="noise σ per coordinate (0.290: ε = 32, δ = 1e-5, split-sign)")
    parser.add_argument("--k", type=int, default=10, help="hits per search (the API's default is 10, its maximum 100)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from models.checkpoint import load_encoder

    embedder = load_encoder(DEFAULT_CHECKPOINT, "cpu")
    scorer = embedder.track_scorer
    assert scorer is not None, "the default checkpoint carries a track scorer"
    dim = embedder.embedding_dim
    rng = np.random.default_rng(0)
    queries = np.abs(rng.standard_normal((args.queries, dim))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results: list[dict[str, Any]] = []
    for records in args.records:
        with tempfile.TemporaryDirectory(prefix="reid-groups-") as tmp:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
            Base.metadata.create_all(engine)
            sessions = sessionmaker(engine)
            with sessions() as session:
                session.add(Tenant(id=1, name="bench"))
                session.add(GalleryHead(tenant_id=1, seq=0, pruned_seq=0))
                session.commit()
            started = time.perf_counter()
            add_records(sessions, 0, records, args.records_per_track, dim, args.sigma, rng)
            row: dict[str, Any] = {
                "records": records,
                "k": args.k,
                "tracks": -(-records // args.records_per_track),
                "fill_s": round(time.perf_counter() - started, 1),
            }
            for name, used in (("likelihood", scorer), ("cosine", None)):
                search = GroupSearch()
                cold = timed(search, sessions, queries[0], GroupFilters(), used, args.k)
                warm = [timed(search, sessions, q, GroupFilters(), used, args.k) for q in queries]
                after = []
                for round_ in range(args.write_rounds):  # a write, then a search: the search pays for the changed tracks
                    first = records + 32 * (round_ + (0 if used is not None else args.write_rounds))
                    add_records(sessions, first, 32, args.records_per_track, dim, args.sigma, rng)
                    after.append(timed(search, sessions, queries[round_ % len(queries)], GroupFilters(), used, args.k))
                expected = records + 32 * args.write_rounds * (1 if used is not None else 2)
                assert search._entry(1, "track_ref").live == expected  # the new records were read
                filtered = [timed(search, sessions, q, GroupFilters(camera_ids=["cam-1", "cam-2"]), used, args.k) for q in queries[:3]]
                tracemalloc.start()  # numpy reports its buffers: the most a filtered search holds at once, beyond the cache
                timed(search, sessions, queries[0], GroupFilters(camera_ids=["cam-1", "cam-2"]), used, args.k)
                filter_peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                row[name] = {
                    "cold_ms": round(cold, 1),
                    "warm_median_ms": round(statistics.median(warm), 1),
                    "warm_max_ms": round(max(warm), 1),
                    "after_enrolment_ms": round(after[0], 1),
                    "after_enrolment_median_ms": round(statistics.median(after), 1),
                    "camera_filter_median_ms": round(statistics.median(filtered), 1),
                    "camera_filter_peak_mb": round(filter_peak / 2**20, 1),
                }
            results.append(row)
            print(row, flush=True)
            engine.dispose()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "command": "python benchmarks/group_search_scale.py",
                    "results": results,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
