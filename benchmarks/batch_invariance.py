"""Does a crop's feature (and so its search score) depend on which other crops share its encoder pass?

The service micro-batches concurrent requests, so one query crop may be encoded alone on one replica and beside seven
other requests' crops on another. This script encodes the same query crops alone and inside batches of other crops,
for every installed backend, and reports how far the features and the grouped-search scores move:

    python benchmarks/batch_invariance.py --json runs/batch_invariance.json

Scores are the default checkpoint's track scorer (likelihood ratio) against tracks of the query crops' own noisy
records at ε = 32 (seeded), i.e. what ``group_by=track_ref`` returns; the cosine of per-record search is reported too.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03-detected"


def crops(folder: Path, count: int) -> torch.Tensor:
    files = sorted(folder.glob("*.jpg"))[:count]
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


def main() -> None:
    from models import DEFAULT_CHECKPOINT
    from models.checkpoint import load_encoder
    from models.inference.select import BACKENDS, select_backend
    from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / DEFAULT_CHECKPOINT))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    queries = crops(Path(args.data) / "query", args.queries)
    others = crops(Path(args.data) / "bounding_box_test", max(args.batch_sizes))
    reference = load_encoder(args.checkpoint)
    gallery = reference.embed(queries, 1)
    policy = PrivacyPolicy(epsilon=32.0, delta=1e-5, domain=reference.feature_domain)
    released, noise = GaussianMechanism(seed=0).release(torch.from_numpy(gallery), policy)
    scorer, sigma = reference.track_scorer, noise.sigma
    result: dict[str, object] = {"checkpoint": Path(args.checkpoint).name, "queries": args.queries, "backends": {}}
    for backend in BACKENDS:
        try:
            embedder = select_backend(reference, backend)
        except Exception as error:  # a backend that is not installed is skipped, and said so
            result["backends"][backend] = {"error": str(error)[:200]}  # type: ignore[index]
            continue
        alone = np.concatenate([embedder.embed(queries[i : i + 1], 1) for i in range(args.queries)])
        rows = {}
        for size in args.batch_sizes:
            batched = np.concatenate([embedder.embed(torch.cat([queries[i : i + 1], others[: size - 1]]), size)[:1] for i in range(args.queries)])
            row: dict[str, float] = {
                "crops_differing": int((batched != alone).any(axis=1).sum()),
                "feature_max_abs_diff": float(np.abs(batched - alone).max()),
                "cosine_score_max_abs_diff": float(np.abs(batched @ gallery.T - alone @ gallery.T).max()),
            }
            if scorer is not None:
                tracks, variance = released.numpy().astype(np.float64), np.full(args.queries, sigma**2)
                moved = scorer.scores(batched, tracks, variance) - scorer.scores(alone, tracks, variance)
                row["likelihood_score_max_abs_diff"] = float(np.abs(moved).max())
            rows[str(size)] = row
        result["backends"][backend] = rows  # type: ignore[index]
        print(backend, json.dumps(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
