"""Irregular time series: containers, padding to batches, scalers, loaders and simulators.

This layer uses numpy internally and never imports pyro or uses torch autograd; torch
tensors are created only when converting to an :class:`IrregularBatch`.
"""

from ._batch import IrregularBatch, ensure_batch
from ._events import (
    EventBatch,
    JumpBatch,
    check_event_sequences,
    load_point_process,
    pad_events,
    read_event_sequences,
    read_events_csv,
    write_events_csv,
)
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
from ._synthetic_jumps import (
    hawkes_compensator,
    hawkes_intensity,
    hawkes_log_likelihood,
    merton_log_density,
    self_correcting_intensity,
    self_correcting_log_likelihood,
    simulate_hawkes,
    simulate_merton,
    simulate_self_correcting,
)

__all__ = [
    "EventBatch",
    "IrregularBatch",
    "IrregularTimeSeries",
    "JumpBatch",
    "Scaler",
    "SyntheticData",
    "check_event_sequences",
    "ensure_batch",
    "hawkes_compensator",
    "hawkes_intensity",
    "hawkes_log_likelihood",
    "load_brusselator",
    "load_lynx_hare",
    "load_point_process",
    "merton_log_density",
    "pad_events",
    "read_event_sequences",
    "read_events_csv",
    "simulate_double_ou",
    "simulate_gbm",
    "self_correcting_intensity",
    "self_correcting_log_likelihood",
    "simulate_hawkes",
    "simulate_self_correcting",
    "simulate_lorenz",
    "simulate_merton",
    "simulate_ou",
    "write_events_csv",
]
