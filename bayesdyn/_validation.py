"""Validation helpers and error types used at bayesdyn's public boundary.

Every check names the argument, what was expected and what was received. Expensive
O(B*T) checks run only while validation is enabled (the default); see
:func:`enable_validation`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

__all__ = [
    "BayesdynTypeError",
    "BayesdynValueError",
    "FitDiverged",
    "SolverDiverged",
    "check_positive",
    "enable_validation",
    "is_validation_enabled",
    "validation_enabled",
]

_VALIDATION = True


class BayesdynValueError(ValueError):
    """A user-facing argument had the right type but an invalid value or shape."""


class BayesdynTypeError(TypeError):
    """A user-facing argument had the wrong type or dtype."""


class SolverDiverged(BayesdynValueError):
    """An SDE solve produced non-finite states."""


class FitDiverged(RuntimeError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept."""


def enable_validation(is_validate: bool = True) -> None:
    """Switch the expensive O(B*T) input checks on or off (on by default).

    Args:
        is_validate: whether to run them.
    """
    global _VALIDATION
    _VALIDATION = bool(is_validate)


def is_validation_enabled() -> bool:
    """Whether the expensive input checks run."""
    return _VALIDATION


@contextmanager
def validation_enabled(is_validate: bool = True):
    """Context manager that sets validation temporarily."""
    old = _VALIDATION
    enable_validation(is_validate)
    try:
        yield
    finally:
        enable_validation(old)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(value).__name__} {value!r}"


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` after checking that it is a finite positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import torch

            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = float(value)
            else:
                raise TypeError
        except TypeError:
            raise BayesdynTypeError(f"{name} must be a number; got {_describe(value)}") from None
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not ok or v != v or v in (float("inf"), float("-inf")):
        bound = "non-negative" if allow_zero else "positive"
        raise BayesdynValueError(f"{name} must be a finite {bound} number; got {v}")
    return v
