"""Serving backends for the encoder: export to ONNX / OpenVINO IR, INT8 quantisation, runners and the parity-checked choice.

- :mod:`models.inference.export`: a checkpoint's encoder as an ONNX graph (normalised float crops in, L2-normalised
  features out, flip averaging included), and that graph as OpenVINO IR; the checkpoint's SHA-256 travels inside.
- :mod:`models.inference.quantize`: post-training static INT8 quantisation of the ONNX graph (QDQ) from training crops.
- :mod:`models.inference.runners`: one ``run(float32 NCHW) -> features`` interface over PyTorch, ONNX Runtime and OpenVINO.
- :mod:`models.inference.select`: build the configured backend behind an :class:`models.checkpoint.Embedder`, after
  checking its features against PyTorch's; ``auto`` times the candidates that pass and keeps the fastest.

Nothing heavy is imported here; ONNX Runtime and OpenVINO are optional and imported only when used.
"""

BACKENDS = ("torch", "onnxruntime", "openvino")

__all__ = ["BACKENDS"]
