"""Judges: Re-ID models that never saw the attacked encoder, used to score identity leakage.

A judge embeds uint8 crops; leakage is the judge's rank-1 / mAP when reconstructed query
crops are matched against the *original* gallery crops (Market-1501 protocol).

- :class:`OnnxJudge`: the public OSNet x0.25 (MSMT17) peer in ``../shared/peers`` (out of domain).
- :class:`EncoderJudge`: a ``reid-encoder/1`` checkpoint; :func:`train_in_domain_judge` trains
  one on the training split with a recipe of its own (cached by its arguments).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.data.transforms import eval_transform

log = logging.getLogger("reid.attacks.judges")


class Judge(Protocol):
    name: str

    def embed(self, images_uint8: torch.Tensor) -> np.ndarray: ...


class OnnxJudge:
    """An ONNX Re-ID model (input ``images`` float32 [N, 3, H, W], ImageNet-normalised) run with ONNX Runtime."""

    def __init__(self, path: str | Path, *, input_size: tuple[int, int] = (256, 128), name: str | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size
        self.name = name or Path(path).stem

    def embed(self, images_uint8: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, images_uint8.shape[0], 64):
            x = eval_transform(images_uint8[start : start + 64], self.input_size).numpy()
            out.append(self.session.run(None, {self.input_name: x})[0])
        feats = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
        return (feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class EncoderJudge:
    """A ``reid-encoder/1`` checkpoint as a judge."""

    def __init__(self, path: str | Path, *, name: str | None = None) -> None:
        from models.checkpoint import load_encoder

        self.embedder = load_encoder(path, "cpu")
        self.name = name or Path(path).stem

    def embed(self, images_uint8: torch.Tensor) -> np.ndarray:
        return self.embedder.embed(images_uint8)


IN_DOMAIN_RECIPE: dict[str, object] = {
    "backbone": "osnet_x0_25",
    "input_size": "128x64",
    "epochs": 10,
    "lr": 6e-4,
    "warmup_epochs": 1,
    "decoder_target": "none",
    "adv_weight": 0.0,
    "seed": 17,
}


def train_in_domain_judge(data: Path, cache_dir: Path, *, peer_weights: Path | None, recipe: dict[str, object] | None = None) -> Path:
    """Train (once; cached by recipe) a plain Re-ID model on the training split to serve as the in-domain judge.

    The default recipe is a Re-ID baseline (no stage one) on OSNet x0.25 at 128×64 from the public
    MSMT17 weights, seed 17: another resolution, recipe and seed than any attacked model.
    """
    from models.cli.train import main as train_main

    recipe = dict(recipe or IN_DOMAIN_RECIPE)
    if peer_weights is not None and str(recipe["backbone"]).startswith("osnet"):
        recipe["backbone_weights"] = str(peer_weights)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    run_dir = cache_dir / f"judge-{key}"
    export = run_dir / "judge.pt"
    if export.is_file():
        return export
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    argv = ["--data", str(data), "--run-dir", str(run_dir), "--export", str(export), "--resume"]
    for name, value in recipe.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    log.info("training the in-domain judge: reid-train %s", " ".join(argv))
    train_main(argv)
    return export
