"""Post-training static INT8 quantisation of an exported encoder (ONNX Runtime's QDQ format).

Weights are quantised per output channel (int8, symmetric); activations (uint8) get ranges from
calibration crops passed through the fp32 graph, by default 256 crops drawn from the *training*
split (never the query or gallery crops the result is evaluated on). The QDQ graph runs on ONNX
Runtime and converts to OpenVINO IR, which executes it with integer kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import Embedder
from models.data.transforms import eval_transform

log = logging.getLogger("reid.inference.quantize")

TARGET_COSINE = 0.995
SEARCH = (0, 3, 6, 10, 16, 24)


def calibration_crops(data: str | Path, size: tuple[int, int], count: int = 256, seed: int = 0) -> torch.Tensor:
    """``count`` training-split crops (uint8, at ``size``), drawn with a fixed seed across identities."""
    from models.data import read_market_split
    from models.data.transforms import load_images

    train = read_market_split(data).train
    pick = np.random.default_rng(seed).choice(len(train), size=min(count, len(train)), replace=False)
    return load_images([train[i].path for i in sorted(pick)], size)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over normalised crops, ``batch`` at a time."""

    def __init__(self, crops: torch.Tensor, size: tuple[int, int], input_name: str, batch: int = 16) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: eval_transform(crops[i : i + batch], size).numpy()} for i in range(0, crops.shape[0], batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        raise NotImplementedError


def quantize_int8(
    fp32_onnx: str | Path,
    out: str | Path,
    embedder: Embedder,
    crops: torch.Tensor,
    *,
    method: str = "minmax",
    float_convs: int | None = None,
    target_cosine: float = TARGET_COSINE,
) -> Path:
    """Write the QDQ INT8 version of ``fp32_onnx`` to ``out``; ``crops`` are uint8 training crops.

    The first convolutions see raw pixels and are the most sensitive (measured on the shipped MobileNetV2:
    all-INT8 mean cosine 0.930 to fp32, first 6 convolutions kept in float 0.996). ``float_convs`` keeps
    that many in float; ``None`` tries 0, 3, 6, 10, 16, 24 and keeps the first count whose smallest cosine
    on held-out training crops (the last quarter of ``crops``, at most 64; never used for calibration)
    reaches ``target_cosine``.
    """
    from models.inference.export import embedder_metadata, write_onnx_metadata

    out = Path(out)
    held = min(64, crops.shape[0] // 4) if float_convs is None else 0
    calibration, check = crops[: crops.shape[0] - held], crops[crops.shape[0] - held :]
    counts = [float_convs] if float_convs is not None else list(SEARCH)
    reference = embedder.embed(check) if held else None
    chosen, cosine = counts[-1], float("nan")
    for count in counts:
        _quantize(fp32_onnx, out, embedder, calibration, method=method, float_convs=count)
        chosen = count
        if reference is None:
            break
        from models.inference.runners import OnnxRuntimeRunner
        from models.inference.select import min_cosine, with_runner

        cosine = min_cosine(reference, with_runner(embedder, OnnxRuntimeRunner(out, precision="int8")).embed(check))
        log.info("INT8 with the first %d convolutions in float: min cosine %.5f on %d held-out training crops", count, cosine, held)
        if cosine >= target_cosine:
            break
    meta = embedder_metadata(embedder, precision="int8") | {
        "calibration_crops": str(calibration.shape[0]),
        "calibration": method,
        "float_convs": str(chosen),
        "heldout_min_cosine": f"{cosine:.6f}",
    }
    write_onnx_metadata(out, meta)
    log.info("INT8 graph written to %s (%d calibration crops, %s ranges, first %d convolutions in float)", out, calibration.shape[0], method, chosen)
    return out


def _quantize(fp32_onnx: str | Path, out: Path, embedder: Embedder, crops: torch.Tensor, *, method: str, float_convs: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.inference.export import INPUT_NAME

    prepared = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[method]
    try:
        quantize_static(
            str(prepared),
            str(out),
            _Reader(crops, embedder.input_size, INPUT_NAME),  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=calibrate,
            # the last normalisation stays in float: quantising unit-norm features coarsens every cosine
            nodes_to_exclude=_tail_nodes(prepared) + _first_convs(prepared, float_convs),
        )
    finally:
        prepared.unlink(missing_ok=True)


def _first_convs(path: Path, count: int) -> list[str]:
    """The first ``count`` convolutions of each backbone (each ensemble member's; a flip average's second pass shares
    its prefix, so a single encoder keeps its first ``count`` as before)."""
    import onnx

    by_backbone: dict[str, list[str]] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Conv":
            by_backbone.setdefault(node.name.split("/backbone")[0], []).append(node.name)
    return [name for names in by_backbone.values() for name in names[:count]]


def _tail_nodes(path: Path) -> list[str]:
    """Names of the head's nodes, kept in float: everything from the first MatMul/Gemm (the embedding layer) on that is
    not in a backbone pass (any member's, in an ensemble) — BNNeck, L2 normalisations, the projection head if any, the flip average."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    first = min((i for i, n in enumerate(nodes) if n.op_type in {"MatMul", "Gemm"}), default=len(nodes) - 1)
    return [n.name for n in nodes[first:] if "/backbone" not in n.name]  # an ensemble member's is under /members.N/backbone
