"""Calibration of the Gaussian mechanism: exact (analytic) and classic.

The exact privacy profile of adding N(0, σ²I) to a function with L2 sensitivity Δ
(Balle & Wang 2018, Theorem 8) is

    δ(ε) = Φ(Δ/(2σ) − εσ/Δ) − e^ε · Φ(−Δ/(2σ) − εσ/Δ),

and the same curve with μ = Δ/σ is the (ε, δ) profile of μ-Gaussian DP (Dong, Roth &
Su 2019), so one function serves calibration and composition. It is evaluated in the
log domain (``scipy.special.log_ndtr``) so it stays accurate for ε up to the hundreds.
"""

from __future__ import annotations

import math

from scipy.special import log_ndtr

SAFETY = 1e-6  # relative margin on δ in calibration


def gaussian_log_delta(epsilon: float, mu: float) -> float:
    """log δ(ε) of a μ-GDP mechanism (μ = Δ/σ); -inf when μ = 0."""
    if mu <= 0:
        return -math.inf
    if math.isinf(epsilon):
        return -math.inf
    a = -epsilon / mu + mu / 2
    b = -epsilon / mu - mu / 2
    log_first = float(log_ndtr(a))
    log_second = epsilon + float(log_ndtr(b))
    if log_second >= log_first:
        return -math.inf  # the difference is <= 0 in exact arithmetic
    return log_first + math.log1p(-math.exp(log_second - log_first))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism (μ = Δ/σ)."""
    return math.exp(gaussian_log_delta(epsilon, mu))


def _validate(epsilon: float, delta: float, sensitivity: float) -> None:
    if not (epsilon > 0):
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not (sensitivity > 0 and math.isfinite(sensitivity)):
        raise ValueError(f"sensitivity must be a positive finite number, got {sensitivity}")


def max_mu(epsilon: float, delta: float) -> float:
    """The largest μ whose exact profile satisfies δ(ε) ≤ δ (μ-GDP budget for (ε, δ))."""
    if math.isinf(epsilon):
        return math.inf
    _validate(epsilon, delta, 1.0)
    # Aim a hair below δ so that floating-point error in the profile can never make σ invalid.
    log_target = math.log(delta) + math.log1p(-SAFETY)
    lo, hi = 0.0, 1.0
    while gaussian_log_delta(epsilon, hi) <= log_target:
        lo, hi = hi, hi * 2
        if hi > 1e8:
            return lo
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gaussian_log_delta(epsilon, mid) <= log_target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return lo


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest σ such that the Gaussian mechanism with L2 sensitivity Δ is (ε, δ)-DP.

    Analytic Gaussian mechanism (Balle & Wang 2018), valid for every ε > 0;
    ``epsilon = inf`` returns 0 (no noise).
    """
    if math.isinf(epsilon) and epsilon > 0:
        return 0.0
    _validate(epsilon, delta, sensitivity)
    mu = max_mu(epsilon, delta)
    # μ was rounded down, so σ = Δ/μ errs on the safe (larger) side.
    return sensitivity / mu


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Dwork & Roth's σ = Δ·sqrt(2 ln(1.25/δ))/ε (only proven for ε < 1; for comparison)."""
    _validate(epsilon, delta, sensitivity)
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def composed_mu(mus: list[float]) -> float:
    """μ-GDP composition: μ² adds up over releases."""
    return math.sqrt(sum(m * m for m in mus))


def epsilon_for_mu(mu: float, delta: float) -> float:
    """Smallest ε with δ(ε) ≤ δ for a μ-GDP mechanism (what a composed budget is worth)."""
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    log_target = math.log(delta)
    lo, hi = 0.0, 1.0
    while gaussian_log_delta(hi, mu) > log_target:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gaussian_log_delta(mid, mu) > log_target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi
