import math

import pyro
import pytest
import torch
from pyro.infer import SVI
from scipy import stats

from bayesdyn import LatentSDE, PathELBO
from bayesdyn._validation import BayesdynValueError
from tests.common import ragged_batch
from tests.conftest import TEST_FAILURE_RATE


def small_model(D=2):
    torch.manual_seed(1)
    return LatentSDE(D, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.1, diffusion_hidden_dim=4)


def per_series_elbos(model, batch):
    """Low-variance and naive ELBO of each series, from one shared guide sample."""
    elbo = PathELBO()
    mt, gt = elbo._get_trace(model.model, model.guide, (batch,), {})
    obs = mt.nodes["obs"]
    obs_lp = (obs["fn"].log_prob(obs["value"])).sum(-1)  # [B]
    z_p, z_q = mt.nodes["z"], gt.nodes["z"]
    z0_p, z0_q = mt.nodes["z0"], gt.nodes["z0"]
    kl0 = (z0_q["fn"].log_prob(z0_q["value"]) - z0_p["fn"].log_prob(z0_q["value"])).squeeze(-1)
    lowvar = obs_lp - z_q["fn"].path_kl(z_p["fn"], z_q["value"]).squeeze(-1) - kl0
    naive = (
        obs_lp
        + (z_p["fn"].log_prob(z_q["value"]) - z_q["fn"].log_prob(z_q["value"])).squeeze(-1)
        - kl0
    )
    return lowvar.detach(), naive.detach()


def test_lowvar_and_naive_agree_in_expectation_and_lowvar_has_less_variance():
    # N copies of one series: each copy is an independent draw of the same ELBO estimator.
    one = ragged_batch(B=1, T=6)
    N = 4000
    batch = type(one)(*(x.expand(N, *x.shape[1:]) for x in one[:4]))
    model = small_model()
    with torch.no_grad():  # move the posterior drift away from the prior so the KL is not ~0
        model.post_drift.rest[-1].bias.add_(0.8)
    lo, na = per_series_elbos(model, batch)
    z = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)
    diff = na - lo  # the stochastic integral: zero mean
    assert abs(float(diff.mean())) < z * float(diff.std()) / math.sqrt(N)
    # Pitman-Morgan test for paired variances: var(lo) < var(na) <=> corr(lo+na, lo-na) < 0.
    r = float(torch.corrcoef(torch.stack([lo + na, lo - na]))[0, 1])
    t = r * math.sqrt(N - 2) / math.sqrt(1 - r * r)
    assert t < stats.t.ppf(TEST_FAILURE_RATE, N - 2)
    assert float(lo.var()) < float(na.var())


def test_gradient_matches_finite_differences_under_common_random_numbers():
    batch = ragged_batch(B=2, T=5)
    model = small_model()
    p = model.prior_drift.rest[-1].bias

    def loss():
        torch.manual_seed(11)
        return PathELBO().differentiable_loss(model.model, model.guide, batch)

    model.zero_grad()
    loss().backward()
    g = p.grad.clone()
    eps = 1e-6
    for i in range(p.numel()):
        with torch.no_grad():
            p[i] += eps
        up = loss().item()
        with torch.no_grad():
            p[i] -= 2 * eps
        down = loss().item()
        with torch.no_grad():
            p[i] += eps
        assert float(g[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-6)


def test_vectorized_particles_and_pyro_svi():
    batch = ragged_batch(B=3, T=5)
    model = small_model()
    elbo = PathELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    assert math.isfinite(elbo.loss(model.model, model.guide, batch))
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), loss=PathELBO())
    losses = [svi.step(batch) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert len(pyro.get_param_store()) == len(list(model.parameters()))


def test_elbo_rejects_bad_option_and_non_reparameterized_guide():
    with pytest.raises(BayesdynValueError, match="path_kl must be 'lowvar' or 'naive'"):
        PathELBO(path_kl="exact")

    import pyro.distributions as dist

    def model():
        pyro.sample("k", dist.Poisson(3.0))

    def guide():
        pyro.sample("k", dist.Poisson(2.0))

    with pytest.raises(BayesdynValueError, match="needs reparameterised guide sites; site 'k'"):
        PathELBO().loss(model, guide)
