r"""``LatentJumpSDE``: a neural jump SDE for event sequences (and optional continuous channels).

Generative model (``model``), per series ``b`` with observation window ``[a_b, c_b]`` and
observed events ``(t_i, m_i)``::

    z0[b]   ~ Normal(m0, s0)                                             site "z0"
    z[b]    ~ latent SDE dz = f_p(t, z) dt + g(z) dW between events,      site "z"  (event [U, L])
              with z(t_i+) = z(t_i-) + J(z(t_i-), onehot(m_i)) at each event
    events  ~ TemporalPointProcess(lambda_k(t) = link(W z(t) + c)_k)     site "events" (observed)
    y[b,j]  ~ Normal(decoder(z(s_j)), sigma)  if obs_dim > 0             site "obs"  (masked)
    jumps   = J(z(t_i-), m_i) at each event                               site "jumps" (deterministic)

On the solver grid (the union of observation, event and window times, refined to ``dt``) grid
values are left limits: the step leaving an event's grid point starts from the jumped state
``z+ = z + J(z, m)``, which ``SDEPath`` sees as the impulsive drift ``(z+ - z) / dt_k`` of that
step (so the path keeps the exact Euler–Maruyama density, and the jump term cancels exactly in
the low-variance path KL because prior and posterior jump alike). The link is ``softplus``
(default) or ``exp`` (``intensity_link``). On each step the intensity is linear between
``lambda(z+_k)`` and ``lambda(z_{k+1})`` for the softplus link, and log-linear for the exp link
(then ``log lambda`` is linear in time along the step, as it is in the state); an event reads
the left limit.

Guide (``guide``): the foundation's posterior SDE (same diffusion, a drift that reads an
encoder context), whose GRU encoder runs over the merged rows of observations *and* events
(values and mask, plus the event's one-hot mark), so the posterior path sees the events. It
reuses :class:`~bayesdyn.models.LatentSDE`'s networks, encoders and grid (``core``). With
``guide="prior"`` the guide is the prior jump SDE itself (see :class:`LatentJumpSDEConfig`).

Plates: ``"series"`` at ``dim=-2`` and ``"time"`` at ``dim=-1``; ``max_plate_nesting = 2``.

References:
    1. J. Jia and A. R. Benson, "Neural Jump Stochastic Differential Equations", NeurIPS 2019.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn

from .._validation import BayesdynTypeError, BayesdynValueError
from ..solvers import UnionGrid, gather_on_grid, make_series_grid
from .base import AbstractSDE
from .latent_sde import (
    OBS_SITE,
    PATH_SITE,
    Z0_SITE,
    ConfigCheckpoint,
    LatentSDE,
    LatentSDEConfig,
    ModelOptions,
)
from .nets import MLP, GaussianDecoder
from .point_process import TemporalPointProcess
from .sde_path import SDEPath

__all__ = [
    "EVENTS_SITE",
    "JUMPS_SITE",
    "EventGrid",
    "LatentJumpSDE",
    "LatentJumpSDEConfig",
]

#: Site name of the observed events, batch ``[B, 1]``, value ``[B, 1, N, 2]`` (time, mark).
EVENTS_SITE = "events"
#: Site name of the state jumps at the observed events (deterministic), ``[B, 1, N, L]``.
JUMPS_SITE = "jumps"


#: Intensity link -> interpolation of the intensity on a solver step (see the module docstring).
_LINKS = {"softplus": "linear", "exp": "log_linear"}
#: Solver grid layouts (``LatentJumpSDEConfig.grid``).
GRIDS = ("union", "per_series")


@dataclass
class LatentJumpSDEConfig(ModelOptions):
    """Hyperparameters of :class:`LatentJumpSDE` (plain values, so they save as JSON).

    Attributes:
        obs_dim: continuous observed channels ``D`` (0: events only).
        num_marks: event mark categories ``K`` (1: unmarked).
        latent_dim, hidden_dim, context_dim, encoder_hidden_dim, num_layers, activation:
            as in :class:`~bayesdyn.models.LatentSDEConfig`.
        jump_hidden_dim: width of the jump network ``J(z, onehot(m))``.
        init_intensity: initial intensity per mark (the intensity head's bias).
        min_intensity: floor added to the linked intensity (keeps ``log lambda`` finite).
        intensity_link: ``"softplus"`` (default): ``lambda = softplus(W z + c)``, linear on each
            solver step. ``"exp"``: ``lambda = exp(min(W z + c, max_log_intensity))``,
            log-linear on each step: it represents intensities that grow or decay
            exponentially between events (self-correcting processes, ``lambda = exp(mu t -
            beta N(t))``) exactly with a constant drift and constant jumps.
        zero_drift_init: start the prior and posterior drift networks' output layers at zero,
            so that (with the jump network, which always starts at zero) training starts from a
            homogeneous Poisson process at ``init_intensity``; with the exp link this keeps a
            random initial drift from making the initial intensity explode.
        z0_scale_init: initial scale of ``p(z0)`` (None: the foundation's, ``softplus(0)``).
            With ``guide="prior"`` the initial state is pure noise for event sequences that
            start from an empty history; a small value (e.g. 0.01) starts from a nearly
            deterministic ``z0``, as in Jia & Benson's maximum-likelihood training.
        max_log_intensity: cap on ``W z + c`` under the exp link (``exp(30) ~ 1e13``), so a
            stray state cannot overflow the intensity.
        stable_drift, diffusion_min, diffusion_max, diffusion_state_dependent, time_input:
            as in ``LatentSDEConfig``.
        obs_scale_init: initial scale of the Gaussian decoder (``obs_dim > 0``).
        dt: largest solver step; t0: time of the initial state (default: the batch's first).
        grid: ``"union"`` (default): all series of a batch share the sorted union of their
            event and observation times (refined to ``dt``), so a batch of ``B`` sequences of
            ``n`` events takes ``~B n`` solver steps. ``"per_series"``: each series is solved
            on its own times (:func:`bayesdyn.solvers.make_series_grid`), ``~n`` steps of
            batched work for the whole batch (a large speed-up for event data, where every
            event is a grid point); each series' initial state then sits at its own first time
            (or ``t0``). Needs ``guide="prior"`` and ``time_input=False`` (the encoder guide's
            features and time inputs live on the union grid).
        guide: ``"encoder"`` (default): the amortised posterior SDE whose encoder reads the
            observations and events. ``"prior"``: the guide is the prior itself (``q(z0) =
            p(z0)``, the prior jump SDE's path), so the ELBO is ``E_prior[log p(events, obs |
            z)]`` and the KL terms vanish. For event data whose intensity depends only on the
            past (point processes) with a small diffusion this is maximum likelihood of the
            neural jump SDE as in Jia & Benson (2019); it needs no encoder, which it skips.
    """

    obs_dim: int = 0
    num_marks: int = 1
    latent_dim: int = 4
    hidden_dim: int = 32
    context_dim: int = 8
    encoder_hidden_dim: int | None = None
    num_layers: int = 2
    activation: str = "softplus"
    jump_hidden_dim: int = 32
    init_intensity: float = 1.0
    min_intensity: float = 1e-6
    intensity_link: str = "softplus"
    max_log_intensity: float = 30.0
    zero_drift_init: bool = False
    z0_scale_init: float | None = None
    stable_drift: bool = True
    diffusion_min: float = 1e-3
    diffusion_max: float = 0.5
    diffusion_state_dependent: bool = False
    time_input: bool = False
    obs_scale_init: float = 0.1
    dt: float = 0.5
    t0: float | None = None
    grid: str = "union"
    guide: str = "encoder"

    def __post_init__(self):
        if self.guide not in ("encoder", "prior"):
            raise BayesdynValueError(f"guide must be 'encoder' or 'prior'; got {self.guide!r}")
        if self.grid not in GRIDS:
            raise BayesdynValueError(f"grid must be one of {list(GRIDS)}; got {self.grid!r}")
        if self.grid == "per_series" and (self.guide != "prior" or self.time_input):
            raise BayesdynValueError(
                "grid='per_series' needs guide='prior' and time_input=False (the encoder "
                f"guide and time inputs use the union grid); got guide={self.guide!r}, "
                f"time_input={self.time_input!r}"
            )
        if self.z0_scale_init is not None and not (
            isinstance(self.z0_scale_init, (int, float)) and 1e-3 <= self.z0_scale_init < 1e3
        ):
            raise BayesdynValueError(
                f"z0_scale_init must be a number in [1e-3, 1e3) (or None); got "
                f"{self.z0_scale_init!r}"
            )
        if self.intensity_link not in _LINKS:
            raise BayesdynValueError(
                f"intensity_link must be one of {sorted(_LINKS)}; got {self.intensity_link!r}"
            )
        if not (math.log(max(self.init_intensity, 1e-300)) < self.max_log_intensity):
            raise BayesdynValueError(
                f"max_log_intensity must exceed log(init_intensity)="
                f"{math.log(self.init_intensity):.3g}; got {self.max_log_intensity}"
            )
        for name, lo in (("obs_dim", 0), ("num_marks", 1), ("jump_hidden_dim", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise BayesdynValueError(f"{name} must be an integer >= {lo}; got {v!r}")
        if not (self.init_intensity > self.min_intensity >= 0):
            raise BayesdynValueError(
                f"need init_intensity > min_intensity >= 0; got {self.init_intensity} and "
                f"{self.min_intensity}"
            )

    def latent_sde_config(self) -> LatentSDEConfig:
        """The :class:`LatentSDEConfig` of the shared core (channels = ``D + K`` merged rows)."""
        return LatentSDEConfig(
            obs_dim=self.obs_dim + self.num_marks,
            latent_dim=self.latent_dim,
            hidden_dim=self.hidden_dim,
            context_dim=self.context_dim,
            encoder="gru",
            encoder_hidden_dim=self.encoder_hidden_dim,
            stable_drift=self.stable_drift,
            diffusion_min=self.diffusion_min,
            diffusion_max=self.diffusion_max,
            diffusion_state_dependent=self.diffusion_state_dependent,
            time_input=self.time_input,
            next_obs_features=True,
            bridge=False,
            num_layers=self.num_layers,
            activation=self.activation,
            dt=self.dt,
            t0=self.t0,
        )


class EventGrid:
    """A batch prepared for :class:`LatentJumpSDE`: merged rows, solver grid and event maps.

    Attributes:
        merged: an ``IrregularBatch``-like tuple of the merged observation and event rows
            (channels: the ``D`` values, then the ``K`` one-hot marks).
        grid: the :class:`~bayesdyn.solvers.UnionGrid` of the merged rows (and query times):
            ``grid.grid`` is ``[U]`` (union) or ``[B, U]`` (per series).
        path_grid: the grid as the path and point-process sites take it: ``[U]`` or
            ``[B, 1, U]`` (the singleton is the time-plate dim).
        at: whether a (real) event sits at each grid point, ``[B, 1, U]``.
        onehot: one-hot mark at each grid point (zeros elsewhere), ``[B, 1, U, K]``.
        event_index: grid index of each event, ``[B, N]`` (padding: the window end's).
        obs_index: grid index of each observation row, ``[B, T]``.
    """

    def __init__(self, merged, grid: UnionGrid, at, onehot, event_index, obs_index):
        self.merged = merged
        self.grid = grid
        self.at = at
        self.onehot = onehot
        self.event_index = event_index
        self.obs_index = obs_index
        g = grid.grid
        self.path_grid = g if g.dim() == 1 else g.unsqueeze(-2)


class _JumpingSDE(AbstractSDE):
    """Wraps a grid-bound SDE so that its state jumps at given grid points.

    The step leaving grid point ``k`` with an event starts from ``z+ = z + J(z, m_k)``: drift
    and diffusion are evaluated at ``z+`` and the jump enters as the impulsive drift
    ``(z+ - z) / dt_k``, so ``z_{k+1} = z+ + f(z+) dt_k + g(z+) sqrt(dt_k) eps`` exactly.

    Shapes: ``grid [U]`` or per series ``[B, 1, U]``, ``at [B, 1, U]``, ``onehot [B, 1, U, K]``,
    states ``[..., B, 1, L]``.
    """

    def __init__(self, inner: AbstractSDE, jump, grid: Tensor, at: Tensor, onehot: Tensor):
        super().__init__(inner.state_dim)
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "_jump", jump)
        self.grid = grid
        self.at = at
        self.onehot = onehot
        dts = grid[..., 1:] - grid[..., :-1]
        # Step sizes: Python floats for a shared grid, [*gbatch, 1] tensors per series.
        self._dt_list = dts.tolist() if grid.dim() == 1 else dts.unsqueeze(-1).unbind(-2)
        self._dts = dts.unsqueeze(-1)
        self._any = at.reshape(-1, at.shape[-1]).any(0).tolist()
        self._at_steps = at.unsqueeze(-1).to(onehot.dtype).unbind(-2)  # U x [B, 1, 1]
        self._mark_steps = onehot.unbind(-2)  # U x [B, 1, K]

    def plus(self, z: Tensor, at: Tensor, onehot: Tensor) -> Tensor:
        """Post-jump state. Shapes: ``z [..., L]``, ``at [..., 1]``, ``onehot [..., K]``."""
        return z + self._jump(z, onehot) * at

    def step(self, k: int, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        if not self._any[k]:
            return self.inner.step(k, t, z)
        zp = self.plus(z, self._at_steps[k], self._mark_steps[k])
        f, g = self.inner.step(k, t, zp)
        return f + (zp - z) / self._dt_list[k], g

    def _plus_on_path(self, z: Tensor) -> Tensor:
        at = self.at[..., :-1].unsqueeze(-1).to(z.dtype)
        return self.plus(z, at, self.onehot[..., :-1, :])

    def on_path(self, ts: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        zp = self._plus_on_path(z)
        f, g = self.inner.on_path(ts, zp)
        return f + (zp - z) / self._dts, g

    def drift_on_path(self, ts: Tensor, z: Tensor) -> Tensor:
        """Drift alone at all left end points. Shapes: ``z [..., U-1, L]`` -> same."""
        zp = self._plus_on_path(z)
        return self.inner.drift_on_path(ts, zp) + (zp - z) / self._dts

    def shares_diffusion_with(self, other: AbstractSDE) -> bool:
        """True when both wrap SDEs that share one diffusion network."""
        shares = getattr(self.inner, "shares_diffusion_with", None)
        return isinstance(other, _JumpingSDE) and shares is not None and shares(other.inner)

    def drift_and_diffusion(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.grid.dim() > 1:
            raise BayesdynValueError(
                "a jump SDE on per-series grids has no single grid step for an arbitrary time; "
                "use the union grid (LatentJumpSDEConfig.grid='union') for torchsde solvers"
            )
        k = int(torch.searchsorted(self.grid, t.reshape(()), right=True)) - 1
        return self.step(min(max(k, 0), self.grid.numel() - 2), t, z)


class JumpNet(nn.Module):
    """State jump ``J(z, onehot(m)) = MLP([z, onehot(m)])`` at an event.

    The output layer starts at zero (no jumps), so training starts from the plain latent SDE.

    Shapes: ``z [..., L]``, ``onehot [..., K]`` -> ``[..., L]``.
    """

    def __init__(self, state_dim: int, num_marks: int, hidden_dim: int):
        super().__init__()
        self.net = MLP(state_dim + num_marks, hidden_dim, state_dim, num_layers=1)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: Tensor, onehot: Tensor) -> Tensor:
        """See class docstring."""
        onehot = onehot.to(z.dtype).expand(*z.shape[:-1], onehot.shape[-1])
        return self.net(torch.cat([z, onehot], -1))


class LatentJumpSDE(ConfigCheckpoint, PyroModule):
    """Neural jump SDE (Jia & Benson 2019) as a Pyro model and guide; see the module docstring.

    Train it like a :class:`~bayesdyn.models.LatentSDE` (``PathELBO``, ``bayesdyn.fit`` with
    the whole batch, or ``pyro.infer.SVI``) on a :class:`~bayesdyn.data.JumpBatch`
    (``IrregularTimeSeries.to_jump_batch()``); forecast events with
    :func:`bayesdyn.inference.forecast_events`.

    Args:
        obs_dim: continuous channels ``D`` (0 for events only), or pass ``config``.
        **options: any :class:`LatentJumpSDEConfig` field.

    Shapes:
        - ``batch``: ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]``,
          ``events.times [B, N]``, ``events.marks [B, N]``, ``events.mask [B, N]``
        - site ``"z"``: ``[*sample, B, 1, U, L]``; site ``"events"``: ``[B, 1, N, 2]``
        - :meth:`intensity`: ``z [..., L]`` -> ``[..., K]``
    """

    max_plate_nesting = 2
    checkpoint_format = "bayesdyn.LatentJumpSDE/1"
    config_class = LatentJumpSDEConfig

    def __init__(
        self, obs_dim: int | None = None, *, config: LatentJumpSDEConfig | None = None, **options
    ):
        super().__init__(name="latent_jump_sde")
        if config is None:
            config = LatentJumpSDEConfig.from_dict(
                {**({} if obs_dim is None else {"obs_dim": obs_dim}), **options}
            )
        elif options or obs_dim is not None:
            raise BayesdynValueError("pass either config or obs_dim/options, not both")
        self.config = c = config
        # The shared latent-SDE core: prior/posterior drifts, diffusion, GRU encoder over the
        # merged rows, q(z0) and the grid. Its decoder is unused (this model scores events and
        # values with its own heads), so it is replaced by a parameter-free placeholder.
        self.core = LatentSDE(config=c.latent_sde_config())
        self.core.decoder = nn.Identity()
        L, K = c.latent_dim, c.num_marks
        self.intensity_head = nn.Linear(L, K)
        nn.init.normal_(self.intensity_head.weight, std=0.1)
        lam0 = c.init_intensity - c.min_intensity
        bias = math.log(math.expm1(lam0)) if c.intensity_link == "softplus" else math.log(lam0)
        nn.init.constant_(self.intensity_head.bias, bias)
        self.jump_net = JumpNet(L, K, c.jump_hidden_dim)
        if c.z0_scale_init is not None:
            self.core.z0_prior.set_scale(c.z0_scale_init)
        if c.zero_drift_init:
            for drift in (self.core.prior_drift, self.core.post_drift):
                nn.init.zeros_(drift.rest[-1].weight)
                nn.init.zeros_(drift.rest[-1].bias)
        self.decoder = (
            GaussianDecoder(L, c.obs_dim, 0, init_scale=c.obs_scale_init) if c.obs_dim else None
        )

    # ------------------------------------------------------------------ pieces
    @property
    def interpolation(self) -> str:
        """How the intensity runs between solver grid points: ``"linear"`` or ``"log_linear"``."""
        return _LINKS[self.config.intensity_link]

    def intensity(self, z: Tensor) -> Tensor:
        """Per-mark intensity ``link(W z + c) + min_intensity`` (``intensity_link``).

        Shapes: ``[..., L] -> [..., K]``.
        """
        x = self.intensity_head(z)
        if self.config.intensity_link == "exp":
            lam = torch.exp(x.clamp(max=self.config.max_log_intensity))
        else:
            lam = F.softplus(x)
        return lam + self.config.min_intensity

    def jump(self, z: Tensor, onehot: Tensor) -> Tensor:
        """State jump at an event. Shapes: ``z [..., L]``, ``onehot [..., K]`` -> ``[..., L]``."""
        return self.jump_net(z, onehot)

    def drift_diffusion(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Prior drift and diffusion at arbitrary times (forecasting). Shapes: ``t [R]``, ``z [R, L]``."""
        x = t.unsqueeze(-1).to(z.dtype) if self.config.time_input else None
        return self.core.prior_drift(z, x), self.core.diffusion(z)

    def check_batch(self, batch) -> None:
        """Check that ``batch`` is a :class:`~bayesdyn.data.JumpBatch` that fits this model."""
        for attr in ("times", "values", "mask", "lengths"):
            if not isinstance(getattr(batch, attr, None), Tensor):
                raise BayesdynTypeError(
                    "batch must be a JumpBatch (call IrregularTimeSeries.to_jump_batch()); got "
                    f"{type(batch).__name__} whose .{attr} is not a tensor"
                )
        ev = getattr(batch, "events", None)
        if ev is None:
            raise BayesdynValueError(
                "batch carries no events; build it with IrregularTimeSeries.to_jump_batch() "
                "(and pass that JumpBatch, not the series, to bayesdyn.fit)"
            )
        B = batch.times.shape[0]
        if ev.times.shape[0] != B:
            raise BayesdynValueError(f"events has {ev.times.shape[0]} series, the batch has {B}")
        if ev.num_marks > self.config.num_marks:
            raise BayesdynValueError(
                f"events has num_marks={ev.num_marks}, the model expects num_marks="
                f"{self.config.num_marks}"
            )
        if bool((ev.marks[ev.mask] >= self.config.num_marks).any()):
            raise BayesdynValueError(
                f"event marks must lie in [0, {self.config.num_marks}); got "
                f"{int(ev.marks[ev.mask].max())}"
            )
        D = self.config.obs_dim
        if D == 0:
            if bool(batch.mask.any()):
                raise BayesdynValueError(
                    "batch has observed values but the model has obs_dim=0 (events only); "
                    "set obs_dim to the number of channels"
                )
        elif batch.values.shape[-1] != D:
            raise BayesdynValueError(
                f"values has {batch.values.shape[-1]} channels, the model expects obs_dim={D}"
            )
        if getattr(batch, "covariates", None) is not None:
            raise BayesdynValueError("LatentJumpSDE does not take covariates yet")

    def _merge(self, batch):
        """Merged rows of observations and events, sorted by time per series.

        Shapes: ``values [B, T+N, D+K]`` (values then one-hot marks), ``mask`` likewise.
        """
        from ..data import IrregularBatch

        ev = batch.events
        B, T = batch.times.shape
        N = ev.times.shape[1]
        D, K = self.config.obs_dim, self.config.num_marks
        dtype = batch.times.dtype
        row_ok = torch.arange(T, device=batch.times.device) < batch.lengths.unsqueeze(-1)
        obs_vals = batch.values[..., :D] if D else batch.values.new_zeros(B, T, 0)
        obs_mask = batch.mask[..., :D] if D else batch.mask.new_zeros(B, T, 0)
        onehot = F.one_hot(ev.marks.clamp(0, K - 1), K).to(dtype) * ev.mask.unsqueeze(-1)
        vals = torch.cat(
            [
                torch.cat([obs_vals, obs_vals.new_zeros(B, T, K)], -1),
                torch.cat([onehot.new_zeros(B, N, D), onehot], -1),
            ],
            1,
        )
        mask = torch.cat(
            [
                torch.cat([obs_mask, obs_mask.new_zeros(B, T, K)], -1),
                torch.cat([ev.mask.new_zeros(B, N, D), onehot > 0], -1),
            ],
            1,
        )
        times = torch.cat([batch.times, ev.times.to(dtype)], 1)
        valid = torch.cat([row_ok, ev.mask], 1)
        key = torch.where(valid, times, torch.full_like(times, math.inf))
        order = torch.sort(key, dim=1, stable=True).indices
        times = torch.gather(times, 1, order)
        vals = torch.gather(vals, 1, order.unsqueeze(-1).expand_as(vals))
        mask = torch.gather(mask, 1, order.unsqueeze(-1).expand_as(mask))
        lengths = valid.sum(1)
        # Padding repeats the last valid time with nothing observed.
        pad = torch.arange(T + N, device=times.device) >= lengths.unsqueeze(-1)
        last = times.gather(1, (lengths - 1).unsqueeze(-1))
        times = torch.where(pad, last, times)
        mask = mask & ~pad.unsqueeze(-1)
        vals = vals * mask
        return IrregularBatch(times, vals, mask, lengths)

    def prepare(self, batch, query_times: Tensor | None = None) -> EventGrid:
        """Merge rows, build the solver grid (``config.grid``) and map the events onto it.

        See :class:`EventGrid`. Shapes: ``query_times [Q]`` (or ``[B, Q]``).
        """
        self.check_batch(batch)
        merged = self._merge(batch)
        if self.config.grid == "per_series":
            grid = make_series_grid(
                merged.times,
                query_times=query_times,
                dt=self.config.dt,
                t0=self.config.t0,
                rounding=self.core.config.step_rounding,
            )
        else:
            grid = self.core.make_grid(merged, query_times)
        ev = batch.events
        g = grid.grid
        B, U, K = ev.times.shape[0], g.shape[-1], self.config.num_marks
        eidx = torch.searchsorted(g, ev.times.to(g.dtype).contiguous())
        # Padding events write into a spare column U, dropped afterwards.
        at = torch.zeros(B, U + 1, dtype=torch.bool, device=g.device)
        at.scatter_(1, torch.where(ev.mask, eidx, torch.full_like(eidx, U)), True)
        at = at[:, :U]
        onehot = torch.zeros(B, U, K, dtype=g.dtype, device=g.device)
        src = F.one_hot(ev.marks.clamp(0, K - 1), K).to(g.dtype) * ev.mask.unsqueeze(-1)
        onehot.scatter_add_(1, eidx.unsqueeze(-1).expand(-1, -1, K), src)
        obs_index = torch.searchsorted(g, batch.times.to(g.dtype).contiguous())
        return EventGrid(merged, grid, at.unsqueeze(1), onehot.unsqueeze(1), eidx, obs_index)

    def _bound(self, prep: EventGrid, inner: AbstractSDE) -> _JumpingSDE:
        return _JumpingSDE(inner, self.jump_net, prep.path_grid, prep.at, prep.onehot)

    # ------------------------------------------------------------------ Pyro
    def model(self, batch, query_times: Tensor | None = None, kl_scale: float = 1.0) -> Tensor:
        """Generative model; see the module docstring. Returns the path ``[..., B, U, L]``."""
        pyro.module("latent_jump_sde", self)
        prep = self.prepare(batch, query_times)
        grid = prep.path_grid
        B = batch.times.shape[0]
        L = self.config.latent_dim
        sde = self._bound(prep, self.core.prior_sde(prep.merged, grid))
        ev = batch.events
        with pyro.plate("series", B, dim=-2):
            with poutine.scale(scale=kl_scale):
                z0 = pyro.sample(Z0_SITE, self.core.z0_prior_dist(B))
                z = pyro.sample(PATH_SITE, SDEPath(sde, z0, grid))  # [..., B, 1, U, L]
            at = prep.at.unsqueeze(-1).to(z.dtype)
            jumps = self.jump(z, prep.onehot) * at
            lam_left = self.intensity(z)  # [..., B, 1, U, K]
            lam_right = self.intensity(z + jumps)
            tpp = TemporalPointProcess(
                grid,
                start=lam_right[..., :-1, :],
                end=lam_left[..., 1:, :],
                window=ev.window.to(z.dtype).unsqueeze(1),
                interpolation=self.interpolation,
            )
            pyro.sample(EVENTS_SITE, tpp, obs=ev.to_value().to(z.dtype).unsqueeze(1))
            idx = prep.event_index.unsqueeze(1)  # [B, 1, N]
            ev_jumps = torch.gather(
                jumps, -2, idx.unsqueeze(-1).expand(*jumps.shape[:-2], idx.shape[-1], L)
            )
            pyro.deterministic(
                JUMPS_SITE, ev_jumps * ev.mask.unsqueeze(1).unsqueeze(-1), event_dim=2
            )
            path = z.squeeze(-3)
            if self.decoder is not None:
                latent = gather_on_grid(path, prep.obs_index)
                with pyro.plate("time", batch.times.shape[1], dim=-1):
                    pyro.sample(
                        OBS_SITE,
                        self.decoder(latent).mask(batch.mask).to_event(1),
                        obs=batch.values,
                    )
        return path

    def guide(self, batch, query_times: Tensor | None = None, kl_scale: float = 1.0) -> Tensor:
        """Amortised guide: ``q(z0)`` and the posterior SDE (encoder over observations and events).

        Returns the path ``[..., B, 1, U, L]``.
        """
        pyro.module("latent_jump_sde", self)
        prep = self.prepare(batch, query_times)
        grid = prep.path_grid
        B = batch.times.shape[0]
        if self.config.guide == "prior":
            return self._prior_guide(prep, B, kl_scale)
        context = self.core.encode(prep.merged)
        loc, scale = self.core.z0_posterior(context)
        sde = self._bound(prep, self.core.posterior_sde(prep.merged, grid, context))
        with pyro.plate("series", B, dim=-2):
            with poutine.scale(scale=kl_scale):
                z0 = pyro.sample(
                    Z0_SITE, dist.Normal(loc.unsqueeze(1), scale.unsqueeze(1)).to_event(1)
                )
                return pyro.sample(PATH_SITE, SDEPath(sde, z0, grid))

    def _prior_guide(self, prep: EventGrid, B: int, kl_scale: float) -> Tensor:
        """``guide="prior"``: sample ``z0`` and the path from the prior jump SDE itself."""
        grid = prep.path_grid
        sde = self._bound(prep, self.core.prior_sde(prep.merged, grid))
        with pyro.plate("series", B, dim=-2):
            with poutine.scale(scale=kl_scale):
                z0 = pyro.sample(Z0_SITE, self.core.z0_prior_dist(B))
                return pyro.sample(PATH_SITE, SDEPath(sde, z0, grid))
