"""Lynx and hare pelts (Hudson Bay Company, 1900-1920): fit, forecast 5 years, coverage.

Data: ../shared/data/lynx_hare/hudson_bay_lynx_hare_1900_1920.csv, 21 annual values of two
channels (thousands of pelts). The first 16 years (1900-1915) are fitted; the last 5 years
(1916-1920, 10 values) are held out and forecast with central 90% bands.

Model: a small ``LatentSDE`` on log pelts (populations are positive and Lotka-Volterra growth
is multiplicative), standardised per channel; times are years since 1900. The forecast is the
posterior predictive: the posterior SDE through 1915, then the prior dynamics. Bands are
quantiles of predicted observations (observation noise included), mapped back with ``exp``.

What the coverage count can show: with 10 held-out values, the number inside the 90% bands
is Binomial(10, 0.9) if the bands are calibrated, so 7-10 of 10 are all plausible (P(X <= 6)
= 1.3%); only a count of 6 or fewer is real evidence of over-confident bands, and no count can
show calibration; the 10 values are also strongly dependent (two channels of one path).

Usage::

    .venv/bin/python benchmarks/bench_lynx_hare.py --seed 0 [--config ...] [--steps N]

Writes ``lynx_hare.json`` and ``lynx_hare_forecast.png`` to ``--out``. Last lines:
``lynx_hare_coverage90=<k>/<n>`` and ``lynx_hare_forecast_rmse=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import bayesdyn  # noqa: E402
from bayesdyn import IrregularTimeSeries, LatentSDE, LatentSDEConfig  # noqa: E402
from bayesdyn._validation import BayesdynValueError  # noqa: E402
from bayesdyn.diagnostics.metrics import crps_ensemble  # noqa: E402

NAME = "lynx_hare"
YEAR0 = 1900
SCHEMA = {
    "model": dict,
    "holdout_years": int,
    "num_steps": int,
    "lr": float,
    "lr_final": float,
    "num_particles": int,
    "kl_anneal_steps": int,
    "kl_min": float,
    "clip_norm": float,
    "num_samples": int,
    "level": float,
    "query_step": float,
}


def load_lynx_hare_config(path) -> dict:
    """Read and check the lynx-hare config."""
    cfg = common.load_config(path, SCHEMA)
    where = f"config {Path(path).name}"
    common.check_positive_keys(
        cfg,
        ["holdout_years", "num_steps", "lr", "lr_final", "num_particles", "clip_norm"]
        + ["kl_min", "num_samples", "query_step"],
        where,
    )
    if not 0 < cfg["level"] < 1:
        raise BayesdynValueError(f"{where}: 'level' must lie in (0, 1); got {cfg['level']}")
    if not cfg["holdout_years"] < 21 - 3:
        raise BayesdynValueError(f"{where}: 'holdout_years' must leave >= 4 years to fit")
    if "obs_dim" in cfg["model"]:
        raise BayesdynValueError(f"{where}: model.obs_dim is fixed by the data (2); remove it")
    cfg["model_config"] = LatentSDEConfig.from_dict({"obs_dim": 2, **cfg["model"]})
    return cfg


def load_pelts(path=None) -> tuple[np.ndarray, np.ndarray]:
    """Years and pelts ``[21]``, ``[21, 2]`` (lynx, hare) from the CSV."""
    import pandas as pd

    path = (
        Path(path)
        if path is not None
        else common.SHARED_DATA / "lynx_hare" / "hudson_bay_lynx_hare_1900_1920.csv"
    )
    if not path.is_file():
        raise BayesdynValueError(f"lynx-hare file {str(path)!r} not found (see ../shared/data)")
    df = pd.read_csv(path)
    return df["Year"].to_numpy(np.float64), df[["Lynx", "Hare"]].to_numpy(np.float64)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(common.CONFIG_DIR / "lynx_hare.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="override num_steps (dev runs)")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="results directory")
    p.add_argument("--data", default=None, help="path to the lynx-hare CSV")
    args = p.parse_args(argv)
    common.setup_torch()
    cfg = load_lynx_hare_config(args.config)
    if args.steps is not None:
        if args.steps < 1:
            raise BayesdynValueError(f"--steps must be >= 1; got {args.steps}")
        cfg["num_steps"] = args.steps
    years, pelts = load_pelts(args.data)
    t = years - YEAR0
    h = cfg["holdout_years"]
    chans = ["lynx", "hare"]
    full = IrregularTimeSeries([t], [pelts], ids=["hudson_bay"], channels=chans)
    log_full = IrregularTimeSeries([t], [np.log(pelts)], ids=["hudson_bay"], channels=chans)
    fit_part, _ = log_full.split_time(float(t[-h - 1]))
    fit_s, scaler = fit_part.standardize()

    torch.manual_seed(args.seed)
    model = LatentSDE(config=cfg["model_config"])
    t0 = time.perf_counter()
    res = bayesdyn.fit(
        model,
        fit_s,
        num_steps=cfg["num_steps"],
        lr=cfg["lr"],
        lr_final=cfg["lr_final"],
        num_particles=cfg["num_particles"],
        kl_anneal_steps=cfg["kl_anneal_steps"],
        kl_min=cfg["kl_min"],
        clip_norm=cfg["clip_norm"],
        seed=args.seed,
    )
    train_s = time.perf_counter() - t0
    print(res.summary())

    q = np.round(np.arange(0.0, t[-1] + 1e-9, cfg["query_step"]), 6)
    q = np.union1d(q, t)
    traj = bayesdyn.posterior_predictive(
        model, fit_s, times=q, num_samples=cfg["num_samples"], seed=args.seed + 1
    )
    traj = replace(traj, observations=torch.exp(scaler.inverse_values(traj.observations)))
    obs = traj.observations.double()  # [S, 1, Q, 2] in pelts (thousands)
    hold_t = t[-h:]
    qi = np.searchsorted(q, hold_t)
    y = torch.as_tensor(pelts[-h:], dtype=torch.float64)  # [h, 2]
    samp = obs[:, 0, qi]  # [S, h, 2]
    lv = cfg["level"]
    lo, med, hi = torch.quantile(
        samp, torch.tensor([(1 - lv) / 2, 0.5, (1 + lv) / 2], dtype=torch.float64), dim=0
    )
    inside = (y >= lo) & (y <= hi)
    k, n = int(inside.sum()), int(inside.numel())
    rmse = float(((med - y) ** 2).mean().sqrt())
    crps = float(crps_ensemble(samp, y).mean())
    naive = float(((torch.as_tensor(pelts[-h - 1]) - y) ** 2).mean().sqrt())
    p_le = float(stats.binom.cdf(k, n, lv))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = traj.plot(data=full, level=lv, num_paths=5)
    for ax in fig.axes:
        ax.set_xlabel(f"years since {YEAR0}")
    fig.suptitle(
        f"lynx-hare: fit 1900-{int(years[-h - 1])}, forecast {int(years[-h])}-{int(years[-1])} "
        f"({int(lv * 100)}% bands): {k}/{n} held-out values inside",
        fontsize=9,
    )
    fig.tight_layout()
    png = out / "lynx_hare_forecast.png"
    fig.savefig(png, dpi=110)

    print(f"training time {train_s:.0f} s")
    print()
    rows = []
    for j in range(h):
        for d, c in enumerate(chans):
            rows.append(
                {
                    "year": str(int(hold_t[j] + YEAR0)),
                    "channel": c,
                    "observed": f"{float(y[j, d]):.1f}",
                    "median": f"{float(med[j, d]):.1f}",
                    f"{int(lv * 100)}% band": f"[{float(lo[j, d]):.1f}, {float(hi[j, d]):.1f}]",
                    "inside": "yes" if bool(inside[j, d]) else "NO",
                }
            )
    common.print_table(rows, list(rows[0]))
    print(
        f"coverage {k}/{n}; under calibrated bands P(count <= {k}) = {p_le:.3f}; "
        f"forecast RMSE of the median {rmse:.2f} (naive last-value {naive:.2f}); CRPS {crps:.2f}"
    )
    argv_used = sys.argv[1:] if argv is None else argv
    payload = {
        "command": common.command_line("bench_lynx_hare.py", argv_used),
        "seed": args.seed,
        "config_file": os.path.relpath(args.config, common.REPO_ROOT),
        "config": {kk: v for kk, v in cfg.items() if kk != "model_config"},
        "train_wall_seconds": train_s,
        "final_loss": res.history[-1]["loss"] if res.history else None,
        "coverage_count": k,
        "coverage_total": n,
        "coverage_level": lv,
        "binomial_p_count_le": p_le,
        "forecast_rmse_median": rmse,
        "naive_last_value_rmse": naive,
        "forecast_crps": crps,
        "holdout": [{kk: v for kk, v in r.items()} for r in rows],
        "plot": os.path.relpath(png, common.REPO_ROOT)
        if png.is_relative_to(common.REPO_ROOT)
        else str(png),
        "table": [
            {
                "metric": f"90% band coverage, 5-year hold-out ({n} values)",
                "bayesdyn": f"{k}/{n}",
                "published": "no published number (calibrated: Binomial(10, 0.9), 7-10 plausible)",
            },
            {
                "metric": "forecast RMSE of the median (thousands of pelts)",
                "bayesdyn": f"{rmse:.1f}",
                "published": f"naive last value: {naive:.1f}",
            },
        ],
    }
    path = common.write_results(NAME, payload, args.out)
    print(f"results written to {path}; plot {png}")
    print(f"lynx_hare_coverage90={k}/{n}")
    print(f"lynx_hare_forecast_rmse={rmse:.4f}")
    return payload


if __name__ == "__main__":
    main()
