"""``bayesdyn report``: one self-contained HTML file with the diagnostics of a fitted run.

The page holds, with every figure embedded as a base64 PNG (no external files, scripts or
fonts):

1. data and posterior predictive bands per series, with the interpolation and forecast regions
   marked (and held-out points, when the run has them);
2. the latent trajectories;
3. the training curve;
4. calibration: a PIT histogram, a coverage table and proper scores (CRPS, energy score, NLL);
5. ``az.summary`` of the global quantities, with R-hat across ensemble members;
6. a PSIS-LOO table whose Pareto-k diagnostics are explained in words;
7. event intensities and events for jump models (when the model has them): the posterior
   ``intensity`` bands and the events of ``observed_data`` (``LatentJumpSDE``) or
   ``constant_data`` (other models given data with events). An events-only jump model has no
   predictive or calibration figures; those sections say so.

For a fitted ``LatentJumpSDE``, either write a run directory with
``save_run(run_dir, model, series, scaler)`` and run ``bayesdyn report RUN_DIR``, or build the
page in memory from its InferenceData:
``render_report(ReportInputs(idata=to_inference_data(model, series), data=series))`` (add
``scores=in_sample_scores(idata, seed)`` when it has continuous channels).

Run-directory layout read here (written by :func:`save_run`, which ``bayesdyn fit`` /
``bayesdyn demo`` use):

- ``model.pt`` or ensemble members ``members/*.pt`` (:func:`~bayesdyn.inference.save_model`
  files: a ``LatentSDE`` or a ``LatentJumpSDE``, with the scaler's state, if any, in
  ``extra["scaler"]``);
- ``data.csv``: the conditioning series, long format (``id``, ``time``, one column per
  channel, NaN = missing; all NaN for events-only series);
- ``events.csv`` (runs whose data has events; required for a ``LatentJumpSDE``): long format
  ``id``, ``time``, ``mark``, one row per event (:func:`~bayesdyn.data.write_events_csv`);
- optionally ``heldout.csv`` (data after the forecast origin; latent SDE runs only),
  ``history.csv`` (or the history in ``checkpoint.pt``) and ``summary.json``.

A ``LatentJumpSDE`` run is reported like the in-memory path: ``to_inference_data(models,
data, scaler=...)`` without ``forecast_times``, scored in sample when it has continuous
channels.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import BayesdynValueError
from .metrics import (
    calibration_error,
    calibration_table,
    coverage_flags,
    crps_ensemble,
    energy_score,
    mixture_nll,
    pit_values,
)

__all__ = ["ReportInputs", "render_report", "save_run", "write_report", "write_run_inference_data"]

LEVELS = (0.5, 0.8, 0.9, 0.95)


# ----------------------------------------------------------------------------- inputs


@dataclass
class ReportInputs:
    """Everything the report shows, computed before any HTML is written.

    Attributes:
        idata: ``arviz.InferenceData`` from :func:`~bayesdyn.diagnostics.to_inference_data`
            (with ``time``/``forecast_time`` coordinates and, for fitted models,
            ``log_likelihood`` and ``sample_stats``).
        data: the conditioning series (data units).
        heldout: held-out future series (data units) or None.
        scores: held-out (or in-sample) calibration: ``table`` (coverage per level),
            ``pit`` (randomised PIT values), ``ks``, ``crps``, ``energy``, ``nll``, ``where``.
        history: training history rows (``step``, ``loss``, ``kl_scale``, ``val_loss``...).
        run_summary: the run's ``summary.json`` contents.
        title: page title.
    """

    idata: Any
    data: Any
    heldout: Any = None
    scores: dict = field(default_factory=dict)
    history: list[dict] | None = None
    run_summary: dict | None = None
    title: str = "bayesdyn report"


def _load_members(run: Path):
    from ..inference import load_model

    paths = [run / "model.pt"] if (run / "model.pt").is_file() else []
    paths += sorted((run / "members").glob("*.pt")) if (run / "members").is_dir() else []
    if not paths:
        raise BayesdynValueError(
            f"run_dir {str(run)!r} has no model.pt (nor members/*.pt); run `bayesdyn fit` first"
        )
    loaded = [load_model(p) for p in paths]
    scalers = [x.get("scaler") for _, x in loaded]
    if any(s != scalers[0] for s in scalers):
        raise BayesdynValueError(f"the members in {str(run)!r} were trained with different scalers")
    return [m for m, _ in loaded], scalers[0]


def _replace_text(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path`` (a kill leaves the old file intact)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_run(
    run_dir: str | os.PathLike,
    model,
    data,
    scaler=None,
    *,
    history: Sequence[dict] | None = None,
    summary: dict | None = None,
) -> Path:
    """Write a run directory of a fitted model and its data, readable by ``bayesdyn report``.

    Writes (see the module docstring for the layout): ``model.pt`` (one model) or
    ``members/000.pt, 001.pt, ...`` (a sequence of ensemble members), each with the scaler's
    state in its ``extra``; ``data.csv`` (``data.to_dataframe()``); ``events.csv`` when
    ``data`` has events (:func:`~bayesdyn.data.write_events_csv`); ``history.csv`` and
    ``summary.json`` when given. Files of an earlier run in ``run_dir`` that would contradict
    this one (``events.csv`` for data without events, ``members/*.pt`` next to a new
    ``model.pt`` or ``model.pt`` next to new members) are removed. ``bayesdyn fit`` writes its
    runs through this function.

    Args:
        run_dir: the directory (created if needed).
        model: a fitted :class:`~bayesdyn.models.LatentSDE` or
            :class:`~bayesdyn.models.LatentJumpSDE`, or a non-empty sequence of them (ensemble
            members of one class).
        data: the :class:`~bayesdyn.data.IrregularTimeSeries` the model conditions on, in data
            units (``B`` series of ``[T_i, D]`` values, and events ``[N_i]`` for jump models).
        scaler: the :class:`~bayesdyn.data.Scaler` the model was trained with (its inputs were
            ``data.standardize(scaler)``), or None for a model trained on ``data`` as is (an
            events-only jump model has no scaler).
        history: training history rows (e.g. ``FitResult.history``), written as
            ``history.csv``.
        summary: plain-JSON run summary, written as ``summary.json``.

    Returns:
        the run directory.

    Raises:
        BayesdynTypeError: if ``model`` is not a saveable model (or a sequence of them),
            ``data`` is not an ``IrregularTimeSeries`` or ``scaler`` is not a ``Scaler``.
        BayesdynValueError: if ``model`` is an empty sequence.
    """
    import pandas as pd

    from .._validation import BayesdynTypeError
    from ..data import IrregularTimeSeries, Scaler, write_events_csv
    from ..inference import save_model
    from ..inference.io import MODEL_CLASSES

    run = Path(run_dir)
    members = list(model) if isinstance(model, (list, tuple)) else None
    if members is not None and not members:
        raise BayesdynValueError("model must be a model or a non-empty sequence of members; got []")
    for m in [model] if members is None else members:
        if MODEL_CLASSES.get(type(m).__name__) is not type(m):
            raise BayesdynTypeError(
                f"model must be one of {sorted(MODEL_CLASSES)} or a sequence of them; got "
                f"{type(m).__qualname__}"
            )
    if not isinstance(data, IrregularTimeSeries):
        raise BayesdynTypeError(f"data must be an IrregularTimeSeries; got {type(data).__name__}")
    if scaler is not None and not isinstance(scaler, Scaler):
        raise BayesdynTypeError(
            f"scaler must be a bayesdyn Scaler or None; got {type(scaler).__name__}"
        )
    run.mkdir(parents=True, exist_ok=True)
    _replace_text(run / "data.csv", lambda p: data.to_dataframe().to_csv(p, index=False))
    if data.events is not None:
        write_events_csv(data, run / "events.csv")
    elif (run / "events.csv").is_file():
        (run / "events.csv").unlink()
    extra = {} if scaler is None else {"scaler": scaler.state_dict()}
    # The report reads model.pt and members/*.pt together: remove the other layout's files.
    stale = sorted((run / "members").glob("*.pt")) if members is None else [run / "model.pt"]
    for p in stale:
        p.unlink(missing_ok=True)
    if members is None:
        save_model(model, run / "model.pt", extra=extra)
    else:
        for e, m in enumerate(members):
            save_model(m, run / "members" / f"{e:03d}.pt", extra=extra)
    if history is not None:
        rows = list(history)
        _replace_text(run / "history.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    if summary is not None:
        _replace_text(run / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    return run


def _history(run: Path) -> list[dict] | None:
    import pandas as pd

    if (run / "history.csv").is_file():
        return pd.read_csv(run / "history.csv").to_dict("records")
    if (run / "checkpoint.pt").is_file():
        from ..inference import load_checkpoint

        return [dict(h) for h in load_checkpoint(run / "checkpoint.pt").get("history", [])]
    return None


def heldout_scores(models, scaler, past, heldout, num_samples: int, seed: int) -> dict:
    """Score forecasts of held-out future points (all members pooled).

    Forecasts are drawn at exactly the held-out times, conditioned on each series' past.

    Returns:
        dict with ``table`` (coverage per level with binomial standard errors and flags),
        ``pit`` ``[N]`` (randomised), ``ks`` (:class:`CalibrationError`), ``crps``, ``energy``
        (mean per series), ``nll`` (mean per value, from the mixture of decoder densities;
        None without a decoder), ``samples [E*S, B', T', D]`` and the future ``batch``.

    Shapes:
        held-out batch ``values [B', T', D]``; samples ``[E*S, B', T', D]``.
    """
    from ..inference import posterior_predictive

    keep = [i for i, sid in enumerate(past.ids) if sid in set(heldout.ids)]
    order = {sid: i for i, sid in enumerate(heldout.ids)}
    keep.sort(key=lambda i: order[past.ids[i]])
    past_k = past[keep]
    scaled = past_k if scaler is None else past_k.standardize(scaler)[0]
    fb = heldout.to_batch(dtype=torch.float64)
    samples, logliks = [], []
    for e, model in enumerate(models):
        dtype = next(model.parameters()).dtype
        traj = posterior_predictive(
            model, scaled.to_batch(dtype=dtype), fb.times.to(dtype), num_samples, seed=seed + e
        )
        obs = traj.observations.double()
        samples.append(obs if scaler is None else scaler.inverse_values(obs))
        decoder = getattr(model, "decoder", None)
        if decoder is not None:
            y = fb.values if scaler is None else scaler.transform_values(fb.values)
            with torch.no_grad():
                lp = decoder(traj.latent).log_prob(y.to(dtype)).double()
            if scaler is not None:
                lp = lp - torch.as_tensor(np.log(scaler.std))
            logliks.append(lp)
    x = torch.cat(samples)
    y, mask = fb.values, fb.mask
    table = coverage_flags(calibration_table(x, y, mask, LEVELS))
    pit = pit_values(x, y, mask, randomize=True, generator=torch.Generator().manual_seed(seed))
    nll = float(mixture_nll(torch.cat(logliks))[mask].mean()) if logliks else None
    return {
        "where": f"held-out future points ({int(mask.sum())} values in {len(keep)} series)",
        "table": table,
        "pit": pit.numpy(),
        "ks": calibration_error(pit),
        "crps": float(crps_ensemble(x, y)[mask].mean()),
        "energy": float(energy_score(x, y, mask).mean()),
        "nll": nll,
        "samples": x,
        "batch": fb,
    }


def in_sample_scores(idata, seed: int) -> dict:
    """Posterior predictive checks at the training points, from an ``InferenceData``.

    Same keys as :func:`heldout_scores` (``energy`` is None: the flat ``observation`` layout
    has no trajectories).
    """
    pp = idata.posterior_predictive["obs"].values  # (chain, draw, N)
    x = torch.as_tensor(pp.reshape(-1, pp.shape[-1]))
    y = torch.as_tensor(idata.observed_data["obs"].values)
    table = coverage_flags(calibration_table(x, y, None, LEVELS))
    pit = pit_values(x, y, randomize=True, generator=torch.Generator().manual_seed(seed))
    nll = None
    if "log_likelihood" in idata.groups():
        ll = idata.log_likelihood["obs"].values
        nll = float(mixture_nll(torch.as_tensor(ll.reshape(-1, ll.shape[-1]))).mean())
    return {
        "where": f"training points, in sample ({y.numel()} values)",
        "table": table,
        "pit": pit.numpy(),
        "ks": calibration_error(pit),
        "crps": float(crps_ensemble(x, y).mean()),
        "energy": None,
        "nll": nll,
    }


def collect_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 100,
    num_times: int = 120,
    horizon: float | None = None,
    seed: int = 0,
) -> ReportInputs:
    """Load a run directory, draw the posterior and score it: the inputs of the report.

    Args:
        run_dir: a directory written by :func:`save_run` (``bayesdyn fit``, ``bayesdyn demo``).
        num_samples: posterior draws per member.
        num_times: points of the interpolation grid.
        horizon: forecast length beyond the last observation when the run has no held-out
            data (default 20% of the observed span); unused for jump models (no forecast).
        seed: seed of all draws.
    """
    from ..data import IrregularTimeSeries, Scaler, read_events_csv
    from ..models import LatentJumpSDE
    from .inference_data import to_inference_data

    run = Path(run_dir)
    if not run.is_dir():
        raise BayesdynValueError(f"run_dir {str(run)!r} is not a directory")
    models, scaler_state = _load_members(run)
    scaler = None if scaler_state is None else Scaler.from_state_dict(scaler_state)
    if not (run / "data.csv").is_file():
        raise BayesdynValueError(f"run_dir {str(run)!r} has no data.csv")
    jump = [m for m in models if isinstance(m, LatentJumpSDE)]
    has_events = (run / "events.csv").is_file()
    if jump and not has_events:
        raise BayesdynValueError(
            f"run_dir {str(run)!r} holds a LatentJumpSDE but no events.csv (its event data); "
            "write the run with bayesdyn.diagnostics.save_run"
        )
    # events-only series have no observed channel: their data.csv is all NaN
    data = IrregularTimeSeries.from_csv(run / "data.csv", require_observed_channels=not has_events)
    if has_events:
        num_marks = max(m.config.num_marks for m in jump) if jump else None
        data = read_events_csv(run / "events.csv", data, num_marks=num_marks)
    if jump:
        if (run / "heldout.csv").is_file():
            raise BayesdynValueError(
                f"run_dir {str(run)!r}: heldout.csv is not supported for a LatentJumpSDE run "
                "(its report scores in sample); remove it"
            )
        idata = to_inference_data(
            models, data, scaler=scaler, num_samples=num_samples, num_times=num_times, seed=seed
        )
        has_pp = "posterior_predictive" in idata.groups()  # False for events-only models
        return ReportInputs(
            idata=idata,
            data=data,
            scores=in_sample_scores(idata, seed) if has_pp else {},
            history=_history(run),
            run_summary=_summary(run),
            title=f"bayesdyn report: {run.name}",
        )
    heldout = None
    if (run / "heldout.csv").is_file():
        heldout = IrregularTimeSeries.from_csv(run / "heldout.csv")
    t_end = data.t_max
    if heldout is not None:
        t_end = heldout.t_max
    else:
        t_end = data.t_max + (0.2 * (data.t_max - data.t_min) if horizon is None else horizon)
    num_fc = max(num_times // 4, 10)
    forecast_times = np.linspace(data.t_max, t_end, num_fc + 1)[1:]
    idata = to_inference_data(
        models,
        data,
        scaler=scaler,
        num_samples=num_samples,
        num_times=num_times,
        forecast_times=forecast_times,
        seed=seed,
    )
    if heldout is not None:
        scores = heldout_scores(models, scaler, data, heldout, num_samples, seed + 10_000)
    else:
        scores = in_sample_scores(idata, seed)
    return ReportInputs(
        idata=idata,
        data=data,
        heldout=heldout,
        scores=scores,
        history=_history(run),
        run_summary=_summary(run),
        title=f"bayesdyn report: {run.name}",
    )


def _summary(run: Path) -> dict | None:
    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text())
    return None


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    num_samples: int = 100,
    num_times: int = 120,
    horizon: float | None = None,
    max_series: int = 6,
    seed: int = 0,
) -> Path:
    """Write the HTML report of a run directory (see the module docstring).

    Args:
        run_dir: a directory written by ``bayesdyn fit`` or ``bayesdyn demo``.
        out: the HTML file (default ``RUN_DIR/report.html``).
        num_samples, num_times, horizon, seed: see :func:`collect_run`.
        max_series: series drawn in the per-series figures.

    Returns:
        the path written.
    """
    inputs = collect_run(
        run_dir, num_samples=num_samples, num_times=num_times, horizon=horizon, seed=seed
    )
    out = Path(run_dir) / "report.html" if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(inputs, max_series=max_series)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=90, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _series_index(inputs: ReportInputs, max_series: int) -> list[int]:
    """Series to draw: those with held-out points first, then the rest, in data order."""
    ids = list(inputs.data.ids)
    first = []
    if inputs.heldout is not None:
        held = set(inputs.heldout.ids)
        first = [i for i, s in enumerate(ids) if s in held]
    rest = [i for i in range(len(ids)) if i not in set(first)]
    return (first + rest)[:max_series]


def _bands(samples: np.ndarray, levels=(0.5, 0.9)) -> dict:
    """Median and central bands over the leading (chain, draw) axes."""
    flat = samples.reshape(-1, *samples.shape[2:])
    qs = [0.5] + [q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)]
    qv = np.quantile(flat, qs, axis=0)
    out = {"median": qv[0]}
    for i, lv in enumerate(levels):
        out[lv] = (qv[1 + 2 * i], qv[2 + 2 * i])
    return out


def _mark_regions(ax, first: float, last: float, end: float, label: bool) -> None:
    ax.axvspan(first, last, color="#dfe9f5", alpha=0.6, lw=0, label="interpolation" * label or None)
    ax.axvspan(last, end, color="#fbe3c8", alpha=0.7, lw=0, label="forecast" * label or None)
    ax.axvline(last, color="k", ls="--", lw=0.8)


def figure_predictive(inputs: ReportInputs, max_series: int) -> str:
    """Data and posterior predictive bands per series and channel (regions marked)."""
    idata, data = inputs.idata, inputs.data
    t = idata.posterior_predictive["time"].values
    y = idata.posterior_predictive["y"].values  # (chain, draw, series, time, channel)
    if "predictions" in idata.groups():
        t = np.concatenate([t, idata.predictions["forecast_time"].values])
        y = np.concatenate([y, idata.predictions["y"].values], axis=3)
    bands = _bands(y)
    rows = _series_index(inputs, max_series)
    D = data.obs_dim
    fig = _figure(4.3 * D, 2.3 * len(rows))
    axes = fig.subplots(len(rows), D, squeeze=False, sharex=True)
    held = {} if inputs.heldout is None else {s: i for i, s in enumerate(inputs.heldout.ids)}
    for r, b in enumerate(rows):
        sid = data.ids[b]
        tb, vb, mb = data.times[b], data.values[b], data.mask[b]
        for d in range(D):
            ax = axes[r][d]
            _mark_regions(ax, float(tb[0]), float(tb[-1]), float(t[-1]), r == 0 and d == 0)
            lo9, hi9 = bands[0.9]
            lo5, hi5 = bands[0.5]
            ax.fill_between(t, lo9[b, :, d], hi9[b, :, d], color="C0", alpha=0.25, lw=0)
            ax.fill_between(t, lo5[b, :, d], hi5[b, :, d], color="C0", alpha=0.35, lw=0)
            ax.plot(t, bands["median"][b, :, d], color="C0", lw=1.2, label="median, 50%/90%")
            ax.scatter(tb[mb[:, d]], vb[mb[:, d], d], s=9, color="k", zorder=3, label="data")
            if sid in held:
                h = held[sid]
                th, vh = inputs.heldout.times[h], inputs.heldout.values[h]
                mh = inputs.heldout.mask[h]
                ax.scatter(
                    th[mh[:, d]],
                    vh[mh[:, d], d],
                    s=16,
                    marker="x",
                    color="C3",
                    zorder=3,
                    label="held out",
                )
            ax.set_title(f"series {sid}: {data.channels[d]}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles, labels = [], []
    for row in axes:
        for ax in row:
            for hnd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(hnd)
                    labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    return _img(fig, "data and posterior predictive bands per series")


def figure_latent(inputs: ReportInputs, max_series: int) -> str:
    """Posterior latent paths: median and 90% band per latent dimension."""
    post = inputs.idata.posterior
    t = post["time"].values
    z = post["z"].values  # (chain, draw, series, time, L)
    bands = _bands(z, levels=(0.9,))
    rows = _series_index(inputs, max_series)
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig = _figure(4.0 * ncols, 2.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for k, b in enumerate(rows):
        ax = axes[k // ncols][k % ncols]
        for ell in range(z.shape[-1]):
            lo, hi = bands[0.9]
            ax.fill_between(t, lo[b, :, ell], hi[b, :, ell], color=f"C{ell}", alpha=0.2, lw=0)
            ax.plot(t, bands["median"][b, :, ell], color=f"C{ell}", lw=1.1, label=f"z[{ell}]")
        ax.axvline(float(inputs.data.times[b][-1]), color="k", ls="--", lw=0.8)
        ax.set_title(f"series {inputs.data.ids[b]}", fontsize=9)
        ax.tick_params(labelsize=7)
    for k in range(len(rows), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    axes[0][0].legend(fontsize=7, ncols=2)
    return _img(fig, "posterior latent trajectories")


def figure_training(history: list[dict]) -> str:
    """Loss (negative ELBO per observed value), validation loss and the KL weight per step."""
    steps = np.array([h["step"] for h in history], dtype=float)
    loss = np.array([h["loss"] for h in history], dtype=float)
    fig = _figure(7.5, 3.0)
    ax = fig.subplots()
    ax.plot(steps, loss, color="C0", lw=0.8, alpha=0.5, label="training loss")
    if len(loss) >= 10:
        w = max(len(loss) // 25, 2)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, color="C0", lw=1.6, label=f"moving average ({w})")
    val = [(h["step"], h["val_loss"]) for h in history if _finite(h.get("val_loss"))]
    if val:
        vs, vl = zip(*val, strict=True)
        ax.plot(vs, vl, "o-", color="C3", ms=3, lw=1, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("negative ELBO per observed value")
    # early losses can be 100x the final ones: linear near 0, logarithmic beyond +-1
    ax.set_yscale("symlog", linthresh=1.0)
    if any("kl_scale" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(steps, [h.get("kl_scale", np.nan) for h in history], color="0.5", ls=":")
        ax2.set_ylabel("KL weight (annealing)", color="0.4")
        ax2.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _img(fig, "training curve")


def _finite(x) -> bool:
    try:
        return x is not None and bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False


def figure_calibration(scores: dict) -> str:
    """PIT histogram (with the binomial band of a calibrated forecast) and a coverage plot."""
    pit = scores["pit"]
    n, bins = pit.size, 10
    fig = _figure(8.5, 3.0)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hist(pit, bins=bins, range=(0, 1), color="C0", alpha=0.8, edgecolor="white")
    p = 1 / bins
    # 95% band of a bin count under uniform PIT: n p +- 1.96 sqrt(n p (1 - p))
    lo, hi = n * p - 1.96 * np.sqrt(n * p * (1 - p)), n * p + 1.96 * np.sqrt(n * p * (1 - p))
    ax1.axhspan(max(lo, 0), hi, color="0.5", alpha=0.25, label="95% band if calibrated")
    ax1.axhline(n * p, color="k", lw=0.8)
    ax1.set_xlabel("PIT")
    ax1.set_ylabel("count")
    ax1.set_title("PIT histogram (flat = calibrated)", fontsize=9)
    ax1.legend(fontsize=7)
    tab = scores["table"]
    ax2.plot([0, 1], [0, 1], color="k", lw=0.8)
    ax2.errorbar(
        tab["level"], tab["coverage"], yerr=1.96 * tab["stderr"], fmt="o", color="C3", capsize=3
    )
    ax2.set_xlim(0.4, 1.0)
    ax2.set_ylim(0.0, 1.0)
    ax2.set_xlabel("nominal level")
    ax2.set_ylabel("empirical coverage")
    ax2.set_title("central-interval coverage", fontsize=9)
    return _img(fig, "PIT histogram and coverage")


def figure_pareto_k(loo) -> str:
    """Pareto k of every observation, with the reliability thresholds."""
    k = np.asarray(loo.pareto_k).reshape(-1)
    fig = _figure(7.5, 2.6)
    ax = fig.subplots()
    colors = np.where(k > 1, "C3", np.where(k > loo.good_k, "C1", "C0"))
    top = 3.0  # larger k are all "not usable"; draw them as triangles on the top edge
    clipped = k > top
    idx = np.arange(k.size)
    ax.scatter(idx[~clipped], k[~clipped], s=6, c=colors[~clipped])
    if clipped.any():
        ax.scatter(
            idx[clipped],
            np.full(int(clipped.sum()), top),
            s=14,
            marker="^",
            c="C3",
            label=f"k > {top:g} (drawn at {top:g})",
        )
        ax.set_ylim(top=top + 0.15)
    ax.axhline(loo.good_k, color="C1", ls="--", lw=0.8, label=f"good_k = {loo.good_k:.2f}")
    ax.axhline(1.0, color="C3", ls="--", lw=0.8, label="k = 1")
    ax.set_xlabel("observation")
    ax.set_ylabel("Pareto k")
    ax.legend(fontsize=7)
    return _img(fig, "Pareto k per observation")


def figure_jumps(inputs: ReportInputs, max_series: int) -> str | None:
    """Event intensity bands and event times per series (jump / point-process models)."""
    idata = inputs.idata
    has_int = "intensity" in idata.posterior
    # jump models store events as observed data ([series, event], NaN padded); other
    # models with event data as constant data (flat [event] with event_series)
    padded = "observed_data" in idata.groups() and "event_time" in idata.observed_data
    has_ev = padded or ("constant_data" in idata.groups() and "event_time" in idata.constant_data)
    if not (has_int or has_ev):
        return None
    rows = _series_index(inputs, max_series)
    fig = _figure(7.5, 1.9 * len(rows))
    axes = fig.subplots(len(rows), 1, squeeze=False, sharex=True)
    ids = list(inputs.data.ids)
    for r, b in enumerate(rows):
        ax = axes[r][0]
        if has_int:
            t = idata.posterior["time"].values
            lam = idata.posterior["intensity"].values  # (chain, draw, series, time, mark)
            bands = _bands(lam, levels=(0.9,))
            for k in range(lam.shape[-1]):
                lo, hi = bands[0.9]
                ax.fill_between(t, lo[b, :, k], hi[b, :, k], color=f"C{k}", alpha=0.25, lw=0)
                ax.plot(t, bands["median"][b, :, k], color=f"C{k}", lw=1.1, label=f"mark {k}")
            ax.set_ylabel("intensity", fontsize=8)
        if padded:
            ev = idata.observed_data["event_time"].values[b]
            mk = idata.observed_data["event_mark"].values[b]
            ev, mk = ev[np.isfinite(ev)], mk[np.isfinite(ev)]
        elif has_ev:
            cd = idata.constant_data
            sel = cd["event_series"].values == np.asarray(ids, dtype=cd["event_series"].dtype)[b]
            ev, mk = cd["event_time"].values[sel], cd["event_mark"].values[sel]
        if has_ev:
            for k in np.unique(mk):
                ax.plot(
                    ev[mk == k],
                    np.zeros(int((mk == k).sum())),
                    "|",
                    color=f"C{k}",
                    ms=12,
                    transform=ax.get_xaxis_transform(),
                )
        ax.set_title(f"series {ids[b]}: events (ticks) and intensity", fontsize=9)
    return _img(fig, "event intensities and events")


# ----------------------------------------------------------------------------- tables and text


def _fmt(v) -> str:
    """Numbers with 4 significant digits (thousands separated), booleans as yes/no."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "&ndash;"
        return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return html.escape(str(v))


def _table(df) -> str:
    fmt = _fmt

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    body = "".join(
        "<tr>"
        + f"<th>{html.escape(str(i))}</th>"
        + "".join(f"<td>{fmt(v)}</td>" for v in row)
        + "</tr>"
        for i, row in zip(df.index, df.itertuples(index=False), strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(items: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in items)
    return f"<table class='kv'><tbody>{rows}</tbody></table>"


def _summary_section(idata) -> str:
    from . import _arviz

    post = idata.posterior
    names = [v for v in ("obs_scale", "diffusion") if v in post]
    if not names:
        return "<p>This model exposes no global quantities.</p>"
    table = _arviz.summary(idata, var_names=names)
    E = post.sizes["chain"]
    if E == 1:
        note = (
            "This run is a <b>single fit</b>, stored as one chain: R-hat compares chains, so it "
            "is undefined here (shown as &ndash;). Train an ensemble (members become chains) to "
            "see whether independent fits agree."
        )
    else:
        note = (
            f"The {E} chains are <b>ensemble members</b> (independent fits). R-hat compares the "
            "spread between members with the spread within each member's posterior draws: "
            "values near 1 mean the members agree; above about 1.01&ndash;1.05 they found "
            "different solutions."
        )
    fixed = table.index[table["fixed_per_chain"]].tolist()
    if fixed:
        note += (
            " Rows marked <i>fixed per chain</i> are point estimates of each member "
            "(variational inference fits them as parameters), so they have no within-chain "
            "spread; their sd is the spread across members and MCSE, ESS and R-hat do not apply."
        )
    expl = (
        "<p><code>obs_scale</code>: the observation noise scale per channel (data units). "
        "<code>diffusion</code>: the root-mean-square diffusion <i>g(z)</i> of each latent "
        "dimension along the sampled paths (how much the latent dynamics are driven by noise).</p>"
    )
    return expl + f"<p>{note}</p>" + _table(table)


def _loo_section(idata) -> tuple[str, str | None]:
    from . import _arviz

    if "log_likelihood" not in idata.groups():
        return "<p>No pointwise log-likelihood (the source had no model), so no LOO.</p>", None
    names = list(idata.log_likelihood.data_vars)
    # "obs": one entry per observed value; "events" (jump models): one per series' events
    var = "obs" if "obs" in names else names[0]
    what = "observed values" if var == "obs" else "event sequences (one per series)"
    loo = _arviz.loo(idata, var_name=var)
    k = np.asarray(loo.pareto_k).reshape(-1)
    n = k.size
    good = float(loo.good_k)
    n_good = int((k <= good).sum())
    n_bad = int(((k > good) & (k <= 1)).sum())
    n_vbad = int((k > 1).sum())
    import pandas as pd

    est = pd.DataFrame(
        {
            "estimate": [float(loo.elpd_loo), float(loo.p_loo)],
            "SE": [float(loo.se), np.nan],
        },
        index=pd.Index(["elpd_loo", "p_loo"], name="PSIS-LOO"),
    )
    kt = pd.DataFrame(
        {
            "count": [n_good, n_bad, n_vbad],
            "percent": [100 * n_good / n, 100 * n_bad / n, 100 * n_vbad / n],
        },
        index=pd.Index(
            [f"good (k ≤ {good:.2f})", f"bad ({good:.2f} < k ≤ 1)", "very bad (k > 1)"],
            name="Pareto k",
        ),
    )
    text = [
        f"<p>PSIS-LOO estimates how well the model predicts each of the {n} {what} when "
        f"that value is left out, from {int(loo.n_samples)} posterior draws, by importance "
        "sampling. <code>elpd_loo</code> is the sum of the log predictive densities (higher is "
        "better, comparable between models on the same data); <code>p_loo</code> is the "
        "effective number of parameters.</p>",
        "<p>The Pareto <i>k</i> of a value measures how heavy-tailed its importance weights are, "
        "i.e. how much the posterior changes when that value is left out. "
        f"With k &le; {good:.2f} the estimate for that value is reliable. ",
    ]
    if n_bad + n_vbad == 0:
        text.append("Here every value passes, so the LOO estimate can be trusted.</p>")
    else:
        text.append(
            f"Here <b>{n_bad + n_vbad} of {n} values ({100 * (n_bad + n_vbad) / n:.1f}%)</b> "
            "exceed it"
            + (f", {n_vbad} of them with k &gt; 1" if n_vbad else "")
            + ". For those values leaving them out would change the posterior so much that "
            "importance sampling from the full-data draws cannot estimate it: their "
            "contribution to <code>elpd_loo</code> is unreliable (with k &gt; 1 not usable "
            "at all), and the total is then optimistic. Common causes: the value is an "
            "outlier the model cannot explain (consider the Student-t decoder), the posterior "
            "of a series' latent path is pinned by few observations (every value then "
            "influences it strongly, typical for latent time-series models), or the draws come "
            "from a variational posterior narrower than the exact one. Remedies: more draws "
            "help only for k slightly above the threshold; otherwise refit without those "
            "values (exact or K-fold cross-validation), or judge the model by the held-out "
            "forecast scores above, which do not rely on importance sampling.</p>"
        )
    text.append(
        "<p>Note: LOO measures interpolation (predicting a value from its past and future); "
        "forecasts are judged by leaving the future out, as in the calibration section.</p>"
    )
    html_ = "".join(text) + _table(est) + _table(kt)
    if var != "events" and "events" in names:
        html_ += _events_loo(idata)
    return html_, figure_pareto_k(loo)


def _events_loo(idata) -> str:
    """PSIS-LOO of the per-series event log-likelihood (jump models with continuous channels)."""
    import pandas as pd

    from . import _arviz

    loo = _arviz.loo(idata, var_name="events")
    k = np.asarray(loo.pareto_k).reshape(-1)
    est = pd.DataFrame(
        {
            "estimate": [float(loo.elpd_loo), float(loo.p_loo)],
            "SE": [float(loo.se), np.nan],
            "max Pareto k": [float(k.max()), np.nan],
        },
        index=pd.Index(["elpd_loo", "p_loo"], name="PSIS-LOO, events"),
    )
    return (
        f"<p>The events are scored separately: one entry per series, the log-likelihood of its "
        f"whole event sequence along each posterior path ({k.size} entries, "
        f"{int((k > loo.good_k).sum())} with Pareto k above {loo.good_k:.2f}).</p>" + _table(est)
    )


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;
color:#1d2330;line-height:1.45}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;opacity:.85}
nav{padding:8px 32px;background:#e6ebf2;font-size:14px} nav a{margin-right:14px;color:#1f3a5f}
main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border-radius:6px;padding:12px 20px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;color:#1f3a5f;border-bottom:1px solid #dde3ea;padding-bottom:4px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d5dbe3;padding:3px 8px;text-align:right} thead th{background:#eef2f7}
tbody th{text-align:left;background:#fafbfc;font-weight:600}
.kv td{text-align:left} .flag{color:#b3261e;font-weight:600} .ok{color:#1e7b34;font-weight:600}
"""


def _calibration_section(scores: dict) -> tuple[str, str, str]:
    """The calibration section: verdict, PIT and coverage figure, coverage and score tables."""
    import pandas as pd

    tab = scores["table"]
    ks = scores["ks"]
    cov = tab.set_index("level")[["coverage", "stderr", "n", "z", "flagged"]]
    cov.index = pd.Index([f"{lv:.0%}" for lv in cov.index], name="nominal")
    verdict_cls = "flag" if (bool(tab["flagged"].any()) or ks.p_value < 0.01) else "ok"
    verdict = (
        "miscalibrated: see the flagged rows / PIT test"
        if verdict_cls == "flag"
        else "no evidence of miscalibration"
    )
    score_rows = [
        ("CRPS (mean per value, data units)", f"{scores['crps']:.4f}"),
        ("PIT KS distance (calibration error)", f"{ks.statistic:.4f} (p = {ks.p_value:.3g})"),
    ]
    if scores.get("energy") is not None:
        score_rows.append(("energy score (mean per series path)", f"{scores['energy']:.4f}"))
    if scores.get("nll") is not None:
        score_rows.append(("NLL (mean per value, nats)", f"{scores['nll']:.4f}"))
    return (
        "calibration",
        "Calibration",
        f"<p>Scored on {html.escape(scores['where'])}. Verdict: "
        f"<span class='{verdict_cls}'>{verdict}</span>. A row is flagged when its coverage "
        "differs from the nominal level by more than 2.58 binomial standard errors "
        "(|z| &gt; 2.58, a 1% test). PIT values are randomised ranks, uniform for a "
        "calibrated forecast: a U shape means bands too narrow (over-confident), a hump "
        "too wide, a slope a biased median.</p>"
        + figure_calibration(scores)
        + _table(cov)
        + _kv_table(score_rows),
    )


def render_report(inputs: ReportInputs, max_series: int = 6) -> str:
    """The report as one HTML string (figures embedded as base64 PNG).

    Sections without their inputs say so in words: no ``posterior_predictive`` group (an
    events-only jump model) or empty ``inputs.scores`` (nothing to calibrate).
    """
    idata, scores = inputs.idata, inputs.scores
    post = idata.posterior
    E, S = post.sizes["chain"], post.sizes["draw"]
    sections: list[tuple[str, str, str]] = []

    run_items = [
        ("series", len(inputs.data)),
        ("channels", ", ".join(inputs.data.channels)),
        ("observed values", inputs.data.num_observed),
        ("chains (members) x draws", f"{E} x {S}"),
        ("time span", f"{inputs.data.t_min:g} to {inputs.data.t_max:g}"),
    ]
    if inputs.data.events is not None:
        run_items.append(("events", sum(len(e) for e in inputs.data.events)))
    if inputs.heldout is not None:
        run_items.append(("held-out values", inputs.heldout.num_observed))
    for k, v in (inputs.run_summary or {}).items():
        if k not in ("channels", "num_series", "num_observed"):
            run_items.append((k, v))
    sections.append(("run", "Run", _kv_table(run_items)))

    has_pp = "posterior_predictive" in idata.groups()
    sections.append(
        (
            "predictive",
            "Data and posterior predictive",
            "<p>This model has no continuous observed channels (an events-only jump model), so "
            "there is no predictive of values; see the jumps section for its events.</p>"
            if not has_pp
            else "<p>Median with 50% and 90% posterior predictive bands. Blue background: "
            "interpolation (inside each series' observations); orange: forecast (after its last "
            "observation, dashed line). Black dots: data the model conditioned on"
            + ("; red crosses: held-out future data." if inputs.heldout is not None else ".")
            + "</p>"
            + figure_predictive(inputs, max_series),
        )
    )
    sections.append(
        (
            "latent",
            "Latent trajectories",
            "<p>Posterior median and 90% band of each latent dimension.</p>"
            + figure_latent(inputs, max_series),
        )
    )
    if inputs.history:
        sections.append(
            (
                "training",
                "Training curve",
                f"<p>{len(inputs.history)} logged steps; final loss "
                f"{inputs.history[-1]['loss']:.4f}.</p>" + figure_training(inputs.history),
            )
        )
    else:
        sections.append(("training", "Training curve", "<p>No training history in this run.</p>"))

    if not scores:
        sections.append(
            (
                "calibration",
                "Calibration",
                "<p>No calibration scores: the run has no continuous observations to score "
                "(events are scored by the LOO of their log-likelihood).</p>",
            )
        )
    else:
        sections.append(_calibration_section(scores))
    sections.append(("summary", "Global quantities (az.summary)", _summary_section(idata)))
    loo_html, loo_fig = _loo_section(idata)
    sections.append(("loo", "LOO / PSIS", loo_html + (loo_fig or "")))
    jumps = figure_jumps(inputs, max_series)
    sections.append(
        (
            "jumps",
            "Jumps and events",
            "<p>Posterior event intensity per mark (median and 90% band) and observed events.</p>"
            + jumps
            if jumps is not None
            else "<p>This run has no jump model and no event data, so there is nothing to show "
            "here.</p>",
        )
    )
    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>{content}</section>'
        for sid, title, content in sections
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(inputs.title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(inputs.title)}</h1><p>Latent SDE diagnostics: "
        f"{E} chain(s) x {S} draws; ArviZ InferenceData groups: "
        f"{html.escape(', '.join(idata.groups()))}</p></header><nav>{nav}</nav>"
        f"<main>{body}</main></body></html>"
    )


def write_run_inference_data(
    run_dir: str | os.PathLike,
    data,
    forecast_times,
    out: str | os.PathLike,
    *,
    num_samples: int = 100,
    seed: int = 0,
) -> Path:
    """Write the InferenceData of a fitted run (``to_inference_data``) to a netCDF file.

    Args:
        run_dir: a directory written by ``bayesdyn fit``.
        data: the conditioning series in data units.
        forecast_times: times ``[F]`` of the ``predictions`` group.
        out: the netCDF file.

    Returns:
        the path written.
    """
    from ..data import Scaler
    from . import _arviz
    from .inference_data import to_inference_data

    models, scaler_state = _load_members(Path(run_dir))
    scaler = None if scaler_state is None else Scaler.from_state_dict(scaler_state)
    idata = to_inference_data(
        models,
        data,
        scaler=scaler,
        num_samples=num_samples,
        forecast_times=forecast_times,
        seed=seed,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _arviz.to_netcdf(idata, out)
    return out
