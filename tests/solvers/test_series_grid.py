"""Per-series solver grids (``make_series_grid``): the grid itself, and every solver function
on a ``[B, U]`` grid equals the same function run row by row on that row's 1-D grid."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bayesdyn._validation import BayesdynValueError
from bayesdyn.solvers import (
    euler_log_prob,
    euler_maruyama,
    make_series_grid,
    make_union_grid,
    piecewise_linear_at,
    piecewise_linear_integral,
    thinning_sample,
    trapezoid_error_estimate,
)
from tests.conftest import TEST_FAILURE_RATE

Z_CRIT = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)
D = torch.float64


def _times():
    # Ragged: series 1 pads by repeating its last time; series 2 has a long gap.
    return torch.tensor(
        [[0.0, 0.3, 0.35, 1.0, 1.7], [0.0, 0.6, 0.9, 0.9, 0.9], [0.2, 2.4, 2.5, 2.6, 3.1]], dtype=D
    )


def test_series_grid_rows_hold_their_times_refined_and_padded():
    times = _times()
    q = torch.tensor([0.5, 1.5], dtype=D)
    g = make_series_grid(times, query_times=q, dt=0.25)
    B, U = g.grid.shape
    assert B == 3
    assert torch.equal(g.grid.gather(1, g.index), times)
    assert torch.equal(g.grid.gather(1, g.query_index), q.expand(3, 2))
    for b in range(B):
        row = g.grid[b]
        assert bool((row[1:] > row[:-1]).all())
        own = torch.unique(torch.cat([times[b], q]))
        # The row is the series' own union grid, then padding steps of exactly dt.
        ref = make_union_grid(own, dt=0.25).grid
        assert torch.equal(row[: ref.numel()], ref)
        pad = row[ref.numel() - 1 :]
        assert torch.allclose(pad[1:] - pad[:-1], torch.full_like(pad[1:], 0.25), atol=1e-12)
    # Much shorter than the union grid once series do not share times.
    assert U < make_union_grid(times, query_times=q, dt=0.25).grid.numel()


def test_series_grid_t0_and_per_series_queries():
    times = _times()
    g = make_series_grid(times, dt=0.5, t0=-0.5, query_times=times[:, 1:2] + 0.05)
    assert torch.equal(g.grid[:, 0], torch.full((3,), -0.5, dtype=D))
    assert torch.equal(g.grid.gather(1, g.query_index), times[:, 1:2] + 0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dt=0.0), "dt must be a finite positive number; got 0.0"),
        (dict(dt=float("nan")), "dt must be a finite positive number"),
        (
            dict(dt=0.1, t0=0.1),
            r"t0 must not exceed the earliest time 0.0 \(series 0\); got t0=0.1",
        ),
        (dict(dt=0.1, rounding="up"), "rounding must be one of"),
        (
            dict(dt=0.1, query_times=torch.zeros(2, 1, dtype=D)),
            r"query_times must have shape \[Q\] or \[B=3, Q\]; got shape \(2, 1\)",
        ),
    ],
)
def test_series_grid_errors(kwargs, match):
    with pytest.raises(BayesdynValueError, match=match):
        make_series_grid(_times(), **kwargs)


def test_series_grid_rejects_flat_times():
    with pytest.raises(
        BayesdynValueError, match=r"times must have shape \[B, T\]; got shape \(3,\)"
    ):
        make_series_grid(torch.tensor([0.0, 1.0, 2.0]), dt=0.5)


def _step(theta):
    """An OU-like SDE whose drift and diffusion depend on time, so ``t_k`` must be right."""

    def step(k, t, z):
        t = torch.as_tensor(t, dtype=z.dtype)
        if t.dim():
            t = t.unsqueeze(-1)
        f = -theta * (z - torch.sin(t))
        g = 0.3 * (1.0 + 0.1 * t) * torch.ones_like(z)
        return f, g

    def on_path(ts, z):
        return torch.stack(
            [torch.stack(step(0, ts[..., k], z[..., k, :]), 0) for k in range(ts.shape[-1])], -2
        ).unbind(0)

    return step, on_path


def test_euler_on_series_grid_equals_row_by_row():
    torch.manual_seed(0)
    g = make_series_grid(_times(), dt=0.2).grid  # [B, U]
    B, U = g.shape
    z0 = torch.randn(B, 2, dtype=D)
    noise = torch.randn(B, U - 1, 2, dtype=D)
    theta = torch.tensor(1.3, dtype=D)
    step, on_path = _step(theta)
    res = euler_maruyama(step, z0, g, noise)
    lp = euler_log_prob(res.path, g, on_path)
    for b in range(B):
        row = euler_maruyama(step, z0[b], g[b], noise[b])
        torch.testing.assert_close(res.path[b], row.path, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(res.drift[b], row.drift, rtol=1e-13, atol=1e-13)
        lp_b = euler_log_prob(row.path, g[b], on_path)
        torch.testing.assert_close(lp[b], lp_b, rtol=1e-12, atol=1e-12)


def test_euler_on_series_grid_gradient_matches_finite_differences():
    torch.manual_seed(1)
    g = make_series_grid(_times(), dt=0.3).grid
    B, U = g.shape
    z0 = torch.randn(B, 1, dtype=D)
    noise = torch.randn(B, U - 1, 1, dtype=D)

    def f(theta):
        step, on_path = _step(theta)
        path = euler_maruyama(step, z0, g, noise).path
        lam = path.exp()  # [B, U, 1]
        return (
            piecewise_linear_integral(
                g, lam[:, :-1], lam[:, 1:], g[:, 0] + 0.1, g[:, 0] + 1.5, "log_linear"
            ).sum()
            + euler_log_prob(path, g, on_path).sum()
        )

    assert torch.autograd.gradcheck(f, (torch.tensor(0.7, dtype=D, requires_grad=True),))


@pytest.mark.parametrize("interpolation", ["linear", "log_linear"])
def test_intensity_functions_on_series_grid_equal_row_by_row(interpolation):
    torch.manual_seed(2)
    g = make_series_grid(_times(), dt=0.3).grid  # [B, U]
    B, U = g.shape
    S = 2
    start = torch.rand(S, B, U - 1, 2, dtype=D) + 0.1
    end = torch.rand(S, B, U - 1, 2, dtype=D) + 0.1
    t = g[:, :1] + torch.rand(S, B, 4, dtype=D) * (g[:, -1:] - g[:, :1])
    lo, hi = g[:, 1] + 0.01, g[:, -2] - 0.02
    at = piecewise_linear_at(g, start, end, t, interpolation)
    integral = piecewise_linear_integral(g, start, end, lo, hi, interpolation)
    whole = piecewise_linear_integral(g, start, end, interpolation=interpolation)
    err = trapezoid_error_estimate(g, start, end, interpolation=interpolation)
    for b in range(B):
        sb, eb = start[:, b], end[:, b]
        torch.testing.assert_close(
            at[:, b], piecewise_linear_at(g[b], sb, eb, t[:, b], interpolation)
        )
        torch.testing.assert_close(
            integral[:, b],
            piecewise_linear_integral(g[b], sb, eb, lo[b], hi[b], interpolation),
        )
        torch.testing.assert_close(
            whole[:, b], piecewise_linear_integral(g[b], sb, eb, interpolation=interpolation)
        )
        torch.testing.assert_close(
            err[:, b], trapezoid_error_estimate(g[b], sb, eb, interpolation=interpolation)
        )


def test_thinning_on_series_grid_counts_follow_each_rows_compensator():
    # Two rows whose grids differ: the intensity is 4 on the first half of each row's grid
    # span and 0.5 after, so each row's expected count depends on its own grid.
    g = torch.stack(
        [torch.linspace(0.0, 4.0, 9, dtype=D), torch.linspace(0.0, 12.0, 9, dtype=D)]
    )  # [2, 9]
    lam = torch.where(torch.arange(8) < 4, 4.0, 0.5).to(D).expand(2, 8).unsqueeze(-1)
    n = 3000
    start = lam.expand(n, 2, 8, 1)
    times, marks, mask = thinning_sample(
        g, start, start, interpolation="linear", generator=torch.Generator().manual_seed(0)
    )
    counts = mask.sum(-1).double()  # [n, 2]
    comp = piecewise_linear_integral(g, lam, lam).squeeze(-1)  # [2]: 9 and 27
    assert torch.allclose(comp, torch.tensor([9.0, 27.0], dtype=D))
    for b in range(2):
        z = (counts[:, b].mean() - comp[b]) / math.sqrt(float(comp[b]) / n)
        assert abs(float(z)) < Z_CRIT
        inside = times[:, b][mask[:, b]]
        assert float(inside.min()) >= 0.0 and float(inside.max()) <= float(g[b, -1])
    # Negative control: row 1's counts are far from the compensator on row 0's grid.
    z = (counts[:, 1].mean() - comp[0]) / math.sqrt(float(comp[0]) / n)
    assert abs(float(z)) > Z_CRIT
