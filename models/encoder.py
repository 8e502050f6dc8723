"""The deployed Re-ID encoder: backbone, global pooling, embedding, BNNeck.

This module is everything that ships; the classifier, De-ID decoder and Adv-ID adversary
live in the training wrapper (``models.stage_one``) and never enter a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import build_backbone

FEATURE_DOMAINS = ("signed", "nonnegative")


def output_domain(feature_domain: str, split_sign: bool) -> str:
    """Where an encoder's emitted features lie: ``nonnegative`` (sensitivity √2·C) or ``signed`` (2·C)."""
    return "nonnegative" if split_sign or feature_domain == "nonnegative" else "signed"


class EmittedFeature:
    """The end of every deployed encoder's graph: an optional fixed projection head, then optional split signs."""

    embedding_dim: int
    feature_domain: str
    projection: nn.Linear | None
    split_sign: bool
    feature_dim: int

    def _head(self, projection_dim: int | None, split_sign: bool) -> None:
        """The head after ``embedding_dim`` normalised coordinates: a projection to ``projection_dim`` (a ``Linear``
        without bias, fitted later by ``attach_projection`` or loaded) and split signs."""
        self.projection = nn.Linear(self.embedding_dim, projection_dim, bias=False) if projection_dim else None
        self.split_sign = split_sign
        self.feature_dim = (projection_dim or self.embedding_dim) * (2 if split_sign else 1)

    @property
    def output_domain(self) -> str:
        """Where emitted features lie: ``nonnegative`` (sensitivity √2·C) or ``signed`` (2·C)."""
        return output_domain(self.feature_domain, self.split_sign)

    def attach_projection(self, weight: torch.Tensor) -> None:
        """Add a fixed head of ``weight`` ``[projection_dim, embedding_dim]`` (``models.projection``)."""
        self.projection = nn.Linear(self.embedding_dim, weight.shape[0], bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(weight)
        self.feature_dim = int(weight.shape[0]) * (2 if self.split_sign else 1)

    def emitted(self, feature: torch.Tensor) -> torch.Tensor:
        """Apply the projection head (if any) to normalised features and normalise again."""
        return feature if self.projection is None else F.normalize(self.projection(feature), dim=1)

    def encode_sign(self, feature: torch.Tensor) -> torch.Tensor:
        """``[relu(f), relu(-f)]`` with ``split_sign`` (norm and information kept), else ``f``."""
        return torch.cat([F.relu(feature), F.relu(-feature)], dim=1) if self.split_sign else feature


class ReIDEncoder(EmittedFeature, nn.Module):
    """Backbone -> GAP -> linear embedding -> BNNeck.

    ``forward`` returns L2-normalised BNNeck features in eval mode and the raw BNNeck output in
    training mode; ``forward_train`` returns ``(pre_bn, post_bn)`` (triplet loss on the first,
    classifier on the second).
    With ``flip_average`` the eval-mode feature is that of the crop plus that of its
    mirror image (the usual Re-ID test-time flip; twice the inference cost).

    ``feature_domain="nonnegative"`` passes the BNNeck output through a ReLU before
    normalising (the BNNeck bias then trains): every feature lies in the non-negative
    orthant, where two unit vectors are at most √2 apart instead of 2, which is what the
    privacy mechanism's sensitivity can then use (``models.privacy.mechanism``).

    ``split_sign`` emits ``[relu(f), relu(-f)]`` of the (projected, normalised) feature ``f``: the
    same unit norm and the same information (``f`` is the first half minus the second), but every
    coordinate is non-negative, so the emitted features lie in the orthant where the mechanism's
    sensitivity is √2 instead of 2 (``output_domain``). Its cosines differ from ``f``'s; search over
    noisy records scores them with a noise-aware likelihood (``models.evaluation.likelihood``).

    ``projection_dim`` adds a fixed linear head after normalising (``models.projection``: a
    discriminant projection fitted on the public training split) and normalises again: the
    emitted feature then has ``feature_dim = projection_dim`` coordinates. The head puts the
    feature's unit norm, which is what the privacy mechanism's noise is measured against, into
    the directions that separate identities.
    """

    def __init__(
        self,
        *,
        backbone: str = "mobilenet_v2",
        embedding_dim: int = 512,
        pretrained: bool = False,
        backbone_weights: str | None = None,
        last_stride: int = 1,
        flip_average: bool = False,
        feature_domain: str = "signed",
        projection_dim: int | None = None,
        split_sign: bool = False,
    ) -> None:
        super().__init__()
        if feature_domain not in FEATURE_DOMAINS:
            raise ValueError(f"feature_domain must be one of {FEATURE_DOMAINS}")
        self.feature_domain = feature_domain
        self.backbone_name = backbone
        self.flip_average = flip_average
        self.embedding_dim = embedding_dim
        self.backbone, channels = build_backbone(backbone, pretrained=pretrained, weights_path=backbone_weights, last_stride=last_stride)
        self.embedding = nn.Linear(channels, embedding_dim, bias=False)
        if channels == embedding_dim:
            nn.init.eye_(self.embedding.weight)  # a backbone that ends in a feature head (OSNet) starts with its own feature
        else:
            nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
        self.bnneck = nn.BatchNorm1d(embedding_dim)
        self.bnneck.bias.requires_grad_(feature_domain == "nonnegative")
        nn.init.constant_(self.bnneck.weight, 1.0)
        nn.init.constant_(self.bnneck.bias, 0.0)
        self._head(projection_dim, split_sign)

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pre-BN embedding, post-BN embedding)."""
        maps = self.backbone(images)
        pooled = F.adaptive_avg_pool2d(maps, 1).flatten(1)
        pre_bn = self.embedding(pooled)
        return pre_bn, self.bnneck(pre_bn)

    def deploy(self, post_bn: torch.Tensor) -> torch.Tensor:
        """What the deployed encoder emits for a BNNeck output: (ReLU in the non-negative domain, then) L2-normalised."""
        x = post_bn.float()
        if self.feature_domain == "nonnegative":
            x = F.relu(x)
        return F.normalize(x, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _, post_bn = self.forward_train(images)
        if self.training:
            return post_bn
        feature = self.emitted(self.deploy(post_bn))
        if self.flip_average:
            feature = F.normalize(feature + self.emitted(self.deploy(self.forward_train(images.flip(3))[1])), dim=1)
        return self.encode_sign(feature)


class EnsembleEncoder(EmittedFeature, nn.Module):
    """Trained encoders side by side. Each member sees the crop at its own input size (resized in the graph, bilinear,
    from the ensemble's input), the members' unit features are concatenated with equal weight and normalised, and the
    projection head and split signs follow as in :class:`ReIDEncoder`. Members are signed single-view encoders without
    a head of their own; the ensemble is never trained, only assembled (``reid-project`` with several checkpoints)."""

    def __init__(
        self,
        members: list[ReIDEncoder],
        member_sizes: list[tuple[int, int]],
        *,
        projection_dim: int | None = None,
        split_sign: bool = False,
    ) -> None:
        super().__init__()
        if len(members) < 2 or len(member_sizes) != len(members):
            raise ValueError("an ensemble needs two or more members, each with its input size")
        if any(m.projection is not None or m.split_sign or m.flip_average or m.output_domain != "signed" for m in members):
            raise ValueError("ensemble members must be signed single-view encoders without a projection head")
        self.members = nn.ModuleList(members)
        self.member_sizes = [(int(h), int(w)) for h, w in member_sizes]
        self.feature_domain = "signed"
        self.flip_average = False
        self.embedding_dim = sum(m.feature_dim for m in members)
        self._head(projection_dim, split_sign)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = []
        for member, size in zip(self.members, self.member_sizes, strict=True):
            x = images if tuple(images.shape[-2:]) == size else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            parts.append(F.normalize(member(x), dim=1))  # a member in eval mode emits unit features already
        return self.encode_sign(self.emitted(F.normalize(torch.cat(parts, dim=1), dim=1)))
