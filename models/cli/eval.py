"""``reid-eval``: Re-ID quality (rank-k, mAP, mINP) and privacy (ID accuracy) of an encoder checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Embedder, load_encoder
from models.data import read_market_split
from models.data.transforms import load_images
from models.evaluation import cosine_distance, evaluate_rankings
from models.evaluation.attack import id_accuracy
from models.evaluation.likelihood import signed_features

log = logging.getLogger("reid.eval")


def extract(embedder: Embedder, paths: list[Path]) -> np.ndarray:
    """Decode crops at their stored size and embed them (the embedder resizes)."""
    feats = []
    for start in range(0, len(paths), 512):
        batch = load_images(paths[start : start + 512], embedder.input_size)
        feats.append(embedder.embed(batch))
    return np.concatenate(feats) if feats else np.zeros((0, embedder.embedding_dim), np.float32)


def split_features(embedder: Embedder, data: Path) -> dict[str, np.ndarray]:
    """Query and gallery features with identities and cameras."""
    split = read_market_split(data)
    return {
        "qf": extract(embedder, [s.path for s in split.query]),
        "gf": extract(embedder, [s.path for s in split.gallery]),
        "q_pids": np.array([s.pid for s in split.query]),
        "g_pids": np.array([s.pid for s in split.gallery]),
        "q_cams": np.array([s.camid for s in split.query]),
        "g_cams": np.array([s.camid for s in split.gallery]),
    }


def evaluate_features(f: dict[str, np.ndarray], *, attackers: bool = True, ap_cutoff: int | None = None) -> dict[str, Any]:
    distances = cosine_distance(f["qf"], f["gf"])
    result: dict[str, Any] = dict(evaluate_rankings(distances, f["q_pids"], f["g_pids"], f["q_cams"], f["g_cams"], ap_cutoff=ap_cutoff))
    if attackers:
        for kind in ("linear", "mlp"):
            result[f"id_acc_{kind}"] = id_accuracy(f["gf"], f["g_pids"], f["qf"], f["q_pids"], kind=kind)
    return result


def save_grid(training_checkpoint: Path, data: Path, out: Path, count: int = 8) -> None:
    """PNG rows: original crop, obfuscated target, the decoder's reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.decoder import obfuscation_target
    from models.encoder import ReIDEncoder
    from models.stage_one import StageOneModel
    from models.trainer import stage_config

    state = torch.load(training_checkpoint, map_location="cpu", weights_only=False)
    args = argparse.Namespace(**state["args"])
    cfg = stage_config(args)
    if cfg.decoder_target is None:
        log.info("no decoder in %s; skipping the grid", training_checkpoint)
        return
    size = tuple(args.input_size)
    num_classes = state["model"]["classifier.weight"].shape[0]
    encoder = ReIDEncoder(backbone=args.backbone, embedding_dim=args.embedding_dim, pretrained=False, last_stride=args.last_stride)
    model = StageOneModel(encoder=encoder, num_classes=num_classes, input_size=size, config=cfg)  # type: ignore[arg-type]
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    split = read_market_split(data)
    picks = [split.query[i] for i in np.linspace(0, len(split.query) - 1, count).astype(int)]
    clean = load_images([s.path for s in picks], size).float() / 255
    from models.data.transforms import normalize

    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.encoder(normalize(clean)), dim=1)
        assert model.decoder is not None
        recon = torch.nn.functional.interpolate(model.decoder(feats), size=size, mode="nearest")
        target = obfuscation_target(cfg.decoder_target, clean, block=cfg.pixel_block, blur_sigma=cfg.blur_sigma)
    fig, axes = plt.subplots(3, count, figsize=(count * 1.1, 3 * 2.0))
    for col in range(count):
        for row, (name, img) in enumerate((("original", clean), (f"target: {cfg.decoder_target}", target), ("reconstruction", recon))):
            ax = axes[row, col]
            ax.imshow(img[col].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def save_tsne(panels: list[tuple[str, dict[str, np.ndarray]]], out: Path, identities: int = 30, seed: int = 0) -> None:
    """t-SNE of gallery+query features of ``identities`` test identities, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (title, f) in zip(axes[0], panels, strict=True):
        chosen = np.unique(f["g_pids"])[:identities]
        feats = np.concatenate([f["gf"], f["qf"]])
        pids = np.concatenate([f["g_pids"], f["q_pids"]])
        mask = np.isin(pids, chosen)
        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=15).fit_transform(feats[mask])
        colours = np.searchsorted(chosen, pids[mask])
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab20", s=10)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-eval", description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="encoder-only checkpoint")
    p.add_argument("--data", type=Path, required=True, help="Market-1501-layout folder (query/ vs bounding_box_test/)")
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-attackers", action="store_true", help="skip the ID-accuracy attackers")
    p.add_argument("--ap-cutoff", type=int, help="also report mAP@K (what a top-K search answer allows)")
    p.add_argument("--training-checkpoint", type=Path, help="full training state (with decoder) for --grid")
    p.add_argument("--grid", type=Path, help="PNG grid of original / obfuscated target / reconstruction")
    p.add_argument("--tsne", type=Path, help="PNG t-SNE of 30 test identities")
    p.add_argument("--baseline", type=Path, help="baseline encoder checkpoint shown beside this one in --tsne")
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    embedder = load_encoder(args.checkpoint, args.device)
    feats = split_features(embedder, args.data)
    if embedder.split_sign:  # the service compares the signed feature f⁺ − f⁻ per record (models.evaluation.likelihood)
        feats = {**feats, "qf": signed_features(feats["qf"]), "gf": signed_features(feats["gf"])}
    result = evaluate_features(feats, attackers=not args.no_attackers, ap_cutoff=args.ap_cutoff)
    result["checkpoint"] = str(args.checkpoint)
    result["checkpoint_sha256"] = embedder.sha256
    if args.grid and args.training_checkpoint:
        save_grid(args.training_checkpoint, args.data, args.grid)
    if args.tsne:
        panels = [(f"{args.checkpoint.parent.name}/{args.checkpoint.name}", feats)]
        if args.baseline:
            baseline_feats = split_features(load_encoder(args.baseline, args.device), args.data)
            panels.insert(0, (f"baseline: {args.baseline.parent.name}/{args.baseline.name}", baseline_feats))
        save_tsne(panels, args.tsne)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
