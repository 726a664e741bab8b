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


def per_series_path_kls(model, batch):
    """Low-variance and naive path-KL estimates of each series, from one shared guide sample."""
    mt, gt = PathELBO()._get_trace(model.model, model.guide, (batch,), {})
    z_p, z_q = mt.nodes["z"], gt.nodes["z"]
    z = z_q["value"]
    lowvar = z_q["fn"].path_kl(z_p["fn"], z).squeeze(-1)
    naive = (z_q["fn"].log_prob(z) - z_p["fn"].log_prob(z)).squeeze(-1)
    return lowvar.detach(), naive.detach()


@pytest.mark.parametrize("bridge", [False, True])
def test_lowvar_and_naive_path_kl_agree_in_expectation_and_lowvar_has_less_variance(bridge):
    # N copies of one series: each copy is an independent draw of the same KL estimator.
    one = ragged_batch(B=1, T=6)
    N = 4000
    batch = type(one)(*(x.expand(N, *x.shape[1:]) for x in one[:4]))
    model = small_model()
    model.config.bridge = bridge
    with torch.no_grad():  # move the posterior drift away from the prior so the KL is not ~0
        model.post_drift.rest[-1].bias.add_(0.8)
    lo, na = per_series_path_kls(model, batch)
    z = stats.norm.ppf(1 - TEST_FAILURE_RATE / 4)  # two tests share the budget
    diff = na - lo  # the stochastic integral: zero mean
    assert abs(float(diff.mean())) < z * float(diff.std()) / math.sqrt(N)
    if bridge:
        # With the bridge the integrand (f_q - f_p)/g varies strongly along paths and both
        # estimators are dominated by that shared part: only unbiasedness is claimed.
        return
    # Pitman-Morgan test for paired variances: var(lo) < var(na) <=> corr(lo+na, lo-na) < 0.
    r = float(torch.corrcoef(torch.stack([lo + na, lo - na]))[0, 1])
    t = r * math.sqrt(N - 2) / math.sqrt(1 - r * r)
    assert t < stats.t.ppf(TEST_FAILURE_RATE / 2, N - 2)


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


def test_particle_elbos_are_independent_one_particle_estimates():
    batch = ragged_batch(B=3, T=5)
    model = small_model()
    elbo = PathELBO(max_plate_nesting=2)
    # One particle: the same random numbers in the same order as one ordinary estimate.
    torch.manual_seed(5)
    one = elbo.particle_elbos(model.model, model.guide, batch, num_particles=1)
    torch.manual_seed(5)
    assert one.shape == (1,)
    assert float(one[0].detach()) == pytest.approx(
        -elbo.loss(model.model, model.guide, batch), rel=1e-10
    )
    # Many particles in one pass vs as many sequential estimates: same distribution
    # (two-sample z-test on the means at the suite's failure rate).
    n = 300
    with torch.no_grad():
        vec = elbo.particle_elbos(model.model, model.guide, batch, num_particles=n)
        seq = torch.tensor([-elbo.loss(model.model, model.guide, batch) for _ in range(n)])
    assert vec.shape == (n,) and float(vec.std()) > 0
    se = math.sqrt(float(vec.var()) / n + float(seq.var()) / n)
    assert abs(float(vec.mean() - seq.mean())) < stats.norm.ppf(1 - TEST_FAILURE_RATE / 2) * se
    with pytest.raises(BayesdynValueError, match="num_particles must be >= 1; got 0"):
        elbo.particle_elbos(model.model, model.guide, batch, num_particles=0)
    with pytest.raises(BayesdynValueError, match="finite max_plate_nesting"):
        PathELBO().particle_elbos(model.model, model.guide, batch, num_particles=2)
