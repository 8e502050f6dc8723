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
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from models.checkpoint import Embedder

log = logging.getLogger("reid.project")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-project", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        action="append",
        help="encoder-only checkpoint without a projection head; given more than once, the head is fitted on an ensemble "
        "of them (members concatenated with equal weight; their files must sit beside --out, which names them by SHA-256)",
    )
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

    parents = [load_encoder(path) for path in args.checkpoint]
    for path, parent in zip(args.checkpoint, parents, strict=True):
        if parent.metadata.get("projection"):
            raise SystemExit(f"{path} has a projection head already; fit on the checkpoint it came from")
        if parent.metadata.get("flip_average") or parent.metadata.get("feature_domain", "signed") != "signed":
            raise SystemExit(
                f"{path}: the head is fitted on single-view features in the signed domain; "
                "export the encoder without --flip-average and with the signed domain"
            )
    embedder = parents[0] if len(parents) == 1 else ensemble_of(args.checkpoint, parents, args.out)
    meta = dict(embedder.metadata)
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
    if len(parents) == 1:
        meta["initialised_from"] = {"file": args.checkpoint[0].name, "sha256": embedder.sha256} | {
            k: meta[k] for k in ("name", "epochs", "metrics", "code_revision", "initialised_from") if k in meta
        }
    meta["name"] = args.out.stem
    meta["code_revision"] = code_revision()  # the code that made this file; the parent's is under initialised_from
    meta.pop("metrics", None)
    save_encoder(encoder, args.out, meta, track_scorer=scorer)
    log.info("wrote %s (%d-d features)", args.out, encoder.feature_dim)


def ensemble_of(paths: list[Path], parents: list[Embedder], out: Path) -> Embedder:
    """An :class:`~models.encoder.EnsembleEncoder` of ``parents`` (input: the largest member size), to be saved as
    ``out``: each member's file must already sit beside ``out`` (the checkpoint names it, it does not copy it)."""
    from models.checkpoint import Embedder, file_sha256
    from models.encoder import EnsembleEncoder, ReIDEncoder

    members, models = [], []
    for path, parent in zip(paths, parents, strict=True):
        beside = out.parent / path.name
        if not beside.is_file() or file_sha256(beside) != parent.sha256:
            raise SystemExit(f"{path.name} must sit beside {out} (the ensemble names its members' files, it does not copy them)")
        if not isinstance(parent.model, ReIDEncoder):
            raise SystemExit(f"{path} is an ensemble itself; give its members")
        models.append(parent.model)
        members.append(
            {"file": path.name, "sha256": parent.sha256, "input_size": list(parent.input_size)}
            | {k: parent.metadata[k] for k in ("name", "backbone", "embedding_dim", "metrics", "code_revision") if k in parent.metadata}
        )
    model = EnsembleEncoder(models, [p.input_size for p in parents])
    input_size = max((p.input_size for p in parents), key=lambda size: size[0] * size[1])
    meta = {
        "backbone": "ensemble",
        "members": members,
        "input_size": list(input_size),
        "embedding_dim": model.embedding_dim,
        "feature_domain": "signed",
        "flip_average": False,
        "combination": "unit features concatenated with equal weight, normalised; members resized in the graph (bilinear)",
    }
    return Embedder(model=model.eval(), device=parents[0].device, input_size=input_size, metadata=meta)


if __name__ == "__main__":
    main()
