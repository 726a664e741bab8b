"""Diagnostics: forecast scores and calibration (ArviZ conversion lives here too)."""

from .metrics import calibration_table, crps_ensemble, interval_coverage, pit_values

__all__ = ["calibration_table", "crps_ensemble", "interval_coverage", "pit_values"]
