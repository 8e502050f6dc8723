"""The Gaussian mechanism that releases features into a gallery.

Features are clipped to L2 norm C (they are L2-normalised already, so clipping is a
guard), which bounds the change from replacing one crop by Δ = 2C. Noise N(0, σ²) is
drawn independently per dimension and per record on the features' device, from a
generator seeded by the operating system's CSPRNG (``secrets``) unless a test passes
an explicit seed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass

import scipy
import torch

from models.privacy.gaussian import gaussian_sigma

MECHANISM_NAME = "analytic-gaussian"


@dataclass(frozen=True)
class NoiseParameters:
    """What one release used; stored beside every noisy record."""

    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float
    sigma: float
    clip_norm: float
    library: str

    @property
    def mu(self) -> float:
        """μ-GDP parameter of this release (Δ/σ); inf without noise."""
        return math.inf if self.sigma == 0 else self.sensitivity / self.sigma

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class PrivacyPolicy:
    """Per-record budget (ε, δ) and the clipping norm C; ε = inf means no noise."""

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (self.epsilon > 0):
            raise ValueError("epsilon must be > 0 (use inf for no noise)")
        if not (0 < self.delta < 1):
            raise ValueError("delta must be in (0, 1)")
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ValueError("clip_norm must be positive and finite")

    @property
    def sensitivity(self) -> float:
        return 2.0 * self.clip_norm

    def parameters(self) -> NoiseParameters:
        sigma = gaussian_sigma(self.epsilon, self.delta, self.sensitivity)
        return NoiseParameters(
            mechanism=MECHANISM_NAME if sigma > 0 else "none",
            epsilon=self.epsilon,
            delta=self.delta,
            sensitivity=self.sensitivity,
            sigma=sigma,
            clip_norm=self.clip_norm,
            library=f"reid-gallery models.privacy (scipy {scipy.__version__})",
        )


def clip_rows(features: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale rows whose L2 norm exceeds ``clip_norm`` down to it."""
    norms = features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return features * (clip_norm / norms).clamp(max=1.0)


class GaussianMechanism:
    """Releases feature batches under a :class:`PrivacyPolicy`."""

    def __init__(self, *, seed: int | None = None) -> None:
        # seed is a test hook; production generators are seeded from the OS CSPRNG.
        self._seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            seed = self._seed if self._seed is not None else secrets.randbits(63)
            self._generators[key] = torch.Generator(device=device).manual_seed(seed)
        return self._generators[key]

    def release(self, features: torch.Tensor, policy: PrivacyPolicy) -> tuple[torch.Tensor, NoiseParameters]:
        """Clip each row to C and add independent N(0, σ²) noise to every coordinate."""
        if features.ndim != 2:
            raise ValueError("features must be a [N, D] batch")
        params = policy.parameters()
        clipped = clip_rows(features.float(), policy.clip_norm)
        if params.sigma == 0:
            return clipped, params
        noise = torch.randn(clipped.shape, generator=self._generator(clipped.device), device=clipped.device, dtype=clipped.dtype)
        return clipped + params.sigma * noise, params
