"""Posterior predictive of future events for :class:`~bayesdyn.models.LatentJumpSDE`.

The guide's posterior latent path runs over each series' observation window (conditioned on its
observations and events); from the window end the prior jump SDE is simulated forward, with
events drawn by Ogata thinning along the path and the state jumping at each of them
(:func:`bayesdyn.solvers.simulate_jump_diffusion_events`).

:func:`event_log_likelihood` scores held-out series: the log-likelihood of their events (and
observations) under the model's *prior* jump SDE, whose state jumps at the series' own events,
so the intensity at each time depends on the past only (the predictive intensity).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import BayesdynTypeError, BayesdynValueError, check_positive
from ..solvers import gather_on_grid, simulate_jump_diffusion_events

__all__ = ["EventForecast", "EventLikelihood", "event_log_likelihood", "forecast_events"]


@dataclass
class EventForecast:
    """Sampled future events and intensity paths.

    Attributes:
        times, marks, mask: future events per sample and series (padding: ``mask=False``).
        start, end: forecast window per series (``start`` is the observation window's end).
        grid_times: forecast grid per series.
        intensity: per-mark forecast intensity (left limits) on ``grid_times``.
        fit_times: the solver grid over the observation windows (one row per series for a
            model on per-series grids).
        fit_intensity: per-mark posterior intensity (left limits) on ``fit_times``.
        ids: series ids, if known.

    Shapes:
        - ``times``, ``marks``, ``mask``: ``[S, B, N]``; ``start``, ``end``: ``[B]``
        - ``grid_times``: ``[B, M+1]``; ``intensity``: ``[S, B, M+1, K]``
        - ``fit_times``: ``[U]`` (or ``[B, U]``); ``fit_intensity``: ``[S, B, U, K]``
    """

    times: Tensor
    marks: Tensor
    mask: Tensor
    start: Tensor
    end: Tensor
    grid_times: Tensor
    intensity: Tensor
    fit_times: Tensor
    fit_intensity: Tensor
    ids: list | None = None

    @property
    def num_samples(self) -> int:
        """``S``."""
        return int(self.times.shape[0])

    def counts(self, mark: int | None = None) -> Tensor:
        """Number of forecast events per sample and series (of one mark, if given).

        Shapes: ``[S, B]``.
        """
        m = self.mask if mark is None else self.mask & (self.marks == mark)
        return m.sum(-1)

    def count_quantiles(self, qs, mark: int | None = None) -> Tensor:
        """Quantiles of the forecast event count. Shapes: ``[len(qs), B]``."""
        c = self.counts(mark).to(self.intensity.dtype)
        return torch.quantile(c, torch.as_tensor(list(qs), dtype=c.dtype), dim=0)

    def intensity_quantiles(self, qs, *, which: str = "forecast", total: bool = True) -> Tensor:
        """Pointwise intensity quantiles over samples (the intensity band).

        Args:
            qs: probabilities.
            which: ``"forecast"`` (on ``grid_times``) or ``"fit"`` (on ``fit_times``).
            total: sum over marks first.

        Shapes: ``[len(qs), B, Q]`` (``[len(qs), B, Q, K]`` with ``total=False``).
        """
        if which not in ("forecast", "fit"):
            raise BayesdynValueError(f"which must be 'forecast' or 'fit'; got {which!r}")
        lam = self.intensity if which == "forecast" else self.fit_intensity
        if total:
            lam = lam.sum(-1)
        q = torch.as_tensor(list(qs), dtype=lam.dtype)
        if q.numel() == 0 or bool(((q < 0) | (q > 1)).any()):
            raise BayesdynValueError(f"qs must be probabilities in [0, 1]; got {list(qs)}")
        return torch.quantile(lam, q, dim=0)

    def plot(self, series=None, *, data=None, level: float = 0.9, max_series: int = 4):
        """Intensity band (fit and forecast) with observed events and forecast count bands.

        Args:
            series: which series to draw (default: the first ``max_series``).
            data: the conditioning ``IrregularTimeSeries`` (its events are drawn as a rug).
            level: central band probability.

        Returns:
            a matplotlib ``Figure`` with one row per series.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        B = self.times.shape[1]
        series = list(range(min(B, max_series))) if series is None else list(series)
        for b in series:
            if not 0 <= b < B:
                raise BayesdynValueError(f"series index {b} out of range for {B} series")
        qs = [(1 - level) / 2, 0.5, (1 + level) / 2]
        fit_q = self.intensity_quantiles(qs, which="fit").cpu()
        fc_q = self.intensity_quantiles(qs).cpu()
        cq = self.count_quantiles(qs).cpu()
        fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.4 * len(series)), squeeze=False)
        for r, b in enumerate(series):
            ax = axes[r][0]
            ft = self.fit_times.cpu()
            ft = ft[b] if ft.dim() > 1 else ft  # per-series grids: this series' row
            inside = ft <= float(self.start[b])
            ax.fill_between(ft[inside], fit_q[0, b][inside], fit_q[2, b][inside], alpha=0.3,
                            color="C0", label=f"posterior intensity ({int(level * 100)}%)")  # fmt: skip
            ax.plot(ft[inside], fit_q[1, b][inside], color="C0", lw=1)
            gt = self.grid_times[b].cpu()
            ax.fill_between(gt, fc_q[0, b], fc_q[2, b], alpha=0.3, color="C1",
                            label="forecast intensity")  # fmt: skip
            ax.plot(gt, fc_q[1, b], color="C1", lw=1)
            ax.axvline(float(self.start[b]), color="k", ls="--", lw=0.8)
            if data is not None and data.events is not None:
                ev = data.events[b]
                ax.plot(ev, [0.0] * len(ev), "|", color="C3", ms=10, label="events")
            name = self.ids[b] if self.ids is not None else b
            ax.set_title(
                f"series {name}: forecast count median {cq[1, b]:.0f} "
                f"[{cq[0, b]:.0f}, {cq[2, b]:.0f}]",
                fontsize=9,
            )
            ax.set_ylabel("intensity")
        axes[0][0].legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig


def _as_jump_batch(data):
    if hasattr(data, "to_jump_batch"):
        return data.to_jump_batch()
    if getattr(data, "events", None) is not None and hasattr(data, "times"):
        return data
    raise BayesdynTypeError(
        f"data must be an IrregularTimeSeries with events or a JumpBatch; got {type(data).__name__}"
    )


def forecast_events(
    model,
    data,
    horizon: float,
    num_samples: int = 100,
    *,
    num_steps: int = 100,
    chunk_size: int = 64,
    max_events: int = 10_000,
    seed: int | None = None,
    progress: bool | None = None,
) -> EventForecast:
    """Sample future events (and marks) after each series' observation window, with intensity bands.

    Args:
        model: a fitted :class:`~bayesdyn.models.LatentJumpSDE`.
        data: the conditioning series (``IrregularTimeSeries`` with events, or ``JumpBatch``).
        horizon: forecast length after each series' window end.
        num_samples: ``S`` posterior draws (one future per draw).
        num_steps: forecast solver steps ``M`` per series.
        chunk_size: samples simulated together.
        max_events: cap on events in one forecast sequence.
        seed: seed for reproducible draws.
        progress: show a progress bar over chunks (default: when stderr is a terminal).

    Returns:
        :class:`EventForecast` (``times [S, B, N]``, ``intensity [S, B, M+1, K]``, ...).
    """
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise BayesdynValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise BayesdynValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    horizon = check_positive("horizon", horizon)
    batch = _as_jump_batch(data)
    model.check_batch(batch)
    if seed is not None:
        torch.manual_seed(seed)
    K = model.config.num_marks
    B = batch.times.shape[0]
    t_start = batch.events.window[:, 1].to(batch.times.dtype)
    t_end = t_start + horizon
    parts: dict[str, list[Tensor]] = {k: [] for k in ("times", "marks", "mask", "lam", "fit")}
    grid_times = None
    was_training = model.training
    model.eval()
    if progress is None:
        progress = sys.stderr.isatty()
    chunks = list(range(0, num_samples, chunk_size))
    try:
        with torch.no_grad():
            prep = model.prepare(batch)
            g = prep.grid.grid  # [U], or [B, U] per series
            tq = t_start.to(g.dtype).contiguous()
            if g.dim() == 1:
                wend = torch.searchsorted(g, tq)  # [B]
            else:
                wend = torch.searchsorted(g, tq.unsqueeze(-1)).squeeze(-1)
            for c0 in tqdm(chunks, disable=not progress, desc="forecast events"):
                n = min(chunk_size, num_samples - c0)
                with pyro.plate("_forecast_samples", n, dim=-3):
                    z = model.guide(batch).squeeze(-3)  # [n, B, U, L]
                parts["fit"].append(model.intensity(z))
                L = z.shape[-1]
                z_end = torch.gather(z, -2, wend.view(1, B, 1, 1).expand(n, B, 1, L)).squeeze(-2)
                at = prep.at.squeeze(1).gather(1, wend.unsqueeze(-1)).to(z.dtype)  # [B, 1]
                oh = prep.onehot.squeeze(1).gather(1, wend.view(B, 1, 1).expand(B, 1, K))
                z_end = z_end + model.jump(z_end, oh.squeeze(1)) * at
                sim = simulate_jump_diffusion_events(
                    model.drift_diffusion,
                    model.intensity,
                    lambda zz, mk: model.jump(zz, F.one_hot(mk, K).to(zz.dtype)),
                    z_end.reshape(n * B, L),
                    t_start.repeat(n),
                    t_end.repeat(n),
                    num_steps,
                    max_events=max_events,
                    interpolation=getattr(model, "interpolation", "linear"),
                )
                N = sim.times.shape[-1]
                parts["times"].append(sim.times.reshape(n, B, N))
                parts["marks"].append(sim.marks.reshape(n, B, N))
                parts["mask"].append(sim.mask.reshape(n, B, N))
                parts["lam"].append(sim.intensity.reshape(n, B, num_steps + 1, K))
                grid_times = sim.grid_times[:B]
    finally:
        model.train(was_training)

    def _cat_padded(xs: list[Tensor], fill) -> Tensor:
        N = max(x.shape[-1] for x in xs)
        out = []
        for x in xs:
            pad = N - x.shape[-1]
            if pad:
                if isinstance(fill, Tensor):  # event times pad with the window end
                    filler = fill.view(1, B, 1).expand(x.shape[0], B, pad).to(x.dtype)
                else:
                    filler = torch.full((x.shape[0], B, pad), fill, dtype=x.dtype)
                x = torch.cat([x, filler], -1)
            out.append(x)
        return torch.cat(out)

    return EventForecast(
        times=_cat_padded(parts["times"], t_end),
        marks=_cat_padded(parts["marks"], 0),
        mask=_cat_padded(parts["mask"], False),
        start=t_start,
        end=t_end,
        grid_times=grid_times,
        intensity=torch.cat(parts["lam"]),
        fit_times=g,
        fit_intensity=torch.cat(parts["fit"]),
        ids=list(getattr(data, "ids", None) or []) or None,
    )


@dataclass
class EventLikelihood:
    """Held-out log-likelihood of event sequences and the predictive intensity.

    Attributes:
        log_lik: importance estimate of ``log p(events, obs)`` per series: ``log mean_s
            exp(per_sample[s])`` (see :func:`event_log_likelihood`).
        per_sample: ``log p(events, obs | path_s)`` for each prior path ``s``.
        num_events: real events per series.
        duration: length of each series' observation window.
        query_times: the times of ``intensity`` (None without ``query_times``).
        intensity: per-mark intensity (left limits) at ``query_times`` along each prior path.

    Shapes:
        - ``log_lik``, ``num_events``, ``duration``: ``[B]``; ``per_sample``: ``[S, B]``
        - ``query_times``: ``[Q]``; ``intensity``: ``[S, B, Q, K]``
    """

    log_lik: Tensor
    per_sample: Tensor
    num_events: Tensor
    duration: Tensor
    query_times: Tensor | None = None
    intensity: Tensor | None = None

    def per_event(self) -> float:
        """Total log-likelihood divided by the total number of events."""
        return float(self.log_lik.sum() / self.num_events.sum().clamp(min=1))

    def per_time(self) -> float:
        """Total log-likelihood divided by the total window length."""
        return float(self.log_lik.sum() / self.duration.sum())

    def mean_intensity(self) -> Tensor:
        """Predictive intensity averaged over the prior paths, summed over marks. ``[B, Q]``."""
        if self.intensity is None:
            raise BayesdynValueError("no intensity: pass query_times to event_log_likelihood")
        return self.intensity.sum(-1).mean(0)


def event_log_likelihood(
    model,
    data,
    num_samples: int = 16,
    *,
    query_times: Tensor | None = None,
    chunk_size: int = 25,
    seed: int | None = None,
    progress: bool | None = None,
) -> EventLikelihood:
    r"""Held-out log-likelihood of events (and observations) under a :class:`~bayesdyn.models.LatentJumpSDE`.

    Draws ``S`` latent paths from the model's prior (initial state from ``p(z0)``, the prior
    jump SDE with the state jumping at the series' observed events) and scores the observed
    sites along each: ``l_s = log p(events, obs | path_s)``. The estimate is

    .. math:: \hat\ell = \log \frac1S \sum_s e^{l_s},

    the log of an unbiased estimate of the marginal likelihood, so its expectation is a lower
    bound that tightens as ``S`` grows; it is exact when the path is deterministic given the
    events (no diffusion, fixed ``z0``). The prior path at time ``t`` depends on the events
    before ``t`` only, so ``intensity`` is the model's predictive intensity given the history.
    Series are processed in chunks of ``chunk_size`` (each chunk on its own union grid, or on
    per-series grids for a model with ``grid="per_series"``, which do not depend on the chunk).

    Args:
        model: a :class:`~bayesdyn.models.LatentJumpSDE`.
        data: ``IrregularTimeSeries`` with events, or a ``JumpBatch``.
        num_samples: ``S`` prior paths.
        query_times: optional times ``[Q]`` at which to return the intensity (inside every
            series' window).
        chunk_size: series per chunk.
        seed: torch seed for reproducible draws.
        progress: progress bar over chunks (default: when stderr is a terminal).

    Returns:
        :class:`EventLikelihood` (``log_lik [B]``, ``per_sample [S, B]``, ...).

    Raises:
        BayesdynValueError: for non-positive ``num_samples``/``chunk_size`` or query times
            outside a window.
    """
    for name, v in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BayesdynValueError(f"{name} must be a positive integer; got {v!r}")
    batch = _as_jump_batch(data)
    model.check_batch(batch)
    win = batch.events.window
    if query_times is not None:
        if not isinstance(query_times, Tensor) or query_times.dim() != 1:
            raise BayesdynValueError(
                f"query_times must be a 1-D tensor [Q]; got {getattr(query_times, 'shape', query_times)}"
            )
        q = query_times.to(win.dtype)
        if bool(((q.min() < win[:, 0]) | (q.max() > win[:, 1])).any()):
            raise BayesdynValueError(
                f"query_times must lie inside every series' window; got [{float(q.min()):g}, "
                f"{float(q.max()):g}] and windows from {float(win[:, 0].max()):g} to "
                f"{float(win[:, 1].min()):g}"
            )
        query_times = query_times.to(batch.times.dtype)
    if seed is not None:
        torch.manual_seed(seed)
    B = batch.times.shape[0]
    if progress is None:
        progress = sys.stderr.isatty()
    per_sample, lams = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for c0 in tqdm(range(0, B, chunk_size), disable=not progress, desc="event log-lik"):
                sub = batch.subset(torch.arange(c0, min(c0 + chunk_size, B)))
                with pyro.plate("_loglik_samples", num_samples, dim=-3):
                    tr = pyro.poutine.trace(model.model).get_trace(sub, query_times)
                lp = 0.0
                for site in tr.nodes.values():
                    if site["type"] == "sample" and site["is_observed"]:
                        x = site["fn"].log_prob(site["value"])  # [S, b, 1] or [S, b, T]
                        lp = lp + x.reshape(*x.shape[:2], -1).sum(-1)
                per_sample.append(lp)
                if query_times is not None:
                    z = tr.nodes["_RETURN"]["value"]  # [S, b, U, L]
                    idx = model.prepare(sub, query_times).grid.query_index  # [Q] or [b, Q]
                    lams.append(model.intensity(gather_on_grid(z, idx.expand(z.shape[-3], -1))))
    finally:
        model.train(was_training)
    samples = torch.cat(per_sample, 1)
    return EventLikelihood(
        log_lik=torch.logsumexp(samples, 0) - math.log(num_samples),
        per_sample=samples,
        num_events=batch.events.counts,
        duration=win[:, 1] - win[:, 0],
        query_times=query_times,
        intensity=torch.cat(lams, 1) if lams else None,
    )
