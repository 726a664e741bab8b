"""The one place that imports ArviZ.

Everything else in bayesdyn builds plain groups (``{group: {var: (dims, array)}}`` plus
coordinates) and hands them to :func:`make_inference_data`; ArviZ calls used by the report go
through the small wrappers below. That keeps the 0.x / 1.x difference in this file:

- ArviZ 0.x (tested: 0.23): groups become ``xarray.Dataset``s inside ``arviz.InferenceData``.
  We build the datasets ourselves instead of calling ``arviz.from_dict``, which in 0.23 ignores
  ``pred_coords`` (so ``predictions`` could not get its own ``forecast_time`` coordinate).
- ArviZ 1.x: the container is an ``xarray.DataTree`` with one child per group.
  :func:`datasets_to_datatree` builds it (it needs only xarray and is tested here); the
  statistics functions keep their names (``summary``, ``loo``) in ArviZ 1.x. To switch, extend
  the ``pyproject`` range and check :func:`summary` / :func:`loo` / :func:`from_netcdf` against
  1.x's signatures (``from_netcdf`` becomes ``xarray.open_datatree``).
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .._validation import BayesdynValueError

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.x refactor with a FutureWarning at import; the note is for
    # ArviZ users writing code against it, not for bayesdyn's users, so keep it off their screen.
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
    import arviz as az

__all__ = [
    "ARVIZ_MAJOR",
    "GROUPS",
    "datasets_to_datatree",
    "from_netcdf",
    "loo",
    "make_inference_data",
    "summary",
    "to_netcdf",
    "waic",
]

#: Major version of the installed ArviZ (0 or 1).
ARVIZ_MAJOR = int(az.__version__.split(".")[0])

#: Group names in ArviZ's schema that bayesdyn fills, in ArviZ's order.
GROUPS = (
    "posterior",
    "posterior_predictive",
    "predictions",
    "log_likelihood",
    "sample_stats",
    "observed_data",
    "constant_data",
)

GroupVars = Mapping[str, tuple[Sequence[str], np.ndarray]]


def _dataset(variables: GroupVars, coords: Mapping[str, Any], attrs: Mapping[str, Any]):
    """One group as an ``xarray.Dataset`` with only the coordinates its variables use."""
    used = {d for dims, _ in variables.values() for d in dims}
    cs: dict[str, Any] = {}
    for name, value in coords.items():
        if isinstance(value, tuple):  # non-dimension coordinate: (dims, values)
            if set(value[0]) <= used:
                cs[name] = value
        elif name in used:
            cs[name] = value
    for dim in ("chain", "draw"):
        if dim in used and dim not in cs:
            n = next(a.shape[list(d).index(dim)] for d, a in variables.values() if dim in d)
            cs[dim] = np.arange(n)
    data_vars = {}
    for name, (dims, array) in variables.items():
        array = np.asarray(array)
        if array.ndim != len(dims):
            raise BayesdynValueError(
                f"variable {name!r} has {array.ndim} dims but names {len(dims)}: {list(dims)}"
            )
        data_vars[name] = (tuple(dims), array)
    return xr.Dataset(data_vars, coords=cs, attrs=dict(attrs))


def make_inference_data(
    groups: Mapping[str, GroupVars],
    coords: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
):
    """Build ArviZ's container from plain groups.

    Args:
        groups: ``{group: {var: (dims, array)}}``; group names from :data:`GROUPS`.
        coords: coordinate values by dimension name, or ``(dims, values)`` for a non-dimension
            coordinate (e.g. the time of each observation).
        attrs: extra attributes stored on every group.

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).
    """
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise BayesdynValueError(f"unknown group(s) {unknown}; expected names from {GROUPS}")
    base = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "arviz_version": az.__version__,
        "inference_library": "bayesdyn",
        **(attrs or {}),
    }
    datasets = {g: _dataset(groups[g], coords, base) for g in GROUPS if g in groups}
    if ARVIZ_MAJOR >= 1:  # pragma: no cover - the pinned ArviZ is 0.x
        return datasets_to_datatree(datasets)
    return az.InferenceData(**datasets)


def datasets_to_datatree(datasets: Mapping[str, xr.Dataset]) -> xr.DataTree:
    """ArviZ 1.x's container: an ``xarray.DataTree`` with one child node per group."""
    return xr.DataTree.from_dict({f"/{g}": ds for g, ds in datasets.items()})


def summary(idata, var_names: Sequence[str] | None = None, **kwargs):
    """``arviz.summary`` (mean, sd, HDI, MCSE, ESS, R-hat) with a column for fixed parameters.

    A variable whose draws are constant within every chain (a variational point estimate per
    ensemble member, e.g. the observation scale) has no within-chain variance, so its MCSE, ESS
    and R-hat are undefined: it gets ArviZ's statistics only, NaN diagnostics and
    ``fixed_per_chain = True``; its ``sd`` is then the spread across members.

    Returns:
        a pandas DataFrame indexed like ``arviz.summary``'s, plus ``fixed_per_chain``.
    """
    import pandas as pd

    post = idata.posterior
    names = list(post.data_vars) if var_names is None else list(var_names)
    fixed = [v for v in names if bool((post[v] == post[v].isel(draw=0)).all())]
    varying = [v for v in names if v not in fixed]
    parts = []
    if varying:
        table = _quiet(az.summary, idata, var_names=varying, **kwargs)
        parts.append(table.assign(fixed_per_chain=False))
    if fixed:
        stats = az.summary(idata, var_names=fixed, kind="stats", **kwargs)
        parts.append(stats.assign(fixed_per_chain=True))
    out = pd.concat(parts)
    order = [c for c in out.columns if c != "fixed_per_chain"] + ["fixed_per_chain"]
    return out[order]


def _quiet(fn, *args, **kwargs):
    """Call an ArviZ statistic, keeping its Pareto-k / variance warnings off the screen.

    The conditions they report are part of the returned object (``warning`` and ``pareto_k``
    for LOO, ``warning`` for WAIC), and the report explains them in words.
    """
    # ArviZ 0.x logs through its own Logger object (not registered with logging.getLogger)
    logger = getattr(az, "_log", None) or logging.getLogger("arviz")
    level = logger.level
    # With one chain (a single fit) ArviZ logs "Shape validation failed" for R-hat and returns
    # NaN, which is the documented answer there; the report says so in words.
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="arviz")
            return fn(*args, **kwargs)
    finally:
        logger.setLevel(level)


def loo(idata, **kwargs):
    """``arviz.loo`` (PSIS-LOO, pointwise, with Pareto k) on the ``log_likelihood`` group."""
    return _quiet(az.loo, idata, pointwise=True, **kwargs)


def waic(idata, **kwargs):
    """``arviz.waic`` (pointwise) on the ``log_likelihood`` group."""
    return _quiet(az.waic, idata, pointwise=True, **kwargs)


def to_netcdf(idata, path: str | os.PathLike) -> str:
    """Write all groups to one netCDF file (``h5netcdf`` engine); returns the path."""
    return idata.to_netcdf(str(path), engine="h5netcdf")


def from_netcdf(path: str | os.PathLike):
    """Read a file written by :func:`to_netcdf` back into ArviZ's container (in memory)."""
    if not os.path.isfile(path):
        raise BayesdynValueError(f"netCDF file {str(path)!r} does not exist")
    return az.from_netcdf(str(path), engine="h5netcdf")
