"""``LatentJumpSDE(grid="per_series")``: each event sequence on its own solver grid.

The hand-set exact self-correcting model must give the closed-form likelihood on per-series
grids as on the union grid; training, held-out scoring, intensity queries, event forecasts and
ArviZ conversion must run on them; the paths/point-process sites reject grids that do not fit.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import bayesdyn
from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import self_correcting_log_likelihood, simulate_self_correcting
from bayesdyn.inference import event_log_likelihood, forecast_events
from bayesdyn.models import LatentJumpSDE, SDEPath, TemporalPointProcess
from bayesdyn.models.base import FunctionalSDE
from tests.models.test_log_linear_intensity import SC, _exact_self_correcting_model


def _data(num_series=3, t1=20.0, seed=5):
    return simulate_self_correcting(num_series=num_series, t1=t1, seed=seed, **SC).series


def test_per_series_exact_model_reproduces_the_closed_form_likelihood():
    d = _data()
    exact = np.array([self_correcting_log_likelihood(e, 0.0, 20.0, **SC) for e in d.events])
    m = _exact_self_correcting_model(dt=0.5, grid="per_series")
    prep = m.prepare(d.to_jump_batch())
    union = _exact_self_correcting_model(dt=0.5).prepare(d.to_jump_batch())
    assert prep.grid.grid.shape[0] == 3 and prep.path_grid.shape[:2] == (3, 1)
    # Each row holds one sequence's events: about a third of the union grid's length.
    assert prep.grid.grid.shape[1] < 0.6 * union.grid.grid.numel()
    lls = event_log_likelihood(m, d, num_samples=4, seed=0, progress=False).per_sample.numpy()
    # As for the union grid (test_log_linear_intensity): exact up to z0 ~ N(0, 1e-4^2), a
    # shift eps of the log-intensity moving the log-likelihood by eps (N - Lambda).
    counts = np.array([e.size for e in d.events])
    comp = -exact + np.array(
        [np.sum(SC["mu"] * e - SC["beta"] * np.arange(e.size)) for e in d.events]
    )
    tol = 5 * 1e-4 * np.abs(counts - comp) + 1e-8 * comp
    assert (np.abs(lls - exact) <= tol).all(), (lls - exact, tol)
    # Negative control: a model with the wrong drift (mu 0.45) is outside the tolerance.
    with torch.no_grad():
        m.core.prior_drift.rest[-1].bias.fill_(0.45)
    wrong = event_log_likelihood(m, d, num_samples=4, seed=0, progress=False).per_sample.numpy()
    assert (np.abs(wrong - exact) > 100 * tol).all()


def test_per_series_intensity_queries_and_forecasts_match_the_union_grid():
    d = _data(num_series=2, seed=2)
    q = torch.linspace(0.5, 19.5, 7, dtype=torch.float64)
    out = {}
    for grid in ("union", "per_series"):
        m = _exact_self_correcting_model(dt=0.5, grid=grid)
        ll = event_log_likelihood(m, d, num_samples=2, query_times=q, seed=0, progress=False)
        fc = forecast_events(m, d, horizon=3.0, num_samples=300, num_steps=30, seed=0)
        out[grid] = (ll.mean_intensity(), fc.counts().double())
        fig = fc.plot(data=d, max_series=2)  # draws each series' own fit grid
        assert len(fig.axes) == 2 and len(fig.axes[1].collections) >= 2
        plt.close(fig)
    lam_u, counts_u = out["union"]
    lam_s, counts_s = out["per_series"]
    assert lam_s.shape == (2, 7)
    # The exact model's intensity is deterministic given the history (up to z0 ~ 1e-4).
    torch.testing.assert_close(lam_s, lam_u, rtol=1e-3, atol=0.0)
    # Forecasts start from the same state: equal mean counts within 5 standard errors.
    se = (counts_u.var(0) / 300 + counts_s.var(0) / 300).sqrt()
    assert ((counts_u.mean(0) - counts_s.mean(0)).abs() < 5 * se).all()


def test_per_series_fit_trains_and_converts_to_arviz():
    d = _data(num_series=6, t1=10.0, seed=1)
    torch.manual_seed(0)
    m = LatentJumpSDE(
        latent_dim=2,
        hidden_dim=8,
        jump_hidden_dim=8,
        intensity_link="exp",
        zero_drift_init=True,
        z0_scale_init=0.01,
        init_intensity=1.0,
        dt=0.5,
        guide="prior",
        grid="per_series",
    )
    res = bayesdyn.fit(
        m, d.to_jump_batch(), num_steps=60, lr=0.02, batch_size=6, seed=0, progress=False
    )
    first, last = (
        np.mean([h["loss"] for h in res.history[:10]]),
        np.mean([h["loss"] for h in res.history[-10:]]),
    )
    assert last < first  # the rate moves from 1 towards the data's ~2.5 events per unit time
    idata = bayesdyn.diagnostics.to_inference_data(m, d, num_samples=4, num_times=11)
    assert idata.posterior["intensity"].shape[:3] == (1, 4, 6)
    assert np.isfinite(idata.log_likelihood["events"].values).all()


def test_per_series_grid_config_errors():
    with pytest.raises(
        BayesdynValueError, match=r"grid must be one of \['union', 'per_series'\]; got 'rows'"
    ):
        LatentJumpSDE(grid="rows", guide="prior")
    with pytest.raises(
        BayesdynValueError, match="grid='per_series' needs guide='prior'.*got guide='encoder'"
    ):
        LatentJumpSDE(grid="per_series")
    with pytest.raises(BayesdynValueError, match="time_input=True"):
        LatentJumpSDE(grid="per_series", guide="prior", time_input=True)
    m = _exact_self_correcting_model(dt=0.5, grid="per_series")
    prep = m.prepare(_data().to_jump_batch())
    sde = m._bound(prep, m.core.prior_sde(prep.merged, prep.path_grid))
    with pytest.raises(BayesdynValueError, match="per-series grids has no single grid step"):
        sde.drift_and_diffusion(torch.tensor(1.0), torch.zeros(3, 1, 1, dtype=torch.float64))


def test_per_series_grid_shape_errors():
    sde = FunctionalSDE(lambda t, z: -z, 1.0, state_dim=1)
    g = torch.linspace(0, 1, 5).expand(3, 5)
    with pytest.raises(
        BayesdynValueError, match=r"leading shape \(3,\) must broadcast to z0's batch shape \(2,\)"
    ):
        SDEPath(sde, torch.zeros(2, 1), g)
    bad = g.clone()
    bad[1, 3] = 0.1
    with pytest.raises(
        BayesdynValueError, match=r"strictly increasing; grid\[1, 3\]=0.1 follows grid\[1, 2\]=0.5"
    ):
        SDEPath(sde, torch.zeros(3, 1), bad)
    lam = torch.ones(2, 4, 1)
    with pytest.raises(
        BayesdynValueError, match=r"leading shape \(3,\) must broadcast to the batch shape \(2,\)"
    ):
        TemporalPointProcess(g, start=lam, end=lam)
    assert SDEPath(sde, torch.zeros(3, 1), g).sample().shape == (3, 5, 1)
