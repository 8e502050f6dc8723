"""``reid-train``: stage-one training (Re-ID + De-ID decoder + Adv-ID) with an encoder-only export."""

# The options are parsed here (the description above is the --help text); the run itself is models.trainer.train.

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from models.backbones import BACKBONES
from models.trainer import train


def parse_size(text: str) -> tuple[int, int]:
    """'128x64' -> (128, 64) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-train", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, help="JSON file of option values (command-line flags override it)")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/cuhk03-detected"), help="Market-1501-layout folder")
    p.add_argument("--run-dir", type=Path, default=Path("runs/stage1"), help="training checkpoints and logs go here")
    p.add_argument("--export", type=Path, help="write the encoder-only checkpoint here at the end")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="mobilenet_v2", choices=sorted(BACKBONES))
    g.add_argument(
        "--backbone-weights",
        help="local weights: ImageNet for resnet50; for OSNet an ONNX export (../shared/peers/osnet_x0_25_msmt17.onnx) or a torchreid state dict",
    )
    g.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights")
    g.add_argument(
        "--init-encoder",
        type=Path,
        help="start the encoder from this encoder-only checkpoint (e.g. to fine-tune a trained model at a larger input size)",
    )
    g.add_argument("--flip-average", action="store_true", help="exported encoder averages the features of each crop and its mirror image")
    g.add_argument("--last-stride", type=int, default=1, choices=[1, 2])
    g.add_argument(
        "--feature-domain",
        default="signed",
        choices=["signed", "nonnegative"],
        help="nonnegative: ReLU before normalising, so the privacy mechanism's sensitivity is sqrt(2)*C instead of 2*C",
    )
    g.add_argument("--embedding-dim", type=int, default=512)
    g.add_argument("--input-size", type=parse_size, default=(128, 64), help="HEIGHTxWIDTH")
    g.add_argument(
        "--decode-size",
        type=parse_size,
        default=None,
        help="HEIGHTxWIDTH the crops are decoded at before the bilinear resize to --input-size (default: --input-size); "
        "256x128 for a 192x96 ensemble member trains it on what it sees in the ensemble",
    )
    g = p.add_argument_group("privacy parts")
    g.add_argument("--decoder-target", default="pixelate", choices=["none", "pixelate", "clean", "blur", "noise"])
    g.add_argument("--pixel-block", type=int, default=8, help="pixelation block size in input pixels")
    g.add_argument("--blur-sigma", type=float, default=3.0)
    g.add_argument("--recon-loss", default="l1", choices=["l1", "mse"])
    g.add_argument("--recon-weight", type=float, default=1.0)
    g.add_argument("--adv-weight", type=float, default=0.0, help="gradient-reversal weight of the Adv-ID module; 0 disables it")
    g.add_argument("--adv-input", default="reconstruction", choices=["reconstruction", "feature"])
    g.add_argument(
        "--inversion-weight",
        type=float,
        default=0.0,
        help="gradient-reversal weight of the inversion adversary (reconstructs the clean crop from the feature); 0 disables it",
    )
    g = p.add_argument_group("noise-aware training (the Gaussian mechanism in the loop on the gallery side)")
    g.add_argument("--noise-epsilon", type=float, default=0.0, help="train against galleries released at this per-record ε (0: off)")
    g.add_argument("--noise-delta", type=float, default=1e-5)
    g.add_argument("--noise-track-size", type=float, default=1.0, help="records averaged per track at search time: σ is divided by its root")
    g.add_argument("--noise-weight", type=float, default=1.0)
    g.add_argument("--noise-temperature", type=float, default=0.1)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=14)
    g.add_argument("--p", type=int, default=16, help="identities per batch")
    g.add_argument("--k", type=int, default=4, help="crops per identity in a batch")
    g.add_argument("--lr", type=float, default=6e-4)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--warmup-epochs", type=float, default=2.0)
    g.add_argument("--scheduler", default="cosine", choices=["cosine", "step"])
    g.add_argument("--step-epochs", type=int, nargs="*", default=[40, 70], help="decay epochs for --scheduler step")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--triplet-margin", type=float, default=0.3)
    g.add_argument("--erasing-p", type=float, default=0.5)
    g.add_argument("--pad", type=int, default=10)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format (default: on for CUDA and OSNet; OSNet x0.25 trains 1.4x faster with it on the 2-core CPU)",
    )
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every N epochs (0: only at the end)")
    g.add_argument("--max-train-ids", type=int, default=0, help="use only the first N training identities (tests)")
    g.add_argument("--max-steps", type=int, default=0, help="stop each epoch after N steps (tests)")
    g.add_argument("--no-final-eval", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        values = json.loads(args.config.read_text())
        unknown = set(values) - set(vars(args))
        if unknown:
            parser.error(f"unknown keys in {args.config}: {sorted(unknown)}")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    if isinstance(args.input_size, str):
        args.input_size = parse_size(args.input_size)
    if isinstance(args.decode_size, str):
        args.decode_size = parse_size(args.decode_size)
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = train(parse_args(argv))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
