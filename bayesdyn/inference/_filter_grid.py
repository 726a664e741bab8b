"""Where each observation row lands on a solver grid (shared by the Kalman and particle filters)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ObsOnGrid", "obs_on_grid"]


class ObsOnGrid:
    """Observation rows scattered onto the grid points where they happen.

    Attributes:
        row: observation row of each series at each grid point, ``-1`` where none.
        values: values at each grid point (0 where no row lands).
        mask: observed channels at each grid point (False where no row lands).
        steps: grid points where at least one series observes something (sorted, python ints).

    Shapes: ``row [B, U]`` long, ``values [B, U, D]``, ``mask [B, U, D]`` bool.
    """

    def __init__(self, row: Tensor, values: Tensor, mask: Tensor):
        self.row = row
        self.values = values
        self.mask = mask
        self.steps = (row >= 0).any(0).nonzero().flatten().tolist()


def obs_on_grid(index: Tensor, lengths: Tensor, values: Tensor, mask: Tensor, U: int) -> ObsOnGrid:
    """Scatter the valid rows of a padded batch onto their grid points.

    Padding rows (``row >= lengths[b]``) are dropped, so they never count. Within a series the
    times are strictly increasing, so at most one valid row lands on a grid point.

    Shapes: ``index [B, T]`` (grid positions), ``lengths [B]``, ``values [B, T, D]``,
    ``mask [B, T, D]`` -> :class:`ObsOnGrid` with ``[B, U]`` and ``[B, U, D]`` fields.
    """
    B, T = index.shape
    D = values.shape[-1]
    rows = torch.arange(T, device=index.device).expand(B, T)
    valid = rows < lengths.unsqueeze(-1)
    # Invalid rows write to a spare column U that is cut off afterwards.
    target = torch.where(valid, index, torch.full_like(index, U))
    row = torch.full((B, U + 1), -1, dtype=torch.long, device=index.device)
    row.scatter_(1, target, torch.where(valid, rows, -1))
    row = row[:, :U]
    safe = row.clamp(min=0).unsqueeze(-1).expand(B, U, D)
    has = (row >= 0).unsqueeze(-1)
    v = torch.gather(values, 1, safe) * has
    m = torch.gather(mask, 1, safe) & has
    return ObsOnGrid(row, v, m)
