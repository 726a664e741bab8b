"""A LatentSDE fitted to Ornstein–Uhlenbeck data recovers its law and forecasts calibrated bands.

Data: 96 series of an OU process (theta=1, mu=0, sigma=0.5; stationary variance 0.125) observed
with Gaussian noise (sd 0.3) at random subsets of a 0.1 lattice on [0, 6]. Training uses
t <= 5; the points in (5, 6] are held out.

Tolerances, fixed before the run:

- Sampling error: the exact maximum-likelihood estimator (Kalman filter, ``tests.oracles``) on
  the same training data has standard errors of about 0.14 (theta) and 0.0096 (stationary
  variance); we allow 4 of them.
- Variational bias: the guide's posterior SDE shares the prior's diffusion and runs on an Euler
  grid (dt = 0.05), so it cannot concentrate as sharply as the exact posterior, which biases
  the fitted diffusion downwards (a known effect of variational inference for SDEs). We allow
  25% of the true value for it.
- Coverage of 90% predictive intervals on held-out points must lie in [0.85, 0.95] (the
  issue's criterion; with 448 points the binomial standard error at 0.9 is 0.014). A
  deliberately over-confident forecaster (bands shrunk by half) must fail it.
"""

import math

import numpy as np
import pytest
import torch

import bayesdyn
from bayesdyn import LatentSDE, SDEPath, calibration_table, fit, posterior_predictive
from tests.common import lattice_ou
from tests.oracles import ou_mle

THETA, SIGMA = 1.0, 0.5
STAT_VAR = SIGMA**2 / (2 * THETA)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    series, _ = lattice_ou(num_series=96, num_obs=30, t1=6.0, spacing=0.1, seed=1, obs_noise=0.3)
    past, future = series.split_time(5.0)
    model = LatentSDE(
        1,
        latent_dim=1,
        hidden_dim=16,
        context_dim=8,
        dt=0.05,
        stable_drift=True,
        diffusion_state_dependent=False,
        diffusion_max=2.0,
        obs_scale_init=0.2,
    )
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model = model.float()
        fit(
            model,
            past,
            num_steps=1000,
            lr=5e-2,
            lr_final=5e-3,
            kl_anneal_steps=50,
            seed=0,
            progress=False,
        )
    finally:
        torch.set_default_dtype(old)
    return model.double(), past, future


def prior_statistics(model, past, horizon=100.0, burn_in=20.0, lag=1.0):
    """Stationary variance and mean-reversion rate of the fitted prior's decoded process."""
    batch = past.to_batch()
    one = bayesdyn.IrregularBatch(*(x[:1] for x in batch[:4]))
    dt = 0.1
    grid = torch.arange(0.0, horizon, dt)
    torch.manual_seed(1)
    with torch.no_grad():
        sde = model.prior_sde(one, grid)
        z = SDEPath(sde, torch.zeros(400, 1, 1), grid).sample()[:, 0]
        y = model.decoder.net(z)[..., 0][:, int(burn_in / dt) :]
    yc = y - y.mean()
    k = int(round(lag / dt))
    acf = float((yc[:, k:] * yc[:, :-k]).mean() / (yc * yc).mean())
    return float(y.var()), -math.log(acf) / lag


def test_recovers_stationary_variance_and_mean_reversion(fitted):
    model, past, _ = fitted
    var, theta = prior_statistics(model, past)
    est, se = ou_mle(list(past.times), [v[:, 0] for v in past.values])
    # the oracle MLE itself must be consistent with the truth (sanity of the tolerance)
    assert abs(est["theta"] - THETA) < 4 * se["theta"]
    assert abs(est["stationary_var"] - STAT_VAR) < 4 * se["stationary_var"]
    assert abs(var - STAT_VAR) < 4 * se["stationary_var"] + 0.25 * STAT_VAR, var
    assert abs(theta - THETA) < 4 * se["theta"] + 0.25 * THETA, theta


def held_out_forecast(model, past, future):
    fb = future.to_batch()
    keep = [i for i, s in enumerate(past.ids) if s in set(future.ids)]
    traj = posterior_predictive(model, past[keep], fb.times, num_samples=400, seed=0)
    return traj.observations, fb


def test_90_percent_intervals_cover_85_to_95_percent(fitted):
    model, past, future = fitted
    samples, fb = held_out_forecast(model, past, future)
    table = calibration_table(samples, fb.values, fb.mask)
    cov90 = float(table.loc[table.level == 0.9, "coverage"].iloc[0])
    assert 0.85 <= cov90 <= 0.95, table


def test_overconfident_forecaster_is_flagged(fitted):
    model, past, future = fitted
    samples, fb = held_out_forecast(model, past, future)
    centre = samples.median(0, keepdim=True).values
    shrunk = centre + 0.5 * (samples - centre)  # negative control: bands half as wide
    table = calibration_table(shrunk, fb.values, fb.mask)
    cov90 = float(table.loc[table.level == 0.9, "coverage"].iloc[0])
    assert cov90 < 0.85, table
    assert np.isfinite(table.attrs["crps"])
