"""Saving and loading fitted models as plain data (``torch.load(..., weights_only=True)``)."""

from __future__ import annotations

import os
from pathlib import Path

from .._validation import BayesdynValueError
from ..models import LatentSDE
from .fit import load_checkpoint, save_checkpoint

__all__ = ["load_model", "save_model"]


def save_model(model: LatentSDE, path: str | os.PathLike, *, extra: dict | None = None) -> None:
    """Save a model's config and state dict (plus plain-data ``extra``, e.g. a scaler) atomically."""
    save_checkpoint(Path(path), {"model_payload": model.to_checkpoint(), "extra": extra or {}})


def load_model(path: str | os.PathLike) -> tuple[LatentSDE, dict]:
    """Load a model saved by :func:`save_model`; never unpickles arbitrary objects.

    Returns:
        ``(model, extra)``.
    """
    payload = load_checkpoint(path)
    if "model_payload" not in payload:
        raise BayesdynValueError(f"{str(path)!r} is a training checkpoint, not a saved model")
    return LatentSDE.from_checkpoint(payload["model_payload"]), payload.get("extra", {})
