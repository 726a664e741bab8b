"""Log-linear intensities and the exp link: exact self-correcting likelihoods, the logarithmic
mean, thinning, and a LatentJumpSDE that represents the self-correcting process exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pyro import poutine
from scipy import stats

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import (
    self_correcting_intensity,
    self_correcting_log_likelihood,
    simulate_self_correcting,
)
from bayesdyn.inference import event_log_likelihood, forecast_events
from bayesdyn.models import EVENTS_SITE, LatentJumpSDE, LatentJumpSDEConfig, TemporalPointProcess
from bayesdyn.solvers import (
    interval_mean,
    make_union_grid,
    piecewise_linear_integral,
    thinning_sample,
)
from tests.conftest import TEST_FAILURE_RATE

Z_CRIT = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)
SC = dict(mu=0.5, beta=0.2)


def _value(times):
    t = torch.tensor(np.array(times, dtype=np.float64))
    return torch.stack([t, torch.zeros_like(t)], -1)


def _self_correcting_tpp(ev, lo, hi, dt, interpolation):
    """Exact self-correcting intensity on a grid holding the events (plus 0 and the window end):
    right limits at interval starts, left limits at interval ends."""
    knots = torch.tensor(np.r_[0.0, ev, hi]).unsqueeze(0)
    grid = make_union_grid(knots, dt=dt, t0=0.0).grid
    g = grid.numpy()
    left = self_correcting_intensity(g, ev, **SC)
    right = left * np.where(np.isin(g, ev), math.exp(-SC["beta"]), 1.0)
    start = torch.as_tensor(right[:-1]).unsqueeze(-1)
    end = torch.as_tensor(left[1:]).unsqueeze(-1)
    return TemporalPointProcess(
        grid, start=start, end=end, window=torch.tensor([lo, hi]), interpolation=interpolation
    )


def test_self_correcting_log_prob_is_exact_with_log_linear_pieces():
    d = simulate_self_correcting(num_series=1, t1=30.0, seed=3, **SC)
    ev = d.series.events[0]
    assert ev.size > 20
    # The window starts before the first event but not on a grid point.
    lo, hi = 0.1, 30.0
    assert (ev >= lo).all()
    exact = self_correcting_log_likelihood(ev, lo, hi, **SC)
    errs = {}
    for dt in (1.0, 0.25):
        tpp = _self_correcting_tpp(ev, lo, hi, dt, "log_linear")
        lp = float(tpp.log_prob(_value(ev)))
        # log lambda is linear in t between events, so log-linear pieces are exact at any dt
        assert lp == pytest.approx(exact, rel=1e-10, abs=1e-9)
        assert abs(float(tpp.compensator_error())) < 1e-9 * abs(float(tpp.compensator()))
        lin = _self_correcting_tpp(ev, lo, hi, dt, "linear")
        errs[dt] = exact - float(lin.log_prob(_value(ev)))
    # Negative control: linear pieces overestimate the compensator of the convex intensity, by
    # O(dt^2) on the intervals longer than dt.
    assert errs[1.0] > errs[0.25] > 1e-4


def test_log_linear_integral_on_partial_window_and_interval_mean():
    a, b = 0.3, 0.7  # lambda(t) = exp(a + b t)
    grid = torch.linspace(0.0, 5.0, 6, dtype=torch.float64)
    lam = torch.exp(a + b * grid).unsqueeze(-1)
    lo, hi = torch.tensor(0.35, dtype=torch.float64), torch.tensor(4.2, dtype=torch.float64)
    got = piecewise_linear_integral(grid, lam[:-1], lam[1:], lo, hi, "log_linear")
    exact = (math.exp(a + b * 4.2) - math.exp(a + b * 0.35)) / b
    assert float(got) == pytest.approx(exact, rel=1e-12)
    tpp = TemporalPointProcess(grid, lam, interpolation="log_linear")
    assert float(tpp.intensity_at(torch.tensor([2.3], dtype=torch.float64))[0, 0]) == (
        pytest.approx(math.exp(a + b * 2.3), rel=1e-12)
    )
    # The logarithmic mean is accurate (Taylor branch and closed form) and smooth across 1e-3.
    x = torch.tensor([0.0, 1e-9, 1e-5, 9.99e-4, 1.001e-3, 0.3, 5.0, -7.0], dtype=torch.float64)
    ref = [1.0] + [math.expm1(v) / v for v in x.tolist()[1:]]
    got = interval_mean(torch.full_like(x, 2.0), 2.0 * torch.exp(x), "log_linear") / 2.0
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11)
    # gradients: finite differences, including ends that agree exactly
    ab = torch.tensor([[1.3, 1.3], [0.4, 2.5], [2.0, 2.0000001]], dtype=torch.float64)
    ab.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: interval_mean(v[:, 0], v[:, 1], "log_linear"), (ab,), atol=1e-7
    )


def test_log_linear_thinning_counts_and_time_rescaling():
    # A strongly curved intensity on a coarse grid: 0.1 -> 20 -> 0.1 over intervals of length 1,
    # where linear and log-linear pieces differ a lot.
    grid = torch.linspace(0.0, 6.0, 7, dtype=torch.float64)
    lam = torch.tensor([0.1, 1.0, 20.0, 3.0, 0.1, 5.0, 0.5], dtype=torch.float64).unsqueeze(-1)
    n = 400
    gen = torch.Generator().manual_seed(0)
    start, end = lam[:-1].expand(n, 6, 1), lam[1:].expand(n, 6, 1)
    t, _, mask = thinning_sample(grid, start, end, interpolation="log_linear", generator=gen)
    counts = mask.sum(-1).double()
    total = float(piecewise_linear_integral(grid, lam[:-1], lam[1:], None, None, "log_linear"))
    assert abs(float(counts.mean()) - total) < Z_CRIT * math.sqrt(total / n)
    tt = t[mask]

    def rescaled(interpolation):
        hi = tt.unsqueeze(-1)
        part = piecewise_linear_integral(
            grid, lam[:-1].expand(tt.numel(), 6, 1), lam[1:].expand(tt.numel(), 6, 1),
            torch.zeros(tt.numel(), dtype=torch.float64), hi.squeeze(-1), interpolation,
        )  # fmt: skip
        full = piecewise_linear_integral(grid, lam[:-1], lam[1:], None, None, interpolation)
        return (part[:, 0] / full[0]).numpy()

    assert stats.kstest(rescaled("log_linear"), "uniform").pvalue > TEST_FAILURE_RATE
    # Negative control: the linear compensator does not rescale these times to uniforms.
    assert stats.kstest(rescaled("linear"), "uniform").pvalue < TEST_FAILURE_RATE


def test_bad_interpolation_and_non_positive_log_linear_intensity():
    grid = torch.linspace(0, 1, 5)
    with pytest.raises(BayesdynValueError, match="interpolation must be one of"):
        TemporalPointProcess(grid, torch.ones(5, 1), interpolation="cubic")
    with pytest.raises(BayesdynValueError, match=r"must be finite and positive \(log_linear"):
        TemporalPointProcess(grid, torch.zeros(5, 1), interpolation="log_linear")
    with pytest.raises(BayesdynValueError, match="intensity_link must be one of"):
        LatentJumpSDEConfig(intensity_link="relu")
    with pytest.raises(BayesdynValueError, match="max_log_intensity must exceed"):
        LatentJumpSDEConfig(intensity_link="exp", init_intensity=5.0, max_log_intensity=1.0)


def _exact_self_correcting_model(dt: float, grid: str = "union") -> LatentJumpSDE:
    """A LatentJumpSDE (exp link) set by hand to lambda = exp(mu t - beta N): z_0 starts at 0
    (a tiny prior scale), drifts at mu, jumps by -beta, and lambda = exp(z_0); the diffusion is
    at its (tiny) floor. ``grid``: the solver grid layout (``LatentJumpSDEConfig.grid``)."""
    m = LatentJumpSDE(
        latent_dim=1,
        hidden_dim=4,
        context_dim=2,
        jump_hidden_dim=4,
        intensity_link="exp",
        stable_drift=False,
        diffusion_min=1e-7,
        diffusion_max=2e-7,
        min_intensity=0.0,
        dt=dt,
        grid=grid,
        guide="prior",
    ).double()
    with torch.no_grad():
        last = m.core.prior_drift.rest[-1]
        last.weight.zero_()
        last.bias.fill_(SC["mu"])
        m.jump_net.net[-1].weight.zero_()
        m.jump_net.net[-1].bias.fill_(-SC["beta"])
        m.intensity_head.weight.fill_(1.0)
        m.intensity_head.bias.zero_()
        m.core.z0_prior.loc.zero_()
        m.core.z0_prior.raw_scale.fill_(-50.0)  # scale = its floor, 1e-4
    return m


def test_exp_link_latent_jump_sde_reproduces_the_self_correcting_likelihood():
    d = simulate_self_correcting(num_series=3, t1=20.0, seed=5, **SC)
    exact = np.array([self_correcting_log_likelihood(e, 0.0, 20.0, **SC) for e in d.series.events])
    m = _exact_self_correcting_model(dt=0.5)
    assert m.interpolation == "log_linear"
    per_sample = event_log_likelihood(m, d.series, num_samples=4, seed=0, progress=False)
    lls = per_sample.per_sample.numpy()  # [S, B]
    # The path is exact up to z0 ~ N(0, 1e-4^2) (and a 1e-7 diffusion): a shift eps of the
    # log-intensity changes the log-likelihood by eps (N - Lambda) + O(eps^2 Lambda), so every
    # draw lies within 5 sd of the exact value, sd = 1e-4 |N - Lambda|.
    counts = np.array([e.size for e in d.series.events])
    comp = -exact + np.array(
        [np.sum(SC["mu"] * e - SC["beta"] * np.arange(e.size)) for e in d.series.events]
    )  # Lambda = sum log lambda(t_i) - log-likelihood
    tol = 5 * 1e-4 * np.abs(counts - comp) + 1e-8 * comp
    assert (np.abs(lls - exact) <= tol).all(), (lls - exact, tol)
    # Negative control: the same path scored with linear pieces overestimates the compensator.
    batch = d.series.to_jump_batch()
    tr = poutine.trace(m.model).get_trace(batch)
    fn = tr.nodes[EVENTS_SITE]["fn"]
    while not isinstance(fn, TemporalPointProcess):
        fn = fn.base_dist
    value = tr.nodes[EVENTS_SITE]["value"]
    fn.interpolation = "linear"
    lin = fn.log_prob(value).reshape(-1).detach().numpy()
    assert (exact - lin > 5 * tol).all()  # 25 sd outside


def _rescaled_gaps(events, mu, beta):
    """Compensator increments between consecutive events (and from 0): i.i.d. Exp(1) under the
    true parameters (time-rescaling theorem)."""
    gaps = []
    for e in events:
        edges = np.r_[0.0, e]
        k = np.arange(e.size)
        gaps.append(np.exp(-beta * k) * (np.exp(mu * edges[1:]) - np.exp(mu * edges[:-1])) / mu)
    return np.concatenate(gaps)


def test_simulate_self_correcting_time_rescaling():
    d = simulate_self_correcting(num_series=20, t1=50.0, seed=0, **SC)
    assert d.truth["long_run_rate"] == pytest.approx(SC["mu"] / SC["beta"])
    u = _rescaled_gaps(d.series.events, **SC)
    assert u.size > 1000
    assert stats.kstest(u, "expon").pvalue > TEST_FAILURE_RATE
    # Negative control: sequences with a weaker drop (beta 0.1) are rejected under beta 0.2.
    other = simulate_self_correcting(num_series=20, t1=50.0, seed=0, mu=0.5, beta=0.1)
    assert stats.kstest(_rescaled_gaps(other.series.events, **SC), "expon").pvalue < (
        TEST_FAILURE_RATE
    )
    with pytest.raises(BayesdynValueError, match="beta"):
        simulate_self_correcting(beta=0.0)


@pytest.mark.parametrize("link", ["softplus", "exp"])
def test_zero_drift_init_starts_from_the_poisson_process(link):
    # With zero drift and zero jumps the state stays at z0 ~ N(0, 1e-4^2) (plus a 1e-7
    # diffusion), so the intensity is link(c) = init_intensity up to |W z0| ~ 1e-5 and the
    # model is the Poisson process: log-likelihood N log(1.7) - 1.7 T, to ~1e-5 relative.
    d = simulate_self_correcting(num_series=2, t1=10.0, seed=1, **SC)
    counts = np.array([e.size for e in d.series.events])
    poisson = counts * math.log(1.7) - 1.7 * 10.0
    lls = []
    for zero in (True, False):
        torch.manual_seed(0)
        m = LatentJumpSDE(
            latent_dim=2, hidden_dim=4, context_dim=2, jump_hidden_dim=4, intensity_link=link,
            stable_drift=False, zero_drift_init=zero, diffusion_min=1e-7, diffusion_max=2e-7,
            init_intensity=1.7, min_intensity=0.0, dt=0.5, guide="prior",
        ).double()  # fmt: skip
        with torch.no_grad():
            m.core.z0_prior.loc.zero_()
            m.core.z0_prior.raw_scale.fill_(-50.0)
        res = event_log_likelihood(m, d.series, num_samples=2, seed=0, progress=False)
        lls.append(res.log_lik.numpy())
    np.testing.assert_allclose(lls[0], poisson, rtol=1e-5)
    # Negative control: the random initial drift moves the state and the intensity.
    assert np.abs(lls[1] - poisson).max() > 1e-2


def test_z0_scale_init():
    m = LatentJumpSDE(latent_dim=3, hidden_dim=4, context_dim=2, z0_scale_init=0.01)
    np.testing.assert_allclose(m.core.z0_prior.scale().detach().numpy(), 0.01, rtol=1e-6)
    default = LatentJumpSDE(latent_dim=3, hidden_dim=4, context_dim=2)
    np.testing.assert_allclose(
        default.core.z0_prior.scale().detach().numpy(), math.log(2.0) + 1e-4, rtol=1e-6
    )
    with pytest.raises(BayesdynValueError, match=r"z0_scale_init must be a number in \[1e-3"):
        LatentJumpSDEConfig(z0_scale_init=0.0)


def _true_continuation_counts(events, t0, horizon, n_draws, rng, mu=0.5, beta=0.2):
    """Exact counts of the self-correcting process on (t0, t0 + horizon] given its history."""
    out = np.empty(n_draws)
    for i in range(n_draws):
        s, n, c = t0, events.size, 0
        while True:
            s = float(np.logaddexp(mu * s, math.log(mu * rng.exponential()) + beta * n)) / mu
            if s > t0 + horizon:
                break
            n, c = n + 1, c + 1
        out[i] = c
    return out


def test_exp_link_event_forecast_matches_the_true_continuation():
    # The hand-set exact model forecasts by Ogata thinning with log-linear steps; its counts
    # after the window must match the exact continuation of the true process (z-test on the
    # difference of means with both sample variances).
    d = simulate_self_correcting(num_series=2, t1=20.0, seed=2, **SC)
    m = _exact_self_correcting_model(dt=0.5)
    fc = forecast_events(m, d.series, horizon=4.0, num_samples=400, num_steps=40, seed=0)
    counts = fc.counts().double().numpy()  # [S, B]
    rng = np.random.default_rng(0)
    for b, ev in enumerate(d.series.events):
        ref = _true_continuation_counts(ev, 20.0, 4.0, 4000, rng)
        se = math.sqrt(counts[:, b].var(ddof=1) / counts.shape[0] + ref.var(ddof=1) / ref.size)
        assert abs(counts[:, b].mean() - ref.mean()) < Z_CRIT * se
    # Negative control: the continuation of a process whose log-intensity grows faster
    # (mu 0.6) from the same history is rejected by the same test.
    other = _true_continuation_counts(d.series.events[0], 20.0, 4.0, 4000, rng, mu=0.6)
    se = math.sqrt(counts[:, 0].var(ddof=1) / counts.shape[0] + other.var(ddof=1) / other.size)
    assert abs(counts[:, 0].mean() - other.mean()) > Z_CRIT * se
