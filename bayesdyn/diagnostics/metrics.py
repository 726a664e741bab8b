"""Forecast scores (batched, masked): CRPS, energy score, interval coverage, PIT, calibration
error and negative log-likelihood.

All functions take sample dimensions on the left (``samples [S, ...]``) and score every point or
trajectory of the batch at once.

References:
    1. T. Gneiting, A. E. Raftery (2007). Strictly proper scoring rules, prediction, and
       estimation. JASA 102(477).
    2. C. A. T. Ferro (2014). Fair scores for ensemble forecasts. QJRMS 140(683).
    3. M. A. Stephens (1970). Use of the Kolmogorov-Smirnov, Cramer-von Mises and related
       statistics without extensive tables. JRSS B 32(1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError

__all__ = [
    "CalibrationError",
    "calibration_error",
    "calibration_table",
    "coverage_flags",
    "crps_ensemble",
    "crps_normal",
    "energy_score",
    "interval_coverage",
    "mixture_nll",
    "nll",
    "pit_values",
]


def _check(samples: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    if samples.shape[1:] != y.shape:
        raise BayesdynValueError(
            f"samples must have shape [S, *y.shape] = [S, {', '.join(map(str, y.shape))}]; "
            f"got {tuple(samples.shape)}"
        )
    if samples.shape[0] < 2:
        raise BayesdynValueError(f"need at least 2 samples; got {samples.shape[0]}")
    if mask is None:
        return torch.ones_like(y, dtype=torch.bool)
    if mask.shape != y.shape or mask.dtype != torch.bool:
        raise BayesdynValueError(
            f"mask must be a bool tensor of shape {tuple(y.shape)}; got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    return mask


def crps_ensemble(samples: Tensor, y: Tensor, *, fair: bool = True) -> Tensor:
    r"""Continuous ranked probability score of an ensemble, pointwise.

    .. math:: \mathrm{CRPS} = \mathbb E|X - y| - \tfrac12 \mathbb E|X - X'|

    ``fair=True`` uses the unbiased ``1/(S(S-1))`` pair average (Ferro 2014), which does not
    penalise small ensembles; ``fair=False`` gives the plug-in ``1/S^2`` estimator (as
    ``pyro.ops.stats.crps_empirical``). Computed in ``O(S log S)`` by sorting.

    Shapes: ``samples [S, ...]``, ``y [...]`` -> ``[...]``.
    """
    _check(samples, y, None)
    S = samples.shape[0]
    abs_err = (samples - y).abs().mean(0)
    x = samples.sort(0).values
    # sum_{i,j}|x_i - x_j| = 2 * sum_i (2i - S + 1) x_(i) for sorted x (i from 0)
    w = (2 * torch.arange(S, dtype=x.dtype, device=x.device) - S + 1).reshape(
        (S,) + (1,) * (x.dim() - 1)
    )
    pair_sum = 2 * (w * x).sum(0)
    denom = S * (S - 1) if fair else S * S
    return abs_err - 0.5 * pair_sum / denom


def interval_coverage(
    samples: Tensor,
    y: Tensor,
    levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    mask: Tensor | None = None,
) -> dict[float, float]:
    """Fraction of observed ``y`` inside the central sample intervals of each level.

    Shapes: ``samples [S, ...]``, ``y [...]``, ``mask [...]`` bool.
    """
    mask = _check(samples, y, mask)
    n = int(mask.sum())
    if n == 0:
        raise BayesdynValueError("mask selects no observations")
    out = {}
    for lv in levels:
        if not 0 < lv < 1:
            raise BayesdynValueError(f"levels must lie in (0, 1); got {lv}")
        q = torch.quantile(
            samples, torch.tensor([(1 - lv) / 2, (1 + lv) / 2], dtype=samples.dtype), dim=0
        )
        inside = (y >= q[0]) & (y <= q[1]) & mask
        out[float(lv)] = float(inside.sum()) / n
    return out


def pit_values(
    samples: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
    *,
    randomize: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Probability integral transform ``P(X <= y)`` per observed point.

    ``randomize=False``: the sample frequency below ``y``, ties split evenly (values ``k/S``).
    ``randomize=True``: the randomised rank ``(k + V) / (S + 1)`` with ``k`` the number of samples
    below ``y`` (ties broken at random) and ``V ~ Uniform(0, 1)``; for a calibrated ensemble
    this is exactly ``Uniform(0, 1)``, however small ``S`` is, so it suits tests and histograms.

    Shapes: ``samples [S, ...]``, ``y [...]`` -> ``[N]`` for the ``N`` points where mask is True.
    """
    mask = _check(samples, y, mask)
    if not randomize:
        below = (samples < y).to(samples.dtype).mean(0)
        equal = (samples == y).to(samples.dtype).mean(0)
        return (below + 0.5 * equal)[mask]
    S = samples.shape[0]
    below = (samples < y).sum(0)[mask].to(samples.dtype)
    equal = (samples == y).sum(0)[mask].to(samples.dtype)
    u = torch.rand(below.shape, generator=generator, dtype=samples.dtype, device=samples.device)
    return (below + u * (equal + 1)) / (S + 1)


def calibration_table(
    samples: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
    levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
):
    """Coverage per nominal level, with a binomial standard error, and mean CRPS.

    Returns:
        a pandas DataFrame with columns ``level, coverage, stderr, n`` and ``crps`` in
        ``df.attrs["crps"]``.

    Shapes: ``samples [S, ...]``, ``y [...]``, ``mask [...]``.
    """
    import pandas as pd

    mask = _check(samples, y, mask)
    cov = interval_coverage(samples, y, levels, mask)
    n = int(mask.sum())
    rows = [
        {"level": lv, "coverage": c, "stderr": (lv * (1 - lv) / n) ** 0.5, "n": n}
        for lv, c in cov.items()
    ]
    df = pd.DataFrame(rows)
    df.attrs["crps"] = float(crps_ensemble(samples, y)[mask].mean())
    return df


def crps_normal(loc: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    r"""CRPS of a Normal forecast in closed form (Gneiting & Raftery 2007, eq. 21).

    .. math:: \mathrm{CRPS}(\mathcal N(\mu, \sigma^2), y)
       = \sigma\,\bigl[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt{\pi}\bigr],\quad z = (y-\mu)/\sigma

    Shapes: ``loc``, ``scale``, ``y`` broadcast to ``[...]`` -> ``[...]``.
    """
    loc, scale, y = torch.broadcast_tensors(
        torch.as_tensor(loc), torch.as_tensor(scale), torch.as_tensor(y)
    )
    if bool((scale <= 0).any()):
        raise BayesdynValueError(f"scale must be positive; got min {float(scale.min())}")
    z = (y - loc) / scale
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    return scale * (
        z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi)
    )


def energy_score(
    samples: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
    *,
    event_dims: int = 2,
    fair: bool = True,
) -> Tensor:
    r"""Energy score of whole trajectories (a multivariate CRPS), one value per trajectory.

    .. math:: \mathrm{ES} = \mathbb E\lVert X - y\rVert - \tfrac12 \mathbb E\lVert X - X'\rVert

    The norm runs over the last ``event_dims`` dimensions (``[T, D]`` by default: a whole
    multichannel path). Masked-out entries are left out of every norm. ``fair=True`` averages the
    ``S(S-1)`` ordered pairs of distinct samples (unbiased for small ensembles); ``fair=False``
    divides by ``S^2``. For a single scalar (``event_dims=0``) it equals :func:`crps_ensemble`.
    Cost ``O(S^2)`` per trajectory (pairwise distances).

    Shapes: ``samples [S, *batch, T, D]``, ``y [*batch, T, D]``, ``mask`` like ``y`` ->
    ``[*batch]``.
    """
    mask = _check(samples, y, mask)
    if not (isinstance(event_dims, int) and 0 <= event_dims <= y.dim()):
        raise BayesdynValueError(
            f"event_dims must be an integer in [0, {y.dim()}] (y has {y.dim()} dims); "
            f"got {event_dims!r}"
        )
    S = samples.shape[0]
    batch = y.shape[: y.dim() - event_dims]
    m = mask.to(samples.dtype)
    x = (samples * m).reshape(S, *batch, -1)  # [S, *batch, K]
    yy = (y * m).reshape(*batch, -1)
    to_obs = (x - yy).norm(dim=-1).mean(0)
    xb = x.movedim(0, -2)  # [*batch, S, K]
    pair_sum = torch.cdist(xb, xb).sum((-1, -2))  # both orders of each pair, zeros on diagonal
    denom = S * (S - 1) if fair else S * S
    return to_obs - 0.5 * pair_sum / denom


def coverage_flags(table, alpha: float = 0.01):
    """Mark the rows of a :func:`calibration_table` whose coverage is off by more than chance.

    Adds ``z = (coverage - level) / stderr`` and ``flagged = |z| > z_{1 - alpha/2}`` (a two-sided
    binomial test at level ``alpha`` under the normal approximation, as rows of one table are
    tested together).

    Returns:
        a copy of the DataFrame with columns ``z`` and ``flagged``.
    """
    if not 0 < alpha < 1:
        raise BayesdynValueError(f"alpha must lie in (0, 1); got {alpha}")
    crit = math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(1.0 - alpha)))
    out = table.copy()
    out["z"] = (out["coverage"] - out["level"]) / out["stderr"]
    out["flagged"] = out["z"].abs() > crit
    return out


class CalibrationError(NamedTuple):
    """Kolmogorov–Smirnov distance of PIT values from the uniform law, with its p-value.

    Attributes:
        statistic: ``sup_u |F_n(u) - u|`` (0 for perfect calibration).
        p_value: probability of a distance at least this large under calibration
            (Kolmogorov's limit law with Stephens' finite-``n`` correction).
        n: number of PIT values.
    """

    statistic: float
    p_value: float
    n: int


def calibration_error(pit: Tensor) -> CalibrationError:
    r"""Calibration error of a set of PIT values: their KS distance from ``Uniform(0, 1)``.

    Calibrated forecasts give uniform PIT values (use ``pit_values(..., randomize=True)`` for
    ensembles, so that finitely many samples give exactly uniform values). The p-value uses
    :math:`Q(\lambda) = 2\sum_{k\ge1} (-1)^{k-1} e^{-2k^2\lambda^2}` at
    :math:`\lambda = (\sqrt n + 0.12 + 0.11/\sqrt n) D` (Stephens 1970), accurate to about 0.01.
    It assumes independent PIT values; PITs of points on one path are correlated, so read the
    p-value as a guide there.

    Shapes: ``pit [N]`` (any shape is flattened).
    """
    if not isinstance(pit, Tensor):
        raise BayesdynTypeError(f"pit must be a torch.Tensor; got {type(pit).__name__}")
    u = pit.detach().reshape(-1).to(torch.float64).sort().values
    n = u.numel()
    if n == 0:
        raise BayesdynValueError("pit must hold at least one value; got an empty tensor")
    if bool(((u < 0) | (u > 1)).any()) or not bool(torch.isfinite(u).all()):
        raise BayesdynValueError("pit values must lie in [0, 1]")
    i = torch.arange(1, n + 1, dtype=u.dtype)
    d = float(torch.maximum(i / n - u, u - (i - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.2:  # the series converges slowly there; Q is 1 to within 1e-10
        p = 1.0
    else:
        k = torch.arange(1, 101, dtype=torch.float64)
        p = float(2 * ((-1) ** (k - 1) * torch.exp(-2 * k**2 * lam**2)).sum())
    return CalibrationError(d, min(max(p, 0.0), 1.0), n)


def nll(distribution, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Negative log-likelihood of observations under a forecast with a density.

    Args:
        distribution: a ``torch.distributions.Distribution`` whose ``log_prob(y)`` is pointwise
            (batch shape ``[...]`` like ``y``, no event dims).
        y: observations.
        mask: which points count (default all).

    Returns:
        ``-log p(y)`` at the masked points, ``[N]``.

    Shapes: ``y [...]``, ``mask [...]`` -> ``[N]``.
    """
    if not isinstance(distribution, torch.distributions.Distribution):
        raise BayesdynTypeError(
            f"distribution must be a torch Distribution; got {type(distribution).__name__}"
        )
    lp = distribution.log_prob(y)
    if lp.shape != y.shape:
        raise BayesdynValueError(
            f"distribution.log_prob(y) must have y's shape {tuple(y.shape)} (pointwise); got "
            f"{tuple(lp.shape)}; use a distribution without event dims"
        )
    if mask is None:
        return -lp.reshape(-1)
    if mask.shape != y.shape or mask.dtype != torch.bool:
        raise BayesdynValueError(
            f"mask must be a bool tensor of shape {tuple(y.shape)}; got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    return -lp[mask]


def mixture_nll(log_lik: Tensor) -> Tensor:
    r"""Negative log predictive density from per-draw conditional log-likelihoods.

    The posterior predictive density of a latent-variable model is the mixture
    :math:`p(y) \approx \frac1S\sum_s p(y \mid z_s)` over posterior draws, so
    ``-log p(y) = log S - logsumexp_s log p(y | z_s)`` (the pointwise ``-lppd`` of ArviZ).

    Shapes: ``log_lik [S, ...]`` -> ``[...]``.
    """
    if not isinstance(log_lik, Tensor) or log_lik.dim() < 1 or log_lik.shape[0] < 1:
        raise BayesdynValueError(
            "log_lik must be a tensor [S, ...] with at least one draw; got "
            f"{getattr(log_lik, 'shape', type(log_lik).__name__)}"
        )
    return math.log(log_lik.shape[0]) - torch.logsumexp(log_lik, 0)
