"""The padded batch of irregular series that models and solvers consume.

Padding convention (the library-wide contract): series shorter than the batch are padded at the
end with rows whose time repeats the series' last valid time, whose mask is False and whose
values are 0. ``times`` therefore stays non-decreasing along ``T`` and padding never counts.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError, is_validation_enabled

__all__ = ["IrregularBatch", "ensure_batch"]


class IrregularBatch(NamedTuple):
    """A batch of ``B`` irregularly observed series padded to a common length ``T``.

    Padding rows (row index ``>= lengths[b]``) repeat the series' last valid time, have
    ``mask=False`` and ``values=0``; covariates are padded by repeating the last valid row.

    Attributes:
        times: observation times, non-decreasing along ``T``.
        values: observed values; 0 where ``mask`` is False.
        mask: True where a value is observed.
        lengths: number of valid rows of each series.
        covariates: optional exogenous inputs at the observation times.

    Shapes:
        - ``times``: ``[B, T]`` float
        - ``values``: ``[B, T, D]`` float
        - ``mask``: ``[B, T, D]`` bool
        - ``lengths``: ``[B]`` long
        - ``covariates``: ``[B, T, K]`` float or None
    """

    times: Tensor
    values: Tensor
    mask: Tensor
    lengths: Tensor
    covariates: Optional[Tensor] = None

    @property
    def num_series(self) -> int:
        """Number of series ``B``."""
        return int(self.times.shape[0])

    @property
    def num_times(self) -> int:
        """Padded number of rows ``T``."""
        return int(self.times.shape[1])

    @property
    def obs_dim(self) -> int:
        """Number of observed channels ``D``."""
        return int(self.values.shape[-1])

    @property
    def row_mask(self) -> Tensor:
        """True for valid (non-padding) rows.

        Shapes:
            ``[B, T]`` bool.
        """
        idx = torch.arange(self.num_times, device=self.times.device)
        return idx.unsqueeze(0) < self.lengths.unsqueeze(-1)

    @property
    def last_times(self) -> Tensor:
        """Time of each series' last valid row.

        Shapes:
            ``[B]``.
        """
        idx = (self.lengths - 1).clamp(min=0).unsqueeze(-1)
        return self.times.gather(-1, idx).squeeze(-1)

    @property
    def first_times(self) -> Tensor:
        """Time of each series' first row.

        Shapes:
            ``[B]``.
        """
        return self.times[:, 0]

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> IrregularBatch:
        """Move to ``device`` and cast the float fields (times, values, covariates) to ``dtype``.

        Args:
            device: target device, or None to keep the current one.
            dtype: target floating dtype, or None to keep the current one. ``mask`` and
                ``lengths`` keep their dtypes.

        Returns:
            A new :class:`IrregularBatch`.

        Shapes:
            Unchanged.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise BayesdynTypeError(f"dtype must be a floating-point torch dtype; got {dtype}")

        def _f(x: Optional[Tensor]) -> Optional[Tensor]:
            return None if x is None else x.to(device=device, dtype=dtype)

        return IrregularBatch(
            times=_f(self.times),
            values=_f(self.values),
            mask=self.mask.to(device=device),
            lengths=self.lengths.to(device=device),
            covariates=_f(self.covariates),
        )


def _as_tensor(name: str, x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x)
        except ValueError as err:
            raise BayesdynValueError(
                f"{name} must be a rectangular array; got ragged input"
            ) from err
        if arr.dtype.kind not in "biuf":
            raise BayesdynTypeError(f"{name} must be numeric; got numpy dtype {arr.dtype}")
        return torch.from_numpy(np.array(arr, copy=True))
    raise BayesdynTypeError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}")


def _check_float(name: str, x: Tensor) -> Tensor:
    if x.dtype.is_floating_point:
        return x
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise BayesdynTypeError(f"{name} must have a real floating dtype; got {x.dtype}")
    # Integer input (e.g. years) is exact in floating point; promote it rather than refuse.
    return x.to(torch.get_default_dtype())


def _infer_lengths(times: Tensor, mask: Tensor) -> Tensor:
    # A trailing row is padding when it repeats the previous time and observes nothing;
    # valid rows have strictly increasing times, so this recovers the padding convention.
    B, T = times.shape
    if T == 0:
        return torch.zeros(B, dtype=torch.long, device=times.device)
    repeat = torch.zeros_like(times, dtype=torch.bool)
    repeat[:, 1:] = times[:, 1:] == times[:, :-1]
    pad_like = repeat & ~mask.any(-1)
    # Count the run of pad-like rows at the end of each series.
    not_pad = ~pad_like
    idx = torch.arange(T, device=times.device).expand(B, T)
    last_real = torch.where(not_pad, idx, torch.zeros_like(idx)).amax(-1)
    return last_real + 1


def ensure_batch(
    times: Any,
    values: Any,
    mask: Any = None,
    *,
    lengths: Any = None,
    covariates: Any = None,
) -> IrregularBatch:
    """Validate tensors and wrap them as an :class:`IrregularBatch`, promoting one series to B=1.

    Accepts either a single series (``times [T]``, ``values [T, D]``) or a batch
    (``times [B, T]``, ``values [B, T, D]``). Numpy arrays are converted; integer times or
    values are cast to the default float dtype. When ``lengths`` is not given it is inferred
    from the padding convention: trailing rows that repeat the previous time and have an
    all-False mask are padding. The O(B*T) checks (finite, increasing times; finite values)
    run only while validation is enabled.

    Args:
        times: observation times.
        values: observed values (must be finite everywhere; use
            ``IrregularTimeSeries.from_nan`` for NaN-coded data).
        mask: bool mask; ``[T]`` or ``[B, T]`` row masks are broadcast over ``D``. Integer
            0/1 masks are accepted. Defaults to all True on valid rows.
        lengths: optional number of valid rows per series.
        covariates: optional exogenous inputs.

    Returns:
        An :class:`IrregularBatch`.

    Raises:
        BayesdynTypeError: for non-tensor input or wrong dtypes.
        BayesdynValueError: for inconsistent shapes, non-finite or non-increasing times,
            non-finite values.

    Shapes:
        - ``times``: ``[T]`` or ``[B, T]``
        - ``values``: ``[T, D]`` or ``[B, T, D]``
        - ``mask``: ``[T]``, ``[T, D]``, ``[B, T]`` or ``[B, T, D]``
        - ``lengths``: ``[B]``
        - ``covariates``: ``[T, K]`` or ``[B, T, K]``
        - returns a batch with ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``.
    """
    times = _check_float("times", _as_tensor("times", times))
    values = _check_float("values", _as_tensor("values", values))
    if times.requires_grad:
        raise BayesdynValueError("times must not require grad; observation times are data")
    single = times.dim() == 1
    if times.dim() not in (1, 2):
        raise BayesdynValueError(f"times must have shape [T] or [B, T]; got {tuple(times.shape)}")
    if values.dim() != times.dim() + 1:
        expect = "[T, D]" if single else "[B, T, D]"
        raise BayesdynValueError(
            f"values must have shape {expect} to match times of shape {tuple(times.shape)}; "
            f"got {tuple(values.shape)}"
        )
    if single:
        times = times.unsqueeze(0)
        values = values.unsqueeze(0)
    if tuple(values.shape[:2]) != tuple(times.shape):
        raise BayesdynValueError(
            f"values shape {tuple(values.shape)} does not match times shape "
            f"{tuple(times.shape)} in [B, T]"
        )
    if values.device != times.device:
        raise BayesdynValueError(
            f"times and values must be on one device; got {times.device} and {values.device}"
        )
    B, T, D = values.shape
    if T == 0:
        raise BayesdynValueError("times must contain at least one time point; got T=0")

    if mask is None:
        mask_t = torch.ones(B, T, D, dtype=torch.bool, device=times.device)
    else:
        mask_t = _as_tensor("mask", mask).to(times.device)
        mask_shape = tuple(mask_t.shape)
        if mask_t.dtype != torch.bool:
            if mask_t.dtype.is_floating_point or mask_t.dtype.is_complex:
                raise BayesdynTypeError(f"mask must be a bool tensor; got dtype {mask_t.dtype}")
            if bool(((mask_t != 0) & (mask_t != 1)).any()):
                raise BayesdynTypeError(
                    f"mask must be bool (or integer 0/1); got dtype {mask_t.dtype} with values "
                    "other than 0 and 1"
                )
            mask_t = mask_t != 0
        if single:
            mask_t = mask_t.unsqueeze(0)
        if mask_t.dim() == 2:
            mask_t = mask_t.unsqueeze(-1)
        if mask_t.dim() != 3 or tuple(mask_t.shape[:2]) != (B, T) or mask_t.shape[-1] not in (1, D):
            raise BayesdynValueError(
                f"mask must have shape [B, T] or [B, T, D] = {(B, T, D)}; got {mask_shape}"
            )
        mask_t = mask_t.expand(B, T, D).clone()

    if lengths is None:
        lengths_t = _infer_lengths(times, mask_t) if mask is not None else None
        if lengths_t is None:
            lengths_t = torch.full((B,), T, dtype=torch.long, device=times.device)
    else:
        lengths_t = _as_tensor("lengths", lengths).to(times.device)
        if lengths_t.dtype.is_floating_point or lengths_t.dtype == torch.bool:
            raise BayesdynTypeError(f"lengths must be an integer tensor; got {lengths_t.dtype}")
        lengths_t = lengths_t.reshape(-1).long()
        if lengths_t.shape != (B,):
            raise BayesdynValueError(
                f"lengths must have shape [B] = [{B}]; got {tuple(lengths_t.shape)}"
            )
        bad = (lengths_t < 1) | (lengths_t > T)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise BayesdynValueError(
                f"lengths must lie in [1, T={T}]; lengths[{b}]={int(lengths_t[b])}"
            )

    cov_t = None
    if covariates is not None:
        cov_t = _check_float("covariates", _as_tensor("covariates", covariates)).to(times.device)
        cov_shape = tuple(cov_t.shape)
        if single:
            cov_t = cov_t.unsqueeze(0)
        if cov_t.dim() != 3 or tuple(cov_t.shape[:2]) != (B, T):
            raise BayesdynValueError(
                f"covariates must have shape [B, T, K] with [B, T] = {(B, T)}; got {cov_shape}"
            )

    if is_validation_enabled():
        with torch.no_grad():
            _check_batch_values(times, values, mask_t, lengths_t, cov_t)
    return IrregularBatch(times, values, mask_t, lengths_t, cov_t)


def _check_batch_values(
    times: Tensor, values: Tensor, mask: Tensor, lengths: Tensor, cov: Optional[Tensor]
) -> None:
    B, T = times.shape
    finite = torch.isfinite(times)
    if not bool(finite.all()):
        b, i = (int(v) for v in (~finite).nonzero()[0])
        raise BayesdynValueError(
            f"series {b}: times must be finite; times[{i}]={float(times[b, i])}"
        )
    row_ok = torch.arange(T, device=times.device).unsqueeze(0) < lengths.unsqueeze(-1)
    if T > 1:
        diff = times[:, 1:] - times[:, :-1]
        # Valid rows must increase strictly; padding rows repeat the last valid time.
        bad_valid = (diff <= 0) & row_ok[:, 1:]
        if bool(bad_valid.any()):
            b, i = (int(v) for v in bad_valid.nonzero()[0])
            t1, t0 = float(times[b, i + 1]), float(times[b, i])
            kind = "has a duplicate time" if t1 == t0 else "times must be strictly increasing"
            raise BayesdynValueError(
                f"series {b}: {kind}; times[{i + 1}]={t1} follows times[{i}]={t0}"
            )
    last = times.gather(-1, (lengths - 1).unsqueeze(-1))
    bad_pad = ~row_ok & ((times != last) | mask.any(-1))
    if bool(bad_pad.any()):
        b, i = (int(v) for v in bad_pad.nonzero()[0])
        raise BayesdynValueError(
            f"series {b}: padding row {i} (lengths[{b}]={int(lengths[b])}) must repeat the last "
            f"valid time {float(last[b, 0])} and have mask False; got time {float(times[b, i])} "
            f"and mask {mask[b, i].tolist()}"
        )
    vfin = torch.isfinite(values)
    if not bool(vfin.all()):
        b, i, d = (int(v) for v in (~vfin).nonzero()[0])
        raise BayesdynValueError(
            f"series {b}: values must be finite everywhere (NaN never means missing inside "
            f"bayesdyn); values[{i}, {d}]={float(values[b, i, d])}. Use mask=False for missing "
            "values, or build the data with IrregularTimeSeries.from_nan"
        )
    if cov is not None and not bool(torch.isfinite(cov).all()):
        b, i, k = (int(v) for v in (~torch.isfinite(cov)).nonzero()[0])
        raise BayesdynValueError(
            f"series {b}: covariates must be finite; covariates[{i}, {k}]={float(cov[b, i, k])}"
        )
