r"""``TemporalPointProcess``: a Pyro distribution over (marked) event times on an observation window.

The intensity is given on the solver grid, typically read off a latent path: per-mark
intensities :math:`\lambda_k(t)` are linear (or, with ``interpolation="log_linear"``,
log-linear: :math:`a^{1-w} b^w`) on each grid interval between their values at the
interval's ends (``start``: right limit at the left end, ``end``: left limit at the right end),
so they may jump at grid points, e.g. at events that make a latent state jump. The
log-likelihood of events :math:`(t_i, m_i)` in the window :math:`[a, b]` is

.. math:: \log p = \sum_i \log \lambda_{m_i}(t_i^-) - \int_a^b \sum_k \lambda_k(t)\,dt,

with the compensator integrated exactly for the piecewise intensity (the trapezoid sum on the
grid; for log-linear pieces each interval's length times the logarithmic mean of its ends). :meth:`TemporalPointProcess.compensator_error` estimates its distance to the
integral of the smooth intensity the grid values sample; refine the grid until it is small.
Sampling is exact thinning (:func:`bayesdyn.solvers.thinning_sample`).

Value format: one tensor ``[..., N, 2]``; column 0 holds event times (sorted within the
window), column 1 the mark ``0..K-1`` as a float, and ``-1`` marks padding entries, which must
come after the real events (see :meth:`bayesdyn.data.EventBatch.to_value`). With it the
distribution works as ``pyro.sample("events", TemporalPointProcess(...), obs=events)`` for ragged
event sequences, under plates and masks.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError, is_validation_enabled
from ..solvers import (
    check_interpolation,
    piecewise_linear_at,
    piecewise_linear_integral,
    thinning_sample,
    trapezoid_error_estimate,
)
from .sde_path import check_grid

__all__ = ["TemporalPointProcess"]


class TemporalPointProcess(TorchDistribution):
    """Distribution of a (marked) temporal point process with a piecewise (log-)linear intensity.

    Generative story: events in ``[window[0], window[1]]`` form a Poisson process with
    intensity :math:`\\sum_k \\lambda_k(t)` given the intensity path, and each event's mark is
    ``k`` with probability :math:`\\lambda_k(t)/\\sum_j \\lambda_j(t)`. (Feedback of events into
    the intensity, as in Hawkes processes or a latent state that jumps at events, enters
    through the intensity path itself: score observed events with the path computed from
    them.)

    Args:
        grid: strictly increasing solver grid, shared (``[U]``) or per series (``[*gbatch, U]``,
            broadcasting to the batch shape; see :func:`bayesdyn.solvers.make_series_grid`).
        intensity: per-mark intensity at the grid points, for a continuous intensity; or give
            ``start`` and ``end`` instead.
        start: intensity at the left end of each grid interval (right limits).
        end: intensity at the right end of each grid interval (left limits).
        window: ``[start, end]`` of each batch member's observation window; default the whole
            grid. It need not consist of grid points.
        max_events: pad samples to exactly this many entries (needed when the site is sampled
            by ``Predictive(parallel=True)``); ``event_shape`` is then ``(max_events, 2)``.
            Without it, samples are padded to the largest count and ``event_shape`` is the
            placeholder ``(0, 2)``; ``log_prob`` accepts any ``N`` either way.
        interpolation: ``"linear"`` (default) or ``"log_linear"`` between the grid values; the
            latter needs positive intensities and suits an exponential link
            ``lambda = exp(W z)`` of a path that is linear on each step.

    Shapes:
        - ``grid``: ``[U]`` or ``[*gbatch, U]``; ``intensity``: ``[*batch, U, K]``; ``start``/``end``:
          ``[*batch, U-1, K]``; ``window``: ``[*batch, 2]``
        - value: ``[*sample, *batch, N, 2]``; ``log_prob`` returns ``[*sample, *batch]``.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(
        self,
        grid: Tensor,
        intensity: Tensor | None = None,
        *,
        start: Tensor | None = None,
        end: Tensor | None = None,
        window: Tensor | None = None,
        max_events: int | None = None,
        interpolation: str = "linear",
        validate_args=None,
    ):
        check_grid(grid, min_points=2)
        check_interpolation(interpolation)
        U = grid.shape[-1]
        if intensity is not None:
            if start is not None or end is not None:
                raise BayesdynValueError("pass either intensity or start/end, not both")
            if not isinstance(intensity, Tensor) or intensity.dim() < 2:
                raise BayesdynTypeError(
                    f"intensity must be a tensor [*batch, U, K]; got {getattr(intensity, 'shape', intensity)}"
                )
            if intensity.shape[-2] != U:
                raise BayesdynValueError(
                    f"intensity has {intensity.shape[-2]} grid points, grid has {U}"
                )
            start, end = intensity[..., :-1, :], intensity[..., 1:, :]
        elif start is None or end is None:
            raise BayesdynValueError("pass intensity, or both start and end")
        for name, x in (("start", start), ("end", end)):
            if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[-2] != U - 1:
                raise BayesdynValueError(
                    f"{name} must have shape [*batch, U-1={U - 1}, K]; got "
                    f"{tuple(getattr(x, 'shape', ()))}"
                )
        start, end = torch.broadcast_tensors(start, end)
        if is_validation_enabled():
            for name, x in (("start", start), ("end", end)):
                positive = interpolation == "log_linear"
                bad = ~torch.isfinite(x) | ((x <= 0) if positive else (x < 0))
                if bool(bad.any()):
                    kind = "positive (log_linear interpolation)" if positive else "non-negative"
                    raise BayesdynValueError(
                        f"{name} (the intensity) must be finite and {kind}; got "
                        f"{float(x[bad].flatten()[0])}"
                    )
        batch_shape = start.shape[:-2]
        if window is not None:
            if not isinstance(window, Tensor) or window.shape[-1:] != (2,):
                raise BayesdynValueError(
                    f"window must have shape [*batch, 2]; got {tuple(getattr(window, 'shape', ()))}"
                )
            window = window.to(start.dtype)
            batch_shape = torch.broadcast_shapes(batch_shape, window.shape[:-1])
            if is_validation_enabled() and bool((window[..., 0] > window[..., 1]).any()):
                raise BayesdynValueError("window must satisfy window[..., 0] <= window[..., 1]")
            g0, g1 = grid[..., 0].to(window.dtype), grid[..., -1].to(window.dtype)
            outside = (window[..., 0] < g0) | (window[..., 1] > g1)
            if is_validation_enabled() and bool(outside.any()):
                raise BayesdynValueError(
                    f"window must lie inside the grid [{float(g0.max()):g}, {float(g1.min()):g}]; "
                    f"got {window[outside][0].tolist()}"
                )
        if grid.dim() > 1:
            try:
                ok = torch.broadcast_shapes(grid.shape[:-1], batch_shape) == batch_shape
            except RuntimeError:
                ok = False
            if not ok:
                raise BayesdynValueError(
                    f"a per-series grid's leading shape {tuple(grid.shape[:-1])} must broadcast "
                    f"to the batch shape {tuple(batch_shape)}"
                )
        if max_events is not None and (
            isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1
        ):
            raise BayesdynValueError(f"max_events must be a positive integer; got {max_events!r}")
        self.grid = grid.to(start.dtype)
        self.start = start
        self.end = end
        self.window = window
        self.max_events = max_events
        self.interpolation = interpolation
        self.num_marks = int(start.shape[-1])
        event_shape = torch.Size((max_events or 0, 2))
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TemporalPointProcess, _instance)
        batch_shape = torch.Size(batch_shape)
        new.grid = self.grid
        new.start = self.start.expand(batch_shape + self.start.shape[-2:])
        new.end = self.end.expand(batch_shape + self.end.shape[-2:])
        new.window = None if self.window is None else self.window.expand(batch_shape + (2,))
        new.max_events = self.max_events
        new.interpolation = self.interpolation
        new.num_marks = self.num_marks
        super(TemporalPointProcess, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ pieces
    def _bounds(self) -> tuple[Tensor | None, Tensor | None]:
        if self.window is None:
            return None, None
        return self.window[..., 0], self.window[..., 1]

    def intensity_at(self, times: Tensor) -> Tensor:
        """Per-mark intensity (left limits) at ``times``. Shapes: ``[..., N]`` -> ``[..., N, K]``."""
        return piecewise_linear_at(self.grid, self.start, self.end, times, self.interpolation)

    def compensator(self) -> Tensor:
        """Exact integral of the total intensity over the window. Shapes: ``[*batch]``."""
        lo, hi = self._bounds()
        comp = piecewise_linear_integral(
            self.grid, self.start, self.end, lo, hi, self.interpolation
        ).sum(-1)
        return comp.expand(self.batch_shape)

    def compensator_error(self) -> Tensor:
        """Estimated ``smooth - discretised`` compensator error over the whole grid.

        See :func:`bayesdyn.solvers.trapezoid_error_estimate`. Shapes: ``[*batch]``.
        """
        return trapezoid_error_estimate(
            self.grid, self.start, self.end, interpolation=self.interpolation
        ).sum(-1)

    def check_compensator(self, rtol: float = 1e-3) -> None:
        """Raise if the estimated compensator error exceeds ``rtol`` times the compensator.

        Raises:
            BayesdynValueError: naming the worst batch member, with a hint to refine the grid.
        """
        with torch.no_grad():
            comp = self.compensator().abs().clamp(min=1e-12)
            rel = (self.compensator_error().abs() / comp).reshape(-1)
        if rel.numel() and float(rel.max()) > rtol:
            b = int(rel.argmax())
            raise BayesdynValueError(
                f"the compensator's estimated relative error {float(rel[b]):.3g} (batch member "
                f"{b}) exceeds rtol={rtol}; use a finer grid (smaller dt)"
            )

    # ------------------------------------------------------------------ distribution API
    def _validate_sample(self, value: Tensor) -> None:
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise BayesdynTypeError(
                f"events must be a float tensor [..., N, 2]; got {type(value).__name__}"
            )
        if value.dim() < 2 or value.shape[-1] != 2:
            raise BayesdynValueError(
                f"events must have shape [..., N, 2] (time, mark); got {tuple(value.shape)}"
            )
        times, marks = value[..., 0], value[..., 1]
        if not bool(torch.isfinite(value).all()):
            raise BayesdynValueError("events must be finite (padding uses mark -1, not NaN)")
        if bool((marks != marks.round()).any()) or bool(
            ((marks < -1) | (marks >= self.num_marks)).any()
        ):
            bad = marks[(marks != marks.round()) | (marks < -1) | (marks >= self.num_marks)][0]
            raise BayesdynValueError(
                f"event marks must be integers in [0, num_marks={self.num_marks}) (or -1 for "
                f"padding); got {float(bad):g}"
            )
        valid = marks >= 0
        if value.shape[-2] > 1 and bool((valid[..., 1:] & ~valid[..., :-1]).any()):
            raise BayesdynValueError("event padding (mark -1) must come after all real events")
        lo, hi = self._bounds()
        lo = self.grid[..., :1] if lo is None else lo.unsqueeze(-1)
        hi = self.grid[..., -1:] if hi is None else hi.unsqueeze(-1)
        outside = valid & ((times < lo) | (times > hi))
        if bool(outside.any()):
            t = float(times[outside][0])
            raise BayesdynValueError(
                f"events must lie in the observation window; got an event at t={t:g} outside "
                f"[{float(torch.as_tensor(lo).min()):g}, {float(torch.as_tensor(hi).max()):g}]"
            )
        if value.shape[-2] > 1:
            both = valid[..., 1:] & valid[..., :-1]
            bad = both & (times[..., 1:] <= times[..., :-1])
            if bool(bad.any()):
                i = bad.nonzero()[0]
                k = int(i[-1]) + 1
                raise BayesdynValueError(
                    f"event times must be sorted (strictly increasing); event {k} at "
                    f"t={float(times[tuple(i[:-1])][k]):g} follows "
                    f"t={float(times[tuple(i[:-1])][k - 1]):g}"
                )

    def log_prob(self, value: Tensor) -> Tensor:
        r"""``sum_i log lambda_{m_i}(t_i) - compensator``.

        Shapes: ``value [*sample, *batch, N, 2]`` -> ``[*sample, *batch]``.
        """
        if self._validate_args or is_validation_enabled():
            self._validate_sample(value)
        times, marks = value[..., 0], value[..., 1]
        valid = marks >= 0
        lam = self.intensity_at(times)  # [..., N, K]
        idx = marks.clamp(min=0).long().unsqueeze(-1)
        idx = idx.expand(*lam.shape[:-1], 1)
        lam_m = torch.gather(lam, -1, idx).squeeze(-1)
        # Padding contributes nothing (where() keeps a 0 intensity there from giving -inf * 0).
        log_lam = torch.where(valid, lam_m, torch.ones_like(lam_m)).log()
        return log_lam.sum(-1) - self.compensator()

    def sample(self, sample_shape=()) -> Tensor:
        """Exact thinning draw. Shapes: returns ``[*sample_shape, *batch, N, 2]`` (see class)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        start = self.start.expand(shape + self.start.shape[-2:])
        end = self.end.expand(shape + self.end.shape[-2:])
        lo, hi = self._bounds()
        if lo is not None:
            lo, hi = lo.expand(shape), hi.expand(shape)
        with torch.no_grad():
            times, marks, mask = thinning_sample(
                self.grid, start, end, lo, hi, interpolation=self.interpolation
            )
        N = times.shape[-1]
        if self.max_events is not None:
            if int(mask.sum(-1).max()) > self.max_events:
                raise BayesdynValueError(
                    f"a sample has {int(mask.sum(-1).max())} events, more than max_events="
                    f"{self.max_events}; raise max_events"
                )
            pad = self.max_events - N
            if pad > 0:
                times = torch.cat([times, times[..., -1:].expand(*shape, pad)], -1)
                marks = torch.cat([marks, marks.new_zeros(*shape, pad)], -1)
                mask = torch.cat([mask, mask.new_zeros(*shape, pad)], -1)
            elif pad < 0:
                times, marks, mask = (x[..., : self.max_events] for x in (times, marks, mask))
        m = torch.where(mask, marks, torch.full_like(marks, -1)).to(times.dtype)
        return torch.stack([times, m], -1)

    @property
    def mean(self):
        raise NotImplementedError("a point process has no mean value; use compensator()")
