"""``SDEPath``: a Pyro distribution over Euler–Maruyama paths of an SDE on a fixed grid."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError, is_validation_enabled
from ..solvers import EulerPath, check_finite_path, euler_log_prob, euler_maruyama
from .base import AbstractSDE

__all__ = ["SDEPath"]


def check_grid(grid: Tensor, *, min_points: int = 1) -> None:
    """Raise unless ``grid`` is a detached, strictly increasing tensor with ``U >= min_points``.

    ``grid`` is shared by every batch member (``[U]``) or holds one row per series
    (``[*gbatch, U]``, see :func:`bayesdyn.solvers.make_series_grid`), each row strictly
    increasing. The ordering check runs only while validation is enabled (see
    :func:`bayesdyn.enable_validation`).
    """
    if not isinstance(grid, Tensor) or grid.dim() < 1 or grid.shape[-1] < min_points:
        raise BayesdynValueError(
            f"grid must be a tensor [U] (or per series [*gbatch, U]) with U >= {min_points}; "
            f"got {getattr(grid, 'shape', grid)}"
        )
    if grid.requires_grad:
        raise BayesdynValueError("grid must not require grad; call .detach() first")
    if is_validation_enabled() and grid.shape[-1] > 1:
        bad = grid[..., 1:] <= grid[..., :-1]
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            k = where[-1]
            row = where[:-1]
            raise BayesdynValueError(
                f"grid must be strictly increasing; grid[{', '.join(map(str, row + (k + 1,)))}]="
                f"{float(grid[row + (k + 1,)])} follows grid[{', '.join(map(str, row + (k,)))}]="
                f"{float(grid[row + (k,)])}"
            )


def check_path_args(sde: AbstractSDE, z0: Tensor, grid: Tensor) -> None:
    """Validate the ``(sde, z0, grid)`` of a path distribution (``SDEPath``, ``JumpDiffusionPath``).

    Shapes: ``z0`` ``[*batch, L]`` with ``L = sde.state_dim``; ``grid`` ``[U]``, ``U >= 1``, or
    per series ``[*gbatch, U]`` with ``gbatch`` broadcastable to ``batch``.
    """
    if not isinstance(sde, AbstractSDE):
        raise BayesdynTypeError(
            "sde must be a bayesdyn.models.AbstractSDE (wrap plain functions in "
            f"bayesdyn.models.FunctionalSDE); got {type(sde).__name__}"
        )
    if not isinstance(z0, Tensor) or z0.dim() < 1:
        raise BayesdynTypeError(f"z0 must be a tensor of shape [..., L]; got {z0!r}")
    if z0.shape[-1] != sde.state_dim:
        raise BayesdynValueError(
            f"z0 has {z0.shape[-1]} latent dims, the sde expects state_dim={sde.state_dim}"
        )
    check_grid(grid)
    if grid.dim() > 1:
        try:
            shape = torch.broadcast_shapes(grid.shape[:-1], z0.shape[:-1])
        except RuntimeError:
            shape = None
        if shape != z0.shape[:-1]:
            raise BayesdynValueError(
                f"a per-series grid's leading shape {tuple(grid.shape[:-1])} must broadcast to "
                f"z0's batch shape {tuple(z0.shape[:-1])}"
            )


class SDEPath(TorchDistribution):
    r"""Distribution of the Euler–Maruyama discretisation of an SDE on a grid.

    The generative story, for grid ``t_0 < ... < t_{U-1}``::

        z[0] = z0
        for k in range(U - 1):
            z[k+1] ~ Normal(z[k] + f(t_k, z[k]) dt_k, g(t_k, z[k]) sqrt(dt_k))

    ``rsample`` runs exactly this scheme (reparameterised); ``log_prob`` is its exact transition
    density, vectorised over time. The first row of a value is the given initial state and is
    not scored.

    Use it as a Pyro sample site (the library's models name it ``"z"``)::

        z = pyro.sample("z", SDEPath(sde, z0, grid))

    It works under plates, ``poutine.trace``, ``condition``, ``do`` and ``Predictive``
    (``parallel=True`` included).

    Args:
        sde: an :class:`~bayesdyn.models.AbstractSDE` (diagonal noise).
        z0: initial state at ``grid[0]``.
        grid: strictly increasing times (see :func:`bayesdyn.solvers.make_union_grid`), or
            one row per series (:func:`bayesdyn.solvers.make_series_grid`).

    Shapes:
        - ``z0``: ``[*batch, L]``; ``grid``: ``[U]`` or ``[*gbatch, U]`` (broadcasting to ``batch``)
        - ``batch_shape = z0.shape[:-1]``; ``event_shape = (U, L)``; samples ``[*sample, *batch, U, L]``
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, sde: AbstractSDE, z0: Tensor, grid: Tensor, *, validate_args=None):
        check_path_args(sde, z0, grid)
        self.sde = sde
        self.z0 = z0
        self.grid = grid.to(z0.dtype)
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None
        self._prior_drift: Tensor | None = None
        super().__init__(
            z0.shape[:-1], torch.Size((grid.shape[-1], z0.shape[-1])), validate_args=validate_args
        )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SDEPath, _instance)
        batch_shape = torch.Size(batch_shape)
        new.sde = self.sde
        new.grid = self.grid
        new.z0 = self.z0.expand(batch_shape + self.z0.shape[-1:])
        new._cache = None
        new._prior_drift = None
        super(SDEPath, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        raise NotImplementedError("SDEPath has no closed-form mean; average samples instead")

    def rsample(self, sample_shape=()) -> Tensor:
        """Reparameterised path sample. Shapes: returns ``[*sample_shape, *batch, U, L]``."""
        shape = torch.Size(sample_shape) + self.batch_shape
        L = self.event_shape[-1]
        z0 = self.z0.expand(shape + (L,))
        noise = torch.randn(shape + (self.event_shape[0] - 1, L), dtype=z0.dtype, device=z0.device)
        # The fused kernels take a shared grid; per-series grids use the generic loop.
        fused = getattr(self.sde, "sample_path", None) if self.grid.dim() == 1 else None
        out = None if fused is None else fused(z0, self.grid, noise)
        prior_drift = None
        if out is not None:  # same scheme, one autograd node (see _BoundSDE.sample_path)
            check_finite_path(out[0], self.grid)
            res = EulerPath(*out[:3])
            prior_drift = out[3] if len(out) > 3 else None
        else:
            res = euler_maruyama(self.sde.step, z0, self.grid, noise)
        # Keep the drift and diffusion used while sampling (and the prior drift, where the
        # fused pass computed it): the low-variance path KL reuses them instead of evaluating
        # the drifts a second time.
        self._cache = (res.path, res.drift, res.diffusion)
        self._prior_drift = prior_drift
        return res.path

    def sample(self, sample_shape=()) -> Tensor:
        """Path sample without gradients. Shapes: ``[*sample_shape, *batch, U, L]``."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact Euler–Maruyama log-density. Shapes: ``value [..., U, L]`` -> ``[...]``."""
        if self._validate_args:
            self._validate_sample(value)
        return euler_log_prob(value, self.grid, self.sde.on_path)

    def drift_diffusion_on(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion used at each step of ``value`` (cached if this instance sampled it).

        Shapes: ``value [..., U, L]`` -> two ``[..., U-1, L]``.
        """
        if self._cache is not None and self._cache[0] is value:
            return self._cache[1], self._cache[2]
        return self.sde.on_path(self.grid[..., :-1], value[..., :-1, :])

    def path_kl(self, prior: SDEPath, value: Tensor) -> Tensor:
        r"""Low-variance estimate of ``KL(self || prior)`` along a path drawn from ``self``.

        .. math:: \sum_k \tfrac12 \lVert (f_q - f_p)(t_k, z_k) / g(t_k, z_k) \rVert^2 dt_k

        This equals the expected ``log q - log p`` (torchsde's ``logqp``) but drops the
        zero-mean stochastic integral that the naive difference carries, so its variance is
        lower. Both paths must share the grid and the diffusion.

        Shapes: ``value [..., U, L]`` -> ``[...]``.
        """
        if not isinstance(prior, SDEPath):
            raise BayesdynTypeError(f"prior must be an SDEPath; got {type(prior).__name__}")
        if prior.grid.shape != self.grid.shape or not torch.equal(prior.grid, self.grid):
            raise BayesdynValueError(
                f"prior and posterior paths must share one grid; got shapes "
                f"{tuple(prior.grid.shape)} and {tuple(self.grid.shape)}"
            )
        f_q, g = self.drift_diffusion_on(value)
        shares = getattr(self.sde, "shares_diffusion_with", None)
        same_prior = getattr(self.sde, "same_prior", None)
        cached = self._cache is not None and self._cache[0] is value
        if cached and self._prior_drift is not None and same_prior and same_prior(prior.sde):
            f_p = self._prior_drift  # computed along this very path while sampling it
        elif shares is not None and shares(prior.sde):
            # Same diffusion object in both SDEs: g_p == g by construction, so only the prior
            # drift is evaluated (half the work of ``on_path``, no redundant check).
            f_p = prior.sde.drift_on_path(self.grid[..., :-1], value[..., :-1, :])
        else:
            f_p, g_p = prior.sde.on_path(self.grid[..., :-1], value[..., :-1, :])
            self._check_same_diffusion(g, g_p)
        dts = (self.grid[..., 1:] - self.grid[..., :-1]).unsqueeze(-1)
        return 0.5 * (((f_q - f_p) / g).square() * dts).sum((-1, -2))

    @staticmethod
    def _check_same_diffusion(g: Tensor, g_p: Tensor) -> None:
        if is_validation_enabled() and not torch.allclose(g.detach(), g_p.detach()):
            raise BayesdynValueError(
                "the low-variance path KL needs the same diffusion in prior and posterior; "
                f"they differ by up to {float((g - g_p).abs().max()):.3g}. Use path_kl='naive'."
            )
