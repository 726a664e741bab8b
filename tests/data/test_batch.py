"""IrregularBatch and ensure_batch."""

import numpy as np
import pytest
import torch

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError, validation_enabled
from bayesdyn.data import IrregularBatch, ensure_batch


def test_single_series_is_promoted():
    t = torch.tensor([0.0, 0.5, 2.0])
    v = torch.randn(3, 2)
    b = ensure_batch(t, v)
    assert isinstance(b, IrregularBatch)
    assert b.times.shape == (1, 3) and b.values.shape == (1, 3, 2) and b.mask.shape == (1, 3, 2)
    assert b.mask.all() and b.lengths.tolist() == [3]
    assert (b.num_series, b.num_times, b.obs_dim) == (1, 3, 2)
    assert b.covariates is None


@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("T", [1, 7])
def test_batched_shapes_and_row_mask_broadcast(T, D):
    B = 4
    t = torch.arange(T, dtype=torch.float64).expand(B, T).clone()
    row_mask = torch.ones(B, T, dtype=torch.bool)
    row_mask[0, 0] = False
    b = ensure_batch(t, torch.zeros(B, T, D), row_mask)
    assert b.mask.shape == (B, T, D)
    assert not b.mask[0, 0].any() and b.mask[1].all()
    assert b.lengths.tolist() == [T] * B


def test_lengths_inferred_from_padding():
    t = torch.tensor([[0.0, 1.0, 2.0, 2.0], [0.0, 3.0, 3.0, 3.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    b = ensure_batch(t, torch.zeros(2, 4, 1), m)
    assert b.lengths.tolist() == [3, 2]
    assert b.last_times.tolist() == [2.0, 3.0]
    assert b.first_times.tolist() == [0.0, 0.0]
    assert b.row_mask.tolist() == [[True, True, True, False], [True, True, False, False]]


def test_explicit_lengths_and_padding_check():
    t = torch.tensor([[0.0, 1.0, 1.0]])
    b = ensure_batch(t, torch.zeros(1, 3, 1), torch.tensor([[1, 1, 0]]).bool(), lengths=[2])
    assert b.lengths.tolist() == [2]
    with pytest.raises(BayesdynValueError, match=r"series 0: padding row 2 .* must repeat"):
        ensure_batch(
            torch.tensor([[0.0, 1.0, 5.0]]), torch.zeros(1, 3, 1), lengths=torch.tensor([2])
        )
    with pytest.raises(BayesdynValueError, match=r"lengths must lie in \[1, T=3\]"):
        ensure_batch(t, torch.zeros(1, 3, 1), lengths=[4])


def test_integer_mask_and_numpy_input():
    b = ensure_batch(np.array([0.0, 1.0]), np.ones((2, 1)), np.array([1, 0]))
    assert b.mask.dtype == torch.bool and b.mask[0, :, 0].tolist() == [True, False]


def test_shape_errors():
    with pytest.raises(BayesdynValueError, match=r"values must have shape \[B, T, D\]"):
        ensure_batch(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(BayesdynValueError, match=r"values shape \(2, 4, 1\) does not match"):
        ensure_batch(torch.zeros(2, 3), torch.zeros(2, 4, 1))
    with pytest.raises(BayesdynValueError, match=r"mask must have shape \[B, T\] or \[B, T, D\]"):
        ensure_batch(torch.zeros(2, 3), torch.zeros(2, 3, 2), torch.ones(2, 3, 3, dtype=bool))
    with pytest.raises(BayesdynValueError, match=r"times must have shape \[T\] or \[B, T\]"):
        ensure_batch(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, 1))


def test_dtype_errors():
    with pytest.raises(BayesdynTypeError, match="times must have a real floating dtype"):
        ensure_batch(torch.tensor([True, False]), torch.zeros(2, 1))
    with pytest.raises(BayesdynTypeError, match="values must have a real floating dtype"):
        ensure_batch(torch.zeros(2), torch.zeros(2, 1, dtype=torch.complex128))
    with pytest.raises(BayesdynTypeError, match="mask must be a bool tensor"):
        ensure_batch(torch.zeros(2), torch.zeros(2, 1), torch.ones(2, 1))
    with pytest.raises(BayesdynTypeError, match="mask must be bool"):
        ensure_batch(torch.zeros(2), torch.zeros(2, 1), torch.full((2, 1), 3))
    with pytest.raises(BayesdynTypeError, match="times must be a torch.Tensor or numpy array"):
        ensure_batch("abc", torch.zeros(2, 1))


def test_integer_times_are_promoted():
    b = ensure_batch(torch.tensor([1900, 1901]), torch.zeros(2, 1))
    assert b.times.dtype == torch.get_default_dtype()


def test_value_errors():
    with pytest.raises(BayesdynValueError, match=r"series 0: times must be finite; times\[1\]=nan"):
        ensure_batch(torch.tensor([0.0, float("nan")]), torch.zeros(2, 1))
    with pytest.raises(
        BayesdynValueError,
        match=r"series 1: times must be strictly increasing; times\[1\]=0.5 follows times\[0\]=1.0",
    ):
        ensure_batch(torch.tensor([[0.0, 1.0], [1.0, 0.5]]), torch.zeros(2, 2, 1))
    with pytest.raises(BayesdynValueError, match=r"series 0: has a duplicate time; times\[1\]=1.0"):
        ensure_batch(torch.tensor([1.0, 1.0]), torch.zeros(2, 1))
    with pytest.raises(BayesdynValueError, match=r"values must be finite everywhere.*from_nan"):
        v = torch.zeros(2, 1)
        v[1, 0] = float("nan")
        ensure_batch(torch.tensor([0.0, 1.0]), v, torch.tensor([True, False]))
    with pytest.raises(BayesdynValueError, match="times must not require grad"):
        ensure_batch(torch.tensor([0.0, 1.0], requires_grad=True), torch.zeros(2, 1))


def test_validation_can_be_switched_off():
    with validation_enabled(False):
        b = ensure_batch(torch.tensor([1.0, 0.0]), torch.zeros(2, 1))
    assert b.times.shape == (1, 2)


def test_covariates():
    b = ensure_batch(torch.tensor([0.0, 1.0]), torch.zeros(2, 1), covariates=torch.ones(2, 3))
    assert b.covariates.shape == (1, 2, 3)
    with pytest.raises(BayesdynValueError, match=r"covariates must have shape \[B, T, K\]"):
        ensure_batch(torch.tensor([0.0, 1.0]), torch.zeros(2, 1), covariates=torch.ones(3, 3))


def test_to_casts_float_fields_only():
    b = ensure_batch(torch.tensor([0.0, 1.0]), torch.zeros(2, 1), covariates=torch.ones(2, 1))
    b32 = b.to(dtype=torch.float32)
    assert b32.times.dtype == b32.values.dtype == b32.covariates.dtype == torch.float32
    assert b32.mask.dtype == torch.bool and b32.lengths.dtype == torch.long
    assert b.to(device="cpu").times.device.type == "cpu"
    with pytest.raises(BayesdynTypeError, match="dtype must be a floating-point"):
        b.to(dtype=torch.int32)


def test_shape_messages_for_list_input():
    with pytest.raises(BayesdynValueError, match=r"= \(1, 2, 1\); got \(1, 3\)"):
        ensure_batch([0.0, 1.0], [[1.0], [2.0]], [[True, True, True]])
    with pytest.raises(BayesdynValueError, match=r"with \[B, T\] = \(1, 2\); got \(1, 1\)"):
        ensure_batch([0.0, 1.0], [[1.0], [2.0]], covariates=[[1.0]])
