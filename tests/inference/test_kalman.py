"""The Kalman filter against brute-force conditioning of the joint Gaussian of all observations."""

import numpy as np
import pytest
import torch

from bayesdyn.data import IrregularTimeSeries
from bayesdyn.inference import LinearGaussianSDE, kalman_filter
from bayesdyn.solvers import make_union_grid
from tests.oracles import (
    brute_force_filter,
    exact_linear_transition,
    gaussian_chain_joint,
    ou_transition,
)

A2 = [[-0.8, 0.6], [-0.9, -0.3]]  # rotating, non-normal, stable
B2 = [0.2, -0.1]
G2 = [0.5, 0.3]
H2 = [[1.0, 0.0], [0.4, -1.2], [0.0, 1.0]]
C2 = [0.1, 0.0, -0.2]
R2 = [0.2, 0.3, 0.25]
M0 = [0.3, -0.5]
P0 = [[0.4, 0.1], [0.1, 0.3]]


def model2(t0=None):
    return LinearGaussianSDE(
        torch.tensor(A2), torch.tensor(B2), torch.tensor(G2), torch.tensor(H2),
        torch.tensor(C2), torch.tensor(R2), torch.tensor(M0), torch.tensor(P0), t0=t0,
    )  # fmt: skip


def ragged_series(D=3, seed=0):
    """Three series: irregular times, missing channels, one all-missing row, ragged lengths."""
    rng = np.random.default_rng(seed)
    times, values, masks = [], [], []
    for n in (7, 3, 5):
        t = np.sort(rng.uniform(0.0, 3.0, n))
        m = rng.uniform(size=(n, D)) > 0.35
        m[0, 0] = True
        if n == 5:
            m[2] = False  # a row with nothing observed
        times.append(t)
        values.append(rng.normal(size=(n, D)))
        masks.append(m)
    return IrregularTimeSeries(times, values, masks)


def brute_force_series(series, b, transitions_for, t0):
    """Brute-force filter of series ``b`` on the chain ``t0 -> grid points``."""
    t = series.times[b]
    points_t, trans = transitions_for(t0, t)
    means, cov = gaussian_chain_joint(np.array(M0), np.array(P0), trans)
    points = [int(np.searchsorted(points_t, ti)) for ti in t]
    return brute_force_filter(
        means, cov, points, H2, C2, R2, series.values[b], series.mask[b].astype(bool)
    )


def exact_chain(t0, t):
    knots = np.concatenate([[t0], t])
    trans = [exact_linear_transition(A2, B2, G2, knots[k + 1] - knots[k]) for k in range(len(t))]
    return knots, trans


def test_exact_filter_matches_joint_gaussian_2d_masked_ragged():
    series = ragged_series()
    t0 = -0.25
    res = kalman_filter(model2(t0), series)
    for b in range(3):
        ll, fm, fc = brute_force_series(series, b, exact_chain, t0)
        n = len(series.times[b])
        np.testing.assert_allclose(res.log_likelihood[b].item(), ll, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(res.means[b, :n].numpy(), fm, atol=1e-9)
        np.testing.assert_allclose(res.covariances[b, :n].numpy(), fc, atol=1e-9)
        # padding repeats the last filtering distribution and adds nothing to the likelihood
        assert torch.equal(res.means[b, n:], res.means[b, n - 1 : n].expand_as(res.means[b, n:]))
        assert torch.all(res.log_likelihood_terms[b, n:] == 0)
    assert torch.allclose(res.log_likelihood_terms.sum(-1), res.log_likelihood)
    assert torch.allclose(res.obs_means, res.means @ torch.tensor(H2).T + torch.tensor(C2))


def test_ou_filter_matches_closed_form_transitions():
    theta, mu, sigma, r = 1.3, 0.4, 0.7, 0.3
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 5, 9))
    y = rng.normal(size=(9, 1))
    m0, v0 = mu, sigma**2 / (2 * theta)
    trans = []
    for k in range(8):
        a = np.exp(-theta * (t[k + 1] - t[k]))
        trans.append((np.array([[a]]), np.array([mu * (1 - a)]), np.array([[ou_transition(0.0, t[k + 1] - t[k], theta, mu, sigma)[1]]])))  # fmt: skip
    means, cov = gaussian_chain_joint(np.array([m0]), np.array([[v0]]), trans)
    ll, fm, fc = brute_force_filter(
        means, cov, list(range(9)), [[1.0]], [0.0], [r], y, np.ones((9, 1), bool)
    )
    res = LinearGaussianSDE.ou(theta, mu, sigma, r).filter(IrregularTimeSeries([t], [y]))
    np.testing.assert_allclose(res.log_likelihood.item(), ll, rtol=1e-10)
    np.testing.assert_allclose(res.means[0, :, 0].numpy(), fm[:, 0], atol=1e-10)
    np.testing.assert_allclose(res.variances[0, :, 0].numpy(), fc[:, 0, 0], atol=1e-10)


def test_euler_filter_is_exact_for_the_euler_chain_on_the_union_grid():
    series = ragged_series(seed=2)
    t0, dt = 0.0, 0.2
    batch = series.to_batch()
    grid = make_union_grid(batch.times, dt=dt, t0=t0).grid.numpy()
    A, b, G = np.array(A2), np.array(B2), np.diag(G2)

    def euler_chain(t0_, t):
        h = np.diff(grid)
        trans = [(np.eye(2) + A * hk, b * hk, G @ G.T * hk) for hk in h]
        return grid, trans

    res = kalman_filter(model2(t0), series, discretization="euler", dt=dt)
    for s in range(3):
        ll, fm, fc = brute_force_series(series, s, euler_chain, t0)
        n = len(series.times[s])
        np.testing.assert_allclose(res.log_likelihood[s].item(), ll, rtol=1e-9)
        np.testing.assert_allclose(res.means[s, :n].numpy(), fm, atol=1e-9)
        np.testing.assert_allclose(res.covariances[s, :n].numpy(), fc, atol=1e-9)


def test_euler_converges_to_exact_at_first_order():
    series = ragged_series(seed=3)
    exact = kalman_filter(model2(0.0), series).log_likelihood
    errs = [
        float((kalman_filter(model2(0.0), series, discretization="euler", dt=dt).log_likelihood - exact).abs().sum())
        for dt in (0.04, 0.02, 0.01)
    ]  # fmt: skip
    # Euler's weak order is 1: halving dt halves the error (ratio 2 up to O(dt) corrections).
    for e1, e2 in zip(errs, errs[1:], strict=False):
        assert 1.6 < e1 / e2 < 2.4, errs


def test_masked_values_do_not_matter():
    series = ragged_series(seed=4)
    batch = series.to_batch()
    other = batch._replace(values=torch.where(batch.mask, batch.values, 1e3))
    a, b = kalman_filter(model2(), batch), kalman_filter(model2(), other)
    assert torch.equal(a.means, b.means) and torch.equal(a.log_likelihood, b.log_likelihood)


def test_log_likelihood_is_differentiable_in_the_parameters():
    series = ragged_series(D=1, seed=5)
    batch = series.to_batch()

    def ll(theta, sigma, r):
        return LinearGaussianSDE.ou(theta, 0.2, sigma, r).filter(batch).log_likelihood.sum()

    params = tuple(torch.tensor(v, requires_grad=True) for v in (0.9, 0.6, 0.35))
    assert torch.autograd.gradcheck(ll, params)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(drift_matrix=torch.zeros(2, 3)), r"drift_matrix must be square \[L, L\]; got \[2, 3\]"),
        (dict(obs_matrix=torch.zeros(3, 3)), r"obs_matrix must have shape \[D, 2\]; got \[3, 3\]"),
        (dict(diffusion=torch.tensor([0.5, 0.0])), "diffusion must be positive"),
        (dict(obs_scale=torch.tensor([0.2, -0.3, 0.1])), "obs_scale must be positive"),
        (dict(init_cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]])), "init_cov must be symmetric positive definite"),
        (dict(drift_offset=torch.zeros(3)), r"drift_offset must have shape \[2\]; got \[3\]"),
        (dict(init_mean=torch.tensor([float("nan"), 0.0])), "init_mean must be finite"),
    ],
)  # fmt: skip
def test_bad_parameters_are_named(kwargs, match):
    args = dict(
        drift_matrix=torch.tensor(A2), drift_offset=torch.tensor(B2), diffusion=torch.tensor(G2),
        obs_matrix=torch.tensor(H2), obs_offset=torch.tensor(C2), obs_scale=torch.tensor(R2),
        init_mean=torch.tensor(M0), init_cov=torch.tensor(P0),
    )  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LinearGaussianSDE(**args)


def test_bad_filter_calls_are_named():
    series = ragged_series()
    with pytest.raises(ValueError, match="discretization must be 'exact' or 'euler'; got 'rk4'"):
        kalman_filter(model2(), series, discretization="rk4")
    with pytest.raises(ValueError, match="dt is required for discretization='euler'"):
        kalman_filter(model2(), series, discretization="euler")
    with pytest.raises(ValueError, match="values has 3 channels, the model expects 1"):
        kalman_filter(LinearGaussianSDE.ou(1.0, 0.0, 1.0, 0.1), series)
    with pytest.raises(ValueError, match="t0 must not exceed the earliest time"):
        kalman_filter(model2(t0=10.0), series)
    with pytest.raises(TypeError, match="model must be a LinearGaussianSDE; got str"):
        kalman_filter("ou", series)
    with pytest.raises(TypeError, match="data must be an IrregularTimeSeries or IrregularBatch"):
        kalman_filter(model2(), [1, 2])
