"""Adv-ID module: an identity classifier on the decoder's reconstruction, behind a gradient reversal."""

from __future__ import annotations

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward."""
    return _ReverseGrad.apply(x, scale)  # type: ignore[no-any-return]


class IdentityAdversary(nn.Module):
    """Small CNN that predicts the training identity from an image in [0, 1]."""

    def __init__(self, *, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out_channels in (width, width * 2, width * 4, width * 4):
            layers += [
                nn.Conv2d(channels, out_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images01: torch.Tensor, *, reverse_scale: float = 1.0) -> torch.Tensor:
        """Logits; gradients flowing back into ``images01`` are reversed and scaled."""
        return self.classifier(self.body(reverse_gradient(images01, reverse_scale)))
