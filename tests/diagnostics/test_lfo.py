"""Rolling-origin (leave-future-out) evaluation with an exact forecaster and an over-confident one.

Data: 200 series of two independent Brownian motions (sigma = 0.7) observed on a 0.5 lattice on
[0, 5], about 15% of values masked. The exact predictive of a future value given the past is
Normal(last observed value of that channel, sigma^2 * elapsed time), sampled jointly along the
future times. Each origin forecasts one lattice step ahead (horizon 0.5), so the PIT values of
different series, channels and origins involve disjoint Brownian increments and are
independent: the KS p-value and the binomial coverage bounds apply as stated.
"""

import numpy as np
import pytest
import torch

from bayesdyn.data import IrregularTimeSeries
from bayesdyn.diagnostics import rolling_origin

SIGMA = 0.7


def brownian_series(num_series=200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, 5.01, 0.5)
    steps = rng.normal(0, SIGMA * np.sqrt(0.5), size=(num_series, t.size - 1, 2))
    values = np.concatenate([np.zeros((num_series, 1, 2)), np.cumsum(steps, 1)], 1)
    mask = rng.random(values.shape) > 0.15
    mask[:, 0] = True  # every channel observed at t = 0
    return IrregularTimeSeries([t] * num_series, list(values), list(mask))


def exact_forecaster(scale=1.0, num_samples=200, seed=1):
    g = torch.Generator().manual_seed(seed)

    def forecast(past, times):
        """Samples [S, B, T, D] of Brownian continuations from each channel's last value."""
        B, T = times.shape
        out = torch.empty(num_samples, B, T, past.obs_dim)
        for b in range(B):
            for d in range(past.obs_dim):
                seen = past.mask[b][:, d]
                t_last = float(past.times[b][seen][-1])
                y_last = float(past.values[b][seen][-1, d])
                gaps = torch.diff(times[b], prepend=torch.tensor([t_last]))
                inc = torch.randn(num_samples, T, generator=g) * (scale * SIGMA * gaps.sqrt())
                out[:, b, :, d] = y_last + inc.cumsum(-1)
        return out

    return forecast


def test_exact_forecaster_is_calibrated_and_overconfident_is_caught():
    series = brownian_series()
    good = rolling_origin(series, [2.0, 3.0, 4.0], exact_forecaster(), horizon=0.5)
    assert list(good["origin"]) == [2.0, 3.0, 4.0]
    assert (good["num_series"] == 200).all()
    n = int(good["num_points"].sum())
    assert n == good.attrs["pit"].size and n > 900
    # ~1000 pooled values: 90% coverage has binomial sd 0.0095, the bounds are > 5 sd away
    pooled90 = float((good["coverage_0.9"] * good["num_points"]).sum() / n)
    assert 0.85 <= pooled90 <= 0.95
    assert (good["pit_p_value"] > 1e-3).all()
    assert np.isfinite(good[["crps", "energy_score"]].to_numpy()).all()
    bad = rolling_origin(series, [2.0, 3.0, 4.0], exact_forecaster(scale=0.5), horizon=0.5)
    # half-width bands cover P(|N(0,1)| < 0.82) = 0.59 of the values
    assert (bad["coverage_0.9"] < 0.8).all()
    assert (bad["pit_p_value"] < 1e-6).all()
    # proper scores prefer the exact forecaster
    assert (bad["crps"] > good["crps"]).all() and (bad["energy_score"] > good["energy_score"]).all()


def test_without_horizon_all_later_rows_are_scored():
    series = brownian_series(num_series=20)
    df = rolling_origin(series, [4.0], exact_forecaster(num_samples=50))
    assert int(df["num_points"].iloc[0]) == int(
        sum(m[t > 4.0].sum() for t, m in zip(series.times, series.mask, strict=True))
    )


def test_rolling_origin_errors():
    series = brownian_series(num_series=5)
    fc = exact_forecaster(num_samples=20)
    with pytest.raises(ValueError, match="origins must be a non-empty increasing sequence"):
        rolling_origin(series, [3.0, 2.0], fc)
    with pytest.raises(ValueError, match="horizon must be a finite positive number"):
        rolling_origin(series, [2.0], fc, horizon=-1.0)
    with pytest.raises(ValueError, match=r"no observation in \(origin, origin \+ horizon\]"):
        rolling_origin(series, [2.0], fc, horizon=0.1)
    with pytest.raises(ValueError, match="forecaster must return samples"):
        rolling_origin(series, [2.0], lambda past, times: torch.zeros(3, 1))
    with pytest.raises(TypeError, match="forecaster must be callable"):
        rolling_origin(series, [2.0], "model")
    with pytest.raises(TypeError, match="series must be an IrregularTimeSeries"):
        rolling_origin([1, 2], [2.0], fc)
