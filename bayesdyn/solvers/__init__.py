"""Torch-only numerics: union grids, Euler–Maruyama stepping and scoring, the torchsde adapter.

This layer imports only torch, torchsde and :mod:`bayesdyn.data`; never pyro.
"""

from ._euler import (
    EulerPath,
    check_finite_path,
    euler_log_prob,
    euler_maruyama,
    euler_transition_log_prob,
)
from ._grid import UnionGrid, gather_on_grid, make_union_grid, torchsde_layout
from ._torchsde import solve_torchsde

__all__ = [
    "EulerPath",
    "UnionGrid",
    "check_finite_path",
    "euler_log_prob",
    "euler_maruyama",
    "euler_transition_log_prob",
    "gather_on_grid",
    "make_union_grid",
    "solve_torchsde",
    "torchsde_layout",
]
