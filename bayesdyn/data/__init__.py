"""Irregular time series: containers, padding to batches, scalers, loaders and simulators.

This layer uses numpy internally and never imports pyro or uses torch autograd; torch
tensors are created only when converting to an :class:`IrregularBatch`.
"""

from ._batch import IrregularBatch, ensure_batch
from ._loaders import load_brusselator, load_lynx_hare
from ._scaler import Scaler
from ._series import IrregularTimeSeries
from ._synthetic import (
    SyntheticData,
    simulate_double_ou,
    simulate_gbm,
    simulate_lorenz,
    simulate_ou,
)

__all__ = [
    "IrregularBatch",
    "IrregularTimeSeries",
    "Scaler",
    "SyntheticData",
    "ensure_batch",
    "load_brusselator",
    "load_lynx_hare",
    "simulate_double_ou",
    "simulate_gbm",
    "simulate_lorenz",
    "simulate_ou",
]
