import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdyn._validation import SolverDiverged
from bayesdyn.solvers import euler_log_prob, euler_maruyama, solve_torchsde
from tests.conftest import TEST_FAILURE_RATE
from tests.oracles import euler_ou_log_prob_loop, euler_ou_moments, ou_transition

THETA, MU, SIGMA = 1.3, 0.4, 0.7


def ou_step(k, t, z):
    return THETA * (MU - z), torch.full_like(z, SIGMA)


def ou_path(ts, z):
    return THETA * (MU - z), torch.full_like(z, SIGMA)


def irregular_grid(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(np.sort(np.concatenate([[0.0], rng.uniform(0, 2.0, n - 1)])))


def z_bound(num_checks: int) -> float:
    """Two-sided z bound so that num_checks checks together fail w.p. TEST_FAILURE_RATE."""
    return stats.norm.ppf(1 - TEST_FAILURE_RATE / (2 * num_checks))


def test_log_prob_equals_explicit_loop_density():
    grid = irregular_grid()
    path = torch.randn(5, grid.numel(), 2)
    lp = euler_log_prob(path, grid, ou_path)
    assert lp.shape == (5,)
    for i in range(5):
        ref = euler_ou_log_prob_loop(path[i].numpy(), grid.numpy(), THETA, MU, SIGMA)
        assert float(lp[i]) == pytest.approx(ref, rel=1e-12, abs=1e-9)


def test_sampled_moments_match_euler_recursion_on_irregular_grid():
    grid = irregular_grid(15, seed=1)
    N = 40000
    z0 = torch.full((N, 1), 2.0)
    noise = torch.randn(N, grid.numel() - 1, 1)
    res = euler_maruyama(ou_step, z0, grid, noise)
    assert res.path.shape == (N, grid.numel(), 1)
    assert res.drift.shape == res.diffusion.shape == (N, grid.numel() - 1, 1)
    m, v = euler_ou_moments(2.0, 0.0, grid.numpy(), THETA, MU, SIGMA)
    x = res.path[:, 1:, 0]
    zb = z_bound(2 * (grid.numel() - 1))
    se_m = np.sqrt(v[1:] / N)
    se_v = v[1:] * math.sqrt(2 / (N - 1))
    assert np.all(np.abs(x.mean(0).numpy() - m[1:]) < zb * se_m)
    assert np.all(np.abs(x.var(0).numpy() - v[1:]) < zb * se_v)


def test_fine_euler_matches_exact_ou_transition():
    # Euler on a fine grid approaches the exact OU law; bias O(dt) is far below the MC error.
    grid = torch.linspace(0.0, 1.5, 1501)
    N = 20000
    noise = torch.randn(N, grid.numel() - 1, 1)
    x = euler_maruyama(ou_step, torch.full((N, 1), -1.0), grid, noise).path[:, -1, 0]
    m, v = ou_transition(-1.0, 1.5, THETA, MU, SIGMA)
    zb = z_bound(2)
    assert abs(float(x.mean()) - m) < zb * math.sqrt(v / N) + 2e-3
    assert abs(float(x.var()) - v) < zb * v * math.sqrt(2 / (N - 1)) + 2e-3
    ks = stats.kstest(((x.numpy() - m) / math.sqrt(v)), "norm")
    assert ks.pvalue > TEST_FAILURE_RATE


def test_zero_steps_returns_initial_state():
    res = euler_maruyama(ou_step, torch.ones(3, 2), torch.tensor([0.5]), torch.zeros(3, 0, 2))
    assert res.path.shape == (3, 1, 2)
    assert res.drift.shape == (3, 0, 2)


def test_divergence_raises_with_hint():
    def explode(k, t, z):
        return z**3 * 1e3, torch.ones_like(z)

    grid = torch.linspace(0, 1, 50)
    with pytest.raises(SolverDiverged, match="non-finite at grid step .* smaller dt"):
        euler_maruyama(explode, torch.full((2, 1), 3.0), grid, torch.zeros(2, 49, 1))


def test_torchsde_adapter_srk_matches_ou_law():
    grid = torch.tensor([0.0, 0.3, 1.1, 2.0])
    N = 4000

    def fg(t, z):
        return THETA * (MU - z), torch.full_like(z, SIGMA)

    path = solve_torchsde(fg, torch.zeros(N, 1), grid, method="srk", dt=0.01, entropy=0)
    assert path.shape == (N, 4, 1)
    zb = z_bound(3)
    for k in range(1, 4):
        m, v = ou_transition(0.0, float(grid[k]), THETA, MU, SIGMA)
        assert abs(float(path[:, k, 0].mean()) - m) < zb * math.sqrt(v / N) + 1e-3
        assert abs(float(path[:, k, 0].var()) - v) < zb * v * math.sqrt(2 / (N - 1)) + 1e-3


def test_torchsde_adapter_bad_input():
    from bayesdyn._validation import BayesdynValueError

    with pytest.raises(BayesdynValueError, match=r"z0 must have shape \[B, L\]"):
        solve_torchsde(lambda t, z: (z, z), torch.zeros(3), torch.tensor([0.0, 1.0]))
    with pytest.raises(BayesdynValueError, match="params must list"):
        solve_torchsde(
            lambda t, z: (z, z), torch.zeros(1, 1), torch.tensor([0.0, 1.0]), adjoint=True
        )
