"""Feature inversion: an attacker who knows the encoder and σ learns to turn released records back into crops.

The attacker encodes the public training split with the released encoder, adds the
mechanism's noise at the target σ (a fresh draw every epoch, as the gallery would hold),
and trains a convolutional decoder from (noisy) features to 128×64 RGB crops with a pixel
loss plus a perceptual loss on a fixed ImageNet network (never a Re-ID model, so the
judges that score the reconstructions stay independent of the attack).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("reid.attacks.inversion")

OUTPUT_SIZE = (128, 64)


class InversionDecoder(nn.Module):
    """Feature ``[N, D]`` → image ``[N, 3, 128, 64]`` in [0, 1].

    A linear seed map at 8×4, three ×2 upsampling conv blocks to 64×32, and a sub-pixel
    convolution (pixel shuffle) to 128×64: the full-resolution detail is learned without
    running convolutions at full resolution, which keeps the attack affordable on a CPU.
    """

    def __init__(self, *, embedding_dim: int, base_channels: int = 128) -> None:
        super().__init__()
        self.base = base_channels
        self.project = nn.Sequential(nn.Linear(embedding_dim, base_channels * 8 * 4), nn.ReLU(inplace=True))
        widths = [base_channels, base_channels // 2, base_channels // 4, base_channels // 8]
        blocks: list[nn.Module] = [nn.BatchNorm2d(base_channels)]
        for cin, cout in itertools.pairwise(widths):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        blocks += [nn.Conv2d(widths[-1], 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features).view(-1, self.base, 8, 4)
        return torch.sigmoid(self.body(x))


class PerceptualLoss(nn.Module):
    """L1 distance between early ImageNet MobileNetV2 feature maps (24 channels) of two image batches in [0, 1].

    Computed on the images at half resolution (64×32), which keeps the texture term while
    costing a quarter of a full-resolution pass; the target's features need no gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        from models.backbones import build_mobilenet_v2
        from models.data.transforms import normalize

        features, _ = build_mobilenet_v2(pretrained=True, last_stride=2)
        self.net = nn.Sequential(*list(features.children())[:4]).eval().requires_grad_(False)
        self.normalize = normalize

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(F.avg_pool2d(images01, 2)))

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.features(target)
        return F.l1_loss(self.features(reconstruction), target_features)


@dataclass(frozen=True)
class InversionConfig:
    """The attacker's training budget and losses."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    perceptual_weight: float = 1.0
    base_channels: int = 96
    seed: int = 0
    identity_weight: float = 0.0  # > 0: also match the attacked encoder's feature of the reconstruction (white box)


class EncoderIdentity(nn.Module):
    """The attacked encoder, frozen, as the attacker's identity loss: images in [0, 1] -> its L2-normalised features.

    The attacker knows the encoder (white box), so a reconstruction can be trained to have the feature of the crop it
    came from, not only its pixels: ``1 - cos(E(reconstruction), feature)``."""

    def __init__(self, checkpoint: str | Path) -> None:
        super().__init__()
        from models.checkpoint import load_encoder
        from models.data.transforms import normalize

        embedder = load_encoder(checkpoint, "cpu")
        self.encoder = embedder.model.eval().requires_grad_(False)
        self.input_size = embedder.input_size
        self.normalize = normalize

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = images01 if tuple(images01.shape[-2:]) == self.input_size else F.interpolate(images01, size=self.input_size, mode="bilinear")
        return F.normalize(self.encoder(self.normalize(x)), dim=1)


def _noisy(features: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """What the gallery stores: the clipped feature plus N(0, σ²) per coordinate."""
    clipped = features * (1.0 / features.norm(dim=1, keepdim=True).clamp_min(1.0))
    if sigma == 0:
        return clipped
    return clipped + sigma * torch.randn(features.shape, generator=generator, dtype=features.dtype)


def train_inversion(
    features: torch.Tensor,
    images_uint8: torch.Tensor,
    *,
    sigma: float,
    config: InversionConfig,
    perceptual: PerceptualLoss | None = None,
    identity: nn.Module | None = None,
) -> tuple[InversionDecoder, dict[str, float]]:
    """Train a decoder from released records (``features`` + noise at ``sigma``) to the crops they came from.

    ``images_uint8`` are the training crops at 128×64. With ``identity`` (an :class:`EncoderIdentity`) and
    ``config.identity_weight`` > 0 the loss also asks each reconstruction to have its crop's clean feature.
    Returns the decoder (eval mode) and training statistics (seconds, final losses).
    """
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        decoder = InversionDecoder(embedding_dim=features.shape[1], base_channels=config.base_channels)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(features.shape[0] / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
    )
    started = time.time()
    stats: dict[str, float] = {}
    decoder.train()
    for epoch in range(config.epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        released = _noisy(features, sigma, generator)
        sums = {"pixel": 0.0, "perceptual": 0.0, "identity": 0.0}
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            target = images_uint8[idx].float().div_(255)
            recon = decoder(released[idx])
            pixel = F.l1_loss(recon, target)
            loss = pixel
            if perceptual is not None and config.perceptual_weight > 0:
                perc = perceptual(recon, target)
                loss = loss + config.perceptual_weight * perc
                sums["perceptual"] += float(perc.detach())
            if identity is not None and config.identity_weight > 0:
                ident = 1 - (identity(recon) * F.normalize(features[idx], dim=1)).sum(dim=1).mean()
                loss = loss + config.identity_weight * ident
                sums["identity"] += float(ident.detach())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            sums["pixel"] += float(pixel.detach())
        stats = {k: v / steps_per_epoch for k, v in sums.items()}
        log.info(
            "inversion σ=%.4f epoch %d/%d pixel %.4f perceptual %.4f identity %.4f",
            *(sigma, epoch + 1, config.epochs, stats["pixel"], stats["perceptual"], stats["identity"]),
        )
    stats["seconds"] = time.time() - started
    return decoder.eval(), stats


@torch.no_grad()
def reconstruct(decoder: InversionDecoder, records: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Reconstructions of released records as uint8 ``[N, 3, 128, 64]``."""
    out = [decoder(records[s : s + batch_size]) for s in range(0, records.shape[0], batch_size)]
    return torch.cat(out).mul(255).round().clamp(0, 255).to(torch.uint8)


def psnr(a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> float:
    """Mean PSNR (dB) over a batch of uint8 images."""
    mse = (a_uint8.float() - b_uint8.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def ssim(a_uint8: torch.Tensor, b_uint8: torch.Tensor, window: int = 11, sigma: float = 1.5, chunk: int = 128) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian 11×11 window, σ = 1.5, per channel) over a batch of uint8 images."""
    if a_uint8.shape[0] > chunk:
        parts = [
            ssim(a_uint8[s : s + chunk], b_uint8[s : s + chunk], window, sigma, chunk) * len(a_uint8[s : s + chunk])
            for s in range(0, len(a_uint8), chunk)
        ]
        return sum(parts) / len(a_uint8)
    a, b = a_uint8.double() / 255, b_uint8.double() / 255
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())
