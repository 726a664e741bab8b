"""Event times and marks of irregular series: validation, padded batches and file I/O.

An event sequence belongs to one series and lives in that series' *observation window*
``[times[0], times[-1]]`` (the span of its observation rows; rows may observe nothing, so an
events-only series is just the two window ends with an all-False mask). Event times are finite
and strictly increasing (a simple point process: no two events at one instant); marks are
integers in ``[0, K)``.

Padded event batches follow the library's padding convention: padding entries repeat the
window end, have ``mask=False`` and mark 0, so ``times`` stays non-decreasing. As a single
tensor (the value of a Pyro ``"events"`` site) an event batch is ``[B, N, 2]``: column 0 holds
the time and column 1 the mark, with mark ``-1`` on padding (see :meth:`EventBatch.to_value`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

import numpy as np

from .._validation import BayesdynTypeError, BayesdynValueError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ._series import IrregularTimeSeries

__all__ = [
    "EventBatch",
    "JumpBatch",
    "check_event_sequences",
    "load_point_process",
    "pad_events",
    "read_event_sequences",
    "read_events_csv",
    "write_events_csv",
]

EVENT_COLUMNS = ("id", "time", "mark")


class EventBatch(NamedTuple):
    """Padded event sequences of ``B`` series.

    Attributes:
        times: event times, non-decreasing along ``N`` (padding repeats the window end).
        marks: event marks in ``[0, K)`` (0 on padding).
        mask: True for real events.
        counts: number of events of each series.
        window: observation window ``[start, end]`` of each series.
        num_marks: ``K`` (1 for unmarked events).

    Shapes:
        - ``times``: ``[B, N]`` float; ``marks``: ``[B, N]`` long; ``mask``: ``[B, N]`` bool
        - ``counts``: ``[B]`` long; ``window``: ``[B, 2]`` float
    """

    times: Any
    marks: Any
    mask: Any
    counts: Any
    window: Any
    num_marks: int = 1

    @property
    def num_series(self) -> int:
        """``B``."""
        return int(self.times.shape[0])

    @property
    def max_events(self) -> int:
        """Padded length ``N``."""
        return int(self.times.shape[1])

    def to_value(self):
        """The events as one tensor, the value format of :class:`~bayesdyn.models.TemporalPointProcess`.

        Column 0 is the time, column 1 the mark as a float (``-1`` on padding).

        Shapes:
            returns ``[B, N, 2]``.
        """
        import torch

        marks = torch.where(self.mask, self.marks, torch.full_like(self.marks, -1))
        return torch.stack([self.times, marks.to(self.times.dtype)], dim=-1)

    def subset(self, idx: Any) -> EventBatch:
        """The events of series ``idx``, trimmed to their longest sequence (at least 1 column).

        Shapes: ``idx [B']`` (long indices) -> an :class:`EventBatch` with ``times [B', N']``.
        """
        counts = self.counts[idx]
        n = max(1, int(counts.max())) if counts.numel() else 1
        return EventBatch(
            self.times[idx, :n],
            self.marks[idx, :n],
            self.mask[idx, :n],
            counts,
            self.window[idx],
            self.num_marks,
        )

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> EventBatch:
        """Move to ``device`` and cast ``times``/``window`` to ``dtype``. Shapes: unchanged."""
        if dtype is not None and not dtype.is_floating_point:
            raise BayesdynTypeError(f"dtype must be a floating-point torch dtype; got {dtype}")
        return EventBatch(
            self.times.to(device=device, dtype=dtype),
            self.marks.to(device=device),
            self.mask.to(device=device),
            self.counts.to(device=device),
            self.window.to(device=device, dtype=dtype),
            self.num_marks,
        )


class JumpBatch(NamedTuple):
    """An :class:`~bayesdyn.data.IrregularBatch`'s fields plus the series' events.

    Models of event data (``LatentJumpSDE``) take this; every field of ``IrregularBatch`` keeps
    its meaning, so code that reads only those fields works unchanged.

    Shapes:
        - ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]``,
          ``covariates [B, T, K]`` or None (as in ``IrregularBatch``)
        - ``events``: an :class:`EventBatch` with ``times [B, N]``.
    """

    times: Any
    values: Any
    mask: Any
    lengths: Any
    covariates: Any = None
    events: Optional[EventBatch] = None

    @property
    def num_series(self) -> int:
        """``B``."""
        return int(self.times.shape[0])

    def subset(self, idx: Any) -> JumpBatch:
        """Series ``idx`` with their events, rows trimmed to the longest kept series.

        ``bayesdyn.fit(..., batch_size=...)`` draws mini-batches through this method, so they
        keep the events.

        Shapes: ``idx [B']`` (long indices) -> a :class:`JumpBatch` of ``B'`` series.
        """
        T = int(self.lengths[idx].max())
        return JumpBatch(
            self.times[idx, :T],
            self.values[idx, :T],
            self.mask[idx, :T],
            self.lengths[idx],
            None if self.covariates is None else self.covariates[idx, :T],
            None if self.events is None else self.events.subset(idx),
        )

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> JumpBatch:
        """Move to ``device``/cast float fields to ``dtype``. Shapes: unchanged."""

        def _f(x):
            return None if x is None else x.to(device=device, dtype=dtype)

        return JumpBatch(
            _f(self.times),
            _f(self.values),
            self.mask.to(device=device),
            self.lengths.to(device=device),
            _f(self.covariates),
            None if self.events is None else self.events.to(device, dtype),
        )


def _as_1d(name: str, x: Any, *, integer: bool) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except ValueError as err:
        raise BayesdynValueError(f"{name} could not be converted to an array: {err}") from err
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        kind = "integers" if integer else "real numbers"
        raise BayesdynTypeError(f"{name} must be {kind}; got array of dtype {arr.dtype}")
    if arr.ndim == 0 or arr.ndim > 1:
        raise BayesdynValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if integer:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
                bad = arr[~np.isfinite(arr) | (arr != np.round(arr))][0]
                raise BayesdynTypeError(f"{name} must be integers; got {bad}")
        return arr.astype(np.int64)
    return np.array(arr, dtype=np.float64, copy=True)


def check_event_sequences(
    events: Any,
    marks: Any = None,
    *,
    windows: Sequence[tuple[float, float]],
    num_marks: Optional[int] = None,
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Validate per-series event times and marks against the series' observation windows.

    Args:
        events: one 1-D array of event times per series (an empty array for no events).
        marks: one 1-D integer array per series (same lengths), or None for unmarked events.
        windows: ``(start, end)`` of each series' observation window.
        num_marks: ``K``; default ``max(mark) + 1`` (1 without marks).

    Returns:
        ``(times, marks, K)``: read-only float64 and int64 arrays per series.

    Raises:
        BayesdynTypeError: for non-numeric times or non-integer marks.
        BayesdynValueError: for a wrong number of sequences, non-finite, unsorted or repeated
            times, events outside the window, or marks outside ``[0, K)``.

    Shapes:
        ``events[i]``, ``marks[i]``: ``[N_i]``; ``windows``: ``B`` pairs.
    """
    B = len(windows)
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise BayesdynTypeError(
            f"events must be a sequence of per-series 1-D arrays; got {type(events).__name__}"
        )
    if len(events) != B:
        raise BayesdynValueError(f"events must hold one array per series ({B}); got {len(events)}")
    if marks is not None:
        if isinstance(marks, (str, bytes)) or not isinstance(marks, Sequence):
            raise BayesdynTypeError(
                f"marks must be a sequence of per-series 1-D arrays; got {type(marks).__name__}"
            )
        if len(marks) != B:
            raise BayesdynValueError(
                f"marks must hold one array per series ({B}); got {len(marks)}"
            )
    if num_marks is not None and (
        isinstance(num_marks, bool) or not isinstance(num_marks, (int, np.integer)) or num_marks < 1
    ):
        raise BayesdynValueError(f"num_marks must be a positive integer; got {num_marks!r}")
    out_t: list[np.ndarray] = []
    out_m: list[np.ndarray] = []
    for i in range(B):
        t = _as_1d(f"series {i}: events", events[i], integer=False)
        lo, hi = (float(w) for w in windows[i])
        fin = np.isfinite(t)
        if not fin.all():
            k = int(np.flatnonzero(~fin)[0])
            raise BayesdynValueError(f"series {i}: event times must be finite; events[{k}]={t[k]}")
        if t.size > 1:
            bad = np.flatnonzero(np.diff(t) <= 0)
            if bad.size:
                k = int(bad[0]) + 1
                what = "repeat" if t[k] == t[k - 1] else "must be sorted (strictly increasing)"
                raise BayesdynValueError(
                    f"series {i}: event times {what}; events[{k}]={t[k]} follows "
                    f"events[{k - 1}]={t[k - 1]}"
                )
        outside = (t < lo) | (t > hi)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            raise BayesdynValueError(
                f"series {i}: events must lie in the observation window [{lo:g}, {hi:g}] "
                f"(the span of the series' times); events[{k}]={t[k]:g}"
            )
        if marks is None:
            m = np.zeros(t.shape, dtype=np.int64)
        else:
            m = _as_1d(f"series {i}: marks", marks[i], integer=True)
            if m.shape != t.shape:
                raise BayesdynValueError(
                    f"series {i}: marks has {m.shape[0]} entries but events has {t.shape[0]}"
                )
        t.setflags(write=False)
        m.setflags(write=False)
        out_t.append(t)
        out_m.append(m)
    top = max((int(m.max()) + 1 for m in out_m if m.size), default=1)
    K = top if num_marks is None else int(num_marks)
    for i, m in enumerate(out_m):
        bad = (m < 0) | (m >= K)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise BayesdynValueError(
                f"series {i}: marks must lie in [0, num_marks={K}); marks[{k}]={m[k]}"
            )
    return out_t, out_m, K


def pad_events(
    events: Sequence[np.ndarray],
    marks: Sequence[np.ndarray],
    windows: Sequence[tuple[float, float]],
    num_marks: int,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> EventBatch:
    """Pad validated event sequences (see :func:`check_event_sequences`) into an :class:`EventBatch`.

    Shapes:
        ``events[i]``, ``marks[i]``: ``[N_i]`` -> ``times [B, N]`` with ``N = max(1, max_i N_i)``
        (one padding column when no series has events, so shapes stay non-empty).
    """
    import torch

    dtype = torch.get_default_dtype() if dtype is None else dtype
    B = len(events)
    counts = np.array([e.shape[0] for e in events], dtype=np.int64)
    N = max(1, int(counts.max(initial=0)))
    win = np.asarray(windows, dtype=np.float64).reshape(B, 2)
    times = np.repeat(win[:, 1:2], N, axis=1)
    mk = np.zeros((B, N), dtype=np.int64)
    mask = np.zeros((B, N), dtype=bool)
    for b, (t, m) in enumerate(zip(events, marks, strict=True)):
        n = t.shape[0]
        times[b, :n] = t
        mk[b, :n] = m
        mask[b, :n] = True
    return EventBatch(
        torch.as_tensor(times, device=device).to(dtype),
        torch.as_tensor(mk, device=device),
        torch.as_tensor(mask, device=device),
        torch.as_tensor(counts, device=device),
        torch.as_tensor(win, device=device).to(dtype),
        int(num_marks),
    )


def read_event_sequences(path: Union[str, os.PathLike]) -> list[np.ndarray]:
    """Read a point-process file: one sequence per line, event times separated by whitespace.

    This is the format of the Neural Jump SDE benchmark files (Jia & Benson 2019), whose
    lines end with ``;`` (a sequence terminator; one trailing ``;`` per line is accepted and
    dropped). An empty line is a sequence without events.

    Args:
        path: the text file.

    Returns:
        One float64 array ``[N_i]`` per line.

    Raises:
        BayesdynValueError: if the file is missing, unreadable or holds a non-numeric token
            (the message names the line and the token).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BayesdynTypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise BayesdynValueError(f"path {p!r}: file not found")
    try:
        with open(p, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BayesdynValueError(f"path {p!r}: could not read the file: {e}") from e
    out = []
    for n, line in enumerate(lines, start=1):
        body = line.rstrip()
        if body.endswith(";"):
            body = body[:-1]
        tokens = body.split()
        try:
            out.append(np.array([float(tok) for tok in tokens], dtype=np.float64))
        except ValueError:
            bad = next(tok for tok in tokens if not _is_float(tok))
            raise BayesdynValueError(
                f"path {p!r}, line {n}: expected event times separated by spaces; got token {bad!r}"
            ) from None
    if not out:
        raise BayesdynValueError(f"path {p!r}: the file holds no sequences")
    return out


def _is_float(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def load_point_process(
    path: Union[str, os.PathLike],
    *,
    window: tuple[float, float] = (0.0, 100.0),
    ids: Optional[Sequence[Any]] = None,
) -> IrregularTimeSeries:
    """Load a file of event sequences (see :func:`read_event_sequences`) as series with events.

    Each line becomes an events-only series: its observation rows are the window ends
    ``window[0]`` and ``window[1]`` with nothing observed (one channel ``"value"``, mask
    False), so its observation window is ``window``.

    Args:
        path: the text file, e.g. ``exponential_hawkes_training.csv`` of the Neural Jump SDE
            benchmark (window ``[0, 100]``).
        window: ``(start, end)`` of every sequence's observation window.
        ids: series ids (default ``0..B-1``).

    Returns:
        An :class:`~bayesdyn.data.IrregularTimeSeries` with ``events`` and unmarked events.

    Raises:
        BayesdynValueError: for unreadable files, bad tokens, unsorted events or events
            outside ``window``.

    Shapes:
        ``B`` series of ``[2, 1]`` (all masked) with ``events[i]`` of shape ``[N_i]``.
    """
    from ._series import IrregularTimeSeries

    try:
        if isinstance(window, (str, bytes)):
            raise TypeError
        lo, hi = (float(w) for w in window)
    except (TypeError, ValueError):  # not a pair of numbers (found by the loader fuzzer)
        raise BayesdynTypeError(
            f"window must be a pair of numbers (start, end); got {window!r}"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise BayesdynValueError(
            f"window must be finite (start, end) with start < end; got {window}"
        )
    seqs = read_event_sequences(path)
    B = len(seqs)
    times = [np.array([lo, hi])] * B
    values = [np.zeros((2, 1))] * B
    mask = [np.zeros((2, 1), dtype=bool)] * B
    try:
        return IrregularTimeSeries(
            times,
            values,
            mask,
            ids=ids,
            channels=["value"],
            events=seqs,
            require_observed_channels=False,
        )
    except BayesdynValueError as e:
        # Series i is line i + 1 of the file.
        raise BayesdynValueError(f"path {os.fspath(path)!r} (series i is line i+1): {e}") from e


def write_events_csv(series: IrregularTimeSeries, path: Union[str, os.PathLike]) -> None:
    """Write the events of ``series`` as a long-format CSV: columns ``id``, ``time``, ``mark``.

    One row per event, series in order and events in time order; a series without events has
    no rows. Times are written at full precision (they read back exactly). The number of mark
    categories is not stored: pass it to :func:`read_events_csv` when some mark never occurs.

    Args:
        series: an :class:`~bayesdyn.data.IrregularTimeSeries` with ``events``.
        path: the CSV file to write (replaced atomically).

    Raises:
        BayesdynValueError: if ``series`` has no events.

    Shapes:
        ``series.events[i]``, ``series.marks[i]``: ``[N_i]`` -> ``[sum_i N_i, 3]`` rows.
    """
    import pandas as pd

    if series.events is None:
        raise BayesdynValueError(
            "series has no events to write; expected an IrregularTimeSeries built with events=..."
        )
    counts = [e.shape[0] for e in series.events]
    df = pd.DataFrame(
        {
            "id": [sid for sid, n in zip(series.ids, counts, strict=True) for _ in range(n)],
            "time": np.concatenate([np.zeros(0), *series.events]),
            "mark": np.concatenate([np.zeros(0, dtype=np.int64), *series.marks]),
        }
    )
    p = os.fspath(path)
    tmp = p + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, p)


def read_events_csv(
    path: Union[str, os.PathLike],
    series: IrregularTimeSeries,
    *,
    num_marks: Optional[int] = None,
) -> IrregularTimeSeries:
    """Attach the events of a CSV written by :func:`write_events_csv` to ``series``.

    Rows are matched to series by id, comparing text (``str(id)``), so ids read back from a
    CSV (``IrregularTimeSeries.from_csv``) match. Rows of one series may come in any order
    (they are sorted by time); a series with no rows gets no events. The ``mark`` column may
    be left out (unmarked events).

    Args:
        path: the CSV file (columns ``id``, ``time`` and optionally ``mark``).
        series: the series the events belong to; each event must lie in its series'
            observation window.
        num_marks: ``K`` (default: largest mark + 1), e.g. a jump model's ``num_marks``.

    Returns:
        A copy of ``series`` (channels never observed allowed) with ``events`` and ``marks``.

    Raises:
        BayesdynValueError: if the file is missing or unreadable, lacks a column, holds a
            non-numeric time or mark, an id that is not a series of ``series``, or events that
            :func:`check_event_sequences` rejects (the message names the file).

    Shapes:
        ``[sum_i N_i, 3]`` rows -> ``events[i]``, ``marks[i]``: ``[N_i]`` for the ``B`` series.
    """
    import pandas as pd

    from ._series import IrregularTimeSeries

    if not isinstance(path, (str, os.PathLike)):
        raise BayesdynTypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    if not isinstance(series, IrregularTimeSeries):
        raise BayesdynTypeError(
            f"series must be an IrregularTimeSeries; got {type(series).__name__}"
        )
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise BayesdynValueError(f"path {p!r}: file not found")
    try:
        df = pd.read_csv(p, dtype={"id": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BayesdynValueError(f"path {p!r}: could not read CSV: {msg}") from e
    missing = [c for c in ("id", "time") if c not in df.columns]
    if missing:
        raise BayesdynValueError(
            f"path {p!r}: expected columns {list(EVENT_COLUMNS)} (mark optional); "
            f"missing {missing}, got {list(df.columns)}"
        )
    index = {str(sid): b for b, sid in enumerate(series.ids)}
    if len(index) != len(series):
        raise BayesdynValueError(
            f"series ids must be distinct as text to match an events file; got {series.ids[:10]}"
        )
    ids = df["id"].to_numpy(dtype=object)
    unknown = sorted({str(i) for i in ids} - set(index))
    if unknown:
        raise BayesdynValueError(
            f"path {p!r}: events of unknown series id(s) {unknown[:5]}; expected ids of "
            f"series, e.g. {list(index)[:5]}"
        )
    cols = {}
    for c in ("time", "mark"):
        if c not in df.columns:
            continue
        x = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(x) & df[c].notna().to_numpy())
        bad = bad if bad.size else np.flatnonzero(np.isnan(x))
        if bad.size:
            r = int(bad[0])
            raise BayesdynValueError(
                f"path {p!r}, row {r + 2}: column {c!r} must be a number; got {df[c].iloc[r]!r}"
            )
        cols[c] = x
    rows = np.array([index[str(i)] for i in ids], dtype=np.int64)
    order = np.lexsort((cols["time"], rows))
    bounds = np.searchsorted(rows[order], np.arange(len(series) + 1))
    events = [cols["time"][order[bounds[b] : bounds[b + 1]]] for b in range(len(series))]
    marks = None
    if "mark" in cols:
        marks = [cols["mark"][order[bounds[b] : bounds[b + 1]]] for b in range(len(series))]
    try:
        return IrregularTimeSeries(
            series.times,
            series.values,
            series.mask,
            ids=series.ids,
            channels=series.channels,
            covariates=series.covariates,
            covariate_names=series.covariate_names,
            require_observed_channels=False,
            events=events,
            marks=marks,
            num_marks=num_marks,
        )
    except (BayesdynValueError, BayesdynTypeError) as e:
        raise BayesdynValueError(f"path {p!r}: {e}") from e
