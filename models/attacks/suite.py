"""The attack suite: what an attacker holding the gallery can learn, per encoder and per ε.

For every encoder and privacy budget ε (δ fixed, clipping norm 1 as in the service):

- ``search``: what the service is for: rank-1 / mAP of clean queries against the released gallery;
- ``probes``: the paper's ID-accuracy attackers (linear softmax, and an MLP at ε = ∞) trained on the
  released gallery with identity labels, scored on clean queries;
- ``linkage``: rank-1 of released gallery records matched against each other across cameras;
- ``inversion``: a decoder trained on the public training split (features + noise at σ → crops),
  applied to released query records; PSNR/SSIM against the original crops and identity leakage
  (rank-1 / mAP of the reconstructions against the original gallery crops) under judges that
  never saw the attacked encoder.

Reference rows per judge: the original query crops, 16×8-pixelated query crops (the paper's
De-ID target) and chance. Every random choice is seeded; noise draws at test time use seeds
1000, 1001, …
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.attacks.inversion import OUTPUT_SIZE, InversionConfig, InversionDecoder, PerceptualLoss, psnr, reconstruct, ssim, train_inversion
from models.attacks.judges import Judge
from models.data import read_market_split
from models.data.transforms import load_images
from models.evaluation import cosine_distance, evaluate_rankings
from models.evaluation.attack import id_accuracy
from models.evaluation.likelihood import signed_features
from models.privacy.curve import linkage_rank1
from models.privacy.gaussian import gaussian_sigma
from models.privacy.mechanism import sensitivity_for

log = logging.getLogger("reid.attacks")

ATTACKS = ("search", "probes", "linkage", "inversion")
CLIP_NORM = 1.0


@dataclass
class SplitImages:
    """The shared split decoded once at 128×64 (the crops' own size), with identities and cameras."""

    train: torch.Tensor
    query: torch.Tensor
    gallery: torch.Tensor
    train_paths: list[Path]
    query_paths: list[Path]
    gallery_paths: list[Path]
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_cams: np.ndarray
    g_cams: np.ndarray

    @classmethod
    def load(cls, data: Path, *, max_ids: int = 0) -> SplitImages:
        """Decode the split; ``max_ids`` > 0 keeps only that many identities of each part (quick runs, tests)."""
        split = read_market_split(data)

        def keep(samples: list[Any]) -> list[Any]:
            if not max_ids:
                return list(samples)
            chosen = sorted({s.pid for s in samples})[:max_ids]
            return [s for s in samples if s.pid in set(chosen)]

        split_train, split_query, split_gallery = keep(split.train), keep(split.query), keep(split.gallery)
        train_paths = [s.path for s in split_train]
        query_paths = [s.path for s in split_query]
        gallery_paths = [s.path for s in split_gallery]
        return cls(
            train=load_images(train_paths, OUTPUT_SIZE),
            query=load_images(query_paths, OUTPUT_SIZE),
            gallery=load_images(gallery_paths, OUTPUT_SIZE),
            train_paths=train_paths,
            query_paths=query_paths,
            gallery_paths=gallery_paths,
            q_pids=np.array([s.pid for s in split_query]),
            g_pids=np.array([s.pid for s in split_gallery]),
            q_cams=np.array([s.camid for s in split_query]),
            g_cams=np.array([s.camid for s in split_gallery]),
        )


@dataclass
class EncoderFeatures:
    name: str
    sha256: str | None
    train: torch.Tensor
    query: torch.Tensor
    gallery: torch.Tensor
    domain: str = "signed"  # the encoder's feature domain: the service's σ at an ε follows its sensitivity
    split_sign: bool = False  # search and linkage compare the signed feature f⁺ − f⁻, as the service does


def _domain(checkpoint: Path) -> tuple[str, bool]:
    """(output domain, split-sign) from a checkpoint's metadata, without building the model (cached features)."""
    from models.checkpoint import read_checkpoint
    from models.encoder import output_domain

    meta = read_checkpoint(checkpoint)["metadata"]
    split = bool(meta.get("split_sign"))
    return output_domain(str(meta.get("feature_domain", "signed")), split), split


def encoder_features(name: str, checkpoint: Path, images: SplitImages, cache_dir: Path | None) -> EncoderFeatures:
    """Clean features of the three parts of the split (cached by checkpoint SHA-256)."""
    from models.checkpoint import file_sha256, load_encoder
    from models.cli.eval import extract

    sha = file_sha256(checkpoint)
    sizes = f"{len(images.train_paths)}-{len(images.query_paths)}-{len(images.gallery_paths)}"
    cache = cache_dir / f"features-{sha[:16]}-{sizes}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        tensors = {k: torch.from_numpy(stored[k]) for k in ("train", "query", "gallery")}
        return EncoderFeatures(name, sha, tensors["train"], tensors["query"], tensors["gallery"], *_domain(checkpoint))
    embedder = load_encoder(checkpoint, "cpu")
    parts = {k: extract(embedder, getattr(images, f"{k}_paths")) for k in ("train", "query", "gallery")}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, train=parts["train"], query=parts["query"], gallery=parts["gallery"])
    tensors = {k: torch.from_numpy(parts[k]) for k in ("train", "query", "gallery")}
    return EncoderFeatures(name, sha, tensors["train"], tensors["query"], tensors["gallery"], embedder.feature_domain, embedder.split_sign)


def release(features: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """The service's release: clip to L2 norm 1, add N(0, σ²) per coordinate (seeded here, for a reproducible table).

    Features of a non-negative encoder are non-negative already, so the service's zeroing of negative coordinates is
    a no-op here."""
    clipped = features * (CLIP_NORM / features.norm(dim=1, keepdim=True).clamp_min(CLIP_NORM))
    if sigma == 0:
        return clipped
    return clipped + sigma * torch.randn(features.shape, generator=torch.Generator().manual_seed(seed), dtype=features.dtype)


def pixelate_16x8(images_uint8: torch.Tensor) -> torch.Tensor:
    """16×8 blocks (the paper's De-ID target), shown at the crops' size."""
    small = F.adaptive_avg_pool2d(images_uint8.float(), (16, 8))
    return F.interpolate(small, size=images_uint8.shape[-2:], mode="nearest").round().clamp(0, 255).to(torch.uint8)


def _ranking(query: np.ndarray, gallery: np.ndarray, images: SplitImages) -> dict[str, float]:
    r = evaluate_rankings(cosine_distance(query, gallery), images.q_pids, images.g_pids, images.q_cams, images.g_cams)
    return {"rank1": float(r["rank1"]), "mAP": float(r["mAP"])}


@dataclass
class JudgeCache:
    """Each judge's embedding of the original gallery crops, computed once."""

    judges: list[Judge]
    gallery: dict[str, np.ndarray] = field(default_factory=dict)

    def gallery_of(self, judge: Judge, images: SplitImages) -> np.ndarray:
        if judge.name not in self.gallery:
            self.gallery[judge.name] = judge.embed(images.gallery)
        return self.gallery[judge.name]

    def leakage(self, reconstructions: torch.Tensor, images: SplitImages) -> dict[str, dict[str, float]]:
        return {j.name: _ranking(j.embed(reconstructions), self.gallery_of(j, images), images) for j in self.judges}


def reference_rows(cache: JudgeCache, images: SplitImages, seed: int = 0) -> list[dict[str, Any]]:
    """What each judge achieves on original and on 16×8-pixelated query crops, and by chance."""
    rows: list[dict[str, Any]] = [{"reference": "original crops", "leakage": cache.leakage(images.query, images)}]
    pixelated = pixelate_16x8(images.query)
    rows.append(
        {
            "reference": "16x8-pixelated crops",
            "psnr": psnr(pixelated, images.query),
            "ssim": ssim(pixelated, images.query),
            "leakage": cache.leakage(pixelated, images),
        }
    )
    rng = np.random.default_rng(seed)
    chance = evaluate_rankings(rng.random((len(images.q_pids), len(images.g_pids))), images.q_pids, images.g_pids, images.q_cams, images.g_cams)
    rows.append({"reference": "chance", "leakage": {j.name: {"rank1": float(chance["rank1"]), "mAP": float(chance["mAP"])} for j in cache.judges}})
    return rows


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def _collect(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over draws of every numeric leaf of the per-draw dicts."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        first = samples[0][key]
        if isinstance(first, dict):
            out[key] = _collect([s[key] for s in samples])
        else:
            out[key] = _summary([float(s[key]) for s in samples])
    return out


@dataclass
class SuiteConfig:
    epsilons: list[float]
    delta: float = 1e-5
    draws: int = 3
    attacks: tuple[str, ...] = ATTACKS
    inversion: InversionConfig = field(default_factory=InversionConfig)
    keep_decoders_for: tuple[float, ...] = ()


def attack_encoder(
    features: EncoderFeatures,
    images: SplitImages,
    cache: JudgeCache,
    config: SuiteConfig,
    *,
    perceptual: PerceptualLoss | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    row_cache: RowCache | None = None,
    identity: nn.Module | None = None,
) -> tuple[list[dict[str, Any]], dict[float, InversionDecoder]]:
    """One row per ε for one encoder; also the decoders kept for pictures.

    With a ``row_cache``, a row computed before with the same encoder file, ε and settings is
    taken from it (except where its inversion decoder is wanted for a picture)."""
    rows: list[dict[str, Any]] = []
    kept: dict[float, InversionDecoder] = {}
    for epsilon in config.epsilons:
        reuse = row_cache is not None and epsilon not in config.keep_decoders_for  # a picture needs the row's decoder
        row = row_cache.get(features, epsilon, config) if reuse and row_cache is not None else None
        if row is not None:
            row["encoder"] = features.name
            log.info("%s ε=%s: row from the cache (%s)", features.name, row["epsilon"], _brief(row))
        else:
            row, decoder = _measure_row(features, images, cache, config, epsilon, perceptual, identity)
            if decoder is not None and epsilon in config.keep_decoders_for:
                kept[epsilon] = decoder
            if row_cache is not None:
                row_cache.put(features, epsilon, config, row)
            log.info("%s ε=%s σ=%.4f %s", features.name, row["epsilon"], row["sigma"], _brief(row))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows, kept


def _measure_row(
    features: EncoderFeatures,
    images: SplitImages,
    cache: JudgeCache,
    config: SuiteConfig,
    epsilon: float,
    perceptual: PerceptualLoss | None,
    identity: nn.Module | None = None,
) -> tuple[dict[str, Any], InversionDecoder | None]:
    """Every attack of ``config`` on one encoder at one ε (one noise draw at ε = ∞, ``config.draws`` otherwise)."""
    query_np = features.query.numpy()
    sigma = gaussian_sigma(epsilon, config.delta, sensitivity_for(features.domain, CLIP_NORM))
    row: dict[str, Any] = {"encoder": features.name, "epsilon": "inf" if math.isinf(epsilon) else epsilon, "delta": config.delta, "sigma": sigma}
    seconds: dict[str, float] = {}
    decoder = None
    if "inversion" in config.attacks:
        decoder, stats = train_inversion(features.train, images.train, sigma=sigma, config=config.inversion, perceptual=perceptual, identity=identity)
        seconds["inversion_training"] = stats["seconds"]
        row["inversion_training"] = stats
    samples: list[dict[str, Any]] = []
    for draw in range(1 if math.isinf(epsilon) else config.draws):
        t0 = time.time()
        gallery = release(features.gallery, sigma, seed=1000 + draw).numpy()
        sample: dict[str, Any] = {}
        compared = signed_features(gallery) if features.split_sign else gallery
        if "search" in config.attacks:
            sample["search"] = _ranking(signed_features(query_np) if features.split_sign else query_np, compared, images)
        if "probes" in config.attacks:
            sample["id_acc_linear"] = id_accuracy(gallery, images.g_pids, query_np, images.q_pids, kind="linear")
            if math.isinf(epsilon):
                sample["id_acc_mlp"] = id_accuracy(gallery, images.g_pids, query_np, images.q_pids, kind="mlp")
        if "linkage" in config.attacks:
            sample["linkage_rank1"] = linkage_rank1(compared, images.g_pids, images.g_cams)
        if decoder is not None:
            records = release(features.query, sigma, seed=2000 + draw)
            recon = reconstruct(decoder, records)
            sample["psnr"] = psnr(recon, images.query)
            sample["ssim"] = ssim(recon, images.query)
            sample["leakage"] = cache.leakage(recon, images)
        seconds[f"draw_{draw}"] = time.time() - t0
        samples.append(sample)
    row |= _collect(samples)
    row["seconds"] = seconds
    return row, decoder


def _brief(row: dict[str, Any]) -> str:
    parts = []
    if "search" in row:
        parts.append(f"mAP {100 * row['search']['mAP']['mean']:.1f}")
    if "id_acc_linear" in row:
        parts.append(f"ID acc {100 * row['id_acc_linear']['mean']:.1f}")
    for judge, leak in row.get("leakage", {}).items():
        parts.append(f"leak[{judge}] r1 {100 * leak['rank1']['mean']:.1f}")
    return ", ".join(parts)


def config_dict(config: SuiteConfig) -> dict[str, Any]:
    out = asdict(config)
    out["epsilons"] = ["inf" if math.isinf(e) else e for e in config.epsilons]
    out["keep_decoders_for"] = ["inf" if math.isinf(e) else e for e in config.keep_decoders_for]
    return out


ROW_CACHE_VERSION = 1  # raise when anything that computes a row changes (metrics, seeds, mechanism, inversion)


@dataclass
class RowCache:
    """Finished attack rows on disk, keyed by the encoder file's SHA-256, ε, the suite settings
    (draws, δ, attacks, inversion recipe), the split subset and the judges' identities, so that one
    ``reid-attack`` command can rebuild a whole table without repeating rows it has measured before."""

    folder: Path
    context: str  # what else the rows depend on: judges' files, --max-ids

    def _path(self, sha256: str, epsilon: float, config: SuiteConfig) -> Path:
        settings = config_dict(config) | {"epsilons": None, "keep_decoders_for": None}
        eps = "inf" if math.isinf(epsilon) else float(epsilon)
        key = fingerprint(ROW_CACHE_VERSION, sha256, eps, sorted(settings.items()), self.context)
        return self.folder / f"{sha256[:12]}-{key}.json"

    def get(self, features: EncoderFeatures, epsilon: float, config: SuiteConfig) -> dict[str, Any] | None:
        """The cached row, or None (also for an encoder without a known file hash)."""
        if features.sha256 is None:
            return None
        path = self._path(features.sha256, epsilon, config)
        return dict(json.loads(path.read_text())) if path.is_file() else None

    def put(self, features: EncoderFeatures, epsilon: float, config: SuiteConfig, row: dict[str, Any]) -> None:
        if features.sha256 is None:
            return
        path = self._path(features.sha256, epsilon, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        tmp.replace(path)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]
