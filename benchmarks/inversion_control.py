"""Calibrate the inversion attack with positive controls: "features" that carry identity by construction.

The attack table (``reid-attack``) finds every Re-ID encoder at the attack's floor (a few of 1,395 reconstructed
queries re-identified). That is only evidence about the encoders if the same attacker, given a feature that *does*
carry a person's appearance, reconstructs crops the judges can re-identify. Here the "feature" of a crop is the crop
itself, block-averaged to 16×8 (the paper's De-ID target) or 8×4 and flattened (384-d, 96-d; centred on the public
training mean and L2-normalised, as a feature is released), and the suite's own inversion attack runs on it: the
same decoder, schedule, seeds and judges as the table, at ε = ∞.

    python benchmarks/inversion_control.py --cache-dir runs/attack-cache --inversion-epochs 4 --json docs/inversion_control.json

The in-domain judge is the one ``reid-attack`` trained into ``--cache-dir`` (trained here if absent, ≈ 7 min of a core).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03-detected"


def block_features(images_uint8: torch.Tensor, size: tuple[int, int], mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops block-averaged to ``size`` and flattened, centred on ``mean`` (the training mean if None) and L2-normalised."""
    flat = F.adaptive_avg_pool2d(images_uint8.float() / 255.0, size).flatten(1)
    mean = flat.mean(dim=0) if mean is None else mean
    return F.normalize(flat - mean, dim=1), mean


def main() -> None:
    from models.attacks.inversion import InversionConfig, PerceptualLoss
    from models.attacks.suite import EncoderFeatures, JudgeCache, SplitImages, SuiteConfig, attack_encoder, reference_rows
    from models.cli.attack import judges_for

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/attack-cache"), help="where reid-attack keeps its in-domain judge")
    p.add_argument("--inversion-epochs", type=int, default=InversionConfig.epochs)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    judges, _ = judges_for(argparse.Namespace(data=args.data, peer=None, no_in_domain_judge=False, judge_checkpoint=None, cache_dir=args.cache_dir))
    images = SplitImages.load(args.data)
    cache = JudgeCache(judges)
    config = SuiteConfig(epsilons=[float("inf")], attacks=("inversion",), inversion=InversionConfig(epochs=args.inversion_epochs))
    perceptual = PerceptualLoss()
    out = {"data": str(args.data), "judges": [j.name for j in judges], "references": reference_rows(cache, images), "rows": []}
    for name, size in (("pixels_16x8_as_feature", (16, 8)), ("pixels_8x4_as_feature", (8, 4))):
        train, mean = block_features(images.train, size)
        query, gallery = (block_features(part, size, mean)[0] for part in (images.query, images.gallery))
        features = EncoderFeatures(name=name, sha256=None, train=train, query=query, gallery=gallery)
        rows, _ = attack_encoder(features, images, cache, config, perceptual=perceptual)
        out["rows"] += rows
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out | {"seconds": round(time.time() - started, 1)}, indent=2))
    from models.attacks.report import markdown_table

    print(markdown_table(out))


if __name__ == "__main__":
    main()
