"""Diagnostics: forecast scores, calibration, ArviZ conversion and the HTML report.

``_arviz`` is the only module of bayesdyn that imports ArviZ.
"""

from .inference_data import to_inference_data
from .lfo import rolling_origin
from .metrics import (
    CalibrationError,
    calibration_error,
    calibration_table,
    coverage_flags,
    crps_ensemble,
    crps_normal,
    energy_score,
    interval_coverage,
    mixture_nll,
    nll,
    pit_values,
)

__all__ = [
    "CalibrationError",
    "calibration_error",
    "calibration_table",
    "coverage_flags",
    "crps_ensemble",
    "crps_normal",
    "energy_score",
    "interval_coverage",
    "mixture_nll",
    "nll",
    "pit_values",
    "rolling_origin",
    "to_inference_data",
]
