"""LatentJumpSDE: sites, jump scheme, event likelihood, path KL, errors, fit and event forecasts."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import IrregularTimeSeries, hawkes_intensity, simulate_hawkes
from bayesdyn.inference import PathELBO, fit, forecast_events
from bayesdyn.models import (
    EVENTS_SITE,
    JUMPS_SITE,
    OBS_SITE,
    PATH_SITE,
    Z0_SITE,
    LatentJumpSDE,
    SDEPath,
)
from bayesdyn.solvers import euler_transition_log_prob, piecewise_linear_integral
from tests.conftest import TEST_FAILURE_RATE

Z_CRIT = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)
HAWKES = dict(baseline=0.2, alpha=0.8, beta=1.0)


def _hawkes(num_series=3, t1=12.0, seed=0):
    return simulate_hawkes(num_series=num_series, t1=t1, seed=seed, **HAWKES)


def _random_jumps(model):
    with torch.no_grad():
        model.jump_net.net[-1].weight.normal_(std=0.5)
        model.jump_net.net[-1].bias.normal_(std=0.5)


def _with_values():
    rng = np.random.default_rng(0)
    times = [np.sort(rng.uniform(0, 5, 6)), np.sort(rng.uniform(0, 5, 4))]
    return IrregularTimeSeries(
        times,
        [rng.normal(size=(6, 2)), rng.normal(size=(4, 2))],
        events=[[times[0][1] + 0.1, times[0][3]], [times[1][2] - 0.05]],
        marks=[[1, 0], [2]],
        num_marks=3,
    )


def test_sites_and_shapes_events_only_and_with_values():
    batch = _hawkes().series.to_jump_batch()
    m = LatentJumpSDE(latent_dim=3, hidden_dim=8, context_dim=4, dt=0.5)
    tr = poutine.trace(m.model).get_trace(batch)
    U = m.prepare(batch).grid.grid.numel()
    N = batch.events.times.shape[1]
    assert tr.nodes[Z0_SITE]["value"].shape == (3, 1, 3)
    assert tr.nodes[PATH_SITE]["value"].shape == (3, 1, U, 3)
    assert tr.nodes[EVENTS_SITE]["value"].shape == (3, 1, N, 2)
    assert tr.nodes[EVENTS_SITE]["is_observed"]
    assert tr.nodes[JUMPS_SITE]["value"].shape == (3, 1, N, 3)
    assert OBS_SITE not in tr.nodes
    s = _with_values()
    m2 = LatentJumpSDE(obs_dim=2, num_marks=3, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.5)
    b2 = s.to_jump_batch()
    tr2 = poutine.trace(m2.model).get_trace(b2)
    assert tr2.nodes[OBS_SITE]["value"].shape == (2, 6, 2)
    # the guide samples the same path site and the ELBO is finite with gradients
    loss = PathELBO(max_plate_nesting=2).differentiable_loss(m2.model, m2.guide, b2)
    loss.backward()
    assert torch.isfinite(loss) and m2.jump_net.net[-1].weight.grad is not None
    assert m2.core.encoder.gru.weight_ih_l0.grad is not None


def test_path_density_applies_jumps_at_event_grid_points():
    s = _with_values()
    batch = s.to_jump_batch()
    m = LatentJumpSDE(obs_dim=2, num_marks=3, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.5)
    _random_jumps(m)
    prep = m.prepare(batch)
    grid = prep.grid.grid
    # every real event sits on its own grid point, with its mark
    assert int(prep.at.sum()) == 3
    assert torch.equal(grid[prep.event_index[0, :2]], batch.events.times[0, :2])
    assert prep.onehot[1, 0, prep.event_index[1, 0]].tolist() == [0.0, 0.0, 1.0]
    inner = m.core.prior_sde(prep.merged, grid)
    sde = m._bound(prep, inner)
    z0 = torch.randn(2, 1, 2)
    with torch.no_grad():
        z = SDEPath(sde, z0, grid).sample()
        lp = SDEPath(sde, z0, grid).log_prob(z)
        # Manual scheme: z_{k+1} ~ N(z+_k + f(z+_k) dt, g(z+_k)^2 dt), z+ = z + J(z, m) at events.
        at = prep.at.unsqueeze(-1).to(z.dtype)
        zp = z + m.jump(z, prep.onehot) * at
        f, g = inner.on_path(grid[:-1], zp[..., :-1, :])
        manual = euler_transition_log_prob(z[..., 1:, :] - zp[..., :-1, :], f, g, grid.diff())
    assert torch.allclose(lp, manual, rtol=1e-10)
    assert float((zp - z).abs().sum()) > 0  # the jumps are not trivially zero


def test_event_likelihood_uses_left_limits_and_post_jump_compensator():
    batch = _hawkes().series.to_jump_batch()
    m = LatentJumpSDE(latent_dim=2, hidden_dim=8, context_dim=4, dt=0.5)
    _random_jumps(m)
    tr = poutine.trace(m.model).get_trace(batch)
    tr.compute_log_prob()
    z = tr.nodes[PATH_SITE]["value"].squeeze(1)  # [B, U, L]
    prep = m.prepare(batch)
    grid = prep.grid.grid
    ev = batch.events
    with torch.no_grad():
        at = prep.at.squeeze(1).unsqueeze(-1).to(z.dtype)
        zp = z + m.jump(z, prep.onehot.squeeze(1)) * at
        lam, lam_p = m.intensity(z)[..., 0], m.intensity(zp)[..., 0]
        for b in range(ev.times.shape[0]):
            n = int(ev.counts[b])
            # an event reads the intensity of the state just before its own jump
            log_lam = lam[b, prep.event_index[b, :n]].log().sum()
            comp = piecewise_linear_integral(
                grid, lam_p[b, :-1, None], lam[b, 1:, None], ev.window[b, 0], ev.window[b, 1]
            )
            expected = log_lam - comp.sum()
            assert float(tr.nodes[EVENTS_SITE]["log_prob"][b, 0]) == pytest.approx(float(expected))


def test_low_variance_kl_cancels_the_shared_jumps():
    batch = _hawkes().series.to_jump_batch()
    m = LatentJumpSDE(latent_dim=2, hidden_dim=8, context_dim=4, dt=0.5)
    _random_jumps(m)
    gtr = poutine.trace(m.guide).get_trace(batch)
    q = gtr.nodes[PATH_SITE]["fn"]
    z = gtr.nodes[PATH_SITE]["value"]
    prep = m.prepare(batch)
    grid = prep.grid.grid
    p = SDEPath(m._bound(prep, m.core.prior_sde(prep.merged, grid)), z[..., 0, :], grid)
    kl = q.path_kl(p, z)
    with torch.no_grad():
        at = prep.at.unsqueeze(-1).to(z.dtype)
        zp = (z + m.jump(z, prep.onehot) * at)[..., :-1, :]
        context = m.core.encode(prep.merged)
        f_q = m.core.posterior_sde(prep.merged, grid, context).drift_on_path(grid[:-1], zp)
        f_p = m.core.prior_sde(prep.merged, grid).drift_on_path(grid[:-1], zp)
        g = m.core.diffusion(zp)
        manual = 0.5 * (((f_q - f_p) / g).square() * grid.diff().unsqueeze(-1)).sum((-1, -2))
    assert torch.allclose(kl.detach(), manual, rtol=1e-8, atol=1e-10)


def test_bad_batches():
    m = LatentJumpSDE(num_marks=2, latent_dim=2, hidden_dim=8, context_dim=4)
    s = _hawkes().series
    with pytest.raises(BayesdynValueError, match="batch carries no events; build it with"):
        m.model(s.to_batch())
    with pytest.raises(BayesdynTypeError, match="batch must be a JumpBatch"):
        m.model(object())
    s3 = _with_values()
    with pytest.raises(
        BayesdynValueError, match="events has num_marks=3, the model expects num_marks=2"
    ):
        m.model(s3.to_jump_batch())
    m_obs0 = LatentJumpSDE(num_marks=3, latent_dim=2, hidden_dim=8, context_dim=4)
    with pytest.raises(BayesdynValueError, match="observed values but the model has obs_dim=0"):
        m_obs0.model(s3.to_jump_batch())
    m_obs1 = LatentJumpSDE(obs_dim=1, num_marks=3, latent_dim=2, hidden_dim=8, context_dim=4)
    with pytest.raises(
        BayesdynValueError, match="values has 2 channels, the model expects obs_dim=1"
    ):
        m_obs1.model(s3.to_jump_batch())
    with pytest.raises(BayesdynValueError, match="unknown LatentJumpSDE option"):
        LatentJumpSDE(num_mark=2)
    with pytest.raises(BayesdynValueError, match="num_marks must be an integer >= 1"):
        LatentJumpSDE(num_marks=0)
    with pytest.raises(BayesdynValueError, match="horizon must be a finite positive number"):
        forecast_events(m_obs0, s3, horizon=-1.0)


def test_checkpoint_round_trip():
    m = LatentJumpSDE(num_marks=2, latent_dim=2, hidden_dim=8, context_dim=4)
    _random_jumps(m)
    m2 = LatentJumpSDE.from_checkpoint(m.to_checkpoint())
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(BayesdynValueError, match="not a bayesdyn LatentJumpSDE checkpoint"):
        LatentJumpSDE.from_checkpoint({"format": "x"})


def test_fit_on_hawkes_learns_self_excitation_and_forecasts():
    # Four exponential-Hawkes sequences on [0, 30]; the intensity starts flat at 0.2.
    d = simulate_hawkes(num_series=4, t1=30.0, seed=0, **HAWKES)
    batch = d.series.to_jump_batch()
    m = LatentJumpSDE(
        latent_dim=3, hidden_dim=16, context_dim=4, dt=0.5, init_intensity=0.2, diffusion_max=1.0
    )
    res = fit(m, batch, num_steps=40, lr=0.03, seed=0)
    losses = [r["loss"] for r in res.history]
    # The negative ELBO falls by orders of magnitude (the prior/posterior mismatch at init).
    assert np.mean(losses[-5:]) < 0.05 * np.mean(losses[:5])
    fc = forecast_events(m, batch, horizon=10.0, num_samples=32, num_steps=20, seed=0)
    g = fc.fit_times.numpy()
    post = fc.fit_intensity.sum(-1).mean(0).numpy()  # posterior mean intensity [B, U]
    true = np.stack([hawkes_intensity(g, e, **HAWKES) for e in d.series.events])
    # Against the true Hawkes intensity, the posterior mean beats the best constant intensity
    # per series (each series' own event rate, the Poisson MLE): only a model that learned to
    # raise its intensity after events can do that.
    rates = batch.events.counts.double().numpy() / 30.0
    mae_post = np.abs(post - true).mean()
    mae_poisson = np.mean([np.abs(r - t).mean() for r, t in zip(rates, true, strict=True)])
    assert mae_post < 0.9 * mae_poisson
    assert np.corrcoef(post.ravel(), true.ravel())[0, 1] > 0.5
    # The state's jump raises the intensity at the observed events (self-excitation), by
    # many standard errors over posterior draws and events.
    prep = m.prepare(batch)
    with torch.no_grad(), pyro.plate("draws", 32, dim=-3):
        z = m.guide(batch).squeeze(-3)
    at = prep.at.squeeze(1)
    with torch.no_grad():
        zp = z + m.jump(z, prep.onehot.squeeze(1)) * at.unsqueeze(-1).to(z.dtype)
        dlam = (m.intensity(zp) - m.intensity(z)).sum(-1)[:, at]
    assert float(dlam.mean()) > Z_CRIT * float(dlam.std()) / math.sqrt(dlam.numel())
    # Forecast: shapes, events sorted and inside (window end, window end + horizon].
    S, B = 32, 4
    assert fc.times.shape[:2] == (S, B) and fc.intensity.shape == (S, B, 21, 1)
    t, mk = fc.times, fc.mask
    assert bool(((t > fc.start.view(1, B, 1)) & (t <= fc.end.view(1, B, 1)))[mk].all())
    assert bool(((t[..., 1:] >= t[..., :-1]) | ~mk[..., 1:]).all())
    cq = fc.count_quantiles([0.05, 0.5, 0.95])
    assert bool((cq[0] <= cq[1]).all() and (cq[1] <= cq[2]).all())
    band = fc.intensity_quantiles([0.05, 0.95])
    assert bool((band[0] <= band[1]).all())
    again = forecast_events(m, batch, horizon=10.0, num_samples=32, num_steps=20, seed=0)
    assert torch.equal(again.times, fc.times)
    fig = fc.plot(data=d.series)
    assert len(fig.axes) == 4
