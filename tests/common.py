"""Small shared builders for tests."""

from __future__ import annotations

import numpy as np
import torch

from bayesdyn.data import IrregularBatch, IrregularTimeSeries
from tests.oracles import ou_stationary, ou_transition


def lattice_ou(
    num_series=16,
    num_obs=12,
    t1=4.0,
    spacing=0.1,
    theta=1.0,
    mu=0.0,
    sigma=0.5,
    obs_noise=0.1,
    seed=0,
) -> tuple[IrregularTimeSeries, list[np.ndarray]]:
    """OU observed with noise at random subsets of a regular lattice (exact transitions).

    Returns the series and the latent values at the observation times.
    """
    rng = np.random.default_rng(seed)
    lattice = np.round(np.arange(spacing, t1 + 1e-9, spacing), 10)
    m, v = ou_stationary(theta, mu, sigma)
    times, values, latent = [], [], []
    for _ in range(num_series):
        t = np.sort(rng.choice(lattice, size=num_obs, replace=False))
        x = rng.normal(m, np.sqrt(v))
        prev = 0.0
        xs = []
        for ti in t:
            mm, vv = ou_transition(x, ti - prev, theta, mu, sigma)
            x = rng.normal(mm, np.sqrt(vv))
            xs.append(x)
            prev = ti
        xs = np.array(xs)
        times.append(t)
        latent.append(xs[:, None])
        values.append((xs + obs_noise * rng.normal(size=xs.shape))[:, None])
    return IrregularTimeSeries(times, values), latent


def ragged_batch(B=3, T=7, D=2, seed=0) -> IrregularBatch:
    """A padded batch with one short series, one single-point series and missing channels."""
    g = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(B, T, generator=g) * 2, dim=-1).values
    values = torch.randn(B, T, D, generator=g)
    mask = torch.rand(B, T, D, generator=g) > 0.3
    mask[:, :, 0] |= ~mask.any(-1)  # every row observes something
    lengths = torch.full((B,), T)
    if B > 1:
        lengths[1] = 1
    for b in range(B):
        n = int(lengths[b])
        times[b, n:] = times[b, n - 1]
        mask[b, n:] = False
        values[b, n:] = 0.0
    return IrregularBatch(times, values, mask, lengths)
