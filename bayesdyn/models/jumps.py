r"""``JumpDiffusionPath``: a Pyro distribution over jump-diffusion paths on a fixed grid.

A jump-diffusion adds compound-Poisson jumps to a diffusion,

.. math:: dz = f(t, z)\,dt + g(t, z) \odot dW + dJ,

where jumps arrive at rate :math:`\lambda(t, z) > 0` and have sizes drawn from a (learnable,
possibly state-dependent) diagonal Gaussian :math:`\mathcal N(\mu_J(t, z), \sigma_J(t, z)^2)`.
Its discretisation on a grid is the two-component mixture "no jump, or one jump":

.. math::
    z_{k+1} = z_k + f_k\,dt_k + g_k \sqrt{dt_k}\,\epsilon_k + I_k J_k, \quad
    I_k \sim \mathrm{Bernoulli}(p_k),\ p_k = 1 - e^{-\lambda_k dt_k},\ J_k \sim
    \mathcal N(\mu_{J,k}, \sigma_{J,k}^2),

with everything evaluated at :math:`(t_k, z_k)`. :math:`p_k = \lambda_k dt_k + O(dt_k^2)` is the
probability of "a jump in the step"; the form :math:`1 - e^{-\lambda dt}` keeps it a probability
for any step and gives the no-jump branch exactly its Poisson probability. The transition
density is the mixture of two Gaussians,

.. math:: e^{-\lambda_k dt_k} \mathcal N(f_k dt_k, g_k^2 dt_k)
    + (1 - e^{-\lambda_k dt_k}) \mathcal N(f_k dt_k + \mu_{J,k}, g_k^2 dt_k + \sigma_{J,k}^2),

which ``log_prob`` evaluates for all steps at once; ``sample`` runs exactly this scheme.
As :math:`dt \to 0` it converges to the jump-diffusion (the Poisson mixture of Merton's model).

References:
    1. R. C. Merton, "Option pricing when underlying stock returns are discontinuous",
       J. Financial Economics, 1976.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor, nn

from .._validation import BayesdynTypeError, BayesdynValueError, is_validation_enabled
from ..solvers import check_finite_path
from .base import AbstractSDE
from .nets import MLP
from .sde_path import check_path_args

__all__ = ["GaussianJumpNet", "JumpDiffusionPath", "JumpPath", "JumpRateNet"]

_LOG_2PI = math.log(2 * math.pi)

#: ``(t, z [..., L]) -> [..., 1]`` positive jump intensity.
RateFn = Callable[[Tensor, Tensor], Tensor]
#: ``(t, z [..., L]) -> (loc [..., L], scale [..., L])`` of the Gaussian jump size.
JumpSizeFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class JumpRateNet(nn.Module):
    r"""Neural jump intensity :math:`\lambda(z) = \mathrm{softplus}(\mathrm{MLP}(z)) + \lambda_{min}`.

    Always positive. ``hidden_dim=0`` gives ``softplus(w.z + b)``.

    Shapes: ``(t, z [..., L]) -> [..., 1]``.
    """

    def __init__(
        self, state_dim: int, hidden_dim: int = 16, *, init_rate: float = 1.0, min_rate=1e-6
    ):
        super().__init__()
        if not init_rate > min_rate:
            raise BayesdynValueError(f"init_rate must exceed min_rate={min_rate}; got {init_rate}")
        self.net = (
            nn.Linear(state_dim, 1)
            if hidden_dim == 0
            else MLP(state_dim, hidden_dim, 1, num_layers=1)
        )
        last = self.net if hidden_dim == 0 else self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, math.log(math.expm1(init_rate - min_rate)))
        self.min_rate = float(min_rate)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Intensity. Shapes: ``z [..., L]`` -> ``[..., 1]``."""
        return F.softplus(self.net(z)) + self.min_rate


class GaussianJumpNet(nn.Module):
    """State-dependent Gaussian jump size: ``loc, scale = MLP(z)`` (``scale > min_scale``).

    ``hidden_dim=0`` gives state-independent learnable ``loc`` and ``scale``.

    Shapes: ``(t, z [..., L]) -> (loc [..., L], scale [..., L])``.
    """

    def __init__(
        self,
        state_dim: int,
        hidden_dim: int = 16,
        *,
        init_loc: float = 0.0,
        init_scale: float = 0.5,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        if not init_scale > min_scale:
            raise BayesdynValueError(
                f"init_scale must exceed min_scale={min_scale}; got {init_scale}"
            )
        self.state_dim = state_dim
        self.min_scale = float(min_scale)
        raw = math.log(math.expm1(init_scale - min_scale))
        if hidden_dim == 0:
            self.net = None
            self.loc = nn.Parameter(torch.full((state_dim,), float(init_loc)))
            self.raw_scale = nn.Parameter(torch.full((state_dim,), raw))
        else:
            self.net = MLP(state_dim, hidden_dim, 2 * state_dim, num_layers=1)
            nn.init.zeros_(self.net[-1].weight)
            with torch.no_grad():
                self.net[-1].bias[:state_dim] = float(init_loc)
                self.net[-1].bias[state_dim:] = raw

    def forward(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Jump-size location and scale. Shapes: ``z [..., L]`` -> two ``[..., L]``."""
        if self.net is None:
            return self.loc.expand_as(z), (F.softplus(self.raw_scale) + self.min_scale).expand_as(z)
        out = self.net(z)
        L = self.state_dim
        return out[..., :L], F.softplus(out[..., L:]) + self.min_scale


class JumpPath(NamedTuple):
    """A sampled jump-diffusion path with its jumps.

    Shapes:
        - ``path``: ``[..., U, L]``
        - ``jumps``: ``[..., U-1]`` bool (a jump in step ``k``)
        - ``sizes``: ``[..., U-1, L]`` (jump sizes; zero where there was no jump)
    """

    path: Tensor
    jumps: Tensor
    sizes: Tensor


def _as_rate_fn(jump_rate) -> tuple[RateFn, bool]:
    if callable(jump_rate):
        return jump_rate, False
    if isinstance(jump_rate, bool):
        raise BayesdynTypeError("jump_rate must be a positive number, tensor or callable; got bool")
    if isinstance(jump_rate, (int, float)):
        jump_rate = torch.tensor(float(jump_rate))
    if not isinstance(jump_rate, Tensor):
        raise BayesdynTypeError(
            f"jump_rate must be a positive number, tensor or callable; got {type(jump_rate).__name__}"
        )
    if not bool(torch.isfinite(jump_rate).all()) or bool((jump_rate <= 0).any()):
        raise BayesdynValueError(
            f"jump_rate must be finite and positive; got {jump_rate.detach().flatten()[:4].tolist()}"
        )
    rate = jump_rate

    def fn(t, z):
        return rate.to(z.dtype).expand(z.shape[:-1]).unsqueeze(-1)

    return fn, True


def _as_size_fn(jump_size) -> JumpSizeFn:
    if callable(jump_size):
        return jump_size
    if not (isinstance(jump_size, (tuple, list)) and len(jump_size) == 2):
        raise BayesdynTypeError(
            "jump_size must be a callable (t, z) -> (loc, scale) or a pair (loc, scale); got "
            f"{type(jump_size).__name__}"
        )
    loc, scale = (torch.as_tensor(x) for x in jump_size)
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise BayesdynValueError(
            f"jump_size scale must be finite and positive; got {scale.detach().flatten()[:4].tolist()}"
        )

    def fn(t, z):
        return loc.to(z.dtype).expand_as(z), scale.to(z.dtype).expand_as(z)

    return fn


class JumpDiffusionPath(TorchDistribution):
    r"""Distribution of the "no jump or one jump per step" discretisation of a jump-diffusion.

    See the module docstring for the scheme. Use it like :class:`~bayesdyn.models.SDEPath`::

        z = pyro.sample("z", JumpDiffusionPath(sde, z0, grid, jump_rate=rate_net,
                                               jump_size=size_net))

    It has no reparameterised sampler (jump indicators are discrete); as a latent site, pair it
    with a guide of your choice (e.g. an :class:`~bayesdyn.models.SDEPath` posterior: the ELBO
    then scores ``log p - log q`` of the path).

    Args:
        sde: the diffusion part (an :class:`~bayesdyn.models.AbstractSDE`, diagonal noise).
        z0: initial state at ``grid[0]``.
        grid: strictly increasing times.
        jump_rate: positive number or tensor (constant rate, broadcast over the batch), or a
            callable ``(t, z) -> [..., 1]`` such as :class:`JumpRateNet` (``t`` as in
            :meth:`AbstractSDE.on_path`: scalar, or ``[U-1, 1]`` along a path).
        jump_size: ``(loc, scale)`` tensors ``[L]`` for constant Gaussian jump sizes, or a
            callable ``(t, z) -> (loc, scale)`` such as :class:`GaussianJumpNet`.

    Shapes:
        - ``z0``: ``[*batch, L]``; ``grid``: ``[U]``
        - ``batch_shape = z0.shape[:-1]``; ``event_shape = (U, L)``
        - samples ``[*sample, *batch, U, L]``; ``log_prob`` returns ``[*sample, *batch]``.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(
        self,
        sde: AbstractSDE,
        z0: Tensor,
        grid: Tensor,
        *,
        jump_rate: float | Tensor | RateFn,
        jump_size: tuple[Tensor, Tensor] | JumpSizeFn,
        validate_args=None,
    ):
        check_path_args(sde, z0, grid)
        if grid.dim() != 1:
            raise BayesdynValueError(
                f"JumpDiffusionPath takes one grid [U] shared by the batch; got shape "
                f"{tuple(grid.shape)} (per-series grids are supported by SDEPath)"
            )
        self.sde = sde
        self.z0 = z0
        self.grid = grid.to(z0.dtype)
        self._rate_fn, _ = _as_rate_fn(jump_rate)
        self._size_fn = _as_size_fn(jump_size)
        self.jump_rate = jump_rate
        self.jump_size = jump_size
        super().__init__(
            z0.shape[:-1], torch.Size((grid.numel(), z0.shape[-1])), validate_args=validate_args
        )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(JumpDiffusionPath, _instance)
        batch_shape = torch.Size(batch_shape)
        for attr in ("sde", "grid", "_rate_fn", "_size_fn", "jump_rate", "jump_size"):
            setattr(new, attr, getattr(self, attr))
        new.z0 = self.z0.expand(batch_shape + self.z0.shape[-1:])
        super(JumpDiffusionPath, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        raise NotImplementedError("JumpDiffusionPath has no closed-form mean; average samples")

    # ------------------------------------------------------------------ pieces
    def _rate(self, t: Tensor, z: Tensor) -> Tensor:
        lam = self._rate_fn(t, z)
        if lam.shape[-1:] != (1,):
            raise BayesdynValueError(
                f"jump_rate(t, z) must return shape [..., 1]; got {tuple(lam.shape)}"
            )
        lam = lam.squeeze(-1)
        if is_validation_enabled() and (
            not bool(torch.isfinite(lam).all()) or bool((lam <= 0).any())
        ):
            bad = lam[~torch.isfinite(lam) | (lam <= 0)].flatten()[0]
            raise BayesdynValueError(
                f"jump_rate(t, z) must be finite and positive; got {float(bad)}. Use "
                "JumpRateNet (softplus) for a neural rate."
            )
        return lam

    def _size(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        loc, scale = self._size_fn(t, z)
        if loc.shape[-1] != z.shape[-1] or scale.shape[-1] != z.shape[-1]:
            raise BayesdynValueError(
                f"jump_size(t, z) must return (loc, scale) with {z.shape[-1]} latent dims; got "
                f"{tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if is_validation_enabled() and bool((scale <= 0).any()):
            raise BayesdynValueError("jump_size(t, z) must return a positive scale")
        return loc, scale

    # ------------------------------------------------------------------ sampling
    def sample_with_jumps(self, sample_shape=()) -> JumpPath:
        """Sample a path and its jumps by the exact discretised scheme (no gradients).

        Shapes: returns ``path [*sample, *batch, U, L]``, ``jumps [*sample, *batch, U-1]``,
        ``sizes [*sample, *batch, U-1, L]``.
        """
        shape = torch.Size(sample_shape) + self.batch_shape
        L = self.event_shape[-1]
        U = self.event_shape[0]
        with torch.no_grad():
            z = self.z0.expand(shape + (L,))
            dts = (self.grid[1:] - self.grid[:-1]).tolist()
            states, jumps, sizes = [z], [], []
            for k in range(U - 1):
                t = self.grid[k]
                f, g = self.sde.step(k, t, z)
                lam = self._rate(t, z)
                p = -torch.expm1(-lam * dts[k])
                hit = torch.rand_like(p) < p
                loc, scale = self._size(t, z)
                size = (loc + scale * torch.randn_like(z)) * hit.unsqueeze(-1)
                z = z + f * dts[k] + g * math.sqrt(dts[k]) * torch.randn_like(z) + size
                states.append(z)
                jumps.append(hit)
                sizes.append(size)
            path = torch.stack(states, -2)
            check_finite_path(path, self.grid)
            if U > 1:
                jumps_t, sizes_t = torch.stack(jumps, -1), torch.stack(sizes, -2)
            else:
                jumps_t = torch.zeros(shape + (0,), dtype=torch.bool, device=z.device)
                sizes_t = z.new_zeros(shape + (0, L))
        return JumpPath(path, jumps_t, sizes_t)

    def sample(self, sample_shape=()) -> Tensor:
        """Path sample. Shapes: ``[*sample_shape, *batch, U, L]``."""
        return self.sample_with_jumps(sample_shape).path

    # ------------------------------------------------------------------ scoring
    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log-density of the discretised scheme, vectorised over time.

        Shapes: ``value [..., U, L]`` -> ``[...]``.
        """
        if self._validate_args:
            self._validate_sample(value)
        if value.shape[-2] < 2:
            return value.new_zeros(value.shape[:-2])
        ts = self.grid[:-1]
        dts = (self.grid[1:] - self.grid[:-1]).to(value.dtype).unsqueeze(-1)  # [U-1, 1]
        left = value[..., :-1, :]
        dz = value[..., 1:, :] - left
        tcol = ts.unsqueeze(-1)
        f, g = self.sde.on_path(ts, left)
        lam = self._rate(tcol, left)  # [..., U-1]
        loc, scale = self._size(tcol, left)
        mean0 = f * dts
        var0 = g.square() * dts
        var1 = var0 + scale.square()
        lp0 = -0.5 * ((dz - mean0).square() / var0 + var0.log() + _LOG_2PI).sum(-1)
        lp1 = -0.5 * ((dz - mean0 - loc).square() / var1 + var1.log() + _LOG_2PI).sum(-1)
        ldt = lam * dts.squeeze(-1)
        # log(1 - exp(-x)) computed stably for small and large x.
        log_p_jump = torch.where(
            ldt < math.log(2), torch.log(-torch.expm1(-ldt)), torch.log1p(-torch.exp(-ldt))
        )
        lp = torch.logaddexp(-ldt + lp0, log_p_jump + lp1)
        return lp.sum(-1)

    def jump_posterior(self, value: Tensor) -> Tensor:
        """Posterior probability that each step of ``value`` contains a jump.

        Shapes: ``value [..., U, L]`` -> ``[..., U-1]``.
        """
        ts = self.grid[:-1]
        dts = (self.grid[1:] - self.grid[:-1]).to(value.dtype).unsqueeze(-1)
        left = value[..., :-1, :]
        dz = value[..., 1:, :] - left
        tcol = ts.unsqueeze(-1)
        f, g = self.sde.on_path(ts, left)
        lam = self._rate(tcol, left)
        loc, scale = self._size(tcol, left)
        var0 = g.square() * dts
        var1 = var0 + scale.square()
        lp0 = -0.5 * ((dz - f * dts).square() / var0 + var0.log()).sum(-1)
        lp1 = -0.5 * ((dz - f * dts - loc).square() / var1 + var1.log()).sum(-1)
        ldt = lam * dts.squeeze(-1)
        return torch.sigmoid(torch.log(-torch.expm1(-ldt)) + lp1 + ldt - lp0)
