"""Forecast scores against closed forms, brute force, pyro and scipy; calibration controls.

Statistical tolerances: every Monte Carlo comparison uses independent replicates, estimates the
standard error of the compared mean from them, and allows 4 standard errors (two-sided false
alarm about 6e-5 per check, inside the suite's budget TEST_FAILURE_RATE = 1e-3).
"""

import math

import numpy as np
import pytest
import torch
from pyro.ops.stats import crps_empirical
from scipy import integrate, stats

from bayesdyn.diagnostics import (
    calibration_error,
    calibration_table,
    coverage_flags,
    crps_ensemble,
    crps_normal,
    energy_score,
    interval_coverage,
    mixture_nll,
    nll,
    pit_values,
)

Z = 4.0  # standard errors allowed in Monte Carlo comparisons (see module docstring)


def _close_in_se(diff: torch.Tensor, target: float = 0.0):
    """Mean of independent replicates ``diff`` equals ``target`` within Z standard errors."""
    se = float(diff.std() / math.sqrt(diff.numel()))
    assert abs(float(diff.mean()) - target) < Z * se, (float(diff.mean()), target, se)


@pytest.mark.parametrize("batch_shape", [(), (4,), (3, 2)], ids=str)
def test_crps_plugin_matches_pyro_and_fair_matches_brute_force(batch_shape):
    x = torch.randn(7, *batch_shape)
    y = torch.randn(batch_shape)
    torch.testing.assert_close(crps_ensemble(x, y, fair=False), crps_empirical(x, y))
    S = x.shape[0]
    pair = (x.unsqueeze(0) - x.unsqueeze(1)).abs().sum((0, 1))
    brute = (x - y).abs().mean(0) - 0.5 * pair / (S * (S - 1))
    torch.testing.assert_close(crps_ensemble(x, y), brute)


def test_crps_normal_matches_numerical_integral():
    # CRPS = int (F(x) - 1{x >= y})^2 dx, integrated by scipy on both sides of y
    for mu, sd, y in [(0.0, 1.0, 0.3), (1.5, 0.4, -0.2), (-2.0, 3.0, 4.0)]:
        f = stats.norm(mu, sd).cdf
        left = integrate.quad(lambda u, f=f: f(u) ** 2, -np.inf, y)[0]
        right = integrate.quad(lambda u, f=f: (1 - f(u)) ** 2, y, np.inf)[0]
        got = float(crps_normal(torch.tensor(mu), torch.tensor(sd), torch.tensor(y)))
        assert got == pytest.approx(left + right, rel=1e-7)


def test_fair_crps_is_unbiased_for_small_ensembles_and_plugin_is_not():
    # 20000 independent points, each scored with its own S=4 Gaussian ensemble.
    n, S, sd = 20000, 4, 1.7
    y = torch.randn(n) * 2
    x = torch.randn(S, n) * sd
    exact = crps_normal(torch.zeros(n), torch.full((n,), sd), y)
    _close_in_se(crps_ensemble(x, y) - exact)
    # the plug-in estimator is biased upwards by E|X - X'| / (2S) = sd / (sqrt(pi) S)
    _close_in_se(crps_ensemble(x, y, fair=False) - exact, sd / (math.sqrt(math.pi) * S))


def test_energy_score_reduces_to_crps_in_one_dimension():
    x, y = torch.randn(9, 5, 1, 1), torch.randn(5, 1, 1)
    torch.testing.assert_close(energy_score(x, y), crps_ensemble(x, y)[:, 0, 0])
    torch.testing.assert_close(energy_score(x, y, event_dims=0), crps_ensemble(x, y))
    torch.testing.assert_close(
        energy_score(x, y, fair=False), crps_ensemble(x, y, fair=False)[:, 0, 0]
    )


def test_energy_score_of_standard_normal_paths_matches_closed_form():
    # X ~ N(0, I_k), y = 0: E||X|| = sqrt(2) G((k+1)/2) / G(k/2) =: m and X - X' ~ N(0, 2 I), so
    # ES = m - sqrt(2) m / 2.  k = T * D = 6 * 2.
    n, S, T, D = 4000, 8, 6, 2
    k = T * D
    m = math.sqrt(2) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))
    es = energy_score(torch.randn(S, n, T, D), torch.zeros(n, T, D))
    assert es.shape == (n,)
    _close_in_se(es, m * (1 - 1 / math.sqrt(2)))


def test_energy_score_deterministic_and_masked():
    x = torch.randn(3, 4, 2)
    y = torch.randn(3, 4, 2)
    # a one-point ensemble repeated: ES = ||x - y|| (no spread)
    torch.testing.assert_close(energy_score(x.expand(5, -1, -1, -1), y), (x - y).norm(dim=(1, 2)))
    # masked entries do not count: same as scoring the observed entries alone
    xs, mask = torch.randn(6, 3, 4, 2), torch.rand(3, 4, 2) > 0.4
    got = energy_score(xs, y, mask)
    for b in range(3):
        want = energy_score(xs[:, b][:, mask[b]], y[b][mask[b]], event_dims=1)
        torch.testing.assert_close(got[b], want)


def test_randomized_pit_is_uniform_for_tiny_ensembles():
    # With S=3 the plain PIT takes only 4 values; the randomised rank is exactly uniform.
    n = 3000
    y, x = torch.randn(n), torch.randn(3, n)
    g = torch.Generator().manual_seed(1)
    res = calibration_error(pit_values(x, y, randomize=True, generator=g))
    assert res.p_value > 1e-3 and res.n == n
    assert calibration_error(pit_values(x, y)).p_value < 1e-6  # discrete, not uniform


def test_calibration_error_matches_scipy_ks():
    g = torch.Generator().manual_seed(3)
    for n in (20, 300):
        for power in (1.0, 0.7):
            u = torch.rand(n, generator=g) ** power
            res = calibration_error(u)
            ref = stats.kstest(u.numpy(), "uniform")
            assert res.statistic == pytest.approx(ref.statistic, abs=1e-12)
            # Stephens' approximation of the KS p-value is accurate to about 0.01-0.02
            assert res.p_value == pytest.approx(ref.pvalue, abs=0.02)


def _gaussian_forecasts(n=1500, S=400, shrink=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, generator=g)
    y = loc + torch.randn(n, generator=g)  # truth: N(loc, 1)
    x = loc + shrink * torch.randn(S, n, generator=g)
    return x, y


def test_correct_forecast_covers_and_overconfident_is_flagged():
    # Positive control: samples from the true predictive. With n = 1500 the 90% coverage has
    # binomial sd sqrt(.09/1500) = 0.0077 (plus < 0.003 from S = 400 sample quantiles), so
    # [0.85, 0.95] is more than 6 sd wide on each side.
    x, y = _gaussian_forecasts()
    table = coverage_flags(calibration_table(x, y))
    cov90 = float(table.loc[table.level == 0.9, "coverage"].iloc[0])
    assert 0.85 <= cov90 <= 0.95
    g = torch.Generator().manual_seed(5)
    assert calibration_error(pit_values(x, y, randomize=True, generator=g)).p_value > 1e-3
    # Negative control: bands half as wide. True coverage of the 90% band is then
    # P(|N(0,1)| < 0.5 * 1.645) = 0.59, far outside; flagged at every level.
    xs, ys = _gaussian_forecasts(shrink=0.5)
    bad = coverage_flags(calibration_table(xs, ys))
    assert float(bad.loc[bad.level == 0.9, "coverage"].iloc[0]) < 0.85
    assert bool(bad["flagged"].all()) and not bool(table["flagged"].any())
    assert calibration_error(pit_values(xs, ys, randomize=True, generator=g)).p_value < 1e-6


def test_nll_matches_scipy_and_mixture_nll_known_cases():
    y = torch.tensor([[0.2, -1.0], [3.0, 0.5]])
    d = torch.distributions.Normal(torch.tensor(0.5), torch.tensor([1.0, 2.0]))
    mask = torch.tensor([[True, False], [True, True]])
    want = -stats.norm(0.5, [1.0, 2.0]).logpdf(y.numpy())
    torch.testing.assert_close(nll(d, y), torch.as_tensor(want.reshape(-1)))
    torch.testing.assert_close(nll(d, y, mask), torch.as_tensor(want[mask.numpy()]))
    # identical draws: the mixture is that one density
    ll = torch.randn(1, 5).expand(7, 5)
    torch.testing.assert_close(mixture_nll(ll), -ll[0])
    # z ~ N(0, tau^2), y | z ~ N(z, s^2): the predictive is N(0, tau^2 + s^2). 40000 draws:
    # the log of a mean of S iid terms has sd ~ sd(w)/(sqrt(S) E w) < 0.01 here; allow 0.05.
    tau, s = 0.8, 0.6
    z = torch.randn(40000, 1) * tau
    yv = torch.tensor([-1.0, 0.0, 1.3])
    lp = torch.distributions.Normal(z, s).log_prob(yv)
    exact = -stats.norm(0, math.hypot(tau, s)).logpdf(yv.numpy())
    torch.testing.assert_close(mixture_nll(lp), torch.as_tensor(exact), atol=0.05, rtol=0)


def test_bad_inputs_name_the_argument():
    x, y = torch.randn(5, 3), torch.randn(3)
    with pytest.raises(ValueError, match=r"samples must have shape \[S, \*y.shape\]"):
        energy_score(torch.randn(5, 4), y)
    with pytest.raises(ValueError, match="event_dims must be an integer in"):
        energy_score(x, y, event_dims=3)
    with pytest.raises(ValueError, match="need at least 2 samples"):
        crps_ensemble(torch.randn(1, 3), y)
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        pit_values(x, y, torch.ones(3))
    with pytest.raises(ValueError, match="scale must be positive"):
        crps_normal(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.zeros(2))
    with pytest.raises(TypeError, match="pit must be a torch.Tensor"):
        calibration_error([0.5])
    with pytest.raises(ValueError, match="pit must hold at least one value"):
        calibration_error(torch.tensor([]))
    with pytest.raises(ValueError, match=r"pit values must lie in \[0, 1\]"):
        calibration_error(torch.tensor([0.2, 1.5]))
    with pytest.raises(TypeError, match="distribution must be a torch Distribution"):
        nll("normal", y)
    with pytest.raises(ValueError, match="must have y's shape"):
        nll(torch.distributions.Independent(torch.distributions.Normal(torch.zeros(3), 1.0), 1), y)
    with pytest.raises(ValueError, match="log_lik must be a tensor"):
        mixture_nll(torch.tensor(1.0))
    with pytest.raises(ValueError, match="alpha must lie in"):
        coverage_flags(calibration_table(x, y), alpha=1.5)
    with pytest.raises(ValueError, match="levels must lie in"):
        interval_coverage(x, y, levels=(1.2,))
