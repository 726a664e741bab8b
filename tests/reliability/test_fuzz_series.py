"""Property-based fuzzing of every IrregularTimeSeries constructor (hypothesis, fixed profile).

Inputs: ragged shapes, NaN and inf anywhere, unsorted and duplicate times, empty series,
wrong dtypes (bool, complex, strings, objects, None), huge and tiny values, and near-valid
data with one or more of these faults injected. Each call must end in a valid object with an
exact ``to_batch()`` round trip or in a named bayesdyn error (see ``_fuzz.outcome``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import IrregularBatch, IrregularTimeSeries, ensure_batch
from tests.reliability._fuzz import FUZZ, NAMED_ERRORS, outcome

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 3.5e38, 5e-324, 1e-300, np.nan, np.inf, -np.inf]
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL))
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.complex_numbers(max_magnitude=10),
    st.integers(-(2**70), 2**70),
    st.just(object()),
)
NUMERIC_DTYPES = ["float64", "float32", "float16", "int64", "int8", "uint8", "bool"]


def _cast(arr: np.ndarray, dtype: str):
    with np.errstate(all="ignore"):
        if dtype in ("float64", "float32", "float16"):
            return arr.astype(dtype)
        if dtype == "bool":
            return np.nan_to_num(arr) != 0
        if dtype in ("complex128", "U3", "object"):
            return arr.astype(dtype)
        info = np.iinfo(dtype)
        return np.clip(np.nan_to_num(arr), info.min, info.max).astype(dtype)


@st.composite
def valid_parts(draw):
    """Near-valid ragged data: B series, increasing times, D channels, random masks."""
    B = draw(st.integers(1, 4))
    D = draw(st.integers(1, 3))
    times, values, masks = [], [], []
    for _ in range(B):
        T = draw(st.integers(1, 6))
        gaps = draw(st.lists(st.floats(1e-3, 10.0), min_size=T, max_size=T))
        t0 = draw(st.floats(-1e3, 1e3))
        times.append(t0 + np.cumsum(gaps))
        values.append(
            np.array(draw(st.lists(FLOATS, min_size=T * D, max_size=T * D))).reshape(T, D)
        )
        masks.append(
            np.array(draw(st.lists(st.booleans(), min_size=T * D, max_size=T * D))).reshape(T, D)
        )
    return times, values, masks


FAULTS = [
    "none",
    "shuffle_times",
    "duplicate_time",
    "nan_time",
    "inf_time",
    "empty_series",
    "drop_value_row",
    "extra_channel",
    "values_dtype",
    "times_dtype",
    "mask_dtype",
    "junk_value",
    "junk_time",
    "huge_time",
    "nested_ragged",
    "mask_int",
    "mask_1d",
    "torch_input",
    "2d_times",
]


def _arr(x):
    """A numpy view of an input part when it is array-like, else None (fault not applicable)."""
    if isinstance(x, torch.Tensor):
        return x.numpy()
    try:
        a = np.asarray(x)
    except ValueError:  # ragged nested lists
        return None
    return a if a.dtype != object else None


def inject(draw, fault, times, values, masks):
    """Apply one fault to the per-series lists in place (skipped where it does not apply)."""
    i = draw(st.integers(0, len(times) - 1))
    t, v, m = _arr(times[i]), _arr(values[i]), _arr(masks[i])
    if t is None or v is None or m is None or t.ndim != 1 or v.ndim != 2 or t.size == 0:
        return
    # Faults that recast a part through float apply to real-valued parts only: an earlier
    # fault of the same draw may have made it strings or complex already.
    recast = {"nan_time": t, "inf_time": t, "huge_time": t, "times_dtype": t}
    recast.update(values_dtype=v, mask_dtype=m)
    if fault in recast and recast[fault].dtype.kind not in "biuf":
        return
    if fault == "shuffle_times":
        times[i] = np.array(draw(st.permutations(list(t))))
    elif fault == "duplicate_time" and t.size > 1:
        k = draw(st.integers(1, t.size - 1))
        times[i] = t.copy()
        times[i][k] = t[k - 1]
    elif fault in ("nan_time", "inf_time", "huge_time"):
        times[i] = t.astype(float)
        times[i][draw(st.integers(0, t.size - 1))] = {
            "nan_time": np.nan,
            "inf_time": -np.inf,
            "huge_time": 1e308,
        }[fault]
    elif fault == "empty_series":
        times[i], values[i] = np.array([]), np.zeros((0, v.shape[1]))
        masks[i] = np.zeros((0, v.shape[1]), bool)
    elif fault == "drop_value_row":
        values[i] = v[:-1]
    elif fault == "extra_channel":
        values[i] = np.concatenate([v, v[:, :1]], 1)
    elif fault == "values_dtype":
        kinds = NUMERIC_DTYPES + ["complex128", "U3", "object"]
        values[i] = _cast(v.astype(float), draw(st.sampled_from(kinds)))
    elif fault == "times_dtype":
        times[i] = _cast(
            t.astype(float), draw(st.sampled_from(NUMERIC_DTYPES + ["complex128", "U3"]))
        )
    elif fault == "mask_dtype":
        masks[i] = _cast(m.astype(float), draw(st.sampled_from(NUMERIC_DTYPES + ["complex128"])))
    elif fault == "junk_value" and v.size:
        w = v.astype(object)
        w.flat[draw(st.integers(0, w.size - 1))] = draw(JUNK)
        values[i] = w.tolist()
    elif fault == "junk_time":
        lst = list(t)
        lst[draw(st.integers(0, len(lst) - 1))] = draw(JUNK)
        times[i] = lst
    elif fault == "nested_ragged" and v.shape[0]:
        rows = [list(r) for r in v]
        rows[0] = rows[0] + [1.0]
        values[i] = rows
    elif fault == "mask_int":
        masks[i] = m.astype(np.int64) * draw(st.sampled_from([1, 2, -1]))
    elif fault == "mask_1d" and m.ndim == 2:
        masks[i] = m.any(1)
    elif fault == "torch_input" and t.dtype.kind == "f" and v.dtype.kind == "f":
        times[i] = torch.as_tensor(t.copy())
        values[i] = torch.as_tensor(v.copy())
    elif fault == "2d_times":
        times[i] = np.stack([t, t])


@st.composite
def faulty_parts(draw):
    times, values, masks = draw(valid_parts())
    for fault in draw(st.lists(st.sampled_from(FAULTS), min_size=1, max_size=3)):
        inject(draw, fault, times, values, masks)
    return times, values, masks


def _observed_input_kept(s, values, masks):
    """The object holds the input's observed values converted to float64 (exact for floats)."""
    for i in range(len(s)):
        v_in = np.asarray(values[i], dtype=np.float64).reshape(s.values[i].shape)
        m = s.mask[i]
        assert np.array_equal(s.values[i][m], v_in[m])


@FUZZ
@given(faulty_parts())
def test_constructor_fuzz(parts):
    times, values, masks = parts
    s = outcome(lambda: IrregularTimeSeries(times, values, masks))
    if s is not None:
        _observed_input_kept(s, values, masks)


@FUZZ
@given(faulty_parts(), st.booleans())
def test_from_nan_fuzz(parts, use_mask_as_nan):
    times, values, masks = parts
    if use_mask_as_nan:  # NaN-code the unobserved entries of numeric inputs
        vals = []
        for v, m in zip(values, masks, strict=True):
            a, mm = _arr(v), _arr(m)
            if a is not None and mm is not None and a.dtype.kind == "f" and mm.shape == a.shape:
                v = np.where(mm.astype(bool), a, np.nan)
            vals.append(v)
        values = vals
    s = outcome(lambda: IrregularTimeSeries.from_nan(times, values))
    if s is not None:
        for i in range(len(s)):
            v_in = np.asarray(values[i], dtype=np.float64).reshape(s.values[i].shape)
            assert np.array_equal(s.mask[i], ~np.isnan(v_in))
            assert np.array_equal(s.values[i][s.mask[i]], v_in[s.mask[i]])


@st.composite
def rectangular(draw):
    """Batched ``[B, T]`` / ``[B, T, D]`` arrays with any float content and shape mismatches."""
    B = draw(st.integers(0, 3))
    T = draw(st.integers(0, 4))
    D = draw(st.integers(0, 2))
    flat = st.lists(FLOATS, min_size=B * T * D, max_size=B * T * D)
    values = np.array(draw(flat), dtype=float).reshape(B, T, D)
    if draw(st.booleans()):
        times = np.sort(
            np.array(draw(st.lists(FLOATS, min_size=B * T, max_size=B * T)), dtype=float).reshape(
                B, T
            ),
            -1,
        )
    else:
        times = np.tile(np.arange(T, dtype=float), (B, 1))
    if draw(st.booleans()):
        times = times[:, : max(T - 1, 0)]
    return times, values


@FUZZ
@given(rectangular(), st.sampled_from(["numpy", "torch", "list"]))
def test_rectangular_constructor_fuzz(arrs, kind):
    times, values = arrs
    conv = {"numpy": lambda a: a, "torch": torch.as_tensor, "list": lambda a: a.tolist()}[kind]
    outcome(lambda: IrregularTimeSeries.from_nan(conv(times), conv(values)))


@FUZZ
@given(
    st.sampled_from([None, 3, 3.5, "abc", b"x", {"a": 1}, [], [[]], [None], np.array(2.0), (1, 2)]),
    st.sampled_from([None, 3, "abc", [], [[]], [[1.0]], np.zeros((1, 1, 1))]),
)
def test_junk_arguments(times, values):
    outcome(lambda: IrregularTimeSeries(times, values))


@FUZZ
@given(
    valid_parts(),
    st.one_of(
        st.none(),
        st.lists(
            st.one_of(st.integers(-3, 3), st.text(max_size=2), st.none(), st.just([1])), max_size=5
        ),
    ),
    st.one_of(st.none(), st.lists(st.one_of(st.text(max_size=2), st.integers(0, 2)), max_size=4)),
)
def test_ids_and_channels_fuzz(parts, ids, channels):
    times, values, masks = parts
    outcome(lambda: IrregularTimeSeries(times, values, masks, ids=ids, channels=channels))


@FUZZ
@given(valid_parts(), st.integers(0, 2), st.sampled_from(["ok", "nan", "rows", "cols", "dtype"]))
def test_covariates_fuzz(parts, K, fault):
    times, values, masks = parts
    cov = [np.linspace(0.0, 1.0, t.size * K).reshape(t.size, K) for t in times]
    if fault == "nan" and cov[0].size:
        cov[0][0, 0] = np.nan
    elif fault == "rows":
        cov[-1] = cov[-1][:-1]
    elif fault == "cols":
        cov[-1] = np.concatenate([cov[-1], cov[-1][:, :1]], 1) if K else cov[-1]
    elif fault == "dtype":
        cov[0] = cov[0].astype(str)
    outcome(lambda: IrregularTimeSeries(times, values, masks, covariates=cov))


# ------------------------------------------------------------------ data frames

COLUMN_KINDS = [
    "float",
    "int",
    "nullable_int",
    "bool",
    "str",
    "object_mixed",
    "category",
    "datetime",
]


def _column(draw, kind, n):
    if kind == "float":
        return pd.Series(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype="float64")
    if kind == "int":
        return pd.Series(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), dtype="int64")
    if kind == "nullable_int":
        return pd.Series(
            draw(st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=n, max_size=n)),
            dtype="Int64",
        )
    if kind == "bool":
        return pd.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    if kind == "str":
        return pd.Series(draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)), dtype=object)
    if kind == "object_mixed":
        return pd.Series(
            draw(
                st.lists(st.one_of(FLOATS, st.text(max_size=2), st.none()), min_size=n, max_size=n)
            ),
            dtype=object,
        )
    if kind == "category":
        return pd.Series(
            draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n)), dtype="category"
        )
    return pd.Series(
        pd.to_datetime(draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n)), unit="s")
    )


@st.composite
def frames(draw):
    n = draw(st.integers(0, 8))
    id_kind = draw(
        st.sampled_from(["int", "str", "float", "object_mixed", "nullable_int", "category"])
    )
    if id_kind == "int":
        ids = pd.Series(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    else:
        ids = _column(draw, id_kind, n)
    how = draw(st.sampled_from(["distinct", "distinct", "lattice", "any"]))
    if how == "distinct":  # valid times: distinct within the frame, in any row order
        time = pd.Series(draw(st.permutations(list(np.arange(n) * 0.5 - 1.0))), dtype=float)
    elif how == "lattice":  # may repeat a time within a series
        lattice = [0.0, 0.5, 1.0, 2.0, 3.0]
        time = pd.Series(draw(st.lists(st.sampled_from(lattice), min_size=n, max_size=n)))
    else:
        time = _column(draw, draw(st.sampled_from(COLUMN_KINDS)), n)
    cols = {"id": ids, "time": time}
    for j in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["float"] * 6 + COLUMN_KINDS))
        cols[f"x{j}"] = _column(draw, kind, n)
    return pd.DataFrame(cols)


def _frame_values_kept(s, df):
    """Every finite value in the frame is the series' observed value at its (id, time)."""
    pos = {k: i for i, k in enumerate(s.ids)}
    for _, row in df.iterrows():
        i = pos[row["id"]]
        k = int(np.flatnonzero(s.times[i] == float(row["time"]))[0])
        for d, c in enumerate(s.channels):
            x = float(row[c]) if pd.notna(row[c]) else np.nan
            if np.isnan(x):
                assert not s.mask[i][k, d]
            else:
                assert s.mask[i][k, d] and s.values[i][k, d] == x


@FUZZ
@given(frames())
def test_from_dataframe_fuzz(df):
    s = outcome(lambda: IrregularTimeSeries.from_dataframe(df))
    if s is not None:
        _frame_values_kept(s, df)
        # the long-format round trip keeps everything as well
        back = outcome(lambda: IrregularTimeSeries.from_dataframe(s.to_dataframe()))
        assert back is not None
        for i in range(len(s)):
            assert np.array_equal(back.times[i], s.times[i])
            assert np.array_equal(back.mask[i], s.mask[i])
            assert np.array_equal(back.values[i][s.mask[i]], s.values[i][s.mask[i]])


# ------------------------------------------------------------------ batches


@FUZZ
@given(rectangular(), st.one_of(st.none(), st.lists(st.integers(-1, 5), min_size=0, max_size=4)))
def test_ensure_batch_and_from_batch_fuzz(arrs, lengths):
    times, values = arrs
    try:
        b = ensure_batch(times, values, lengths=lengths)
    except NAMED_ERRORS:
        return
    assert isinstance(b, IrregularBatch)
    outcome(lambda: IrregularTimeSeries.from_batch(b))


# ------------------------------------------------------------------ what the fuzzer found


def test_float32_batch_refuses_overflowing_values():
    # found by test_constructor_fuzz: to_batch(float32) turned 1e300 into inf silently
    s = IrregularTimeSeries([np.array([0.0, 1.0])], [np.array([[1.0], [1e300]])])
    with pytest.raises(
        BayesdynValueError,
        match=r"to_batch\(dtype=torch.float32\): series 0: values\[1, 0\]=1e\+300 overflows "
        r"torch.float32; standardize the data first",
    ):
        s.to_batch(dtype=torch.float32)
    assert s.to_batch(dtype=torch.float64).values[0, 1, 0] == 1e300
    # an unobserved huge value is stored as 0.0 and is not an error
    s2 = IrregularTimeSeries(
        [np.array([0.0, 1.0])], [np.array([[1.0], [1e300]])], [np.array([True, False])]
    )
    assert s2.to_batch(dtype=torch.float32).values.abs().max() == 1.0


def test_float32_batch_refuses_times_that_collapse():
    # found by the fuzzer: distinct float64 times became equal float32 times (non-increasing)
    s = IrregularTimeSeries([np.array([1e6, 1e6 + 1e-3, 1e6 + 1.0])], [np.ones((3, 1))])
    with pytest.raises(
        BayesdynValueError,
        match=r"series 0: times\[1\]=.* and times\[0\]=.* round to the same torch.float32 value",
    ):
        s.to_batch(dtype=torch.float32)
    with pytest.raises(BayesdynValueError, match=r"times\[0\]=1e\+300 overflows torch.float16"):
        IrregularTimeSeries([np.array([1e300])], [np.ones((1, 1))]).to_batch(dtype=torch.float16)


@FUZZ
@given(
    valid_parts(),
    st.data(),
    st.sampled_from(["none", "nan", "unsorted", "duplicate", "outside", "dtype", "ragged"]),
)
def test_events_and_marks_fuzz(parts, data, fault):
    times, values, masks = parts
    events, marks = [], []
    for t in times:
        n = data.draw(st.integers(0, 4))
        e = np.sort(data.draw(st.lists(st.floats(t[0], t[-1]), min_size=n, max_size=n)))
        events.append(np.array(e, dtype=float))
        marks.append(np.array(data.draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))))
    e0 = events[0]
    if fault == "nan" and e0.size:
        e0[0] = np.nan
    elif fault == "unsorted" and e0.size > 1:
        events[0] = e0[::-1].copy()
    elif fault == "duplicate" and e0.size:
        events[0] = np.concatenate([e0, e0[-1:]])
        marks[0] = np.concatenate([marks[0], marks[0][-1:]])
    elif fault == "outside":
        events[0] = np.append(e0, times[0][-1] + 1e6)
        marks[0] = np.append(marks[0], 0)
    elif fault == "dtype":
        marks[0] = marks[0].astype(float) + 0.5
    elif fault == "ragged":
        marks[0] = marks[0][:-1]
    num_marks = data.draw(st.sampled_from([None, 1, 2, 4, 0, -1]))
    s = outcome(
        lambda: IrregularTimeSeries(
            times, values, masks, events=events, marks=marks, num_marks=num_marks
        )
    )
    if s is not None:
        for i in range(len(s)):
            assert np.array_equal(s.events[i], np.asarray(events[i], dtype=float))
