"""De-ID decoder: reconstructs an obfuscated (by default pixelated) crop from the feature."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def pixelate(images: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Block-average then nearest-neighbour upsample (sizes need not divide ``block``)."""
    h, w = images.shape[-2:]
    small = F.adaptive_avg_pool2d(images, (max(1, h // block), max(1, w // block)))
    return F.interpolate(small, size=(h, w), mode="nearest")


def gaussian_blur(images: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding."""
    radius = max(1, round(3 * sigma))
    xs = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(xs**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def additive_noise(images: torch.Tensor, std: float = 0.2) -> torch.Tensor:
    """Additive Gaussian pixel noise, clamped to [0, 1]."""
    return (images + std * torch.randn_like(images)).clamp(0, 1)


TARGETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pixelate": pixelate,
    "clean": lambda x: x,
    "blur": gaussian_blur,
    "noise": additive_noise,
}


def obfuscation_target(kind: str, images01: torch.Tensor, *, block: int = 8, blur_sigma: float = 3.0) -> torch.Tensor:
    """The decoder's reconstruction target for images in [0, 1]."""
    if kind == "pixelate":
        return pixelate(images01, block)
    if kind == "blur":
        return gaussian_blur(images01, blur_sigma)
    if kind in TARGETS:
        return TARGETS[kind](images01)
    raise ValueError(f"unknown De-ID target {kind!r}; choose from {sorted(TARGETS)}")


class DeIDDecoder(nn.Module):
    """Feature vector -> image in [0, 1] at a quarter of the input resolution.

    Reconstructing at (H/4, W/4) keeps the decoder cheap on CPU; targets are
    area-downsampled to the same size (see :func:`downsample_target`).
    """

    def __init__(self, *, embedding_dim: int = 512, input_size: tuple[int, int] = (128, 64), base_channels: int = 64) -> None:
        super().__init__()
        self.output_size = (max(1, input_size[0] // 4), max(1, input_size[1] // 4))
        self.start = (max(1, self.output_size[0] // 8), max(1, self.output_size[1] // 8))
        self.base = base_channels
        self.project = nn.Linear(embedding_dim, base_channels * 4 * self.start[0] * self.start[1])
        layers: list[nn.Module] = []
        channels = base_channels * 4
        for out_channels in (base_channels * 2, base_channels, base_channels // 2):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        layers += [nn.Conv2d(channels, 3, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features).view(-1, self.base * 4, *self.start)
        x = torch.sigmoid(self.body(x))
        if tuple(x.shape[-2:]) != tuple(self.output_size):
            x = F.interpolate(x, size=self.output_size, mode="bilinear", align_corners=False)
        return x


def downsample_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample a full-size target to the decoder's output size."""
    return F.adaptive_avg_pool2d(target, size)
