"""Per-channel standardization of observed values."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from .._validation import BayesdynTypeError, BayesdynValueError
from ._series import IrregularTimeSeries

__all__ = ["Scaler"]

#: Smallest standard deviation treated as non-constant.
_STD_FLOOR = 1e-8

_Array = TypeVar("_Array")


class Scaler:
    """Affine per-channel scaling ``x_scaled = (x - mean) / std``.

    Statistics are taken over observed values only (mask True). A channel whose standard
    deviation is below ``1e-8`` (constant channel) gets ``std = 1`` so it is only centred.

    Args:
        mean: per-channel means.
        std: per-channel standard deviations, finite and positive.

    Shapes:
        - ``mean``: ``[D]``
        - ``std``: ``[D]``
    """

    def __init__(self, mean: Any, std: Any) -> None:
        m = np.array(mean, dtype=np.float64, copy=True).reshape(-1)
        s = np.array(std, dtype=np.float64, copy=True).reshape(-1)
        if m.shape != s.shape:
            raise BayesdynValueError(
                f"mean and std must have the same shape [D]; got {m.shape} and {s.shape}"
            )
        if not (np.isfinite(m).all() and np.isfinite(s).all()):
            raise BayesdynValueError(f"mean and std must be finite; got mean={m}, std={s}")
        if (s <= 0).any():
            raise BayesdynValueError(f"std must be positive; got {s.tolist()}")
        m.setflags(write=False)
        s.setflags(write=False)
        self.mean = m
        self.std = s

    @property
    def obs_dim(self) -> int:
        """Number of channels ``D``."""
        return int(self.mean.shape[0])

    def __repr__(self) -> str:
        return f"Scaler(mean={self.mean.tolist()}, std={self.std.tolist()})"

    @classmethod
    def fit(cls, series: IrregularTimeSeries) -> Scaler:
        """Fit mean and (population) std of every channel over its observed values.

        Args:
            series: the data to fit on.

        Returns:
            A :class:`Scaler`.

        Raises:
            BayesdynValueError: if a channel has no observed value.

        Shapes:
            ``series`` with ``D`` channels -> ``mean [D]``, ``std [D]``.
        """
        if not isinstance(series, IrregularTimeSeries):
            raise BayesdynTypeError(
                f"series must be an IrregularTimeSeries; got {type(series).__name__}"
            )
        v = np.concatenate(series.values)
        m = np.concatenate(series.mask)
        count = m.sum(0)
        if (count == 0).any():
            d = int(np.flatnonzero(count == 0)[0])
            raise BayesdynValueError(
                f"cannot fit a Scaler: channel {series.channels[d]!r} (index {d}) has no "
                "observed value"
            )
        mean = (v * m).sum(0) / count
        var = (((v - mean) * m) ** 2).sum(0) / count
        std = np.sqrt(var)
        std = np.where(std < _STD_FLOOR, 1.0, std)
        return cls(mean, std)

    def _check_series(self, series: IrregularTimeSeries) -> None:
        if not isinstance(series, IrregularTimeSeries):
            raise BayesdynTypeError(
                f"series must be an IrregularTimeSeries; got {type(series).__name__}"
            )
        if series.obs_dim != self.obs_dim:
            raise BayesdynValueError(
                f"series has {series.obs_dim} channels, the scaler expects {self.obs_dim}"
            )

    def transform(self, series: IrregularTimeSeries) -> IrregularTimeSeries:
        """Scale the observed values of ``series`` (unobserved stay 0; covariates untouched).

        Args:
            series: data with ``D`` channels.

        Returns:
            A new :class:`IrregularTimeSeries` with the same times, masks, ids and channels.

        Shapes:
            Unchanged per series ``[T_i, D]``.
        """
        self._check_series(series)
        vals = [
            np.where(m, (v - self.mean) / self.std, 0.0)
            for v, m in zip(series.values, series.mask, strict=True)
        ]
        return series._with_values(vals)

    def inverse_transform(self, series: IrregularTimeSeries) -> IrregularTimeSeries:
        """Undo :meth:`transform` on a collection.

        Args:
            series: scaled data with ``D`` channels.

        Returns:
            A new :class:`IrregularTimeSeries` in the original units.

        Shapes:
            Unchanged per series ``[T_i, D]``.
        """
        self._check_series(series)
        vals = [
            np.where(m, v * self.std + self.mean, 0.0)
            for v, m in zip(series.values, series.mask, strict=True)
        ]
        return series._with_values(vals)

    def _coerce(self, name: str, x: Any) -> tuple[Any, Any, Any]:
        """Return ``(x, mean, std)`` in x's library (numpy or torch), dtype and device."""
        shape = getattr(x, "shape", None)
        if shape is None:
            raise BayesdynTypeError(
                f"{name} must be a numpy array or torch tensor; got {type(x).__name__}"
            )
        if len(shape) == 0 or shape[-1] != self.obs_dim:
            raise BayesdynValueError(
                f"{name} must have last dimension D={self.obs_dim}; got shape {tuple(shape)}"
            )
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "iuf":
                raise BayesdynTypeError(f"{name} must be real numbers; got dtype {x.dtype}")
            return x, self.mean, self.std
        import torch

        if isinstance(x, torch.Tensor):
            if not x.dtype.is_floating_point:
                raise BayesdynTypeError(f"{name} must be a floating tensor; got {x.dtype}")
            kw = {"dtype": x.dtype, "device": x.device}
            return x, torch.tensor(self.mean.tolist(), **kw), torch.tensor(self.std.tolist(), **kw)
        raise BayesdynTypeError(
            f"{name} must be a numpy array or torch tensor; got {type(x).__name__}"
        )

    def transform_values(self, x: _Array) -> _Array:
        """Scale raw values: ``(x - mean) / std`` (numpy array or torch tensor).

        Args:
            x: values in the original units.

        Returns:
            Scaled values of the same type, dtype and device.

        Shapes:
            ``[..., D]`` -> ``[..., D]``.
        """
        x, m, s = self._coerce("x", x)
        return (x - m) / s

    def inverse_values(self, x: _Array) -> _Array:
        """Map scaled values back: ``x * std + mean``; returns the input's type.

        Works on numpy arrays and torch tensors (keeping dtype, device and any autograd graph
        of the input).

        Args:
            x: scaled values, e.g. posterior predictive samples.

        Returns:
            Values in the original units, of the same type, dtype and device.

        Shapes:
            ``[..., D]`` -> ``[..., D]``, e.g. samples ``[S, B, T, D]``.
        """
        x, m, s = self._coerce("x", x)
        return x * s + m

    def inverse_std(self, s: _Array) -> _Array:
        """Map a scaled standard deviation (or scale) back: ``s * std``.

        Args:
            s: standard deviations on the scaled axis.

        Returns:
            Standard deviations in the original units, of the same type.

        Shapes:
            ``[..., D]`` -> ``[..., D]``.
        """
        s, _, sd = self._coerce("s", s)
        return s * sd

    def state_dict(self) -> dict[str, list[float]]:
        """Plain-python state (lists of floats), safe for ``torch.load(weights_only=True)``.

        Shapes:
            ``{"mean": [D], "std": [D]}``.
        """
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Scaler:
        """Rebuild a scaler from :meth:`state_dict` output.

        Args:
            state: a dict with keys ``"mean"`` and ``"std"``.

        Returns:
            A :class:`Scaler`.

        Shapes:
            ``{"mean": [D], "std": [D]}``.
        """
        if not isinstance(state, dict):
            raise BayesdynTypeError(f"state must be a dict; got {type(state).__name__}")
        missing = [k for k in ("mean", "std") if k not in state]
        if missing:
            raise BayesdynValueError(
                f"state is missing keys {missing}; expected 'mean' and 'std', got {sorted(state)}"
            )
        return cls(state["mean"], state["std"])
