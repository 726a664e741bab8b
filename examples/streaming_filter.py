"""Streaming filtering of the stochastic Brusselator: bands tighten as observations arrive.

A :class:`bayesdyn.LatentSDE` with the causal filter encoder (``encoder="filter"``) is fitted
to sporadically observed Brusselator series (GRU-ODE-Bayes data: two channels, per-channel
missingness, times on [0, 50]). Then a few *held-out* series are fed to a
:class:`bayesdyn.FilterState` one time window at a time, as a live data feed would be:
``state = state.update(new_rows)`` (a particle filter whose proposal is the guide's posterior
SDE, carried forward with the encoder state; an update costs the same however long the
history), and after each update ``state.predict(...)`` gives the predictive distribution of
the observations now and in the future.

Printed: the width of the 90% predictive band at the current time and at a fixed future time
after k updates, which shrink as data arrive. Written: ``<out>/streaming_filter.png``, one row
of panels per stage (after 0, k1, k2, ... updates): the filtering band up to the current time,
the forecast band after it, the observations seen (filled) and not yet seen (hollow).

Data: ``../shared/data/brusselator/BXLator.csv`` (1,000 series) when it is there, else the
200 series bundled with bayesdyn (:func:`bayesdyn.data.load_brusselator`); ``--data bundled``
or ``--data PATH`` chooses.

References:
    E. De Brouwer et al., "GRU-ODE-Bayes: continuous modeling of sporadically-observed time
    series", NeurIPS 2019 (the data and the causal encoder).

Run::

    python examples/streaming_filter.py            # a few minutes on a CPU
    python examples/streaming_filter.py --smoke    # seconds (tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import bayesdyn
from bayesdyn.data import load_brusselator

SHARED_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brusselator"
SHARED_CSV = SHARED_CSV / "BXLator.csv"
CHANNELS = ["value_1", "value_2"]


def load_data(source: str) -> tuple[bayesdyn.IrregularTimeSeries, str]:
    """The Brusselator series and where they came from.

    ``source``: ``"auto"`` (the shared CSV if present, else the bundled copy), ``"bundled"``,
    or a path to a CSV with the columns ``ID,Time,Value_1,Value_2,Mask_1,Mask_2``.
    """
    path = SHARED_CSV if source == "auto" else None if source == "bundled" else Path(source)
    if path is None or not path.is_file():
        if source not in ("auto", "bundled"):
            raise SystemExit(f"--data: no such file {source}")
        return load_brusselator(), "bundled bayesdyn.data.load_brusselator() (200 series)"
    import pandas as pd

    df = pd.read_csv(path)
    for v, m in (("Value_1", "Mask_1"), ("Value_2", "Mask_2")):
        df[v] = df[v].where(df[m] != 0)  # NaN = missing, converted to masks below
    df = df[df[["Value_1", "Value_2"]].notna().any(axis=1)].astype({"ID": int})
    series = bayesdyn.IrregularTimeSeries.from_dataframe(
        df.rename(columns={"Value_1": CHANNELS[0], "Value_2": CHANNELS[1]}),
        id_col="ID",
        time_col="Time",
        value_cols=CHANNELS,
    )
    return series, f"{path.resolve()} ({len(series)} series)"


def window(series: bayesdyn.IrregularTimeSeries, lo: float, hi: float, first: bool):
    """The rows of each series in ``(lo, hi]`` (``[lo, hi]`` when ``first``) as new data.

    Every series ends with a row at ``hi`` (all channels masked unless it was observed then), so
    each update moves the filter state to ``hi`` even for series with no news in the window.
    """
    times, values, masks = [], [], []
    for t, v, m in zip(series.times, series.values, series.mask, strict=True):
        keep = ((t >= lo) if first else (t > lo)) & (t <= hi)
        t, v, m = t[keep], v[keep], m[keep]
        if t.size == 0 or t[-1] < hi:
            t = np.append(t, hi)
            v = np.vstack([v, np.zeros((1, v.shape[1]))])
            m = np.vstack([m, np.zeros((1, m.shape[1]), dtype=bool)])
        times.append(t)
        values.append(v)
        masks.append(m)
    return bayesdyn.IrregularTimeSeries(
        times, values, masks, channels=series.channels, require_observed_channels=False
    )


def band(traj: bayesdyn.inference.Trajectories, level: float = 0.9) -> torch.Tensor:
    """Lower and upper bounds of the central ``level`` band. Shapes: ``[2, B, Q, D]``."""
    return traj.quantiles([(1 - level) / 2, (1 + level) / 2])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/streaming_filter")
    parser.add_argument("--data", default="auto", help="'auto', 'bundled' or a CSV path")
    parser.add_argument("--num-train", type=int, default=192, help="series to fit on")
    parser.add_argument("--num-stream", type=int, default=3, help="held-out series to stream")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--num-particles", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--window", type=float, default=1.0, help="time between updates")
    parser.add_argument("--t-end", type=float, default=50.0, help="stream up to this time")
    parser.add_argument("--proposal", choices=["guide", "prior"], default="guide")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data = "bundled" if args.data == "auto" else args.data  # tests never read ../shared
        args.num_train, args.num_stream, args.steps = 8, 2, 3
        args.num_particles, args.num_samples, args.window, args.t_end = 32, 40, 2.5, 10.0

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    series, source = load_data(args.data)
    if args.num_train + args.num_stream > len(series):
        raise SystemExit(f"--num-train + --num-stream exceeds the {len(series)} series")
    print(f"data: {source}")
    train = series[list(range(args.num_train))]
    stream = series[list(range(len(series) - args.num_stream, len(series)))]  # held out
    train_s, scaler = train.standardize()
    stream_s, _ = stream.standardize(scaler)

    # ---------------------------------------------------------------- fit (offline)
    model = bayesdyn.LatentSDE(
        obs_dim=2,
        latent_dim=4,
        hidden_dim=32,
        context_dim=8,
        encoder="filter",
        dt=0.5,
        stable_drift=True,
        t0=0.0,
    )
    fit = bayesdyn.fit(
        model,
        train_s,
        num_steps=args.steps,
        batch_size=min(64, args.num_train),
        lr=1e-2,
        lr_final=1e-3,
        kl_anneal_steps=args.steps // 3,
        seed=args.seed,
        progress=not args.smoke,
    )
    print(fit.summary())

    # ---------------------------------------------------------------- stream (online)
    state = bayesdyn.FilterState.from_model(
        model,
        num_series=len(stream_s),
        num_particles=args.num_particles,
        proposal=args.proposal,
        t0=0.0,
    )
    ends = np.arange(args.window, args.t_end + 1e-9, args.window)
    ends = np.round(ends, 10)
    stages = sorted({0, len(ends) // 8, len(ends) // 3, 2 * len(ends) // 3})  # panels
    fixed_t = float(ends[len(ends) // 2])  # a future time whose band we follow
    horizon = np.round(np.arange(0.0, args.t_end + 1e-9, 0.25), 10)

    now_t, now_band, panels, rows = [0.0], [], {}, []
    for k in range(len(ends) + 1):
        if k > 0:
            seg = window(stream_s, float(ends[k - 2]) if k > 1 else 0.0, float(ends[k - 1]), k == 1)
            state = state.update(seg, seed=args.seed + k)
            now_t.append(state.time)
        t = state.time
        now = state.predict([t], args.num_samples, seed=args.seed).inverse_transform(scaler)
        now_band.append(band(now)[:, :, 0])  # [2, B, D]
        width_now = float((now_band[-1][1] - now_band[-1][0]).mean())
        width_fixed = float("nan")
        if t <= fixed_t:
            fx = state.predict([fixed_t], args.num_samples, seed=args.seed).inverse_transform(
                scaler
            )
            width_fixed = float((band(fx)[1] - band(fx)[0]).mean())
        seen = sum(int(m[tt <= t].sum()) for tt, m in zip(stream.times, stream.mask, strict=True))
        rows.append((k, t, seen, width_now, width_fixed))
        if k in stages:
            future = horizon[horizon >= t]
            panels[k] = (t, state.predict(future, args.num_samples, seed=args.seed))
        if k > 0:
            ess = state.last_result.ess
            rows[-1] += (float(ess.mean()),)

    print(
        f"\n90% predictive band width (data units, mean over {len(stream)} held-out series and "
        f"both channels) after k updates of {args.window:g} time units, N={args.num_particles} "
        f"particles, proposal={args.proposal!r}:"
    )
    print(
        f"{'k':>3} {'time':>6} {'values seen':>11} {'band width now':>15} {'at t=' + str(fixed_t):>12}"
    )
    for row in rows:
        k, t, seen, wn, wf = row[:5]
        fixed = f"{wf:12.3f}" if np.isfinite(wf) else f"{'-':>12}"
        print(f"{k:>3} {t:>6.2f} {seen:>11} {wn:>15.3f} {fixed}")
    ess_mean = np.mean([r[5] for r in rows[1:]])
    print(f"mean ESS at the observations: {ess_mean:.0f} of {args.num_particles}")
    first, last = rows[0][3], np.mean([r[3] for r in rows[len(rows) // 2 :]])
    print(
        f"band width now: {first:.3f} before any data, {last:.3f} on average over the second "
        f"half of the stream ({last / first:.0%})"
    )

    # ---------------------------------------------------------------- plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = min(len(stream), 2)
    fig, axes = plt.subplots(
        len(stages), nb, figsize=(6.2 * nb, 2.3 * len(stages)), squeeze=False, sharex=True
    )
    nt = np.array(now_t)
    nbands = torch.stack(now_band).numpy()  # [K+1, 2, B, D]
    for r, k in enumerate(stages):
        t_k, traj = panels[k]
        fb = band(traj.inverse_transform(scaler)).numpy()  # [2, B, Q, D]
        med = traj.inverse_transform(scaler).quantiles([0.5])[0].numpy()
        qt = np.asarray(traj.times)
        for b in range(nb):
            ax = axes[r][b]
            t_obs, v_obs, m_obs = stream.times[b], stream.values[b], stream.mask[b]
            for d in range(2):
                c = f"C{d}"
                upto = nt <= t_k + 1e-9
                ax.fill_between(
                    nt[upto], nbands[upto, 0, b, d], nbands[upto, 1, b, d], color=c, alpha=0.35
                )
                ax.fill_between(qt, fb[0, b, :, d], fb[1, b, :, d], color=c, alpha=0.12)
                ax.plot(qt, med[b, :, d], color=c, lw=0.8, ls="--")
                seen = m_obs[:, d] & (t_obs <= t_k)
                unseen = m_obs[:, d] & (t_obs > t_k)
                ax.plot(t_obs[seen], v_obs[seen, d], "o", color=c, ms=3.5, label=CHANNELS[d])
                ax.plot(t_obs[unseen], v_obs[unseen, d], "o", mfc="none", color=c, ms=3, alpha=0.5)
            ax.axvline(t_k, color="k", lw=0.8)
            ax.set_title(
                f"held-out series {stream.ids[b]}: after {k} updates (t = {t_k:g})", fontsize=9
            )
            if r == 0 and b == 0:
                ax.legend(fontsize=7, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("time")
    fig.suptitle(
        "streaming filter: 90% bands (dark: filtered, at each update; light: forecast); "
        "filled dots: seen, hollow: not yet",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "streaming_filter.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / 'streaming_filter.png'}")


if __name__ == "__main__":
    main()
