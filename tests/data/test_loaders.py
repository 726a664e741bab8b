"""Bundled data sets load from the installed package, never from the shared data folder."""

import numpy as np
import pytest

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import IrregularTimeSeries, load_brusselator, load_lynx_hare


def test_lynx_hare():
    s = load_lynx_hare()
    assert isinstance(s, IrregularTimeSeries)
    assert s.num_series == 1 and s.channels == ["lynx", "hare"]
    np.testing.assert_array_equal(s.times[0], np.arange(1900.0, 1921.0))
    np.testing.assert_array_equal(s.values[0][0], [4.0, 30.0])
    np.testing.assert_array_equal(s.values[0][-1], [8.6, 24.7])
    assert s.mask[0].all()


def test_brusselator():
    s = load_brusselator()
    assert s.num_series == 200 and s.ids == list(range(200))
    assert s.channels == ["value_1", "value_2"] and s.covariates is None
    assert all(np.all(np.diff(t) > 0) for t in s.times)  # sorted although the file is not
    assert 0.0 <= s.t_min and s.t_max <= 50.0
    frac = s.num_observed / sum(m.size for m in s.mask)
    assert 0.85 < frac < 0.95  # about 10% missing per channel
    # first row of the file: ID 0, Time 22.1, both observed
    i = int(np.flatnonzero(s.times[0] == 22.1)[0])
    np.testing.assert_allclose(s.values[0][i], [1.0322197675704956, 5.058597087860107])
    # a masked entry from the file (ID 0, Time 25.6, Mask_1 = 0)
    j = int(np.flatnonzero(s.times[0] == 25.6)[0])
    assert s.mask[0][j].tolist() == [False, True]


def test_brusselator_subset():
    s = load_brusselator(num_series=5)
    assert s.ids == [0, 1, 2, 3, 4]
    with pytest.raises(BayesdynValueError, match=r"num_series must lie in \[1, 200\]; got 201"):
        load_brusselator(num_series=201)
