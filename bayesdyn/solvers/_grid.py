"""Union time grids for batches of irregular series, and the one layout conversion for torchsde.

Every series in a batch is solved on one shared, strictly increasing grid ``U``: the sorted union
of all observation times, any query times, and refinement points so that no step exceeds ``dt``
(the Rubanova et al. 2019 union-of-times approach). Index maps send each observation back to
its grid point.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError

__all__ = [
    "UnionGrid",
    "gather_on_grid",
    "make_series_grid",
    "make_union_grid",
    "torchsde_layout",
]


class UnionGrid(NamedTuple):
    """A shared solver grid and the maps from observation and query times onto it.

    Shapes:
        - ``grid``: ``[U]``, strictly increasing (:func:`make_union_grid`); or ``[B, U]``, one
          strictly increasing row per series (:func:`make_series_grid`).
        - ``index``: ``[B, T]`` long; ``grid[index[b, t]] == times[b, t]`` (``grid[b, index[b,
          t]]`` per series).
        - ``query_index``: ``[Q]`` long (or ``[B, Q]``; always ``[B, Q]`` per series), or
          ``None`` when no query times were given.
    """

    grid: Tensor
    index: Tensor
    query_index: Tensor | None


def _check_times(name: str, times: Tensor) -> None:
    if not isinstance(times, Tensor):
        raise BayesdynTypeError(f"{name} must be a torch.Tensor; got {type(times).__name__}")
    if not times.is_floating_point():
        raise BayesdynTypeError(f"{name} must be a floating-point tensor; got dtype {times.dtype}")
    if times.requires_grad:
        raise BayesdynValueError(
            f"{name} must not require grad (gradients with respect to observation times are "
            "not supported); call .detach() first"
        )
    if times.numel() and not bool(torch.isfinite(times).all()):
        raise BayesdynValueError(f"{name} must be finite; got non-finite entries")


def make_union_grid(
    times: Tensor,
    *,
    query_times: Tensor | None = None,
    dt: float | None = None,
    t0: float | None = None,
    rounding: str = "ceil",
) -> UnionGrid:
    """Build the sorted union grid of a batch's observation times and optional query times.

    Args:
        times: observation times of each series (padding may repeat a series' last time).
        query_times: extra times at which the path is wanted (interpolation or forecast),
            shared by all series (``[Q]``) or per series (``[B, Q]``).
        dt: step size; gaps longer than ``dt`` are split into equal sub-steps.
        rounding: how many sub-steps a gap gets. ``"ceil"`` (default) takes
            ``ceil(gap / dt)``, so no step exceeds ``dt``. ``"nearest"`` takes
            ``max(1, round(gap / dt))``, so steps average ``dt`` as in torchsde's fixed-step
            solvers (which step by ``dt`` and interpolate at the output times): a step can
            reach ``1.5 * dt`` but a path over ``[t0, t1]`` takes about ``(t1 - t0) / dt``
            steps instead of up to twice as many when observation gaps are just over ``dt``.
        t0: start of the grid (where the initial state lives); must not exceed the earliest
            time. Defaults to the earliest observation or query time.

    Returns:
        :class:`UnionGrid` with ``grid [U]``, ``index [B, T]`` and ``query_index``.

    Shapes:
        - ``times``: ``[B, T]`` (a single series ``[T]`` is accepted and gives ``index [1, T]``).
        - ``query_times``: ``[Q]`` or ``[B, Q]``.

    Raises:
        BayesdynValueError: if ``dt`` is not positive, ``t0`` lies after the first time,
            ``rounding`` is unknown, or times are not finite.
    """
    _check_times("times", times)
    if rounding not in _ROUNDINGS:
        raise BayesdynValueError(f"rounding must be one of {_ROUNDINGS}; got {rounding!r}")
    if times.dim() == 1:
        times = times.unsqueeze(0)
    if times.dim() != 2:
        raise BayesdynValueError(f"times must have shape [B, T]; got shape {tuple(times.shape)}")
    pieces = [times.reshape(-1)]
    if query_times is not None:
        _check_times("query_times", query_times)
        if query_times.dim() not in (1, 2):
            raise BayesdynValueError(
                f"query_times must have shape [Q] or [B, Q]; got shape {tuple(query_times.shape)}"
            )
        if query_times.dim() == 2 and query_times.shape[0] != times.shape[0]:
            raise BayesdynValueError(
                f"query_times has {query_times.shape[0]} rows, times has {times.shape[0]} series"
            )
        query_times = query_times.to(times.dtype)
        pieces.append(query_times.reshape(-1))
    knots = torch.unique(torch.cat(pieces))  # sorted, strictly increasing
    if t0 is not None:
        knots = _start_at(knots, t0)
    if dt is not None:
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise BayesdynValueError(f"dt must be a finite positive number; got {dt!r}")
        knots = _refine(knots, float(dt), rounding)
    index = torch.searchsorted(knots, times.contiguous())
    qindex = None
    if query_times is not None:
        qindex = torch.searchsorted(knots, query_times.contiguous())
    return UnionGrid(knots, index, qindex)


_ROUNDINGS = ("ceil", "nearest")


def _start_at(knots: Tensor, t0: float, where: str = "") -> Tensor:
    """``knots [K]`` with ``t0`` prepended unless it is the first knot; raise if it is later."""
    t0 = float(t0)
    # Compare in the grid's dtype: a float64 t0 equal to a float32 time must not add a
    # duplicate knot (0.4 < float32(0.4) in float64).
    t0_k = knots.new_tensor([t0])
    if bool(t0_k > knots[0]):
        raise BayesdynValueError(
            f"t0 must not exceed the earliest time {float(knots[0])}{where}; got t0={t0}"
        )
    return torch.cat([t0_k, knots]) if bool(t0_k < knots[0]) else knots


def make_series_grid(
    times: Tensor,
    *,
    query_times: Tensor | None = None,
    dt: float,
    t0: float | None = None,
    rounding: str = "ceil",
) -> UnionGrid:
    """One solver grid per series: its own times (and the query times), refined to ``dt``.

    The union grid (:func:`make_union_grid`) puts every series of a batch on the times of all
    of them, so its length grows with the batch: ``B`` event sequences of ``n`` events each
    need ``~B n`` steps. Here row ``b`` holds only series ``b``'s times, so the batch is solved
    in ``~n`` steps of batched work. Rows are padded to a common length ``U`` after their last
    time by steps of ``dt`` (padding points lie beyond the series' data; nothing is scored
    there).

    Args:
        times: observation times of each series (padding may repeat a series' last time).
        query_times: extra times wanted on every row (``[Q]``) or per series (``[B, Q]``).
        dt: largest step; longer gaps are split into equal sub-steps (``rounding`` as in
            :func:`make_union_grid`), and the padding step.
        t0: start of every row (must not exceed any time); default each series' first time.
        rounding: ``"ceil"`` or ``"nearest"`` (see :func:`make_union_grid`).

    Returns:
        :class:`UnionGrid` with ``grid [B, U]``, ``index [B, T]`` and ``query_index [B, Q]``.

    Shapes:
        ``times [B, T]``, ``query_times [Q]`` or ``[B, Q]`` -> see Returns.

    Raises:
        BayesdynValueError: as :func:`make_union_grid`.
    """
    _check_times("times", times)
    if times.dim() != 2:
        raise BayesdynValueError(f"times must have shape [B, T]; got shape {tuple(times.shape)}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise BayesdynValueError(f"dt must be a finite positive number; got {dt!r}")
    if rounding not in _ROUNDINGS:
        raise BayesdynValueError(f"rounding must be one of {_ROUNDINGS}; got {rounding!r}")
    B = times.shape[0]
    if query_times is not None:
        _check_times("query_times", query_times)
        if query_times.dim() not in (1, 2) or (
            query_times.dim() == 2 and query_times.shape[0] != B
        ):
            raise BayesdynValueError(
                f"query_times must have shape [Q] or [B={B}, Q]; got shape "
                f"{tuple(query_times.shape)}"
            )
        query_times = query_times.to(times.dtype).expand(B, query_times.shape[-1])
    rows = []
    for b in range(B):
        pieces = [times[b]] if query_times is None else [times[b], query_times[b]]
        knots = torch.unique(torch.cat(pieces))
        if t0 is not None:
            knots = _start_at(knots, t0, f" (series {b})")
        rows.append(_refine(knots, float(dt), rounding))
    U = max(r.numel() for r in rows)
    steps = torch.arange(1, U + 1, dtype=times.dtype, device=times.device) * float(dt)
    grid = torch.stack([torch.cat([r, r[-1] + steps[: U - r.numel()]]) for r in rows])
    index = torch.searchsorted(grid, times.contiguous())
    qindex = None if query_times is None else torch.searchsorted(grid, query_times.contiguous())
    return UnionGrid(grid, index, qindex)


def _refine(knots: Tensor, dt: float, rounding: str = "ceil") -> Tensor:
    """Insert equally spaced points into gaps longer than ``dt`` (vectorised; see
    :func:`make_union_grid` for ``rounding``)."""
    if knots.numel() < 2:
        return knots
    gaps = knots[1:] - knots[:-1]
    # Number of sub-steps per gap; the 1e-9 slack keeps a gap of exactly k*dt at k steps.
    if rounding == "ceil":
        nsub = torch.ceil(gaps / dt - 1e-9)
    else:
        nsub = torch.floor(gaps / dt + 0.5)
    nsub = nsub.clamp(min=1).long()
    if bool((nsub == 1).all()):
        return knots
    starts = torch.repeat_interleave(knots[:-1], nsub)
    steps = torch.repeat_interleave(gaps / nsub, nsub)
    # position of each new point inside its gap: 0, 1, ..., nsub-1
    offsets = torch.arange(int(nsub.sum()), device=knots.device) - torch.repeat_interleave(
        torch.cumsum(nsub, 0) - nsub, nsub
    )
    inner = starts + offsets.to(knots.dtype) * steps
    return torch.cat([inner, knots[-1:]])


def gather_on_grid(path: Tensor, index: Tensor) -> Tensor:
    """Read a path at the grid points named by ``index``.

    Args:
        path: values on the grid.
        index: grid positions for each series.

    Returns:
        The path at those positions.

    Shapes:
        - ``path``: ``[..., B, U, L]``
        - ``index``: ``[B, T]``
        - returns ``[..., B, T, L]``
    """
    idx = index.unsqueeze(-1).expand(*path.shape[:-3], *index.shape, path.shape[-1])
    return torch.gather(path, -2, idx)


def torchsde_layout(x: Tensor, *, inverse: bool = False) -> Tensor:
    """The one conversion between bayesdyn's layout and torchsde's time-major layout.

    bayesdyn keeps time at dim -2 (``[..., U, L]``); torchsde wants time first (``[U, ..., L]``).

    Args:
        x: a path in bayesdyn layout, or in torchsde layout when ``inverse=True``.
        inverse: convert from torchsde's layout back to bayesdyn's.

    Shapes:
        - ``inverse=False``: ``[..., U, L] -> [U, ..., L]``
        - ``inverse=True``: ``[U, ..., L] -> [..., U, L]``
    """
    if x.dim() < 2:
        raise BayesdynValueError(f"x must have at least 2 dims [U, L]; got shape {tuple(x.shape)}")
    return x.movedim(0, -2) if inverse else x.movedim(-2, 0)
