"""Serving backends: every runtime's features equal PyTorch's (cosine ≥ 0.9999; INT8 ≥ 0.99) on real crops, for the
shipped model, a tiny random MobileNetV2 (with and without flip averaging) and a random OSNet x0.25; the choice at load."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import Embedder, load_encoder, save_encoder
from models.encoder import ReIDEncoder
from models.inference.export import export, read_artifact_metadata
from models.inference.runners import installed_backends
from models.inference.select import PARITY_FP32, PARITY_INT8, build_runner, min_cosine, select_backend, with_runner
from tests.conftest import SHARED_DATA

RUNTIMES = [b for b in ("onnxruntime", "openvino") if b in installed_backends()]
pytestmark = pytest.mark.skipif(not RUNTIMES, reason="neither onnxruntime nor openvino is installed")


def crops(size: tuple[int, int], count: int = 12) -> torch.Tensor:
    """Real query crops from the shared split when present (at their stored size; the embedder resizes), else skip."""
    from models.data.transforms import load_images

    paths = sorted((SHARED_DATA / "query").glob("*.jpg"))[::97][:count]
    if len(paths) < count:
        pytest.skip(f"shared CUHK03 crops not found under {SHARED_DATA}")
    return load_images(paths, size)


def tiny(tmp_path: Path, *, backbone: str = "mobilenet_v2", size: tuple[int, int] = (64, 32), flip: bool = False, dim: int = 32) -> Embedder:
    torch.manual_seed(0)
    encoder = ReIDEncoder(backbone=backbone, embedding_dim=dim, flip_average=flip)
    with torch.no_grad():  # running statistics as after some training, so activations neither vanish nor explode
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    meta = {"backbone": backbone, "embedding_dim": dim, "input_size": list(size), "flip_average": flip, "name": f"tiny-{backbone}"}
    save_encoder(encoder, tmp_path / f"{backbone}-{flip}.pt", meta)
    return load_encoder(tmp_path / f"{backbone}-{flip}.pt")


def shipped() -> Embedder:
    from models import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("no shipped checkpoint")
    return load_encoder(DEFAULT_CHECKPOINT)


def assert_parity(embedder: Embedder, backend: str, tmp_path: Path, images: torch.Tensor, threshold: float = PARITY_FP32) -> float:
    runner = build_runner(embedder, backend, artifact=None, workdir=tmp_path)
    cosine = min_cosine(embedder.embed(images), with_runner(embedder, runner).embed(images))
    assert cosine >= threshold, f"{backend}: min cosine {cosine}"
    return cosine


@pytest.mark.parametrize("backend", RUNTIMES)
def test_shipped_model_matches_pytorch_on_real_crops(backend: str, tmp_path: Path) -> None:
    embedder = shipped()
    assert_parity(embedder, backend, tmp_path, crops(embedder.input_size))


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip_average"])
def test_tiny_mobilenet_matches_pytorch_with_and_without_flip_averaging(backend: str, flip: bool, tmp_path: Path) -> None:
    embedder = tiny(tmp_path, flip=flip)
    images = crops((128, 64))
    assert_parity(embedder, backend, tmp_path, images)
    if flip:  # the exported graph averages crop and mirror: a crop and its mirror embed alike
        runner = build_runner(embedder, backend, artifact=None, workdir=tmp_path)
        served = with_runner(embedder, runner)
        assert min_cosine(served.embed(images), served.embed(images.flip(3))) > 0.9999


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed")
def test_openvino_splits_a_batch_over_its_streams_without_changing_any_row(tmp_path: Path) -> None:
    embedder = tiny(tmp_path)
    runner = build_runner(embedder, "openvino", artifact=None, workdir=tmp_path)
    if len(runner.requests) < 2:  # type: ignore[attr-defined]
        pytest.skip("OpenVINO chose one stream on this CPU: nothing to split")
    x = torch.randn(7, 3, 64, 32).numpy()
    whole = runner.run(x)
    assert whole.shape == (7, 32) and runner.run(x[:0]).shape == (0, 32)
    one_by_one = np.concatenate([runner.run(x[i : i + 1]) for i in range(7)])
    assert np.allclose(whole, one_by_one, atol=1e-5)


@pytest.mark.skipif("onnxruntime" not in RUNTIMES, reason="ONNX Runtime not installed")
def test_onnxruntime_streams_split_a_batch_without_changing_any_row(tmp_path: Path) -> None:
    from models.inference.export import export_onnx
    from models.inference.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(export_onnx(tiny(tmp_path), tmp_path / "tiny.onnx"), threads=3)
    calls: list[tuple[int, bool]] = []  # (crops, on the one-thread stream session)
    original = runner._run
    runner._run = lambda session, images: calls.append((len(images), session is runner.stream_session)) or original(session, images)  # type: ignore[method-assign]
    assert runner.stream_session is not runner.session
    x = torch.randn(13, 3, 64, 32).numpy()
    whole = runner.run(x)
    assert sorted(calls) == [(4, True), (4, True), (5, True)]  # three streams of at least four crops each
    calls.clear()
    assert runner.run(x[:7]).shape == (7, 32) and calls == [(7, False)]  # too few crops for two streams: one call, every thread
    assert runner.run(x[:0]).shape == (0, 32)
    one_by_one = np.concatenate([original(runner.session, x[i : i + 1]) for i in range(13)])
    assert np.allclose(whole, one_by_one, atol=1e-5)


@pytest.mark.parametrize("backend", RUNTIMES)
def test_random_osnet_exports_and_matches_pytorch(backend: str, tmp_path: Path) -> None:
    embedder = tiny(tmp_path, backbone="osnet_x0_25", size=(128, 64), dim=512)
    assert_parity(embedder, backend, tmp_path, crops((128, 64), count=6))


def mobilenet_192x96() -> Embedder:
    path = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "stage1_mobilenetv2_192x96.pt"
    if not path.is_file():
        pytest.skip("no MobileNetV2 192x96 checkpoint")
    return load_encoder(path)


def test_int8_export_is_close_and_served_only_within_parity(tmp_path: Path) -> None:
    """Static INT8 of the MobileNetV2 192x96 model lands at the parity bar (min cosine about 0.990 on onnxruntime,
    0.9895 on OpenVINO, measured here): the features stay close, and a runtime serves them only at >= 0.99."""
    from models.inference.quantize import calibration_crops

    if "onnxruntime" not in RUNTIMES:
        pytest.skip("INT8 quantisation needs onnxruntime")
    embedder = mobilenet_192x96()
    images = crops(embedder.input_size)
    calibration = calibration_crops(SHARED_DATA, embedder.input_size, count=32)  # training split: never the crops checked
    graph = export(embedder, "onnx", tmp_path / "int8.onnx", int8=True, calibration=calibration, float_convs=6)
    meta = read_artifact_metadata(graph)
    assert meta["precision"] == "int8" and meta["checkpoint_sha256"] == embedder.sha256 and meta["float_convs"] == "6"
    reference = embedder.embed(images)
    artifacts = [("onnxruntime", graph)]
    if "openvino" in RUNTIMES:
        from models.inference.export import onnx_to_openvino

        ir = tmp_path / "int8.xml"
        onnx_to_openvino(graph, ir)
        assert read_artifact_metadata(ir)["precision"] == "int8"
        artifacts.append(("openvino", ir))
    for backend, artifact in artifacts:
        runner = build_runner(embedder, backend, artifact=artifact, workdir=tmp_path)
        assert runner.precision == "int8"
        cosine = min_cosine(reference, with_runner(embedder, runner).embed(images))
        assert cosine >= 0.98, f"{backend}: INT8 features far from fp32 (min cosine {cosine})"
        try:  # served only if its own parity check (other crops) reaches the INT8 bar
            served = select_backend(embedder, backend, artifact)
        except RuntimeError as refused:
            assert "differ from PyTorch" in str(refused) and f"< {PARITY_INT8}" in str(refused)
            continue
        assert served.runner is not None and served.runner.precision == "int8"


def test_int8_artifact_that_loses_parity_is_refused(tmp_path: Path) -> None:
    """The shipped OSNet x0.25 loses too much under static INT8 (measured min cosine about 0.81): serving refuses it."""
    from models.inference.quantize import calibration_crops

    if "onnxruntime" not in RUNTIMES:
        pytest.skip("INT8 quantisation needs onnxruntime")
    path = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "stage1_osnet_x0_25_256x128_lda48_split.pt"
    if not path.is_file():
        pytest.skip("no OSNet x0.25 checkpoint")
    embedder = load_encoder(path)
    crops(embedder.input_size)  # skips without the shared split, whose training crops calibrate the quantiser
    calibration = calibration_crops(SHARED_DATA, embedder.input_size, count=32)
    graph = export(embedder, "onnx", tmp_path / "int8.onnx", int8=True, calibration=calibration, float_convs=6)
    with pytest.raises(RuntimeError, match="differ from PyTorch"):
        select_backend(embedder, "onnxruntime", graph)


def test_openvino_ir_keeps_provenance_and_a_foreign_artifact_is_refused(tmp_path: Path) -> None:
    if "openvino" not in RUNTIMES:
        pytest.skip("openvino not installed")
    embedder = tiny(tmp_path)
    ir = export(embedder, "openvino", tmp_path / "enc.xml")
    meta = read_artifact_metadata(ir)
    assert meta["checkpoint_sha256"] == embedder.sha256 and meta["input_size"] == "64x32" and meta["precision"] == "fp32"
    assert (tmp_path / "enc.bin").is_file()
    served = select_backend(embedder, "openvino", ir)
    assert served.backend == "openvino" and served.sha256 == embedder.sha256
    other = tiny(tmp_path / "other", flip=True)
    with pytest.raises(ValueError, match="exported from checkpoint"):
        select_backend(other, "openvino", ir)


def test_auto_picks_a_matching_backend_and_reports_what_it_tried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedder = tiny(tmp_path)
    report: dict[str, object] = {}
    with caplog.at_level(logging.INFO, logger="reid.inference"):
        served = select_backend(embedder, "auto", report=report)
    assert served.backend == report["chosen"] and served.backend in {"torch", *RUNTIMES}
    assert "encoder backend:" in caplog.text
    for name in RUNTIMES:
        assert report[name]["parity_min_cosine"] >= PARITY_FP32  # type: ignore[index]
    images = crops((64, 32), count=4)
    assert min_cosine(embedder.embed(images), served.embed(images)) >= PARITY_FP32


def test_a_runtime_that_does_not_match_is_refused_when_configured_and_skipped_by_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.inference import runners

    class Wrong:
        name, precision, default_chunk = "onnxruntime", "fp32", 8

        def run(self, images: np.ndarray) -> np.ndarray:
            return np.random.default_rng(0).normal(size=(images.shape[0], 32)).astype(np.float32)

    monkeypatch.setattr(runners, "installed_backends", lambda: ["torch", "onnxruntime"])
    monkeypatch.setattr("models.inference.select.installed_backends", lambda: ["torch", "onnxruntime"])
    monkeypatch.setattr("models.inference.select.artifact_runner", lambda *a, **k: Wrong())
    embedder = tiny(tmp_path)
    with pytest.raises(RuntimeError, match="differ from PyTorch"):
        select_backend(embedder, "onnxruntime")
    report: dict[str, object] = {}
    assert select_backend(embedder, "auto", report=report).backend == "torch"
    assert report["chosen"] == "torch"


def test_service_settings_and_loader_take_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.config import Settings
    from app.services.embedding import load_embedder

    monkeypatch.setenv("REID_ENCODER_BACKEND", RUNTIMES[0])
    monkeypatch.setenv("REID_ENCODER_ARTIFACT", str(tmp_path / "enc.onnx"))
    settings = Settings()
    assert settings.encoder_backend == RUNTIMES[0] and settings.encoder_artifact == tmp_path / "enc.onnx"
    embedder = tiny(tmp_path)
    export(embedder, "onnx", tmp_path / "enc.onnx")
    checkpoint = tmp_path / "mobilenet_v2-False.pt"
    served = load_embedder(checkpoint, device="cpu", allow_untrained=False, backend=settings.encoder_backend, artifact=settings.encoder_artifact)
    assert served.backend == RUNTIMES[0]
    assert load_embedder(checkpoint, device="cpu", allow_untrained=False, backend="torch").backend == "torch"
    monkeypatch.setenv("REID_ENCODER_BACKEND", "tensorrt")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize("backend", RUNTIMES)
def test_an_ensemble_with_a_split_sign_head_exports_and_matches_pytorch(backend: str, tmp_path: Path) -> None:
    """The default's shape: two members at different input sizes (one resized in the graph), a head, split signs."""
    from models.checkpoint import file_sha256
    from models.encoder import EnsembleEncoder

    members = [tiny(tmp_path, size=(64, 32)), tiny(tmp_path, backbone="osnet_x0_25", size=(128, 64), dim=512)]
    torch.manual_seed(1)
    ensemble = EnsembleEncoder([m.model for m in members], [m.input_size for m in members], projection_dim=8, split_sign=True)  # type: ignore[misc]
    files = [tmp_path / "mobilenet_v2-False.pt", tmp_path / "osnet_x0_25-False.pt"]
    meta = {
        "backbone": "ensemble",
        "input_size": [128, 64],
        "embedding_dim": 544,
        "projection": {"dim": 8},
        "split_sign": True,
        "name": "tiny-ensemble",
    }
    meta["members"] = [{"file": f.name, "sha256": file_sha256(f), "input_size": list(m.input_size)} for f, m in zip(files, members, strict=True)]
    save_encoder(ensemble, tmp_path / "ensemble.pt", meta)
    embedder = load_encoder(tmp_path / "ensemble.pt")
    assert_parity(embedder, backend, tmp_path, crops((128, 64), count=6))
