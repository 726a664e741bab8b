"""Torch-only numerics: union grids, Euler–Maruyama stepping and scoring, the torchsde adapter,
thinning samplers and compensator quadrature for point processes.

This layer imports only torch, torchsde and :mod:`bayesdyn.data`; never pyro.
"""

from ._euler import (
    EulerPath,
    check_finite_path,
    euler_log_prob,
    euler_maruyama,
    euler_transition_log_prob,
)
from ._grid import (
    UnionGrid,
    gather_on_grid,
    make_series_grid,
    make_union_grid,
    torchsde_layout,
)
from ._thinning import (
    INTERPOLATIONS,
    JumpSimulation,
    check_interpolation,
    interpolate,
    interval_index,
    interval_mean,
    piecewise_linear_at,
    piecewise_linear_integral,
    simulate_jump_diffusion_events,
    thinning_sample,
    trapezoid_error_estimate,
)
from ._torchsde import solve_torchsde

__all__ = [
    "INTERPOLATIONS",
    "EulerPath",
    "JumpSimulation",
    "UnionGrid",
    "check_finite_path",
    "check_interpolation",
    "euler_log_prob",
    "euler_maruyama",
    "euler_transition_log_prob",
    "gather_on_grid",
    "interpolate",
    "interval_mean",
    "interval_index",
    "make_series_grid",
    "make_union_grid",
    "piecewise_linear_at",
    "piecewise_linear_integral",
    "simulate_jump_diffusion_events",
    "solve_torchsde",
    "thinning_sample",
    "torchsde_layout",
    "trapezoid_error_estimate",
]
