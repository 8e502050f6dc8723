"""The fast evaluation transforms equal the slow reference ones they replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.data.transforms import eval_transform, normalize, pil_to_uint8, resize_batch, to_float


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A crop-like RGB image: smooth colour fields plus texture (not constant, so resizing is exercised)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 4, generator=g)
    field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    pixels = ((field * 0.8 + torch.rand(3, height, width, generator=g) * 0.2).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def pil_reference(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.int16).transpose(2, 0, 1)


@pytest.mark.parametrize(("width", "height", "tolerance"), [(64, 128, 0), (50, 97, 0), (128, 256, 0), (200, 400, 1), (173, 311, 1)])
def test_pil_to_uint8_reproduces_pil_bilinear(width: int, height: int, tolerance: int) -> None:
    img = smooth_image(width, height)
    ours = pil_to_uint8(img, (256, 128))
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == (3, 256, 128) and ours.is_contiguous()
    difference = np.abs(ours.numpy().astype(np.int16) - pil_reference(img, (256, 128)))
    assert difference.max() <= tolerance  # upscaling: the same pixels; downscaling: within one level


@pytest.mark.parametrize(("shape", "size"), [((4, 3, 256, 128), (256, 128)), ((4, 3, 100, 50), (256, 128)), ((4, 3, 300, 140), (128, 64))])
def test_eval_transform_equals_float_resize_normalise(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = normalize(resize_batch(to_float(batch), size))
    assert torch.allclose(eval_transform(batch, size), expected, atol=2e-6)


def test_eval_transform_leaves_a_float_input_as_it_was() -> None:
    batch = torch.rand(2, 3, 64, 32) * 255
    before = batch.clone()
    out = eval_transform(batch, (64, 32))
    assert torch.equal(batch, before) and not torch.equal(out, batch)
