"""Stage-one training run behind ``reid-train``: data, model, optimiser, the epoch loop, resumable state and the export.

:func:`train` reads an ``argparse.Namespace`` built by :mod:`models.cli.train` (or a training
checkpoint's stored ``args``) and goes through readable steps: :func:`load_training_data`,
:func:`build_encoder`, :func:`build_run` (model, optimiser, sampler, generators), :func:`resume`,
:func:`run_epoch` per epoch with :func:`save_state`, then the final evaluation and :func:`export`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoint import file_sha256, read_checkpoint, resolve_device, save_encoder
from models.data import PKSampler, ReIDSplit, read_market_split
from models.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_images, train_augment
from models.encoder import ReIDEncoder
from models.stage_one import StageOneConfig, StageOneModel

log = logging.getLogger("reid.train")


def code_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lr_factor(step: int, steps_per_epoch: int, args: argparse.Namespace) -> float:
    """Linear warm-up from 0.1× over ``warmup_epochs``, then cosine to 0 or step decay ×0.1 at ``step_epochs``."""
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


@dataclass
class TrainingData:
    """The split, and the training crops decoded once at the input size (uint8, on the device) with their labels."""

    split: ReIDSplit
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int


@dataclass
class Run:
    """Everything one training run updates, and what a resumed run restores."""

    model: StageOneModel
    optimiser: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: PKSampler
    generator: torch.Generator
    steps_per_epoch: int
    channels_last: bool
    start_epoch: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def decode_size(args: argparse.Namespace) -> tuple[int, int]:
    """The size crops are decoded at; the batch is then resized (bilinear) to the input size. Arguments saved by runs
    from before ``--decode-size`` have none."""
    height, width = getattr(args, "decode_size", None) or args.input_size
    return int(height), int(width)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_data(args: argparse.Namespace, device: torch.device) -> TrainingData:
    split = read_market_split(args.data)
    train_samples = split.train
    if args.max_train_ids:
        train_samples = [s for s in train_samples if s.pid < args.max_train_ids]
    labels = torch.tensor([s.pid for s in train_samples])
    num_classes = int(labels.max()) + 1
    log.info("decoding %d training crops once", len(train_samples))
    images = load_images([s.path for s in train_samples], decode_size(args)).to(device)
    return TrainingData(split=split, images=images, labels=labels.to(device), num_classes=num_classes)


def build_encoder(args: argparse.Namespace, images: torch.Tensor) -> tuple[ReIDEncoder, dict[str, Any] | None]:
    """The encoder to train, and the provenance of ``--init-encoder`` if it started from one."""
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
    return encoder, init_from


def build_run(args: argparse.Namespace, encoder: ReIDEncoder, data: TrainingData, device: torch.device) -> Run:
    """Stage-one model around ``encoder``, Adam, the P×K sampler and the augmentation generator."""
    model = StageOneModel(encoder=encoder, num_classes=data.num_classes, input_size=args.input_size, config=stage_config(args)).to(device)
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda" or args.backbone.startswith("osnet")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    sampler = PKSampler(labels=data.labels.tolist(), num_identities=args.p, instances_per_identity=args.k, seed=args.seed)
    steps_per_epoch = len(sampler) if not args.max_steps else min(len(sampler), args.max_steps)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    return Run(
        model=model,
        optimiser=optimiser,
        scaler=scaler,
        sampler=sampler,
        generator=generator,
        steps_per_epoch=steps_per_epoch,
        channels_last=channels_last,
    )


def resume(run: Run, last_path: Path, device: torch.device) -> None:
    """Restore weights, optimiser, progress and every random state from a training checkpoint."""
    state = torch.load(last_path, map_location=device, weights_only=False)
    run.model.load_state_dict(state["model"], strict=True)
    run.optimiser.load_state_dict(state["optimiser"])
    run.start_epoch, run.elapsed, run.history = state["epoch"], state["elapsed"], state["history"]
    run.sampler._rng = state["sampler_rng"]
    run.generator.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resumed from %s at epoch %d", last_path, run.start_epoch)


def run_epoch(run: Run, data: TrainingData, args: argparse.Namespace, epoch: int, step: int, device: torch.device) -> tuple[dict[str, float], int]:
    """One pass over the sampler (at most ``steps_per_epoch`` batches); returns the summed losses and the next global step."""
    run.model.train()
    t0 = time.time()
    sums: dict[str, float] = {}
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, mininterval=5)
    for batch_index, batch in enumerate(run.sampler):
        if batch_index >= run.steps_per_epoch:
            break
        for group in run.optimiser.param_groups:
            group["lr"] = args.lr * lr_factor(step, run.steps_per_epoch, args)
        idx = torch.tensor(batch, device=device)
        clean01, inputs = train_augment(data.images[idx], args.input_size, run.generator, padding=args.pad, erasing_p=args.erasing_p)
        if run.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            losses = run.model(inputs, clean01, data.labels[idx])
        run.optimiser.zero_grad(set_to_none=True)
        run.scaler.scale(losses["total"]).backward()
        run.scaler.step(run.optimiser)
        run.scaler.update()
        step += 1
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        rate = (batch_index + 1) * len(batch) / (time.time() - t0)
        bar.set_postfix({k: f"{v / (batch_index + 1):.3f}" for k, v in sums.items()} | {"img/s": f"{rate:.0f}"})
        bar.update()
    bar.close()
    return sums, step


def save_state(run: Run, args: argparse.Namespace, epoch: int, last_path: Path) -> None:
    """Atomically write the resumable training state after ``epoch`` (0-based) finished."""
    state = {
        "model": run.model.state_dict(),
        "optimiser": run.optimiser.state_dict(),
        "epoch": epoch + 1,
        "elapsed": run.elapsed,
        "history": run.history,
        "sampler_rng": run.sampler._rng,
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    tmp = last_path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(last_path)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training; returns a summary (metrics, time, export path)."""
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_training_data(args, device)
    encoder, init_from = build_encoder(args, data.images)
    run = build_run(args, encoder, data, device)

    args.run_dir.mkdir(parents=True, exist_ok=True)
    last_path = args.run_dir / "last.pt"
    if args.resume and last_path.exists():
        resume(run, last_path, device)

    step = run.start_epoch * run.steps_per_epoch
    for epoch in range(run.start_epoch, args.epochs):
        t0 = time.time()
        sums, step = run_epoch(run, data, args, epoch, step, device)
        epoch_time = time.time() - t0
        run.elapsed += epoch_time
        record: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(epoch_time, 1)}
        record |= {k: round(v / max(1, run.steps_per_epoch), 4) for k, v in sums.items()}
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            record |= evaluate_model(run.model.encoder, data.split, args, device)
        run.history.append(record)
        log.info("epoch %s", json.dumps(record))
        save_state(run, args, epoch, last_path)

    metrics = {} if args.no_final_eval else evaluate_model(run.model.encoder, data.split, args, device)
    summary: dict[str, Any] = {
        "metrics": metrics,
        "train_seconds": round(run.elapsed, 1),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads",
        "history": run.history,
    }
    if args.export:
        export(run.model.encoder, args, summary, num_classes=data.num_classes, init_from=init_from)
        summary["export"] = str(args.export)
    (args.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def export(encoder: ReIDEncoder, args: argparse.Namespace, summary: dict[str, Any], *, num_classes: int, init_from: dict[str, Any] | None) -> None:
    """Write the encoder-only checkpoint (``reid-encoder/1``) with its provenance to ``args.export``."""
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
        "metrics": summary["metrics"],
        "code_revision": code_revision(),
    }
    if decode_size(args) != tuple(args.input_size):
        metadata["decode_size"] = list(decode_size(args))  # its metrics were measured on crops decoded at this size
    save_encoder(encoder, args.export, metadata)


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
    if meta.get("backbone") == "ensemble":
        files = ", ".join(str(m.get("file")) for m in meta.get("members", []))
        raise ValueError(f"{path} is an ensemble (reid-project); train one of its members ({files}) and assemble a new ensemble after")
    if meta.get("projection"):
        parent = (meta.get("initialised_from") or {}).get("file", "the checkpoint it was fitted on")
        raise ValueError(f"{path} has a fixed projection head (reid-project); train from its parent ({parent}) and fit a new head after")
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
    q = embedder.embed(load_images([s.path for s in split.query], decode_size(args)))
    g = embedder.embed(load_images([s.path for s in split.gallery], decode_size(args)))
    encoder.train(was_training)
    result = evaluate_rankings(
        cosine_distance(q, g),
        np.array([s.pid for s in split.query]),
        np.array([s.pid for s in split.gallery]),
        np.array([s.camid for s in split.query]),
        np.array([s.camid for s in split.gallery]),
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
