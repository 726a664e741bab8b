"""``LatentSDE``: a latent neural SDE for irregular time series as a Pyro model and guide.

Generative model (``model``), per series ``b``::

    z0[b]  ~ Normal(m0, s0)                                      site "z0"
    z[b]   ~ SDEPath(prior SDE: dz = f_p(t, z, u) dt + g(z) dW)  site "z"   (event [U, L])
    y[b,i] ~ p(y | z[b](t_bi))  for each observed channel         site "obs"  (masked)
    y*[b,j]~ p(y | z[b](s_j))   at query times s_j, if given      site "pred"

Guide (``guide``): ``q(z0)`` and a posterior SDE with the same diffusion and a drift
``f_q(t, z, u, c(t))`` that also reads an encoder context ``c(t)`` of the observations. After a
series' last observation the posterior drift equals the prior's, so forecasts continue with
the prior dynamics and the path KL there is exactly zero.

Plates: ``"series"`` at ``dim=-2`` and ``"time"`` at ``dim=-1``; ``max_plate_nesting = 2``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal, TypeVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn

from .._validation import BayesdynTypeError, BayesdynValueError
from ..solvers import UnionGrid, gather_on_grid, make_union_grid
from .base import AbstractSDE
from .filter_encoder import FilterEncoder
from .nets import (
    DiagonalDiffusion,
    DriftNet,
    FirstKEncoder,
    GaussianDecoder,
    GRUEncoder,
    RowFeatures,
    StudentTDecoder,
    fused_euler_path,
)
from .sde_path import SDEPath

__all__ = [
    "OBS_SITE",
    "PATH_SITE",
    "PRED_SITE",
    "Z0_SITE",
    "LatentSDE",
    "LatentSDEConfig",
]

#: Site name of the initial latent state, batch ``[B, 1]``, event ``[L]``.
Z0_SITE = "z0"
#: Site name of the latent path on the solver grid, batch ``[B, 1]``, event ``[U, L]``.
PATH_SITE = "z"
#: Site name of the observations, batch ``[B, T]``, event ``[D]``, masked per channel.
OBS_SITE = "obs"
#: Site name of predicted observations at query times, batch ``[B, Q]``, event ``[D]``.
PRED_SITE = "pred"


_M = TypeVar("_M", bound="ConfigCheckpoint")
_C = TypeVar("_C", bound="ModelOptions")


class ModelOptions:
    """Base of a model's options dataclass ``<Model>Config``: :meth:`from_dict`."""

    @classmethod
    def from_dict(cls: type[_C], d: dict) -> _C:
        """Build from a dict, naming unknown keys in the error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            model = cls.__name__.removesuffix("Config")
            raise BayesdynValueError(
                f"unknown {model} option(s) {unknown}; known options are {sorted(known)}"
            )
        return cls(**d)


class ConfigCheckpoint:
    """``to_checkpoint``/``from_checkpoint`` for a module built as ``cls(config=...)``.

    A subclass sets ``checkpoint_format`` (``"bayesdyn.<Model>/<version>"``; never change it
    for an existing model, or old files stop loading) and ``config_class`` (a dataclass with
    ``from_dict``), and keeps its config in ``self.config``.
    """

    checkpoint_format: ClassVar[str]
    config_class: ClassVar[type]

    def to_checkpoint(self) -> dict:
        """Plain-data description (config + state dict) loadable with ``weights_only=True``."""
        return {
            "format": self.checkpoint_format,
            "config": asdict(self.config),
            "state_dict": self.state_dict(),
        }

    @classmethod
    def from_checkpoint(cls: type[_M], payload: dict) -> _M:
        """Inverse of :meth:`to_checkpoint`."""
        fmt = cls.checkpoint_format
        if not isinstance(payload, dict) or payload.get("format") != fmt:
            got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            name = fmt.removeprefix("bayesdyn.").split("/")[0]
            raise BayesdynValueError(f"not a bayesdyn {name} checkpoint (format {got!r})")
        model = cls(config=cls.config_class.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model


@dataclass
class LatentSDEConfig(ModelOptions):
    """Hyperparameters of :class:`LatentSDE` (plain values, so they save as JSON).

    Attributes:
        obs_dim: observed channels ``D``.
        latent_dim: latent dimensions ``L``.
        hidden_dim: width of the drift networks.
        context_dim: encoder context size ``C``.
        encoder: ``"gru"`` (reverse-time GRU over all observations: a smoother),
            ``"filter"`` (causal ODE-RNN / GRU-ODE-Bayes encoder of past observations: a
            filter, which also streams; see :class:`~bayesdyn.models.FilterEncoder`) or
            ``"first_k"`` (MLP over the first ``num_context_obs`` observations).
        num_context_obs: ``k`` for ``encoder="first_k"``.
        encoder_hidden_dim: GRU/MLP width of the encoder (default ``hidden_dim``).
        decoder: ``"gaussian"`` or ``"student_t"``.
        decoder_hidden_dim: 0 for a linear decoder.
        obs_scale_init: initial observation scale; learn_obs_scale: learn it.
        stable_drift: mean-reverting prior drift (bounded long forecasts).
        diffusion_min, diffusion_max: bounds of the diagonal diffusion.
        diffusion_hidden_dim: width of the per-dimension diffusion nets.
        diffusion_state_dependent: ``False`` for a constant diffusion per dimension.
        covariate_dim: exogenous inputs ``u(t)`` fed to both drifts (``batch.covariates``).
        time_input: feed ``t`` to both drifts.
        next_obs_features: the posterior drift also reads the next observation's values,
            mask and the time left until it (besides the encoder context).
        bridge: add a guiding term ``beta * (A y_next + c - z) / (tau + delta)`` to the
            posterior drift (a learned Brownian-bridge-like pull towards the next
            observation). Without it a posterior with the prior's diffusion cannot
            concentrate at an observation within a few solver steps.
        num_layers: hidden layers of the drift networks.
        activation: activation of the drift networks.
        dt: solver step size (see ``step_rounding``).
        step_rounding: ``"ceil"`` (default): gaps between grid times are split so that no
            step exceeds ``dt``; ``"nearest"``: into ``round(gap / dt)`` equal steps, so steps
            average ``dt`` like torchsde's fixed-step solvers (see
            :func:`bayesdyn.solvers.make_union_grid`).
        t0: time of the initial state (default: the batch's earliest time).
    """

    obs_dim: int
    latent_dim: int = 4
    hidden_dim: int = 64
    context_dim: int = 16
    encoder: Literal["gru", "first_k", "filter"] = "gru"
    num_context_obs: int = 3
    encoder_hidden_dim: int | None = None
    decoder: Literal["gaussian", "student_t"] = "gaussian"
    decoder_hidden_dim: int = 0
    obs_scale_init: float = 0.1
    learn_obs_scale: bool = True
    stable_drift: bool = False
    diffusion_min: float = 1e-3
    diffusion_max: float = 1.0
    diffusion_hidden_dim: int = 16
    diffusion_state_dependent: bool = True
    covariate_dim: int = 0
    time_input: bool = False
    next_obs_features: bool = True
    bridge: bool = True
    num_layers: int = 2
    activation: str = "softplus"
    dt: float = 0.05
    step_rounding: Literal["ceil", "nearest"] = "ceil"
    t0: float | None = None

    def __post_init__(self):
        for name in ("obs_dim", "latent_dim", "hidden_dim", "context_dim", "num_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BayesdynValueError(f"{name} must be a positive integer; got {v!r}")
        if self.encoder not in ("gru", "first_k", "filter"):
            raise BayesdynValueError(
                f"encoder must be 'gru', 'first_k' or 'filter'; got {self.encoder!r}"
            )
        if self.decoder not in ("gaussian", "student_t"):
            raise BayesdynValueError(
                f"decoder must be 'gaussian' or 'student_t'; got {self.decoder!r}"
            )
        if not (isinstance(self.dt, (int, float)) and math.isfinite(self.dt) and self.dt > 0):
            raise BayesdynValueError(f"dt must be a finite positive number; got {self.dt!r}")
        if self.step_rounding not in ("ceil", "nearest"):
            raise BayesdynValueError(
                f"step_rounding must be 'ceil' or 'nearest'; got {self.step_rounding!r}"
            )


_Z0_MIN_SCALE = 1e-4


class _Z0Prior(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.zeros(latent_dim))

    def scale(self) -> Tensor:
        return F.softplus(self.raw_scale) + _Z0_MIN_SCALE

    @torch.no_grad()
    def set_scale(self, scale: float) -> None:
        """Set every dimension's scale to ``scale`` (> 1e-4)."""
        self.raw_scale.fill_(math.log(math.expm1(scale - _Z0_MIN_SCALE)))


#: Hidden activations per chunk when a drift net runs over a whole path (see _BoundSDE).
_ON_PATH_CHUNK = 1 << 22


class _BoundSDE(AbstractSDE):
    """Prior or posterior latent SDE bound to one grid, with grid features precomputed.

    ``pre`` holds the first-layer contribution of everything the drift sees besides the state
    (context, covariates, time) at each grid point; ``active`` says where the posterior drift
    applies (before each series' last observation); elsewhere the prior drift is used.

    With ``rows`` (:class:`~bayesdyn.models.nets.RowFeatures`) the features are ``pre +
    rows.dense()``: the fused training pass gathers them step by step, and ``pre`` (the whole
    grid tensor) is only materialised if a generic path asks for it.

    Shapes: ``pre [B, 1, U, H]`` (or ``[H]``), ``active [B, 1, U]`` (posterior only),
    ``rows.per_row [B, 1, T, H]``, ``rows.index [B, 1, U]``.
    """

    def __init__(
        self,
        drift: DriftNet,
        diffusion: DiagonalDiffusion,
        grid: Tensor,
        pre: Tensor,
        prior: _BoundSDE | None = None,
        active: Tensor | None = None,
        bridge: tuple[Tensor, Tensor] | None = None,
        rows: RowFeatures | None = None,
    ):
        super().__init__(drift.state_dim)
        # Plain attributes, not submodules: a bound SDE is a view of the LatentSDE's nets.
        object.__setattr__(self, "_drift", drift)
        object.__setattr__(self, "_diffusion", diffusion)
        object.__setattr__(self, "_prior", prior)
        self.grid = grid
        self._base = pre
        self.rows = rows
        self._weights = drift.bind()
        # Guiding term (target - z) * rate towards the next observation; see LatentSDE.
        self.bridge = bridge
        self.active = active
        self._all_active = None if active is None else active.all(0).all(0).tolist()

    @functools.cached_property
    def pre(self) -> Tensor:
        """All first-layer features on the grid: ``[B, 1, U, H]`` or ``[H]``."""
        return self._base if self.rows is None else self._base + self.rows.dense()

    # Per-step views for the generic loop (:meth:`step`), made on first use: the fused
    # training pass reads the whole tensors and never needs them.
    @functools.cached_property
    def _pre_steps(self):
        return self.pre.unbind(-2) if self.pre.dim() >= 2 else [self.pre] * self.grid.shape[-1]

    @functools.cached_property
    def _bridge_steps(self):
        return list(zip(self.bridge[0].unbind(-2), self.bridge[1].unbind(-2), strict=True))

    @functools.cached_property
    def _active_steps(self):
        return None if self.active is None else self.active.unsqueeze(-1).unbind(-2)

    def _pre_on_path(self) -> Tensor:
        return self.pre[..., :-1, :] if self.pre.dim() >= 2 else self.pre

    def step(self, k: int, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        f = self._drift.forward_pre(z, self._pre_steps[k], self._weights)
        if self.bridge is not None:
            target, rate = self._bridge_steps[k]
            f = f + (target - z) * rate
        g = self._diffusion(z)
        if self._prior is not None and not self._all_active[k]:
            f_p = self._prior._drift.forward_pre(z, self._prior._pre_steps[k], self._prior._weights)
            f = torch.where(self._active_steps[k], f, f_p)
        return f, g

    def sample_path(self, z0: Tensor, grid: Tensor, noise: Tensor) -> tuple | None:
        """Fused Euler–Maruyama ``(path, drift, diffusion, prior drift)`` while training, or None.

        The same scheme as stepping with :meth:`step`, in one autograd node with a
        hand-written backward (see :func:`~bayesdyn.models.nets.fused_euler_path`); for a
        posterior SDE the prior drift along the path comes out of the same pass (the path KL
        reads it, see :meth:`same_prior`). Returns None (callers fall back to the generic loop)
        without gradients or for unsupported networks.

        Shapes: ``z0 [..., L]``, ``grid [U]``, ``noise [..., U-1, L]``.
        """
        if not torch.is_grad_enabled() or grid.shape != self.grid.shape:
            return None
        prior = active = None
        if self._prior is not None:
            prior = (self._prior._drift, self._prior.pre)
            active = None if all(self._all_active[:-1]) else self.active
        pre, rows = self._base, self.rows
        out = fused_euler_path(
            self._drift,
            self._diffusion,
            z0,
            pre,
            grid,
            noise,
            prior=prior,
            active=active,
            bridge=self.bridge,
            rows=rows,
        )
        if out is None and prior is not None:
            # An unsupported prior net: fuse the posterior alone where nothing needs the prior.
            if self.bridge is None and active is None:
                out = fused_euler_path(
                    self._drift, self._diffusion, z0, pre, grid, noise, rows=rows
                )
        return out

    def same_prior(self, other: AbstractSDE) -> bool:
        """True if ``other`` is this posterior's prior SDE: the same drift and diffusion nets on
        the same grid with equal features, so the prior drift from :meth:`sample_path` is
        ``other``'s drift along the sampled path."""
        p = self._prior
        if p is None or not isinstance(other, _BoundSDE):
            return False
        if other._drift is not p._drift or other._diffusion is not p._diffusion:
            return False
        if other.grid.shape != p.grid.shape or not torch.equal(other.grid, p.grid):
            return False
        if other.rows is not None or p.rows is not None:
            return other is p
        a, b = other.pre, p.pre
        return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))

    def on_path(self, ts: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.drift_on_path(ts, z), self._diffusion(z)

    def _drift_net_on_path(self, z: Tensor) -> Tensor:
        """``forward_pre`` over a whole path, in time chunks of at most ~4M hidden activations.

        One call over ``[..., U-1, H]`` allocates several tensors of hundreds of MB per step;
        the allocator maps fresh pages for each (page faults cost ~20% of a large step).
        Chunks small enough to be recycled by the heap avoid that; the result is the same.
        """
        pre = self._pre_on_path()
        H = self._weights[0].shape[0]
        U1 = z.shape[-2]
        rows = z.numel() // max(z.shape[-1] * U1, 1)
        chunk = max(1, _ON_PATH_CHUNK // max(rows * H, 1))
        if chunk >= U1:
            return self._drift.forward_pre(z, pre, self._weights)
        per_step = pre.dim() >= 2
        parts = []
        for a in range(0, U1, chunk):
            p = pre[..., a : a + chunk, :] if per_step else pre
            parts.append(self._drift.forward_pre(z[..., a : a + chunk, :], p, self._weights))
        return torch.cat(parts, -2)

    def drift_on_path(self, ts: Tensor, z: Tensor) -> Tensor:
        """Drift alone at all left end points. Shapes: ``z [..., U-1, L]`` -> same."""
        f = self._drift_net_on_path(z)
        if self.bridge is not None:
            target, rate = self.bridge
            f = f + (target[..., :-1, :] - z) * rate[..., :-1, :]
        if self._prior is not None and not all(self._all_active[:-1]):
            f_p = self._prior._drift_net_on_path(z)
            f = torch.where(self.active[..., :-1].unsqueeze(-1), f, f_p)
        return f

    def shares_diffusion_with(self, other: AbstractSDE) -> bool:
        """True if ``other`` uses the very same diffusion network (so ``g`` agrees exactly)."""
        return isinstance(other, _BoundSDE) and other._diffusion is self._diffusion

    def drift_and_diffusion(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        # Arbitrary times (torchsde adapter): use the features of the grid interval holding t.
        k = int(torch.searchsorted(self.grid, t.reshape(()), right=True)) - 1
        return self.step(min(max(k, 0), self.grid.numel() - 1), t, z)


class LatentSDE(ConfigCheckpoint, PyroModule):
    """A latent neural SDE for irregularly sampled, partially observed series.

    ``model(batch)`` and ``guide(batch)`` follow Pyro's contract, so they train with
    ``pyro.infer.SVI`` and :class:`bayesdyn.inference.PathELBO` (or ``bayesdyn.fit``), and
    work with ``poutine.trace``, ``condition``, ``do`` and ``Predictive``.

    Args:
        obs_dim: observed channels ``D`` (or pass a :class:`LatentSDEConfig` as ``config``).
        **options: any :class:`LatentSDEConfig` field.

    Shapes:
        - ``batch``: an :class:`~bayesdyn.data.IrregularBatch` with ``times [B, T]``,
          ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]``, optional
          ``covariates [B, T, K]``.
        - ``query_times``: ``[Q]`` or ``[B, Q]``.
        - site ``"z"``: ``[*sample, B, 1, U, L]``; ``model`` returns the latent path at the
          observation times, ``[*sample, B, T, L]``.
    """

    max_plate_nesting = 2
    checkpoint_format = "bayesdyn.LatentSDE/1"
    config_class = LatentSDEConfig

    def __init__(
        self, obs_dim: int | None = None, *, config: LatentSDEConfig | None = None, **options
    ):
        super().__init__(name="latent_sde")
        if config is None:
            if obs_dim is None:
                raise BayesdynValueError("obs_dim is required (or pass config=LatentSDEConfig)")
            config = LatentSDEConfig.from_dict({"obs_dim": obs_dim, **options})
        elif options or obs_dim is not None:
            raise BayesdynValueError("pass either config or obs_dim/options, not both")
        self.config = c = config
        L, H, C = c.latent_dim, c.hidden_dim, c.context_dim
        extra = c.covariate_dim + int(c.time_input)
        enc_h = c.encoder_hidden_dim or H
        if c.encoder == "gru":
            self.encoder = GRUEncoder(c.obs_dim, enc_h, C)
        elif c.encoder == "filter":
            self.encoder = FilterEncoder(c.obs_dim, enc_h, C)
        else:
            self.encoder = FirstKEncoder(c.obs_dim, c.num_context_obs, enc_h, C)
        self.qz0_net = nn.Linear(C, 2 * L)
        self.z0_prior = _Z0Prior(L)
        kw = dict(num_layers=c.num_layers, activation=c.activation)
        self.prior_drift = DriftNet(L, H, extra, stable=c.stable_drift, **kw)
        if c.bridge:
            self.bridge_map = nn.Linear(c.obs_dim, L)
            self.bridge_raw_beta = nn.Parameter(torch.zeros(L))
            self.bridge_raw_delta = nn.Parameter(torch.tensor(math.log(math.expm1(c.dt))))
        nxt = 2 * c.obs_dim + 1 if c.next_obs_features else 0
        self.post_drift = DriftNet(L, H, extra + C + nxt, **kw)
        self.diffusion = DiagonalDiffusion(
            L,
            c.diffusion_hidden_dim,
            min_scale=c.diffusion_min,
            max_scale=c.diffusion_max,
            init_scale=min(
                0.1 * c.diffusion_max + 0.9 * c.diffusion_min + 0.05,
                0.5 * (c.diffusion_min + c.diffusion_max),
            ),
            state_dependent=c.diffusion_state_dependent,
        )
        dec = StudentTDecoder if c.decoder == "student_t" else GaussianDecoder
        self.decoder = dec(
            L,
            c.obs_dim,
            c.decoder_hidden_dim,
            init_scale=c.obs_scale_init,
            learn_scale=c.learn_obs_scale,
        )

    # ------------------------------------------------------------------ helpers
    def check_batch(self, batch) -> None:
        """Check that ``batch`` fits this model (types, channels, covariates)."""
        for attr in ("times", "values", "mask", "lengths"):
            if not isinstance(getattr(batch, attr, None), Tensor):
                raise BayesdynTypeError(
                    "batch must be an IrregularBatch (call IrregularTimeSeries.to_batch()); "
                    f"got {type(batch).__name__} whose .{attr} is not a tensor"
                )
        D = batch.values.shape[-1]
        if D != self.config.obs_dim:
            raise BayesdynValueError(
                f"values has {D} channels, the model expects {self.config.obs_dim}"
            )
        cov = getattr(batch, "covariates", None)
        K = 0 if cov is None else cov.shape[-1]
        if K != self.config.covariate_dim:
            raise BayesdynValueError(
                f"batch has {K} covariates, the model expects covariate_dim="
                f"{self.config.covariate_dim}"
            )

    def make_grid(
        self, batch, query_times: Tensor | None = None, t0: float | None = None
    ) -> UnionGrid:
        """The solver grid for a batch (and query times), starting at ``t0`` if given (else
        ``config.t0``, else the earliest time). Shapes: ``grid [U]``."""
        return make_union_grid(
            batch.times,
            query_times=query_times,
            dt=self.config.dt,
            t0=self.config.t0 if t0 is None else t0,
            rounding=self.config.step_rounding,
        )

    def _grid_inputs(self, batch, grid: Tensor) -> Tensor | None:
        """Time and covariates on the grid, ``[B, U, E]`` (covariates held piecewise constant)."""
        parts = []
        B = batch.times.shape[0]
        if self.config.covariate_dim:
            row = (
                torch.searchsorted(
                    batch.times.contiguous(), grid.expand(B, -1).contiguous(), right=True
                )
                - 1
            )
            row = row.clamp(min=0)
            row = torch.minimum(row, (batch.lengths - 1).unsqueeze(-1))
            cov = batch.covariates
            parts.append(torch.gather(cov, 1, row.unsqueeze(-1).expand(-1, -1, cov.shape[-1])))
        if self.config.time_input:
            parts.append(grid.expand(B, -1).unsqueeze(-1))
        return torch.cat(parts, -1) if parts else None

    def _next_obs(self, batch, grid: Tensor) -> Tensor:
        """Row of the next observation after each grid point (clamped to the last). ``[B, U]``."""
        B = batch.times.shape[0]
        nxt = torch.searchsorted(
            batch.times.contiguous(), grid.expand(B, -1).contiguous(), right=True
        )
        return torch.minimum(nxt, (batch.lengths - 1).unsqueeze(-1))

    def _posterior_features(
        self, batch, grid: Tensor, context: Tensor, nxt: Tensor
    ) -> tuple[Tensor, RowFeatures]:
        """First-layer contribution of everything the posterior drift reads besides the state.

        The posterior drift reads the grid inputs (time, covariates), the context of the next
        observation and, with ``next_obs_features``, that observation's masked values, its
        mask and the time left until it. Context and values are piecewise constant between
        observations, so their part of the first layer is computed once per observation row
        (``[B, T, H]``) and kept factored (:class:`~bayesdyn.models.nets.RowFeatures`: gathered
        to the grid by the solver, one step at a time), not once per grid point.

        Shapes: ``context [B, T, C]``, ``nxt [B, U]`` -> ``(pre [H] or [B, U, H], rows)``
        with ``rows.per_row [B, T, H]``, ``rows.index [B, U]``, ``rows.tau [B, U, 1]``.
        """
        W, b = self.post_drift.first.weight, self.post_drift.first.bias
        col = self.config.latent_dim
        pre = b
        x = self._grid_inputs(batch, grid)
        if x is not None:
            pre = pre + F.linear(x, W[:, col : col + x.shape[-1]])
            col += x.shape[-1]
        rows = context
        if self.config.next_obs_features:
            m = batch.mask.to(context.dtype)
            rows = torch.cat([context, batch.values * m, m], -1)
        per_row = F.linear(rows, W[:, col : col + rows.shape[-1]])  # [B, T, H]
        col += rows.shape[-1]
        if not self.config.next_obs_features:
            return pre, RowFeatures(per_row, nxt)
        tau = (torch.gather(batch.times, 1, nxt) - grid).clamp(min=0).unsqueeze(-1)
        return pre, RowFeatures(per_row, nxt, tau.to(per_row.dtype), W[:, col])

    @staticmethod
    def _next_values(batch, grid: Tensor, nxt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Masked values ``[B, U, D]``, mask ``[B, U, D]`` and time left ``[B, U, 1]``."""
        D = batch.values.shape[-1]
        idx = nxt.unsqueeze(-1).expand(-1, -1, D)
        m = torch.gather(batch.mask, 1, idx).to(batch.values.dtype)
        y = torch.gather(batch.values, 1, idx) * m
        tau = (torch.gather(batch.times, 1, nxt) - grid).clamp(min=0).unsqueeze(-1)
        return y, m, tau

    def _bridge(self, batch, grid: Tensor, nxt: Tensor, active: Tensor):
        """Target ``[B, 1, U, L]`` and rate ``[B, 1, U, L]`` of the guiding term.

        ``rate = beta / (tau + delta)`` with ``beta in (0, 1)`` and ``delta > 0`` learned; the
        step before an observation has ``tau = dt_k``, so ``rate * dt_k < 1`` and the Euler
        step never overshoots the target. Zero where the next row observes nothing and after
        the last observation.
        """
        y, m, tau = self._next_values(batch, grid, nxt)
        target = self.bridge_map(y)
        beta = torch.sigmoid(self.bridge_raw_beta)
        delta = F.softplus(self.bridge_raw_delta)
        seen = (m.sum(-1, keepdim=True) > 0) & active.squeeze(1).unsqueeze(-1)
        rate = beta / (tau + delta) * seen
        return target.unsqueeze(1), rate.unsqueeze(1)

    def prior_sde(self, batch, grid: Tensor) -> AbstractSDE:
        """The prior SDE bound to ``grid`` (features of time/covariates precomputed)."""
        x = self._grid_inputs(batch, grid)
        pre = self.prior_drift.features(x)
        if pre.dim() > 1:
            pre = pre.unsqueeze(1)  # [B, 1, U, H]: the singleton is the time-plate dim
        return _BoundSDE(self.prior_drift, self.diffusion, grid, pre)

    def posterior_sde(self, batch, grid: Tensor, context: Tensor) -> AbstractSDE:
        """The posterior SDE bound to ``grid``, reading ``context [B, T, C]``."""
        nxt = self._next_obs(batch, grid)
        pre, rows = self._posterior_features(batch, grid, context, nxt)
        pre = pre.unsqueeze(1) if pre.dim() > 1 else pre  # [B, 1, U, H]: time-plate singleton
        tau = None if rows.tau is None else rows.tau.unsqueeze(1)
        rows = RowFeatures(rows.per_row.unsqueeze(1), rows.index.unsqueeze(1), tau, rows.w_tau)
        last = batch.times.gather(1, (batch.lengths - 1).unsqueeze(-1))  # [B, 1]
        active = (grid.unsqueeze(0) < last).unsqueeze(1)  # [B, 1, U]
        prior = self.prior_sde(batch, grid)
        bridge = self._bridge(batch, grid, nxt, active) if self.config.bridge else None
        return _BoundSDE(
            self.post_drift,
            self.diffusion,
            grid,
            pre,
            prior=prior,
            active=active,
            bridge=bridge,
            rows=rows,
        )

    def encode(self, batch) -> Tensor:
        """Encoder context at each observation. Shapes: ``[B, T, C]``."""
        return self.encoder(batch.times, batch.values, batch.mask, batch.lengths)

    def z0_prior_dist(self, B: int) -> dist.Distribution:
        """Prior of site ``"z0"``: a diagonal Normal, batch ``[B, 1]``, event ``[L]``."""
        L = self.config.latent_dim
        loc = self.z0_prior.loc.expand(B, 1, L)
        scale = self.z0_prior.scale().expand(B, 1, L)
        return dist.Normal(loc, scale).to_event(1)

    def z0_posterior(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Amortised ``q(z0)`` from ``context [B, T, C]``: location and scale, ``[B, L]`` each."""
        L = self.config.latent_dim
        q0 = self.qz0_net(context[:, 0])
        return q0[..., :L], F.softplus(q0[..., L:]) + 1e-4

    # ------------------------------------------------------------------ Pyro
    def model(
        self,
        batch,
        query_times: Tensor | None = None,
        kl_scale: float = 1.0,
        z0: Tensor | None = None,
        t0: float | None = None,
    ) -> Tensor:
        """Generative model; see the module docstring for the sites and shapes.

        ``z0 [B, L]`` and ``t0`` (optional, together) start the path from a given state at
        time ``t0`` instead of sampling site ``"z0"`` (used by truncated backprop through
        time, which carries the state from one time window to the next).
        """
        self.check_batch(batch)
        pyro.module("latent_sde", self)
        grid = self.make_grid(batch, query_times, t0)
        B, T = batch.times.shape
        sde = self.prior_sde(batch, grid.grid)
        with pyro.plate("series", B, dim=-2):
            with poutine.scale(scale=kl_scale):
                if z0 is None:
                    z0 = pyro.sample(Z0_SITE, self.z0_prior_dist(B))
                else:
                    z0 = self._given_state(z0, B)
                z = pyro.sample(PATH_SITE, SDEPath(sde, z0, grid.grid))
            path = z.squeeze(-3)  # [..., B, U, L]
            latent = gather_on_grid(path, grid.index)
            with pyro.plate("time", T, dim=-1):
                pyro.sample(
                    OBS_SITE,
                    self.decoder(latent).mask(batch.mask).to_event(1),
                    obs=batch.values,
                )
            if query_times is not None:
                qidx = grid.query_index
                if qidx.dim() == 1:
                    qidx = qidx.expand(B, -1)
                with pyro.plate("query", qidx.shape[-1], dim=-1):
                    pyro.sample(PRED_SITE, self.decoder(gather_on_grid(path, qidx)).to_event(1))
        return latent

    def _given_state(self, z0: Tensor, B: int) -> Tensor:
        L = self.config.latent_dim
        if not isinstance(z0, Tensor) or z0.shape[-2:] != (B, L):
            raise BayesdynValueError(
                f"z0 must be a tensor [B, L] = [{B}, {L}]; got {getattr(z0, 'shape', z0)}"
            )
        return z0.unsqueeze(-2)

    def guide(
        self,
        batch,
        query_times: Tensor | None = None,
        kl_scale: float = 1.0,
        z0: Tensor | None = None,
        t0: float | None = None,
    ) -> Tensor:
        """Amortised guide: ``q(z0)`` and the posterior SDE. Returns the path ``[..., B, 1, U, L]``.

        With ``z0 [B, L]`` and ``t0`` the posterior path starts from that state at ``t0`` (no
        site ``"z0"``), as in :meth:`model`.
        """
        self.check_batch(batch)
        pyro.module("latent_sde", self)
        grid = self.make_grid(batch, query_times, t0)
        B = batch.times.shape[0]
        context = self.encode(batch)
        loc, scale = self.z0_posterior(context)
        sde = self.posterior_sde(batch, grid.grid, context)
        with pyro.plate("series", B, dim=-2):
            with poutine.scale(scale=kl_scale):
                if z0 is None:
                    z0 = pyro.sample(
                        Z0_SITE, dist.Normal(loc.unsqueeze(1), scale.unsqueeze(1)).to_event(1)
                    )
                else:
                    z0 = self._given_state(z0, B)
                return pyro.sample(PATH_SITE, SDEPath(sde, z0, grid.grid))
