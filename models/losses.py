"""Re-ID losses: label-smoothed identity cross-entropy, batch-hard triplet, and the noisy-gallery retrieval loss of noise-aware training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy with uniform label smoothing ``epsilon`` (Szegedy et al. 2016)."""

    def __init__(self, *, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances, margin ``margin``."""

    def __init__(self, *, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        dist = torch.cdist(x, x).clamp_min(1e-12)
        same = labels.view(-1, 1) == labels.view(1, -1)
        hardest_positive = torch.where(same, dist, torch.zeros_like(dist)).amax(1)
        hardest_negative = torch.where(same, torch.full_like(dist, float("inf")), dist).amin(1)
        return F.relu(hardest_positive - hardest_negative + self.margin).mean()


class NoisyGalleryLoss(nn.Module):
    """Retrieval loss with the Gaussian mechanism in the loop on the gallery side.

    Each feature of the batch is released as the gallery would store it (unit-norm feature
    plus N(0, σ²) per coordinate) and scored against every *clean* feature of the batch
    (the query side stays clean, as in the service). For each anchor, the loss is the
    negative log of the softmax mass on released features of its own identity (several
    positives), at temperature ``temperature``: it rewards margins that survive the noise.
    """

    def __init__(self, *, sigma: float, temperature: float = 0.1) -> None:
        super().__init__()
        self.sigma = sigma
        self.temperature = temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        clean = F.normalize(features.float(), dim=1)
        released = clean + self.sigma * torch.randn_like(clean)
        scores = clean @ released.t() / self.temperature
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        scores = scores.masked_fill(eye, float("-inf"))
        positive = (labels.view(-1, 1) == labels.view(1, -1)) & ~eye
        log_all = torch.logsumexp(scores, dim=1)
        log_pos = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=1)
        has_positive = positive.any(dim=1)
        return (log_all - log_pos)[has_positive].mean()
