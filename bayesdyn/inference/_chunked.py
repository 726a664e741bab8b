"""Truncated backpropagation through time for long series: train window by window.

A latent SDE trained by backprop through its Euler loop keeps every step's activations until
the backward pass, so memory grows linearly with the number of solver steps (observations,
for data on a clock). :class:`ChunkedObjective` cuts the time axis into windows of about
``chunk_size`` observations and takes one optimiser step per window:

- window ``k`` covers ``(tau_k, tau_{k+1}]``; its solver grid starts at ``tau_k`` from the
  state that the posterior path of window ``k-1`` reached there (detached: gradients are
  truncated at window boundaries), and the first window starts from ``z0 ~ q(z0)`` as usual;
- every series that continues past ``tau_{k+1}`` gets an unobserved row (mask all False) at
  ``tau_{k+1}``, so its path ends exactly on the boundary, where the next window picks it up;
- the loss of a window is its negative ELBO term (observations, path KL on the window, and the
  ``z0`` KL in the first window) divided by its number of observed values.

The sum over windows of these ELBO terms, with the carried state drawn from the guide, is a
single-sample estimate of the ELBO of the whole series under a window-wise guide: the
posterior drift of window ``k`` reads an encoder context of window ``k``'s observations only.

Trade-offs (see also the README, "Reliability and scale"):

- memory is bounded by the window, whatever the series length (measured by
  ``benchmarks/bench_memory.py``);
- gradients do not flow across window boundaries (no credit assignment further back than a
  window), and the guide's context is truncated to the window; choose windows that span
  several correlation times of the dynamics;
- the alternative, torchsde's adjoint (``solve_torchsde(..., adjoint=True)``), keeps exact
  gradients over the whole series with O(1) memory in the number of steps, but each step is
  about 10x slower on CPU (DESIGN.md), it does not support the library's fused Euler training
  path, and the observation-time gathers and encoder over the full series still scale with
  its length.

Shapes follow DESIGN.md: a batch holds ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._validation import BayesdynValueError, SolverDiverged
from ..data import IrregularBatch
from ..models import PATH_SITE
from .fit import _Diverged, _finite_loss

__all__ = ["ChunkedObjective", "window_boundaries"]


def window_boundaries(batch, chunk_size: int) -> np.ndarray:
    """Boundaries ``tau_0 < tau_1 < ... < tau_K`` of windows of about ``chunk_size`` rows.

    ``tau_0`` is the earliest time; ``tau_k`` (k >= 1) is the time of every ``chunk_size``-th
    valid row in time order over all series, and ``tau_K`` the latest time.

    Shapes: ``batch.times [B, T]`` -> ``[K + 1]``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise BayesdynValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    times = batch.times.detach().cpu().double().numpy()
    valid = batch.row_mask.cpu().numpy()
    t = np.sort(times[valid])
    cuts = t[chunk_size - 1 :: chunk_size]
    return np.unique(np.concatenate([t[:1], cuts, t[-1:]]))


class ChunkedObjective:
    """One truncated-BPTT window per optimiser step (used by ``fit(..., chunk_size=N)``).

    Windows are visited in time order; after the last one the next step starts a new pass
    from ``z0 ~ q(z0)``. The position and the carried state are saved in checkpoints.

    Args:
        model: a :class:`~bayesdyn.models.LatentSDE` (its ``model``/``guide`` accept ``z0``
            and ``t0``).
        batch: all series, ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``.
        chunk_size: about this many observation rows per window.
        elbo: a :class:`~bayesdyn.inference.PathELBO` with one particle.

    Shapes:
        The carried state is ``[B, L]``.
    """

    def __init__(self, model, batch, chunk_size: int, elbo):
        if getattr(elbo, "num_particles", 1) != 1:
            raise BayesdynValueError(
                f"chunked training uses one particle per step; got num_particles="
                f"{elbo.num_particles}"
            )
        if getattr(batch, "covariates", None) is not None:
            raise BayesdynValueError("chunked training does not support covariates yet")
        if not isinstance(batch, IrregularBatch):  # e.g. a JumpBatch: its events would be lost
            raise BayesdynValueError(
                "chunked training supports plain IrregularBatch data (no events) for now; "
                f"got {type(batch).__name__}"
            )
        self.model, self.elbo = model, elbo
        self.tau = window_boundaries(batch, chunk_size)
        self.num_windows = max(len(self.tau) - 1, 1)
        self.dtype = batch.times.dtype
        # Keep the data as numpy rows; a window's batch is built when it is visited.
        lengths = batch.lengths.cpu().numpy()
        t = batch.times.detach().cpu().numpy()
        v = batch.values.detach().cpu().numpy()
        m = batch.mask.cpu().numpy()
        self.rows = [(t[b, :n], v[b, :n], m[b, :n]) for b, n in enumerate(lengths)]
        self.last = np.array([r[0][-1] for r in self.rows])
        self.position = 0
        self.carry: Tensor | None = None

    def window(self, k: int) -> tuple[IrregularBatch, np.ndarray]:
        """Batch of window ``k`` and the indices of the series in it.

        Shapes: ``times [B_k, T_k]``; indices ``[B_k]``.
        """
        lo, hi = self.tau[k], self.tau[k + 1] if k + 1 < len(self.tau) else np.inf
        first = k == 0
        keep, parts = [], []
        for b, (t, v, m) in enumerate(self.rows):
            if not first and self.last[b] <= lo:
                continue  # this series has ended: nothing of it is left to score
            sel = (t <= hi) if first else ((t > lo) & (t <= hi))
            tt, vv, mm = t[sel], v[sel], m[sel]
            if self.last[b] > hi and (tt.size == 0 or tt[-1] < hi):
                # an unobserved row at the boundary: the path ends where the next window starts
                tt = np.append(tt, hi)
                vv = np.concatenate([vv, np.zeros((1, vv.shape[1]), vv.dtype)])
                mm = np.concatenate([mm, np.zeros((1, mm.shape[1]), bool)])
            keep.append(b)
            parts.append((tt, vv, mm))
        B, T, D = len(parts), max(p[0].size for p in parts), parts[0][1].shape[1]
        times = np.empty((B, T))
        values = np.zeros((B, T, D))
        mask = np.zeros((B, T, D), dtype=bool)
        lengths = np.array([p[0].size for p in parts])
        for i, (tt, vv, mm) in enumerate(parts):
            n = tt.size
            times[i, :n], times[i, n:] = tt, tt[-1]
            values[i, :n], mask[i, :n] = vv, mm
        batch = IrregularBatch(
            torch.as_tensor(times, dtype=self.dtype),
            torch.as_tensor(values, dtype=self.dtype),
            torch.as_tensor(mask),
            torch.as_tensor(lengths, dtype=torch.long),
        )
        return batch, np.asarray(keep)

    def __call__(self, step: int, kl_scale: float) -> float:
        """Loss of the next window (gradients accumulated into the parameters)."""
        k = self.position
        batch, keep = self.window(k)
        kw: dict = {"kl_scale": kl_scale}
        if k > 0:  # start from the state the previous window's path reached at tau_k
            kw["z0"] = self.carry[torch.as_tensor(keep)]
            kw["t0"] = float(self.tau[k])
        try:
            ((model_tr, guide_tr),) = list(
                self.elbo._get_traces(self.model.model, self.model.guide, (batch,), kw)
            )
        except SolverDiverged as e:
            raise _Diverged(f"the SDE solve diverged ({str(e).splitlines()[0]})") from e
        loss = -self.elbo.elbo_particle(model_tr, guide_tr) / max(int(batch.mask.sum()), 1)
        loss_val = _finite_loss(loss)
        loss.backward()
        path = guide_tr.nodes[PATH_SITE]["value"].detach()  # [B_k, 1, U, L]
        end = path[..., 0, -1, :]
        if self.carry is None or k == 0:
            self.carry = torch.zeros(len(self.rows), end.shape[-1], dtype=end.dtype)
        self.carry = self.carry.clone()
        self.carry[torch.as_tensor(keep)] = end
        self.position = (k + 1) % self.num_windows
        return loss_val

    def state_dict(self) -> dict:
        """Window position and carried state (for checkpoints)."""
        return {"position": self.position, "carry": self.carry}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        if "position" in state:
            self.position = int(state["position"])
            self.carry = state.get("carry")
