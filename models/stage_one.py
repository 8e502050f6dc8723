"""Training-only wrapper around the encoder: classifier, De-ID decoder and Adv-ID adversary.

``StageOneModel.forward`` returns a dict of named losses. Only ``model.encoder`` is
exported; the other parts stay in training checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.adversary import IdentityAdversary, reverse_gradient
from models.decoder import DeIDDecoder, downsample_target, obfuscation_target
from models.encoder import ReIDEncoder
from models.losses import BatchHardTripletLoss, LabelSmoothingCrossEntropy, NoisyGalleryLoss


@dataclass(frozen=True)
class StageOneConfig:
    """What the privacy parts of stage one do and how much they weigh."""

    decoder_target: str | None = "pixelate"  # None, "pixelate", "clean", "blur", "noise"
    pixel_block: int = 8
    blur_sigma: float = 3.0
    recon_loss: str = "l1"  # "l1" or "mse"
    recon_weight: float = 1.0
    adv_weight: float = 0.0  # 0 disables the Adv-ID module
    adv_input: str = "reconstruction"  # "reconstruction" (needs a decoder) or "feature"
    inversion_weight: float = 0.0  # > 0: an inversion adversary reconstructs the clean crop; the encoder gets its reversed gradient
    noise_sigma: float = 0.0  # > 0: noise-aware training, a retrieval loss against features released at this σ
    noise_weight: float = 1.0
    noise_temperature: float = 0.1
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3


class FeatureAdversary(nn.Module):
    """Identity classifier on the feature itself, behind a gradient reversal (ablation row e)."""

    def __init__(self, *, embedding_dim: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor, *, reverse_scale: float = 1.0) -> torch.Tensor:
        return self.net(reverse_gradient(features, reverse_scale))


class StageOneModel(nn.Module):
    """Encoder + BNNeck classifier (+ De-ID decoder) (+ Adv-ID adversary)."""

    def __init__(self, *, encoder: ReIDEncoder, num_classes: int, input_size: tuple[int, int], config: StageOneConfig) -> None:
        super().__init__()
        if config.adv_weight > 0 and config.adv_input == "reconstruction" and config.decoder_target is None:
            raise ValueError("an Adv-ID adversary on reconstructions needs a decoder target")
        self.config = config
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.embedding_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.decoder = DeIDDecoder(embedding_dim=encoder.embedding_dim, input_size=input_size) if config.decoder_target is not None else None
        self.adversary: nn.Module | None = None
        if config.adv_weight > 0:
            self.adversary = (
                IdentityAdversary(num_classes=num_classes)
                if config.adv_input == "reconstruction"
                else FeatureAdversary(embedding_dim=encoder.embedding_dim, num_classes=num_classes)
            )
        # The inversion adversary learns to reconstruct the *clean* crop from the feature; the gradient
        # reversal makes the encoder work against it, while the De-ID decoder keeps the pixelated view.
        self.inversion = DeIDDecoder(embedding_dim=encoder.embedding_dim, input_size=input_size) if config.inversion_weight > 0 else None
        self.id_loss = LabelSmoothingCrossEntropy(epsilon=config.label_smoothing)
        self.triplet_loss = BatchHardTripletLoss(margin=config.triplet_margin)
        self.noisy_gallery_loss = NoisyGalleryLoss(sigma=config.noise_sigma, temperature=config.noise_temperature) if config.noise_sigma > 0 else None

    def forward(self, images: torch.Tensor, clean01: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named losses for one batch; ``total`` is what the optimiser minimises.

        ``images`` is the augmented, normalised network input; ``clean01`` the same
        geometric augmentation without erasing, in [0, 1], from which targets are made.
        """
        cfg = self.config
        pre_bn, post_bn = self.encoder.forward_train(images)
        losses: dict[str, torch.Tensor] = {
            "id": self.id_loss(self.classifier(post_bn), labels),
            "triplet": self.triplet_loss(pre_bn, labels),
        }
        total = losses["id"] + losses["triplet"]
        feature = self.encoder.deploy(post_bn)  # exactly what the deployed encoder emits
        if self.noisy_gallery_loss is not None:
            losses["noisy"] = self.noisy_gallery_loss(feature, labels)
            total = total + cfg.noise_weight * losses["noisy"]
        reconstruction = None
        if self.decoder is not None and cfg.decoder_target is not None:
            reconstruction = self.decoder(feature)
            with torch.no_grad():
                target = obfuscation_target(cfg.decoder_target, clean01, block=cfg.pixel_block, blur_sigma=cfg.blur_sigma)
                target = downsample_target(target, self.decoder.output_size)
            rec = F.l1_loss if cfg.recon_loss == "l1" else F.mse_loss
            losses["recon"] = rec(reconstruction.float(), target.float())
            total = total + cfg.recon_weight * losses["recon"]
        if self.adversary is not None:
            adv_in = reconstruction if cfg.adv_input == "reconstruction" else feature
            assert adv_in is not None
            logits = self.adversary(adv_in, reverse_scale=cfg.adv_weight)
            # The adversary minimises this; the reversal makes encoder and decoder maximise it.
            losses["adv"] = F.cross_entropy(logits.float(), labels)
            total = total + losses["adv"]
        if self.inversion is not None:
            inverted = self.inversion(reverse_gradient(feature, cfg.inversion_weight))
            with torch.no_grad():
                clean_target = downsample_target(clean01, self.inversion.output_size)
            losses["inv"] = F.l1_loss(inverted.float(), clean_target.float())
            total = total + losses["inv"]
        losses["total"] = total
        return losses
