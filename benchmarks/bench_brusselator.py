"""Stochastic Brusselator from GRU-ODE-Bayes: forecast and interpolation MSE and NLL.

Data: ../shared/data/brusselator/BXLator.csv, 1,000 two-channel series on [0, 50], observed at
about 25 random times each (on a 0.1 lattice) with per-channel missingness (about 80% of rows
observe both channels). The values are an Euler-Maruyama path of a Brusselator SDE
(``datagen.py`` of edebrouwer/gru_ode_bayes, ``a=0.3, b=1.4, sigma=0.1``), recorded without
observation noise.

How this set-up compares with the GRU-ODE-Bayes paper's (De Brouwer et al. 2019) code,
``experiments/Brusselator/run_gruode.py``:

* Split: theirs is ``train_test_split(arange(1000), test_size=0.2, random_state=432)``; we use
  ``numpy.random.RandomState(432).permutation(1000)[:200]`` as the held-out series, which is
  how scikit-learn's ``ShuffleSplit`` draws its test part to our knowledge (not checked
  against scikit-learn here; it is not a dependency).
* Forecast task (same as theirs): condition on every observation with ``t <= 35`` (``T_val``)
  and predict the first 3 observation rows after ``t = 35`` (``max_val_samples = 3``); series
  without a row on both sides are dropped, as in their ``ODE_Dataset``. Scores are averaged
  over observed values (masked channels do not count).
* Their MSE is that of the predictive mean, and their NLL the Gaussian negative
  log-likelihood of the predicted mean and variance, averaged over observed values. Ours: the
  MSE of the mean of the posterior predictive samples, and the NLL of a Gaussian with the
  samples' mean and variance (``nll_gauss``), plus the exact mixture NLL of the sampled
  decoder densities (``nll_mixture``). Both in the units of the file.
* Interpolation task (ours; their script has none for this data set): on the same held-out
  series, a random ``interp_fraction`` of the rows with ``t <= 35`` (never the first) is
  removed from the conditioning set and predicted from the rest.
* Training: theirs trains GRU-ODE-Bayes (a filter) for 200 epochs on a GPU; ours trains a
  ``LatentSDE`` (GRU smoother encoder) for the config's steps on the 800 training series, on a
  2-core CPU.
* Published numbers: ../shared/data/README.md lists none for this data set, and we do not know
  of a published table of MSE/NLL for it (the paper shows it in figures, as far as we know;
  unsure). The reference points printed are therefore two naive baselines computed here: last
  observation carried forward, and linear interpolation between neighbouring observations.

Usage::

    .venv/bin/python benchmarks/bench_brusselator.py --seed 0 [--config ...] [--steps N]

Last lines: ``brusselator_forecast_mse=<x>`` and ``brusselator_interp_mse=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesdyn  # noqa: E402
from bayesdyn import IrregularTimeSeries, LatentSDE, LatentSDEConfig  # noqa: E402
from bayesdyn._validation import BayesdynValueError  # noqa: E402
from bayesdyn.diagnostics.metrics import crps_ensemble, interval_coverage, mixture_nll  # noqa: E402

NAME = "brusselator"
SCHEMA = {
    "model": dict,
    "num_steps": int,
    "lr": float,
    "lr_final": float,
    "batch_size": int,
    "kl_anneal_steps": int,
    "kl_min": float,
    "clip_norm": float,
    "t_val": float,
    "max_val_samples": int,
    "interp_fraction": float,
    "num_test_series": ("optional", int),
    "num_samples": int,
    "split_seed": int,
}


def load_brusselator_config(path) -> dict:
    """Read and check the Brusselator config."""
    cfg = common.load_config(path, SCHEMA)
    where = f"config {Path(path).name}"
    common.check_positive_keys(
        cfg,
        ["num_steps", "lr", "lr_final", "batch_size", "clip_norm", "kl_min", "t_val"]
        + ["max_val_samples", "num_samples"],
        where,
    )
    if not 0 < cfg["interp_fraction"] < 1:
        raise BayesdynValueError(
            f"{where}: 'interp_fraction' must lie in (0, 1); got {cfg['interp_fraction']}"
        )
    if cfg["num_samples"] < 2:
        raise BayesdynValueError(f"{where}: 'num_samples' must be >= 2")
    if "obs_dim" in cfg["model"]:
        raise BayesdynValueError(f"{where}: model.obs_dim is fixed by the data (2); remove it")
    cfg["model_config"] = LatentSDEConfig.from_dict({"obs_dim": 2, **cfg["model"]})
    return cfg


def load_bxlator(path=None) -> IrregularTimeSeries:
    """All 1,000 series of ``BXLator.csv`` (rows sorted by time; masks from Mask_1/Mask_2).

    Shapes: ``B = 1000`` series with ``times [T_i]``, ``values [T_i, 2]``, ``mask [T_i, 2]``.
    """
    import pandas as pd

    path = Path(path) if path is not None else common.SHARED_DATA / "brusselator" / "BXLator.csv"
    if not path.is_file():
        raise BayesdynValueError(f"Brusselator file {str(path)!r} not found (see ../shared/data)")
    df = pd.read_csv(path).sort_values(["ID", "Time"], kind="stable")
    times, values, masks, ids = [], [], [], []
    for key, g in df.groupby("ID", sort=True):
        ids.append(int(key))
        times.append(g["Time"].to_numpy(np.float64))
        values.append(g[["Value_1", "Value_2"]].to_numpy(np.float64))
        masks.append(g[["Mask_1", "Mask_2"]].to_numpy() != 0)
    return IrregularTimeSeries(times, values, masks, ids=ids, channels=["value_1", "value_2"])


def split(series: IrregularTimeSeries, seed: int) -> tuple[list[int], list[int]]:
    """Train/test positions: the first 20% of ``RandomState(seed).permutation(B)`` is test."""
    perm = np.random.RandomState(seed).permutation(len(series))
    n_test = int(np.ceil(0.2 * len(series)))
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


def make_tasks(series: IrregularTimeSeries, cfg: dict, seed: int) -> dict:
    """Conditioning sets and targets of the forecast and interpolation tasks.

    Returns a dict with ``cond`` (an IrregularTimeSeries of the kept rows with ``t <= t_val``),
    ``query [B, Q]`` (padded by repeating the last time), ``target [B, Q, D]``, and masks
    ``fc_mask``/``ip_mask [B, Q, D]`` marking forecast and interpolation targets.
    """
    rng = np.random.default_rng(seed)
    t_val, k = cfg["t_val"], cfg["max_val_samples"]
    cond_t, cond_v, cond_m, ids, rows = [], [], [], [], []
    for i in range(len(series)):
        t, v, m = series.times[i], series.values[i], series.mask[i]
        before = np.flatnonzero(t <= t_val)
        after = np.flatnonzero(t > t_val)[:k]
        if before.size == 0 or after.size == 0:
            continue  # as in GRU-ODE-Bayes: series need a row on both sides of t_val
        n_hold = int(round(cfg["interp_fraction"] * (before.size - 1)))
        held = np.sort(rng.choice(before[1:], n_hold, replace=False)) if n_hold else before[:0]
        keep = np.setdiff1d(before, held)
        cond_t.append(t[keep])
        cond_v.append(v[keep])
        cond_m.append(m[keep])
        ids.append(series.ids[i])
        rows.append((t[held], v[held], m[held], t[after], v[after], m[after]))
    Q = max(len(r[0]) + len(r[3]) for r in rows)
    B, D = len(rows), series.obs_dim
    query = np.zeros((B, Q))
    target = np.zeros((B, Q, D))
    fc = np.zeros((B, Q, D), dtype=bool)
    ip = np.zeros((B, Q, D), dtype=bool)
    for b, (th, vh, mh, ta, va, ma) in enumerate(rows):
        tq = np.concatenate([th, ta])
        n, nh = tq.size, th.size
        query[b, :n], query[b, n:] = tq, tq[-1]
        target[b, :n] = np.concatenate([vh, va])
        ip[b, :nh] = mh
        fc[b, nh:n] = ma
    cond = IrregularTimeSeries(
        cond_t, cond_v, cond_m, ids=ids, channels=series.channels, require_observed_channels=False
    )
    return {"cond": cond, "query": query, "target": target, "fc_mask": fc, "ip_mask": ip}


def baselines(tasks: dict) -> dict:
    """Naive references per channel: last observation carried forward (forecast) and linear
    interpolation between the neighbouring observed values (interpolation)."""
    cond, q, y = tasks["cond"], tasks["query"], tasks["target"]
    pred_fc = np.zeros_like(y)
    pred_ip = np.zeros_like(y)
    for b in range(len(cond)):
        t, v, m = cond.times[b], cond.values[b], cond.mask[b]
        for d in range(y.shape[-1]):
            td, vd = t[m[:, d]], v[m[:, d], d]
            if td.size == 0:
                continue
            pred_fc[b, :, d] = vd[-1]
            pred_ip[b, :, d] = np.interp(q[b], td, vd)
    out = {}
    for name, pred, mask in (
        ("forecast", pred_fc, tasks["fc_mask"]),
        ("interpolation", pred_ip, tasks["ip_mask"]),
    ):
        out[name] = float(((pred - y) ** 2)[mask].mean())
    return out


def score(model, tasks: dict, scaler, num_samples: int, seed: int) -> dict:
    """Posterior predictive scores per task (units of the file)."""
    cond_s = scaler.transform(tasks["cond"])
    query = torch.as_tensor(tasks["query"], dtype=torch.get_default_dtype())
    traj = bayesdyn.posterior_predictive(
        model, cond_s, times=query, num_samples=num_samples, seed=seed
    )
    obs = scaler.inverse_values(traj.observations).double()  # [S, B, Q, D]
    with torch.no_grad():
        dec = model.decoder(traj.latent)
    std = torch.tensor(scaler.std.tolist(), dtype=torch.float64)
    loc = scaler.inverse_values(dec.mean).double()
    scale = dec.stddev.double() * std
    y = torch.as_tensor(tasks["target"], dtype=torch.float64)
    log_lik = torch.distributions.Normal(loc, scale).log_prob(y)  # [S, B, Q, D]
    mix = mixture_nll(log_lik)
    mean, var = obs.mean(0), obs.var(0)
    gauss = 0.5 * (torch.log(2 * torch.pi * var) + (y - mean) ** 2 / var)
    crps = crps_ensemble(obs, y)
    out = {}
    for name, key in (("forecast", "fc_mask"), ("interpolation", "ip_mask")):
        m = torch.as_tensor(tasks[key])
        cov = interval_coverage(obs, y, levels=(0.9,), mask=m)[0.9]
        out[name] = {
            "mse": float(((mean - y) ** 2)[m].mean()),
            "nll_gauss": float(gauss[m].mean()),
            "nll_mixture": float(mix[m].mean()),
            "crps": float(crps[m].mean()),
            "coverage_90": cov,
            "num_values": int(m.sum()),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(common.CONFIG_DIR / "brusselator.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="override num_steps (dev runs)")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="results directory")
    p.add_argument("--data", default=None, help="path to BXLator.csv")
    args = p.parse_args(argv)
    common.setup_torch()
    cfg = load_brusselator_config(args.config)
    if args.steps is not None:
        if args.steps < 1:
            raise BayesdynValueError(f"--steps must be >= 1; got {args.steps}")
        cfg["num_steps"] = args.steps
    series = load_bxlator(args.data)
    train_idx, test_idx = split(series, cfg["split_seed"])
    if cfg["num_test_series"] is not None:
        test_idx = test_idx[: cfg["num_test_series"]]
    train = series[train_idx]
    test = series[test_idx]
    train_s, scaler = train.standardize()
    tasks = make_tasks(test, cfg, args.seed)
    torch.manual_seed(args.seed)
    model = LatentSDE(config=cfg["model_config"])
    print(
        f"Brusselator: {len(train)} training series, {len(tasks['cond'])} test series; "
        f"LatentSDE with {sum(p.numel() for p in model.parameters())} parameters"
    )
    t0 = time.perf_counter()
    res = bayesdyn.fit(
        model,
        train_s,
        num_steps=cfg["num_steps"],
        lr=cfg["lr"],
        lr_final=cfg["lr_final"],
        batch_size=cfg["batch_size"],
        kl_anneal_steps=cfg["kl_anneal_steps"],
        kl_min=cfg["kl_min"],
        clip_norm=cfg["clip_norm"],
        seed=args.seed,
    )
    train_s_wall = time.perf_counter() - t0
    print(res.summary())
    t1 = time.perf_counter()
    scores = score(model, tasks, scaler, cfg["num_samples"], args.seed + 1)
    base = baselines(tasks)
    eval_s = time.perf_counter() - t1
    print(f"training time {train_s_wall:.0f} s; evaluation {eval_s:.0f} s")
    print()
    rows = []
    for task in ("forecast", "interpolation"):
        s = scores[task]
        rows.append(
            {
                "task": task,
                "MSE": f"{s['mse']:.4f}",
                "NLL (Gauss)": f"{s['nll_gauss']:.3f}",
                "NLL (mixture)": f"{s['nll_mixture']:.3f}",
                "CRPS": f"{s['crps']:.4f}",
                "90% cov": f"{s['coverage_90']:.3f}",
                "values": str(s["num_values"]),
                "naive MSE": f"{base[task]:.4f}",
            }
        )
    common.print_table(rows, list(rows[0]))
    print("naive: last observation carried forward (forecast), linear interpolation (interp.)")
    argv_used = sys.argv[1:] if argv is None else argv
    fc, ip = scores["forecast"], scores["interpolation"]
    payload = {
        "command": common.command_line("bench_brusselator.py", argv_used),
        "seed": args.seed,
        "config_file": os.path.relpath(args.config, common.REPO_ROOT),
        "config": {k: v for k, v in cfg.items() if k != "model_config"},
        "train_wall_seconds": train_s_wall,
        "final_loss": res.history[-1]["loss"] if res.history else None,
        "num_test_series": len(tasks["cond"]),
        "scores": scores,
        "naive_mse": base,
        "table": [
            {
                "metric": "forecast MSE / NLL (3 rows after t=35)",
                "bayesdyn": f"{fc['mse']:.4f} / {fc['nll_gauss']:.3f}",
                "published": f"none known; naive carry-forward MSE {base['forecast']:.4f}",
            },
            {
                "metric": "interpolation MSE / NLL (20% rows held out)",
                "bayesdyn": f"{ip['mse']:.4f} / {ip['nll_gauss']:.3f}",
                "published": f"none known; linear-interpolation MSE {base['interpolation']:.4f}",
            },
            {
                "metric": "forecast / interpolation 90% coverage",
                "bayesdyn": f"{fc['coverage_90']:.3f} / {ip['coverage_90']:.3f}",
                "published": "-",
            },
        ],
    }
    path = common.write_results(NAME, payload, args.out)
    print(f"results written to {path}")
    print(f"brusselator_forecast_mse={fc['mse']:.6f}")
    print(f"brusselator_interp_mse={ip['mse']:.6f}")
    return payload


if __name__ == "__main__":
    main()
