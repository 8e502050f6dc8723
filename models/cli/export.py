"""``reid-export``: an encoder checkpoint as an ONNX graph or OpenVINO IR for the service's CPU backends.

The file serves with REID_ENCODER_ARTIFACT=PATH (REID_ENCODER_BACKEND=onnxruntime or openvino; auto also takes it).
--int8: post-training static quantisation (QDQ, per-channel weights) with activation ranges from training-split
crops; the first convolutions stay in float as far as needed to keep features at cosine >= 0.995 on held-out
training crops. --evaluate: rank-1 / mAP of the exported file against fp32 on the shared split's query vs gallery.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("reid.export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="encoder-only checkpoint (default: the shipped one, models.DEFAULT_CHECKPOINT)")
    p.add_argument("--format", required=True, choices=["onnx", "openvino"], help="onnx: one .onnx file; openvino: IR .xml (+ .bin beside it)")
    p.add_argument("--out", type=Path, required=True, help="file to write (.onnx, or .xml for openvino)")
    p.add_argument("--int8", action="store_true", help="post-training static INT8 quantisation (needs --data for calibration crops)")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/cuhk03-detected"), help="Market-1501-layout folder")
    p.add_argument("--calibration-crops", type=int, default=256, help="training crops drawn for --int8 (a quarter, at most 64, held out)")
    p.add_argument("--float-convs", type=int, help="--int8: keep exactly this many leading convolutions in float (default: search)")
    p.add_argument("--evaluate", action="store_true", help="rank-1 / mAP of the exported file against fp32 on the split's query vs gallery")
    p.add_argument("--json", type=Path, help="write the summary here")
    return p


def evaluate_artifact(embedder: Any, artifact: Path, data: Path) -> dict[str, Any]:
    """Query-vs-gallery metrics of the artifact (OpenVINO for .xml, ONNX Runtime for .onnx) and of fp32, and their feature cosines.

    fp32 here is the checkpoint's plain ONNX export in ONNX Runtime, whose features equal PyTorch's (cosine ≥ 0.9999,
    checked below on the same crops) and which is much faster than eager PyTorch on this CPU.
    """
    from models.cli.eval import evaluate_features, split_features
    from models.inference.export import export_onnx, read_artifact_metadata
    from models.inference.runners import OnnxRuntimeRunner, artifact_runner
    from models.inference.select import check_crops, parity, with_runner

    precision = read_artifact_metadata(artifact).get("precision", "fp32")
    backend = "openvino" if artifact.suffix == ".xml" else "onnxruntime"
    with tempfile.TemporaryDirectory(prefix="reid-export-eval-") as tmp:
        fp32 = OnnxRuntimeRunner(export_onnx(embedder, Path(tmp) / "fp32.onnx"))
        fp32_parity = parity(embedder, fp32, check_crops(embedder.input_size))
        started = time.time()
        reference = split_features(with_runner(embedder, fp32), data)
        candidate = split_features(with_runner(embedder, artifact_runner(backend, artifact, precision=precision)), data)
    metrics = {name: evaluate_features(feats, attackers=False) for name, feats in (("fp32", reference), (precision, candidate))}
    cosines = np.concatenate([(reference[k] * candidate[k]).sum(axis=1) for k in ("qf", "gf")])
    keys = ("rank1", "rank5", "mAP", "mINP")
    return {
        "backend": backend,
        "fp32_reference": f"ONNX Runtime fp32 export (min cosine {fp32_parity:.6f} to PyTorch on the self-check crops)",
        "fp32": {k: metrics["fp32"][k] for k in keys if k in metrics["fp32"]},
        precision: {k: metrics[precision][k] for k in keys if k in metrics[precision]},
        "delta_points": {k: round(100 * (metrics[precision][k] - metrics["fp32"][k]), 3) for k in keys if k in metrics["fp32"]},
        "feature_cosine": {"min": float(cosines.min()), "mean": float(cosines.mean()), "p01": float(np.quantile(cosines, 0.01))},
        "crops": int(cosines.shape[0]),
        "seconds": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from models import DEFAULT_CHECKPOINT
    from models.checkpoint import load_encoder
    from models.inference.export import describe, export
    from models.inference.quantize import calibration_crops

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    embedder = load_encoder(checkpoint, "cpu")
    started = time.time()
    crops = calibration_crops(args.data, embedder.input_size, args.calibration_crops) if args.int8 else None
    out = export(embedder, args.format, args.out, int8=args.int8, calibration=crops, float_convs=args.float_convs)
    summary: dict[str, Any] = {"checkpoint": str(checkpoint), "format": args.format, "seconds": round(time.time() - started, 1)} | describe(out)
    if args.evaluate:
        summary["evaluation"] = evaluate_artifact(embedder, out, args.data)
    text = json.dumps(summary, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
