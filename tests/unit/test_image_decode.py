"""REID_IMAGE_DECODE: the torchvision JPEG path (nvJPEG on CUDA) agrees with PIL's, and without CUDA the service decodes on the CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.errors import InvalidImage
from app.services import images
from app.services.images import ImageLimits, decode_crop, decode_jpeg_torch

LIMITS = ImageLimits(max_bytes=5 * 1024 * 1024, max_pixels=4096 * 4096)


def jpeg(width: int = 60, height: int = 150, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 10, width // 10, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_without_cuda_the_cuda_setting_decodes_on_the_cpu_exactly_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "cuda_decode_available", lambda: False)
    data = jpeg()
    cpu = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64))
    asked_cuda = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")
    assert torch.equal(cpu, asked_cuda) and cpu.dtype == torch.uint8 and cpu.shape == (3, 128, 64)


def test_torchvision_jpeg_path_agrees_with_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code the CUDA path runs, on the CPU device: same size and type, pixels within JPEG-decoder differences."""
    data = jpeg(width=100, height=240)
    pil = decode_crop(data, name="a", content_type="image/jpeg", limits=LIMITS, size=(128, 64)).float()
    tv = decode_jpeg_torch(data, (128, 64), device="cpu")
    assert tv.dtype == torch.uint8 and tv.shape == (3, 128, 64) and tv.device.type == "cpu"
    assert (tv.float() - pil).abs().mean() < 4.0  # PIL's draft mode decodes at reduced scale; both then filter bilinearly


def test_cuda_path_still_validates_and_names_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(images, "cuda_decode_available", lambda: True)
    monkeypatch.setattr(images, "decode_jpeg_torch", lambda data, size, device: calls.append(device) or torch.zeros(3, *size, dtype=torch.uint8))
    decode_crop(jpeg(), name="ok", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")
    assert calls == ["cuda"]
    png = io.BytesIO()
    Image.new("RGB", (20, 40)).save(png, format="PNG")
    decode_crop(png.getvalue(), name="png", content_type="image/png", limits=LIMITS, size=(128, 64), decode="cuda")
    assert calls == ["cuda"]  # only JPEG goes to nvJPEG
    with pytest.raises(InvalidImage, match="bad"):
        decode_crop(b"\xff\xd8\xff" + b"0" * 50, name="bad", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")


def test_a_corrupt_jpeg_body_is_an_invalid_image_on_the_torchvision_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "cuda_decode_available", lambda: True)
    real = images.decode_jpeg_torch
    monkeypatch.setattr(images, "decode_jpeg_torch", lambda data, size, device: real(data, size, device="cpu"))
    data = jpeg()
    broken = data[:200] + bytes(len(data) - 400) + data[-200:]
    try:
        decode_crop(broken, name="broken", content_type="image/jpeg", limits=LIMITS, size=(128, 64), decode="cuda")
    except InvalidImage as exc:
        assert "broken" in exc.message
