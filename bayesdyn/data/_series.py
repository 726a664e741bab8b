"""Ragged collections of irregularly observed multichannel time series."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from .._validation import BayesdynTypeError, BayesdynValueError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from ._batch import IrregularBatch
    from ._scaler import Scaler

__all__ = ["IrregularTimeSeries"]

_Index = Union[int, slice, Sequence[int], np.ndarray]


def _to_numpy(x: Any) -> np.ndarray:
    # torch tensors are converted without importing torch here.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except ValueError as err:
        raise BayesdynValueError(f"could not convert input to an array: {err}") from err


def _float_array(name: str, x: Any, *, allow_bool: bool = False) -> np.ndarray:
    arr = _to_numpy(x)
    kind = arr.dtype.kind
    if kind == "b" and not allow_bool:
        raise BayesdynTypeError(f"{name} must be real numbers; got bool array")
    if kind not in "biuf":
        raise BayesdynTypeError(f"{name} must be real numbers; got array of dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64, copy=True)


def _bool_mask(name: str, x: Any) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.dtype.kind == "b":
        return np.array(arr, dtype=bool, copy=True)
    if arr.dtype.kind in "iu":
        if arr.size and not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))].ravel()[0]
            raise BayesdynTypeError(
                f"{name} must be bool (or integer 0/1); got integer array containing {bad}"
            )
        return arr.astype(bool)
    raise BayesdynTypeError(f"{name} must be bool (or integer 0/1); got array of dtype {arr.dtype}")


def _split_rows(name: str, x: Any, ndim_batched: int) -> list[Any]:
    """Turn a batched rectangular array into a list of per-series items, leave sequences."""
    if hasattr(x, "ndim") and not isinstance(x, (list, tuple)):
        arr = _to_numpy(x)
        if arr.ndim == ndim_batched:
            return list(arr)
        raise BayesdynValueError(
            f"{name} must be a sequence of per-series arrays or a {ndim_batched}-D array; "
            f"got an array of shape {arr.shape}"
        )
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise BayesdynTypeError(
            f"{name} must be a sequence of per-series arrays; got {type(x).__name__}"
        )
    return list(x)


class IrregularTimeSeries:
    """A ragged collection of ``B`` irregularly observed series with per-channel masks.

    Series ``i`` has ``T_i`` strictly increasing, finite observation times and a
    ``[T_i, D]`` array of values with a matching bool mask (True = observed). Values where the
    mask is False are stored as 0.0; NaN never means "missing" (see :meth:`from_nan`). Rows
    whose mask is entirely False are allowed and kept. All arrays are copied on construction,
    stored as read-only numpy float64/bool arrays, and every check below runs at construction.

    Args:
        times: per-series 1-D arrays ``[T_i]``, or one 2-D ``[B, T]`` array (equal lengths).
        values: per-series arrays ``[T_i, D]`` (a 1-D ``[T_i]`` array means ``D=1``), or one
            3-D ``[B, T, D]`` array.
        mask: per-series bool (or integer 0/1) arrays ``[T_i, D]`` or ``[T_i]`` (broadcast over
            ``D``). Defaults to all True.
        ids: unique, hashable series identifiers; default ``0..B-1``.
        channels: channel names, ``D`` unique strings; default ``"x0".."x{D-1}"``.
        covariates: optional per-series finite float arrays ``[T_i, K]``.
        covariate_names: names of the ``K`` covariates; default ``"u0".."u{K-1}"``.
        require_observed_channels: raise if a channel has no observed value in any series
            (default True; subsets and splits pass False).
        events: optional per-series event times ``[N_i]`` (may be empty), strictly increasing
            and inside the series' observation window ``[times[0], times[-1]]``.
        marks: optional per-series integer marks ``[N_i]`` in ``[0, num_marks)``.
        num_marks: ``K`` (default: largest mark + 1; 1 without marks).

    Raises:
        BayesdynTypeError: for non-numeric, complex or bool times/values, or a non-bool mask.
        BayesdynValueError: for empty series, shape mismatches, non-finite or non-increasing
            times, non-finite observed values, duplicate ids, wrong channel names, or a channel
            that is never observed.

    Shapes:
        - ``times[i]``: ``[T_i]``
        - ``values[i]``, ``mask[i]``: ``[T_i, D]``
        - ``covariates[i]``: ``[T_i, K]``
    """

    def __init__(
        self,
        times: Any,
        values: Any,
        mask: Any = None,
        *,
        ids: Optional[Sequence[Any]] = None,
        channels: Optional[Sequence[str]] = None,
        covariates: Any = None,
        covariate_names: Optional[Sequence[str]] = None,
        require_observed_channels: bool = True,
        events: Any = None,
        marks: Any = None,
        num_marks: Optional[int] = None,
    ) -> None:
        times_l = _split_rows("times", times, 2)
        values_l = _split_rows("values", values, 3)
        B = len(times_l)
        if B == 0:
            raise BayesdynValueError("times must contain at least one series; got 0 series")
        if len(values_l) != B:
            raise BayesdynValueError(
                f"times and values must hold the same number of series; times has {B}, "
                f"values has {len(values_l)}"
            )
        mask_l = None if mask is None else _split_rows("mask", mask, 3)
        if mask_l is not None and len(mask_l) != B:
            raise BayesdynValueError(
                f"mask must hold one array per series ({B}); got {len(mask_l)}"
            )
        cov_l = None if covariates is None else _split_rows("covariates", covariates, 3)
        if cov_l is not None and len(cov_l) != B:
            raise BayesdynValueError(
                f"covariates must hold one array per series ({B}); got {len(cov_l)}"
            )

        out_t: list[np.ndarray] = []
        out_v: list[np.ndarray] = []
        out_m: list[np.ndarray] = []
        out_c: list[np.ndarray] = []
        D: Optional[int] = None
        K: Optional[int] = None
        for i in range(B):
            t = _float_array(f"series {i}: times", times_l[i])
            if t.ndim != 1:
                raise BayesdynValueError(
                    f"series {i}: times must be 1-D [T_i]; got shape {t.shape}"
                )
            if t.shape[0] == 0:
                raise BayesdynValueError(
                    f"series {i}: is empty; every series needs at least one time point (T_i >= 1)"
                )
            _check_times(i, t)
            v = _float_array(f"series {i}: values", values_l[i])
            if v.ndim == 1:
                v = v[:, None]
            if v.ndim != 2:
                raise BayesdynValueError(
                    f"series {i}: values must be 2-D [T_i, D]; got shape {v.shape}"
                )
            if v.shape[0] != t.shape[0]:
                raise BayesdynValueError(
                    f"series {i}: values has {v.shape[0]} rows but times has {t.shape[0]}"
                )
            if D is None:
                D = v.shape[1]
                if D == 0:
                    raise BayesdynValueError("values must have at least one channel; got D=0")
            elif v.shape[1] != D:
                raise BayesdynValueError(
                    f"series {i}: values has {v.shape[1]} channels but series 0 has {D}"
                )
            if mask_l is None:
                m = np.ones(v.shape, dtype=bool)
            else:
                m = _bool_mask(f"series {i}: mask", mask_l[i])
                if m.ndim == 1 and m.shape[0] == v.shape[0]:
                    m = np.repeat(m[:, None], D, axis=1)
                if m.shape != v.shape:
                    raise BayesdynValueError(
                        f"series {i}: mask must have the shape of values {v.shape} (or [T_i]); "
                        f"got {m.shape}"
                    )
            bad = m & ~np.isfinite(v)
            if bad.any():
                r, d = (int(a) for a in np.argwhere(bad)[0])
                raise BayesdynValueError(
                    f"series {i}: values[{r}, {d}]={v[r, d]} is not finite but mask is True; "
                    "mark missing values with mask=False, or build NaN-coded data with "
                    "IrregularTimeSeries.from_nan"
                )
            v[~m] = 0.0
            if cov_l is not None:
                c = _float_array(f"series {i}: covariates", cov_l[i])
                if c.ndim == 1:
                    c = c[:, None]
                if c.ndim != 2 or c.shape[0] != t.shape[0]:
                    raise BayesdynValueError(
                        f"series {i}: covariates must have shape [T_i={t.shape[0]}, K]; "
                        f"got {c.shape}"
                    )
                if K is None:
                    K = c.shape[1]
                elif c.shape[1] != K:
                    raise BayesdynValueError(
                        f"series {i}: covariates has {c.shape[1]} columns but series 0 has {K}"
                    )
                if not np.isfinite(c).all():
                    r, k = (int(a) for a in np.argwhere(~np.isfinite(c))[0])
                    raise BayesdynValueError(
                        f"series {i}: covariates must be finite; covariates[{r}, {k}]={c[r, k]}"
                    )
                c.setflags(write=False)
                out_c.append(c)
            for a in (t, v, m):
                a.setflags(write=False)
            out_t.append(t)
            out_v.append(v)
            out_m.append(m)
        assert D is not None  # internal invariant: B >= 1

        if ids is None:
            ids_l: list[Any] = list(range(B))
        else:
            if isinstance(ids, (str, bytes)):
                raise BayesdynTypeError(f"ids must be a sequence of length {B}; got a string")
            ids_l = [i.item() if isinstance(i, np.generic) else i for i in list(ids)]
            if len(ids_l) != B:
                raise BayesdynValueError(
                    f"ids must have one entry per series ({B}); got {len(ids_l)}"
                )
            seen: dict[Any, int] = {}
            for pos, key in enumerate(ids_l):
                try:
                    hash(key)
                except TypeError:
                    raise BayesdynTypeError(
                        f"ids must be hashable; ids[{pos}] is {type(key).__name__}"
                    ) from None
                if key in seen:
                    raise BayesdynValueError(
                        f"ids must be unique; id {key!r} appears at positions {seen[key]} and {pos}"
                    )
                seen[key] = pos
        self._ids = ids_l
        self._channels = _names("channels", channels, D, "x")
        self._times = out_t
        self._values = out_v
        self._mask = out_m
        self._covariates = out_c if cov_l is not None else None
        self._covariate_names = (
            _names("covariate_names", covariate_names, K, "u") if K is not None else None
        )
        if cov_l is None and covariate_names is not None:
            raise BayesdynValueError("covariate_names was given but covariates is None")

        # Event times and marks (optional); validated against each series' window.
        self._events: Optional[list[np.ndarray]] = None
        self._marks: Optional[list[np.ndarray]] = None
        self._num_marks = 1
        if events is None and (marks is not None or num_marks is not None):
            raise BayesdynValueError("marks/num_marks were given but events is None")
        if events is not None:
            from ._events import check_event_sequences

            self._events, self._marks, self._num_marks = check_event_sequences(
                events,
                marks,
                windows=[(t[0], t[-1]) for t in out_t],
                num_marks=num_marks,
            )

        if require_observed_channels:
            seen_any = np.zeros(D, dtype=bool)
            for m in out_m:
                seen_any |= m.any(axis=0)
            if not seen_any.all():
                d = int(np.flatnonzero(~seen_any)[0])
                raise BayesdynValueError(
                    f"channel {self._channels[d]!r} (index {d}) has no observed value in any "
                    "series; drop the channel or check the mask"
                )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_nan(cls, times: Any, values: Any, **kwargs: Any) -> IrregularTimeSeries:
        """Build from NaN-coded values: NaN means missing (mask False).

        Rows whose values are all NaN are kept as rows with an all-False mask (nothing is
        dropped silently). Infinite values are still an error.

        Args:
            times: as in the constructor.
            values: as in the constructor, with NaN for missing entries.
            **kwargs: ``ids``, ``channels``, ``covariates``, ``covariate_names``,
                ``require_observed_channels``.

        Returns:
            An :class:`IrregularTimeSeries`.

        Shapes:
            - ``times[i]``: ``[T_i]``; ``values[i]``: ``[T_i, D]``.
        """
        if "mask" in kwargs:
            raise BayesdynTypeError("from_nan derives mask from NaN values; do not pass mask")
        values_l = _split_rows("values", values, 3)
        vals = []
        masks = []
        for i, v in enumerate(values_l):
            arr = _float_array(f"series {i}: values", v)
            vals.append(arr)
            masks.append(~np.isnan(arr))
        return cls(times, vals, masks, **kwargs)

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        *,
        id_col: str = "id",
        time_col: str = "time",
        value_cols: Optional[Sequence[str]] = None,
        covariate_cols: Optional[Sequence[str]] = None,
        require_observed_channels: bool = True,
    ) -> IrregularTimeSeries:
        """Build from a long-format pandas DataFrame: one row per (series, time), NaN = missing.

        Series appear in order of first appearance of their id; rows are sorted by time within
        a series (a repeated time within a series is an error).

        Args:
            df: the data frame.
            id_col: column of series ids.
            time_col: column of observation times.
            value_cols: value columns; default all columns other than id, time and covariates.
            covariate_cols: optional columns of (fully observed) covariates.
            require_observed_channels: as in the constructor (False reads a channel with no
                observed value, e.g. the all-NaN frame of events-only series).

        Returns:
            An :class:`IrregularTimeSeries` whose ``channels`` are the value column names.

        Raises:
            BayesdynValueError: for a missing column, NaN ids or times, duplicate times.

        Shapes:
            ``df``: ``[N, columns]``; returns ``B`` series with ``D = len(value_cols)``.
        """
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise BayesdynTypeError(f"df must be a pandas DataFrame; got {type(df).__name__}")
        val_cols, cov_cols = _frame_columns(df, id_col, time_col, value_cols, covariate_cols)
        if len(df) == 0:
            raise BayesdynValueError("df has no rows")
        if df[id_col].isna().any():
            row = int(np.flatnonzero(df[id_col].isna().to_numpy())[0])
            raise BayesdynValueError(f"id_col {id_col!r} has a missing id at row {row}")
        t_all = _numeric_column(df, time_col, "time_col")
        vals_all = np.column_stack([_numeric_column(df, c, "value column") for c in val_cols])
        cov_all = None
        if cov_cols:
            cov_all = np.column_stack(
                [_numeric_column(df, c, "covariate column") for c in cov_cols]
            )
        codes, uniques = pd.factorize(df[id_col], sort=False)
        order = np.lexsort((t_all, codes))  # by series code, then time
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        times_l, vals_l, cov_l = [], [], []
        ids = uniques.tolist()
        for i in range(len(uniques)):
            rows = order[bounds[i] : bounds[i + 1]]
            t = t_all[rows]
            if not np.isfinite(t).all():
                raise BayesdynValueError(
                    f"series {ids[i]!r}: time column {time_col!r} has a missing or non-finite time"
                )
            dup = np.flatnonzero(t[1:] == t[:-1])
            if dup.size:
                raise BayesdynValueError(
                    f"series {ids[i]!r}: duplicate time {t[dup[0]]} (two rows with "
                    f"{time_col}={t[dup[0]]}); each (series, time) pair must appear once"
                )
            times_l.append(t)
            vals_l.append(vals_all[rows])
            if cov_all is not None:
                cov_l.append(cov_all[rows])
        return cls.from_nan(
            times_l,
            vals_l,
            ids=ids,
            channels=[str(c) for c in val_cols],
            covariates=cov_l if cov_all is not None else None,
            covariate_names=[str(c) for c in cov_cols] if cov_cols else None,
            require_observed_channels=require_observed_channels,
        )

    @classmethod
    def from_csv(cls, path: Union[str, os.PathLike], **kwargs: Any) -> IrregularTimeSeries:
        """Read a long-format CSV file (see :meth:`from_dataframe` for the keyword arguments).

        The file is read in chunks of ``CSV_CHUNK_ROWS`` rows, and the time, value and
        covariate columns of each chunk are checked as it arrives: a file of garbage fails at
        its first bad chunk, in bounded memory, without the rest being read.

        Args:
            path: path to the CSV file.
            **kwargs: passed to :meth:`from_dataframe`.

        Returns:
            An :class:`IrregularTimeSeries`.

        Raises:
            BayesdynValueError: if the file is missing, unreadable or cannot be parsed.
            BayesdynTypeError: if a time, value or covariate column holds something that is
                not a number (the message names the first such row).

        Shapes:
            As :meth:`from_dataframe`.
        """
        import pandas as pd

        if not isinstance(path, (str, os.PathLike)):
            raise BayesdynTypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
        p = os.fspath(path)
        if not os.path.exists(p):
            raise BayesdynValueError(f"path {p!r}: file not found")
        if os.path.isdir(p):
            raise BayesdynValueError(f"path {p!r}: is a directory, expected a CSV file")
        cols = {k: kwargs.get(k, d) for k, d in _COLUMN_DEFAULTS.items()}
        # Read in chunks and check each chunk's numeric columns as it arrives, so that a
        # large file of garbage fails at its first bad chunk in bounded memory instead of
        # being parsed whole (as strings) before the first check.
        chunks = []
        try:
            # Ids are read as text and converted once at the end, so that every chunk agrees
            # on an id's type (chunk-wise inference could read id 7 as 7 in one chunk and
            # as "7" in another, silently splitting a series).
            reader = pd.read_csv(p, chunksize=CSV_CHUNK_ROWS, dtype={cols["id_col"]: str})
            with reader:
                for k, chunk in enumerate(reader):
                    if k == 0:
                        val_cols, cov_cols = _frame_columns(chunk, **cols)
                    offset = k * CSV_CHUNK_ROWS
                    _numeric_column(chunk, cols["time_col"], "time_col", offset)
                    for c in val_cols:
                        _numeric_column(chunk, c, "value column", offset)
                    for c in cov_cols:
                        _numeric_column(chunk, c, "covariate column", offset)
                    chunks.append(chunk)
            df = pd.concat(chunks, ignore_index=True) if chunks else pd.read_csv(p, nrows=0)
            if cols["id_col"] in df.columns and len(df):
                ids = df[cols["id_col"]]
                num = pd.to_numeric(ids, errors="coerce")
                if bool((num.notna() | ids.isna()).all()):  # what a whole-file read infers
                    df[cols["id_col"]] = num
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise BayesdynValueError(f"path {p!r}: could not read CSV: {msg}") from e
        return cls.from_dataframe(df, **kwargs)

    @classmethod
    def from_batch(
        cls,
        batch: IrregularBatch,
        ids: Optional[Sequence[Any]] = None,
        channels: Optional[Sequence[str]] = None,
    ) -> IrregularTimeSeries:
        """Invert :meth:`to_batch`: drop padding rows and convert to float64 numpy.

        Args:
            batch: a padded batch.
            ids: series ids (default ``0..B-1``).
            channels: channel names.

        Returns:
            An :class:`IrregularTimeSeries` (channels that are never observed are allowed).

        Shapes:
            ``batch.times [B, T]``, ``batch.values [B, T, D]`` -> ``B`` series ``[T_i, D]``.
        """
        from ._batch import IrregularBatch

        if not isinstance(batch, IrregularBatch):
            raise BayesdynTypeError(f"batch must be an IrregularBatch; got {type(batch).__name__}")
        lengths = _to_numpy(batch.lengths).astype(int)
        t = _to_numpy(batch.times)
        v = _to_numpy(batch.values)
        m = _to_numpy(batch.mask)
        c = None if batch.covariates is None else _to_numpy(batch.covariates)
        return cls(
            [t[b, :n] for b, n in enumerate(lengths)],
            [v[b, :n] for b, n in enumerate(lengths)],
            [m[b, :n] for b, n in enumerate(lengths)],
            ids=ids,
            channels=channels,
            covariates=None if c is None else [c[b, :n] for b, n in enumerate(lengths)],
            require_observed_channels=False,
        )

    # ------------------------------------------------------------------ conversions

    def to_batch(self, dtype: Optional[torch.dtype] = None, device: Any = None) -> IrregularBatch:
        """Pad to a common length and convert to torch tensors.

        Padding rows repeat the series' last time, have ``mask=False`` and ``values=0``;
        covariates are padded by repeating the last row.

        Args:
            dtype: float dtype of times/values/covariates; default ``torch.get_default_dtype()``.
            device: target device.

        Returns:
            An :class:`IrregularBatch`.

        Raises:
            BayesdynValueError: if a narrower ``dtype`` (e.g. float32) would turn an observed
                value or covariate into inf, or round two times of a series to one value.

        Shapes:
            ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]``,
            ``covariates [B, T, K]`` with ``T = max_i T_i``.
        """
        import torch

        from ._batch import IrregularBatch

        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise BayesdynTypeError(f"dtype must be a floating-point torch dtype; got {dtype}")
        lengths = np.array([t.shape[0] for t in self._times])
        B, T, D = len(lengths), int(lengths.max()), self.obs_dim
        times = np.empty((B, T))
        values = np.zeros((B, T, D))
        mask = np.zeros((B, T, D), dtype=bool)
        cov = None if self._covariates is None else np.empty((B, T, self._covariates[0].shape[1]))
        for b, n in enumerate(lengths):
            times[b, :n] = self._times[b]
            times[b, n:] = self._times[b][-1]
            values[b, :n] = self._values[b]
            mask[b, :n] = self._mask[b]
            if cov is not None:
                cov[b, :n] = self._covariates[b]
                cov[b, n:] = self._covariates[b][-1]

        def _f(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=device).to(dtype)

        if dtype != torch.float64:
            _check_representable(dtype, times, values, mask, cov, lengths)
        return IrregularBatch(
            times=_f(times),
            values=_f(values),
            mask=torch.as_tensor(mask, device=device),
            lengths=torch.as_tensor(lengths, dtype=torch.long, device=device),
            covariates=None if cov is None else _f(cov),
        )

    def to_dataframe(self) -> pd.DataFrame:
        """Long-format DataFrame: columns ``id``, ``time``, the channels, then covariates.

        Missing values are NaN. :meth:`from_dataframe` with default arguments (and
        ``covariate_cols=covariate_names``) inverts it.

        Returns:
            A ``pandas.DataFrame`` with one row per (series, time).

        Shapes:
            ``[sum_i T_i, 2 + D + K]``.
        """
        import pandas as pd

        cols: dict[str, Any] = {
            # A plain list lets pandas infer the natural dtype of the ids (int, str, ...).
            "id": [
                k for k, t in zip(self._ids, self._times, strict=True) for _ in range(t.shape[0])
            ],
            "time": np.concatenate(self._times),
        }
        vals = np.concatenate(
            [np.where(m, v, np.nan) for v, m in zip(self._values, self._mask, strict=True)]
        )
        for j, name in enumerate(self._channels):
            if name in cols:
                raise BayesdynValueError(f"channel name {name!r} clashes with a reserved column")
            cols[name] = vals[:, j]
        if self._covariates is not None:
            cov = np.concatenate(self._covariates)
            for k, name in enumerate(self._covariate_names or []):
                if name in cols:
                    raise BayesdynValueError(f"covariate name {name!r} clashes with a column")
                cols[name] = cov[:, k]
        return pd.DataFrame(cols)

    # ------------------------------------------------------------------ container protocol

    def __len__(self) -> int:
        return len(self._times)

    def __getitem__(self, index: _Index) -> IrregularTimeSeries:
        """Subset of series by int, slice, list of ints or bool array (always a collection).

        Args:
            index: an int (a one-series collection), a slice, a sequence or array of ints, or
                a bool array of length ``B``.

        Returns:
            A new :class:`IrregularTimeSeries` (channels need not all be observed in it).

        Raises:
            IndexError: for an out-of-range integer.
            BayesdynValueError: for an empty selection or a bool index of the wrong length.

        Shapes:
            Returns ``B'`` series.
        """
        B = len(self)
        if isinstance(index, (bool, np.bool_)):
            raise BayesdynTypeError("index must be an int, slice, int sequence or bool array")
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -B <= i < B:
                raise IndexError(f"series index {i} out of range for {B} series")
            idx = [i % B]
        elif isinstance(index, slice):
            idx = list(range(B))[index]
        else:
            arr = _to_numpy(index)
            if arr.dtype.kind == "b":
                if arr.shape != (B,):
                    raise BayesdynValueError(f"bool index must have shape ({B},); got {arr.shape}")
                idx = np.flatnonzero(arr).tolist()
            elif arr.dtype.kind in "iu" or arr.size == 0:
                arr = arr.astype(int).reshape(-1)
                if arr.size and (arr.min() < -B or arr.max() >= B):
                    raise IndexError(f"series index out of range for {B} series: {arr.tolist()}")
                idx = (arr % B).tolist() if arr.size else []
            else:
                raise BayesdynTypeError(
                    f"index must be an int, slice, int sequence or bool array; got dtype {arr.dtype}"
                )
        if not idx:
            raise BayesdynValueError("index selects no series; a subset must be non-empty")
        return self._subset(idx)

    def _subset(self, idx: Sequence[int]) -> IrregularTimeSeries:
        return self._replace_rows(
            [self._times[i] for i in idx],
            [self._values[i] for i in idx],
            [self._mask[i] for i in idx],
            None if self._covariates is None else [self._covariates[i] for i in idx],
            [self._ids[i] for i in idx],
            events=None if self._events is None else [self._events[i] for i in idx],
            marks=None if self._marks is None else [self._marks[i] for i in idx],
        )

    def _replace_rows(
        self,
        times: list[np.ndarray],
        values: list[np.ndarray],
        mask: list[np.ndarray],
        cov: Optional[list[np.ndarray]],
        ids: list[Any],
        events: Optional[list[np.ndarray]] = None,
        marks: Optional[list[np.ndarray]] = None,
    ) -> IrregularTimeSeries:
        return IrregularTimeSeries(
            times,
            values,
            mask,
            ids=ids,
            channels=self._channels,
            covariates=cov,
            covariate_names=self._covariate_names,
            require_observed_channels=False,
            events=events,
            marks=marks,
            num_marks=None if events is None else self._num_marks,
        )

    def __repr__(self) -> str:
        n = np.array([t.shape[0] for t in self._times])
        total = sum(m.size for m in self._mask)
        frac = self.num_observed / total if total else 0.0
        cov = "" if self._covariates is None else f", covariates={self._covariate_names}"
        if self._events is not None:
            cov += f", events={sum(e.shape[0] for e in self._events)} (num_marks={self._num_marks})"
        return (
            f"IrregularTimeSeries(num_series={len(self)}, obs_dim={self.obs_dim}, "
            f"channels={self._channels}, rows {n.min()}..{n.max()}, "
            f"t in [{self.t_min:g}, {self.t_max:g}], observed {frac:.1%}{cov})"
        )

    # ------------------------------------------------------------------ properties

    @property
    def num_series(self) -> int:
        """Number of series ``B``."""
        return len(self._times)

    @property
    def obs_dim(self) -> int:
        """Number of channels ``D``."""
        return len(self._channels)

    @property
    def ids(self) -> list[Any]:
        """Series ids (a new list)."""
        return list(self._ids)

    @property
    def channels(self) -> list[str]:
        """Channel names (a new list)."""
        return list(self._channels)

    @property
    def covariate_names(self) -> Optional[list[str]]:
        """Covariate names, or None without covariates."""
        return None if self._covariate_names is None else list(self._covariate_names)

    @property
    def times(self) -> list[np.ndarray]:
        """Per-series read-only time arrays ``[T_i]``."""
        return list(self._times)

    @property
    def values(self) -> list[np.ndarray]:
        """Per-series read-only value arrays ``[T_i, D]`` (0.0 where unobserved)."""
        return list(self._values)

    @property
    def mask(self) -> list[np.ndarray]:
        """Per-series read-only bool masks ``[T_i, D]``."""
        return list(self._mask)

    @property
    def events(self) -> Optional[list[np.ndarray]]:
        """Per-series read-only event times ``[N_i]``, or None without events."""
        return None if self._events is None else list(self._events)

    @property
    def marks(self) -> Optional[list[np.ndarray]]:
        """Per-series read-only int64 marks ``[N_i]`` (zeros when unmarked), or None."""
        return None if self._marks is None else list(self._marks)

    @property
    def num_marks(self) -> int:
        """Number of mark categories ``K`` (1 for unmarked events or no events)."""
        return self._num_marks

    @property
    def windows(self) -> list[tuple[float, float]]:
        """Observation window ``(times[0], times[-1])`` of each series (where events may lie)."""
        return [(float(t[0]), float(t[-1])) for t in self._times]

    def to_event_batch(self, dtype: Optional[torch.dtype] = None, device: Any = None):
        """Pad the events to an :class:`~bayesdyn.data.EventBatch`.

        Raises:
            BayesdynValueError: if the collection has no events.

        Shapes:
            ``times [B, N]``, ``marks [B, N]``, ``mask [B, N]``, ``counts [B]``, ``window [B, 2]``.
        """
        from ._events import pad_events

        if self._events is None:
            raise BayesdynValueError(
                "this IrregularTimeSeries has no events; pass events=... when building it"
            )
        return pad_events(
            self._events, self._marks, self.windows, self._num_marks, dtype=dtype, device=device
        )

    def to_jump_batch(self, dtype: Optional[torch.dtype] = None, device: Any = None):
        """:meth:`to_batch` plus the padded events, as a :class:`~bayesdyn.data.JumpBatch`.

        Shapes:
            as :meth:`to_batch`, plus ``events.times [B, N]``.
        """
        from ._events import JumpBatch

        b = self.to_batch(dtype=dtype, device=device)
        return JumpBatch(*b, events=self.to_event_batch(dtype=dtype, device=device))

    @property
    def covariates(self) -> Optional[list[np.ndarray]]:
        """Per-series read-only covariate arrays ``[T_i, K]``, or None."""
        return None if self._covariates is None else list(self._covariates)

    @property
    def lengths(self) -> list[int]:
        """Number of rows ``T_i`` of each series."""
        return [t.shape[0] for t in self._times]

    @property
    def t_min(self) -> float:
        """Earliest time over all series."""
        return float(min(t[0] for t in self._times))

    @property
    def t_max(self) -> float:
        """Latest time over all series."""
        return float(max(t[-1] for t in self._times))

    @property
    def num_observed(self) -> int:
        """Total number of observed values (mask True) over all series and channels."""
        return int(sum(m.sum() for m in self._mask))

    # ------------------------------------------------------------------ splits and scaling

    def split_series(
        self, test_fraction: float = 0.2, *, seed: int = 0
    ) -> tuple[IrregularTimeSeries, IrregularTimeSeries]:
        """Randomly split the series into a training and a test collection.

        The test set holds ``round(test_fraction * B)`` series; both parts keep the original
        series order.

        Args:
            test_fraction: fraction of series in the test set, in (0, 1).
            seed: seed of the numpy generator choosing the test series.

        Returns:
            ``(train, test)``.

        Raises:
            BayesdynValueError: if either part would be empty.

        Shapes:
            ``B`` series -> ``B - n_test`` and ``n_test`` series.
        """
        f = float(test_fraction)
        if not 0.0 < f < 1.0:
            raise BayesdynValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
        B = len(self)
        n_test = int(round(f * B))
        if n_test < 1 or n_test > B - 1:
            raise BayesdynValueError(
                f"test_fraction={test_fraction} with {B} series gives {n_test} test and "
                f"{B - n_test} training series; both must be non-empty"
            )
        perm = np.random.default_rng(seed).permutation(B)
        test_idx = np.sort(perm[:n_test])
        train_idx = np.sort(perm[n_test:])
        return self._subset(train_idx.tolist()), self._subset(test_idx.tolist())

    def split_time(self, origin: float) -> tuple[IrregularTimeSeries, IrregularTimeSeries]:
        """Split every series at a forecast origin.

        ``past`` holds the rows with ``time <= origin`` of every series; ``future`` holds the
        rows with ``time > origin`` of those series that have any, so a series with no row
        after ``origin`` is absent from ``future`` (compare ``future.ids`` with ``past.ids``).

        Args:
            origin: the forecast origin.

        Returns:
            ``(past, future)``.

        Raises:
            BayesdynValueError: if a series has no row at or before ``origin``, or no series has
                a row after it.

        Shapes:
            ``B`` series -> ``B`` past series and ``B' <= B`` future series.
        """
        o = float(origin)
        if not np.isfinite(o):
            raise BayesdynValueError(f"origin must be finite; got {origin}")
        past, fut = [], []
        for i, t in enumerate(self._times):
            n = int(np.searchsorted(t, o, side="right"))
            if n == 0:
                raise BayesdynValueError(
                    f"series {i} (id {self._ids[i]!r}) has no row at or before origin={o}; "
                    f"its first time is {t[0]}"
                )
            past.append((i, slice(0, n)))
            if self._events is not None and n < t.shape[0]:
                e = self._events[i]
                gap = e[(e > t[n - 1]) & (e < t[n])]
                if gap.size:
                    raise BayesdynValueError(
                        f"series {i}: event at {gap[0]:g} lies between the last row before the "
                        f"origin ({t[n - 1]:g}) and the first row after it ({t[n]:g}), so "
                        "split_time would drop it; add an unobserved row at the origin first"
                    )
            if n < t.shape[0]:
                fut.append((i, slice(n, None)))
        if not fut:
            raise BayesdynValueError(
                f"origin={o} is at or after the last time of every series (t_max={self.t_max}); "
                "the future part would be empty"
            )
        return self._take(past), self._take(fut)

    def _take(self, parts: list[tuple[int, slice]]) -> IrregularTimeSeries:
        times = [self._times[i][s] for i, s in parts]
        events = marks = None
        if self._events is not None:
            # Each part keeps the events inside its own window (split_time has checked that
            # no event falls between the parts).
            events, marks = [], []
            for (i, _), t in zip(parts, times, strict=True):
                e = self._events[i]
                keep = (e >= t[0]) & (e <= t[-1])
                events.append(e[keep])
                marks.append(self._marks[i][keep])
        return self._replace_rows(
            times,
            [self._values[i][s] for i, s in parts],
            [self._mask[i][s] for i, s in parts],
            None if self._covariates is None else [self._covariates[i][s] for i, s in parts],
            [self._ids[i] for i, _ in parts],
            events=events,
            marks=marks,
        )

    def standardize(self, scaler: Optional[Scaler] = None) -> tuple[IrregularTimeSeries, Scaler]:
        """Standardize every channel with a :class:`Scaler` (fitted here when not given).

        Args:
            scaler: a fitted scaler to reuse (e.g. the training set's), or None to fit one on
                the observed values of this collection.

        Returns:
            ``(scaled, scaler)``.

        Shapes:
            Unchanged ``[T_i, D]`` per series; ``scaler.mean``/``scaler.std`` are ``[D]``.
        """
        from ._scaler import Scaler

        if scaler is None:
            scaler = Scaler.fit(self)
        elif not isinstance(scaler, Scaler):
            raise BayesdynTypeError(f"scaler must be a Scaler or None; got {type(scaler).__name__}")
        return scaler.transform(self), scaler

    def _with_values(self, values: list[np.ndarray]) -> IrregularTimeSeries:
        return self._replace_rows(
            self._times,
            values,
            self._mask,
            self._covariates,
            self._ids,
            events=self._events,
            marks=self._marks,
        )


def _check_representable(
    dtype: Any,
    times: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray,
    cov: Optional[np.ndarray],
    lengths: np.ndarray,
) -> None:
    """Refuse a cast to a narrower float dtype that would silently change the data.

    A float64 value beyond the dtype's range becomes inf, and distinct float64 times can round
    to the same value, so valid rows would no longer be strictly increasing.
    """
    import torch

    np_dtype = torch.empty((), dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else None
    with np.errstate(over="ignore"):
        if np_dtype is None:  # bfloat16 has no numpy dtype: round through torch

            def cast(a: np.ndarray) -> np.ndarray:
                return torch.from_numpy(a).to(dtype).to(torch.float64).numpy()
        else:

            def cast(a: np.ndarray) -> np.ndarray:
                return a.astype(np_dtype).astype(np.float64)

        hint = "standardize the data first (IrregularTimeSeries.standardize) or use dtype=torch.float64"
        for name, arr, keep in (("values", values, mask), ("covariates", cov, None)):
            if arr is None:
                continue
            bad = ~np.isfinite(cast(arr))
            if keep is not None:
                bad &= keep
            if bad.any():
                b, r, d = (int(a) for a in np.argwhere(bad)[0])
                raise BayesdynValueError(
                    f"to_batch(dtype={dtype}): series {b}: {name}[{r}, {d}]={arr[b, r, d]} "
                    f"overflows {dtype}; {hint}"
                )
        t = cast(times)
        if not np.isfinite(t).all():
            b, r = (int(a) for a in np.argwhere(~np.isfinite(t))[0])
            raise BayesdynValueError(
                f"to_batch(dtype={dtype}): series {b}: times[{r}]={times[b, r]} overflows "
                f"{dtype}; {hint}"
            )
        if t.shape[1] > 1:
            valid = np.arange(1, t.shape[1])[None, :] < lengths[:, None]
            bad = (t[:, 1:] <= t[:, :-1]) & valid
            if bad.any():
                b, r = (int(a) for a in np.argwhere(bad)[0])
                raise BayesdynValueError(
                    f"to_batch(dtype={dtype}): series {b}: times[{r + 1}]={times[b, r + 1]!r} "
                    f"and times[{r}]={times[b, r]!r} round to the same {dtype} value; shift or "
                    "rescale the times (e.g. subtract the start time) or use dtype=torch.float64"
                )


#: Rows per chunk when reading a CSV (see :meth:`IrregularTimeSeries.from_csv`).
CSV_CHUNK_ROWS = 1 << 16

_COLUMN_DEFAULTS = {"id_col": "id", "time_col": "time", "value_cols": None, "covariate_cols": None}


def _frame_columns(
    df: pd.DataFrame,
    id_col: Any = "id",
    time_col: Any = "time",
    value_cols: Optional[Sequence[str]] = None,
    covariate_cols: Optional[Sequence[str]] = None,
) -> tuple[list[Any], list[Any]]:
    """Resolve and check the value and covariate columns of a long-format frame."""
    available = [str(c) for c in df.columns]
    cov_cols = list(covariate_cols) if covariate_cols is not None else []
    if value_cols is None:
        skip = {id_col, time_col, *cov_cols}
        val_cols = [c for c in df.columns if c not in skip]
    else:
        if isinstance(value_cols, str):
            value_cols = [value_cols]
        val_cols = list(value_cols)
    for arg, cols in (("id_col", [id_col]), ("time_col", [time_col]),
                      ("value_cols", val_cols), ("covariate_cols", cov_cols)):  # fmt: skip
        for c in cols:
            if c not in df.columns:
                raise BayesdynValueError(
                    f"{arg}: column {c!r} not found; available columns: {available}"
                )
    if not val_cols:
        raise BayesdynValueError(
            f"value_cols: no value columns left; available columns: {available}"
        )
    return val_cols, cov_cols


def _numeric_column(df: pd.DataFrame, col: Any, what: str, row_offset: int = 0) -> np.ndarray:
    import pandas as pd

    s = df[col]
    if (
        pd.api.types.is_bool_dtype(s)
        or not pd.api.types.is_numeric_dtype(s)
        or pd.api.types.is_complex_dtype(s)
    ):
        where = ""
        if not pd.api.types.is_bool_dtype(s):
            # Name the first entry that is not a number (e.g. a garbage row in a CSV).
            bad = pd.to_numeric(s, errors="coerce").isna().to_numpy() & s.notna().to_numpy()
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                where = f" (row {row_offset + r} holds {str(s.iloc[r])[:40]!r})"
        raise BayesdynTypeError(
            f"{what} {col!r} must hold real numbers; got dtype {s.dtype}{where}"
        )
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _names(arg: str, names: Optional[Sequence[str]], n: int, prefix: str) -> list[str]:
    if names is None:
        return [f"{prefix}{j}" for j in range(n)]
    if isinstance(names, str):
        names = [names]
    out = list(names)
    if len(out) != n:
        raise BayesdynValueError(
            f"{arg} must have {n} names (one per column); got {len(out)}: {out}"
        )
    for j, c in enumerate(out):
        if not isinstance(c, str):
            raise BayesdynTypeError(f"{arg}[{j}] must be a str; got {type(c).__name__} {c!r}")
    if len(set(out)) != n:
        raise BayesdynValueError(f"{arg} must be unique; got {out}")
    return out


def _check_times(i: int, t: np.ndarray) -> None:
    fin = np.isfinite(t)
    if not fin.all():
        k = int(np.flatnonzero(~fin)[0])
        raise BayesdynValueError(f"series {i}: times must be finite; times[{k}]={t[k]}")
    if t.shape[0] > 1:
        # Compare neighbours instead of np.diff, which overflows (a warning) for huge times.
        bad = np.flatnonzero(t[1:] <= t[:-1])
        if bad.size:
            k = int(bad[0]) + 1
            if t[k] == t[k - 1]:
                raise BayesdynValueError(
                    f"series {i}: duplicate time; times[{k}]={t[k]} equals times[{k - 1}]="
                    f"{t[k - 1]} (times must be strictly increasing)"
                )
            raise BayesdynValueError(
                f"series {i}: times must be strictly increasing; times[{k}]={t[k]} follows "
                f"times[{k - 1}]={t[k - 1]}"
            )
