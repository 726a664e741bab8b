"""Adapter to torchsde for higher-order solvers, the Brownian interval and the adjoint.

bayesdyn's own fixed-step loop (:func:`euler_maruyama`) is the default: at the sizes latent SDEs
use, per-step overhead dominates, and torchsde's generic stepping costs about twice as much.
Use this adapter for strong-order-1 schemes (``"milstein"``, ``"srk"``), adaptive stepping, a
fixed Brownian path (``torchsde.BrownianInterval``) or the memory-saving adjoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torchsde
from torch import Tensor

from .._validation import BayesdynValueError
from ._euler import check_finite_path
from ._grid import torchsde_layout

__all__ = ["solve_torchsde"]

Method = Literal["euler", "milstein", "srk", "heun", "midpoint", "reversible_heun"]


class _FunctionalSDE(torch.nn.Module):
    """Wrap a fused ``(t, z) -> (f, g)`` callable in torchsde's ``f``/``g`` protocol."""

    noise_type = "diagonal"

    def __init__(self, drift_and_diffusion: Callable, sde_type: str):
        super().__init__()
        self._fn = drift_and_diffusion
        self.sde_type = sde_type

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self._fn(t, y)[0]

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self._fn(t, y)[1]

    def f_and_g(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._fn(t, y)


def solve_torchsde(
    drift_and_diffusion: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    z0: Tensor,
    grid: Tensor,
    *,
    method: Method = "srk",
    dt: float | None = None,
    adaptive: bool = False,
    bm: torchsde.BrownianInterval | None = None,
    adjoint: bool = False,
    params: list[Tensor] | None = None,
    entropy: int | None = None,
) -> Tensor:
    """Solve an Itô SDE with diagonal noise by torchsde and return the path in bayesdyn layout.

    Args:
        drift_and_diffusion: ``(t, z [B, L]) -> (f [B, L], g [B, L])``.
        z0: initial state at ``grid[0]``.
        grid: strictly increasing output times.
        method: a torchsde method name.
        dt: solver step (defaults to the smallest grid gap).
        adaptive: adaptive step control (not for ``"euler"`` with multiplicative noise).
        bm: a Brownian motion to reuse (e.g. ``BrownianInterval(..., entropy=0)`` for a fixed path).
        adjoint: use ``torchsde.sdeint_adjoint`` (O(1) memory in the number of steps, ~10x slower).
        params: parameters the callable depends on (required with ``adjoint=True``).
        entropy: seed for a fresh ``BrownianInterval`` when ``bm`` is not given.

    Returns:
        The path at ``grid``.

    Shapes:
        - ``z0``: ``[B, L]``; ``grid``: ``[U]``; returns ``[B, U, L]``.
    """
    if z0.dim() != 2:
        raise BayesdynValueError(f"z0 must have shape [B, L]; got shape {tuple(z0.shape)}")
    if grid.dim() != 1 or grid.numel() < 2:
        raise BayesdynValueError(f"grid must have shape [U] with U >= 2; got {tuple(grid.shape)}")
    if adjoint and not params:
        raise BayesdynValueError(
            "params must list the tensors the SDE depends on when adjoint=True; got none"
        )
    sde = _FunctionalSDE(drift_and_diffusion, "ito")
    if dt is None:
        dt = float((grid[1:] - grid[:-1]).min())
    if bm is None:
        bm = torchsde.BrownianInterval(
            t0=float(grid[0]),
            t1=float(grid[-1]),
            size=tuple(z0.shape),
            dtype=z0.dtype,
            device=z0.device,
            entropy=entropy,
            levy_area_approximation="space-time" if method == "srk" else "none",
        )
    kwargs = dict(method=method, dt=dt, adaptive=adaptive, bm=bm)
    if adjoint:
        # The adjoint needs the parameters the callable closes over.
        ys = torchsde.sdeint_adjoint(sde, z0, grid, adjoint_params=tuple(params), **kwargs)
    else:
        ys = torchsde.sdeint(sde, z0, grid, **kwargs)
    path = torchsde_layout(ys, inverse=True)
    check_finite_path(path, grid)
    return path
