"""Every validation message of IrregularTimeSeries and its constructors has its own test."""

import numpy as np
import pandas as pd
import pytest

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import IrregularTimeSeries


def _ok_times():
    return [np.array([0.0, 1.0, 2.5]), np.array([0.5, 1.5])]


def _ok_values(D=2):
    return [np.ones((3, D)), np.ones((2, D))]


def test_valid_input_builds():
    s = IrregularTimeSeries(_ok_times(), _ok_values())
    assert s.num_series == 2 and s.obs_dim == 2


def test_non_finite_times():
    times = [np.array([0.0, np.inf, 2.0]), np.array([0.5, 1.5])]
    with pytest.raises(BayesdynValueError, match=r"series 0: times must be finite; times\[1\]=inf"):
        IrregularTimeSeries(times, _ok_values())


def test_nan_times():
    times = [np.array([0.0, 1.0, 2.0]), np.array([np.nan, 1.5])]
    with pytest.raises(BayesdynValueError, match=r"series 1: times must be finite; times\[0\]=nan"):
        IrregularTimeSeries(times, _ok_values())


def test_times_not_increasing():
    times = [np.array([0.0, 1.0, 2.0]), np.array([1.5, 0.5])]
    with pytest.raises(
        BayesdynValueError,
        match=r"series 1: times must be strictly increasing; times\[1\]=0.5 follows times\[0\]=1.5",
    ):
        IrregularTimeSeries(times, _ok_values())


def test_duplicate_times():
    times = [np.array([0.0, 2.0, 2.0]), np.array([0.5, 1.5])]
    with pytest.raises(
        BayesdynValueError, match=r"series 0: duplicate time; times\[2\]=2.0 equals times\[1\]=2.0"
    ):
        IrregularTimeSeries(times, _ok_values())


def test_times_values_series_count_mismatch():
    with pytest.raises(BayesdynValueError, match="times has 2, values has 1"):
        IrregularTimeSeries(_ok_times(), _ok_values()[:1])


def test_times_values_length_mismatch():
    values = [np.ones((3, 2)), np.ones((3, 2))]
    with pytest.raises(BayesdynValueError, match="series 1: values has 3 rows but times has 2"):
        IrregularTimeSeries(_ok_times(), values)


def test_inconsistent_channels():
    values = [np.ones((3, 2)), np.ones((2, 3))]
    with pytest.raises(
        BayesdynValueError, match="series 1: values has 3 channels but series 0 has 2"
    ):
        IrregularTimeSeries(_ok_times(), values)


def test_mask_shape_mismatch():
    mask = [np.ones((3, 2), bool), np.ones((2, 3), bool)]
    with pytest.raises(BayesdynValueError, match=r"series 1: mask must have the shape of values"):
        IrregularTimeSeries(_ok_times(), _ok_values(), mask)


def test_times_not_1d():
    with pytest.raises(BayesdynValueError, match=r"series 0: times must be 1-D"):
        IrregularTimeSeries([np.zeros((3, 1))], [np.ones((3, 1))])


def test_values_3d_per_series():
    with pytest.raises(BayesdynValueError, match=r"series 0: values must be 2-D \[T_i, D\]"):
        IrregularTimeSeries([np.arange(3.0)], [np.ones((3, 1, 1))])


def test_empty_series():
    times = [np.array([0.0, 1.0, 2.0]), np.array([])]
    values = [np.ones((3, 2)), np.ones((0, 2))]
    with pytest.raises(BayesdynValueError, match="series 1: is empty"):
        IrregularTimeSeries(times, values)


def test_no_series():
    with pytest.raises(BayesdynValueError, match="at least one series"):
        IrregularTimeSeries([], [])


def test_channel_never_observed():
    mask = [np.array([[1, 0]] * 3, bool), np.array([[1, 0]] * 2, bool)]
    with pytest.raises(
        BayesdynValueError,
        match=r"channel 'b' \(index 1\) has no observed value in any series",
    ):
        IrregularTimeSeries(_ok_times(), _ok_values(), mask, channels=["a", "b"])


def test_channel_never_observed_allowed_when_not_required():
    mask = [np.array([[1, 0]] * 3, bool), np.array([[1, 0]] * 2, bool)]
    s = IrregularTimeSeries(_ok_times(), _ok_values(), mask, require_observed_channels=False)
    assert s.num_observed == 5


@pytest.mark.parametrize(
    "values, kind",
    [
        ([np.ones((3, 2), complex), np.ones((2, 2), complex)], "complex"),
        ([np.array([["a", "b"]] * 3), np.array([["a", "b"]] * 2)], "<U1"),
        ([np.ones((3, 2), object), np.ones((2, 2), object)], "object"),
        ([np.ones((3, 2), bool), np.ones((2, 2), bool)], "bool"),
    ],
    ids=["complex", "str", "object", "bool"],
)
def test_wrong_value_dtype(values, kind):
    with pytest.raises(
        BayesdynTypeError, match=rf"series 0: values must be real numbers; got .*{kind}"
    ):
        IrregularTimeSeries(_ok_times(), values)


def test_bool_times():
    times = [np.array([False, True, True]), np.array([False, True])]
    with pytest.raises(BayesdynTypeError, match="series 0: times must be real numbers; got bool"):
        IrregularTimeSeries(times, _ok_values())


def test_string_times():
    times = [np.array(["0", "1", "2"]), np.array(["0", "1"])]
    with pytest.raises(BayesdynTypeError, match="series 0: times must be real numbers"):
        IrregularTimeSeries(times, _ok_values())


def test_float_mask_rejected():
    mask = [np.ones((3, 2)), np.ones((2, 2))]
    with pytest.raises(BayesdynTypeError, match=r"series 0: mask must be bool \(or integer 0/1\)"):
        IrregularTimeSeries(_ok_times(), _ok_values(), mask)


def test_integer_mask_other_than_01_rejected():
    mask = [np.full((3, 2), 2), np.ones((2, 2), int)]
    with pytest.raises(BayesdynTypeError, match="integer array containing 2"):
        IrregularTimeSeries(_ok_times(), _ok_values(), mask)


def test_integer_01_mask_accepted_and_row_mask_broadcast():
    mask = [np.array([[1, 0], [0, 1], [1, 1]]), np.array([1, 0])]
    s = IrregularTimeSeries(_ok_times(), _ok_values(), mask)
    assert s.mask[0].dtype == bool
    np.testing.assert_array_equal(s.mask[1], [[True, True], [False, False]])


def test_non_finite_observed_value_suggests_from_nan():
    values = [np.ones((3, 2)), np.array([[1.0, np.nan], [1.0, 1.0]])]
    with pytest.raises(
        BayesdynValueError,
        match=r"series 1: values\[0, 1\]=nan is not finite but mask is True.*from_nan",
    ):
        IrregularTimeSeries(_ok_times(), values)


def test_non_finite_unobserved_value_is_stored_as_zero():
    values = [np.ones((3, 2)), np.array([[1.0, np.nan], [1.0, 1.0]])]
    mask = [np.ones((3, 2), bool), np.array([[True, False], [True, True]])]
    s = IrregularTimeSeries(_ok_times(), values, mask)
    assert s.values[1][0, 1] == 0.0


def test_ids_not_unique():
    with pytest.raises(
        BayesdynValueError, match="ids must be unique; id 'a' appears at positions 0 and 1"
    ):
        IrregularTimeSeries(_ok_times(), _ok_values(), ids=["a", "a"])


def test_ids_wrong_length():
    with pytest.raises(
        BayesdynValueError, match=r"ids must have one entry per series \(2\); got 3"
    ):
        IrregularTimeSeries(_ok_times(), _ok_values(), ids=[1, 2, 3])


def test_channels_wrong_length():
    with pytest.raises(BayesdynValueError, match="channels must have 2 names .*; got 3"):
        IrregularTimeSeries(_ok_times(), _ok_values(), channels=["a", "b", "c"])


def test_channels_not_unique():
    with pytest.raises(BayesdynValueError, match="channels must be unique"):
        IrregularTimeSeries(_ok_times(), _ok_values(), channels=["a", "a"])


def test_covariates_shape_and_finiteness():
    cov_bad_rows = [np.zeros((3, 1)), np.zeros((3, 1))]
    with pytest.raises(
        BayesdynValueError, match=r"series 1: covariates must have shape \[T_i=2, K\]"
    ):
        IrregularTimeSeries(_ok_times(), _ok_values(), covariates=cov_bad_rows)
    cov_nan = [np.zeros((3, 1)), np.array([[0.0], [np.nan]])]
    with pytest.raises(BayesdynValueError, match=r"series 1: covariates must be finite"):
        IrregularTimeSeries(_ok_times(), _ok_values(), covariates=cov_nan)


def test_sequence_type_error():
    with pytest.raises(BayesdynTypeError, match="times must be a sequence of per-series arrays"):
        IrregularTimeSeries(3.0, _ok_values())


# ---------------------------------------------------------------- from_dataframe / from_csv


def _long_df():
    return pd.DataFrame(
        {
            "id": ["b", "b", "a", "b", "a"],
            "time": [2.0, 0.0, 1.0, 1.0, 0.5],
            "x": [1.0, 2.0, np.nan, 4.0, 5.0],
            "y": [np.nan, 0.2, 0.3, 0.4, 0.5],
        }
    )


def test_dataframe_missing_column_lists_available():
    with pytest.raises(
        BayesdynValueError,
        match=r"value_cols: column 'z' not found; available columns: \['id', 'time', 'x', 'y'\]",
    ):
        IrregularTimeSeries.from_dataframe(_long_df(), value_cols=["x", "z"])


def test_dataframe_missing_id_column():
    with pytest.raises(BayesdynValueError, match="id_col: column 'series' not found"):
        IrregularTimeSeries.from_dataframe(_long_df(), id_col="series")


def test_dataframe_duplicate_time():
    df = _long_df()
    df.loc[0, "time"] = 1.0
    with pytest.raises(BayesdynValueError, match=r"series 'b': duplicate time 1.0"):
        IrregularTimeSeries.from_dataframe(df)


def test_dataframe_nan_time():
    df = _long_df()
    df.loc[2, "time"] = np.nan
    with pytest.raises(BayesdynValueError, match="series 'a': time column 'time' has a missing"):
        IrregularTimeSeries.from_dataframe(df)


def test_dataframe_string_values():
    df = _long_df()
    df["x"] = df["x"].astype(str)
    with pytest.raises(BayesdynTypeError, match="value column 'x' must hold real numbers"):
        IrregularTimeSeries.from_dataframe(df)


def test_dataframe_not_a_dataframe():
    with pytest.raises(BayesdynTypeError, match="df must be a pandas DataFrame"):
        IrregularTimeSeries.from_dataframe({"id": [1]})


def test_csv_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(BayesdynValueError, match=r"path '.*nope.csv': file not found"):
        IrregularTimeSeries.from_csv(path)


def test_csv_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(BayesdynValueError, match=r"path '.*empty.csv': could not read CSV"):
        IrregularTimeSeries.from_csv(path)


def test_csv_parse_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('id,time,x\n1,0.0,1.0\n1,1.0,"unterminated\n')
    with pytest.raises(BayesdynValueError, match=r"path '.*bad.csv': could not read CSV"):
        IrregularTimeSeries.from_csv(path)


def test_csv_binary_file(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(BayesdynValueError, match=r"path '.*bin.csv'"):
        IrregularTimeSeries.from_csv(path)


def test_csv_directory(tmp_path):
    with pytest.raises(BayesdynValueError, match="is a directory"):
        IrregularTimeSeries.from_csv(tmp_path)
