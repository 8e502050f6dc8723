"""``reid-train``: stage-one training (Re-ID + De-ID decoder + Adv-ID) with an encoder-only export."""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.backbones import BACKBONES
from models.checkpoint import file_sha256, read_checkpoint, resolve_device, save_encoder
from models.data import PKSampler, read_market_split
from models.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_images, train_augment
from models.encoder import ReIDEncoder
from models.training import StageOneConfig, StageOneModel

log = logging.getLogger("reid.train")


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
    return args


def code_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lr_factor(step: int, steps_per_epoch: int, args: argparse.Namespace) -> float:
    epoch = step / max(1, steps_per_epoch)
    if epoch < args.warmup_epochs:
        return 0.1 + 0.9 * epoch / args.warmup_epochs
    if args.scheduler == "cosine":
        progress = (epoch - args.warmup_epochs) / max(1e-9, args.epochs - args.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** sum(epoch >= e for e in args.step_epochs)


def noise_sigma(args: argparse.Namespace) -> float:
    """σ of the mechanism at --noise-epsilon (clipping norm 1; Δ = 2, or √2 for non-negative features), shrunk by the root of the track size."""
    if not getattr(args, "noise_epsilon", 0):
        return 0.0
    from models.privacy.gaussian import gaussian_sigma

    sensitivity = math.sqrt(2.0) if getattr(args, "feature_domain", "signed") == "nonnegative" else 2.0
    return gaussian_sigma(args.noise_epsilon, args.noise_delta, sensitivity) / math.sqrt(args.noise_track_size)


def stage_config(args: argparse.Namespace) -> StageOneConfig:
    return StageOneConfig(
        decoder_target=None if args.decoder_target == "none" else args.decoder_target,
        pixel_block=args.pixel_block,
        blur_sigma=args.blur_sigma,
        recon_loss=args.recon_loss,
        recon_weight=args.recon_weight,
        adv_weight=args.adv_weight,
        adv_input=args.adv_input,
        # getattr: training checkpoints written before these options existed lack them
        inversion_weight=getattr(args, "inversion_weight", 0.0),
        noise_sigma=noise_sigma(args),
        noise_weight=getattr(args, "noise_weight", 1.0),
        noise_temperature=getattr(args, "noise_temperature", 0.1),
        label_smoothing=args.label_smoothing,
        triplet_margin=args.triplet_margin,
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training; returns a summary (metrics, time, export path)."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split = read_market_split(args.data)
    train_samples = split.train
    if args.max_train_ids:
        train_samples = [s for s in train_samples if s.pid < args.max_train_ids]
    labels = torch.tensor([s.pid for s in train_samples])
    num_classes = int(labels.max()) + 1
    log.info("decoding %d training crops once", len(train_samples))
    images = load_images([s.path for s in train_samples], args.input_size).to(device)
    labels = labels.to(device)

    encoder = ReIDEncoder(
        backbone=args.backbone,
        embedding_dim=args.embedding_dim,
        pretrained=not args.no_pretrained and args.backbone == "mobilenet_v2",  # other backbones load --backbone-weights
        backbone_weights=args.backbone_weights,
        last_stride=args.last_stride,
        flip_average=args.flip_average,
        feature_domain=args.feature_domain,
    )
    init_from = None
    if args.init_encoder:
        init_from = load_encoder_state(encoder, args.init_encoder)
        log.info("encoder initialised from %s", args.init_encoder)
    elif getattr(encoder.backbone, "folded_batch_norms", None):
        recalibrate_batch_norms(encoder.backbone, images, args.input_size, args.seed)
    model = StageOneModel(encoder=encoder, num_classes=num_classes, input_size=args.input_size, config=stage_config(args)).to(device)
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda" or args.backbone.startswith("osnet")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    sampler = PKSampler(labels=labels.tolist(), num_identities=args.p, instances_per_identity=args.k, seed=args.seed)
    steps_per_epoch = len(sampler) if not args.max_steps else min(len(sampler), args.max_steps)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    args.run_dir.mkdir(parents=True, exist_ok=True)
    last_path = args.run_dir / "last.pt"
    start_epoch, elapsed, history = 0, 0.0, []
    if args.resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"], strict=True)
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, elapsed, history = state["epoch"], state["elapsed"], state["history"]
        sampler._rng = state["sampler_rng"]
        generator.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, mininterval=5)
        for batch_index, batch in enumerate(sampler):
            if batch_index >= steps_per_epoch:
                break
            for group in optimiser.param_groups:
                group["lr"] = args.lr * lr_factor(step, steps_per_epoch, args)
            idx = torch.tensor(batch, device=device)
            clean01, inputs = train_augment(images[idx], args.input_size, generator, padding=args.pad, erasing_p=args.erasing_p)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                losses = model(inputs, clean01, labels[idx])
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimiser)
            scaler.update()
            step += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            rate = (batch_index + 1) * len(batch) / (time.time() - t0)
            bar.set_postfix({k: f"{v / (batch_index + 1):.3f}" for k, v in sums.items()} | {"img/s": f"{rate:.0f}"})
            bar.update()
        bar.close()
        epoch_time = time.time() - t0
        elapsed += epoch_time
        record: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(epoch_time, 1)}
        record |= {k: round(v / max(1, steps_per_epoch), 4) for k, v in sums.items()}
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            record |= evaluate_model(model.encoder, split, args, device)
        history.append(record)
        log.info("epoch %s", json.dumps(record))
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "epoch": epoch + 1,
            "elapsed": elapsed,
            "history": history,
            "sampler_rng": sampler._rng,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
        tmp = last_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(last_path)

    metrics = {} if args.no_final_eval else evaluate_model(model.encoder, split, args, device)
    summary: dict[str, Any] = {
        "metrics": metrics,
        "train_seconds": round(elapsed, 1),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads",
        "history": history,
    }
    if args.export:
        metadata = {
            "name": args.export.stem,
            "backbone": args.backbone,
            "last_stride": args.last_stride,
            "embedding_dim": args.embedding_dim,
            "input_size": list(args.input_size),
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "training_data": str(args.data.name),
            "split": "bounding_box_train (relabelled); evaluated query vs bounding_box_test",
            "num_train_ids": num_classes,
            "stage_one": asdict(stage_config(args)),
            "epochs": args.epochs,
            "flip_average": args.flip_average,
            "feature_domain": args.feature_domain,
            "initialised_from": init_from,
            "backbone_weights": backbone_provenance(args.backbone_weights) if args.backbone_weights and not init_from else None,
            "train_seconds": summary["train_seconds"],
            "hardware": summary["hardware"],
            "metrics": metrics,
            "code_revision": code_revision(),
        }
        save_encoder(model.encoder, args.export, metadata)
        summary["export"] = str(args.export)
    (args.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def backbone_provenance(path: str) -> dict[str, str]:
    """File name and SHA-256 of the weights the backbone started from."""
    return {"file": Path(path).name, "sha256": file_sha256(path)}


def recalibrate_batch_norms(backbone: torch.nn.Module, images: torch.Tensor, size: tuple[int, int], seed: int, count: int = 256) -> None:
    """Batch norms re-inserted after folded ONNX convolutions get the statistics of ``count`` training crops."""
    from models.data.transforms import eval_transform
    from models.osnet import OSNet, recalibrate_folded_batch_norms

    assert isinstance(backbone, OSNet)
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    recalibrate_folded_batch_norms(backbone, eval_transform(images[pick.to(images.device)], size).to(next(backbone.parameters()).device))


def load_encoder_state(encoder: ReIDEncoder, path: Path) -> dict[str, Any]:
    """Copy an encoder-only checkpoint's weights into ``encoder`` (strict); returns its provenance."""
    payload = read_checkpoint(path)
    meta = payload["metadata"]
    if meta["backbone"] != encoder.backbone_name or int(meta["embedding_dim"]) != encoder.embedding_dim:
        found = f"{meta['backbone']} {meta['embedding_dim']}-d"
        raise ValueError(f"{path} holds a {found} encoder; this run builds {encoder.backbone_name} {encoder.embedding_dim}-d")
    encoder.load_state_dict(payload["state_dict"], strict=True)
    keep = ("name", "input_size", "epochs", "train_seconds", "hardware", "stage_one", "metrics", "initialised_from")
    return {"file": path.name, "sha256": file_sha256(path)} | {k: meta[k] for k in keep if k in meta}


def evaluate_model(encoder: ReIDEncoder, split: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Rank-k / mAP / mINP on query vs gallery with the encoder in eval mode."""
    from models.checkpoint import Embedder
    from models.evaluation import cosine_distance, evaluate_rankings

    was_training = encoder.training
    embedder = Embedder(model=encoder.eval(), device=device, input_size=args.input_size)
    q = embedder.embed(load_images([s.path for s in split.query], args.input_size))
    g = embedder.embed(load_images([s.path for s in split.gallery], args.input_size))
    encoder.train(was_training)
    result = evaluate_rankings(
        cosine_distance(q, g),
        np.array([s.pid for s in split.query]),
        np.array([s.pid for s in split.gallery]),
        np.array([s.camid for s in split.query]),
        np.array([s.camid for s in split.gallery]),
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = train(parse_args(argv))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
