"""One interface over the inference runtimes: ``run(float32 [N, 3, H, W] normalised crops) -> float32 [N, D] features``.

- :class:`TorchRunner`: the encoder module itself (eager PyTorch; CUDA with fp16 autocast, as the Embedder always did).
- :class:`OnnxRuntimeRunner`: an exported ``.onnx`` graph in ONNX Runtime's CPU provider.
- :class:`OpenVinoRunner`: an ``.onnx`` graph or OpenVINO IR (``.xml``) compiled for OpenVINO's CPU plugin
  in fp32 (``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 units OpenVINO would otherwise run in bf16,
  measured at cosine 0.974 against PyTorch here).

Runners are used from one thread at a time (the service's encoder worker). Each uses as many
threads as PyTorch does (``torch.get_num_threads()``) unless told otherwise; ONNX Runtime's pools
do not spin between calls, so they never take cores from request handling or decoding.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from models.inference import BACKENDS


class Runner(Protocol):
    name: str  # "torch", "onnxruntime" or "openvino"
    precision: str  # "fp32" or "int8"
    default_chunk: int  # crops per call when the caller does not say

    def run(self, images: np.ndarray) -> np.ndarray: ...


def installed_backends() -> list[str]:
    """The backends whose runtime can be imported here (torch always)."""
    modules = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
    return [b for b in BACKENDS if importlib.util.find_spec(modules[b]) is not None]


def _threads(threads: int | None) -> int:
    return threads or torch.get_num_threads()


class TorchRunner:
    """Eager PyTorch on the module's device (the reference every other runner is checked against)."""

    name = "torch"
    precision = "fp32"

    def __init__(self, model: torch.nn.Module, device: torch.device, *, default_chunk: int | None = None) -> None:
        self.model = model
        self.device = device
        self.default_chunk = default_chunk or (256 if device.type == "cuda" else 8)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device)
        use_amp = self.device.type == "cuda"
        if use_amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=use_amp):
            out = self.model(x)
        return out.float().cpu().numpy()


class OnnxRuntimeRunner:
    """An ONNX graph in ONNX Runtime (CPU provider, all graph optimisations, no spinning threads), run as streams.

    Like OpenVINO's throughput hint: with ``threads`` cores the runner keeps one session whose pool has one thread
    and splits a batch into up to ``threads`` parts of at least 4 crops that run concurrently (ONNX Runtime
    releases the GIL inside ``run``, and a session may be run from several threads). The OSNet default's depthwise
    convolutions do not keep two cores busy from one call: on the development CPU, batch 32 of raw inputs ran at
    about 860 crops/s as two 1-thread streams against 730 with one 2-thread call (ad-hoc timing, same inputs).
    Smaller batches (a search's single crop) run in one call on a second session that uses every thread, so
    single-crop latency is what it was. Features are the same either way (the graph is per-crop)."""

    name = "onnxruntime"
    min_crops_per_stream = 4  # below this a call's fixed cost outweighs a second core

    def __init__(self, path: str | Path, *, threads: int | None = None, default_chunk: int = 32, precision: str = "fp32") -> None:
        self.streams = _threads(threads)
        self.session = _ort_session(path, self.streams)
        self.stream_session = _ort_session(path, 1) if self.streams > 1 else self.session
        self.input_name = self.session.get_inputs()[0].name
        self._pool = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="ort-stream") if self.streams > 1 else None
        self.default_chunk = default_chunk
        self.precision = precision

    def run(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        streams = min(self.streams, len(images) // self.min_crops_per_stream)
        if self._pool is None or streams < 2:
            return self._run(self.session, images)
        parts = np.array_split(images, streams)
        futures = [self._pool.submit(self._run, self.stream_session, np.ascontiguousarray(part)) for part in parts]
        wait(futures)  # every stream finishes before the call returns, even when one of them failed
        return np.concatenate([future.result() for future in futures])

    def _run(self, session: Any, images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {self.input_name: images})[0])


def _ort_session(path: str | Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OpenVinoRunner:
    """An ONNX graph or OpenVINO IR compiled for OpenVINO's CPU plugin (fp32 inference precision, throughput hint).

    The throughput hint compiles the model as several streams (OpenVINO picks how many: 2 on the 2-core
    development CPU), each with its own cores; a batch is split across the streams' infer requests and run
    concurrently. On the OSNet default this measured 2.4x the crops/s of the latency hint (one request
    using every core), whose depthwise convolutions do not keep two cores busy. A single crop runs on one
    stream."""

    name = "openvino"

    def __init__(self, path: str | Path, *, threads: int | None = None, default_chunk: int = 32, precision: str = "fp32") -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": _threads(threads),
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.requests = [self.compiled.create_infer_request() for _ in range(streams)]
        self.default_chunk = default_chunk
        self.precision = precision

    def run(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if len(images) == 0:
            return np.zeros((0, self.compiled.output(0).get_partial_shape()[1].get_length()), dtype=np.float32)
        parts = np.array_split(images, min(len(self.requests), len(images)))
        busy = self.requests[: len(parts)]
        started = []
        try:
            for request, part in zip(busy, parts, strict=True):
                request.start_async({0: part})
                started.append(request)
        finally:
            for request in started:  # every started request finishes before the next call, even after an error
                request.wait()
        return np.concatenate([np.array(request.get_output_tensor(0).data, copy=True) for request in busy])


def artifact_runner(backend: str, path: str | Path, *, threads: int | None = None, precision: str = "fp32") -> Runner:
    """The ``onnxruntime`` or ``openvino`` runner for an artifact file."""
    path = Path(path)
    if backend == "onnxruntime":
        if path.suffix != ".onnx":
            raise ValueError(f"ONNX Runtime runs .onnx graphs, not {path.name}")
        return OnnxRuntimeRunner(path, threads=threads, precision=precision)
    if backend == "openvino":
        return OpenVinoRunner(path, threads=threads, precision=precision)
    raise ValueError(f"no artifact runner for backend {backend!r}")
