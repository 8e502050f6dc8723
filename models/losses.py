"""Re-ID losses: label-smoothed identity cross-entropy and batch-hard triplet."""

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
