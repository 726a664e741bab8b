"""Fixed-step Euler–Maruyama: path sampling and the exact transition log-density.

The discretised model on a grid ``t_0 < t_1 < ... < t_{U-1}`` with ``dt_k = t_{k+1} - t_k`` is

.. math::
    z_{k+1} = z_k + f(t_k, z_k)\\,dt_k + g(t_k, z_k) \\sqrt{dt_k}\\,\\epsilon_k,
    \\quad \\epsilon_k \\sim \\mathcal N(0, I),

with diagonal diffusion ``g``. Sampling and scoring use the same scheme, so they describe the
same model. The hot loop makes one fused drift-and-diffusion call per step and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import SolverDiverged

__all__ = ["EulerPath", "euler_log_prob", "euler_maruyama", "euler_transition_log_prob"]

#: ``step_fn(k, t_k, z_k) -> (f, g)``: drift and diagonal diffusion at grid step ``k``.
StepFn = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]
#: ``path_fn(ts, z) -> (f, g)``: drift and diffusion at all left end points at once.
PathFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

_LOG_2PI = math.log(2 * math.pi)


class EulerPath(NamedTuple):
    """A sampled path with the drift and diffusion used at each step.

    Shapes:
        - ``path``: ``[..., U, L]`` (``path[..., 0, :]`` is the initial state)
        - ``drift``: ``[..., U-1, L]``
        - ``diffusion``: ``[..., U-1, L]``
    """

    path: Tensor
    drift: Tensor
    diffusion: Tensor


def euler_maruyama(step_fn: StepFn, z0: Tensor, grid: Tensor, noise: Tensor) -> EulerPath:
    """Sample a path by Euler–Maruyama with given standard-normal noise.

    Args:
        step_fn: ``(k, t_k, z_k) -> (f, g)`` returning drift and diagonal diffusion.
        z0: initial state at ``grid[0]``.
        grid: strictly increasing times: shared by all paths (``[U]``), or one row per series
            (``[*gbatch, U]``, broadcasting against ``z0``'s batch dimensions; then ``t_k`` is
            ``grid[..., k]``).
        noise: standard-normal draws, one per step (fix them for common random numbers).

    Returns:
        :class:`EulerPath` with the path and the drift/diffusion at each step.

    Shapes:
        - ``z0``: ``[..., L]``; ``grid``: ``[U]`` or ``[*gbatch, U]``; ``noise``: ``[..., U-1, L]``
        - returns ``path [..., U, L]``, ``drift``/``diffusion [..., U-1, L]``

    Raises:
        SolverDiverged: if the path becomes non-finite.
    """
    num_steps = grid.shape[-1] - 1
    dts = (grid[..., 1:] - grid[..., :-1]).to(z0.dtype)
    if grid.dim() == 1:
        # Python floats avoid a tensor index per step.
        dt_steps = dts.tolist()
        t_steps = grid
    else:
        dt_steps = dts.unsqueeze(-1).unbind(-2)  # U-1 x [*gbatch, 1]
        t_steps = grid.unbind(-1)
    # sqrt(dt) scales the noise once up front.
    scaled = noise * dts.sqrt().unsqueeze(-1)
    states = [z0]
    drifts = []
    diffusions = []
    z = z0
    for k in range(num_steps):
        f, g = step_fn(k, t_steps[k], z)
        z = z + f * dt_steps[k] + g * scaled[..., k, :]
        states.append(z)
        drifts.append(f)
        diffusions.append(g)
    path = torch.stack(states, dim=-2)
    if num_steps:
        drift = torch.stack(drifts, dim=-2)
        diffusion = torch.stack(diffusions, dim=-2)
    else:
        drift = diffusion = z0.new_zeros(z0.shape[:-1] + (0, z0.shape[-1]))
    check_finite_path(path, grid)
    return EulerPath(path, drift, diffusion)


def under_functorch(t: Tensor) -> bool:
    """True inside a ``torch.func`` transform (e.g. ``vmap`` over ensemble members).

    There, data-dependent checks (``bool(tensor)``) cannot run per member, and custom autograd
    Functions without a vmap rule cannot be called; callers check the stacked result instead.
    """
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def check_finite_path(path: Tensor, grid: Tensor) -> None:
    """Raise :class:`SolverDiverged` with a hint if ``path [..., U, L]`` is non-finite.

    Skipped under ``torch.func`` transforms (see :func:`under_functorch`).
    """
    if under_functorch(path):
        return
    finite = torch.isfinite(path)
    if bool(finite.all()):
        return
    bad_step = int((~finite).reshape(-1, *path.shape[-2:]).any(0).any(-1).nonzero()[0])
    t_bad = float(grid[..., bad_step].min())  # the earliest such time over per-series grids
    raise SolverDiverged(
        f"the SDE path became non-finite at grid step {bad_step} (t={t_bad:.6g}). "
        "Try a smaller dt, a stable drift (stable_drift=True), or standardised data."
    )


def euler_transition_log_prob(
    increments: Tensor, drift: Tensor, diffusion: Tensor, dts: Tensor
) -> Tensor:
    """Log-density of Euler increments, summed over steps and dimensions.

    ``dz_k ~ Normal(f_k dt_k, g_k^2 dt_k)`` independently over ``k`` and the latent dimensions.

    Shapes:
        - ``increments``, ``drift``, ``diffusion``: ``[..., U-1, L]``; ``dts``: ``[U-1]`` (or
          per series ``[*gbatch, U-1]``)
        - returns ``[...]``
    """
    dts = dts.unsqueeze(-1)
    var = diffusion.square() * dts
    resid = increments - drift * dts
    lp = -0.5 * (resid.square() / var + var.log() + _LOG_2PI)
    return lp.sum((-1, -2))


def euler_log_prob(path: Tensor, grid: Tensor, path_fn: PathFn) -> Tensor:
    """Exact log-density of a path under the Euler–Maruyama discretisation (no Python loop).

    The first point ``path[..., 0, :]`` is the given initial state and is not scored.

    Args:
        path: the path on the grid.
        grid: strictly increasing times, shared (``[U]``) or per series (``[*gbatch, U]``).
        path_fn: ``(ts [..., U-1], z [..., U-1, L]) -> (f, g)``, drift and diffusion
            evaluated at every left end point in one call.

    Shapes:
        - ``path``: ``[..., U, L]``; ``grid``: ``[U]`` or ``[*gbatch, U]``; returns ``[...]``
    """
    dts = (grid[..., 1:] - grid[..., :-1]).to(path.dtype)
    left = path[..., :-1, :]
    f, g = path_fn(grid[..., :-1], left)
    return euler_transition_log_prob(path[..., 1:, :] - left, f, g, dts)
