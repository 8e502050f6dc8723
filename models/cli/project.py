"""``reid-project``: add a discriminant projection head (``models.projection``) to an encoder checkpoint.

Features of the training split (``bounding_box_train``) are extracted with the checkpoint, an LDA
projection to --dim directions is fitted on them with their identity labels, and a new encoder-only
checkpoint is written whose emitted feature is normalise(W^T normalise(feature)) — with --split-sign,
``[relu(f), relu(-f)]`` of it, non-negative, so the privacy mechanism's sensitivity is √2 instead of 2. The
noise-aware track scorer (``models.evaluation.likelihood``) is fitted on the same training features as
emitted and stored in the checkpoint. Nothing of the query or gallery split is used. Evaluate the result with ``reid-eval`` and calibrate it with
``reid-privacy-curve`` like any other checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("reid.project")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-project", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="encoder-only checkpoint without a projection head")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/cuhk03-detected"), help="Market-1501-layout folder")
    p.add_argument("--dim", type=int, default=48, help="directions kept")
    p.add_argument("--regularisation", type=float, default=0.01, help="added to the within-identity scatter's diagonal")
    p.add_argument("--split-sign", action="store_true", help="emit [relu(f), relu(-f)]: non-negative features (sensitivity √2)")
    p.add_argument("--no-track-scorer", action="store_true", help="do not fit the noise-aware track scorer (grouped search uses cosine)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--max-train-ids", type=int, help="fit on the first N training identities only (tests)")
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from models.checkpoint import load_encoder, save_encoder
    from models.cli.eval import extract
    from models.data import read_market_split
    from models.evaluation.likelihood import TrackScorer
    from models.projection import fit_lda
    from models.trainer import code_revision

    embedder = load_encoder(args.checkpoint)
    meta = dict(embedder.metadata)
    if meta.get("projection"):
        raise SystemExit(f"{args.checkpoint} has a projection head already; fit on the checkpoint it came from")
    if meta.get("flip_average") or meta.get("feature_domain", "signed") != "signed":
        raise SystemExit(
            f"{args.checkpoint}: the head is fitted on single-view features in the signed domain; "
            "export the encoder without --flip-average and with the signed domain"
        )
    train = read_market_split(args.data).train
    if args.max_train_ids:
        train = [s for s in train if s.pid < args.max_train_ids]
    log.info("extracting %d training crops", len(train))
    features = extract(embedder, [s.path for s in train])
    weights = fit_lda(features, np.array([s.pid for s in train]), args.dim, args.regularisation)
    encoder = embedder.model
    encoder.split_sign = args.split_sign
    encoder.attach_projection(torch.from_numpy(weights.T.astype(np.float32)))
    scorer = None
    if not args.no_track_scorer:
        with torch.inference_mode():
            emitted = encoder.encode_sign(encoder.emitted(torch.from_numpy(features).float())).numpy()
        scorer = TrackScorer.fit(emitted, np.array([s.pid for s in train]))
        meta["track_scorer"] = {
            "model": "two-covariance Gaussian log-likelihood ratio (models.evaluation.likelihood)",
            "fitted_on": f"{args.data.name}: bounding_box_train, the emitted features",
        }
    meta["split_sign"] = bool(args.split_sign)
    meta["projection"] = {
        "dim": args.dim,
        "method": "lda",
        "regularisation": args.regularisation,
        "fitted_on": f"{args.data.name}: bounding_box_train ({len(train)} crops, {len({s.pid for s in train})} identities)",
    }
    meta["initialised_from"] = {"file": args.checkpoint.name, "sha256": embedder.sha256} | {
        k: meta[k] for k in ("name", "epochs", "metrics", "code_revision", "initialised_from") if k in meta
    }
    meta["name"] = args.out.stem
    meta["code_revision"] = code_revision()  # the code that made this file; the parent's is under initialised_from
    meta.pop("metrics", None)
    save_encoder(encoder, args.out, meta, track_scorer=scorer)
    log.info("wrote %s (%d-d features)", args.out, encoder.feature_dim)


if __name__ == "__main__":
    main()
