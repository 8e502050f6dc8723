"""The Gaussian mechanism that releases features into a gallery.

Features are clipped to L2 norm C (they are L2-normalised already, so clipping is a
guard), which bounds the change from replacing one crop by Δ = 2C. In the ``nonnegative``
domain (an encoder whose features have no negative coordinate, e.g. ``split_sign``) negative
coordinates are first set to 0 — a guard again — and two such vectors of norm ≤ C are at most
√2·C apart (their dot product is ≥ 0), so Δ = √2·C. Noise N(0, σ²) is
drawn independently per dimension and per record from a cryptographically secure source
(see :mod:`models.privacy.noise`: a ChaCha20 keystream under a fresh key from the operating
system for every release, turned into Gaussians by Box–Muller in float64). Clipping, noise
and their sum are computed in float64; the result is cast to float32 at the end.

``release_pooled`` releases the *mean* of n clipped features of one track instead (the DP mean): replacing one of
them moves the mean by at most Δ/n, so noise σ/n gives every record the same (ε, δ) as a release of its own, and the
mean carries n times less noise instead of √n times less. What weakens is the guarantee for the whole track (all n
records changed): μ = n·Δ/σ instead of √n·Δ/σ for n separate releases (``NoiseParameters.group_mu``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from dataclasses import replace as dataclasses_replace

import numpy as np
import scipy
import torch

from models.privacy.gaussian import gaussian_sigma
from models.privacy.noise import NOISE_SOURCE, SEEDED_SOURCE, NoiseStream

MECHANISM_NAME = "analytic-gaussian"
DOMAINS = ("signed", "nonnegative")


def sensitivity_for(domain: str, clip_norm: float = 1.0) -> float:
    """L2 sensitivity of replacing one clipped feature: 2C, or √2·C in the non-negative orthant."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return (math.sqrt(2.0) if domain == "nonnegative" else 2.0) * clip_norm


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
    pooled: int = 1  # records whose mean this release is (1: one record's feature)

    @property
    def mu(self) -> float:
        """μ-GDP parameter of this release for any one of its records (Δ/σ); inf without noise."""
        return math.inf if self.sigma == 0 else self.sensitivity / self.sigma

    @property
    def group_mu(self) -> float:
        """μ-GDP parameter for all of its records together (one subject's or track's): ``pooled`` × μ."""
        return self.pooled * self.mu

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class PrivacyPolicy:
    """Per-record budget (ε, δ), the clipping norm C and the features' domain; ε = inf means no noise."""

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    domain: str = "signed"

    def __post_init__(self) -> None:
        if not (self.epsilon > 0):
            raise ValueError("epsilon must be > 0 (use inf for no noise)")
        if not (0 < self.delta < 1):
            raise ValueError("delta must be in (0, 1)")
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ValueError("clip_norm must be positive and finite")
        sensitivity_for(self.domain)  # validates the domain

    @property
    def sensitivity(self) -> float:
        return sensitivity_for(self.domain, self.clip_norm)

    def parameters(self, pooled: int = 1) -> NoiseParameters:
        """The release of one record (``pooled`` = 1) or of the mean of ``pooled`` records: sensitivity Δ/n, σ/n."""
        if pooled < 1:
            raise ValueError("pooled must be at least 1")
        sensitivity = self.sensitivity / pooled
        sigma = gaussian_sigma(self.epsilon, self.delta, sensitivity)
        return NoiseParameters(
            mechanism=MECHANISM_NAME if sigma > 0 else "none",
            epsilon=self.epsilon,
            delta=self.delta,
            sensitivity=sensitivity,
            sigma=sigma,
            clip_norm=self.clip_norm,
            library=f"reid-gallery models.privacy (scipy {scipy.__version__}); noise: {NOISE_SOURCE}",
            pooled=pooled,
        )


def clip_rows(features: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale rows whose L2 norm exceeds ``clip_norm`` down to it."""
    norms = features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return features * (clip_norm / norms).clamp(max=1.0)


class GaussianMechanism:
    """Releases feature batches under a :class:`PrivacyPolicy`.

    Every release draws its noise from a new ChaCha20 keystream keyed by ``os.urandom``, so no
    stream is ever continued or reused across releases, threads or forked worker processes, and
    no generator state lives in the object. ``seed`` is a test and offline-table hook: the keys
    are then derived from the seed (reproducible, and therefore not private); the service never
    passes one.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._seed = seed
        self._releases = 0
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        """Where this mechanism's noise comes from (stored with every record as part of ``library``)."""
        return NOISE_SOURCE if self._seed is None else SEEDED_SOURCE

    def _stream(self) -> NoiseStream:
        if self._seed is None:
            return NoiseStream.from_os()
        with self._lock:
            index, self._releases = self._releases, self._releases + 1
        return NoiseStream.from_seed(self._seed, index)

    def _parameters(self, policy: PrivacyPolicy, pooled: int = 1) -> NoiseParameters:
        params = policy.parameters(pooled)
        if self._seed is not None:
            params = dataclasses_replace(params, library=params.library.replace(NOISE_SOURCE, SEEDED_SOURCE))
        return params

    @staticmethod
    def _clipped(features: torch.Tensor, policy: PrivacyPolicy) -> np.ndarray:
        if features.ndim != 2:
            raise ValueError("features must be a [N, D] batch")
        rows = features.detach().to("cpu", torch.float64)
        if policy.domain == "nonnegative":
            rows = rows.clamp_min(0.0)
        return clip_rows(rows, policy.clip_norm).numpy()

    def release(self, features: torch.Tensor, policy: PrivacyPolicy) -> tuple[torch.Tensor, NoiseParameters]:
        """Clip each row to C (after zeroing negative coordinates in the non-negative domain) and add independent
        N(0, σ²) noise to every coordinate (float64, cast to float32)."""
        params = self._parameters(policy)
        clipped = self._clipped(features, policy)
        released = clipped if params.sigma == 0 else clipped + params.sigma * self._stream().gaussian(clipped.shape)
        return torch.from_numpy(released.astype(np.float32)).to(features.device), params

    def release_pooled(self, features: torch.Tensor, policy: PrivacyPolicy) -> tuple[torch.Tensor, NoiseParameters]:
        """One release of the mean of the n rows (clipped as in ``release``): sensitivity Δ/n, so noise σ/n gives each
        row the policy's (ε, δ). Returns a [1, D] float32 row."""
        clipped = self._clipped(features, policy)
        params = self._parameters(policy, pooled=int(clipped.shape[0]))
        mean = clipped.mean(axis=0, keepdims=True)
        released = mean if params.sigma == 0 else mean + params.sigma * self._stream().gaussian(mean.shape)
        return torch.from_numpy(released.astype(np.float32)).to(features.device), params
