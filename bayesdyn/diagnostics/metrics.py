"""Forecast scores from samples: CRPS, interval coverage and PIT (batched, masked)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._validation import BayesdynValueError

__all__ = ["calibration_table", "crps_ensemble", "interval_coverage", "pit_values"]


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


def pit_values(samples: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Probability integral transform ``P(X <= y)`` per observed point (ties split evenly).

    Shapes: ``samples [S, ...]``, ``y [...]`` -> ``[N]`` for the ``N`` points where mask is True.
    """
    mask = _check(samples, y, mask)
    below = (samples < y).to(samples.dtype).mean(0)
    equal = (samples == y).to(samples.dtype).mean(0)
    return (below + 0.5 * equal)[mask]


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
