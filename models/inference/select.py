"""Choose and check the runtime behind an :class:`~models.checkpoint.Embedder` (``REID_ENCODER_BACKEND``).

``backend``:
- ``torch``: the PyTorch module, as loaded.
- ``onnxruntime`` / ``openvino``: the checkpoint is exported to ONNX in a temporary folder (or a prebuilt
  ``artifact`` is used: ``.onnx`` for either, OpenVINO IR ``.xml`` for OpenVINO) and run there; its features must
  match PyTorch's on a self-check batch (every cosine ≥ 0.9999; an INT8 artifact ≥ 0.99) or loading fails.
- ``auto``: every installed CPU backend whose features match is timed on the same batch, a few rounds
  interleaved, and the fastest serves (PyTorch included; on CUDA PyTorch alone). A backend that fails to
  build or to match is logged and skipped, so ``auto`` always ends with a working encoder.

An artifact's recorded checkpoint SHA-256 must be the loaded checkpoint's: features of another model
would silently mix with the gallery's.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Embedder
from models.inference import BACKENDS
from models.inference.runners import Runner, TorchRunner, artifact_runner, installed_backends

log = logging.getLogger("reid.inference")

PARITY_FP32 = 0.9999
PARITY_INT8 = 0.99
CHOICES = ("auto", *BACKENDS)


def check_crops(size: tuple[int, int], count: int = 16, seed: int = 0) -> torch.Tensor:
    """Deterministic crop-like uint8 images for the load-time self-check: smooth colour fields plus texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 3, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    texture = torch.rand(count, 3, *size, generator=g) * 0.25
    return ((smooth * 0.8 + texture).clamp(0, 1) * 255).round().to(torch.uint8)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def with_runner(embedder: Embedder, runner: Runner | None) -> Embedder:
    """The same encoder (module, metadata, SHA-256) with ``runner`` computing its features."""
    return dataclasses.replace(embedder, runner=runner)


def parity(embedder: Embedder, runner: Runner, crops: torch.Tensor, reference: np.ndarray | None = None) -> float:
    """Smallest cosine between the PyTorch module's features (``reference``, computed if not given) and ``runner``'s on ``crops``."""
    if reference is None:
        reference = with_runner(embedder, None).embed(crops)
    return min_cosine(reference, with_runner(embedder, runner).embed(crops))


def throughput(runners: dict[str, Runner], x: np.ndarray, *, rounds: int = 3, calls: int = 2) -> dict[str, float]:
    """Crops/s of each runner on the same normalised batch ``x``: rounds interleaved, median of rounds."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner.run(x)  # warm-up: allocations, lazy compilation
    for _ in range(rounds):
        for name, runner in runners.items():
            started = time.perf_counter()
            for _ in range(calls):
                runner.run(x)
            rates[name].append(calls * x.shape[0] / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def build_runner(embedder: Embedder, backend: str, *, artifact: Path | None, workdir: Path, threads: int | None = None) -> Runner:
    """The runner for ``backend``: the module itself for torch; else ``artifact``, or a fresh ONNX export in ``workdir``."""
    if backend == "torch":
        return TorchRunner(embedder.model, embedder.device)
    if embedder.device.type != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU; the encoder was loaded on {embedder.device} (set the device to cpu)")
    if backend not in installed_backends():
        raise ModuleNotFoundError(f"the {backend} backend is not installed (pip install '.[cpu]')")
    from models.inference.export import export_onnx, read_artifact_metadata

    if artifact is not None:
        meta = read_artifact_metadata(artifact)
        recorded = meta.get("checkpoint_sha256")
        if recorded and embedder.sha256 and recorded != embedder.sha256:
            raise ValueError(f"{artifact.name} was exported from checkpoint {recorded[:12]}, not the loaded {embedder.sha256[:12]}")
        return artifact_runner(backend, artifact, threads=threads, precision=meta.get("precision", "fp32"))
    graph = workdir / "encoder.onnx"
    if not graph.exists():
        export_onnx(embedder, graph)
    return artifact_runner(backend, graph, threads=threads)


def _artifact_backends(artifact: Path | None) -> tuple[str, ...]:
    if artifact is None:
        return BACKENDS
    return ("onnxruntime", "openvino") if artifact.suffix == ".onnx" else ("openvino",)


def select_backend(
    embedder: Embedder,
    backend: str = "auto",
    artifact: str | Path | None = None,
    *,
    threads: int | None = None,
    crops: torch.Tensor | None = None,
    report: dict[str, Any] | None = None,
) -> Embedder:
    """``embedder`` with the chosen backend's runner behind ``embed`` (see the module docstring).

    ``report``, when given, receives what was tried: per backend the parity cosine, crops/s or the error.
    """
    if backend not in CHOICES:
        raise ValueError(f"encoder backend must be one of {CHOICES}, got {backend!r}")
    artifact = Path(artifact) if artifact else None
    if artifact is not None and not artifact.is_file():
        raise FileNotFoundError(f"encoder artifact {artifact} does not exist")
    report = report if report is not None else {}
    crops = crops if crops is not None else check_crops(embedder.input_size)
    if backend == "torch":
        log.info("encoder backend: torch (configured) on %s", embedder.device)
        report["chosen"] = "torch"
        return with_runner(embedder, None)
    with tempfile.TemporaryDirectory(prefix="reid-encoder-") as tmp:
        if backend != "auto":
            runner = build_runner(embedder, backend, artifact=artifact, workdir=Path(tmp), threads=threads)
            threshold = PARITY_INT8 if runner.precision == "int8" else PARITY_FP32
            cosine = parity(embedder, runner, crops)
            report[backend] = {"parity_min_cosine": cosine, "precision": runner.precision}
            if cosine < threshold:
                raise RuntimeError(f"the {backend} encoder's features differ from PyTorch's: min cosine {cosine:.6f} < {threshold}")
            if runner.precision == "int8":
                log.warning("encoder backend: %s INT8 (configured): min cosine %.6f to PyTorch's fp32 features", backend, cosine)
            log.info("encoder backend: %s (configured), %s, parity min cosine %.6f", backend, runner.precision, cosine)
            report["chosen"] = backend
            return with_runner(embedder, runner)
        return _auto(embedder, artifact, Path(tmp), threads, crops, report)


def _auto(embedder: Embedder, artifact: Path | None, workdir: Path, threads: int | None, crops: torch.Tensor, report: dict[str, Any]) -> Embedder:
    if embedder.device.type != "cpu":
        log.info("encoder backend: torch (auto: the encoder runs on %s)", embedder.device)
        report["chosen"] = "torch"
        return with_runner(embedder, None)
    runners: dict[str, Runner] = {"torch": TorchRunner(embedder.model, embedder.device)}
    reference = with_runner(embedder, None).embed(crops)
    for name in installed_backends():
        if name == "torch" or name not in _artifact_backends(artifact):
            continue
        try:
            runner = build_runner(embedder, name, artifact=artifact, workdir=workdir, threads=threads)
            cosine = parity(embedder, runner, crops, reference)
        except Exception as exc:  # a runtime that cannot take this model is skipped, never fatal
            log.warning("encoder backend %s skipped: %s", name, exc)
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        report[name] = {"parity_min_cosine": cosine, "precision": runner.precision}
        if runner.precision != "fp32" or cosine < PARITY_FP32:
            log.warning("encoder backend %s skipped: min cosine %.6f to PyTorch (%s)", name, cosine, runner.precision)
            continue
        runners[name] = runner
    x = torch.stack([crops[i % crops.shape[0]] for i in range(max(r.default_chunk for r in runners.values()))])
    from models.data.transforms import eval_transform

    rates = throughput(runners, eval_transform(x, embedder.input_size).numpy(), calls=3)
    for name, rate in rates.items():
        report.setdefault(name, {})["crops_per_s"] = rate
    chosen = max(rates, key=lambda n: rates[n])
    report["chosen"] = chosen
    summary = ", ".join(f"{n} {r:.0f}" for n, r in sorted(rates.items(), key=lambda kv: -kv[1]))
    log.info("encoder backend: %s (auto: fastest of those matching PyTorch at cosine >= %s; crops/s %s)", chosen, PARITY_FP32, summary)
    return with_runner(embedder, None if chosen == "torch" else runners[chosen])
