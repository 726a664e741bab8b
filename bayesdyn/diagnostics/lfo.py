"""Leave-future-out evaluation: forecasts from rolling origins, scored on what came next."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import BayesdynTypeError, BayesdynValueError, check_positive
from .metrics import (
    calibration_error,
    crps_ensemble,
    energy_score,
    interval_coverage,
    pit_values,
)

__all__ = ["rolling_origin"]


def _window(future, origin: float, horizon: float | None):
    """Rows of ``future`` in ``(origin, origin + horizon]``, dropping series with none."""
    from ..data import IrregularTimeSeries

    if horizon is None:
        return future
    t, v, m, ids = [], [], [], []
    for i, ti in enumerate(future.times):
        keep = ti <= origin + horizon
        if keep.any():
            t.append(ti[keep])
            v.append(future.values[i][keep])
            m.append(future.mask[i][keep])
            ids.append(future.ids[i])
    if not t:
        return None
    return IrregularTimeSeries(
        t, v, m, ids=ids, channels=future.channels, require_observed_channels=False
    )


def rolling_origin(
    series,
    origins: Sequence[float],
    forecaster: Callable,
    *,
    horizon: float | None = None,
    levels: Sequence[float] = (0.5, 0.9),
    seed: int = 0,
    progress: bool | None = None,
):
    """Leave-future-out (rolling-origin) evaluation of a forecaster.

    For each origin ``o``: the forecaster sees only the rows with ``time <= o`` and predicts the
    rows in ``(o, o + horizon]`` (all later rows if ``horizon`` is None) of the series that have
    any; the forecasts are scored against them. Whether the forecaster refits at every origin
    (exact leave-future-out) or reuses one fit (cheaper, optimistic when that fit saw the
    future) is up to it.

    Args:
        series: :class:`~bayesdyn.data.IrregularTimeSeries`.
        origins: increasing forecast origins; every series needs a row at or before each.
        forecaster: ``forecaster(past, times) -> samples`` with ``past`` an
            ``IrregularTimeSeries`` (``B'`` series), ``times [B', T']`` the padded times to
            forecast, returning a tensor ``[S, B', T', D]`` (or ``Trajectories`` at ``times``).
        horizon: forecast window length.
        levels: central interval levels for coverage.
        seed: seed of the randomised PIT.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        a pandas DataFrame, one row per origin: ``origin, num_series, num_points, crps,
        energy_score, pit_ks, pit_p_value, coverage_<level>...``; the pooled randomised PIT
        values of all origins are in ``df.attrs["pit"]`` (a numpy array).

    Shapes:
        ``samples [S, B', T', D]`` against the future batch ``values [B', T', D]``.
    """
    import pandas as pd

    from ..data import IrregularTimeSeries
    from ..inference import Trajectories

    if not isinstance(series, IrregularTimeSeries):
        raise BayesdynTypeError(
            f"series must be an IrregularTimeSeries; got {type(series).__name__}"
        )
    if not callable(forecaster):
        raise BayesdynTypeError(f"forecaster must be callable; got {type(forecaster).__name__}")
    o = np.asarray(list(origins), dtype=float)
    if o.ndim != 1 or o.size == 0 or (np.diff(o) <= 0).any():
        raise BayesdynValueError(
            f"origins must be a non-empty increasing sequence of floats; got {list(origins)}"
        )
    if horizon is not None:
        horizon = check_positive("horizon", horizon)
    gen = torch.Generator().manual_seed(seed)
    rows, pits = [], []
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    for origin in tqdm(o, desc="rolling origin", disable=not progress):
        past, future = series.split_time(float(origin))
        future = _window(future, float(origin), horizon)
        if future is None:
            raise BayesdynValueError(
                f"origin {origin:g}: no observation in (origin, origin + horizon] = "
                f"({origin:g}, {origin + horizon:g}]"
            )
        keep = [i for i, sid in enumerate(past.ids) if sid in set(future.ids)]
        past = past[keep]
        fb = future.to_batch()
        samples = forecaster(past, fb.times)
        if isinstance(samples, Trajectories):
            samples = samples.observations.reshape(-1, *samples.observations.shape[-3:])
        if not isinstance(samples, Tensor) or samples.shape[1:] != fb.values.shape:
            raise BayesdynValueError(
                f"origin {origin:g}: forecaster must return samples [S, {', '.join(map(str, fb.values.shape))}]; "
                f"got {getattr(samples, 'shape', type(samples).__name__)}"
            )
        y = fb.values.to(samples.dtype)
        mask = fb.mask
        pit = pit_values(samples, y, mask, randomize=True, generator=gen)
        ks = calibration_error(pit)
        cov = interval_coverage(samples, y, levels, mask)
        row = {
            "origin": float(origin),
            "num_series": len(keep),
            "num_points": int(mask.sum()),
            "crps": float(crps_ensemble(samples, y)[mask].mean()),
            "energy_score": float(energy_score(samples, y, mask).mean()),
            "pit_ks": ks.statistic,
            "pit_p_value": ks.p_value,
        }
        row.update({f"coverage_{lv:g}": c for lv, c in cov.items()})
        rows.append(row)
        pits.append(pit.cpu().numpy())
    df = pd.DataFrame(rows)
    df.attrs["pit"] = np.concatenate(pits)
    return df
