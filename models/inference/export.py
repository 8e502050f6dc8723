"""Export an encoder checkpoint as ONNX or OpenVINO IR, with its provenance inside the file.

The graph takes ``images``: float32 ``[N, 3, H, W]`` already resized and ImageNet-normalised
(:func:`models.data.transforms.eval_transform`), N dynamic, and returns ``features``: float32
``[N, D]``, L2-normalised, exactly what :meth:`models.encoder.ReIDEncoder.forward` returns in eval
mode (with ``flip_average`` the mirrored pass and the average are part of the graph).

Provenance (``reid.*`` keys): the checkpoint's SHA-256 and file name, input size, embedding size,
flip averaging, precision (``fp32`` or ``int8``). ONNX keeps it in ``metadata_props``, OpenVINO IR
in the model's ``rt_info``; :func:`read_artifact_metadata` reads either.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import Embedder

log = logging.getLogger("reid.inference.export")

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "features"
META_PREFIX = "reid."


def embedder_metadata(embedder: Embedder, *, precision: str = "fp32") -> dict[str, str]:
    """What an artifact records about the checkpoint it was made from (all values strings)."""
    return {
        "checkpoint_sha256": embedder.sha256 or "",
        "checkpoint": embedder.source or str(embedder.metadata.get("name", "")),
        "backbone": str(embedder.metadata.get("backbone", "")),
        "input_size": f"{embedder.input_size[0]}x{embedder.input_size[1]}",
        "embedding_dim": str(embedder.embedding_dim),
        "flip_average": str(bool(embedder.model.flip_average)).lower(),
        "precision": precision,
    }


def export_onnx(embedder: Embedder, out: str | Path) -> Path:
    """Write the embedder's encoder (on CPU, fp32, eval mode) as an ONNX graph with a dynamic batch axis."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = embedder.model
    device = next(model.parameters()).device
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    example = torch.zeros(2, 3, *embedder.input_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(
                model,
                (example,),
                str(out),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
    finally:
        if device.type != "cpu":
            embedder.model.to(device)
            embedder.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    write_onnx_metadata(out, embedder_metadata(embedder))
    return out


def write_onnx_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.save(proto, str(path))


def onnx_to_openvino(onnx_path: str | Path, out_xml: str | Path) -> Path:
    """Convert an exported ONNX graph (fp32 or QDQ INT8) to OpenVINO IR (``.xml`` + ``.bin``), weights kept in fp32."""
    import openvino as ov

    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR path ends in .xml, got {out_xml}")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    for key, value in read_artifact_metadata(onnx_path).items():
        model.set_rt_info(value, ["reid", key])
    ov.save_model(model, str(out_xml), compress_to_fp16=False)  # fp16 weights would break parity
    return out_xml


def read_artifact_metadata(path: str | Path) -> dict[str, str]:
    """The ``reid.*`` provenance of an ``.onnx`` or OpenVINO ``.xml`` artifact (keys without the prefix)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    if path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        if not model.has_rt_info(["reid"]):
            return {}
        info = model.get_rt_info(["reid"])
        keys = info.astype(dict).keys() if hasattr(info, "astype") else []
        return {k: model.get_rt_info(["reid", k]).astype(str) for k in keys}
    raise ValueError(f"unknown artifact type {path.suffix!r}: expected .onnx or .xml")


def export(
    embedder: Embedder,
    fmt: str,
    out: str | Path,
    *,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    float_convs: int | None = None,
) -> Path:
    """Export ``embedder`` to ``fmt`` (``onnx`` or ``openvino``) at ``out``; with ``int8``, ``calibration`` crops
    (uint8 ``[N, 3, H, W]``) set the activation ranges of the static quantisation."""
    if fmt not in {"onnx", "openvino"}:
        raise ValueError("format must be 'onnx' or 'openvino'")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="reid-export-") as tmp:
        fp32 = export_onnx(embedder, Path(tmp) / "fp32.onnx")
        graph = fp32
        if int8:
            if calibration is None:
                raise ValueError("INT8 export needs calibration crops")
            from models.inference.quantize import quantize_int8

            graph = quantize_int8(fp32, Path(tmp) / "int8.onnx", embedder, calibration, float_convs=float_convs)
        if fmt == "onnx":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(graph.read_bytes())
            return out
        return onnx_to_openvino(graph, out)


def describe(path: str | Path) -> dict[str, Any]:
    """Size and provenance of an artifact (for logs and the export command's summary)."""
    path = Path(path)
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return {"path": str(path), "bytes": sum(f.stat().st_size for f in files if f.exists()), "metadata": read_artifact_metadata(path)}
