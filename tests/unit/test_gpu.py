"""CUDA paths (run where a GPU exists: `pytest -m gpu`); CI has none and skips them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_mixed_precision_gpu_features_match_cpu(tmp_path):
    from models.checkpoint import load_encoder, save_encoder
    from models.encoder import ReIDEncoder

    path = tmp_path / "enc.pt"
    save_encoder(ReIDEncoder(embedding_dim=64), path, {"backbone": "mobilenet_v2", "embedding_dim": 64, "input_size": [128, 64]})
    crops = torch.randint(0, 256, (16, 3, 128, 64), dtype=torch.uint8)
    cpu = load_encoder(path, "cpu").embed(crops)
    gpu = load_encoder(path, "cuda").embed(crops)
    assert np.min(np.sum(cpu * gpu, axis=1)) > 0.99  # fp16 autocast: cosine to the fp32 CPU feature


def test_noise_is_drawn_on_the_gpu():
    from models.privacy.mechanism import GaussianMechanism, PrivacyPolicy

    x = torch.nn.functional.normalize(torch.randn(8, 32, device="cuda"), dim=1)
    noisy, params = GaussianMechanism().release(x, PrivacyPolicy(epsilon=8.0))
    assert noisy.device.type == "cuda" and params.sigma > 0


def test_nvjpeg_decode_agrees_with_pil():
    import io

    from PIL import Image

    from app.services.images import ImageLimits, decode_crop, decode_jpeg_torch

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(24, 10, 3), dtype=np.uint8)).resize((100, 240), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    limits = ImageLimits(max_bytes=1 << 22, max_pixels=1 << 24, max_aspect=16.0)
    pil = decode_crop(buf.getvalue(), name="a", content_type="image/jpeg", limits=limits, size=(128, 64)).float()
    gpu = decode_jpeg_torch(buf.getvalue(), (128, 64), device="cuda")
    via_setting = decode_crop(buf.getvalue(), name="a", content_type="image/jpeg", limits=limits, size=(128, 64), decode="cuda")
    assert torch.equal(gpu, via_setting)
    assert (gpu.float() - pil).abs().mean() < 4.0
