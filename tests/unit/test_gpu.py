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
