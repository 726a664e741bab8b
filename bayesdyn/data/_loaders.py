"""Loaders for the small data sets bundled in ``bayesdyn/data/datasets``."""

from __future__ import annotations

from importlib import resources
from typing import Optional

import numpy as np

from .._validation import BayesdynTypeError, BayesdynValueError
from ._series import IrregularTimeSeries

__all__ = ["load_brusselator", "load_lynx_hare"]

#: Number of Brusselator series bundled with the package.
NUM_BRUSSELATOR_SERIES = 200


def _read_bundled(name: str):  # -> pandas.DataFrame
    import pandas as pd

    # importlib.resources works from wheels and zip imports, not only from a source tree.
    ref = resources.files("bayesdyn.data").joinpath("datasets", name)
    with ref.open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh)


def load_lynx_hare() -> IrregularTimeSeries:
    """Hudson Bay lynx and hare pelts (thousands), annual 1900–1920: one series.

    Times are the years as floats; channels are ``["lynx", "hare"]`` in the file's column order;
    the series id is ``"hudson_bay"``. Every value is observed.

    Returns:
        An :class:`IrregularTimeSeries` with one series.

    Shapes:
        ``times [21]``, ``values [21, 2]``.
    """
    df = _read_bundled("lynx_hare.csv")
    times = df["Year"].to_numpy(dtype=np.float64)
    values = df[["Lynx", "Hare"]].to_numpy(dtype=np.float64)
    return IrregularTimeSeries([times], [values], ids=["hudson_bay"], channels=["lynx", "hare"])


def load_brusselator(num_series: Optional[int] = None) -> IrregularTimeSeries:
    """Sporadically observed stochastic Brusselator (GRU-ODE-Bayes), first 200 series.

    Rows are sorted by time within each series (the file is not). Masks come from the
    ``Mask_1``/``Mask_2`` columns; the bundled file has no row with both masks 0 (such rows
    would be kept with an all-False mask). The ``Cov`` column is constant 0 and is omitted.

    Args:
        num_series: number of series to load (the first ones by ID), at most 200; None loads
            all 200.

    Returns:
        An :class:`IrregularTimeSeries` with integer ``ids`` and channels
        ``["value_1", "value_2"]``, times in ``[0, 50]``.

    Shapes:
        ``B`` series with ``times [T_i]``, ``values [T_i, 2]``.
    """
    if num_series is not None:
        if isinstance(num_series, bool) or not isinstance(num_series, (int, np.integer)):
            raise BayesdynTypeError(
                f"num_series must be an int or None; got {type(num_series).__name__}"
            )
        if not 1 <= num_series <= NUM_BRUSSELATOR_SERIES:
            raise BayesdynValueError(
                f"num_series must lie in [1, {NUM_BRUSSELATOR_SERIES}]; got {num_series}"
            )
    df = _read_bundled("brusselator.csv")
    ids_all = df["ID"].to_numpy().astype(np.int64)
    keep_ids = np.unique(ids_all)
    if num_series is not None:
        keep_ids = keep_ids[:num_series]
    df = df.assign(ID=ids_all)
    df = df[df["ID"].isin(keep_ids)].sort_values(["ID", "Time"], kind="stable")
    cov = df["Cov"].to_numpy()
    # Keep covariates only when they carry information (they are all 0 in the bundled file).
    keep_cov = bool(np.ptp(cov) > 0)
    times, values, masks, covs, ids = [], [], [], [], []
    for key, g in df.groupby("ID", sort=True):
        ids.append(int(key))
        times.append(g["Time"].to_numpy(dtype=np.float64))
        values.append(g[["Value_1", "Value_2"]].to_numpy(dtype=np.float64))
        masks.append(g[["Mask_1", "Mask_2"]].to_numpy() != 0)
        covs.append(g[["Cov"]].to_numpy(dtype=np.float64))
    return IrregularTimeSeries(
        times,
        values,
        masks,
        ids=ids,
        channels=["value_1", "value_2"],
        covariates=covs if keep_cov else None,
        covariate_names=["cov"] if keep_cov else None,
    )
