"""``reid-attack``: the attack suite against released galleries (see :mod:`models.attacks.suite`).

Attacks (``--attacks``, all by default):
  search     utility: rank-1 / mAP of clean queries against the released gallery
  probes     ID-accuracy attackers (linear; MLP at ε = ∞) trained on the released gallery, scored on queries
  linkage    rank-1 of released gallery records matched against each other across cameras
  inversion  a decoder trained on the public train split turns released records back into 128×64 crops;
             PSNR/SSIM against the originals and identity leakage under independent judges
             (the OSNet MSMT17 peer and an in-domain judge trained by the suite)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from models.attacks.inversion import InversionConfig
from models.attacks.judges import EncoderJudge, Judge, OnnxJudge, train_in_domain_judge
from models.attacks.suite import (
    ATTACKS,
    JudgeCache,
    RowCache,
    SplitImages,
    SuiteConfig,
    attack_encoder,
    config_dict,
    encoder_features,
    fingerprint,
    reference_rows,
)
from models.checkpoint import file_sha256

log = logging.getLogger("reid.attack")
CURVE_GRID = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, math.inf]


def _encoder_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--encoder takes NAME=PATH, got {text!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-attack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="Market-1501-layout folder (train / query / bounding_box_test)")
    p.add_argument("--encoder", type=_encoder_arg, action="append", required=True, help="NAME=CHECKPOINT, repeatable")
    p.add_argument("--epsilons", type=float, nargs="+", default=[math.inf], help="ε for every encoder (default: inf only)")
    p.add_argument("--grid-encoder", action="append", default=[], help="NAME of an encoder attacked across --grid instead")
    p.add_argument("--grid", type=float, nargs="+", default=CURVE_GRID, help="the privacy curve's ε grid")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--draws", type=int, default=3, help="noise draws per finite ε")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument("--peer", type=Path, help="ONNX judge (default: DATA/../../peers/osnet_x0_25_msmt17.onnx)")
    p.add_argument("--judge-checkpoint", type=Path, help="in-domain judge checkpoint (default: train one, cached)")
    p.add_argument("--no-in-domain-judge", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/attack-cache"), help="features, the trained judge and finished rows are cached here")
    p.add_argument("--no-row-cache", action="store_true", help="recompute every row even where the cache has it")
    p.add_argument("--inversion-epochs", type=int, default=InversionConfig.epochs)
    p.add_argument("--inversion-width", type=int, default=InversionConfig.base_channels)
    p.add_argument("--perceptual-weight", type=float, default=InversionConfig.perceptual_weight)
    p.add_argument(
        "--identity-weight",
        type=float,
        default=InversionConfig.identity_weight,
        help="> 0: the inverter also matches the attacked encoder's feature of its reconstruction (white-box identity loss)",
    )
    p.add_argument(
        "--inversion-seed",
        type=int,
        default=InversionConfig.seed,
        help="seed of the inverter's initialisation, order and training noise (another seed: another attacker run)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--max-ids", type=int, default=0, help="keep only N identities of each part of the split (quick runs, tests)")
    p.add_argument("--json", type=Path, required=True, help="write the table here (rewritten after every row)")
    p.add_argument("--markdown", type=Path, help="Markdown file whose attack-table markers receive the table")
    p.add_argument(
        "--markdown-table", default="attack-table", metavar="NAME", help="the table goes between <!-- NAME:start --> and <!-- NAME:end -->"
    )
    p.add_argument("--picture", type=Path, help="PNG: original / pixelated / reconstructions at --picture-epsilons (first grid encoder)")
    p.add_argument("--picture-epsilons", type=float, nargs="+", default=[math.inf, 256, 64])
    return p


def judges_for(args: argparse.Namespace) -> tuple[list[Judge], list[str]]:
    """The judges, and the SHA-256 of each one's file (rows cached under other judges are not reused)."""
    judges: list[Judge] = []
    files: list[str] = []
    peer = args.peer or args.data.resolve().parents[1] / "peers" / "osnet_x0_25_msmt17.onnx"
    if peer.is_file():
        judges.append(OnnxJudge(peer, name="peer OSNet (MSMT17)"))
        files.append(file_sha256(peer))
    else:
        log.warning("no ONNX peer judge at %s", peer)
    if not args.no_in_domain_judge:
        path = args.judge_checkpoint or train_in_domain_judge(args.data, args.cache_dir, peer_weights=peer if peer.is_file() else None)
        judges.append(EncoderJudge(path, name="in-domain judge"))
        files.append(file_sha256(path))
    return judges, files


def inversion_config(args: argparse.Namespace) -> InversionConfig:
    """The inverter's recipe from the command line (part of each cached row's key)."""
    return InversionConfig(
        epochs=args.inversion_epochs,
        base_channels=args.inversion_width,
        perceptual_weight=args.perceptual_weight,
        identity_weight=args.identity_weight,
        seed=args.inversion_seed,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    judges, judge_files = judges_for(args) if "inversion" in args.attacks else ([], [])
    context = fingerprint([j.name for j in judges], judge_files, args.max_ids, str(args.data))
    row_cache = None if args.no_row_cache else RowCache(args.cache_dir / "rows", context)
    images = SplitImages.load(args.data, max_ids=args.max_ids)
    cache = JudgeCache(judges)
    inversion = inversion_config(args)
    perceptual = None
    if "inversion" in args.attacks and args.perceptual_weight > 0:
        from models.attacks.inversion import PerceptualLoss

        perceptual = PerceptualLoss()
    out: dict[str, Any] = {
        "data": str(args.data),
        "judges": [j.name for j in judges],
        "references": reference_rows(cache, images) if judges else [],
        "encoders": {},
        "rows": [],
    }

    def write() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out["seconds"] = round(time.time() - started, 1)
        args.json.write_text(json.dumps(out, indent=2))

    pictures: dict[str, Any] = {}
    for name, checkpoint in args.encoder:
        on_grid = name in args.grid_encoder
        config = SuiteConfig(
            epsilons=args.grid if on_grid else args.epsilons,
            delta=args.delta,
            draws=args.draws,
            attacks=tuple(args.attacks),
            inversion=inversion,
            keep_decoders_for=tuple(args.picture_epsilons) if args.picture and on_grid and not pictures else (),
        )
        features = encoder_features(name, checkpoint, images, args.cache_dir)
        out["encoders"][name] = {"checkpoint": str(checkpoint), "sha256": features.sha256, "config": config_dict(config)}

        def add(row: dict[str, Any]) -> None:
            out["rows"].append(row)
            write()

        identity = None
        if "inversion" in args.attacks and args.identity_weight > 0:
            from models.attacks.inversion import EncoderIdentity

            identity = EncoderIdentity(checkpoint)
        _, kept = attack_encoder(features, images, cache, config, perceptual=perceptual, on_row=add, row_cache=row_cache, identity=identity)
        if kept:
            pictures = {"name": name, "features": features, "decoders": kept}
    write()
    if args.markdown:
        from models.attacks.report import write_markdown

        write_markdown(args.markdown, out, table=args.markdown_table)
    if args.picture and pictures:
        from models.attacks.report import save_picture

        save_picture(args.picture, images, pictures["features"], pictures["decoders"], delta=args.delta, title=pictures["name"])
    print(json.dumps({k: out[k] for k in ("judges", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
