"""Choose the projection head's dimension on held-out *training* identities (never the test split).

Extracts the training split's features with --checkpoint (a checkpoint without a head), fits the LDA head
(``models.projection.fit_lda``) on all but the last --holdout identities, and on the held-out ones (one query
per identity and camera, the rest as gallery, tracks = identity × camera) reports clean per-record / track
mAP and track mAP under the service's Gaussian mechanism at each ε (3 draws), for each dimension.
The encoder was trained on every training identity, held-out ones included, so absolute numbers are
optimistic; only the comparison between dimensions is used.

    python benchmarks/projection_dims.py --checkpoint models/checkpoints/stage1_osnet_x0_25_256x128.pt --json runs/projection_dims.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scores(q: np.ndarray, g: np.ndarray, ids: dict[str, np.ndarray], epsilons: list[float], draws: int) -> dict[str, float]:
    from models.evaluation import cosine_distance, evaluate_rankings
    from models.evaluation.tracks import evaluate_tracks
    from models.privacy.curve import release

    args = (ids["q_pids"], ids["g_pids"], ids["q_cams"], ids["g_cams"])
    out = {
        "clean_record_mAP": evaluate_rankings(cosine_distance(q, g), *args)["mAP"],
        "clean_track_mAP": evaluate_tracks(q, g, *args)["mAP"],
    }
    for eps in epsilons:
        out[f"track_mAP_eps{eps:g}"] = float(np.mean([evaluate_tracks(q, release(g, eps, 1e-5, seed=s)[0], *args)["mAP"] for s in range(draws)]))
    return {k: round(100 * v, 1) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cuhk03-detected")
    p.add_argument("--holdout", type=int, default=100, help="training identities held out of the fit")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128])
    p.add_argument("--regularisation", type=float, default=0.01)
    p.add_argument("--epsilons", type=float, nargs="+", default=[32.0, 64.0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from models.checkpoint import load_encoder
    from models.cli.eval import extract
    from models.data import read_market_split
    from models.projection import fit_lda

    train = read_market_split(args.data).train
    features = extract(load_encoder(args.checkpoint), [s.path for s in train])
    pids, cams = np.array([s.pid for s in train]), np.array([s.camid for s in train])
    held = pids >= pids.max() + 1 - args.holdout
    first: dict[tuple[int, int], int] = {}
    for i in np.flatnonzero(held):
        first.setdefault((int(pids[i]), int(cams[i])), int(i))
    q_idx = np.array(sorted(first.values()))
    g_idx = np.setdiff1d(np.flatnonzero(held), q_idx)
    ids = {"q_pids": pids[q_idx], "g_pids": pids[g_idx], "q_cams": cams[q_idx], "g_cams": cams[g_idx]}
    results: dict[str, Any] = {"checkpoint": str(args.checkpoint), "holdout_ids": args.holdout, "rows": {}}
    results["rows"]["none"] = scores(features[q_idx], features[g_idx], ids, args.epsilons, args.draws)
    print("none", results["rows"]["none"], flush=True)
    for dim in args.dims:
        w = fit_lda(features[~held], pids[~held], dim, args.regularisation)
        row = scores(normalise(features[q_idx] @ w), normalise(features[g_idx] @ w), ids, args.epsilons, args.draws)
        results["rows"][str(dim)] = row
        print(dim, row, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
