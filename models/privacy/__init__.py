"""Stage two: the analytic Gaussian mechanism, its calibration and μ-GDP accounting."""

from models.privacy.gaussian import (
    classic_gaussian_sigma,
    composed_mu,
    epsilon_for_mu,
    gaussian_delta,
    gaussian_sigma,
    max_mu,
)

__all__ = ["classic_gaussian_sigma", "composed_mu", "epsilon_for_mu", "gaussian_delta", "gaussian_sigma", "max_mu"]
