r"""Continuous-time particle filtering of SDE models observed at irregular times.

:class:`ParticleFilter` propagates ``N`` particles per series between observations with the
Euler–Maruyama scheme on the solver grid (the same discretised model that
:class:`~bayesdyn.models.SDEPath` samples and scores), weights them by the observation likelihood,
and resamples (systematic) a series' particles when its effective sample size falls below
``ess_threshold * N``. All series and particles move together: particles are ``[N, B, L]``.

Proposals:

- ``"prior"`` (bootstrap): particles move with the prior SDE; the weight increment at an
  observation is the likelihood.
- ``"guide"``: particles move with a proposal SDE (for :class:`~bayesdyn.models.LatentSDE`, the
  learned posterior SDE of its guide), and every Euler step multiplies the weight by the ratio of
  the exact Euler transition densities, ``N(dz; f_p dt, g_p^2 dt) / N(dz; f_q dt, g_q^2 dt)``,
  and the initial state by ``p(z0) / q(z0)``. The weighted particles then target the same
  filtering distributions as the bootstrap filter.

Log-evidence: with unnormalised weights ``w`` since the last resampling,

.. math:: \log \hat Z = \sum_{\text{resampling epochs}} \log \tfrac1N \sum_n w_n,

which is an unbiased estimate of the marginal likelihood ``Z = p(y)`` of the Euler-discretised
model (its logarithm is biased low by about half its variance).

Differentiable evidence (training objective): :meth:`ParticleFilter.log_evidence` returns
``log Z-hat`` with gradients. Particles are reparameterised (``z' = z + f dt + g sqrt(dt) eps``),
so gradients flow along particle paths and through the weights; at resampling the ancestor
indices are drawn from detached weights and treated as constants (stop-gradient through
resampling). This is the estimator of variational SMC / FIVO / AESMC (Naesseth et al. 2018,
Maddison et al. 2017, Le et al. 2018): it drops the score-function term of the discrete
resampling step, which has high variance, and is therefore a biased but low-variance gradient
of ``E[log Z-hat]``, a lower bound of ``log Z``. When no resampling happens
(``ess_threshold=0``) it is exactly the reparameterised gradient of the IWAE bound with ``N``
particles. We chose it over the entropy-regularised optimal-transport resampling of Corenflos
et al. (2021) because that costs ``O(N^2)`` per resampling per series and needs a Sinkhorn solve
in the loop; stop-gradient resampling is ``O(N)`` and standard.

References:
    1. C. A. Naesseth, S. Linderman, R. Ranganath, D. Blei, "Variational sequential Monte Carlo",
       AISTATS 2018.
    2. C. J. Maddison et al., "Filtering variational objectives", NeurIPS 2017.
    3. T. A. Le et al., "Auto-encoding sequential Monte Carlo", ICLR 2018.
    4. A. Corenflos, J. Thornton, G. Deligiannidis, A. Doucet, "Differentiable particle filtering
       via entropy-regularized optimal transport", ICML 2021.
    5. A. Doucet, A. M. Johansen, "A tutorial on particle filtering and smoothing", 2009
       (systematic resampling, ESS-triggered resampling, unbiasedness of the evidence).
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from pyro.distributions import Distribution, Normal
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import (
    BayesdynTypeError,
    BayesdynValueError,
    SolverDiverged,
    check_positive,
)
from ..models.base import AbstractSDE
from ..models.filter_encoder import FilterEncoder
from ..models.jumps import _as_rate_fn, _as_size_fn
from ..models.latent_sde import LatentSDE
from ..solvers import euler_transition_log_prob, make_union_grid
from ._filter_grid import obs_on_grid

_LOG_2PI = math.log(2 * math.pi)
#: Numbers per block of pre-drawn Euler noise, and of particles whose filtering summaries are
#: buffered before they are computed together (see ``ParticleFilter._flush``).
_NOISE_BLOCK = 2**20
_RECORD_BLOCK = 2**20

__all__ = [
    "AbstractStateSpace",
    "FilterResult",
    "ParticleFilter",
    "SDEStateSpace",
    "systematic_resample",
]

#: ``step(k, t_k, z [N, B, L]) -> (f, g)`` on a grid fixed when the stepper was made.
Stepper = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]
#: ``jumps(k, t_k, z [N, B, L]) -> (rate [N, B], size loc [N, B, L], size scale [N, B, L])``.
JumpStepper = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


# ---------------------------------------------------------------------------------- models
class AbstractStateSpace(ABC):
    """A latent SDE with an initial law and an observation model, as a particle filter sees it.

    Subclasses give the prior dynamics, the likelihood and, optionally, a proposal. ``aux`` is
    whatever the proposal carries from one :meth:`FilterState.update` to the next (an encoder
    state, for instance); it must have a size that does not grow with the history.

    Shapes: particles ``z [N, B, L]``; a data segment is an ``IrregularBatch`` with
    ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``.
    """

    state_dim: int
    obs_dim: int
    dt: float
    t0: float | None = None
    has_proposal: bool = False
    dtype: torch.dtype = torch.float64

    @abstractmethod
    def initial(self, num_series: int) -> Distribution:
        """Initial law at ``t0``: batch shape ``[B]``, event shape ``[L]``."""

    @abstractmethod
    def prior_stepper(self, segment, grid: Tensor) -> Stepper:
        """Prior drift and diffusion on ``grid [U]`` for a data segment."""

    @abstractmethod
    def likelihood(self, z: Tensor) -> Distribution:
        """Observation law. Shapes: ``z [..., B, L]`` -> batch shape ``[..., B, D]``."""

    def jump_stepper(self, segment, grid: Tensor) -> JumpStepper | None:
        """Jump intensity and size law on ``grid``, or None for a pure diffusion (default)."""
        return None

    def init_aux(self, num_series: int) -> Any:
        """The proposal's carried state before any data (default: none)."""
        return None

    def proposal(self, segment, grid: Tensor, aux: Any, fresh: bool):
        """``(stepper, initial law or None, new aux)`` of the proposal on ``grid``.

        The initial law (batch ``[B]``, event ``[L]``) is used only while ``fresh`` (before
        the first observation). Raise if the proposal cannot continue from ``aux``.
        """
        raise BayesdynValueError(
            f"{type(self).__name__} has no proposal; use proposal='prior' or give one"
        )

    def check_segment(self, segment) -> None:
        """Check a data segment against the model (channels, covariates)."""
        D = segment.values.shape[-1]
        if D != self.obs_dim:
            raise BayesdynValueError(f"values has {D} channels, the model expects {self.obs_dim}")


def _sde_stepper(sde: AbstractSDE) -> Stepper:
    return sde.step


class SDEStateSpace(AbstractStateSpace):
    """A user SDE with an initial law and a likelihood, for :class:`ParticleFilter`.

    Args:
        sde: the prior :class:`~bayesdyn.models.AbstractSDE` (e.g. a ``FunctionalSDE``), called
            with particles ``z [N, B, L]``.
        initial: law of ``z(t0)``: a torch/Pyro distribution with event shape ``[L]`` and batch
            shape ``[]`` or ``[B]``.
        likelihood: ``z [..., B, L] -> Distribution`` with batch shape ``[..., B, D]`` (e.g.
            ``lambda z: Normal(z @ H.T, r)``).
        dt: largest Euler step.
        t0: time of ``initial`` (default: the first data segment's earliest time).
        proposal: optional ``(segment, grid [U]) -> AbstractSDE`` returning the proposal SDE for
            a data segment (an ``IrregularBatch``) on the grid; it may look at the segment's
            observations (e.g. a guided, bridge-like drift).
        proposal_initial: optional ``segment -> Distribution`` (batch ``[B]``, event ``[L]``),
            the proposal for ``z(t0)`` (default: ``initial``).
        jump_rate, jump_size: optional compound-Poisson jumps, as in
            :class:`~bayesdyn.models.JumpDiffusionPath`: a positive rate (number, tensor or
            ``(t, z) -> [..., 1]``) and a Gaussian size law (``(loc, scale)`` or
            ``(t, z) -> (loc, scale)``). Particles then move with the "no jump or one jump per
            step" scheme, and the guided weights use its two-Gaussian mixture density.
    """

    def __init__(
        self,
        sde: AbstractSDE,
        initial: Distribution,
        likelihood: Callable[[Tensor], Distribution],
        *,
        dt: float,
        t0: float | None = None,
        proposal: Callable[[Any, Tensor], AbstractSDE] | None = None,
        proposal_initial: Callable[[Any], Distribution] | None = None,
        jump_rate=None,
        jump_size=None,
    ):
        if not isinstance(sde, AbstractSDE):
            raise BayesdynTypeError(
                "sde must be a bayesdyn.models.AbstractSDE (wrap plain functions in "
                f"FunctionalSDE); got {type(sde).__name__}"
            )
        if not isinstance(initial, torch.distributions.Distribution):
            raise BayesdynTypeError(
                f"initial must be a torch or Pyro Distribution; got {type(initial).__name__}"
            )
        if tuple(initial.event_shape) != (sde.state_dim,):
            raise BayesdynValueError(
                f"initial must have event shape [{sde.state_dim}] (the sde's state_dim); got "
                f"{list(initial.event_shape)}"
            )
        if not callable(likelihood):
            raise BayesdynTypeError(f"likelihood must be callable; got {type(likelihood).__name__}")
        for name, fn in (("proposal", proposal), ("proposal_initial", proposal_initial)):
            if fn is not None and not callable(fn):
                raise BayesdynTypeError(f"{name} must be callable; got {type(fn).__name__}")
        self.sde = sde
        self._initial = initial
        self._likelihood = likelihood
        self.dt = check_positive("dt", dt)
        self.t0 = None if t0 is None else float(t0)
        self._proposal = proposal
        self._proposal_initial = proposal_initial
        if (jump_rate is None) != (jump_size is None):
            raise BayesdynValueError("jump_rate and jump_size must be given together")
        self._jumps = None
        if jump_rate is not None:
            self._jumps = (_as_rate_fn(jump_rate)[0], _as_size_fn(jump_size))
        self.has_proposal = proposal is not None
        self.state_dim = sde.state_dim
        probe = initial.sample()
        self.dtype = probe.dtype if probe.is_floating_point() else torch.get_default_dtype()
        d = likelihood(probe.reshape(-1, sde.state_dim)[:1])
        if not isinstance(d, torch.distributions.Distribution) or len(d.batch_shape) < 1:
            raise BayesdynTypeError(
                "likelihood(z) must return a Distribution with batch shape [..., D]; got "
                f"{type(d).__name__}"
            )
        self.obs_dim = int(d.batch_shape[-1])

    def _batched(self, d: Distribution, B: int, name: str) -> Distribution:
        if d.batch_shape == torch.Size([]):
            return d.expand(torch.Size([B]))
        if d.batch_shape != torch.Size([B]):
            raise BayesdynValueError(
                f"{name} must have batch shape [] or [{B}]; got {list(d.batch_shape)}"
            )
        return d

    def initial(self, num_series: int) -> Distribution:
        """See :class:`AbstractStateSpace`."""
        return self._batched(self._initial, num_series, "initial")

    def prior_stepper(self, segment, grid: Tensor) -> Stepper:
        """See :class:`AbstractStateSpace`."""
        return _sde_stepper(self.sde)

    def jump_stepper(self, segment, grid: Tensor) -> JumpStepper | None:
        """See :class:`AbstractStateSpace`."""
        if self._jumps is None:
            return None
        rate_fn, size_fn = self._jumps

        def step(k: int, t: Tensor, z: Tensor):
            lam = rate_fn(t, z)
            if lam.shape[-1:] != (1,):
                raise BayesdynValueError(
                    f"jump_rate(t, z) must return shape [..., 1]; got {tuple(lam.shape)}"
                )
            loc, scale = size_fn(t, z)
            return lam.squeeze(-1), loc, scale

        return step

    def likelihood(self, z: Tensor) -> Distribution:
        """See :class:`AbstractStateSpace`."""
        return self._likelihood(z)

    def proposal(self, segment, grid: Tensor, aux: Any, fresh: bool):
        """See :class:`AbstractStateSpace`."""
        if self._proposal is None:
            return super().proposal(segment, grid, aux, fresh)
        sde = self._proposal(segment, grid)
        if not isinstance(sde, AbstractSDE):
            raise BayesdynTypeError(
                f"proposal(segment, grid) must return an AbstractSDE; got {type(sde).__name__}"
            )
        init = None
        if fresh:
            B = segment.times.shape[0]
            init = (
                self.initial(B)
                if self._proposal_initial is None
                else self._batched(self._proposal_initial(segment), B, "proposal_initial")
            )
        return _sde_stepper(sde), init, aux


class _LatentSDEStateSpace(AbstractStateSpace):
    """A :class:`~bayesdyn.models.LatentSDE` seen by the particle filter.

    Its bound SDEs keep the time-plate singleton, so particles ``[N, B, L]`` are stepped as
    ``[N, B, 1, L]``. The proposal is the guide's posterior SDE; with ``encoder="filter"`` the
    encoder state is carried between updates (streaming), other encoders see one segment only.
    """

    has_proposal = True

    def __init__(self, model: LatentSDE):
        self.model = model
        c = model.config
        self.state_dim = c.latent_dim
        self.obs_dim = c.obs_dim
        self.dt = float(c.dt)
        self.t0 = c.t0
        self.dtype = next(model.parameters()).dtype

    def check_segment(self, segment) -> None:
        self.model.check_batch(segment)

    def initial(self, num_series: int) -> Distribution:
        p = self.model.z0_prior
        return Normal(p.loc, p.scale()).to_event(1).expand(torch.Size([num_series]))

    @staticmethod
    def _stepper(sde: AbstractSDE) -> Stepper:
        def step(k: int, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
            f, g = sde.step(k, t, z.unsqueeze(-2))
            return f.squeeze(-2), g.squeeze(-2)

        return step

    def prior_stepper(self, segment, grid: Tensor) -> Stepper:
        return self._stepper(self.model.prior_sde(segment, grid))

    def likelihood(self, z: Tensor) -> Distribution:
        return self.model.decoder(z)

    def init_aux(self, num_series: int) -> Any:
        return None

    def proposal(self, segment, grid: Tensor, aux: Any, fresh: bool):
        m = self.model
        enc = m.encoder
        if isinstance(enc, FilterEncoder):
            h, last = (enc.initial_state(segment.times.shape[0]), None) if aux is None else aux
            context, h, last = enc.forward_from(
                h, last, segment.times, segment.values, segment.mask, segment.lengths
            )
            aux = (h, last)
        else:
            if not fresh:
                raise BayesdynValueError(
                    f"proposal='guide' can continue a filter state only with a causal encoder "
                    f"(LatentSDE(encoder='filter')); this model's encoder is "
                    f"{m.config.encoder!r}, which needs the whole series at once"
                )
            context = m.encode(segment)
        init = None
        if fresh:
            q0 = m.qz0_net(context[:, 0])
            L = self.state_dim
            init = Normal(q0[..., :L], torch.nn.functional.softplus(q0[..., L:]) + 1e-4).to_event(1)
        return self._stepper(m.posterior_sde(segment, grid, context)), init, aux


def as_state_space(model) -> AbstractStateSpace:
    """Wrap a :class:`~bayesdyn.models.LatentSDE`; pass an :class:`AbstractStateSpace` through."""
    if isinstance(model, AbstractStateSpace):
        return model
    if isinstance(model, LatentSDE):
        return _LatentSDEStateSpace(model)
    raise BayesdynTypeError(
        "model must be a LatentSDE or an AbstractStateSpace (e.g. SDEStateSpace(sde, initial, "
        f"likelihood, dt=...), or LinearGaussianSDE.state_space(dt)); got {type(model).__name__}"
    )


# ---------------------------------------------------------------------------------- kernels
def _jump_mixture_log_prob(
    dz: Tensor, f: Tensor, g: Tensor, h: Tensor, lam: Tensor, loc: Tensor, scale: Tensor
) -> Tensor:
    """Log-density of one "no jump or one jump" Euler step (see JumpDiffusionPath).

    ``e^{-lam h} N(dz; f h, g^2 h) + (1 - e^{-lam h}) N(dz; f h + loc, g^2 h + scale^2)``, one
    jump indicator for all latent dimensions.

    Shapes: ``dz``, ``f``, ``g``, ``loc``, ``scale`` ``[N, B, L]``; ``lam [N, B]``; ``h`` scalar
    -> ``[N, B]``.
    """
    var0 = g.square() * h
    var1 = var0 + scale.square()
    r0 = dz - f * h
    lp0 = (-0.5 * (r0.square() / var0 + var0.log() + _LOG_2PI)).sum(-1)
    lp1 = (-0.5 * ((r0 - loc).square() / var1 + var1.log() + _LOG_2PI)).sum(-1)
    return torch.logaddexp(-lam * h + lp0, torch.log(-torch.expm1(-lam * h)) + lp1)


def systematic_resample(weights: Tensor, uniforms: Tensor | None = None) -> Tensor:
    """Systematic resampling of each column of normalised weights.

    Ancestor ``n`` of series ``b`` is the index ``i`` with ``C_{i-1} <= (u_b + n) / N < C_i``
    (``C`` the cumulative weights, one uniform ``u_b`` per series), so particle ``i`` is copied
    ``floor(N W_i)`` or ``ceil(N W_i)`` times.

    Shapes: ``weights [N, B]`` (columns sum to 1), ``uniforms [B]`` -> ancestors ``[N, B]`` long.
    """
    N, B = weights.shape
    if uniforms is None:
        uniforms = torch.rand(B, dtype=weights.dtype, device=weights.device)
    cdf = weights.detach().T.cumsum(-1)  # [B, N], contiguous
    cdf[:, -1] = 1.0  # guard against round-off below 1
    pos = (
        torch.arange(N, dtype=weights.dtype, device=weights.device) + uniforms.unsqueeze(-1)
    ).div_(N)
    return torch.searchsorted(cdf, pos, right=True).clamp_(max=N - 1).T


def _weighted_quantiles(z: Tensor, w: Tensor, qs: Tensor) -> Tensor:
    """Quantiles of the weighted particle approximation (inverse CDF, per series and dim).

    Shapes: ``z [N, B, L]``, ``w [N, B]`` normalised, ``qs [Q]`` -> ``[Q, B, L]``.
    """
    # Particles on the last, contiguous dimension: sorting and cumulating along it is faster.
    zs, order = z.permute(1, 2, 0).contiguous().sort(-1)  # [B, L, N]
    cdf = torch.gather(w.T.unsqueeze(1).expand_as(zs), -1, order).cumsum(-1)
    q = qs.expand(*cdf.shape[:2], -1).contiguous()
    idx = torch.searchsorted(cdf, q).clamp_(max=z.shape[0] - 1)  # [B, L, Q]
    return torch.gather(zs, -1, idx).permute(2, 0, 1)


# ---------------------------------------------------------------------------------- results
@dataclass
class FilterResult:
    """What a particle filter reports at the observation rows of the data it processed.

    Attributes:
        times: the rows' times.
        means, variances: weighted mean and variance of the latent filtering distribution
            ``p(z(t_i) | y_{<=i})``.
        quantiles: its weighted quantiles at ``quantile_levels``.
        obs_means: filtering mean in observation space, ``E[E[y | z(t_i)] | y_{<=i}]``.
        ess: effective sample size ``1 / sum W^2`` after weighting, before resampling.
        log_evidence: ``log Z-hat`` of the whole run (for a streaming state: since its creation);
            differentiable when produced by :meth:`ParticleFilter.log_evidence`.
        log_evidence_trace: running ``log Z-hat`` after each row.
        num_resamples: resampling events per series.
        num_particles: ``N``.

    Shapes: ``times [B, T]``, ``means``/``variances [B, T, L]``, ``quantiles [Q, B, T, L]``,
    ``obs_means [B, T, D]``, ``ess [B, T]``, ``log_evidence [B]``,
    ``log_evidence_trace [B, T]``, ``num_resamples [B]``. Padding rows repeat the last valid row.
    """

    times: Tensor
    means: Tensor
    variances: Tensor
    quantiles: Tensor
    quantile_levels: tuple[float, ...]
    obs_means: Tensor
    ess: Tensor
    log_evidence: Tensor
    log_evidence_trace: Tensor
    num_resamples: Tensor
    num_particles: int

    def plot(self, series: Sequence[int] | None = None, *, max_series: int = 4):
        """Filtering band (outer quantiles), median or mean per latent dimension, and the ESS.

        Returns a matplotlib ``Figure`` with one row per series: the latent filtering
        distribution on the left, the ESS trace (with ``N``) on the right.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        B = self.means.shape[0]
        series = list(range(min(B, max_series))) if series is None else list(series)
        for b in series:
            if not 0 <= b < B:
                raise BayesdynValueError(f"series index {b} out of range for {B} series")
        fig, axes = plt.subplots(len(series), 2, figsize=(9, 2.4 * len(series)), squeeze=False)
        t = self.times.detach().cpu()
        lo, hi = self.quantiles[0].detach().cpu(), self.quantiles[-1].detach().cpu()
        mean = self.means.detach().cpu()
        for r, b in enumerate(series):
            ax, ax_ess = axes[r]
            for d in range(mean.shape[-1]):
                ax.fill_between(t[b], lo[b, :, d], hi[b, :, d], alpha=0.25, color=f"C{d}")
                ax.plot(t[b], mean[b, :, d], color=f"C{d}", lw=1.2, label=f"z{d} mean")
            levels = f"{self.quantile_levels[0]:g}-{self.quantile_levels[-1]:g}"
            ax.set_title(f"series {b}: filtering distribution ({levels} band)", fontsize=9)
            ax_ess.plot(t[b], self.ess[b].detach().cpu(), "k.-", lw=0.8)
            ax_ess.axhline(self.num_particles, color="grey", ls="--", lw=0.8)
            ax_ess.set_ylim(0, self.num_particles * 1.05)
            ax_ess.set_title(f"series {b}: ESS of {self.num_particles} particles", fontsize=9)
        axes[0][0].legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig


class _Carry(NamedTuple):
    """The particle system between updates (sizes independent of the history)."""

    z: Tensor | None  # [N, B, L]
    logw: Tensor  # [N, B] unnormalised log weights since the last resampling
    log_z: Tensor  # [B] log-evidence accumulated at past resampling events
    time: float | None  # time every series is filtered up to
    aux: Any  # the proposal's carried state
    last_obs: Tensor  # [B] time of each series' last row (nan before any)
    num_resamples: Tensor  # [B]
    fresh: bool  # no data seen yet: z(t0) not yet drawn from the proposal


# ---------------------------------------------------------------------------------- filter
class ParticleFilter:
    """Continuous-time particle filter (see the module docstring for the algorithm).

    Args:
        model: a :class:`~bayesdyn.models.LatentSDE` or an :class:`AbstractStateSpace` such as
            :class:`SDEStateSpace` (user SDEs) or ``LinearGaussianSDE.state_space(dt)``.
        num_particles: ``N`` per series.
        proposal: ``"prior"`` (bootstrap) or ``"guide"`` (the model's proposal SDE with exact
            Euler importance weights).
        ess_threshold: resample a series when its ESS falls below ``ess_threshold * N``
            (0 never resamples, 1 resamples at every observation).
        quantiles: levels of the reported filtering quantiles.

    Example::

        pf = ParticleFilter(model, num_particles=1000, proposal="guide")
        res = pf.run(series)                 # FilterResult: means, quantiles, ESS, log Z-hat
        loss = -pf.log_evidence(batch).sum() # differentiable VSMC / IWAE objective
        state = pf.init_state(num_series=B)  # streaming: state.update(...), state.predict(...)

    Shapes: data ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``; particles
    ``[N, B, L]``.
    """

    def __init__(
        self,
        model,
        num_particles: int,
        proposal: Literal["prior", "guide"] = "prior",
        *,
        ess_threshold: float = 0.5,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    ):
        self.model = model
        self.space = as_state_space(model)
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise BayesdynTypeError(
                f"num_particles must be an integer; got {type(num_particles).__name__}"
            )
        if num_particles < 1:
            raise BayesdynValueError(f"num_particles must be >= 1; got {num_particles}")
        if proposal not in ("prior", "guide"):
            raise BayesdynValueError(f"proposal must be 'prior' or 'guide'; got {proposal!r}")
        if proposal == "guide" and not self.space.has_proposal:
            raise BayesdynValueError(
                "proposal='guide' needs a model with a proposal (a LatentSDE, or "
                "SDEStateSpace(..., proposal=...)); this model has none"
            )
        if not (isinstance(ess_threshold, (int, float)) and 0.0 <= ess_threshold <= 1.0):
            raise BayesdynValueError(f"ess_threshold must lie in [0, 1]; got {ess_threshold!r}")
        qs = [float(q) for q in quantiles]
        if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
            raise BayesdynValueError(f"quantiles must be probabilities in [0, 1]; got {qs}")
        self.num_particles = num_particles
        self.proposal = proposal
        self.ess_threshold = float(ess_threshold)
        self.quantile_levels = tuple(qs)

    # ------------------------------------------------------------------ public API
    def run(self, data, *, seed: int | None = None, progress: bool | None = None) -> FilterResult:
        """Filter a batch of series (no gradients).

        Args:
            data: :class:`~bayesdyn.data.IrregularTimeSeries` or ``IrregularBatch``.
            seed: seeds torch's generator for reproducible draws.
            progress: show a progress bar over the observation times (default: when stderr
                is a terminal).

        Returns:
            :class:`FilterResult` with ``means [B, T, L]``, ``ess [B, T]``, ``log_evidence [B]``...
        """
        if progress is None:
            progress = sys.stderr.isatty()
        with torch.no_grad():
            return self._run(data, seed, progress=bool(progress))

    def log_evidence(self, data, *, seed: int | None = None) -> Tensor:
        """Differentiable ``log Z-hat`` of each series (the VSMC / IWAE objective).

        See the module docstring for the gradient estimator. Shapes: returns ``[B]``.
        """
        with torch.enable_grad():
            return self._run(data, seed, record=False).log_evidence

    def loss(self, data, *, seed: int | None = None) -> Tensor:
        """``-sum_b log Z-hat_b`` per observed value: a training loss (scalar, differentiable)."""
        from .fit import _as_batch

        batch = _as_batch(data, "data")
        return -self.log_evidence(batch, seed=seed).sum() / max(int(batch.mask.sum()), 1)

    def init_state(self, num_series: int, *, t0: float | None = None):
        """A streaming :class:`~bayesdyn.inference.FilterState` before any data.

        Args:
            num_series: ``B``.
            t0: time of the initial law (default: the model's ``t0``, else the first update's
                earliest time).
        """
        from .streaming import FilterState

        if isinstance(num_series, bool) or not isinstance(num_series, int) or num_series < 1:
            raise BayesdynValueError(f"num_series must be a positive integer; got {num_series!r}")
        return FilterState(self, self._init_carry(num_series, t0), None)

    # ------------------------------------------------------------------ internals
    def _run(
        self, data, seed: int | None, record: bool = True, progress: bool = False
    ) -> FilterResult:
        from .fit import _as_batch

        batch = _as_batch(data, "data")
        if seed is not None:
            torch.manual_seed(seed)
        carry = self._init_carry(batch.times.shape[0], None)
        return self._advance(carry, batch, record, progress)[1]

    def _init_carry(self, B: int, t0: float | None) -> _Carry:
        sp = self.space
        N = self.num_particles
        dt = sp.dtype
        t0 = sp.t0 if t0 is None else float(t0)
        return _Carry(
            z=None,
            logw=torch.zeros(N, B, dtype=dt),
            log_z=torch.zeros(B, dtype=dt),
            time=t0,
            aux=sp.init_aux(B),
            last_obs=torch.full((B,), float("nan"), dtype=dt),
            num_resamples=torch.zeros(B, dtype=torch.long),
            fresh=True,
        )

    def _prepare(self, carry: _Carry, batch):
        sp = self.space
        batch = batch.to(dtype=sp.dtype)
        B = carry.logw.shape[1]
        if batch.times.shape[0] != B:
            raise BayesdynValueError(
                f"data has {batch.times.shape[0]} series, the filter state has {B}"
            )
        sp.check_segment(batch)
        valid = batch.row_mask
        first = float(batch.times[valid].min()) if bool(valid.any()) else float(batch.times.min())
        t0 = carry.time
        if t0 is not None and first < t0:
            bad = (batch.times < t0) & valid
            b, i = (int(x) for x in bad.nonzero()[0])
            raise BayesdynValueError(
                f"series {b}: times[{i}]={float(batch.times[b, i]):.6g} comes before the filter "
                f"state's time {t0:.6g}; a filter can only move forward (start a new state, or "
                "drop the rows it has already seen)"
            )
        grid = make_union_grid(batch.times, dt=sp.dt, t0=first if t0 is None else t0)
        return batch, grid

    @torch.no_grad()
    def _flush(self, rec, buf, row: Tensor, qs: Tensor, log_n: float) -> None:
        """Write the filtering summaries of buffered observation steps into ``rec``.

        Summaries are computed for a block of grid points at once: per-step torch calls on
        ``[N, B]`` tensors cost mostly dispatch overhead, so batching them over ``K`` steps
        (one sort for all quantiles, one likelihood call for the observation means) is what
        keeps the filter's per-step cost near that of the Euler step itself.

        Shapes: ``buf`` holds ``K`` tuples ``(k, z [N, B, L], W [N, B], ess [B], lse [B],
        log_z [B])``; ``row [B, U]`` is the observation row at each grid point (-1: none).
        """
        if not buf:
            return
        ks, zs, ws, esss, lses, log_zs = zip(*buf, strict=True)
        buf.clear()
        sp = self.space
        dtype = rec["means"].dtype
        Z = torch.stack(zs)  # [K, N, B, L]
        W = torch.stack(ws)  # [K, N, B]
        K, N, B, L = Z.shape
        Wz = W.unsqueeze(-1)
        mean = (Wz * Z).sum(1)  # [K, B, L]
        var = (Wz * (Z - mean.unsqueeze(1)).square()).sum(1)
        flat_z = Z.transpose(0, 1).reshape(N, K * B, L)
        quant = _weighted_quantiles(flat_z, W.transpose(0, 1).reshape(N, K * B), qs)
        quant = quant.reshape(-1, K, B, L)  # [Q, K, B, L]
        try:
            ymean = (Wz * sp.likelihood(Z).mean).sum(1)  # [K, B, D]
        except NotImplementedError:  # a likelihood without a mean
            ymean = torch.full((K, *rec["obs_means"][:, 0].shape), float("nan"), dtype=dtype)
        trace = torch.stack(log_zs) + torch.stack(lses) - log_n  # [K, B]
        r = row[:, list(ks)].T  # [K, B]
        kk, bb = (r >= 0).nonzero(as_tuple=True)
        ri = r[kk, bb]
        rec["means"][bb, ri] = mean[kk, bb].to(dtype)
        rec["variances"][bb, ri] = var[kk, bb].to(dtype)
        rec["quantiles"][:, bb, ri] = quant[:, kk, bb].to(dtype)
        rec["obs_means"][bb, ri] = ymean[kk, bb].to(dtype)
        rec["ess"][bb, ri] = torch.stack(esss)[kk, bb].to(dtype)
        rec["trace"][bb, ri] = trace[kk, bb].to(dtype)

    def _advance(
        self, carry: _Carry, batch, record: bool = True, progress: bool = False
    ) -> tuple[_Carry, FilterResult]:
        """Filter one data segment from the carried particle system; see the module docstring.

        ``record=False`` skips the filtering summaries (when only the evidence is wanted);
        ``progress`` shows a bar over the observation times.
        """
        sp = self.space
        batch, ug = self._prepare(carry, batch)
        grid = ug.grid
        U = grid.numel()
        N, B, L = self.num_particles, batch.times.shape[0], sp.state_dim
        T, D = batch.times.shape[1], batch.values.shape[-1]
        dtype = sp.dtype
        log_n = math.log(N)
        og = obs_on_grid(ug.index, batch.lengths, batch.values, batch.mask, U)
        prior = sp.prior_stepper(batch, grid)
        jumps = sp.jump_stepper(batch, grid)
        guided = self.proposal == "guide"
        logw, log_z, aux = carry.logw, carry.log_z, carry.aux
        q_step, q_init = None, None
        if guided:
            q_step, q_init, aux = sp.proposal(batch, grid, aux, carry.fresh)
        z = carry.z
        if carry.fresh:
            p0 = sp.initial(B)
            if q_init is not None:
                z = q_init.rsample((N,)) if q_init.has_rsample else q_init.sample((N,))
                logw = logw + p0.log_prob(z) - q_init.log_prob(z)
            else:
                z = p0.rsample((N,)) if p0.has_rsample else p0.sample((N,))
        dts = (grid[1:] - grid[:-1]).to(dtype)
        # Per-step constants as Python numbers and views made once: the loop below runs once
        # per grid point, and on [N, B] tensors a torch call costs mostly its dispatch.
        hs, sqs = dts.tolist(), dts.sqrt().tolist()
        obs_at = [False] * U
        for k in og.steps:
            obs_at[k] = True
        has_k = (og.row >= 0).unbind(1)  # U x [B]
        every_series = (og.row >= 0).all(0).tolist()  # all series have a row at k
        fully_observed = og.mask.all(-1).all(0).tolist()  # and every channel is observed
        values_k, mask_k = og.values.unbind(1), og.mask.unbind(1)
        threshold = self.ess_threshold * N
        keep = torch.arange(N).unsqueeze(-1)  # [N, 1]
        qs = torch.tensor(self.quantile_levels, dtype=dtype)
        Q = len(self.quantile_levels)
        rec = {
            "means": torch.zeros(B, T, L, dtype=dtype),
            "variances": torch.zeros(B, T, L, dtype=dtype),
            "quantiles": torch.zeros(Q, B, T, L, dtype=dtype),
            "obs_means": torch.zeros(B, T, D, dtype=dtype),
            "ess": torch.zeros(B, T, dtype=dtype),
            "trace": torch.zeros(B, T, dtype=dtype),
        }
        buf: list = []
        # Summaries are buffered for blocks of observation steps, noise is drawn for blocks of
        # grid steps; both blocks hold about 2^20 numbers.
        rec_block = max(1, _RECORD_BLOCK // (N * B * (L + 1)))
        noise_block = max(1, _NOISE_BLOCK // (N * B * L))
        noise, noise_start = None, 0
        num_res = carry.num_resamples.clone()
        bar = tqdm(
            total=len(og.steps),
            disable=not progress,
            desc="particle filter",
            unit="obs",
            dynamic_ncols=True,
        )
        for k in range(U):
            if k > 0:
                j = k - 1
                if noise is None or j - noise_start >= noise.shape[0]:
                    noise_start = j
                    noise = torch.randn(min(noise_block, U - 1 - j), N, B, L, dtype=dtype)
                eps = noise[j - noise_start]
                t = grid[j]
                f_p, g_p = prior(j, t, z)
                jump = None if jumps is None else jumps(j, t, z)
                if guided:
                    f_q, g_q = q_step(j, t, z)
                    z_new = z + f_q * hs[j] + g_q * sqs[j] * eps
                    dz = (z_new - z).unsqueeze(-2)
                    h = dts[j : j + 1]
                    if jump is None:
                        log_p = euler_transition_log_prob(
                            dz, f_p.unsqueeze(-2), g_p.unsqueeze(-2), h
                        )
                    else:
                        log_p = _jump_mixture_log_prob(dz.squeeze(-2), f_p, g_p, dts[j], *jump)
                    logw = (
                        logw
                        + log_p
                        - euler_transition_log_prob(dz, f_q.unsqueeze(-2), g_q.unsqueeze(-2), h)
                    )
                    z = z_new
                else:
                    z = z + f_p * hs[j] + g_p * sqs[j] * eps
                    if jump is not None:
                        # "no jump or one jump" per step, as JumpDiffusionPath samples it; the
                        # indicator is discrete, so the evidence gradient ignores its score term.
                        lam, loc, scale = jump
                        hit = torch.rand(N, B, dtype=dtype) < -torch.expm1(-lam * hs[j])
                        size = loc + scale * torch.randn(N, B, L, dtype=dtype)
                        z = z + hit.unsqueeze(-1) * size
            if not obs_at[k]:
                continue
            has = has_k[k]  # [B]
            lp = sp.likelihood(z).log_prob(values_k[k])  # [N, B, D]
            if not fully_observed[k]:
                lp = torch.where(mask_k[k], lp, 0.0)
            logw = logw + lp.sum(-1)
            lse = torch.logsumexp(logw, 0)  # [B]
            # One synchronising check per observation for both failures: NaN/inf particles make
            # the sum NaN (inf * 0), an impossible observation makes its series' lse -inf.
            # The grid ends at the last row, so every particle is checked at the end.
            lse_d = lse.detach()
            check = (lse_d if every_series[k] else torch.where(has, lse_d, 0.0)).sum()
            if not math.isfinite(float(check + z.detach().sum() * 0.0)):
                self._raise_if_failed(z, lse_d, has, float(grid[k]))
            W = torch.softmax(logw.detach(), 0)
            ess = W.square().sum(0).reciprocal()
            if record:
                buf.append((k, z.detach(), W, ess, lse_d, log_z.detach()))
                if len(buf) >= rec_block:
                    self._flush(rec, buf, og.row, qs, log_n)
            need = ess < threshold
            if not every_series[k]:
                need = need & has
            if bool(need.any()):
                anc = torch.where(need, systematic_resample(W), keep)
                z = torch.gather(z, 0, anc.unsqueeze(-1).expand(N, B, L))
                log_z = torch.where(need, log_z + lse - log_n, log_z)
                logw = logw.masked_fill(need, 0.0)
                num_res = num_res + need
            bar.update()
        bar.close()
        if record:
            self._flush(rec, buf, og.row, qs, log_n)
        # Padding rows repeat the last valid row.
        last = (batch.lengths - 1).clamp(min=0)
        rows = torch.minimum(torch.arange(T).expand(B, T), last.unsqueeze(-1))

        def fill(x: Tensor, dim: int) -> Tensor:
            idx = rows.reshape(*([1] * (dim)), B, T, *([1] * (x.dim() - dim - 2)))
            return torch.gather(x, dim + 1, idx.expand_as(x))

        total = log_z + torch.logsumexp(logw, 0) - log_n
        last_obs = torch.where(batch.lengths > 0, batch.last_times, carry.last_obs)
        new = _Carry(z, logw, log_z, float(grid[-1]), aux, last_obs, num_res, False)
        result = FilterResult(
            times=batch.times,
            means=fill(rec["means"], 0),
            variances=fill(rec["variances"], 0),
            quantiles=fill(rec["quantiles"], 1),
            quantile_levels=self.quantile_levels,
            obs_means=fill(rec["obs_means"], 0),
            ess=fill(rec["ess"], 0),
            log_evidence=total,
            log_evidence_trace=fill(rec["trace"], 0),
            num_resamples=num_res,
            num_particles=N,
        )
        return new, result

    @staticmethod
    def _raise_if_failed(z: Tensor, lse: Tensor, has: Tensor, t: float) -> None:
        """Name the failure the combined finiteness check in the loop detected (if any)."""
        if not bool(torch.isfinite(z).all()):
            raise SolverDiverged(
                f"particles became non-finite before t={t:.6g}; try a smaller "
                "dt, a stable drift or standardised data"
            )
        bad = ~torch.isfinite(lse) & has
        if bool(bad.any()):
            b = int(bad.nonzero()[0])
            raise SolverDiverged(
                f"series {b}: every particle has zero weight at t={t:.6g} "
                "(the observation is impossible under all particles); use more particles, "
                "proposal='guide', or check the data scale"
            )
        # Otherwise the sum overflowed with finite terms: nothing failed.
