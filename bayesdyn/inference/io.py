"""Saving and loading fitted models as plain data (``torch.load(..., weights_only=True)``).

A saved model is ``{"model_class": name, "model_payload": model.to_checkpoint(), "extra": ...}``
inside a bayesdyn checkpoint. ``model_class`` is a key of :data:`MODEL_CLASSES`; files written
before it existed hold a ``LatentSDE`` and load as one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .._validation import BayesdynTypeError, BayesdynValueError
from ..models import LatentJumpSDE, LatentSDE
from .fit import load_checkpoint, save_checkpoint

__all__ = ["MODEL_CLASSES", "load_model", "save_model"]

#: The model classes :func:`save_model` / :func:`load_model` know, by the name stored in a file.
MODEL_CLASSES: dict[str, type] = {"LatentSDE": LatentSDE, "LatentJumpSDE": LatentJumpSDE}

SavedModel = Union[LatentSDE, LatentJumpSDE]


def save_model(model: SavedModel, path: str | os.PathLike, *, extra: dict | None = None) -> None:
    """Save a model's class name, config and state dict (plus plain-data ``extra``) atomically.

    Args:
        model: a :class:`~bayesdyn.models.LatentSDE` or :class:`~bayesdyn.models.LatentJumpSDE`
            (exactly one of :data:`MODEL_CLASSES`, not a subclass: the file names the class
            that rebuilds it).
        path: the file to write (``*.pt``).
        extra: plain data stored alongside (e.g. ``{"scaler": scaler.state_dict()}``): dicts,
            lists, numbers, strings and tensors only, so it loads with ``weights_only=True``.

    Raises:
        BayesdynTypeError: if ``model`` is not one of :data:`MODEL_CLASSES`.
    """
    name = type(model).__name__
    if MODEL_CLASSES.get(name) is not type(model):
        raise BayesdynTypeError(
            f"model must be one of {sorted(MODEL_CLASSES)}; got {type(model).__qualname__}"
        )
    save_checkpoint(
        Path(path),
        {"model_class": name, "model_payload": model.to_checkpoint(), "extra": extra or {}},
    )


def load_model(path: str | os.PathLike) -> tuple[SavedModel, dict]:
    """Load a model saved by :func:`save_model`; never unpickles arbitrary objects.

    Args:
        path: a file written by :func:`save_model`. A file without a ``model_class`` entry
            (written before jump models could be saved) holds a ``LatentSDE``.

    Returns:
        ``(model, extra)``: a model of the saved class with the saved config and state dict,
        and the ``extra`` dict given to :func:`save_model` (``{}`` when none was).

    Raises:
        BayesdynValueError: if the file is missing, unsafe or corrupt, is a training
            checkpoint rather than a saved model, or names a model class that is not one of
            :data:`MODEL_CLASSES` (the message names the file and the class).
    """
    payload = load_checkpoint(path)
    if "model_payload" not in payload:
        raise BayesdynValueError(f"{str(path)!r} is a training checkpoint, not a saved model")
    name = payload.get("model_class", "LatentSDE")
    cls = MODEL_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise BayesdynValueError(
            f"model file {str(path)!r} holds an unknown model class {name!r}; expected one of "
            f"{sorted(MODEL_CLASSES)}"
        )
    return cls.from_checkpoint(payload["model_payload"]), payload.get("extra", {})
