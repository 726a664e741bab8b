"""Scaler: fitting on observed values, transforms and their inverses, state dicts."""

import numpy as np
import pytest
import torch

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import IrregularTimeSeries, Scaler


def _series():
    times = [np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5])]
    values = [
        np.array([[1.0, 10.0, 5.0], [2.0, 1e9, 5.0], [3.0, 30.0, 5.0]]),
        np.array([[4.0, 40.0, 5.0], [5.0, 50.0, 5.0]]),
    ]
    mask = [np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool), np.ones((2, 3), bool)]
    return IrregularTimeSeries(times, values, mask, channels=["a", "b", "c"])


def test_fit_uses_observed_values_only():
    sc = Scaler.fit(_series())
    np.testing.assert_allclose(sc.mean, [3.0, 32.5, 5.0])
    np.testing.assert_allclose(sc.std[:2], [np.std([1, 2, 3, 4, 5]), np.std([10, 30, 40, 50])])
    assert sc.std[2] == 1.0  # constant channel: std floored to 1


def test_standardize_and_inverse():
    s = _series()
    scaled, sc = s.standardize()
    v = np.concatenate(scaled.values)
    m = np.concatenate(scaled.mask)
    for d in range(2):
        np.testing.assert_allclose(v[m[:, d], d].mean(), 0.0, atol=1e-12)
        np.testing.assert_allclose(v[m[:, d], d].std(), 1.0)
    assert (v[~m] == 0).all()
    back = sc.inverse_transform(scaled)
    for x, y, mm in zip(back.values, s.values, s.mask, strict=True):
        np.testing.assert_allclose(x[mm], y[mm])
    # reuse the scaler on other data
    scaled2, sc2 = s.standardize(sc)
    assert sc2 is sc
    np.testing.assert_array_equal(scaled2.values[0], scaled.values[0])


def test_inverse_values_numpy_and_torch():
    sc = Scaler(mean=[1.0, -2.0], std=[2.0, 0.5])
    x = np.array([[0.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(sc.inverse_values(x), [[1.0, -2.0], [3.0, -1.0]])
    np.testing.assert_allclose(sc.transform_values(sc.inverse_values(x)), x)
    xt = torch.randn(4, 3, 2, dtype=torch.float32)
    out = sc.inverse_values(xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == xt.shape
    expected = xt * torch.tensor([2.0, 0.5], dtype=torch.float32) + torch.tensor(
        [1.0, -2.0], dtype=torch.float32
    )
    torch.testing.assert_close(out, expected)
    s = sc.inverse_std(torch.ones(5, 2))
    assert s.tolist() == [[2.0, 0.5]] * 5
    np.testing.assert_allclose(sc.inverse_std(np.ones(2)), [2.0, 0.5])


def test_inverse_values_shape_and_type_errors():
    sc = Scaler(mean=[0.0, 0.0], std=[1.0, 1.0])
    with pytest.raises(
        BayesdynValueError, match=r"x must have last dimension D=2; got shape \(3,\)"
    ):
        sc.inverse_values(np.zeros(3))
    with pytest.raises(BayesdynTypeError, match="x must be a numpy array or torch tensor"):
        sc.inverse_values([0.0, 0.0])
    with pytest.raises(BayesdynValueError, match="series has 3 channels, the scaler expects 2"):
        sc.transform(_series())


def test_state_dict_round_trip_with_weights_only(tmp_path):
    sc = Scaler.fit(_series())
    state = sc.state_dict()
    assert all(isinstance(v, float) for vs in state.values() for v in vs)
    path = tmp_path / "scaler.pt"
    torch.save(state, path)
    loaded = Scaler.from_state_dict(torch.load(path, weights_only=True))
    np.testing.assert_array_equal(loaded.mean, sc.mean)
    np.testing.assert_array_equal(loaded.std, sc.std)


def test_constructor_and_state_errors():
    with pytest.raises(BayesdynValueError, match="std must be positive"):
        Scaler([0.0], [0.0])
    with pytest.raises(BayesdynValueError, match="mean and std must have the same shape"):
        Scaler([0.0, 1.0], [1.0])
    with pytest.raises(BayesdynValueError, match=r"state is missing keys \['std'\]"):
        Scaler.from_state_dict({"mean": [0.0]})


def test_fit_channel_without_observations():
    times = [np.array([0.0, 1.0])]
    s = IrregularTimeSeries(
        times,
        [np.ones((2, 2))],
        [np.array([[1, 0], [1, 0]], bool)],
        require_observed_channels=False,
    )
    with pytest.raises(BayesdynValueError, match=r"channel 'x1' \(index 1\) has no observed value"):
        Scaler.fit(s)
