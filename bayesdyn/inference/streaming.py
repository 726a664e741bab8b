"""Streaming filtering: update a filter state as observations arrive, forecast from it.

A :class:`FilterState` holds a particle system (``N`` particles per series, their weights, the
running log-evidence) at one time that all ``B`` series have been filtered up to, plus whatever
the proposal carries (the causal encoder's state for ``LatentSDE(encoder="filter")``). States are
immutable: :meth:`FilterState.update` returns a new one, so a state can be kept as a checkpoint
and updated with different data. An update only touches the new rows: its cost depends on the
new data and ``N``, not on how much history the state has seen.

Example::

    state = FilterState.from_model(model, num_series=B, num_particles=500)
    for times, values, mask in feed:          # [B, T_new], [B, T_new, D], [B, T_new, D]
        state = state.update(times, values, mask)
        traj = state.predict(horizon_times, num_samples=200)   # Trajectories [S, B, Q, D]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError
from ..data import IrregularTimeSeries
from ..solvers import euler_maruyama, gather_on_grid, make_union_grid
from .particle import FilterResult, ParticleFilter, _Carry
from .predictive import Trajectories

__all__ = ["FilterState"]


def _to_tensor(name: str, x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise BayesdynTypeError(f"{name} must be a tensor or array; got {type(x).__name__}") from e


def _as_segment(times, values, mask, covariates, num_series: int, dtype: torch.dtype):
    """New rows as an ``IrregularBatch`` (validated like any ``IrregularTimeSeries``).

    Accepts an ``IrregularTimeSeries``/``IrregularBatch`` as ``times`` (with ``values=None``),
    or tensors ``times [B, T]`` (or ``[T]``, shared by all series), ``values [B, T, D]`` (or
    ``[T, D]`` when ``B == 1``) and ``mask [B, T, D]`` / ``[B, T]`` (default: all observed).
    Trailing rows that repeat the previous time with nothing observed are padding and dropped.
    """
    from .fit import _as_batch

    if hasattr(times, "to_batch") or hasattr(times, "lengths"):
        if values is not None or mask is not None:
            raise BayesdynValueError(
                "pass either a series/batch as the first argument or times, values and mask"
            )
        return _as_batch(times, "times").to(dtype=dtype)
    if values is None:
        raise BayesdynValueError("values is required when times is a tensor")
    t = _to_tensor("times", times).to(torch.float64)
    v = _to_tensor("values", values).to(torch.float64)
    if v.dim() == 2 and num_series == 1:
        v = v.unsqueeze(0)
    if v.dim() != 3 or v.shape[0] != num_series:
        raise BayesdynValueError(
            f"values must have shape [B={num_series}, T, D]; got {list(v.shape)}"
        )
    B, T, D = v.shape
    if t.dim() == 1:
        t = t.expand(B, -1)
    if tuple(t.shape) != (B, T):
        raise BayesdynValueError(
            f"times must have shape [T={T}] or [B={B}, T={T}] to match values; got {list(t.shape)}"
        )
    if mask is None:
        m = torch.ones(B, T, D, dtype=torch.bool)
    else:
        m = _to_tensor("mask", mask)
        if m.dtype != torch.bool:
            raise BayesdynTypeError(f"mask must be boolean; got dtype {m.dtype}")
        if m.dim() == 2 and num_series == 1 and tuple(m.shape) == (T, D):
            m = m.unsqueeze(0)
        if tuple(m.shape) == (B, T):
            m = m.unsqueeze(-1).expand(B, T, D)
        if tuple(m.shape) != (B, T, D):
            raise BayesdynValueError(
                f"mask must have shape [B, T, D]={[B, T, D]} or [B, T]; got {list(m.shape)}"
            )
    times_l, values_l, mask_l, cov_l = [], [], [], []
    cov = None if covariates is None else _to_tensor("covariates", covariates).to(torch.float64)
    for b in range(B):
        n = T
        while n > 1 and bool(t[b, n - 1] == t[b, n - 2]) and not bool(m[b, n - 1].any()):
            n -= 1
        times_l.append(t[b, :n].numpy())
        values_l.append(torch.where(m[b, :n], v[b, :n], 0.0).numpy())
        mask_l.append(m[b, :n].numpy())
        if cov is not None:
            cov_l.append(cov[b, :n].numpy())
    series = IrregularTimeSeries(
        times_l,
        values_l,
        mask_l,
        covariates=cov_l if cov is not None else None,
        require_observed_channels=False,
    )
    return series.to_batch(dtype=dtype)


@dataclass(frozen=True)
class FilterState:
    """An immutable streaming filter state (see the module docstring).

    Create one with :meth:`from_model` or :meth:`ParticleFilter.init_state`.

    Attributes:
        filter: the :class:`ParticleFilter` that advances it.
        last_result: the :class:`FilterResult` of the update that produced this state (None for
            a new state): filtering means, quantiles and ESS at the new rows.

    Shapes: particles ``[N, B, L]``, weights ``[N, B]``, ``log_evidence [B]``.
    """

    filter: ParticleFilter
    carry: _Carry
    last_result: FilterResult | None = None

    @classmethod
    def from_model(
        cls,
        model,
        num_series: int,
        *,
        num_particles: int = 1000,
        proposal: str = "prior",
        ess_threshold: float = 0.5,
        t0: float | None = None,
    ) -> FilterState:
        """A fresh state for a fitted model (``LatentSDE`` or ``AbstractStateSpace``).

        ``proposal="guide"`` with a ``LatentSDE`` needs ``encoder="filter"`` to stream past the
        first update. See :class:`ParticleFilter` for the other arguments.
        """
        pf = ParticleFilter(model, num_particles, proposal, ess_threshold=ess_threshold)
        return pf.init_state(num_series, t0=t0)

    # ------------------------------------------------------------------ views
    @property
    def time(self) -> float | None:
        """Time up to which every series is filtered (None before the first update)."""
        return self.carry.time

    @property
    def num_series(self) -> int:
        """``B``."""
        return int(self.carry.logw.shape[1])

    @property
    def particles(self) -> Tensor | None:
        """Particles at :attr:`time`. Shapes: ``[N, B, L]`` (None before the first update)."""
        return self.carry.z

    @property
    def weights(self) -> Tensor:
        """Normalised particle weights. Shapes: ``[N, B]``."""
        return torch.softmax(self.carry.logw.detach(), 0)

    @property
    def log_evidence(self) -> Tensor:
        """``log Z-hat`` of all data seen so far. Shapes: ``[B]``."""
        n = self.carry.logw.shape[0]
        return self.carry.log_z + torch.logsumexp(self.carry.logw, 0) - np.log(n)

    @property
    def last_observed(self) -> Tensor:
        """Time of each series' last row (NaN before any). Shapes: ``[B]``."""
        return self.carry.last_obs

    # ------------------------------------------------------------------ update / predict
    def update(
        self,
        times,
        values=None,
        mask=None,
        *,
        covariates=None,
        seed: int | None = None,
        progress: bool = False,
    ) -> FilterState:
        """Filter new observations and return the new state (this one is unchanged).

        Args:
            times: new rows' times ``[B, T]`` (or ``[T]`` shared by all series), all at or
                after :attr:`time`; or an ``IrregularTimeSeries``/``IrregularBatch`` of new rows.
            values: ``[B, T, D]`` (``[T, D]`` for one series).
            mask: ``[B, T, D]`` or ``[B, T]`` bool (default: all observed). Series with fewer new
                rows pad at the end by repeating their last time with mask False.
            covariates: ``[B, T, K]`` for models with covariates.
            seed: seeds torch's generator.
            progress: show a progress bar over the new observation times (for long updates).

        Returns:
            A new :class:`FilterState`; its :attr:`last_result` holds the filtering summaries at
            the new rows.

        Raises:
            BayesdynValueError: if a new time comes before :attr:`time`, shapes disagree, or
                times do not increase within a series.
        """
        pf = self.filter
        seg = _as_segment(times, values, mask, covariates, self.num_series, pf.space.dtype)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            carry, result = pf._advance(self.carry, seg, progress=bool(progress))
        return FilterState(pf, carry, result)

    def predict(self, times, num_samples: int = 100, *, seed: int | None = None) -> Trajectories:
        """Sample forecasts of latent paths and observations at times at or after :attr:`time`.

        Particles are drawn by weight and moved forward with the prior SDE (Euler–Maruyama on
        ``make_union_grid(times, dt, t0=time)``); observations are drawn from the likelihood.

        Args:
            times: query times ``[Q]`` (shared) or ``[B, Q]``.
            num_samples: ``S``.
            seed: seeds torch's generator.

        Returns:
            :class:`~bayesdyn.inference.Trajectories` with ``latent [S, B, Q, L]`` and
            ``observations [S, B, Q, D]``.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise BayesdynValueError(f"num_samples must be a positive integer; got {num_samples!r}")
        sp = self.filter.space
        B, L = self.num_series, sp.state_dim
        q = _to_tensor("times", times).to(sp.dtype)
        if q.dim() not in (1, 2) or q.shape[-1] == 0 or (q.dim() == 2 and q.shape[0] != B):
            raise BayesdynValueError(
                f"times must have shape [Q] or [B={B}, Q] with Q >= 1; got {list(q.shape)}"
            )
        if not bool(torch.isfinite(q).all()):
            raise BayesdynValueError("times must be finite")
        t_state = self.time
        if self.carry.z is None and t_state is None:
            raise BayesdynValueError(
                "this state has no time yet: update it with data first, or create it with t0"
            )
        if t_state is not None and float(q.min()) < t_state:
            raise BayesdynValueError(
                f"predict times must not come before the state's time {t_state:.6g}; got "
                f"min(times)={float(q.min()):.6g} (past times need a smoother)"
            )
        if seed is not None:
            torch.manual_seed(seed)
        qb = q if q.dim() == 2 else q.expand(B, -1)
        with torch.no_grad():
            if self.carry.z is None:
                z = sp.initial(B).sample((num_samples,))  # [S, B, L]
            else:
                anc = torch.multinomial(self.weights.T, num_samples, replacement=True)  # [B, S]
                z = torch.gather(self.carry.z, 0, anc.T.unsqueeze(-1).expand(-1, -1, L))
            ug = make_union_grid(qb, dt=sp.dt, t0=t_state)
            seg = _query_segment(qb, sp.obs_dim)
            step = sp.prior_stepper(seg, ug.grid)
            U = ug.grid.numel()
            noise = torch.randn(num_samples, B, U - 1, L, dtype=sp.dtype)
            path = euler_maruyama(step, z, ug.grid, noise).path  # [S, B, U, L]
            latent = gather_on_grid(path, ug.index)  # [S, B, Q, L]
            obs = sp.likelihood(latent).sample()
        return Trajectories(
            times=q, latent=latent, observations=obs, last_observed=self.last_observed
        )


def _query_segment(times: Tensor, obs_dim: int):
    """An all-missing batch at the query times (what a model needs to bind its grid inputs)."""
    from ..data import IrregularBatch

    B, Q = times.shape
    return IrregularBatch(
        times=times,
        values=times.new_zeros(B, Q, obs_dim),
        mask=torch.zeros(B, Q, obs_dim, dtype=torch.bool),
        lengths=torch.full((B,), Q, dtype=torch.long),
    )
