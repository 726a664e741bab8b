"""IrregularTimeSeries: conversions, round trips, subsets and splits."""

import numpy as np
import pandas as pd
import pytest
import torch

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import IrregularBatch, IrregularTimeSeries


def _ragged(seed=0, B=5, D=3, covariates=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=B)
    lengths[0] = 8
    times = [np.sort(rng.choice(100, size=n, replace=False)) / 7.0 for n in lengths]
    values = [rng.standard_normal((n, D)) for n in lengths]
    mask = [rng.random((n, D)) < 0.7 for n in lengths]
    mask[0][:] = True
    cov = [rng.standard_normal((n, 2)) for n in lengths] if covariates else None
    return IrregularTimeSeries(times, values, mask, ids=[f"s{i}" for i in range(B)], covariates=cov)


def test_stores_read_only_copies():
    t = np.array([0.0, 1.0])
    v = np.array([[1.0], [2.0]])
    s = IrregularTimeSeries([t], [v])
    t[0] = 5.0
    assert s.times[0][0] == 0.0
    with pytest.raises(ValueError):
        s.values[0][0, 0] = 3.0
    assert s.values[0].dtype == np.float64 and s.mask[0].dtype == bool


def test_rectangular_input_and_1d_values():
    s = IrregularTimeSeries(np.array([[0.0, 1.0], [0.5, 2.0]]), np.ones((2, 2, 1)))
    assert s.num_series == 2 and s.lengths == [2, 2]
    s1 = IrregularTimeSeries([np.arange(3.0)], [np.arange(3.0)])
    assert s1.obs_dim == 1 and s1.values[0].shape == (3, 1)


def test_accepts_integer_times_and_tensors():
    s = IrregularTimeSeries([torch.tensor([1, 2, 3])], [torch.ones(3, 2)])
    assert s.times[0].dtype == np.float64
    np.testing.assert_array_equal(s.times[0], [1.0, 2.0, 3.0])


def test_properties_and_repr():
    s = _ragged()
    assert len(s) == s.num_series == 5
    assert s.obs_dim == 3 and s.channels == ["x0", "x1", "x2"]
    assert s.ids == [f"s{i}" for i in range(5)]
    assert s.t_min == min(t[0] for t in s.times)
    assert s.t_max == max(t[-1] for t in s.times)
    assert s.num_observed == sum(int(m.sum()) for m in s.mask)
    r = repr(s)
    assert r.startswith("IrregularTimeSeries(num_series=5, obs_dim=3")


def test_masked_values_are_zero():
    s = _ragged()
    for v, m in zip(s.values, s.mask, strict=True):
        assert (v[~m] == 0.0).all()


def test_from_nan_keeps_all_missing_rows():
    times = [np.array([0.0, 1.0, 2.0])]
    values = [np.array([[1.0, np.nan], [np.nan, np.nan], [3.0, 4.0]])]
    s = IrregularTimeSeries.from_nan(times, values, channels=["a", "b"])
    assert s.lengths == [3]
    np.testing.assert_array_equal(s.mask[0], [[True, False], [False, False], [True, True]])
    np.testing.assert_array_equal(s.values[0], [[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])


def test_from_nan_rejects_inf():
    with pytest.raises(BayesdynValueError, match=r"values\[0, 0\]=inf is not finite"):
        IrregularTimeSeries.from_nan([np.array([0.0])], [np.array([[np.inf]])])


def test_from_nan_rejects_mask_keyword():
    with pytest.raises(BayesdynTypeError, match="do not pass mask"):
        IrregularTimeSeries.from_nan([np.array([0.0])], [np.array([[1.0]])], mask=[[True]])


# ---------------------------------------------------------------- batch round trip


@pytest.mark.parametrize("covariates", [False, True])
def test_series_batch_series_round_trip_is_exact(covariates):
    s = _ragged(covariates=covariates)
    batch = s.to_batch()
    assert isinstance(batch, IrregularBatch)
    back = IrregularTimeSeries.from_batch(batch, ids=s.ids, channels=s.channels)
    assert back.ids == s.ids and back.channels == s.channels
    for a, b in zip((s.times, s.values, s.mask), (back.times, back.values, back.mask), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    if covariates:
        for x, y in zip(s.covariates, back.covariates, strict=True):
            np.testing.assert_array_equal(x, y)


def test_to_batch_padding_convention():
    s = _ragged(covariates=True)
    b = s.to_batch()
    B, T, D = b.values.shape
    assert (B, T, D) == (5, max(s.lengths), 3)
    assert b.times.dtype == torch.float64 and b.mask.dtype == torch.bool
    assert b.lengths.dtype == torch.long
    assert b.lengths.tolist() == s.lengths
    for i, n in enumerate(s.lengths):
        assert (b.times[i, n:] == s.times[i][-1]).all()
        assert not b.mask[i, n:].any()
        assert (b.values[i, n:] == 0).all()
        assert (b.covariates[i, n:] == b.covariates[i, n - 1]).all()
    # times stay non-decreasing along T
    assert (b.times[:, 1:] >= b.times[:, :-1]).all()
    assert b.row_mask.tolist() == [[j < n for j in range(T)] for n in s.lengths]
    assert b.last_times.tolist() == [t[-1] for t in s.times]
    assert b.first_times.tolist() == [t[0] for t in s.times]


def test_to_batch_dtype():
    b = _ragged().to_batch(dtype=torch.float32)
    assert b.times.dtype == b.values.dtype == torch.float32
    with pytest.raises(BayesdynTypeError, match="dtype must be a floating-point"):
        _ragged().to_batch(dtype=torch.int64)


def test_from_batch_type_error():
    with pytest.raises(BayesdynTypeError, match="batch must be an IrregularBatch"):
        IrregularTimeSeries.from_batch((1, 2))


# ---------------------------------------------------------------- dataframe round trip


def test_from_dataframe_order_sorting_and_nan():
    df = pd.DataFrame(
        {
            "id": ["b", "b", "a", "b", "a"],
            "time": [2.0, 0.0, 1.0, 1.0, 0.5],
            "x": [1.0, 2.0, np.nan, 4.0, 5.0],
            "y": [np.nan, 0.2, 0.3, 0.4, 0.5],
        }
    )
    s = IrregularTimeSeries.from_dataframe(df)
    assert s.ids == ["b", "a"]  # order of first appearance
    assert s.channels == ["x", "y"]
    np.testing.assert_array_equal(s.times[0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(s.values[0], [[2.0, 0.2], [4.0, 0.4], [1.0, 0.0]])
    np.testing.assert_array_equal(s.mask[1], [[True, True], [False, True]])


def test_dataframe_series_dataframe_round_trip():
    df = pd.DataFrame(
        {
            "id": [3, 3, 3, 7, 7],
            "time": [0.0, 0.5, 2.0, 0.1, 0.2],
            "a": [1.0, np.nan, 3.0, 4.0, 5.0],
            "b": [0.1, 0.2, np.nan, np.nan, 0.5],
            "u": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    s = IrregularTimeSeries.from_dataframe(df, value_cols=["a", "b"], covariate_cols=["u"])
    assert s.ids == [3, 7] and s.covariate_names == ["u"]
    out = s.to_dataframe()
    pd.testing.assert_frame_equal(out, df)
    again = IrregularTimeSeries.from_dataframe(out, covariate_cols=["u"])
    for x, y in zip(s.values, again.values, strict=True):
        np.testing.assert_array_equal(x, y)


def test_csv_round_trip(tmp_path):
    s = _ragged()
    path = tmp_path / "data.csv"
    s.to_dataframe().to_csv(path, index=False)
    back = IrregularTimeSeries.from_csv(path)
    assert back.ids == s.ids and back.channels == s.channels
    for x, y in zip(s.values, back.values, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(s.mask, back.mask, strict=True):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- subsets


def test_getitem_variants():
    s = _ragged()
    assert s[1].ids == ["s1"]
    assert s[-1].ids == ["s4"]
    assert s[1:3].ids == ["s1", "s2"]
    assert s[[4, 0]].ids == ["s4", "s0"]
    assert s[np.array([True, False, True, False, False])].ids == ["s0", "s2"]
    np.testing.assert_array_equal(s[2].values[0], s.values[2])


def test_getitem_errors():
    s = _ragged()
    with pytest.raises(IndexError, match="out of range"):
        s[5]
    with pytest.raises(BayesdynValueError, match="bool index must have shape"):
        s[np.array([True, False])]
    with pytest.raises(BayesdynValueError, match="selects no series"):
        s[2:2]
    with pytest.raises(BayesdynTypeError, match="index must be"):
        s[np.array([0.5])]


# ---------------------------------------------------------------- splits


def test_split_series():
    s = _ragged(B=10)
    train, test = s.split_series(0.3, seed=1)
    assert len(train) == 7 and len(test) == 3
    assert sorted(train.ids + test.ids) == sorted(s.ids)
    assert set(train.ids).isdisjoint(test.ids)
    again = s.split_series(0.3, seed=1)
    assert again[1].ids == test.ids
    # order is preserved within each part
    assert train.ids == [i for i in s.ids if i in train.ids]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_series_bad_fraction(fraction):
    with pytest.raises(BayesdynValueError, match=r"test_fraction must lie in \(0, 1\)"):
        _ragged().split_series(fraction)


def test_split_series_empty_part():
    with pytest.raises(BayesdynValueError, match="both must be non-empty"):
        _ragged(B=3).split_series(0.1)


def test_split_time():
    times = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 1.0]), np.array([1.0, 4.0])]
    values = [np.arange(4.0)[:, None], np.arange(2.0)[:, None], np.arange(2.0)[:, None]]
    s = IrregularTimeSeries(times, values, ids=["a", "b", "c"])
    past, future = s.split_time(1.0)
    assert past.ids == ["a", "b", "c"]
    assert future.ids == ["a", "c"]  # "b" has no row after the origin
    np.testing.assert_array_equal(past.times[0], [0.0, 1.0])
    np.testing.assert_array_equal(future.times[0], [2.0, 3.0])
    np.testing.assert_array_equal(future.values[1], [[1.0]])
    assert all(t.max() <= 1.0 for t in past.times)
    assert all(t.min() > 1.0 for t in future.times)


def test_split_time_future_may_lack_a_channel():
    times = [np.array([0.0, 1.0, 2.0])]
    values = [np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])]
    mask = [np.array([[1, 1], [1, 1], [1, 0]], bool)]
    _, future = IrregularTimeSeries(times, values, mask).split_time(1.5)
    assert future.num_observed == 1


def test_split_time_errors():
    times = [np.array([0.0, 1.0]), np.array([0.5, 1.0])]
    s = IrregularTimeSeries(times, [np.ones((2, 1))] * 2, ids=["a", "b"])
    with pytest.raises(
        BayesdynValueError,
        match=r"series 1 \(id 'b'\) has no row at or before origin=0.2; its first time is 0.5",
    ):
        s.split_time(0.2)
    with pytest.raises(BayesdynValueError, match="the future part would be empty"):
        s.split_time(1.0)
