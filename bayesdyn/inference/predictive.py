"""Posterior predictive trajectories: interpolation inside the data, forecasts beyond it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from pyro.infer import Predictive
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError
from ..models.latent_sde import PATH_SITE, PRED_SITE
from ..solvers import gather_on_grid
from .fit import _as_batch

__all__ = ["Trajectories", "posterior_predictive"]


@dataclass
class Trajectories:
    """Sampled latent and observation trajectories at query times.

    Attributes:
        times: query times, shared (``[Q]``) or per series (``[B, Q]``).
        latent: latent path samples ``[S, B, Q, L]`` (``[E, S, B, Q, L]`` for ensembles).
        observations: predicted observations ``[S, B, Q, D]`` (``[E, S, B, Q, D]``).
        last_observed: each series' last observation time ``[B]``; later times are forecasts.
        channels: channel names (length ``D``), ids: series ids (length ``B``).
        member_weights: an ensemble's mixture weights ``[E]`` (None: members pooled equally);
            quantiles, mean and std then weight each member's draws by them.
    """

    times: Tensor
    latent: Tensor
    observations: Tensor
    last_observed: Tensor
    channels: list[str] | None = None
    ids: list | None = None
    member_weights: Tensor | None = None

    @property
    def num_samples(self) -> int:
        """``S``."""
        return int(self.observations.shape[-4])

    def _flat(self, which: str) -> Tensor:
        if which not in ("observations", "latent"):
            raise BayesdynValueError(f"which must be 'observations' or 'latent'; got {which!r}")
        x = getattr(self, which)
        return x.reshape(-1, *x.shape[-3:])  # ensembles: members and draws pooled

    def _draw_weights(self) -> Tensor | None:
        """Weights ``[E*S]`` of the pooled draws of a weighted ensemble, else None."""
        w = self.member_weights
        if w is None or self.observations.dim() != 5:
            return None
        S = self.observations.shape[1]
        w = w.to(self.observations)
        return (w / w.sum() / S).repeat_interleave(S)

    def quantiles(self, qs: Sequence[float], which: str = "observations") -> Tensor:
        """Pointwise quantiles over samples (and members). Shapes: ``[len(qs), B, Q, D]``."""
        qs_t = torch.as_tensor(
            list(qs), dtype=self.observations.dtype, device=self.observations.device
        )
        if qs_t.numel() == 0 or bool(((qs_t < 0) | (qs_t > 1)).any()):
            raise BayesdynValueError(f"qs must be probabilities in [0, 1]; got {list(qs)}")
        w = self._draw_weights()
        if w is None:
            return torch.quantile(self._flat(which), qs_t, dim=0)
        # Weighted mixture: the inverse of the weighted empirical CDF.
        x, order = self._flat(which).sort(0)
        cdf = w[order].cumsum(0)  # [N, B, Q, D]
        idx = (cdf.unsqueeze(0) < qs_t.view(-1, 1, 1, 1, 1) - 1e-12).sum(1)
        idx = idx.clamp(max=x.shape[0] - 1)  # [nq, B, Q, D]
        return torch.gather(x.unsqueeze(0).expand(len(qs_t), *x.shape), 1, idx.unsqueeze(1))[:, 0]

    def mean(self, which: str = "observations") -> Tensor:
        """Pointwise mean. Shapes: ``[B, Q, D]``."""
        w = self._draw_weights()
        if w is None:
            return self._flat(which).mean(0)
        return (w.view(-1, 1, 1, 1) * self._flat(which)).sum(0)

    def std(self, which: str = "observations") -> Tensor:
        """Pointwise standard deviation. Shapes: ``[B, Q, D]``."""
        w = self._draw_weights()
        if w is None:
            return self._flat(which).std(0)
        x = self._flat(which)
        return (w.view(-1, 1, 1, 1) * (x - self.mean(which)).square()).sum(0).sqrt()

    def _times_bq(self) -> Tensor:
        B = self.observations.shape[-3]
        return self.times if self.times.dim() == 2 else self.times.expand(B, -1)

    def inverse_transform(self, scaler) -> Trajectories:
        """Observations mapped back to data units with a :class:`~bayesdyn.data.Scaler`."""
        obs = scaler.inverse_values(self.observations)
        return replace(self, observations=obs)

    def to_dataframe(self, levels: Sequence[float] = (0.5, 0.9)):
        """Long table: one row per series, time and channel with mean, median and bands.

        Columns: ``id, time, channel, region, mean, median, lower_<level>, upper_<level>...``;
        ``region`` is ``"interpolation"`` or ``"forecast"``.
        """
        import pandas as pd

        qs = [0.5]
        for lv in levels:
            if not 0 < lv < 1:
                raise BayesdynValueError(f"levels must lie in (0, 1); got {lv}")
            qs += [(1 - lv) / 2, (1 + lv) / 2]
        qv = self.quantiles(qs).cpu().numpy()  # [nq, B, Q, D]
        mean = self.mean().cpu().numpy()
        B, Q, D = mean.shape
        t = self._times_bq().cpu().numpy()
        ids = self.ids if self.ids is not None else list(range(B))
        chans = self.channels if self.channels is not None else [f"y{d}" for d in range(D)]
        last = self.last_observed.cpu().numpy()
        cols = {
            "id": np.repeat(np.asarray(ids, dtype=object), Q * D),
            "time": np.repeat(t.reshape(-1), D),
            "channel": np.tile(np.asarray(chans, dtype=object), B * Q),
            "region": np.where(
                np.repeat((t > last[:, None]).reshape(-1), D), "forecast", "interpolation"
            ),
            "mean": mean.reshape(-1),
            "median": qv[0].reshape(-1),
        }
        for i, lv in enumerate(levels):
            cols[f"lower_{lv:g}"] = qv[1 + 2 * i].reshape(-1)
            cols[f"upper_{lv:g}"] = qv[2 + 2 * i].reshape(-1)
        return pd.DataFrame(cols)

    def plot(
        self,
        series: Sequence[int] | None = None,
        *,
        data=None,
        level: float = 0.9,
        num_paths: int = 3,
        max_series: int = 6,
    ):
        """Bands, median and a few sample paths per series and channel.

        Args:
            series: which series to draw (default: the first ``max_series``).
            data: an :class:`~bayesdyn.data.IrregularTimeSeries` (same units) to overlay.
            level: central band probability.
            num_paths: sample paths drawn per panel.

        Returns:
            a matplotlib ``Figure`` with one row per series and one column per channel.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        B, Q, D = self.observations.shape[-3:]
        series = list(range(min(B, max_series))) if series is None else list(series)
        for b in series:
            if not 0 <= b < B:
                raise BayesdynValueError(f"series index {b} out of range for {B} series")
        lo, med, hi = self.quantiles([(1 - level) / 2, 0.5, (1 + level) / 2]).cpu()
        t = self._times_bq().cpu()
        flat = self._flat("observations").cpu()
        chans = self.channels or [f"y{d}" for d in range(D)]
        fig, axes = plt.subplots(
            len(series), D, figsize=(4.2 * D, 2.4 * len(series)), squeeze=False, sharex=True
        )
        for r, b in enumerate(series):
            for d in range(D):
                ax = axes[r][d]
                ax.fill_between(
                    t[b],
                    lo[b, :, d],
                    hi[b, :, d],
                    alpha=0.3,
                    color="C0",
                    label=f"{int(level * 100)}% band",
                )
                ax.plot(t[b], med[b, :, d], color="C0", lw=1.2, label="median")
                for s in range(min(num_paths, flat.shape[0])):
                    ax.plot(t[b], flat[s, b, :, d], color="C0", lw=0.5, alpha=0.5)
                ax.axvline(float(self.last_observed[b].cpu()), color="k", ls="--", lw=0.8)
                if data is not None:
                    tb, vb, mb = data.times[b], data.values[b], data.mask[b]
                    ax.scatter(
                        tb[mb[:, d]], vb[mb[:, d], d], s=8, color="C3", zorder=3, label="observed"
                    )
                name = self.ids[b] if self.ids is not None else b
                ax.set_title(f"series {name}: {chans[d]}", fontsize=9)
        axes[0][0].legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig


def posterior_predictive(
    model,
    data,
    times: Tensor | Sequence[float] | np.ndarray,
    num_samples: int = 100,
    *,
    chunk_size: int = 64,
    seed: int | None = None,
) -> Trajectories:
    """Sample the posterior predictive at query times (interpolation and forecasts).

    The guide's posterior SDE runs from ``t0`` to each series' last observation, conditioned
    on the data through the encoder; after it, the prior dynamics take over. The decoder then
    draws observations at the query times. Samples are drawn with ``pyro.infer.Predictive``
    (``parallel=True``) in chunks of ``chunk_size``.

    Args:
        model: a fitted :class:`~bayesdyn.models.LatentSDE`.
        data: the conditioning series (``IrregularTimeSeries`` or ``IrregularBatch``).
        times: query times, shared ``[Q]`` or per series ``[B, Q]``; not before ``t0``.
        num_samples: ``S``.
        seed: seed for reproducible draws.

    Returns:
        :class:`Trajectories` with ``latent [S, B, Q, L]`` and ``observations [S, B, Q, D]``.
    """
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise BayesdynValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    batch = _as_batch(data, "data")
    model.check_batch(batch)
    dtype = batch.times.dtype
    if not isinstance(times, Tensor):
        try:
            times = torch.as_tensor(np.asarray(times, dtype=float), dtype=dtype)
        except (TypeError, ValueError) as e:
            raise BayesdynTypeError(f"times must be an array of floats; got {times!r}") from e
    times = times.to(dtype)
    if times.dim() not in (1, 2) or times.shape[-1] == 0:
        raise BayesdynValueError(
            f"times must have shape [Q] or [B, Q] with Q >= 1; got {tuple(times.shape)}"
        )
    if seed is not None:
        torch.manual_seed(seed)
    lat, obs = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            done = 0
            while done < num_samples:
                n = min(chunk_size, num_samples - done)
                pred = Predictive(
                    model.model,
                    guide=model.guide,
                    num_samples=n,
                    parallel=True,
                    return_sites=[PATH_SITE, PRED_SITE],
                )(batch, query_times=times)
                grid = model.make_grid(batch, times)
                qidx = (
                    grid.query_index
                    if grid.query_index.dim() == 2
                    else grid.query_index.expand(batch.times.shape[0], -1)
                )
                path = pred[PATH_SITE].squeeze(-3)  # [n, B, U, L]
                lat.append(gather_on_grid(path, qidx))
                obs.append(pred[PRED_SITE])
                done += n
    finally:
        model.train(was_training)
    last = batch.times.gather(1, (batch.lengths - 1).unsqueeze(-1)).squeeze(-1)
    return Trajectories(
        times=times,
        latent=torch.cat(lat),
        observations=torch.cat(obs),
        last_observed=last,
        channels=list(getattr(data, "channels", None) or []) or None,
        ids=list(getattr(data, "ids", None) or []) or None,
    )
