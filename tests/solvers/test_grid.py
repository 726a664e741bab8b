import pytest
import torch

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.solvers import gather_on_grid, make_union_grid, torchsde_layout


def test_union_grid_contains_all_times_and_indexes_them():
    times = torch.tensor([[0.0, 0.3, 1.0, 1.0], [0.1, 0.3, 0.7, 2.0]])  # row 0 padded
    q = torch.tensor([0.5, 2.5])
    g = make_union_grid(times, query_times=q)
    assert torch.equal(g.grid, torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 1.0, 2.0, 2.5]))
    assert torch.equal(g.grid[g.index], times)
    assert torch.equal(g.grid[g.query_index], q)


def test_refinement_bounds_step_and_keeps_knots():
    times = torch.tensor([[0.0, 0.05, 1.0, 3.3]])
    g = make_union_grid(times, dt=0.25)
    steps = g.grid[1:] - g.grid[:-1]
    assert float(steps.max()) <= 0.25 + 1e-12
    assert bool((steps > 0).all())
    assert torch.allclose(g.grid[g.index], times)
    # gap 0.05 -> 1.0 (0.95) needs 4 sub-steps, 1.0 -> 3.3 (2.3) needs 10; plus the 3 knots
    assert g.grid.numel() == 1 + 1 + 4 + 10


def test_exact_multiple_of_dt_is_not_oversplit():
    g = make_union_grid(torch.tensor([[0.0, 1.0]]), dt=0.25)
    assert g.grid.numel() == 5


def test_nearest_rounding_averages_dt():
    # Gaps of 0.0202 (100 times on [0, 2]) with dt=0.01: "ceil" needs 3 sub-steps each,
    # "nearest" takes round(2.02) = 2, i.e. 198 steps over [0, 2] as torchsde's ~200.
    times = torch.linspace(0.0, 2.0, 100, dtype=torch.float64).unsqueeze(0)
    ceil = make_union_grid(times, dt=0.01)
    near = make_union_grid(times, dt=0.01, rounding="nearest")
    assert ceil.grid.numel() - 1 == 99 * 3
    assert near.grid.numel() - 1 == 99 * 2
    assert torch.equal(near.grid[near.index], times)
    # Mixed gaps: 0.05 -> 1 step, 0.14 -> 1 step (round 1.4), 0.16 -> 2, 0.37 -> 4 (round 3.7).
    g = make_union_grid(
        torch.tensor([[0.0, 0.05, 0.19, 0.35, 0.72]], dtype=torch.float64),
        dt=0.1,
        rounding="nearest",
    )
    steps = g.grid[1:] - g.grid[:-1]
    assert g.grid.numel() - 1 == 1 + 1 + 2 + 4
    assert float(steps.max()) <= 1.5 * 0.1 + 1e-12


def test_t0_prepends_start():
    g = make_union_grid(torch.tensor([[1.0, 2.0]]), t0=0.0)
    assert g.grid.tolist() == [0.0, 1.0, 2.0]
    assert g.index.tolist() == [[1, 2]]


def test_per_series_query_times():
    times = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    q = torch.tensor([[0.5, 1.5], [2.5, 3.0]])
    g = make_union_grid(times, query_times=q)
    assert torch.equal(g.grid[g.query_index], q)


def test_single_series_promoted():
    g = make_union_grid(torch.tensor([0.0, 1.0, 2.0]))
    assert g.index.shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dt=0.0), "dt must be a finite positive number; got 0.0"),
        (dict(dt=float("nan")), "dt must be a finite positive number"),
        (
            dict(dt=0.1, rounding="floor"),
            r"rounding must be one of \('ceil', 'nearest'\); got 'floor'",
        ),
        (dict(t0=0.5), r"t0 must not exceed the earliest time 0.0; got t0=0.5"),
        (dict(query_times=torch.tensor([[1.0]])), "query_times has 1 rows, times has 2 series"),
    ],
)
def test_grid_errors(kwargs, match):
    times = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    with pytest.raises(BayesdynValueError, match=match):
        make_union_grid(times, **kwargs)


def test_grid_rejects_bad_times():
    with pytest.raises(BayesdynTypeError, match="times must be a floating-point tensor"):
        make_union_grid(torch.tensor([[0, 1]]))
    with pytest.raises(BayesdynValueError, match="times must be finite"):
        make_union_grid(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(BayesdynValueError, match="times must not require grad"):
        make_union_grid(torch.tensor([[0.0, 1.0]], requires_grad=True))
    with pytest.raises(BayesdynValueError, match=r"times must have shape \[B, T\]"):
        make_union_grid(torch.zeros(2, 2, 2))


def test_torchsde_layout_round_trip_and_shapes():
    x = torch.randn(3, 5, 7, 2)  # [S, B, U, L]
    tm = torchsde_layout(x)
    assert tm.shape == (7, 3, 5, 2)
    assert torch.equal(tm[4], x[:, :, 4])
    assert torch.equal(torchsde_layout(tm, inverse=True), x)
    with pytest.raises(BayesdynValueError, match="at least 2 dims"):
        torchsde_layout(torch.zeros(3))


def test_gather_on_grid_shapes_and_values():
    path = torch.randn(4, 2, 6, 3)  # [S, B, U, L]
    index = torch.tensor([[0, 2, 5], [1, 1, 4]])
    out = gather_on_grid(path, index)
    assert out.shape == (4, 2, 3, 3)
    assert torch.equal(out[:, 1, 2], path[:, 1, 4])
    assert torch.equal(out[:, 0, 1], path[:, 0, 2])
