"""Point-process numerics in the solver layer: evaluation, integrals, thinning along a jump SDE."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bayesdyn._validation import BayesdynValueError
from bayesdyn.solvers import (
    interval_index,
    piecewise_linear_at,
    piecewise_linear_integral,
    simulate_jump_diffusion_events,
)
from tests.conftest import TEST_FAILURE_RATE

Z_CRIT = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)


def test_left_limits_at_grid_points_and_partial_integrals():
    grid = torch.tensor([0.0, 1.0, 2.0])
    start = torch.tensor([[1.0], [5.0]])  # jumps from 2 to 5 at t = 1
    end = torch.tensor([[2.0], [3.0]])
    assert interval_index(grid, torch.tensor([0.0, 1.0, 1.5, 2.0])).tolist() == [0, 0, 1, 1]
    vals = piecewise_linear_at(grid, start, end, torch.tensor([0.5, 1.0, 1.5]))
    assert vals.squeeze(-1).tolist() == [1.5, 2.0, 4.0]  # left limit 2.0 at the jump
    assert float(piecewise_linear_integral(grid, start, end)) == pytest.approx(1.5 + 4.0)
    part = piecewise_linear_integral(grid, start, end, torch.tensor(0.5), torch.tensor(1.5))
    assert float(part) == pytest.approx(0.5 * (1.5 + 2.0) / 2 + 0.5 * (5.0 + 4.0) / 2)


def test_simulated_self_exciting_state_reproduces_hawkes_counts():
    # dz = -beta z dt, jump alpha*beta at each event, intensity mu + z: the exponential Hawkes
    # process, so E N(T) has the closed form of its intensity ODE. Euler decay and the linear
    # intensity per step bias the mean by O(beta h) of the excitation part (~0.5% here), well
    # inside the statistical tolerance.
    mu, alpha, beta, T = 0.5, 0.5, 1.0, 10.0
    R = 1500
    gen = torch.Generator().manual_seed(5)
    sim = simulate_jump_diffusion_events(
        lambda t, z: (-beta * z, torch.zeros_like(z)),
        lambda z: mu + z,
        lambda z, m: torch.full_like(z, alpha * beta),
        torch.zeros(R, 1),
        torch.zeros(R),
        torch.full((R,), T),
        1000,
        generator=gen,
    )
    counts = sim.mask.sum(-1).double()
    kappa = beta * (1 - alpha)
    expected = mu * T / (1 - alpha) - mu * alpha / ((1 - alpha) * kappa) * (
        1 - math.exp(-kappa * T)
    )
    se = float(counts.std()) / math.sqrt(R)
    assert abs(float(counts.mean()) - expected) < Z_CRIT * se
    # Negative control: without the jumps the same counts would be Poisson(mu T) = 5.
    assert abs(float(counts.mean()) - mu * T) > 10 * se
    # events are sorted, inside the window, and the grid intensity matches the state
    t = sim.times
    assert bool(((t[:, 1:] >= t[:, :-1]) | ~sim.mask[:, 1:]).all())
    assert bool(((t > 0) & (t <= T))[sim.mask].all())
    assert torch.allclose(sim.intensity, mu + sim.states)


def test_simulator_errors():
    with pytest.raises(BayesdynValueError, match="exceeded max_events=3"):
        simulate_jump_diffusion_events(
            lambda t, z: (torch.zeros_like(z), torch.zeros_like(z)),
            lambda z: torch.full_like(z, 50.0),
            lambda z, m: torch.zeros_like(z),
            torch.zeros(2, 1),
            torch.zeros(2),
            torch.ones(2),
            10,
            max_events=3,
        )
    with pytest.raises(BayesdynValueError, match="num_steps must be a positive integer"):
        simulate_jump_diffusion_events(
            lambda t, z: (z, z), lambda z: z, lambda z, m: z, torch.zeros(1, 1),
            torch.zeros(1), torch.ones(1), 0,
        )  # fmt: skip
