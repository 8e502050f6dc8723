"""Tenant privacy policies and per-subject budgets on top of ``models.privacy``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.privacy.gaussian import epsilon_for_mu, max_mu
from models.privacy.mechanism import NoiseParameters, PrivacyPolicy


@dataclass(frozen=True)
class TenantPolicy:
    """Per-record (ε, δ) plus an optional per-subject budget (ε_s, δ_s)."""

    epsilon: float  # math.inf: no noise
    delta: float
    clip_norm: float = 1.0
    subject_epsilon: float | None = None
    subject_delta: float | None = None
    domain: str = "signed"  # the serving encoder's feature domain (sets the sensitivity: 2C or √2·C)
    pool_tracks: bool = True  # crops of one track in one enrollment: one release of their mean (σ/n, same ε per record)

    @property
    def record_policy(self) -> PrivacyPolicy:
        return PrivacyPolicy(epsilon=self.epsilon, delta=self.delta, clip_norm=self.clip_norm, domain=self.domain)

    @property
    def pools(self) -> bool:
        """Whether tracks are pooled (only with noise: without it, pooling would only blur the stored features)."""
        return self.pool_tracks and math.isfinite(self.epsilon)

    @property
    def has_subject_budget(self) -> bool:
        return self.subject_epsilon is not None

    def subject_mu_budget(self) -> float:
        """μ² budget of one subject: composed μ must stay within max_mu(ε_s, δ_s)."""
        assert self.subject_epsilon is not None
        return max_mu(self.subject_epsilon, self.subject_delta or self.delta)


@dataclass(frozen=True)
class BudgetCheck:
    subject_ref: str
    spent_mu_squared: float
    requested_mu_squared: float
    budget_mu: float

    @property
    def allowed(self) -> bool:
        return math.sqrt(self.spent_mu_squared + self.requested_mu_squared) <= self.budget_mu * (1 + 1e-12)

    def as_dict(self, delta: float) -> dict[str, object]:
        total = math.sqrt(self.spent_mu_squared + self.requested_mu_squared)
        return {
            "subject_ref": self.subject_ref,
            "spent_epsilon": epsilon_for_mu(math.sqrt(self.spent_mu_squared), delta) if self.spent_mu_squared else 0.0,
            "epsilon_after": "inf" if math.isinf(total) else epsilon_for_mu(total, delta),
            "budget_mu": self.budget_mu,
        }


def release_mu_squared(params: NoiseParameters) -> float:
    """μ² that one release adds to its subject's account (inf without noise)."""
    mu = params.mu
    return math.inf if math.isinf(mu) else mu * mu
