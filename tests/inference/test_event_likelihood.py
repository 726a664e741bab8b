"""event_log_likelihood: closed-form constant intensity, a random-intensity marginal likelihood
by quadrature, predictive intensity at query times, chunking, errors, guide='prior'."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import IrregularTimeSeries, simulate_hawkes
from bayesdyn.inference import PathELBO, event_log_likelihood
from bayesdyn.models import LatentJumpSDE
from tests.conftest import TEST_FAILURE_RATE

Z_CRIT = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - TEST_FAILURE_RATE / 2)))


def _events_only(events, t1):
    B = len(events)
    return IrregularTimeSeries(
        [np.array([0.0, t1])] * B,
        [np.zeros((2, 1))] * B,
        [np.zeros((2, 1), dtype=bool)] * B,
        events=events,
        require_observed_channels=False,
    )


def _frozen_state_model(w: float, c: float, z0_scale: float) -> LatentJumpSDE:
    """latent_dim 1, zero drift, no jumps, diffusion ~1e-7: the state stays at z0 ~ N(0, s),
    and the intensity softplus(w z0 + c) is constant in time along each path."""
    m = LatentJumpSDE(
        latent_dim=1,
        hidden_dim=4,
        context_dim=2,
        stable_drift=False,
        diffusion_min=1e-8,
        diffusion_max=1e-6,
        min_intensity=0.0 + 1e-12,
        dt=0.5,
    )
    with torch.no_grad():
        last = m.core.prior_drift.rest[-1]
        last.weight.zero_()
        last.bias.zero_()
        m.intensity_head.weight.fill_(w)
        m.intensity_head.bias.fill_(c)
        m.core.z0_prior.loc.zero_()
        m.core.z0_prior.raw_scale.fill_(math.log(math.expm1(z0_scale - 1e-4)))
    return m


def test_constant_intensity_closed_form_chunks_and_query_intensity():
    ev = [np.array([0.3, 1.1, 2.5, 4.0]), np.array([]), np.array([0.7, 3.9])]
    s = _events_only(ev, 5.0)
    m = _frozen_state_model(w=0.0, c=0.4, z0_scale=0.5)
    lam = math.log1p(math.exp(0.4)) + 1e-12
    exact = torch.tensor([n * math.log(lam) - lam * 5.0 for n in (4, 0, 2)])
    q = torch.tensor([0.0, 0.3, 2.0, 5.0])
    res = event_log_likelihood(m, s, 3, query_times=q, chunk_size=2, seed=0)
    torch.testing.assert_close(res.log_lik, exact, rtol=1e-10, atol=1e-10)
    assert res.per_sample.shape == (3, 3) and res.num_events.tolist() == [4, 0, 2]
    assert res.per_event() == pytest.approx(float(exact.sum()) / 6, rel=1e-10)
    assert res.per_time() == pytest.approx(float(exact.sum()) / 15, rel=1e-10)
    assert res.intensity.shape == (3, 3, 4, 1)
    torch.testing.assert_close(res.mean_intensity(), torch.full((3, 4), lam))
    one = event_log_likelihood(m, s, 3, chunk_size=1, seed=1)  # other chunking, other grids
    torch.testing.assert_close(one.log_lik, exact, rtol=1e-10, atol=1e-10)
    with pytest.raises(BayesdynValueError, match="no intensity: pass query_times"):
        one.mean_intensity()


def test_random_intensity_matches_the_marginal_likelihood_by_quadrature():
    # lambda = softplus(w z0 + c) with z0 ~ N(0, s^2) per series: p(events) = E[lam^N e^{-lam T}],
    # computed by 120-node Gauss-Hermite quadrature (exact to ~1e-12 here).
    w, c, sd, T = 0.8, 0.2, 0.5, 5.0
    ev = [np.array([0.3, 1.1, 2.5, 4.0, 4.2, 4.9]), np.array([1.5])]
    m = _frozen_state_model(w=w, c=c, z0_scale=sd)
    x, wt = np.polynomial.hermite_e.hermegauss(120)
    lam = np.log1p(np.exp(w * sd * x + c))
    exact = [
        math.log(np.sum(wt * np.exp(n * np.log(lam) - lam * T)) / math.sqrt(2 * math.pi))
        for n in (6, 1)
    ]
    S = 4000
    res = event_log_likelihood(m, _events_only(ev, T), S, seed=0)
    # Delta method: log mean(e^l) has standard error sd(e^l) / (mean(e^l) sqrt(S)) and a
    # bias of about -se^2/2 (Jensen); both are estimated from the draws themselves.
    wts = torch.exp(res.per_sample - res.per_sample.max(0).values)
    se = (wts.std(0) / (wts.mean(0) * math.sqrt(S))).numpy()
    err = res.log_lik.numpy() - np.array(exact)
    assert np.all(np.abs(err + se**2 / 2) < Z_CRIT * se), (err, se)
    # negative control: the same check rejects the intensity at the prior mean of z0 (which
    # ignores the randomness of the intensity)
    at_mean = [n * math.log(math.log1p(math.exp(c))) - math.log1p(math.exp(c)) * T for n in (6, 1)]
    assert np.any(np.abs(res.log_lik.numpy() - np.array(at_mean) + se**2 / 2) > Z_CRIT * se)


def test_prior_guide_elbo_is_the_expected_log_likelihood_along_prior_paths():
    # guide="prior": the KL terms vanish, so with a deterministic prior path (tiny diffusion
    # and z0 scale) the negative ELBO is minus the exact log-likelihood of that path.
    d = simulate_hawkes(num_series=2, t1=6.0, seed=1, baseline=0.3, alpha=0.5, beta=1.0)
    m = LatentJumpSDE(
        latent_dim=2,
        hidden_dim=8,
        context_dim=2,
        diffusion_min=1e-9,
        diffusion_max=1e-8,
        dt=0.5,
        guide="prior",
    )
    with torch.no_grad():
        m.jump_net.net[-1].weight.normal_(std=0.5)
        m.core.z0_prior.raw_scale.fill_(-30.0)  # scale 1e-4 + ~1e-13
    batch = d.series.to_jump_batch()
    loss = PathELBO(max_plate_nesting=2).differentiable_loss(m.model, m.guide, batch)
    ll = event_log_likelihood(m, batch, 2, seed=0)
    # z0 spread 1e-4 moves the log-likelihood by O(1e-4) per series
    assert loss.item() == pytest.approx(-float(ll.log_lik.sum()), abs=2e-3)
    loss.backward()
    assert m.jump_net.net[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.core.encoder.parameters())  # no encoder in use
    with pytest.raises(BayesdynValueError, match="guide must be 'encoder' or 'prior'"):
        LatentJumpSDE(guide="posterior")


def test_event_log_likelihood_errors():
    m = LatentJumpSDE(latent_dim=2, hidden_dim=4, context_dim=2)
    s = _events_only([np.array([1.0])], 5.0)
    with pytest.raises(BayesdynValueError, match="num_samples must be a positive integer; got 0"):
        event_log_likelihood(m, s, 0)
    with pytest.raises(BayesdynValueError, match="chunk_size must be a positive integer"):
        event_log_likelihood(m, s, 2, chunk_size=0)
    with pytest.raises(
        BayesdynValueError, match=r"query_times must lie inside every series' window"
    ):
        event_log_likelihood(m, s, 2, query_times=torch.tensor([1.0, 6.0]))
    with pytest.raises(BayesdynValueError, match=r"query_times must be a 1-D tensor \[Q\]"):
        event_log_likelihood(m, s, 2, query_times=torch.ones(2, 2))
