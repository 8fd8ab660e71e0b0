"""CERTIFY's statistics: the Clopper-Pearson lower bound on pA and the certified l2 radius it gives.

Apart from smoothing.py, which uses them, because smoothing.py imports torch: the torch-free code that needs a
radius (smx.reference's largest certifiable radius of a published table, behind reports and the TUI) computes it
with these same functions, so smx computes a radius in one place only. Torch-free.
"""

from __future__ import annotations

# The special functions behind scipy.stats's beta.ppf and norm.ppf (Boost's inverse incomplete beta function
# from SciPy 1.11 on, and ndtri): the same numbers, without the 0.5-0.9 s import of scipy.stats in every certify job.
from scipy.special import betaincinv, ndtri


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if successes == 0:
        return 0.0
    return float(betaincinv(successes, trials - successes + 1, alpha))


def certified_radius(pa_lower: float, sigma: float) -> float:
    """The l2 radius within which the smoothed prediction cannot change, given pA >= pa_lower."""
    return float(sigma * ndtri(pa_lower))
